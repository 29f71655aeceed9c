"""TinyViT, the image encoder of MobileSAM, LiteMedSAM and SegmentAnyBone, with SegmentAnyBone's adapters.

Slices (B, 3, S, S) in, image embedding (B, 256, g, g) out, g = S / patch_size. Stages:

    patch embedding   two Conv-BN (GELU between), stride 1 (LiteMedSAM, patch_size 4: 1x1 kernels)
                      or 2 + 2 (MobileSAM, patch_size 16: 3x3 kernels)              -> S/s, dims[0]
    stage 0           MBConv blocks (1x1 expand x4, depthwise 3x3, 1x1 project)
                      then a patch merging (1x1, depthwise 3x3 stride 2, 1x1)      -> /2, dims[1]
    stage 1           TinyViT blocks (window attention, depthwise 3x3, MLP), merging -> /2, dims[2]
    stage 2           TinyViT blocks, merging with stride 1 (the resolution stays)  -> dims[3]
    stage 3           TinyViT blocks
    neck              1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d                  -> 256 channels

A TinyViT block: x = x + attn(x) (windows of w x w tokens, padded bottom/right; the attention
normalises its input itself, so padding tokens take part as keys, as in the reference network);
x = depthwise 3x3 Conv-BN(x); x = x + mlp(x). Attention adds a learned bias per head and per
offset (|dy|, |dx|) between two tokens of a window, stored as `attention_biases` (heads, w * w)
with offset (a, b) at index a * w + b. The qkv projection is laid out head by head:
(q, k, v) of head 0, then of head 1, ...

Adapters, where SegmentAnyBone puts them (`adapter_blocks` counts the attention blocks of stages
1..3 in order, so the default [0..7] is stages 1 and 2 of LiteMedSAM's 2/6/2 blocks): an adapter
on the attention output before the residual sum, and one parallel to the MLP scaled by
`adapter_scale`. Both start at zero (sabnet.model.adapters.Adapter), so the adapted network starts
as the pretrained one.

BatchNorm always uses its running statistics (`ConvBN`): they come from the pretrained network,
and batches of a few slices would only make them noisy. Parameter names are those of the
published checkpoints (`patch_embed.seq.0.c.weight`, `layers.1.blocks.0.attn.qkv.weight`, ...).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sabnet.model.adapters import Adapter
from sabnet.model.channel_norm import ChannelLayerNorm

NECK_CHANNELS = 256


class ConvBN(nn.Module):
    """A bias-free convolution followed by BatchNorm with its running statistics, fused into one
    convolution per call: (B, C_in, H, W) -> (B, C_out, H', W'). Submodules `c` and `bn`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        bn = self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = self.c.weight * scale.reshape(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * scale
        return F.conv2d(x, weight, bias, self.c.stride, self.c.padding, groups=self.c.groups)


class PatchEmbed(nn.Module):
    """(B, 3, S, S) -> (B, dim, S/stride, S/stride); stride 1 (1x1 kernels) or 4 (3x3 kernels, 2 x stride 2)."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 4):
            raise ValueError(f"TinyViT patch embedding stride must be 1 or 4, got {stride}")
        kernel, step = (1, 1) if stride == 1 else (3, 2)
        self.seq = nn.Sequential(ConvBN(3, dim // 2, kernel, step), nn.GELU(), ConvBN(dim // 2, dim, kernel, step))

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: (B, C, H, W) -> the same shape."""

    def __init__(self, dim: int, expand_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(x + self.conv3(y))


class PatchMerging(nn.Module):
    """(B, C, H, W) -> (B, out_dim, H/stride, W/stride): 1x1, depthwise 3x3 with the stride, 1x1."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside w x w windows with a learned bias per offset:
    (N, w*w, C) -> (N, w*w, C). Normalises its input (LayerNorm) first."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.window = num_heads, dim // num_heads, window
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        rows, cols = rows.reshape(-1), cols.reshape(-1)
        index = (rows[:, None] - rows[None]).abs() * window + (cols[:, None] - cols[None]).abs()
        self.register_buffer("bias_index", index, persistent=False)  # (w*w, w*w) offset of each token pair

    def forward(self, x: Tensor) -> Tensor:
        n, tokens, dim = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, tokens, self.num_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each (N, heads, tokens, head_dim)
        bias = self.attention_biases[:, self.bias_index].to(q.dtype)  # (heads, tokens, tokens)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))


class Mlp(nn.Module):
    """LayerNorm, Linear (x ratio), GELU, Linear: (..., C) -> (..., C)."""

    def __init__(self, dim: int, ratio: float = 4.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, int(dim * ratio))
        self.fc2 = nn.Linear(int(dim * ratio), dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention, local depthwise convolution and MLP: tokens (B, H, W, C) -> the same shape.

    adapter_ratio: None for no adapters; else the bottleneck ratio of the two adapters
    (`adapter_attn` on the attention output, `adapter_mlp` parallel to the MLP, times `adapter_scale`).
    """

    def __init__(self, dim: int, num_heads: int, window: int, adapter_ratio: float | None = None,
                 adapter_scale: float = 0.5) -> None:
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, 3, groups=dim)
        self.mlp = Mlp(dim)
        if adapter_ratio is not None:
            self.adapter_attn = Adapter(dim, adapter_ratio, residual=True)
            self.adapter_mlp = Adapter(dim, adapter_ratio, residual=False)
            self.adapter_scale = adapter_scale

    @property
    def has_adapters(self) -> bool:
        return hasattr(self, "adapter_attn")

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, dim = x.shape
        w = self.window
        pad_h, pad_w = -height % w, -width % w
        windows = F.pad(x, (0, 0, 0, pad_w, 0, pad_h)) if pad_h or pad_w else x
        rows, cols = (height + pad_h) // w, (width + pad_w) // w
        windows = windows.reshape(batch, rows, w, cols, w, dim).transpose(2, 3).reshape(-1, w * w, dim)
        attended = self.attn(windows).reshape(batch, rows, cols, w, w, dim).transpose(2, 3)
        attended = attended.reshape(batch, rows * w, cols * w, dim)[:, :height, :width]
        if self.has_adapters:
            attended = self.adapter_attn(attended)
        x = x + attended
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        out = x + self.mlp(x)
        if self.has_adapters:
            out = out + self.adapter_scale * self.adapter_mlp(x)
        return out


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks then a patch merging. (B, C, H, W) -> (B, C', H/2, W/2)."""

    def __init__(self, dim: int, out_dim: int, depth: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class AttentionStage(nn.Module):
    """Stages 1..3: TinyViT blocks, then a patch merging unless it is the last stage.
    (B, C, H, W) -> (B, C', H', W')."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, adapters: list[bool],
                 adapter_ratio: float, adapter_scale: float, out_dim: int | None, merge_stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window, adapter_ratio if adapters[i] else None, adapter_scale)
            for i in range(depth))
        self.downsample = PatchMerging(dim, out_dim, merge_stride) if out_dim is not None else None

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """The TinyViT image encoder: (B, 3, S, S) -> (B, 256, S/patch_size, S/patch_size).

    patch_size: pixels per embedding token, 4 (LiteMedSAM) or 16 (MobileSAM).
    dims, depths, num_heads, windows: per stage (4 stages; stage 0 is convolutional and its heads
        and window are unused).
    adapter_blocks: indices of the attention blocks (stages 1..3, counted in order) with adapters.
    """

    def __init__(self, patch_size: int, dims: list[int], depths: list[int], num_heads: list[int],
                 windows: list[int], adapter_blocks: list[int] = (), adapter_ratio: float = 0.25,
                 adapter_scale: float = 0.5, out_chans: int = NECK_CHANNELS) -> None:
        super().__init__()
        if len(dims) != 4 or len(depths) != 4 or len(num_heads) != 4 or len(windows) != 4:
            raise ValueError("TinyViT takes four stages: dims, depths, num_heads and windows of length 4")
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(dims[0], patch_size // 4)
        layers: list[nn.Module] = [ConvStage(dims[0], dims[1], depths[0])]
        first = 0  # index of the stage's first attention block
        for stage in range(1, 4):
            flags = [first + i in set(adapter_blocks) for i in range(depths[stage])]
            out_dim = dims[stage + 1] if stage < 3 else None
            layers.append(AttentionStage(dims[stage], depths[stage], num_heads[stage], windows[stage], flags,
                                         adapter_ratio, adapter_scale, out_dim, merge_stride=2 if stage < 2 else 1))
            first += depths[stage]
        self.layers = nn.ModuleList(layers)
        self.neck = nn.Sequential(nn.Conv2d(dims[3], out_chans, 1, bias=False), ChannelLayerNorm(out_chans),
                                  nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
                                  ChannelLayerNorm(out_chans))

    def forward(self, images: Tensor) -> Tensor:
        size = images.shape[-1]
        if images.shape[-2] != size or size % self.patch_size:
            raise ValueError(f"TinyViT takes square slices whose side is a multiple of {self.patch_size}, "
                             f"got {tuple(images.shape[-2:])}")
        x = self.patch_embed(images.contiguous(memory_format=torch.channels_last))  # 2x faster convs on CPU
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)
