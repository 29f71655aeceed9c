"""A right knee: distal femur, proximal tibia and fibula, patella, with menisci, cruciate ligaments,
patellar and quadriceps tendons, Hoffa's fat pad, a suprapatellar recess and articular cartilage.

Frame: origin at the centre of the tibiofemoral joint space; x medial (the subject's left), y
posterior, z superior. Per subject: bone sizes (+-5 %), flexion 0-15 degrees, effusion, fat.
"""
from __future__ import annotations

import numpy as np

from sabnet.phantoms.anatomy import Anatomy, Body, Bone, Joint, Region, Tissue
from sabnet.phantoms.shapes import (Capsule, Cylinder, Difference, Ellipsoid, HalfSpace, Intersection, Moved, Tube, Union,
                                    rotation)

BONES = ("femur", "tibia", "fibula", "patella")
_THIN_Y = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])  # rows: a frame whose local z is y


def build_knee(rng: np.random.Generator) -> Anatomy:
    u = rng.uniform
    f, t = u(0.95, 1.05), u(0.95, 1.05)          # femur and tibia size factors
    flexion = u(0.0, 15.0)
    pivot = np.array([0.0, 8.0, 24.0])           # centre of the femoral condyles
    flex = rotation((1, 0, 0), flexion)          # tibia swings posteriorly
    flex_patella = rotation((1, 0, 0), 0.6 * flexion)

    def tib(point):  # a point of the tibial frame, flexed
        return flex @ (np.asarray(point, dtype=float) - pivot) + pivot

    def pat(point):
        return flex_patella @ (np.asarray(point, dtype=float) - pivot) + pivot

    femur = Bone("femur", [
        (Capsule((0, 6, 62), (0, 10, 330), 13.0 * f, 12.0 * f), 4.5),
        (Capsule((0, 5, 36), (0, 6, 64), 24.0 * f, 14.0 * f), 1.8),
        (Ellipsoid((21 * f, 8, 24), (15 * f, 27 * f, 21)), 1.2),
        (Ellipsoid((-21 * f, 8, 24), (16 * f, 26 * f, 21)), 1.2),
        (Ellipsoid((0, -5, 38), (35 * f, 21 * f, 20)), 1.2),
    ], blend_mm=6.0)
    tibia_parts = Bone("tibia", [
        (Cylinder((0, 6, -14), (38 * t, 26 * t), 11.0, 4.0), 1.2),
        (Intersection([Capsule((0, 8, -16), (0, 10, -80), 27.0 * t, 13.0 * t), HalfSpace((0, 0, -8), (0, 0, 1))]), 1.5),
        (Capsule((0, 10, -50), (0, 14, -330), 13.0 * t, 11.0 * t), 4.5),
        (Ellipsoid((0, -16, -44), (9, 6, 13)), 1.5),
    ], blend_mm=6.0)
    fibula_parts = Bone("fibula", [
        (Ellipsoid((-39 * t, 22, -40), (9 * t, 9 * t, 11)), 1.2),
        (Capsule((-39 * t, 23, -50), (-34 * t, 20, -330), 7.0 * t, 6.0 * t), 2.5),
    ], blend_mm=4.0)
    tibia = _moved(tibia_parts, flex, pivot)
    fibula = _moved(fibula_parts, flex, pivot)
    patella = _moved(Bone("patella", [
        (Ellipsoid((0, -43, 34), (21 * f, 10 * f, 22 * f), rotation((1, 0, 0), -8)), 1.2),
    ]), flex_patella, pivot)

    effusion_mm = u(1.0, 7.0)
    fat_mm = u(4.0, 14.0)
    leg = Tube(
        z_mm=(-420, -120, -40, 20, 100, 420),
        centre_mm=((0, 12), (0, 16), (0, 9), (0, 3), (0, 5), (0, 6)),
        radii_mm=np.array(((44, 44), (52, 57), (53, 55), (56, 61), (62, 62), (72, 68))) * u(0.95, 1.1),
    )
    menisci = Union([
        Difference(Cylinder(tib((20, 7, -3)), (17, 22), 6.0, 1.0), Cylinder(tib((20, 7, -3)), (8, 12), 7.0, 1.0)),
        Difference(Cylinder(tib((-20, 6, -3)), (17, 20), 6.0, 1.0), Cylinder(tib((-20, 6, -3)), (9, 10), 7.0, 1.0)),
    ])
    layers = [
        Body(leg, skin_mm=u(1.2, 2.0), fat_mm=fat_mm),
        Region(Tissue.FAT, Ellipsoid((0, 48, 8), (22, 14, 45))),                       # popliteal fat
        Region(Tissue.FAT, Ellipsoid(tib((0, -27, 2)), (22, 11, 14))),                  # Hoffa's fat pad
        Region(Tissue.FLUID, Cylinder((0, -12 - effusion_mm, 58), (24, 18), effusion_mm, min(effusion_mm, 4.0),
                                       _THIN_Y)),                                # suprapatellar recess
        Region(Tissue.TENDON, Capsule(pat((0, -42, 12)), tib((0, -21, -46)), 4.0, 4.0)),  # patellar tendon
        Region(Tissue.TENDON, Capsule(pat((0, -40, 56)), (0, -28, 115), 4.5, 6.0)),      # quadriceps tendon
        Region(Tissue.TENDON, Capsule((-7, 20, 17), tib((2, -4, -3)), 3.5)),             # ACL
        Region(Tissue.TENDON, Capsule((7, 2, 14), tib((0, 26, -8)), 4.0)),               # PCL
        Joint([femur], [tibia], ((-50, -30, -14), (50, 40, 14)), (2.4, 2.2), reach_mm=10.0, fluid_mm=7.0, rim=menisci),
        Joint([femur], [patella], ((-30, -60, 5), (30, -15, 65)), (2.4, 3.0), reach_mm=9.0, fluid_mm=6.0),
        femur, tibia, fibula, patella,
    ]
    return Anatomy("knee", layers, roi_centre_mm=np.array([0.0, 5.0, 5.0]), roi_half_mm=np.array([55.0, 62.0, 75.0]),
                   params={"flexion_deg": flexion, "effusion_mm": effusion_mm, "fat_mm": fat_mm})


def _moved(bone: Bone, turn: np.ndarray, pivot: np.ndarray) -> Bone:
    """`bone` turned by `turn` about `pivot`."""
    return Bone(bone.name, [(Moved(shape, turn, pivot), c) for shape, c in bone.parts], bone.blend_mm, bone.labelled)
