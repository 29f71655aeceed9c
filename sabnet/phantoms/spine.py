"""A lumbar spine: vertebral bodies T12-L5 on a lordotic curve, discs (annulus and nucleus),
posterior elements, the sacrum, the spinal canal with CSF, conus and cauda equina, paraspinal
muscles and abdominal content in front.

Labels are the vertebral bodies L1..L5 only (as in the MyoSegmenTUM cohort); T12, the sacrum,
the posterior elements and the discs are present but unlabelled. Frame: origin at the centre of
L3, x left, y posterior, z superior. Per subject: sizes, lordosis, disc heights and degeneration,
a slight scoliotic sway, fat.
"""
from __future__ import annotations

import numpy as np

from sabnet.phantoms.anatomy import Anatomy, Body, Bone, Region, Tissue
from sabnet.phantoms.shapes import Capsule, Cylinder, Ellipsoid, Tube

BONES = ("L1", "L2", "L3", "L4", "L5")
_LEVELS = ("T12", "L1", "L2", "L3", "L4", "L5")
_HEIGHT_MM = (23.0, 25.0, 26.0, 27.0, 27.0, 26.0)
_RADII_MM = ((19.0, 14.5), (20.5, 15.0), (22.0, 16.0), (23.0, 16.5), (24.0, 17.0), (25.0, 17.0))
_DISC_MM = (7.0, 8.0, 9.0, 10.0, 11.0, 10.0)   # below each level; the last is L5/S1


