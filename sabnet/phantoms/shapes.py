"""Analytic shapes as signed distances, evaluated on arrays of points in millimetres.

Every shape maps points `p = (x, y, z)` (three float32 arrays of one shape) to an array `d` of the
same shape: negative inside, positive outside, and close to the distance to the surface (in mm)
near it, so a band `-t < d < 0` is a shell of about `t` mm (a cortex, a skin). Each shape also
reports an axis-aligned box `bounds() -> (lo, hi)` (mm) outside which it is surely positive, so
callers evaluate it only where it can matter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

Points = tuple[np.ndarray, np.ndarray, np.ndarray]
_EPS = np.float32(1e-6)


def rotation(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    """(3, 3) matrix turning vectors by `angle_deg` about `axis` (right hand)."""
    a = np.asarray(axis, dtype=float)
    a = a / np.linalg.norm(a)
    t = np.radians(angle_deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def _local(p: Points, centre: np.ndarray, rows: np.ndarray | None) -> Points:
    """Points relative to `centre`, expressed in the frame whose axes are the rows of `rows`."""
    x, y, z = (p[0] - np.float32(centre[0]), p[1] - np.float32(centre[1]), p[2] - np.float32(centre[2]))
    if rows is None:
        return x, y, z
    r = rows.astype(np.float32)
    return tuple(r[i, 0] * x + r[i, 1] * y + r[i, 2] * z for i in range(3))


def _box_bounds(centre: np.ndarray, half_mm: np.ndarray, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    half = np.asarray(half_mm, dtype=float)
    if rows is not None:
        half = np.abs(rows.T) @ half  # the box of an oriented box
    return centre - half, centre + half


def _ratio(k0: np.ndarray, k1: np.ndarray, r_min, r_max) -> np.ndarray:
    """k0 / k1 of the ellipse/ellipsoid distance approximation, always within [r_min, r_max] (also at the centre)."""
    return np.clip(k0 / (k1 + _EPS), r_min, r_max)


class Shape:
    """A signed-distance shape; subclasses set `sdf` and `bounds`."""

    def sdf(self, p: Points) -> np.ndarray:
        raise NotImplementedError

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


@dataclass
class Ellipsoid(Shape):
    """Ellipsoid with semi-axes `radii_mm` along the rows of `rows` (default: anatomical axes)."""

    centre: np.ndarray
    radii_mm: np.ndarray
    rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.centre = np.asarray(self.centre, dtype=float)
        self.radii_mm = np.asarray(self.radii_mm, dtype=float)

    def sdf(self, p: Points) -> np.ndarray:
        q = _local(p, self.centre, self.rows)
        r = self.radii_mm.astype(np.float32)
        k0 = np.sqrt((q[0] / r[0]) ** 2 + (q[1] / r[1]) ** 2 + (q[2] / r[2]) ** 2)
        k1 = np.sqrt((q[0] / r[0] ** 2) ** 2 + (q[1] / r[1] ** 2) ** 2 + (q[2] / r[2] ** 2) ** 2)
        return (k0 - 1) * _ratio(k0, k1, r.min(), r.max())  # Quilez's approximation; exact on spheres

    def bounds(self):
        return _box_bounds(self.centre, self.radii_mm, self.rows)


@dataclass
class Capsule(Shape):
    """Segment from `a` to `b` swept by a sphere whose radius goes from `ra_mm` to `rb_mm`."""

    a: np.ndarray
    b: np.ndarray
    ra_mm: float
    rb_mm: float | None = None

    def __post_init__(self) -> None:
        self.a = np.asarray(self.a, dtype=float)
        self.b = np.asarray(self.b, dtype=float)
        self.rb_mm = self.ra_mm if self.rb_mm is None else self.rb_mm

    def sdf(self, p: Points) -> np.ndarray:
        v = (self.b - self.a).astype(np.float32)
        w = _local(p, self.a, None)
        t = (w[0] * v[0] + w[1] * v[1] + w[2] * v[2]) * np.float32(1.0 / max(float(v @ v), 1e-9))
        np.clip(t, 0, 1, out=t)
        dist = np.sqrt((w[0] - t * v[0]) ** 2 + (w[1] - t * v[1]) ** 2 + (w[2] - t * v[2]) ** 2)
        return dist - (np.float32(self.ra_mm) + t * np.float32(self.rb_mm - self.ra_mm))

    def bounds(self):
        r = max(self.ra_mm, self.rb_mm)
        return np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r


@dataclass
class Cylinder(Shape):
    """Elliptic cylinder with rounded rims: cross-section semi-axes `radii_mm` (local x, y),
    half-height `half_height_mm` along local z, edges rounded by `rounding_mm`."""

    centre: np.ndarray
    radii_mm: tuple[float, float]
    half_height_mm: float
    rounding_mm: float = 1.0
    rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.centre = np.asarray(self.centre, dtype=float)

    def sdf(self, p: Points) -> np.ndarray:
        q = _local(p, self.centre, self.rows)
        rr = np.float32(self.rounding_mm)
        rx, ry = (np.float32(max(r - self.rounding_mm, 0.5)) for r in self.radii_mm)
        k0 = np.sqrt((q[0] / rx) ** 2 + (q[1] / ry) ** 2)
        k1 = np.sqrt((q[0] / rx ** 2) ** 2 + (q[1] / ry ** 2) ** 2)
        d_side = (k0 - 1) * _ratio(k0, k1, min(rx, ry), max(rx, ry))
        d_cap = np.abs(q[2]) - np.float32(self.half_height_mm - self.rounding_mm)
        outside = np.sqrt(np.maximum(d_side, 0) ** 2 + np.maximum(d_cap, 0) ** 2)
        return np.minimum(np.maximum(d_side, d_cap), 0) + outside - rr

    def bounds(self):
        half = np.array([self.radii_mm[0], self.radii_mm[1], self.half_height_mm])
        return _box_bounds(self.centre, half, self.rows)


@dataclass
class HalfSpace(Shape):
    """Points with (p - point) . normal < 0; unbounded, so only useful inside an `Intersection`."""

    point: np.ndarray
    normal: np.ndarray

    def sdf(self, p: Points) -> np.ndarray:
        n = np.asarray(self.normal, dtype=float)
        n = (n / np.linalg.norm(n)).astype(np.float32)
        q = _local(p, np.asarray(self.point, dtype=float), None)
        return q[0] * n[0] + q[1] * n[1] + q[2] * n[2]

    def bounds(self):
        return np.full(3, -np.inf), np.full(3, np.inf)


def smooth_min(a: np.ndarray, b: np.ndarray, k_mm: float) -> np.ndarray:
    """Union of two distances that fills the crease between them over about `k_mm`."""
    if k_mm <= 0:
        return np.minimum(a, b)
    k = np.float32(k_mm)
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0, 1)
    return b + (a - b) * h - k * h * (1 - h)


@dataclass
class Union(Shape):
    """Union of `parts`, blended over `blend_mm` (0: sharp)."""

    parts: list[Shape]
    blend_mm: float = 0.0

    def sdf(self, p: Points) -> np.ndarray:
        d = self.parts[0].sdf(p)
        for part in self.parts[1:]:
            d = smooth_min(d, part.sdf(p), self.blend_mm)
        return d

    def bounds(self):
        boxes = [s.bounds() for s in self.parts]
        grow = self.blend_mm / 4  # blending swells the union by at most a quarter of the blend width
        return np.min([b[0] for b in boxes], axis=0) - grow, np.max([b[1] for b in boxes], axis=0) + grow


@dataclass
class Intersection(Shape):
    """Points inside every part."""

    parts: list[Shape]

    def sdf(self, p: Points) -> np.ndarray:
        d = self.parts[0].sdf(p)
        for part in self.parts[1:]:
            d = np.maximum(d, part.sdf(p))
        return d

    def bounds(self):
        boxes = [s.bounds() for s in self.parts]
        return np.max([b[0] for b in boxes], axis=0), np.min([b[1] for b in boxes], axis=0)


@dataclass
class Difference(Shape):
    """`keep` with `cut` removed."""

    keep: Shape
    cut: Shape

    def sdf(self, p: Points) -> np.ndarray:
        return np.maximum(self.keep.sdf(p), -self.cut.sdf(p))

    def bounds(self):
        return self.keep.bounds()


@dataclass
class Moved(Shape):
    """`shape` turned by `turn` (3, 3) about `pivot`, then shifted by `shift_mm`."""

    shape: Shape
    turn: np.ndarray
    pivot: np.ndarray = field(default_factory=lambda: np.zeros(3))
    shift_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def sdf(self, p: Points) -> np.ndarray:
        # q = turn^T (p - pivot - shift) + pivot
        q = _local(p, np.asarray(self.pivot) + np.asarray(self.shift_mm), self.turn.T)
        return self.shape.sdf((q[0] + np.float32(self.pivot[0]), q[1] + np.float32(self.pivot[1]),
                               q[2] + np.float32(self.pivot[2])))

    def bounds(self):
        lo, hi = self.shape.bounds()
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        moved = (corners - self.pivot) @ np.asarray(self.turn).T + self.pivot + self.shift_mm
        return moved.min(axis=0), moved.max(axis=0)


@dataclass
class Tube(Shape):
    """A limb or trunk along the anatomical z axis: elliptic cross-sections whose centre (x, y) and
    semi-axes (rx, ry) are interpolated linearly between heights `z_mm`; flat ends at the first and
    last height. Arrays: z_mm (K,), centre_mm (K, 2), radii_mm (K, 2)."""

    z_mm: np.ndarray
    centre_mm: np.ndarray
    radii_mm: np.ndarray

    def __post_init__(self) -> None:
        self.z_mm = np.asarray(self.z_mm, dtype=float)
        self.centre_mm = np.asarray(self.centre_mm, dtype=float)
        self.radii_mm = np.asarray(self.radii_mm, dtype=float)

    def sdf(self, p: Points) -> np.ndarray:
        z = p[2]
        zk = self.z_mm.astype(np.float32)
        # one interpolation for the position between knots, then the four profiles from it
        position = np.interp(z, zk, np.arange(zk.size, dtype=np.float32)).astype(np.float32)
        knot = np.minimum(position.astype(np.intp), zk.size - 2)
        frac = position - knot
        profiles = np.concatenate([self.centre_mm, self.radii_mm], axis=1).astype(np.float32)  # (K, 4)
        slopes = np.diff(profiles, axis=0)
        cx, cy, rx, ry = (profiles[:-1, i].take(knot) + frac * slopes[:, i].take(knot) for i in range(4))
        qx, qy = p[0] - cx, p[1] - cy
        k0 = np.sqrt((qx / rx) ** 2 + (qy / ry) ** 2)
        k1 = np.sqrt((qx / rx ** 2) ** 2 + (qy / ry ** 2) ** 2)
        d_side = (k0 - 1) * _ratio(k0, k1, np.minimum(rx, ry), np.maximum(rx, ry))
        mid, half = (zk[0] + zk[-1]) / 2, (zk[-1] - zk[0]) / 2
        d_cap = np.abs(z - np.float32(mid)) - np.float32(half)
        return np.maximum(d_side, d_cap)

    def bounds(self):
        lo = np.r_[(self.centre_mm - self.radii_mm).min(axis=0), self.z_mm.min()]
        hi = np.r_[(self.centre_mm + self.radii_mm).max(axis=0), self.z_mm.max()]
        return lo, hi
