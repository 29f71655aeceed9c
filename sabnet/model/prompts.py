"""Prompts for the mask decoder, and the training-time sampler that draws them from ground truth.

Coordinates are pixels of the S x S model input, x = column and y = row, as SAM uses them; a label
slice (h, w) given to the sampler lies at the top-left of that input (the slice is padded
bottom/right), so its pixel (row, col) is input point (x=col, y=row).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor


@dataclass
class Prompts:
    """A batch of prompts; a sample without any valid point, box or mask is an automatic sample.

    label: (B,) long, the declared label each prompt asks for (0: all / unspecified).
    points: (B, N, 2) float, (x, y) input pixels; point_labels: (B, N) long, 1 positive,
        0 negative, -1 padding (N may be 0).
    boxes: (B, 4) float (x0, y0, x1, y1) input pixels; box_valid: (B,) bool.
    mask: (B, 1, 4g, 4g) float, a previous mask's logits at the decoder's resolution (as SAM uses
        it), or None; mask_valid: (B,) bool.
    Missing parts are filled in as absent, so `Prompts(label=torch.zeros(4, dtype=torch.long))`
    is a batch of 4 automatic samples.
    """

    label: Tensor
    points: Tensor | None = None
    point_labels: Tensor | None = None
    boxes: Tensor | None = None
    box_valid: Tensor | None = None
    mask: Tensor | None = None
    mask_valid: Tensor | None = None

    def __post_init__(self) -> None:
        self.label = torch.as_tensor(self.label, dtype=torch.long).reshape(-1)
        batch, device = self.label.shape[0], self.label.device
        if self.points is None:
            self.points = torch.zeros(batch, 0, 2, device=device)
            self.point_labels = torch.zeros(batch, 0, dtype=torch.long, device=device)
        if self.point_labels is None or self.points.shape[:2] != self.point_labels.shape or self.points.shape[0] != batch:
            raise ValueError("points (B, N, 2) need point_labels (B, N) with the batch size of label")
        if self.boxes is None:
            self.boxes = torch.zeros(batch, 4, device=device)
            self.box_valid = torch.zeros(batch, dtype=torch.bool, device=device)
        elif self.box_valid is None:
            self.box_valid = torch.ones(batch, dtype=torch.bool, device=device)
        if self.boxes.shape != (batch, 4):
            raise ValueError(f"boxes must be (B, 4) = ({batch}, 4), got {tuple(self.boxes.shape)}")
        if self.mask is not None and self.mask_valid is None:
            self.mask_valid = torch.ones(batch, dtype=torch.bool, device=device)
        if self.mask_valid is None:
            self.mask_valid = torch.zeros(batch, dtype=torch.bool, device=device)

    @property
    def batch_size(self) -> int:
        return self.label.shape[0]

    @property
    def automatic(self) -> Tensor:
        """(B,) bool: samples with no valid point, box or mask."""
        has_point = (self.point_labels >= 0).any(dim=1)
        return ~(has_point | self.box_valid | self.mask_valid)

    def with_mask(self, mask: Tensor, valid: Tensor | None = None) -> "Prompts":
        """The same prompts with a dense mask prompt (B, 1, 4g, 4g) added."""
        return replace(self, mask=mask, mask_valid=valid)

    def __getitem__(self, index: Tensor | list[int] | slice) -> "Prompts":
        """The prompts of some samples (an index tensor, a list of indices or a slice)."""
        if isinstance(index, list):
            index = torch.as_tensor(index, dtype=torch.long, device=self.label.device)
        return Prompts(**{k: (v[index] if isinstance(v, Tensor) else v) for k, v in vars(self).items()})

    def to(self, device: torch.device | str) -> "Prompts":
        return Prompts(**{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in vars(self).items()})


@dataclass
class PromptSampler:
    """Draws training prompts from label slices (numpy in, `Prompts` out).

    prompt_probability: chance that a sample is prompted rather than automatic.
    max_positive_points, max_negative_points: per prompted sample, 1..max positive (0..max with a
        box) and 0..max negative points are drawn; padded to max_positive + max_negative.
    box_probability: chance that a prompted sample gets a box.
    box_jitter_fraction: each box edge moves by up to this fraction of the box's width (x edges)
        or height (y edges), uniformly.
    deep_fraction: positive points come only from pixels whose distance to the structure's border
        is at least this fraction of the largest such distance in their connected component,
        weighted by that distance.
    negative_margin_px: without a previous prediction, negative points lie in the background
        within this many pixels of the structure.
    """

    prompt_probability: float = 0.5
    max_positive_points: int = 3
    max_negative_points: int = 2
    box_probability: float = 0.5
    box_jitter_fraction: float = 0.1
    deep_fraction: float = 0.5
    negative_margin_px: float = 10.0

    @property
    def n_points(self) -> int:
        return self.max_positive_points + self.max_negative_points

    def sample(self, label_slices: np.ndarray, rng: np.random.Generator, labels: Sequence[int] | None = None,
               previous_prediction: np.ndarray | None = None) -> Prompts:
        """Prompts for a batch of label slices (B, h, w) of integer labels.

        labels: the label each sample asks for; None picks one of the labels present at random.
            A sample whose label is absent from its slice (or an empty slice) becomes automatic.
        previous_prediction: (B, h, w) bool, the current prediction of the prompted label; negative
            points then come from its false positives (where there are any).
        Automatic samples get label 0.
        """
        label_slices = np.asarray(label_slices)
        batch = label_slices.shape[0]
        points = np.zeros((batch, self.n_points, 2), np.float32)
        point_labels = -np.ones((batch, self.n_points), np.int64)
        boxes = np.zeros((batch, 4), np.float32)
        box_valid = np.zeros(batch, bool)
        chosen = np.zeros(batch, np.int64)
        for b in range(batch):
            counts = np.bincount(label_slices[b].ravel().astype(np.int64, copy=False))
            present = [int(v) for v in np.flatnonzero(counts) if v > 0]
            label = int(labels[b]) if labels is not None else (int(rng.choice(present)) if present else 0)
            if rng.random() >= self.prompt_probability or label not in present:
                continue
            structure = label_slices[b] == label
            chosen[b] = label
            box_valid[b] = rng.random() < self.box_probability
            if box_valid[b]:
                boxes[b] = self._box(structure, rng)
            n_pos = int(rng.integers(0 if box_valid[b] else 1, self.max_positive_points + 1))
            n_neg = int(rng.integers(0, self.max_negative_points + 1))
            previous = None if previous_prediction is None else np.asarray(previous_prediction[b], bool)
            pos = self.positive_points(structure, n_pos, rng)
            neg = self.negative_points(structure, n_neg, rng, previous)
            for i, (yx, value) in enumerate([(p, 1) for p in pos] + [(p, 0) for p in neg]):
                points[b, i] = (yx[1], yx[0])
                point_labels[b, i] = value
        return Prompts(label=torch.from_numpy(chosen), points=torch.from_numpy(points),
                       point_labels=torch.from_numpy(point_labels), boxes=torch.from_numpy(boxes),
                       box_valid=torch.from_numpy(box_valid))

    def positive_points(self, structure: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 2) (row, col) pixels deep inside `structure` (h, w) bool."""
        window, origin = _around(structure, structure, 1)
        depth = ndimage.distance_transform_edt(window)
        components, n_comp = ndimage.label(window)
        deepest = np.asarray(ndimage.maximum(depth, components, index=np.arange(1, n_comp + 1)))
        threshold = np.concatenate([[np.inf], self.deep_fraction * deepest])[components]
        return _draw(np.where(depth >= threshold, depth, 0.0), n, rng) + origin

    def negative_points(self, structure: np.ndarray, n: int, rng: np.random.Generator,
                        previous: np.ndarray | None = None) -> np.ndarray:
        """(n, 2) (row, col) pixels outside `structure`: deep in the false positives of `previous`
        when it has any, else in the background within `negative_margin_px` of the structure."""
        if previous is not None and (previous & ~structure).any():
            false_positive = previous & ~structure
            window, origin = _around(false_positive, false_positive, 1)
            return _draw(ndimage.distance_transform_edt(window), n, rng) + origin
        margin = int(np.ceil(self.negative_margin_px)) + 1
        window, origin = _around(structure, structure, margin)
        inside = _around(structure, np.ones_like(structure), margin)[0]  # pixels of the slice itself
        distance = ndimage.distance_transform_edt(~window)
        near = (distance > 0) & (distance <= self.negative_margin_px) & inside
        return _draw(near.astype(float), n, rng) + origin

    def _box(self, structure: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(x0, y0, x1, y1) of the structure's bounding box, edges jittered, clipped to the slice."""
        rows, cols = np.flatnonzero(structure.any(axis=1)), np.flatnonzero(structure.any(axis=0))
        y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
        jitter_x = self.box_jitter_fraction * (x1 - x0 + 1)
        jitter_y = self.box_jitter_fraction * (y1 - y0 + 1)
        box = np.array([x0, y0, x1, y1], float) + rng.uniform(-1, 1, 4) * [jitter_x, jitter_y, jitter_x, jitter_y]
        h, w = structure.shape
        box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
        return np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])


