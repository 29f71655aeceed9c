"""Carrying a prompted object from its slice to the neighbouring slices, as a user would: the box of
the object found on the previous slice (grown a little) and, optionally, that object as a dense
prompt become the next slice's prompt, slice after slice, while the structure persists.

A walk stops before a slice whose object is empty, smaller than `min_fraction` of the seed's
object (the structure is ending), more than `max_growth` times the previous slice's (the mask
is leaking into a neighbour), or, given the image, whose median intensity lies further from the
seed object's median than `max_intensity_shift` times the seed object's interquartile range
(floored at 2 % of the seed slice's intensity span): the box has slid off the bone into another
tissue, since within one scan a bone's marrow keeps its signal from slice to slice, whatever the
sequence. The intensities are those the network sees (zero-shot: each slice scaled to [0, 1], so
slices compare on nearly, not exactly, one scale); and halfway to another slice prompted for the same
label, whose own walk covers the rest. Works on (rows, cols) probability maps of one label;
`segment(slice, prompt)` gives the object's probability for a prompt (>= 0.5 is inside).

Two designs were measured zero-shot on the real spine (LiteMedSAM, a box per vertebra on its
middle slice, 2 cases): a box drawn afresh from each slice's object (this one) can shrink with a
slice where the network finds only part of the bone, and stops early; a box that follows the
object with limited steps never collapses but walks on past the vertebra's end into muscle, whose
blobs the network segments as readily (neither its IoU head nor the blobs' confidence or contrast
tells them from bone). Per vertebra 0.649 against 0.557: stopping early is also the safer failure
for a user, who adds a box where the carried object ended. Then (stop 23, 4 development volumes
vb3_001..004, 2 of them the ones above): the box drawn where the network's raw probability is >=
0.27 instead of 0.5 (0.6 on the rescaled map; 0.5 there, the object itself, grows, 0.8 shrinks slice
after slice as LiteMedSAM under-fills a box) and the intensity stop at 2 IQRs: 0.688 -> 0.770 per
vertebra (intensity stop alone 0.717 -> 0.762 with the box at 0.65). Last (stop 24), every carried
box is held within the seed object's box grown by a fifth of its side: a bone's cross-sections
away from its middle slice lie within the middle one's, give or take, while a walk that grows its
box a little each slice creeps into a touching bone of the same signal (L5 into the sacrum and
ilium: on vb3_003 L5's walk ran through all 77 slices). Same volumes: 0.770 -> 0.777 (margins
0.1 / 0.2 / 0.3: 0.771 / 0.777 / 0.772). The other 32 volumes are the test (docs/benchmarks.md).
And where walks of two labels cover the same place on a slice, the nearer seed keeps it: on the
real T2 crop, sliced axially, each vertebra's walk ran on into the next (0.354 -> 0.619 per
vertebra there; sagittal spines, whose bodies never overlap, are unchanged).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from sabnet.model.slice_prompts import SlicePrompt

Segment = Callable[[int, SlicePrompt], np.ndarray]


@dataclass
class CarryRules:
    """When a carried object stops (see the module docstring) and how the next prompt is drawn.

    min_fraction: smallest object, as a share of the seed slice's object.
    min_pixels: smallest object in pixels, whatever the seed.
    max_growth: largest object, as a multiple of the previous slice's.
    box_margin: the previous object's box grows by this share of its side on each side (at least 2 px).
    box_threshold: the probability above which the previous object's pixels draw the next box (the
        object itself is where it is >= 0.5). Zero-shot, probabilities are rescaled so that 0.5
        stands for LiteMedSAM's threshold 0.2; there 0.6 (raw 0.27) is used: a box drawn from the
        object itself grows slice after slice, one drawn from raw 0.5 (0.8) shrinks.
    use_mask: also give the previous object as a dense prompt (for networks trained with them).
    max_intensity_shift: stop where the object's median intensity moves more than this many of the
        seed object's interquartile ranges from the seed's median (None: no intensity test; needs
        the image given to `carry_objects`).
    seed_box_margin: keep every carried box within the seed object's box grown by this share of its
        side on each side (None: no bound).
    """

    min_fraction: float = 0.1
    min_pixels: int = 8
    max_growth: float = 2.0
    box_margin: float = 0.1
    box_threshold: float = 0.5
    use_mask: bool = True
    max_intensity_shift: float | None = None
    seed_box_margin: float | None = None


def mask_box(mask: np.ndarray, margin: float) -> tuple[float, float, float, float]:
    """(row0, col0, row1, col1) of a non-empty (rows, cols) mask, grown by `margin` of each side
    (at least 2 px) and clipped to the slice."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
    grow_r, grow_c = max(2.0, margin * (r1 - r0 + 1)), max(2.0, margin * (c1 - c0 + 1))
    h, w = mask.shape
    return (max(0.0, r0 - grow_r), max(0.0, c0 - grow_c), min(h - 1.0, r1 + grow_r), min(w - 1.0, c1 + grow_c))


