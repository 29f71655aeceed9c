"""The detail branch: a small CNN that gives the mask decoder the image's own fine structure.

SAM's decoder paints masks at 4x the token grid from the image embedding alone, so everything it
knows about an edge comes through 16 x 16 pixel tokens. The detail branch computes a few feature
maps from the input at the decoder's mask resolution (4g x 4g) and adds them to the decoder's
upscaled embedding before the per-class dot products, as HQ-SAM fuses early features. Its last
convolution starts at zero, so a model with a pretrained SAM starts out as SAM. It costs a few
percent of even the smallest encoder and speeds up learning of precise bone borders.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from segment_anything.modeling.common import LayerNorm2d
from torch import Tensor, nn


@dataclass
class ImageEmbeddings:
    """What the encoder computes once per slice and the decoder reuses for every prompt.

    embedding: (B, E, g, g) the ViT's image embedding.
    detail: (B, E/8, 4g, 4g) the detail branch's features, or None without the branch.
    """

    embedding: Tensor
    detail: Tensor | None = None

    def __getitem__(self, index) -> "ImageEmbeddings":
        return ImageEmbeddings(self.embedding[index], None if self.detail is None else self.detail[index])

    def __len__(self) -> int:
        return self.embedding.shape[0]

    @staticmethod
    def cat(parts: list["ImageEmbeddings"]) -> "ImageEmbeddings":
        detail = None if parts[0].detail is None else torch.cat([p.detail for p in parts])
        return ImageEmbeddings(torch.cat([p.embedding for p in parts]), detail)


class DetailBranch(nn.Module):
    """Image (B, 3, S, S) -> features (B, out_channels, S/f, S/f), f = patch_size / 4 (the mask
    resolution): stride-2 3x3 convolutions down to it, then a 3x3 and a zero-initialised 1x1."""

    def __init__(self, patch_size: int, width: int, out_channels: int) -> None:
        super().__init__()
        steps = int(math.log2(max(1, patch_size // 4)))
        layers: list[nn.Module] = []
        channels = 3
        for step in range(steps):
            out = width if step == steps - 1 else max(8, width // 2)
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), LayerNorm2d(out), nn.GELU()]
            channels = out
        layers += [nn.Conv2d(channels, width, 3, padding=1), LayerNorm2d(width), nn.GELU()]
        self.features = nn.Sequential(*layers)
        self.project = nn.Conv2d(width, out_channels, 1)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.project(self.features(images))
