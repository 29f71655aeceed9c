"""Carrying a prompted object from its slice to the neighbouring slices, as a user would: the box of
the object found on the previous slice (grown a little) and, optionally, that object as a dense
prompt become the next slice's prompt, slice after slice, while the structure persists.

A walk stops before a slice whose object is empty, smaller than `min_fraction` of the seed's
object (the structure is ending), or more than `max_growth` times the previous slice's (the mask
is leaking into a neighbour); and halfway to another slice prompted for the same label, whose own
walk covers the rest. Works on (rows, cols) probability maps of one label; `segment(slice, prompt)`
gives the object's probability for a prompt (>= 0.5 is inside).

Two designs were measured zero-shot on the real spine (LiteMedSAM, a box per vertebra on its
middle slice, 2 cases): a box drawn afresh from each slice's object (this one) can shrink with a
slice where the network finds only part of the bone, and stops early; a box that follows the
object with limited steps never collapses but walks on past the vertebra's end into muscle, whose
blobs the network segments as readily (neither its IoU head nor the blobs' confidence or contrast
tells them from bone). Per vertebra 0.649 against 0.557: stopping early is also the safer failure
for a user, who adds a box where the carried object ended.
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
        object itself is where it is >= 0.5): 1 - t when probabilities are rescaled so that 0.5
        stands for a network's threshold t below its own 0.5, so that the box keeps to what the
        network itself calls inside (a box drawn from the rescaled object grows slice after slice).
    use_mask: also give the previous object as a dense prompt (for networks trained with them).
    """

    min_fraction: float = 0.1
    min_pixels: int = 8
    max_growth: float = 2.0
    box_margin: float = 0.1
    box_threshold: float = 0.5
    use_mask: bool = True


def mask_box(mask: np.ndarray, margin: float) -> tuple[float, float, float, float]:
    """(row0, col0, row1, col1) of a non-empty (rows, cols) mask, grown by `margin` of each side
    (at least 2 px) and clipped to the slice."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
    grow_r, grow_c = max(2.0, margin * (r1 - r0 + 1)), max(2.0, margin * (c1 - c0 + 1))
    h, w = mask.shape
    return (max(0.0, r0 - grow_r), max(0.0, c0 - grow_c), min(h - 1.0, r1 + grow_r), min(w - 1.0, c1 + grow_c))


def carried_prompt(label: int, probability: np.ndarray, rules: CarryRules) -> SlicePrompt:
    """The prompt a slice gets from its neighbour's object probability (rows, cols)."""
    mask = probability >= 0.5
    core = probability >= rules.box_threshold
    return SlicePrompt(label, box=mask_box(core if core.any() else mask, rules.box_margin),
                       mask=mask if rules.use_mask else None)


def carry_objects(seeds: dict[int, list[SlicePrompt]], n_slices: int, segment: Segment,
                  rules: CarryRules | None = None) -> dict[tuple[int, int], np.ndarray]:
    """Objects of every prompted label on its prompted slices and, carried, on their neighbours.

    seeds: {slice: [SlicePrompt, ...]} the user's prompts. Returns {(slice, label): probability
    (rows, cols)}; a label prompted on a slice keeps that slice's own result.
    """
    rules = rules or CarryRules()
    objects: dict[tuple[int, int], np.ndarray] = {}
    by_label: dict[int, list[int]] = {}
    for s, prompts in seeds.items():
        for prompt in prompts:
            objects[(s, prompt.label)] = segment(s, prompt)
            by_label.setdefault(prompt.label, []).append(s)
    for label, slices in by_label.items():
        slices = sorted(set(slices))
        for i, seed in enumerate(slices):
            if not (objects[(seed, label)] >= 0.5).any():
                continue
            lower = (slices[i - 1] + seed) // 2 + 1 if i > 0 else 0  # the walks of two seeds meet halfway
            upper = (seed + slices[i + 1] + 1) // 2 - 1 if i + 1 < len(slices) else n_slices - 1
            for step, end in ((1, upper), (-1, lower)):
                _walk(objects, label, seed, step, end, segment, rules)
    return objects


def _walk(objects: dict, label: int, seed: int, step: int, end: int, segment: Segment, rules: CarryRules) -> None:
    """Carry the seed's object slice by slice in direction `step`, up to slice `end` included."""
    previous = objects[(seed, label)]
    smallest = max(rules.min_pixels, rules.min_fraction * (previous >= 0.5).sum())
    t = seed + step
    while (t <= end) if step > 0 else (t >= end):
        probability = segment(t, carried_prompt(label, previous, rules))
        area = (probability >= 0.5).sum()
        if area < smallest or area > rules.max_growth * (previous >= 0.5).sum():
            return
        objects[(t, label)] = probability
        previous = probability
        t += step
