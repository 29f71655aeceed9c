"""A right hip: proximal femur (head, neck, trochanters, shaft) and the right hemipelvis
(acetabulum, ilium, ischium, pubic rami), with cartilage, a joint-fluid film, the labrum, the
bladder and bowel, and the thigh and buttock soft tissue.

Frame: origin at the centre of the femoral head; x to the subject's left (medial for this hip),
y posterior, z superior. Per subject: neck-shaft angle, anteversion, sizes, fat, bladder filling.
"""
from __future__ import annotations

import numpy as np

from sabnet.phantoms.anatomy import Anatomy, Body, Bone, Joint, Region, Tissue
from sabnet.phantoms.shapes import (Capsule, Cylinder, Difference, Ellipsoid, HalfSpace, Intersection, Tube, Union,
                                    rotation)

BONES = ("femur", "pelvis")


def build_hip(rng: np.random.Generator) -> Anatomy:
    u = rng.uniform
    f = u(0.94, 1.06)
    head_mm = 24.0 * f
    neck_shaft_deg, anteversion_deg = u(122.0, 138.0), u(5.0, 25.0)
    elevation = np.radians(neck_shaft_deg - 90.0)      # neck axis above horizontal
    version = np.radians(anteversion_deg)
    to_head = np.array([np.cos(elevation) * np.cos(version), -np.cos(elevation) * np.sin(version), np.sin(elevation)])
    base = -to_head * 52.0 * f                          # where the neck meets the shaft
    shaft_top = base + np.array([-6.0, 3.0, -12.0])
    shaft_end = shaft_top + np.array([14.0, 2.0, -330.0])
    femur = Bone("femur", [
        (Ellipsoid((0, 0, 0), (head_mm,) * 3), 1.2),
        (Capsule(-to_head * 12.0, base, 15.0 * f, 18.0 * f), 2.0),
        (Ellipsoid(base + np.array([-12.0, 6.0, 10.0]), (13.0 * f, 17.0 * f, 22.0 * f)), 1.4),   # greater trochanter
        (Capsule(base, shaft_top + np.array([2.0, 0, -45.0]), 21.0 * f, 15.0 * f), 2.0),
        (Capsule(shaft_top + np.array([2.0, 0, -45.0]), shaft_end, 14.0 * f, 13.0 * f), 5.0),
        (Ellipsoid(shaft_top + np.array([16.0, 12.0, -40.0]), (8.0, 8.0, 10.0)), 1.2),        # lesser trochanter
    ], blend_mm=7.0)

    cup_gap = u(4.5, 5.5)
    opening = np.array([-np.sin(np.radians(u(40, 50))), -0.3, -np.cos(np.radians(45))])
    opening /= np.linalg.norm(opening)
    cup = Difference(Intersection([Ellipsoid((0, 0, 0), (head_mm + 15.0,) * 3), HalfSpace(opening * 5.0, opening)]),
                     Ellipsoid((0, 0, 0), (head_mm + cup_gap,) * 3))
    wing = rotation((0, 1, 0), -25.0) @ rotation((0, 0, 1), 15.0)
    pelvis = Bone("pelvis", [
        (cup, 1.5),
        (Capsule((26, 10, 44), (22, 10, 78), 18.0, 14.0), 1.5),                                   # supra-acetabular column
        (Cylinder((20, 12, 95), (52.0, 48.0), 7.0, 3.0, wing[[1, 2, 0]]), 1.2),   # iliac wing, thin along x
        (Capsule((16, 30, -30), (18, 36, -62), 13.0, 11.0), 1.5),                                # ischium
        (Ellipsoid((18, 38, -72), (14.0, 14.0, 15.0)), 1.5),                                     # ischial tuberosity
        (Capsule((34, -22, -14), (84, -40, -26), 11.0, 9.0), 1.3),                                # superior pubic ramus
        (Ellipsoid((86, -40, -32), (7.0, 10.0, 18.0)), 1.3),                                     # pubic body
        (Capsule((84, -38, -44), (24, 30, -72), 8.0, 7.0), 1.3),                                 # inferior ramus
    ], blend_mm=8.0)
    labrum = Difference(Ellipsoid((0, 0, 0), (head_mm + 16.0,) * 3),
                        HalfSpace(opening * 2.0, opening))   # the joint space near the acetabular rim

    fat_mm = u(8.0, 35.0)
    trunk = Tube((-90, 20, 260), ((90, 5), (90, 8), (90, 5)), ((170, 115), (175, 120), (165, 110)))
    thigh = Tube((-420, -160, -40), ((-25, 5), (-28, 6), (-25, 5)), ((75, 78), (88, 90), (100, 100)))
    body = Union([trunk, thigh], blend_mm=40.0)
    bladder = u(15.0, 35.0)
    layers = [
        Body(body, skin_mm=u(1.5, 2.5), fat_mm=fat_mm),
        Region(Tissue.VISCERA, Ellipsoid((95, 5, 95), (95, 70, 70))),
        Region(Tissue.FLUID, Ellipsoid((95, -8, -8), (bladder * 1.3, bladder, bladder))),       # bladder
        Region(Tissue.TENDON, Capsule((40, -5, 20), (-10, -30, -30), 3.0)),                     # iliofemoral ligament
        Joint([femur], [pelvis], ((-45, -45, -45), (45, 45, 45)), (1.8, 1.8), reach_mm=6.0, fluid_mm=6.0, rim=labrum),
        femur, pelvis,
    ]
    return Anatomy("hip", layers, roi_centre_mm=np.array([10.0, 5.0, -15.0]) * f,
                   roi_half_mm=np.array([80.0, 70.0, 85.0]) * f,
                   params={"neck_shaft_deg": neck_shaft_deg, "anteversion_deg": anteversion_deg, "fat_mm": fat_mm})
