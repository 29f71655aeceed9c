"""An MRI acquisition of a phantom: where the subject lies, how the slices are planned, and how
the scanner turns tissue into an image (thick-slice partial volume, texture, bias field, noise).

World coordinates are ITK's LPS millimetres. A `Placement` puts the anatomical frame in the world;
`plan_geometry` draws a slice plan (`Geometry`) over the anatomy; `render` samples the anatomy on
it and returns scanner-like int16 intensities, bone labels and the tissue map at voxel centres.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sabnet.io.geometry import Geometry
from sabnet.phantoms.anatomy import Anatomy
from sabnet.phantoms.contrast import signal_table
from sabnet.phantoms.sampling import Grid, sample
from sabnet.phantoms.shapes import rotation

PLANES = ("sagittal", "coronal", "axial", "oblique")
# Cardinal plane -> (column direction, row direction, slice normal) in LPS, as scanners store them.
_CARDINAL = {
    "sagittal": ((0, 1, 0), (0, 0, -1), (1, 0, 0)),
    "coronal": ((1, 0, 0), (0, 0, -1), (0, 1, 0)),
    "axial": ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
}
OBLIQUE_TILT_DEG = (15.0, 35.0)   # oblique: slice normal this far off a cardinal axis
CARDINAL_TILT_DEG = 3.0           # cardinal planes: at most this much angulation


@dataclass(frozen=True)
class Placement:
    """World position of anatomical points: p_world = matrix @ p_anatomy + offset_mm.

    matrix (3, 3) = rotation x scale x mirror (mirror makes a right limb a left one).
    """

    matrix: np.ndarray
    offset_mm: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, scale: float, mirror: bool, max_turn_deg: float = 6.0,
             max_shift_mm: float = 25.0) -> "Placement":
        """A subject on the table: turned up to `max_turn_deg` about each axis, shifted up to `max_shift_mm`."""
        turn = np.eye(3)
        for axis in np.eye(3):
            turn = rotation(axis, rng.uniform(-max_turn_deg, max_turn_deg)) @ turn
        flip = np.diag([-1.0 if mirror else 1.0, 1.0, 1.0])
        return cls(turn @ flip * scale, rng.uniform(-max_shift_mm, max_shift_mm, 3))

    def moved(self, turn: np.ndarray, offset_mm: np.ndarray) -> "Placement":
        """This placement after the subject moved rigidly: x -> turn @ x + offset_mm."""
        return Placement(turn @ self.matrix, turn @ self.offset_mm + offset_mm)

    def to_world(self, p_mm: np.ndarray) -> np.ndarray:
        return np.asarray(p_mm, dtype=float) @ self.matrix.T + self.offset_mm

    def grid(self, geometry: Geometry) -> Grid:
        """The anatomical positions of `geometry`'s voxel centres."""
        inverse = np.linalg.inv(self.matrix)
        steps_world = np.asarray(geometry.axis_spacing_mm)[:, None] * geometry.axis_vectors
        origin = inverse @ (np.asarray(geometry.origin_mm) - self.offset_mm)
        return Grid(geometry.shape, origin, steps_world @ inverse.T)


def plane_vectors(plane: str, rng: np.random.Generator) -> np.ndarray:
    """(3, 3) rows: column direction, row direction, slice normal (world unit vectors) for `plane`."""
    if plane == "oblique":
        base = str(rng.choice(list(_CARDINAL)))
        col, row, normal = (np.asarray(v, dtype=float) for v in _CARDINAL[base])
        tilt_axis = col if rng.random() < 0.5 else row
        turn = rotation(tilt_axis, rng.choice([-1, 1]) * rng.uniform(*OBLIQUE_TILT_DEG))
    elif plane in _CARDINAL:
        col, row, normal = (np.asarray(v, dtype=float) for v in _CARDINAL[plane])
        turn = rotation(rng.normal(size=3) + 1e-9, rng.uniform(0, CARDINAL_TILT_DEG))
    else:
        raise ValueError(f"unknown plane {plane!r}; use one of {', '.join(PLANES)}")
    turn = turn @ rotation(normal, rng.uniform(-8, 8))  # in-plane rotation of the field of view
    vectors = np.stack([col, row, normal]) @ turn.T
    signs = [rng.choice([-1, 1], p=[0.2, 0.8]), rng.choice([-1, 1], p=[0.2, 0.8]), rng.choice([-1, 1])]
    return vectors * np.asarray(signs, dtype=float)[:, None]


