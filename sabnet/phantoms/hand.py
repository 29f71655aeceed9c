"""A right hand and wrist: distal radius and ulna, the carpal bones, metacarpals 1-5 and the
phalanges, with radiocarpal and metacarpophalangeal cartilage and fluid, flexor and extensor
tendons, thenar and hypothenar muscles, and fingers.

Labels: radius, ulna, carpals (all eight, one label), metacarpal_1..metacarpal_5, phalanges (all,
one label). Frame: origin in the carpus, x to the subject's left (ulnar side of this hand), y
posterior (palm faces -y), z superior (fingers point to -z). Per subject: sizes, finger spread and
flexion, wrist deviation, fat.
"""
from __future__ import annotations

import numpy as np

from sabnet.phantoms.anatomy import Anatomy, Body, Bone, Joint, Region, Tissue
from sabnet.phantoms.shapes import Capsule, Ellipsoid, Tube, Union, rotation

BONES = ("radius", "ulna", "carpals") + tuple(f"metacarpal_{i}" for i in range(1, 6)) + ("phalanges",)

# ray: metacarpal base centre, unit direction, length; phalanx lengths (proximal, middle, distal)
_RAYS = {
    1: ((-23.0, -7.0, -27.0), (-0.45, -0.45, -0.77), 44.0, (31.0, 0.0, 23.0)),
    2: ((-11.0, -1.0, -27.0), (-0.10, 0.0, -1.0), 66.0, (40.0, 24.0, 17.0)),
    3: ((0.0, 0.0, -27.0), (0.0, 0.0, -1.0), 64.0, (44.0, 28.0, 18.0)),
    4: ((10.5, 0.5, -27.0), (0.11, 0.0, -1.0), 57.0, (41.0, 26.0, 17.0)),
    5: ((21.0, 1.0, -26.0), (0.22, 0.0, -1.0), 52.0, (33.0, 19.0, 16.0)),
}
# carpals: centre, semi-axes
_CARPALS = (
    ((-15.0, -1.0, 0.0), (6.5, 6.0, 7.0)),    # scaphoid
    ((-2.0, 0.0, 1.0), (5.5, 7.0, 6.0)),      # lunate
    ((9.5, 1.0, 0.0), (5.0, 5.5, 6.0)),       # triquetrum
    ((10.0, -11.0, -1.0), (4.0, 4.0, 4.0)),   # pisiform
    ((-22.0, -5.0, -14.0), (5.0, 6.0, 6.0)),  # trapezium
    ((-11.0, -2.0, -14.5), (4.5, 5.5, 5.5)),  # trapezoid
    ((0.0, 0.0, -14.0), (5.0, 7.0, 7.0)),     # capitate
    ((10.5, 0.5, -13.5), (4.8, 6.5, 6.5)),    # hamate
)


