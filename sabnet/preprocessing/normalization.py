"""Intensity normalization of one channel by a plan's `NormalizationScheme`.

The statistics of large images come from an evenly strided sample of at most
`MAX_STATISTICS_VOXELS` voxels: on the 512 x 512 x 80 knee series (21 M voxels) the full-image
percentiles took 0.7 s, more than a third of what the encoder needs for the whole case, and the
sample's percentiles, mean and std agree with the full image's to a few tenths of a percent.
"""
from __future__ import annotations

import numpy as np

from sabnet.planning.plans import NormalizationScheme

MAX_STATISTICS_VOXELS = 2_000_000


def normalization_values(channel: np.ndarray, scheme: NormalizationScheme) -> dict:
    """The values that normalize a channel (any shape): clip_low, clip_high, mean, std.

    percentile_zscore: the image's own percentiles of its nonzero voxels, and the mean and
    standard deviation of those voxels once clipped (MRI has no absolute intensity scale).
    slice_unit: the same percentiles; mean and std are the low clip and the clip range, so that
    `standardized` maps the volume onto [0, 1] (`unit_slices` then stretches each slice).
    global_clip_zscore: cohort-wide clip values, mean and std (CT).
    """
    if scheme.scheme in ("percentile_zscore", "slice_unit"):
        flat = np.asarray(channel).reshape(-1)
        sample = flat[::max(1, -(-flat.size // MAX_STATISTICS_VOXELS))].astype(np.float32)
        body = sample[sample != 0]
        if body.size < 16:
            body = sample
        low, high = np.percentile(body, [scheme.lower_percentile, scheme.upper_percentile])
        if scheme.scheme == "slice_unit":
            mean, std = float(low), float(high - low)
        else:
            clipped_body = np.clip(body, low, high)
            mean, std = float(clipped_body.mean()), float(clipped_body.std())
    elif scheme.scheme == "global_clip_zscore":
        low, high, mean, std = scheme.clip_low, scheme.clip_high, scheme.mean, scheme.std
    else:
        raise ValueError(f"unknown normalization scheme {scheme.scheme!r}")
    return {"clip_low": float(low), "clip_high": float(high), "mean": float(mean), "std": float(max(std, 1e-6))}


def clipped(channel: np.ndarray, values: dict, copy: bool = True) -> np.ndarray:
    """`channel` as float32 clipped to values' clip_low..clip_high (the first step of normalizing);
    a copy, or in place when `copy` is False and the channel is float32 already."""
    out = np.array(channel, dtype=np.float32, copy=copy or channel.dtype != np.float32)
    return np.clip(out, values["clip_low"], values["clip_high"], out=out)


def standardized(clipped_channel: np.ndarray, values: dict) -> np.ndarray:
    """(clipped - mean) / std, in place on a float32 array (the second step). It commutes with any
    interpolation whose weights sum to one, so it may follow resampling."""
    clipped_channel -= values["mean"]
    clipped_channel /= values["std"]
    return clipped_channel



def unit_slices(stack: np.ndarray) -> np.ndarray:
    """Each slice of (n_slices, ...) float32 stretched to [0, 1] by its own minimum and maximum, in
    place (a constant slice becomes 0): the per-slice input of LiteMedSAM."""
    flat = stack.reshape(stack.shape[0], -1)
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    flat -= low
    flat /= np.where(span > 0, span, 1.0)
    return stack
