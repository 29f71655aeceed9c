"""The body locations a phantom can show, the bones each declares, and how to build one."""
from __future__ import annotations

from typing import Callable

import numpy as np

from sabnet.phantoms import hand, hip, knee, shoulder, spine
from sabnet.phantoms.anatomy import Anatomy

LOCATIONS = ("knee", "lumbar_spine", "hand", "hip", "shoulder")
BONES: dict[str, tuple[str, ...]] = {
    "knee": knee.BONES,
    "lumbar_spine": spine.BONES,
    "hand": hand.BONES,
    "hip": hip.BONES,
    "shoulder": shoulder.BONES,
}
_BUILDERS: dict[str, Callable[[np.random.Generator], Anatomy]] = {
    "knee": knee.build_knee,
    "lumbar_spine": spine.build_spine,
    "hand": hand.build_hand,
    "hip": hip.build_hip,
    "shoulder": shoulder.build_shoulder,
}
# limbs come as left or right; the spine is midline
MIRRORABLE = {"knee": True, "lumbar_spine": False, "hand": True, "hip": True, "shoulder": True}


def build_anatomy(location: str, rng: np.random.Generator) -> Anatomy:
    """One subject's anatomy at `location`, varied by `rng`."""
    if location not in _BUILDERS:
        raise ValueError(f"unknown location {location!r}; use one of {', '.join(LOCATIONS)}")
    return _BUILDERS[location](rng)


def label_ids(locations) -> dict[str, int]:
    """One id per bone name across `locations` (femur is one label in knee and hip), from 1, in
    the order the locations and their bones are listed."""
    ids: dict[str, int] = {}
    for location in locations:
        for bone in BONES[location]:
            ids.setdefault(bone, len(ids) + 1)
    return ids
