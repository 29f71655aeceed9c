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
from torch import Tensor, nn
from torch.nn import functional as F

from sabnet.model.channel_norm import ChannelLayerNorm


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


def _conv_block(in_channels: int, out_channels: int, stride: int = 1, n_convs: int = 2) -> nn.Sequential:
    """n_convs x (3x3 convolution, channel LayerNorm, GELU); the first one has the given stride."""
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3,
                             stride=stride if i == 0 else 1, padding=1), ChannelLayerNorm(out_channels), nn.GELU()]
    return nn.Sequential(*layers)


class DetailBranch(nn.Module):
    """Image (B, 3, S, S) -> features (B, out_channels, S/f, S/f), f = patch_size / 4 (the mask
    resolution; S itself when patch_size is 4, as with LiteMedSAM's 4 px tokens).

    A small U-Net: stride-2 blocks from S/2 down to the token grid S/patch_size (widths w, 2w, 4w,
    4w, ...), then two upsampling blocks with skip connections back to the mask resolution (the
    skip at full resolution is the image itself), so each output pixel sees about the patch-sized
    neighbourhood around it at full resolution plus a wide context. A zero-initialised 1x1
    projection ends it: a model loaded from a pretrained SAM starts out exactly as SAM.
    """

    def __init__(self, patch_size: int, width: int, out_channels: int) -> None:
        super().__init__()
        n_down = int(math.log2(patch_size))  # S -> S/patch_size
        self.n_down = n_down
        widths = [width * min(2 ** i, 4) for i in range(n_down)]
        self.down = nn.ModuleList()
        channels = 3
        for level, w in enumerate(widths):  # one convolution at S/2, where pixels are many
            self.down.append(_conv_block(channels, w, stride=2, n_convs=1 if level == 0 else 2))
            channels = w
        feature_widths = [3] + widths  # level k is at S / 2**k; level 0 is the image
        self.up = nn.ModuleList()
        for level in range(2):  # the decoder's masks are 4x the token grid
            skip = feature_widths[n_down - 1 - level]
            out = skip if n_down - 1 - level > 0 else width
            self.up.append(_conv_block(channels + skip, out))
            channels = out
        self.project = nn.Conv2d(channels, out_channels, 1)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, images: Tensor) -> Tensor:
        features = [images]
        x = images
        for block in self.down:
            x = block(x)
            features.append(x)
        for level, block in enumerate(self.up):
            skip = features[self.n_down - 1 - level]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.project(x)
