"""Which axis of a case to slice along: the plane it was acquired in, whatever its array order.

A case's slice axis is its coarsest axis (its two finest axes span the acquisition plane).
Isotropic cases, whose spacing does not tell, follow the cohort's majority plane.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from sabnet.io.geometry import PLANES, Geometry, acquisition_plane
from sabnet.io.slice_frame import world_axis_assignment
from sabnet.planning.plans import CaseSlicing


def nearest_cardinal_plane(geometry: Geometry, slice_axis: int) -> str:
    """The cardinal plane closest to the one spanned by the two axes other than `slice_axis`."""
    world_axes, _ = world_axis_assignment(geometry)
    return PLANES[world_axes[slice_axis]]


def majority_plane(geometries: list[Geometry]) -> tuple[str, str]:
    """The cohort's usual acquisition plane and why.

    Counts the planes of anisotropic cases (oblique ones by their nearest cardinal plane). If every
    case is isotropic, each case votes with its thinnest axis (fewest mm across): real isotropic
    acquisitions still cover fewer millimetres across their slices than in-plane.
    """
    votes = Counter()
    for g in geometries:
        axis, _ = acquisition_plane(g)
        if axis >= 0:
            votes[nearest_cardinal_plane(g, axis)] += 1
    if votes:
        plane, n = votes.most_common(1)[0]
        return plane, f"{n} of {sum(votes.values())} anisotropic cases are acquired {plane}ly (oblique ones counted by their nearest cardinal plane)"
    for g in geometries:
        votes[nearest_cardinal_plane(g, int(np.argmin(g.extent_mm)))] += 1
    plane, n = votes.most_common(1)[0]
    return plane, (f"all cases are isotropic; {n} of {len(geometries)} are thinnest across the {plane} plane, "
                   "which is how such volumes are usually acquired")


def slicing_for(geometry: Geometry, majority: str) -> CaseSlicing:
    """Decide the slice axis of one case (also used for new cases at prediction time)."""
    axis, plane = acquisition_plane(geometry)
    spacing = geometry.axis_spacing_mm
    if axis >= 0:
        in_plane = [f"{spacing[a]:.3g}" for a in range(3) if a != axis]
        return CaseSlicing(axis, plane, f"coarsest axis ({spacing[axis]:.3g} mm vs {' x '.join(in_plane)} mm in-plane): "
                                        f"acquired {plane}")
    normal = PLANES.index(majority)
    axis = int(np.argmax(np.abs(geometry.axis_vectors[:, normal])))
    return CaseSlicing(axis, majority, f"isotropic ({spacing[0]:.3g} mm); follows the cohort's majority plane ({majority})")