def build_hand(rng: np.random.Generator) -> Anatomy:
    u = rng.uniform
    f = u(0.93, 1.07)
    bones, fingers = [], []
    for ray, (base, direction, length, phalanges) in _RAYS.items():
        base = np.asarray(base) * f
        direction = np.asarray(direction) / np.linalg.norm(direction)
        head = base + direction * length * f
        r = (4.8 if ray == 1 else 4.2) * f
        bones.append(Bone(f"metacarpal_{ray}", [
            (Ellipsoid(base, (r + 0.2, r + 1.5, 5.0)), 1.0),
            (Capsule(base, head, r, r * 0.95), 1.8),
            (Ellipsoid(head, (r + 1.5, r + 2.0, r + 2.5)), 1.0),
        ], blend_mm=3.0))
        # fingers spread and flex a little at each joint
        turn = rotation((0, 1, 0), u(-6, 6)) @ rotation((1, 0, 0), -u(0, 10))  # flexion: towards the palm
        start = head + direction * (r + 2.5 + 2.0)
        finger_axis = [start]
        radius = r * 0.9
        for length_mm in phalanges:
            if length_mm == 0:
                continue
            direction = turn @ direction
            end = start + direction * length_mm * f
            bones.append(Bone("phalanges", [
                (Ellipsoid(start + direction * 3.0, (radius + 1.2, radius + 1.2, 3.5)), 0.9),
                (Capsule(start + direction * 3.0, end - direction * 2.5, radius * 0.8), 1.3),
                (Ellipsoid(end - direction * 2.5, (radius + 0.6, radius + 0.6, 3.0)), 0.9),
            ], blend_mm=2.5))
            start = end + direction * 2.5
            radius *= 0.85
            finger_axis.append(end)
        fingers.append((finger_axis, ray))

    carpals = [Bone("carpals", [(Ellipsoid(np.asarray(c) * f, np.asarray(r) * f), 1.0)]) for c, r in _CARPALS]
    radius = Bone("radius", [
        (Ellipsoid((-11 * f, 0, 19 * f), (16.0 * f, 10.0 * f, 9.0 * f)), 1.0),
        (Capsule((-11 * f, 0, 22 * f), (-9 * f, 1, 60 * f), 13.0 * f, 9.0 * f), 1.5),
        (Capsule((-9 * f, 1, 60 * f), (-7 * f, 2, 300), 8.5 * f, 7.5 * f), 3.0),
    ], blend_mm=5.0)
    ulna = Bone("ulna", [
        (Ellipsoid((15 * f, 3, 17 * f), (7.5 * f, 7.5 * f, 8.0 * f)), 1.0),
        (Capsule((15 * f, 3, 20 * f), (14 * f, 3, 300), 7.0 * f, 7.5 * f), 2.5),
    ], blend_mm=4.0)

    fat_mm = u(2.0, 6.0)
    forearm = Tube((-102, -90, -40, 0, 40, 320), ((2, -1), (0, 0), (-2, 0), (1, 2), (1, 2), (1, 4)),
                   ((36, 11), (45, 15), (47, 17), (35, 20), (32, 21), (38, 30)))
    finger_tubes = [Capsule(axis[0] - np.array([0, 0, -8.0]), axis[-1], 10.0 if ray == 1 else 9.0, 7.5)
                    for axis, ray in fingers]
    body = Union([forearm, Ellipsoid((-26, -10, -42), (17.0, 14.0, 26.0)), Ellipsoid((28, -6, -50), (10.0, 10.0, 24.0))]
                 + finger_tubes, blend_mm=6.0)
    tendons = [Region(Tissue.TENDON, Capsule(np.asarray(_RAYS[i][0]) * f + np.array([0, -9.0, 25.0]),
                                             axis[-2] + np.array([0, -6.0, 0]), 2.2)) for (axis, i) in fingers if i > 1]
    tendons += [Region(Tissue.TENDON, Capsule(np.asarray(_RAYS[i][0]) * f + np.array([0, 8.0, 25.0]),
                                              axis[0] + np.array([0, 6.0, 0]), 1.6)) for (axis, i) in fingers if i > 1]
    metacarpals = [b for b in bones if b.name.startswith("metacarpal")]
    phalanges = [b for b in bones if b.name == "phalanges"]
    layers = [
        Body(body, skin_mm=u(1.0, 1.6), fat_mm=fat_mm),
        *tendons,
        Joint([radius, ulna], carpals[:4], ((-30, -20, -12), (28, 20, 28)), (1.2, 1.2), reach_mm=5.0, fluid_mm=4.0),
        Joint(metacarpals, phalanges, ((-60, -45, -110), (50, 15, -60)), (1.0, 1.0), reach_mm=5.0, fluid_mm=3.5),
        radius, ulna, *carpals, *metacarpals, *phalanges,
    ]
    return Anatomy("hand", layers, roi_centre_mm=np.array([0.0, 0.0, -50.0]) * f,
                   roi_half_mm=np.array([55.0, 25.0, 90.0]) * f, params={"fat_mm": fat_mm})
