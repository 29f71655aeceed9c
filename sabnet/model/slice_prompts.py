"""Prompts on preprocessed slices, and turning them into model `Prompts` for one tile.

A `SlicePrompt` lives in the preprocessed slice frame: points and boxes in (row, col) pixels of
that slice. Conversion from the user's input-image voxels or world millimetres is in
`sabnet.inference.prompt_coordinates`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from sabnet.model.prompts import Prompts


@dataclass
class SlicePrompt:
    """Prompts for one label on one preprocessed slice.

    label: output label value the prompt asks for (1..n; in binary mode 1 is 'bone').
    points: (N, 2) (row, col) preprocessed pixels; point_labels: (N,) 1 positive, 0 negative.
    box: (row0, col0, row1, col1) preprocessed pixels, or None.
    mask: (rows, cols) bool previous mask of that label on the slice (a dense prompt), or None.
    """

    label: int
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None


def batch_prompts(prompts: list[SlicePrompt], origins: list[tuple[int, int]], tile_size: int, mask_size: int,
                  max_points: int, device: torch.device) -> Prompts:
    """Model `Prompts` for a batch of tiles: prompt b is placed in the tile whose top-left pixel is
    origins[b] (row, col); points outside the tile are dropped, boxes clipped to it."""
    batch = len(prompts)
    points = np.zeros((batch, max_points, 2), np.float32)
    point_labels = -np.ones((batch, max_points), np.int64)
    boxes = np.zeros((batch, 4), np.float32)
    box_valid = np.zeros(batch, bool)
    masks = np.zeros((batch, 1, mask_size, mask_size), np.float32)
    mask_valid = np.zeros(batch, bool)
    for b, (prompt, (r0, c0)) in enumerate(zip(prompts, origins)):
        rel = np.asarray(prompt.points, float).reshape(-1, 2) - (r0, c0)
        inside = (rel >= 0).all(axis=1) & (rel < tile_size).all(axis=1)
        rel, values = rel[inside][:max_points], np.asarray(prompt.point_labels)[inside][:max_points]
        points[b, : len(rel)] = rel[:, ::-1]  # (row, col) -> (x, y)
        point_labels[b, : len(rel)] = values
        if prompt.box is not None:
            y0, x0, y1, x1 = np.asarray(prompt.box, float) - (r0, c0, r0, c0)
            x0, x1 = np.clip([x0, x1], 0, tile_size - 1)
            y0, y1 = np.clip([y0, y1], 0, tile_size - 1)
            if x1 > x0 and y1 > y0:
                boxes[b], box_valid[b] = (x0, y0, x1, y1), True
        if prompt.mask is not None:
            tile = np.zeros((tile_size, tile_size), np.float32)
            part = prompt.mask[r0:r0 + tile_size, c0:c0 + tile_size]
            tile[: part.shape[0], : part.shape[1]] = np.where(part, 8.0, -8.0)  # confident logits, as SAM feeds back
            masks[b, 0] = torch.nn.functional.interpolate(torch.from_numpy(tile)[None, None], size=(mask_size, mask_size),
                                                          mode="bilinear", align_corners=False)[0, 0].numpy()
            mask_valid[b] = True
    return Prompts(label=torch.tensor([p.label for p in prompts], dtype=torch.long, device=device),
                   points=torch.from_numpy(points).to(device), point_labels=torch.from_numpy(point_labels).to(device),
                   boxes=torch.from_numpy(boxes).to(device), box_valid=torch.from_numpy(box_valid).to(device),
                   mask=torch.from_numpy(masks).to(device), mask_valid=torch.from_numpy(mask_valid).to(device))