class _Curve:
    """The lordotic spine axis in the y-z plane: arc length s (0 at L3, up positive) -> point, frame."""

    def __init__(self, curvature_per_mm: float, sway_mm: float):
        self.k, self.sway = curvature_per_mm, sway_mm

    def point(self, s: float) -> np.ndarray:
        angle = self.k * s
        y = (1 - np.cos(angle)) / self.k
        z = np.sin(angle) / self.k
        return np.array([self.sway * np.sin(s / 90.0), y, z])

    def rows(self, s: float, extra_deg: float = 0.0) -> np.ndarray:
        """Rows: x, then y and z of the segment at s (z along the curve)."""
        a = self.k * s + np.radians(extra_deg)
        return np.array([[1.0, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def build_spine(rng: np.random.Generator) -> Anatomy:
    u = rng.uniform
    size = u(0.94, 1.06)
    curve = _Curve(u(0.0030, 0.0065), u(-6.0, 6.0))
    heights = np.array(_HEIGHT_MM) * size * u(0.96, 1.04, 6)
    discs = np.array(_DISC_MM) * u(0.85, 1.1, 6)
    degenerated = [i >= 4 and rng.random() < 0.3 for i in range(6)]
    discs[degenerated] *= 0.7

    # arc length of each body centre, L3 (index 3) at 0
    centre_s = np.zeros(6)
    for i in range(2, -1, -1):
        centre_s[i] = centre_s[i + 1] + heights[i + 1] / 2 + discs[i] + heights[i] / 2
    for i in range(4, 6):
        centre_s[i] = centre_s[i - 1] - heights[i - 1] / 2 - discs[i - 1] - heights[i] / 2

    layers_discs, bodies, arches, canal = [], [], [], []
    for i, level in enumerate(_LEVELS):
        s, rows = centre_s[i], curve.rows(centre_s[i])
        rx, ry = np.array(_RADII_MM[i]) * size
        centre = curve.point(s)
        bodies.append(Bone(level, [(Cylinder(centre, (rx, ry), heights[i] / 2, 3.0, rows), 1.3)],
                           labelled=level in BONES))
        arches.append(Bone(f"{level}_posterior", _posterior_elements(centre, rows, rx, ry), blend_mm=4.0,
                           labelled=False))
        canal.append(centre + rows[1] * (ry + 9.0))
        disc_s = s - heights[i] / 2 - discs[i] / 2
        disc_centre, disc_rows = curve.point(disc_s), curve.rows(disc_s)
        layers_discs.append(Region(Tissue.TENDON, Cylinder(disc_centre, (rx - 0.5, ry - 0.5), discs[i] / 2 + 1.0, 2.0,
                                                           disc_rows)))
        nucleus = (0.55 * rx, 0.5 * ry) if not degenerated[i] else (0.3 * rx, 0.25 * ry)
        layers_discs.append(Region(Tissue.DISC, Cylinder(disc_centre + disc_rows[1] * 2.0, nucleus,
                                                         max(discs[i] / 2 - 1.2, 1.0), 1.0, disc_rows)))

    sacrum_s = centre_s[5] - heights[5] / 2 - discs[5]
    sacrum = _sacrum(curve, sacrum_s, size)
    canal.append(curve.point(sacrum_s - 30) + curve.rows(sacrum_s - 30, -25.0)[1] * 24.0)
    csf = [Region(Tissue.FLUID, Capsule(a, b, 8.0 * size)) for a, b in zip(canal[:-1], canal[1:])]
    conus_end = canal[1] + (canal[2] - canal[1]) * u(0.3, 0.9)
    nerves = [Region(Tissue.NERVE, Capsule(canal[0] + (canal[0] - canal[1]), conus_end, 4.5, 3.0))]
    nerves += [Region(Tissue.NERVE, Capsule(a + np.array([0, 3.0, 0]), b + np.array([0, 3.0, 0]), 2.5))
               for a, b in zip([conus_end] + canal[2:-2], canal[2:-1])]

    fat_mm = u(6.0, 30.0)
    z_knots = np.linspace(-260.0, 260.0, 14)
    back = np.array([curve.point(np.clip(z, -160, 160))[1] for z in z_knots])
    radii = np.c_[np.full(z_knots.size, 165.0), np.full(z_knots.size, 150.0 + fat_mm * 0.6)] * u(0.93, 1.07)
    body = Tube(z_knots, np.c_[np.zeros(z_knots.size), back - 45.0], radii)
    layers = ([Body(body, skin_mm=u(1.5, 2.5), fat_mm=fat_mm),
               Region(Tissue.VISCERA, Ellipsoid((0, -115, 0), (120, 85, 230)))]
              + csf + nerves + layers_discs + bodies + arches + [sacrum])
    return Anatomy("lumbar_spine", layers, roi_centre_mm=np.array([0.0, 20.0, -15.0]),
                   roi_half_mm=np.array([50.0, 75.0, 120.0]) * size,
                   params={"lordosis_per_mm": curve.k, "degenerated_discs": [l for l, d in zip(_LEVELS, degenerated) if d],
                           "fat_mm": fat_mm})


def _posterior_elements(centre, rows, rx: float, ry: float) -> list:
    """Pedicles, laminae, spinous and transverse processes, articular facets of one vertebra."""
    x, y, z = rows

    def at(a, b, c):
        return centre + a * x + b * y + c * z

    parts = []
    for side in (-1, 1):
        pedicle_root, pedicle_end = at(side * 0.55 * rx, 0.7 * ry, 2), at(side * 0.6 * rx, ry + 16, 2)
        parts += [
            (Capsule(pedicle_root, pedicle_end, 5.0), 1.2),
            (Capsule(pedicle_end, at(side * 4, ry + 27, -2), 4.0), 1.0),                 # lamina
            (Capsule(pedicle_end, at(side * (rx + 26), ry + 14, 3), 4.0, 3.0), 1.0),     # transverse process
            (Ellipsoid(at(side * 0.62 * rx, ry + 19, 10), (5.0, 5.0, 6.0), rows), 1.0),  # superior facet
            (Ellipsoid(at(side * 0.5 * rx, ry + 22, -10), (5.0, 5.0, 6.0), rows), 1.0),  # inferior facet
        ]
    parts.append((Capsule(at(0, ry + 27, -2), at(0, ry + 52, -10), 5.0, 6.0), 1.0))   # spinous process
    return parts


def _sacrum(curve: _Curve, top_s: float, size: float) -> Bone:
    """S1-S3 bodies bending ever more posteriorly, the alae, and the posterior sacral plate (unlabelled)."""
    parts, backs = [], []
    top = curve.point(top_s - 4.0)  # room for the steeper S1 endplate
    for i, (height, (rx, ry)) in enumerate(zip((24.0, 20.0, 17.0), ((25.0, 17.0), (21.0, 14.0), (16.0, 11.0)))):
        rows = curve.rows(top_s, -8.0 - 16.0 * i)
        centre = top - rows[2] * height / 2
        top = centre - rows[2] * (height / 2 + 1.5)
        parts.append((Cylinder(centre, (rx * size, ry * size), height / 2, 3.0, rows), 1.2))
        backs.append(centre + rows[1] * (ry * size + 16.0))
        if i == 0:
            parts.append((Ellipsoid(centre + rows[1] * 6.0, (52.0 * size, 16.0, 16.0), rows), 1.2))  # alae
    parts.append((Capsule(backs[0], backs[-1], 8.0, 5.0), 1.2))
    return Bone("sacrum", parts, blend_mm=6.0, labelled=False)
