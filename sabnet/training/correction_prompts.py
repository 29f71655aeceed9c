"""Correction prompts: points where the model is wrong, as a user clicks them.

Prompts drawn from the ground truth alone (`PromptSampler.sample`) mostly point at structures the
automatic mode already finds, so a model learns that a prompt changes little. SAM trains its
interactive mode by simulating corrections: predict, then click in the errors. Here a share of the
prompted samples of each training batch gets its points replaced by positive points deep in the
false negatives of its label and negative points in its false positives of the model's own
automatic prediction (from the same image embedding, without gradients), and, half of the time,
that prediction as a dense mask prompt (as +-8 logits, the form `batch_prompts` feeds back at
prediction). Samples whose prediction has no false negative keep their positive points. The
samples are chosen first (`correction_samples`), so that only they are decoded automatically.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from sabnet.model.prompts import Prompts, PromptSampler

MASK_PROMPT_PROBABILITY = 0.5


def predicted_labels(logits: Tensor, output_mode: str) -> np.ndarray:
    """Logits (B, C, h, w) -> predicted label map (B, h, w) int64 (sigmoid: channel c is label c+1)."""
    if output_mode == "sigmoid":
        above = logits > 0
        label = torch.where(above.any(dim=1), logits.argmax(dim=1) + 1, torch.zeros_like(logits[:, 0], dtype=torch.long))
        return label.cpu().numpy()
    return logits.argmax(dim=1).cpu().numpy()


def correction_samples(prompts: Prompts, rng: np.random.Generator, share: float) -> list[int]:
    """Indices of the batch's prompted samples (a label, not automatic) that become corrections,
    each with probability `share`: only these need the model's automatic prediction."""
    automatic = prompts.automatic.cpu().numpy()
    labels = prompts.label.cpu().numpy()
    return [b for b in range(prompts.batch_size) if not automatic[b] and labels[b] != 0 and rng.random() < share]


def correction_prompts(prompts: Prompts, samples: list[int], target: np.ndarray, predicted: np.ndarray,
                       mask_size: int, sampler: PromptSampler, rng: np.random.Generator) -> Prompts:
    """Prompts with the `samples` (from `correction_samples`) turned into corrections.

    prompts: the batch's prompts (points (x, y) in tile pixels); target: (B, S, S) label maps of
    the batch's tiles; predicted: (len(samples), S, S) the automatic mode's label maps of those
    samples, in that order; mask_size: the decoder's mask grid 4g. The other samples are left as
    they are.
    """
    points, point_labels = prompts.points.clone(), prompts.point_labels.clone()
    mask = torch.zeros(prompts.batch_size, 1, mask_size, mask_size)
    mask_valid = torch.zeros(prompts.batch_size, dtype=torch.bool)
    n_slots = points.shape[1]
    for b, prediction in zip(samples, predicted, strict=True):
        label = int(prompts.label[b])
        structure, found = target[b] == label, prediction == label
        missed = structure & ~found
        if missed.any():
            positive = sampler.positive_points(missed, int(rng.integers(1, sampler.max_positive_points + 1)), rng)
        else:
            keep = point_labels[b] == 1
            positive = points[b][keep][:, [1, 0]].cpu().numpy()  # (x, y) -> (row, col)
        negative = sampler.negative_points(structure, int(rng.integers(0, sampler.max_negative_points + 1)), rng,
                                           previous=found)
        chosen = [(p, 1) for p in positive] + [(p, 0) for p in negative]
        points[b], point_labels[b] = 0, -1
        for i, (row_col, value) in enumerate(chosen[:n_slots]):
            points[b, i] = torch.tensor([row_col[1], row_col[0]], dtype=points.dtype)
            point_labels[b, i] = value
        if rng.random() < MASK_PROMPT_PROBABILITY:
            logits = torch.from_numpy(np.where(found, 8.0, -8.0).astype(np.float32))[None, None]
            mask[b, 0] = F.interpolate(logits, size=(mask_size, mask_size), mode="bilinear", align_corners=False)[0, 0]
            mask_valid[b] = True
    device = prompts.label.device
    return Prompts(label=prompts.label, points=points.to(device), point_labels=point_labels.to(device),
                   boxes=prompts.boxes, box_valid=prompts.box_valid, mask=mask.to(device), mask_valid=mask_valid.to(device))
