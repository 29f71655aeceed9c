"""A box for a single click, for pretrained networks that were trained with boxes only.

LiteMedSAM was trained with box prompts: a point alone makes it segment nothing (measured on the
real spine: Dice 0.00 with any of its four mask tokens). Given one positive point, square boxes of
growing side are centred on it and the object each gives is looked at: the first object that
holds the point and fits inside its box with room to spare (it does not touch the box's sides, so
the box did not cut it) is taken; when none fits, the object of the largest box that holds the
point. The object's own bounding box (grown by `margin`) then prompts the slice, as a user's box.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from sabnet.model.prompt_carrying import mask_box
from sabnet.model.slice_prompts import SlicePrompt

SIDES_PX = (12, 16, 24, 32, 48, 64, 96, 128)  # box sides tried, pixels of the preprocessed slice


def box_for_point(prompt: SlicePrompt, shape: tuple[int, int], segment: Callable[[SlicePrompt], np.ndarray],
                  margin: float = 0.1, sides: tuple[int, ...] = SIDES_PX) -> SlicePrompt:
    """`prompt` (one positive point, no box) with a box found as the module docstring says; other
    prompts come back unchanged. segment(prompt) -> object probability (rows, cols)."""
    positive = np.asarray(prompt.points)[np.asarray(prompt.point_labels) == 1]
    if prompt.box is not None or prompt.mask is not None or len(positive) != 1:
        return prompt
    row, col = positive[0]
    h, w = shape
    r, c = int(np.clip(round(row), 0, h - 1)), int(np.clip(round(col), 0, w - 1))
    fallback = None
    for side in sides:
        half = side / 2
        box = (max(0.0, row - half), max(0.0, col - half), min(h - 1.0, row + half), min(w - 1.0, col + half))
        mask = segment(SlicePrompt(prompt.label, box=box)) >= 0.5
        if not mask[r, c]:
            continue
        fallback = mask
        if _fits(mask, box):
            break
    if fallback is None:
        return prompt
    return SlicePrompt(prompt.label, prompt.points, prompt.point_labels, box=mask_box(fallback, margin))


def _fits(mask: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    """The mask keeps at least one pixel off every side of the box (sides on the slice's edge excepted)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, c0, r1, c1 = box
    h, w = mask.shape
    return ((r0 <= 0 or rows[0] > r0 + 1) and (c0 <= 0 or cols[0] > c0 + 1)
            and (r1 >= h - 1 or rows[-1] < r1 - 1) and (c1 >= w - 1 or cols[-1] < c1 - 1))
