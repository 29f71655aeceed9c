"""Image geometry: where each voxel of an array lies in the world, in millimetres.

Conventions used throughout sabnet:
- arrays are in SimpleITK's numpy order: array axis 0 is ITK index k, axis 1 is j, axis 2 is i;
- `Geometry` stores the values exactly as ITK (and the file) holds them, in ITK order (i, j, k),
  and offers array-order views (`shape`, `axis_spacing_mm`, `axis_vectors`);
- world coordinates are ITK's LPS millimetres: x to the patient's left, y posterior, z superior.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

PLANES = ("sagittal", "coronal", "axial")
# A slice normal further than this from every cardinal axis makes the acquisition "oblique".
OBLIQUE_ANGLE_DEG = 10.0


@dataclass(frozen=True)
class Geometry:
    """Size, spacing, origin and direction of a 3D image, exactly as ITK holds them.

    size: voxels along ITK index axes (i, j, k).
    spacing_mm: voxel size along (i, j, k), mm.
    origin_mm: world position (LPS, mm) of the centre of voxel (0, 0, 0).
    direction: 9 numbers, row-major 3x3; column d is the world unit vector of index axis d.
    """

    size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        object.__setattr__(self, "origin_mm", tuple(float(s) for s in self.origin_mm))
        object.__setattr__(self, "direction", tuple(float(s) for s in np.asarray(self.direction).ravel()))
        if len(self.size) != 3 or len(self.spacing_mm) != 3 or len(self.origin_mm) != 3 or len(self.direction) != 9:
            raise ValueError("Geometry is 3D: size, spacing and origin need 3 values and direction 9")

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        """The geometry of a 3D SimpleITK image."""
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    @classmethod
    def from_axes(
        cls,
        shape: Sequence[int],
        axis_spacing_mm: Sequence[float],
        axis_vectors: np.ndarray,
        origin_mm: Sequence[float],
    ) -> "Geometry":
        """Build from array-order values: shape (n0, n1, n2), spacing per array axis, and
        `axis_vectors` (3, 3) whose row a is the world unit vector of array axis a."""
        vectors = np.asarray(axis_vectors, dtype=float)
        direction = vectors[::-1].T  # columns = ITK index axes i, j, k = array axes 2, 1, 0
        return cls(tuple(shape)[::-1], tuple(axis_spacing_mm)[::-1], tuple(origin_mm), direction.ravel())

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Set this geometry on `image` (whose size must match) and return it."""
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"image size {image.GetSize()} does not match geometry size {self.size}")
        image.SetSpacing(self.spacing_mm)
        image.SetOrigin(self.origin_mm)
        image.SetDirection(self.direction)
        return image

    def to_dict(self) -> dict:
        return {
            "size": list(self.size),
            "spacing_mm": list(self.spacing_mm),
            "origin_mm": list(self.origin_mm),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(d["size"], d["spacing_mm"], d["origin_mm"], d["direction"])

    # ---- array-order views -----------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the numpy array (array order: k, j, i)."""
        return self.size[::-1]

    @property
    def axis_spacing_mm(self) -> tuple[float, float, float]:
        """Spacing per numpy array axis, mm."""
        return self.spacing_mm[::-1]

    @property
    def direction_matrix(self) -> np.ndarray:
        """(3, 3) direction matrix; column d is the world vector of ITK index axis d."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def axis_vectors(self) -> np.ndarray:
        """(3, 3); row a is the world unit vector along numpy array axis a."""
        return self.direction_matrix.T[::-1].copy()

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Field of view per array axis, mm (voxels times spacing)."""
        return tuple(n * s for n, s in zip(self.shape, self.axis_spacing_mm))

    def subdivided(self, axis: int, factor: int) -> "Geometry":
        """This grid with `factor` (odd) voxels per voxel along array `axis`, centred so that fine
        voxel factor * k + factor // 2 lies on voxel k's centre (the same field of view)."""
        if factor < 1 or factor % 2 == 0:
            raise ValueError(f"subdivide by an odd factor (got {factor}), so that voxel centres stay voxel centres")
        spacing, shape = list(self.axis_spacing_mm), list(self.shape)
        step = spacing[axis]
        spacing[axis], shape[axis] = step / factor, shape[axis] * factor
        origin = np.asarray(self.origin_mm) - self.axis_vectors[axis] * step * (factor // 2) / factor
        return Geometry.from_axes(shape, spacing, self.axis_vectors, origin)

    # ---- coordinates ----------------------------------------------------------------------
    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """(N, 3) array-order (continuous) indices -> (N, 3) world LPS positions, mm."""
        index = np.asarray(index, dtype=float)
        offsets = (index * np.asarray(self.axis_spacing_mm)) @ self.axis_vectors
        return offsets + np.asarray(self.origin_mm)

    def world_to_index(self, world_mm: np.ndarray) -> np.ndarray:
        """(N, 3) world LPS positions, mm -> (N, 3) continuous array-order indices."""
        world = np.asarray(world_mm, dtype=float) - np.asarray(self.origin_mm)
        return (world @ np.linalg.inv(self.axis_vectors)) / np.asarray(self.axis_spacing_mm)

    # ---- comparison -----------------------------------------------------------------------
    def differences(self, other: "Geometry", spacing_rtol: float = 1e-4, origin_atol_mm: float = 1e-3,
                    direction_atol: float = 1e-4) -> list[str]:
        """What differs between two geometries beyond the tolerances, as readable phrases."""
        out = []
        if self.size != other.size:
            out.append(f"size {self.size} vs {other.size}")
        if not np.allclose(self.spacing_mm, other.spacing_mm, rtol=spacing_rtol, atol=0):
            out.append(f"spacing {_fmt(self.spacing_mm)} vs {_fmt(other.spacing_mm)} mm")
        if not np.allclose(self.origin_mm, other.origin_mm, rtol=0, atol=origin_atol_mm):
            out.append(f"origin {_fmt(self.origin_mm)} vs {_fmt(other.origin_mm)} mm")
        if not np.allclose(self.direction, other.direction, rtol=0, atol=direction_atol):
            out.append(f"direction {_fmt(self.direction)} vs {_fmt(other.direction)}")
        return out

    def matches(self, other: "Geometry", **tolerances: float) -> bool:
        return not self.differences(other, **tolerances)


def acquisition_plane(geometry: Geometry, oblique_angle_deg: float = OBLIQUE_ANGLE_DEG) -> tuple[int, str]:
    """The array axis slices were stacked along and the plane they lie in.

    Returns (slice_axis, plane): slice_axis is the array axis with the coarsest spacing (ties:
    -1 when all three spacings agree within 1 %), plane one of "sagittal", "coronal", "axial",
    "oblique" (normal further than `oblique_angle_deg` from every cardinal world axis) or
    "isotropic" when the spacing does not reveal the slice axis.
    """
    spacing = np.asarray(geometry.axis_spacing_mm)
    if spacing.max() <= spacing.min() * 1.01:
        return -1, "isotropic"
    slice_axis = int(np.argmax(spacing))
    return slice_axis, plane_of_normal(geometry.axis_vectors[slice_axis], oblique_angle_deg)


def plane_of_normal(normal: np.ndarray, oblique_angle_deg: float = OBLIQUE_ANGLE_DEG) -> str:
    """Name the plane whose normal is `normal` (world LPS): x -> sagittal, y -> coronal, z -> axial."""
    normal = np.abs(np.asarray(normal, dtype=float))
    normal = normal / np.linalg.norm(normal)
    world_axis = int(np.argmax(normal))
    angle = np.degrees(np.arccos(np.clip(normal[world_axis], -1.0, 1.0)))
    return "oblique" if angle > oblique_angle_deg else PLANES[world_axis]


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"
