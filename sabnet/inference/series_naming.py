"""Names of a series of structures that follow one another along the body (vertebrae: L1, L2, ...
L5), made consistent with their order.

A network that names vertebrae voxel by voxel reads a name partly off where a body sits in the
image: on a scan whose field of view ends elsewhere than its training scans' it calls one body by two
names, or two bodies by one (on the real spine, cropped along it, merged Dice 0.85 against 0.66 per
vertebra: the bones are found, the names are not). Anatomy says more: the bodies of a series follow
one another, one name each, in order, a body's height apart. Here

1. the predicted bodies are the connected components of the series' labels merged (those under
   MIN_SHARE of the typical body's size keep their labels: fragments, not bodies);
2. they are ordered along the line through their centres (the spine's axis, from the label map
   alone: no header orientation is trusted), and each gets its place in the series from the
   distance to the previous one in typical body spacings (a missing body leaves a gap, two blobs at
   one height share a place);
3. the direction and the first body's name are those that agree with the most voxel names of the
   network (and with every anchor: a user's click that says "this is L5" outweighs all votes);
4. every body the chain places within the series takes its name; one it places beyond the
   series' ends (a T12 or S1 found as bone, or a body miscounted across a gap) keeps the network's
   names: removing it lost real bodies on the real spine (merged Dice 0.652 -> 0.588 on cropped
   scans, one click each). A component that is several bodies joined by bridges of false positives (no name
   holds half of it, or it is larger than a typical body and no name holds 80 % of it) keeps its
   voxels' names and takes no place in the chain.

Works on label maps in array order with the voxel spacing in mm; the series is a list of label
values from one end to the other (`vertebra_series` finds it in a plan's label names).

Measured on the real spine (sab_tiny, 8 minutes, fold 0; docs/benchmarks.md): ordering alone
changed nothing (0.630 per vertebra), because that model's bodies were joined through the discs;
one click on the lowest vertebra of scans cropped along the spine raised 0.359 to 0.516.
"""
from __future__ import annotations

import re

import numpy as np
from scipy import ndimage

REGIONS = "CTLS"  # cervical, thoracic, lumbar, sacral: head to foot
VERTEBRA_NAME = re.compile(r"^(?:vertebra[_ ]?)?([CTLS])(\d{1,2})$", re.IGNORECASE)
MIN_SHARE = 0.1      # a component under this share of the typical body's voxels is a fragment (a body cut by
                     # the field of view is one)
ONE_NAME_SHARE = 0.5  # a component whose leading name holds less than this share is several bodies,
JOINED_SHARE = 0.8   # and so is one this many typical bodies large whose leading name holds less
JOINED_SIZE = 1.5    # than JOINED_SHARE (on the real spine a leaky prediction joins L1..L5 into one)
ANCHOR_WEIGHT = 10.0  # an anchor counts as this many times all the series' voxels


def vertebra_series(labels: dict[str, int]) -> list[int]:
    """The label values of the vertebrae among a plan's labels ({name: value}), head to foot, when
    there are at least three of them and they are consecutive (L1..L5, T11..L2, ...); [] otherwise."""
    found = []
    for name, value in labels.items():
        match = VERTEBRA_NAME.match(name.strip())
        if match and value != 0:
            found.append((REGIONS.index(match.group(1).upper()), int(match.group(2)), value))
    found.sort()
    if len(found) < 3:
        return []
    for (r0, n0, _), (r1, n1, _) in zip(found, found[1:]):
        if not ((r1 == r0 and n1 == n0 + 1) or (r1 == r0 + 1 and n1 == 1)):
            return []
    return [value for _, _, value in found]


def name_series(labels: np.ndarray, series: list[int], spacing_mm, anchors: list[tuple[tuple, int]] | None = None
                ) -> np.ndarray:
    """A copy of `labels` (array order) with the series' bodies named in order.

    series: label values from one end of the body to the other. spacing_mm: voxel size along the
    array axes. anchors: [(array index (3 ints), label value)], names a user gave to the body at a
    voxel (clicks).
    """
    out = labels.copy()
    if len(series) < 2:
        return out
    place = np.full(int(max(series)) + 1, -1, np.int64)
    place[list(series)] = np.arange(len(series))
    in_series = (labels > 0) & (labels <= max(series))
    in_series[in_series] = place[labels[in_series]] >= 0
    components, n = ndimage.label(in_series)
    if n == 0:
        return out
    votes = np.bincount(components[in_series] * len(series) + place[labels[in_series]],
                        minlength=(n + 1) * len(series)).reshape(n + 1, len(series))[1:].astype(float)
    sizes = votes.sum(axis=1)
    typical = float(np.median(np.sort(sizes)[-len(series):]))
    leading = votes.max(axis=1) / sizes
    joined = (leading < ONE_NAME_SHARE) | ((sizes > JOINED_SIZE * typical) & (leading < JOINED_SHARE))
    units = np.flatnonzero((sizes >= MIN_SHARE * typical) & ~joined)
    if len(units) == 0:
        return out
    for index, label in anchors or []:
        index = tuple(int(round(v)) for v in index)
        if all(0 <= i < s for i, s in zip(index, labels.shape)) and 0 < label <= max(series) and place[label] >= 0:
            component = components[index]
            if component > 0:
                votes[component - 1, place[label]] += ANCHOR_WEIGHT * sizes.sum()
    centres = np.asarray(ndimage.center_of_mass(in_series, components, units + 1)) * np.asarray(spacing_mm, float)
    steps = _chain_steps(centres)
    best_score, best_places = -1.0, None
    for direction in (1, -1):
        chain = direction * steps
        for first in range(-int(chain.max()), len(series) - int(chain.min())):
            places = first + chain
            valid = (places >= 0) & (places < len(series))
            score = float(votes[units[valid], places[valid]].sum())
            if score > best_score:
                best_score, best_places = score, places
    new_name = np.zeros(n + 1, labels.dtype)
    is_unit = np.zeros(n + 1, bool)
    for unit, p in zip(units, best_places):
        if 0 <= p < len(series):  # a body the chain places beyond the series' ends keeps its names
            is_unit[unit + 1] = True
            new_name[unit + 1] = series[p]
    renamed = is_unit[components]
    out[renamed] = new_name[components[renamed]]
    return out


def _chain_steps(centres: np.ndarray) -> np.ndarray:
    """Each unit's place along the chain (ints, first unit 0 in the order of `centres` given),
    from its centre (units x 3, mm): centres projected on their principal axis, distances in
    typical spacings, rounded."""
    if len(centres) == 1:
        return np.zeros(1, np.int64)
    centred = centres - centres.mean(axis=0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    position = centred @ axis
    order = np.argsort(position)
    gaps = np.diff(position[order])
    spacing = float(np.median(gaps[gaps >= 0.3 * gaps.max()])) if gaps.max() > 0 else 1.0
    chain = np.concatenate([[0], np.cumsum(np.rint(gaps / spacing))]).astype(np.int64)
    steps = np.empty(len(centres), np.int64)
    steps[order] = chain
    return steps