def plan_geometry(
    rng: np.random.Generator,
    plane: str,
    anatomy: Anatomy,
    placement: Placement,
    in_plane_spacing_mm: tuple[float, float],
    slice_spacing_mm: tuple[float, float],
    in_plane_size: int,
    n_slices: int | None,
    permute_axes: bool,
) -> tuple[Geometry, int]:
    """Draw a slice plan over `anatomy`: (Geometry, array axis the slices are stacked along).

    In-plane spacing is drawn from `in_plane_spacing_mm`, preferring (within that range) values
    whose field of view covers the location's region of interest; each in-plane side has about
    `in_plane_size` voxels (x 0.85-1.1). `n_slices` None covers the region of interest (30-50).
    With `permute_axes`, half the cases store the slice axis elsewhere than array axis 0.
    """
    vectors = plane_vectors(plane, rng)
    n_col, n_row = (max(8, int(round(in_plane_size * rng.uniform(0.85, 1.1)))) for _ in range(2))
    # the region of interest in the world, as support widths along each acquisition direction
    half_world = np.abs(placement.matrix) @ anatomy.roi_half_mm
    need_mm = 2 * np.abs(vectors) @ half_world
    lo, hi = sorted(in_plane_spacing_mm)
    preferred = float(np.clip(max(need_mm[0] / n_col, need_mm[1] / n_row), lo, hi))
    spacing = rng.uniform(preferred, hi) if hi > preferred else hi
    s_lo, s_hi = sorted(slice_spacing_mm)
    slice_mm = rng.uniform(s_lo, s_hi) if s_hi > s_lo else s_lo
    if n_slices is None:
        n_slices = int(np.clip(np.ceil(need_mm[2] * 1.1 / slice_mm), 30, 50))

    # array axes in storage order: (slice, row, column) unless permuted
    axes = [(n_slices, slice_mm, vectors[2]), (n_row, spacing, vectors[1]), (n_col, spacing, vectors[0])]
    slice_axis = 0
    if permute_axes and rng.random() < 0.5:
        slice_axis = int(rng.choice([1, 2]))
        axes.insert(slice_axis, axes.pop(0))
    shape = [a[0] for a in axes]
    axis_spacing = [a[1] for a in axes]
    axis_vectors = np.stack([a[2] for a in axes])

    fov_mm = np.array([n * s for n, s, _ in axes])
    centre = placement.to_world(anatomy.roi_centre_mm)
    jitter = rng.uniform(-0.06, 0.06, 3) * fov_mm
    jitter[slice_axis] = rng.uniform(-0.5, 0.5) * slice_mm
    centre = centre + jitter @ axis_vectors
    origin = centre - ((np.asarray(shape) - 1) / 2 * np.asarray(axis_spacing)) @ axis_vectors
    return Geometry.from_axes(shape, axis_spacing, axis_vectors, origin), slice_axis


@dataclass
class Rendered:
    """image: int16 scanner values; labels: uint8 bone labels; tissue: uint8 `Tissue` at voxel centres."""

    image: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray


def render(anatomy: Anatomy, geometry: Geometry, slice_axis: int, placement: Placement, sequence: str,
           label_ids: dict[str, int], rng: np.random.Generator) -> Rendered:
    """Image `anatomy` placed by `placement` with `sequence` on `geometry`.

    Each voxel averages the signal of sub-slice samples across its slice thickness (partial
    volume, 3 samples when slices are thicker than 1.5 x the in-plane spacing); labels and the
    tissue map are taken at voxel centres. Then: texture (about 5 %), a smooth multiplicative bias
    field, a random global scale (300-3000) and Rician noise (1-4 % of the brightest tissue).
    """
    spacing = np.asarray(geometry.axis_spacing_mm)
    in_plane = np.delete(spacing, slice_axis).min()
    n_sub = 3 if spacing[slice_axis] > 1.5 * in_plane else 1
    table = signal_table(sequence, rng)
    grid = placement.grid(geometry)
    signal, tissue, labels = sample(anatomy, grid, slice_axis, spacing, n_sub, table, label_ids)
    signal *= _texture_and_bias(geometry, rng)
    scale = np.float32(rng.uniform(300, 3000))
    sigma = np.float32(rng.uniform(0.01, 0.04) * table.max())
    noise = rng.standard_normal((2,) + geometry.shape, dtype=np.float32) * sigma
    magnitude = np.hypot(signal + noise[0], noise[1]) * scale
    image = np.clip(np.rint(magnitude), 0, np.iinfo(np.int16).max).astype(np.int16)
    return Rendered(image, labels, tissue)


def _texture_and_bias(geometry: Geometry, rng: np.random.Generator, texture: float = 0.05, grain_mm: float = 3.0,
                      bias: float = 0.15) -> np.ndarray:
    """A smooth multiplicative field: tissue texture (std `texture`, varying over `grain_mm`) times a
    bias field (exp of a random quadratic in normalised array coordinates, strength `bias`)."""
    shape = np.asarray(geometry.shape)
    coarse = np.maximum(2, np.ceil(shape * np.asarray(geometry.axis_spacing_mm) / grain_mm)).astype(int)
    coarse = tuple(np.minimum(coarse, shape))
    log_field = np.log1p(np.clip(rng.standard_normal(coarse) * texture, -0.5, 0.5))
    coords = [np.linspace(-1, 1, n).reshape([-1 if a == i else 1 for i in range(3)]) for a, n in enumerate(coarse)]
    for a in range(3):
        log_field = log_field + rng.normal(0, bias) * coords[a]
        for b in range(a, 3):
            log_field = log_field + rng.normal(0, bias / 2) * coords[a] * coords[b]
    log_field -= log_field.mean()
    return upsample_linear(np.exp(log_field).astype(np.float32), tuple(shape))


def upsample_linear(coarse: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Separable linear interpolation of `coarse` onto `shape`, end samples aligned."""
    out = coarse
    for axis, n in enumerate(shape):
        m = out.shape[axis]
        position = np.linspace(0, m - 1, n, dtype=np.float32)
        left = np.minimum(position.astype(np.intp), max(m - 2, 0))
        right = np.minimum(left + 1, m - 1)
        weight = (position - left).reshape([-1 if a == axis else 1 for a in range(3)])
        out = out.take(left, axis=axis) * (1 - weight) + out.take(right, axis=axis) * weight
    return out
