"""In-plane resampling of stacks of slices, and the low-resolution volume of the depth branch.

Grids are matched by their extent: n pixels of spacing s become m pixels of spacing n*s/m covering
the same field of view (pixel centres at (i + 0.5) * n*s/m), which is what `align_corners=False`
means in torch. The through-plane axis is never interpolated here.

torch is imported only where interpolation needs it: planning and preprocessing a cohort that is
already at the target spacing (the depth volume is an average over boxes, done in numpy) never
load it, which is most of their start-up time.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def in_plane_shape(shape_hw: tuple[int, int], spacing_hw_mm: tuple[float, float], target_spacing_mm: float) -> tuple[int, int]:
    """Rows and columns after resampling (rounded so the field of view is kept)."""
    return tuple(max(1, int(round(n * s / target_spacing_mm))) for n, s in zip(shape_hw, spacing_hw_mm))


def resample_slices(stack: np.ndarray | torch.Tensor, out_hw: tuple[int, int], order: int = 3,
                    chunk: int = 16) -> np.ndarray | torch.Tensor:
    """Resample (..., n_slices, H, W) in-plane to (..., n_slices, *out_hw).

    order: 3 bicubic (images, clamped to the input range so it does not overshoot), 1 bilinear
    (probabilities), 0 nearest. Downsampling uses anti-aliasing. Works in chunks of slices to keep
    memory flat; numpy in -> numpy out (float32), tensor in -> tensor out (same device).
    """
    as_numpy = isinstance(stack, np.ndarray)
    if tuple(stack.shape[-2:]) == tuple(out_hw):
        return np.ascontiguousarray(stack, dtype=np.float32) if as_numpy else stack.float()
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32)) if as_numpy else stack.float()
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    flat = x.reshape(-1, 1, h, w)
    mode = {3: "bicubic", 1: "bilinear", 0: "nearest"}[order]
    antialias = order > 0 and (out_hw[0] < h or out_hw[1] < w)
    pieces = []
    for start in range(0, flat.shape[0], chunk):
        part = flat[start:start + chunk]
        kwargs = {} if order == 0 else {"align_corners": False, "antialias": antialias}
        out = F.interpolate(part, size=tuple(out_hw), mode=mode if order else "nearest-exact", **kwargs)
        if order == 3:
            out = out.clamp(part.amin(), part.amax())
        pieces.append(out)
    out = torch.cat(pieces).reshape(*lead, *out_hw)
    return out.numpy() if as_numpy else out


def resample_labels(labels: np.ndarray, out_hw: tuple[int, int], values: list[int] | None = None) -> np.ndarray:
    """Resample an integer label stack (n_slices, H, W) in-plane without inventing label values.

    Each label's mask is resampled bilinearly and every pixel takes the label of highest weight
    (background included), as nnU-Net does; only values present in the input can appear.
    """
    if labels.shape[-2:] == tuple(out_hw):
        return labels.copy()
    values = sorted(int(v) for v in (values if values is not None else np.unique(labels)))
    if 0 not in values:
        values = [0] + values
    best_weight = np.full(labels.shape[:-2] + tuple(out_hw), -1.0, dtype=np.float32)
    out = np.zeros(best_weight.shape, dtype=labels.dtype)
    for value in values:
        weight = resample_slices((labels == value).astype(np.float32), out_hw, order=1)
        better = weight > best_weight
        out[better] = value
        best_weight[better] = weight[better]
    return out


def resample_volume(volume: np.ndarray, out_shape: tuple[int, int, int], order: int = 1) -> np.ndarray:
    """Resample a (..., D, H, W) volume to (..., *out_shape) by extent: area averaging where every
    dimension shrinks or stays (anti-aliased; torch's 'area' mode, computed in numpy), trilinear
    otherwise. Used for the depth-branch volume."""
    volume = np.asarray(volume, dtype=np.float32)
    if all(o <= i for o, i in zip(out_shape, volume.shape[-3:])):
        out = volume
        for axis, size in zip(range(volume.ndim - 3, volume.ndim), out_shape):
            out = area_average(out, size, axis)
        return np.ascontiguousarray(out, dtype=np.float32)
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(volume))
    lead = x.shape[:-3]
    x = x.reshape(-1, 1, *x.shape[-3:])
    out = F.interpolate(x, size=tuple(out_shape), mode="trilinear" if order else "nearest", align_corners=False if order else None)
    return out.reshape(*lead, *out_shape).numpy()


def area_average(array: np.ndarray, size: int, axis: int) -> np.ndarray:
    """`array` reduced to `size` along `axis` by averaging, as adaptive average pooling does:
    output i averages inputs floor(i n / size) .. ceil((i + 1) n / size) - 1."""
    n = array.shape[axis]
    if n == size:
        return array
    starts = (np.arange(size) * n) // size
    stops = -((-(np.arange(size) + 1) * n) // size)
    cumulative = np.cumsum(np.moveaxis(array, axis, 0), axis=0, dtype=np.float64)
    cumulative = np.concatenate([np.zeros((1,) + cumulative.shape[1:]), cumulative])
    out = (cumulative[stops] - cumulative[starts]) / (stops - starts).reshape((-1,) + (1,) * (array.ndim - 1))
    return np.moveaxis(out, 0, axis)
