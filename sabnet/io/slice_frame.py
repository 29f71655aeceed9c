"""The slice frame: a case's array reordered (transposes and flips only, no interpolation) so that
axis 0 runs across the slices it was acquired in, and rows and columns appear as a radiologist's
viewer shows them.

    sagittal: slices toward the patient's left, rows head->feet, columns anterior->posterior
    coronal:  slices anterior->posterior, rows head->feet, columns right->left (patient)
    axial:    slices feet->head, rows anterior->posterior, columns right->left (patient)

Oblique cases take the frame of the cardinal plane nearest to theirs. Because only transposes
and flips are used, the frame is exactly invertible.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from sabnet.io.geometry import Geometry, PLANES, plane_of_normal

# For each plane: (world axis of the slice normal, world axis and sign of rows, of columns).
# World axes are LPS: 0 = x (toward the patient's left), 1 = y (posterior), 2 = z (superior).
_FRAME_AXES = {
    "sagittal": ((0, +1), (2, -1), (1, +1)),
    "coronal": ((1, +1), (2, -1), (0, +1)),
    "axial": ((2, +1), (1, +1), (0, +1)),
}


@dataclass(frozen=True)
class SliceFrame:
    """How to view a case's array in the slice frame.

    axes: original array axes that become frame axes (slice, row, column).
    flips: whether each frame axis is reversed relative to the original array axis.
    plane: the cardinal plane the frame follows ('sagittal', 'coronal', 'axial').
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    plane: str

    def to_dict(self) -> dict:
        return {"axes": list(self.axes), "flips": list(self.flips), "plane": self.plane}

    @classmethod
    def from_dict(cls, d: dict) -> "SliceFrame":
        return cls(tuple(int(a) for a in d["axes"]), tuple(bool(f) for f in d["flips"]), str(d["plane"]))

    def to_frame(self, array: np.ndarray) -> np.ndarray:
        """(..., n0, n1, n2) original array order -> (..., n_slices, n_rows, n_cols), a view."""
        lead = array.ndim - 3
        out = np.transpose(array, tuple(range(lead)) + tuple(lead + a for a in self.axes))
        for i, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis=lead + i)
        return out

    def from_frame(self, array: np.ndarray) -> np.ndarray:
        """Inverse of `to_frame`: (..., n_slices, n_rows, n_cols) -> (..., n0, n1, n2), a view."""
        lead = array.ndim - 3
        out = array
        for i, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis=lead + i)
        inverse = np.argsort(self.axes)
        return np.transpose(out, tuple(range(lead)) + tuple(lead + int(a) for a in inverse))

    def shape_in_frame(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return tuple(int(shape[a]) for a in self.axes)

    def box_to_frame(self, box: list[list[int]], shape: tuple[int, int, int]) -> list[list[int]]:
        """A [lo, hi) box per original array axis -> the same box per frame axis."""
        out = []
        for axis, flip in zip(self.axes, self.flips):
            lo, hi = box[axis]
            out.append([shape[axis] - hi, shape[axis] - lo] if flip else [lo, hi])
        return out


def world_axis_assignment(geometry: Geometry) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """For each array axis: the cardinal world axis it runs closest to and the sign.

    Returns (world_axis per array axis, sign per array axis). The assignment is a permutation
    (chosen to maximise the summed alignment), so oblique cases still map one-to-one.
    """
    vectors = geometry.axis_vectors
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(vectors[a, p[a]]) for a in range(3)))
    signs = tuple(1 if vectors[a, best[a]] >= 0 else -1 for a in range(3))
    return tuple(best), signs


def slice_frame_for(geometry: Geometry, slice_axis: int) -> SliceFrame:
    """The frame that slices `geometry`'s array along `slice_axis` (an array axis)."""
    world_axes, signs = world_axis_assignment(geometry)
    plane = plane_of_normal(geometry.axis_vectors[slice_axis])
    if plane == "oblique":
        plane = PLANES[world_axes[slice_axis]]
    (n_world, n_sign), (r_world, r_sign), (c_world, c_sign) = _FRAME_AXES[plane]
    # The slice axis is given; the in-plane axes are matched to the plane's row/column world axes.
    in_plane = [a for a in range(3) if a != slice_axis]
    if world_axes[in_plane[0]] == c_world or world_axes[in_plane[1]] == r_world:
        in_plane.reverse()
    row_axis, col_axis = in_plane
    axes = (slice_axis, row_axis, col_axis)
    slice_sign = signs[slice_axis] if world_axes[slice_axis] == n_world else 1
    flips = (slice_sign != n_sign,
             signs[row_axis] != r_sign if world_axes[row_axis] == r_world else False,
             signs[col_axis] != c_sign if world_axes[col_axis] == c_world else False)
    return SliceFrame(axes, flips, plane)


def frame_spacing_mm(geometry: Geometry, frame: SliceFrame) -> tuple[float, float, float]:
    """Spacing along the frame axes (slice, row, column), mm."""
    return tuple(geometry.axis_spacing_mm[a] for a in frame.axes)


def depth_positions(slice_indices, n_slices: int, n_depth_slices: int) -> np.ndarray:
    """Continuous low-resolution slice coordinates of full-resolution slice indices. Both volumes
    cover the same extent along the slice axis: full slice i has its centre at (i + 0.5) / n_slices
    of it, which is low-res coordinate (i + 0.5) * n_depth_slices / n_slices - 0.5."""
    return (np.asarray(slice_indices, dtype=float) + 0.5) * n_depth_slices / n_slices - 0.5
