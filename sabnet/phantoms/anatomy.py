"""Anatomy as layers of tissue in an anatomical frame (mm).

The anatomical frame is LPS-like: x to the subject's left, y posterior, z superior, origin at the
location's joint (or, for the spine, L3). Layers are painted in order, later over earlier:
`Body` (skin, subcutaneous fat, muscle), `Region`s (fat pads, tendons, fluid, discs, viscera),
`Joint`s (articular cartilage, joint fluid, menisci/labra), then `Bone`s (cortex around marrow,
labelled when the bone is one of the location's declared bones).

Every layer works the same way on arrays of points: `bounds()` is a box outside which it paints
nothing, `fields(p)` computes the signed distances its rules read, `classify(fields)` returns the
tissue it paints (KEEP where it paints nothing) and the label it writes, and `slack(fields)` how
far (mm) the points are from changing that answer. The sampler (sabnet/phantoms/sampling.py)
fills whole tiles whose slack exceeds their size without looking inside them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Sequence

import numpy as np

from sabnet.phantoms.shapes import Points, Shape

KEEP = 255  # classify(): leave the tissue / label painted by earlier layers


class Tissue(IntEnum):
    """Tissue classes of the tissue map (uint8)."""

    AIR = 0
    SKIN = 1
    FAT = 2
    MUSCLE = 3
    TENDON = 4      # tendons, ligaments, fibrocartilage (menisci, labra, disc annulus)
    FLUID = 5       # joint fluid, bursae, CSF, bladder
    CARTILAGE = 6   # hyaline articular cartilage
    CORTEX = 7
    MARROW = 8
    DISC = 9        # nucleus pulposus
    NERVE = 10      # spinal cord, cauda equina
    VISCERA = 11    # bowel and other abdominal/pelvic content


def _code(mask: np.ndarray, value: int, otherwise: np.ndarray | int = KEEP) -> np.ndarray:
    return np.where(mask, np.uint8(value), otherwise).astype(np.uint8)


@dataclass
class Body:
    """The body outline `shape`: skin `skin_mm` thick, subcutaneous fat down to `fat_mm`, muscle inside."""

    shape: Shape
    skin_mm: float
    fat_mm: float

    def bounds(self):
        return self.shape.bounds()

    def fields(self, p: Points) -> list[np.ndarray]:
        return [self.shape.sdf(p)]

    def slack(self, fields) -> np.ndarray:
        d = fields[0]
        return np.minimum(np.minimum(np.abs(d), np.abs(d + np.float32(self.skin_mm))), np.abs(d + np.float32(self.fat_mm)))

    def classify(self, fields, label_ids):
        d = fields[0]
        code = _code(d < 0, Tissue.SKIN)
        code = _code(d < -self.skin_mm, Tissue.FAT, code)
        return _code(d < -self.fat_mm, Tissue.MUSCLE, code), None


@dataclass
class Region:
    """`tissue` wherever `shape` is inside."""

    tissue: Tissue
    shape: Shape

    def bounds(self):
        return self.shape.bounds()

    def fields(self, p: Points) -> list[np.ndarray]:
        return [self.shape.sdf(p)]

    def slack(self, fields) -> np.ndarray:
        return np.abs(fields[0])

    def classify(self, fields, label_ids):
        return _code(fields[0] < 0, self.tissue), None


@dataclass
class Bone:
    """A bone: the blended union of `parts`, each (shape, cortex thickness in mm).

    Cortex fills the outer band, as thick as the nearest part says (blended where parts meet);
    marrow fills the rest. The bone is labelled `name` when `labelled` (posterior vertebral
    elements, the sacrum and neighbouring vertebrae are bone but not labels).
    """

    name: str
    parts: list[tuple[Shape, float]]
    blend_mm: float = 4.0
    labelled: bool = True

    def sdf(self, p: Points) -> np.ndarray:
        return self.fields(p)[0]

    def fields(self, p: Points) -> list[np.ndarray]:
        """[signed distance to the surface, signed distance to the marrow], mm."""
        d = self.parts[0][0].sdf(p)
        cortex = np.full(d.shape, self.parts[0][1], dtype=np.float32)
        k = np.float32(self.blend_mm)
        for shape, thickness in self.parts[1:]:
            d_part = shape.sdf(p)
            h = np.clip(0.5 + 0.5 * (d_part - d) / k, 0, 1)  # 1 where the union so far is nearer
            d = d_part + (d - d_part) * h - k * h * (1 - h)
            cortex = np.float32(thickness) + (cortex - np.float32(thickness)) * h
        return [d, d + cortex]

    def slack(self, fields) -> np.ndarray:
        return np.minimum(np.abs(fields[0]), np.abs(fields[1]))

    def bounds(self):
        boxes = [s.bounds() for s, _ in self.parts]
        grow = self.blend_mm / 4  # blending swells the union by at most a quarter of the blend width
        return np.min([b[0] for b in boxes], axis=0) - grow, np.max([b[1] for b in boxes], axis=0) + grow

    def classify(self, fields, label_ids):
        d, d_marrow = fields
        inside = d < 0
        code = _code(d_marrow < 0, Tissue.MARROW, _code(inside, Tissue.CORTEX))
        return code, (_code(inside, label_ids[self.name]) if self.labelled and label_ids else None)


@dataclass
class Joint:
    """Articular cartilage, joint fluid and an optional fibrocartilage rim between bone groups `a` and `b`.

    Cartilage covers each bone (`cartilage_mm` thick) where the other bone is within `reach_mm`;
    fluid fills what lies within `fluid_mm` of both bones and is neither bone nor cartilage; `rim`
    (meniscus, labrum) marks the part of that space that is fibrocartilage. Painted only inside `box`.
    """

    a: list[Bone]
    b: list[Bone]
    box: tuple[Sequence[float], Sequence[float]]
    cartilage_mm: tuple[float, float] = (2.0, 2.0)
    reach_mm: float = 8.0
    fluid_mm: float = 6.0
    rim: Shape | None = None

    def bounds(self):
        return np.asarray(self.box[0], dtype=float), np.asarray(self.box[1], dtype=float)

    def fields(self, p: Points) -> list[np.ndarray]:
        """[distance to a, distance to b, distance to the box (negative inside), distance to the rim]."""
        lo, hi = self.bounds()
        centre, half = (lo + hi) / 2, (hi - lo) / 2
        box = np.maximum(np.maximum(np.abs(p[0] - np.float32(centre[0])) - np.float32(half[0]),
                                    np.abs(p[1] - np.float32(centre[1])) - np.float32(half[1])),
                         np.abs(p[2] - np.float32(centre[2])) - np.float32(half[2]))
        out = [_nearest(self.a, p), _nearest(self.b, p), box]
        return out + ([self.rim.sdf(p)] if self.rim is not None else [])

    def slack(self, fields) -> np.ndarray:
        """Distance to the nearest rule boundary; outside the zone where anything is painted (inside
        the box, 0 < da, db < the largest level) the distance to that zone."""
        da, db, box = fields[0], fields[1], fields[2]
        levels = (0.0, self.reach_mm, self.fluid_mm)
        near = -box
        for values, own in ((da, self.cartilage_mm[0]), (db, self.cartilage_mm[1])):
            for level in levels + (own,):
                np.minimum(near, np.abs(values - np.float32(level)), out=near)
        if self.rim is not None:
            np.minimum(near, np.abs(fields[3]), out=near)
        top = np.float32(max(levels + tuple(self.cartilage_mm)))
        away = np.maximum(np.maximum(np.maximum(da - top, db - top), np.maximum(-da, -db)), box)
        return np.where(away > 0, away, near)

    def classify(self, fields, label_ids):
        da, db = fields[0], fields[1]
        space = (da > 0) & (db > 0) & (fields[2] < 0)
        near = space & (da < self.fluid_mm) & (db < self.fluid_mm)
        cart = space & (((da < self.cartilage_mm[0]) & (db < self.reach_mm))
                        | ((db < self.cartilage_mm[1]) & (da < self.reach_mm)))
        code = _code(near, Tissue.FLUID)
        if self.rim is not None:
            code = _code(near & (fields[3] < 0), Tissue.TENDON, code)
        return _code(cart, Tissue.CARTILAGE, code), None


def _nearest(bones: Sequence[Bone], p: Points) -> np.ndarray:
    d = bones[0].sdf(p)
    for bone in bones[1:]:
        d = np.minimum(d, bone.sdf(p))
    return d


@dataclass
class Anatomy:
    """One subject's anatomy at one location, in the anatomical frame (mm).

    layers: painted in order. roi_centre_mm, roi_half_mm: the box a scan of this location covers.
    params: the subject's drawn variations (for the truth file).
    """

    location: str
    layers: list
    roi_centre_mm: np.ndarray
    roi_half_mm: np.ndarray
    params: dict = field(default_factory=dict)

    def bone_names(self) -> list[str]:
        """The labelled bones, in painting order."""
        names = []
        for layer in self.layers:
            if isinstance(layer, Bone) and layer.labelled and layer.name not in names:
                names.append(layer.name)
        return names
