"""The depth-attention branch: a small 3D net run once per volume, per-slice attention maps, and
the gated block that fuses a map into the image embedding.

Frames. The low-resolution volume (D, H, W) and a full-resolution slice cover the same field of
view (the preprocessing resamples the whole volume, edge to edge), so a slice's map is brought to
the slice's in-plane size (h, w) with edge-aligned bilinear resampling. The caller then pads the
(h, w) map exactly as it pads the image (bottom/right, to S x S, see `pad_to_input`), and the model
reduces the S x S map to the embedding grid by averaging each patch (`attention_to_grid`). The map
therefore stays aligned with the image content under the padding.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sabnet.model.channel_norm import ChannelLayerNorm

MIN_POOLED_VOXELS = 4  # an axis is not halved below this many voxels


class _ConvBlock3d(nn.Sequential):
    """Two 3x3x3 convolutions with instance norm and leaky ReLU; the first may stride."""

    def __init__(self, in_ch: int, out_ch: int, stride: Sequence[int] = (1, 1, 1)) -> None:
        super().__init__(
            nn.Conv3d(in_ch, out_ch, 3, stride=tuple(stride), padding=1, bias=False),
            nn.InstanceNorm3d(out_ch, affine=True), nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.InstanceNorm3d(out_ch, affine=True), nn.LeakyReLU(0.01, inplace=True),
        )


def in_plane_reduction(volume_shape: Sequence[int], grid_size: int) -> int:
    """The largest power of two by which the volume's in-plane axes can be averaged down while
    keeping at least `grid_size` (the image-embedding grid) voxels across."""
    factor, smallest = 1, min(volume_shape[1:])
    while -(-smallest // (2 * factor)) >= max(grid_size, MIN_POOLED_VOXELS):
        factor *= 2
    return factor


def pooling_strides(volume_shape: Sequence[int], n_levels: int) -> list[list[int]]:
    """Stride (D, H, W) into each level below the first: 2 along an axis while it keeps at least
    MIN_POOLED_VOXELS voxels, else 1 (thin volumes are not pooled along the slice axis)."""
    size, strides = list(volume_shape), []
    for _ in range(n_levels - 1):
        stride = [2 if s // 2 >= MIN_POOLED_VOXELS else 1 for s in size]
        size = [-(-s // st) for s, st in zip(size, stride)]
        strides.append(stride)
    return strides


class DepthNet(nn.Module):
    """A small 3D U-Net. Volume (N, 1, D, H, W) -> bone logits (N, 1, D, H, W).

    channels: features per level (e.g. [16, 32, 64] is three levels); volume_shape: the planned
    (D, H, W); grid_size: the image-embedding grid the attention maps are used on. Any input size
    works.
    The volume is first averaged in-plane down to about the embedding grid's resolution (the
    attention maps are reduced to that grid anyway), and the logits are upsampled (trilinear) back
    to the input size. That, and channels of at least 16 (below, PyTorch's CPU conv3d takes a slow
    path), keep its cost per volume small against the encoder's cost for the volume's slices.
    """

    def __init__(self, channels: Sequence[int], volume_shape: Sequence[int], grid_size: int) -> None:
        super().__init__()
        self.in_plane_reduction = in_plane_reduction(volume_shape, grid_size)
        reduced = [volume_shape[0]] + [-(-s // self.in_plane_reduction) for s in volume_shape[1:]]
        strides = pooling_strides(reduced, len(channels))
        self.down = nn.ModuleList([_ConvBlock3d(1, channels[0])])
        for level in range(1, len(channels)):
            self.down.append(_ConvBlock3d(channels[level - 1], channels[level], strides[level - 1]))
        self.up = nn.ModuleList(
            _ConvBlock3d(channels[level + 1] + channels[level], channels[level])
            for level in reversed(range(len(channels) - 1))
        )
        self.head = nn.Conv3d(channels[0], 1, 1)

    def forward(self, volume: Tensor) -> Tensor:
        skips = []
        x = volume
        if self.in_plane_reduction > 1:
            depth, height, width = volume.shape[2:]
            x = F.adaptive_avg_pool3d(x, (depth, -(-height // self.in_plane_reduction), -(-width // self.in_plane_reduction)))
        for block in self.down:
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return F.interpolate(self.head(x), size=volume.shape[2:], mode="trilinear", align_corners=False)


def slice_attention_map(prob_volume: Tensor, slice_positions: Tensor, out_hw: tuple[int, int],
                        threshold: float, half_width: int) -> Tensor:
    """Depth-attention maps of B slices from bone probabilities.

    prob_volume: (1 or B, 1, D, H, W) probabilities in [0, 1]; one volume shared by all slices, or
        one per slice.
    slice_positions: (B,) continuous slice coordinate of each slice in the low-resolution volume
        (voxel-centre units: 0 is the centre of low-res slice 0).
    out_hw: the slice's in-plane size (h, w) in pixels.
    Returns (B, 1, h, w) in [0, 1]: probabilities below `threshold` are zeroed (the rest keep their
    value and their gradient), sampled at positions p + o for o in -half_width..half_width (linear
    interpolation between low-res slices), summed, and divided by the number of those positions that
    lie inside the volume, so 1 means bone with certainty across the whole neighbourhood.
    """
    n_vol, _, depth, height, width = prob_volume.shape
    n_slices = slice_positions.shape[0]
    if n_vol not in (1, n_slices):
        raise ValueError(f"prob_volume batch {n_vol} must be 1 or the number of slices {n_slices}")
    kept = prob_volume[:, 0] * (prob_volume[:, 0] >= threshold)  # (N, D, H, W)
    offsets = torch.arange(-half_width, half_width + 1, device=prob_volume.device, dtype=prob_volume.dtype)
    positions = slice_positions.to(prob_volume)[:, None] + offsets[None]  # (B, K)
    inside = (positions >= -0.5) & (positions <= depth - 0.5)
    positions = positions.clamp(0, depth - 1)
    lower = positions.floor().long()
    upper = (lower + 1).clamp(max=depth - 1)
    frac = (positions - lower).to(prob_volume)[..., None, None]
    volume_index = torch.zeros_like(lower) if n_vol == 1 else torch.arange(n_slices, device=lower.device)[:, None].expand_as(lower)
    sampled = (1 - frac) * kept[volume_index, lower] + frac * kept[volume_index, upper]  # (B, K, H, W)
    weights = inside.to(prob_volume)[..., None, None]
    summed = (sampled * weights).sum(dim=1, keepdim=True)
    attention = summed / weights.sum(dim=1, keepdim=True).clamp(min=1)
    if tuple(out_hw) != (height, width):
        attention = F.interpolate(attention, size=tuple(out_hw), mode="bilinear", align_corners=False)
    return attention.clamp(0, 1)


def pad_to_input(x: Tensor, image_size: int) -> Tensor:
    """Pad (B, C, h, w) with zeros at the bottom and right to (B, C, S, S), as the image is padded."""
    h, w = x.shape[-2:]
    if h > image_size or w > image_size:
        raise ValueError(f"slice of {h}x{w} pixels is larger than the model input {image_size}")
    return F.pad(x, (0, image_size - w, 0, image_size - h))


def attention_to_grid(attention: Tensor, grid_size: int) -> Tensor:
    """Reduce a padded map (B, 1, S, S) to the embedding grid (B, 1, g, g) by averaging each patch.
    A map already at (g, g) is returned unchanged."""
    size = attention.shape[-1]
    if attention.shape[-2] != size or size % grid_size:
        raise ValueError(f"attention map must be square S x S with S a multiple of {grid_size}, "
                         f"got {tuple(attention.shape[-2:])}; pad it with pad_to_input first")
    if size == grid_size:
        return attention
    return F.avg_pool2d(attention, kernel_size=size // grid_size)


class DepthFusion(nn.Module):
    """embedding + gate * block([embedding, attention]): (B, E, g, g) and (B, 1, g, g) -> (B, E, g, g).

    The block's last (1x1) convolution starts at zero, so a 3D model starts out computing exactly
    what the 2D model computes, and `gate` (a learnable scalar, LayerScale-like) starts at 1. (With
    the gate at 0 and a random block, as before, the block got no gradient and the gate, whose
    gradient was noise, stayed near 0: after the demo's stage 2 it was 0.004, and 3D mode equalled
    2D mode.)
    """

    def __init__(self, embed_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(8, embed_dim // 4)
        self.block = nn.Sequential(
            nn.Conv2d(embed_dim + 1, hidden, 3, padding=1),
            ChannelLayerNorm(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, embed_dim, 1),
        )
        nn.init.zeros_(self.block[-1].weight)
        nn.init.zeros_(self.block[-1].bias)
        self.gate = nn.Parameter(torch.ones(()))

    @torch.no_grad()
    def restart_if_stuck(self) -> bool:
        """A block saved by older sabnet (gate 0 in front of a random last convolution) cannot learn:
        give it this start instead (the output is the 2D model's either way). True when restarted."""
        if float(self.gate) != 0.0 or not bool(self.block[-1].weight.any()):
            return False
        self.block[-1].weight.zero_()
        self.block[-1].bias.zero_()
        self.gate.fill_(1.0)
        return True

    def forward(self, embedding: Tensor, attention_grid: Tensor) -> Tensor:
        fused = self.block(torch.cat([embedding, attention_grid.to(embedding)], dim=1))
        return embedding + self.gate * fused


class SegmentAnyBoneFusion(nn.Module):
    """SegmentAnyBone's fusion, to run its released `attention_fusion` weights:
    (1 - gate) * embedding + gate * block(embedding * attention), (B, E, g, g) and (B, 1, g, g) ->
    (B, E, g, g); block: conv3x3, BatchNorm, ReLU, conv3x3, BatchNorm (`fuse_emb`), gate a scalar
    starting at 0. BatchNorm uses its running statistics (a pretrained block is only fine-tuned)."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.fuse_emb = nn.Sequential(nn.Conv2d(embed_dim, embed_dim, 3, padding=1), nn.BatchNorm2d(embed_dim),
                                      nn.ReLU(), nn.Conv2d(embed_dim, embed_dim, 3, padding=1),
                                      nn.BatchNorm2d(embed_dim))
        self.gate = nn.Parameter(torch.zeros(1))

    def train(self, mode: bool = True) -> "SegmentAnyBoneFusion":
        super().train(mode)
        for module in self.fuse_emb:
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def restart_if_stuck(self) -> bool:
        return False  # its gate starts at 0 by design and learns through the block's output

    def forward(self, embedding: Tensor, attention_grid: Tensor) -> Tensor:
        fused = self.fuse_emb(embedding * attention_grid.to(embedding))
        return (1 - self.gate) * embedding + self.gate * fused


DEPTH_FUSIONS = {"sabnet": DepthFusion, "segmentanybone": SegmentAnyBoneFusion}