def _around(mask: np.ndarray, source: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """`source` cut to the bounding box of `mask` grown by `margin` pixels, padded with False where
    that box leaves the slice, and the (row, col) of the window's first pixel in the slice.

    Distance transforms on the window equal those on the whole slice up to `margin` pixels from
    `mask` (the window's border is outside the mask), at a fraction of the cost.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, r1 = rows[0] - margin, rows[-1] + margin + 1
    c0, c1 = cols[0] - margin, cols[-1] + margin + 1
    h, w = mask.shape
    window = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    window[max(0, -r0): (r1 - r0) - max(0, r1 - h), max(0, -c0): (c1 - c0) - max(0, c1 - w)] = \
        source[max(0, r0): min(h, r1), max(0, c0): min(w, c1)]
    return window, np.array([r0, c0])


def _draw(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct (row, col) pixels drawn with probability proportional to `weights` (fewer if
    fewer pixels have weight)."""
    flat = weights.ravel()
    candidates = np.flatnonzero(flat > 0)
    n = min(n, candidates.size)
    if n == 0:
        return np.zeros((0, 2), np.int64)
    picked = rng.choice(candidates, size=n, replace=False, p=flat[candidates] / flat[candidates].sum())
    return np.stack(np.unravel_index(picked, weights.shape), axis=1)