def carried_prompt(label: int, probability: np.ndarray, rules: CarryRules,
                   bound: tuple[float, float, float, float] | None = None) -> SlicePrompt:
    """The prompt a slice gets from its neighbour's object probability (rows, cols); its box is
    clipped to `bound` (row0, col0, row1, col1) where given."""
    mask = probability >= 0.5
    core = probability >= rules.box_threshold
    box = mask_box(core if core.any() else mask, rules.box_margin)
    if bound is not None:
        r0, c0, r1, c1 = max(box[0], bound[0]), max(box[1], bound[1]), min(box[2], bound[2]), min(box[3], bound[3])
        box = (r0, c0, r1, c1) if r1 > r0 and c1 > c0 else bound
    return SlicePrompt(label, box=box, mask=mask if rules.use_mask else None)


def carry_objects(seeds: dict[int, list[SlicePrompt]], n_slices: int, segment: Segment,
                  rules: CarryRules | None = None, image: np.ndarray | None = None) -> dict[tuple[int, int], np.ndarray]:
    """Objects of every prompted label on its prompted slices and, carried, on their neighbours.

    seeds: {slice: [SlicePrompt, ...]} the user's prompts. image: (n_slices, rows, cols) intensities
    the network sees, for the intensity stop. Returns {(slice, label): probability (rows, cols)}; a
    label prompted on a slice keeps that slice's own result. Where carried objects of two labels
    cover one place on a slice (more than half the smaller one), the one carried from the nearer
    seed keeps it and the other is dropped there: bones stacked along the slice axis (vertebrae
    in axial slices) look alike from slice to slice, and each walk would run on into the next bone.
    """
    rules = rules or CarryRules()
    objects: dict[tuple[int, int], np.ndarray] = {}
    by_label: dict[int, list[int]] = {}
    for s, prompts in seeds.items():
        for prompt in prompts:
            objects[(s, prompt.label)] = segment(s, prompt)
            by_label.setdefault(prompt.label, []).append(s)
    seeded_from = {key: key[0] for key in objects}
    for label, slices in by_label.items():
        slices = sorted(set(slices))
        for i, seed in enumerate(slices):
            if not (objects[(seed, label)] >= 0.5).any():
                continue
            lower = (slices[i - 1] + seed) // 2 + 1 if i > 0 else 0  # the walks of two seeds meet halfway
            upper = (seed + slices[i + 1] + 1) // 2 - 1 if i + 1 < len(slices) else n_slices - 1
            signal = _SeedSignal(image, seed, objects[(seed, label)] >= 0.5, rules.max_intensity_shift)
            for step, end in ((1, upper), (-1, lower)):
                for key in _walk(objects, label, seed, step, end, segment, rules, signal):
                    seeded_from[key] = seed
    _drop_overlaps_of_farther_walks(objects, seeded_from)
    return objects


def _drop_overlaps_of_farther_walks(objects: dict, seeded_from: dict) -> None:
    """Where two labels' objects on a slice share more than half of the smaller one, drop the one
    whose seed is farther from the slice (both stay at equal distance)."""
    by_slice: dict[int, list[int]] = {}
    for t, label in objects:
        by_slice.setdefault(t, []).append(label)
    for t, labels in by_slice.items():
        masks = {label: objects[(t, label)] >= 0.5 for label in labels}
        dropped = set()
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                if a in dropped or b in dropped:
                    continue
                shared = (masks[a] & masks[b]).sum()
                if shared <= 0.5 * min(masks[a].sum(), masks[b].sum()):
                    continue
                da, db = abs(t - seeded_from[(t, a)]), abs(t - seeded_from[(t, b)])
                if da != db:
                    dropped.add(a if da > db else b)
        for label in dropped:
            del objects[(t, label)]


def _walk(objects: dict, label: int, seed: int, step: int, end: int, segment: Segment, rules: CarryRules,
          signal: "_SeedSignal") -> list[tuple[int, int]]:
    """Carry the seed's object slice by slice in direction `step`, up to slice `end` included;
    returns the (slice, label) keys it added."""
    added = []
    previous = objects[(seed, label)]
    smallest = max(rules.min_pixels, rules.min_fraction * (previous >= 0.5).sum())
    bound = None if rules.seed_box_margin is None else mask_box(previous >= 0.5, rules.seed_box_margin)
    t = seed + step
    while (t <= end) if step > 0 else (t >= end):
        probability = segment(t, carried_prompt(label, previous, rules, bound))
        inside = probability >= 0.5
        area = inside.sum()
        if area < smallest or area > rules.max_growth * (previous >= 0.5).sum() or signal.departs(t, inside):
            return added
        objects[(t, label)] = probability
        added.append((t, label))
        previous = probability
        t += step
    return added


class _SeedSignal:
    """The seed object's intensity (median, interquartile range) and the test that a carried object
    has left it. The range is floored at 2 % of the seed slice's intensity span, for bones of
    near-constant signal."""

    def __init__(self, image: np.ndarray | None, seed: int, inside: np.ndarray, max_shift: float | None):
        self.image = image if max_shift is not None and inside.any() else None  # None: the test is off
        if self.image is None:
            return
        values = image[seed][inside]
        q1, self.median, q3 = np.percentile(values, [25, 50, 75])
        span = float(image[seed].max() - image[seed].min())
        self.limit = max_shift * max(q3 - q1, 0.02 * span, 1e-6)

    def departs(self, t: int, inside: np.ndarray) -> bool:
        if self.image is None or not inside.any():
            return False
        return abs(float(np.median(self.image[t][inside])) - self.median) > self.limit
