"""A right shoulder: proximal humerus, scapula (glenoid, neck, blade, spine, acromion, coracoid)
and clavicle, with glenohumeral cartilage, joint fluid, the labrum, the supraspinatus tendon, the
deltoid and the chest wall soft tissue.

Frame: origin at the centre of the humeral head; x to the subject's left (medial for this
shoulder), y posterior, z superior. Per subject: sizes, arm abduction and rotation, fat.
"""
from __future__ import annotations

import numpy as np

from sabnet.phantoms.anatomy import Anatomy, Body, Bone, Joint, Region, Tissue
from sabnet.phantoms.shapes import Capsule, Cylinder, Difference, Ellipsoid, Moved, Tube, Union, rotation

BONES = ("humerus", "scapula", "clavicle")


def build_shoulder(rng: np.random.Generator) -> Anatomy:
    u = rng.uniform
    h, s = u(0.94, 1.06), u(0.94, 1.06)
    head_mm = 23.0 * h
    # the arm hangs down, abducted a little and rotated about its own axis
    arm = rotation((0, 1, 0), u(-12.0, 5.0)) @ rotation((0, 0, 1), u(-20.0, 20.0))
    humerus = Bone("humerus", [
        (Moved(part, arm), c) for part, c in [
            (Ellipsoid((0, 0, 0), (head_mm,) * 3), 1.1),
            (Ellipsoid((-17 * h, -4, 8), (10.0 * h, 14.0 * h, 15.0 * h)), 1.1),   # greater tuberosity
            (Ellipsoid((-3, -19 * h, 1), (7.0, 6.0, 9.0)), 1.1),                  # lesser tuberosity
            (Capsule((-6, 0, -12), (-9, 2, -70), 21.0 * h, 12.0 * h), 1.8),
            (Capsule((-9, 2, -70), (-12, 4, -330), 12.0 * h, 10.0 * h), 4.5),
        ]], blend_mm=6.0)

    gap = u(4.5, 5.5)
    glenoid = Difference(Ellipsoid((31 * s, 3, 0), (9.0, 14.0 * s, 20.0 * s)), Ellipsoid((0, 0, 0), (head_mm + gap,) * 3))
    blade_rows = rotation((0, 0, 1), -35.0)[[0, 2, 1]]  # thin along the turned y axis
    scapula = Bone("scapula", [
        (glenoid, 1.2),
        (Capsule((37 * s, 5, 0), (55 * s, 18, -6), 12.0, 9.0), 1.5),                         # neck
        (Cylinder((78 * s, 42 * s, -45 * s), (42.0 * s, 65.0 * s), 4.0, 2.0, blade_rows), 1.1),  # blade
        (Capsule((48 * s, 16, -12), (66 * s, 38 * s, -108 * s), 6.0, 5.0), 1.2),                # lateral border
        (Capsule((105 * s, 62 * s, 12), (20 * s, 24, 34), 7.0, 6.0), 1.2),                     # spine
        (Cylinder((-4, 14, 37 * s), (21.0 * s, 16.0 * s), 4.5, 2.5, rotation((0, 1, 0), -12.0)), 1.1),  # acromion
        (Capsule((31 * s, 0, 18 * s), (19 * s, -28 * s, 17 * s), 7.0, 6.0), 1.2),               # coracoid
    ], blend_mm=6.0)
    clavicle = Bone("clavicle", [
        (Capsule((26 * s, 2, 44 * s), (75 * s, -28 * s, 52 * s), 8.0, 9.0), 1.5),
        (Capsule((75 * s, -28 * s, 52 * s), (150 * s, -40 * s, 48 * s), 9.0, 10.0), 2.0),
    ], blend_mm=8.0)
    labrum = Difference(Ellipsoid((28 * s, 3, 0), (9.0, 19.0 * s, 25.0 * s)),
                        Ellipsoid((28 * s, 3, 0), (11.0, 11.0 * s, 16.0 * s)))

    fat_mm = u(5.0, 20.0)
    trunk = Tube((-300, -60, 30, 60), ((175, 30), (175, 25), (175, 25), (175, 25)),
                 ((165, 115), (170, 110), (160, 100), (130, 80)))
    arm_tube = Tube((-420, -120, -20), ((-12, 6), (-10, 5), (-6, 4)), ((42, 45), (50, 52), (52, 55)))
    deltoid = Ellipsoid((-2, 4, -2), (50.0, 54.0, 62.0))
    body = Union([trunk, arm_tube, deltoid], blend_mm=25.0)
    layers = [
        Body(body, skin_mm=u(1.5, 2.2), fat_mm=fat_mm),
        Region(Tissue.TENDON, Capsule((48 * s, 16, 30), (-14, -2, 26), 5.0, 4.0)),   # supraspinatus tendon
        Region(Tissue.TENDON, Capsule((-12, -30, 8), (-12, -26, -40), 3.0)),          # long head of biceps
        Joint([humerus], [scapula], ((-10, -35, -40), (45, 40, 40)), (1.6, 1.6), reach_mm=7.0, fluid_mm=6.0,
              rim=labrum),
        humerus, scapula, clavicle,
    ]
    return Anatomy("shoulder", layers, roi_centre_mm=np.array([22.0, 10.0, -5.0]) * s,
                   roi_half_mm=np.array([72.0, 65.0, 72.0]) * s, params={"fat_mm": fat_mm})
