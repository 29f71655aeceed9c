"""Intensity normalization of one channel by a plan's `NormalizationScheme`."""
from __future__ import annotations

import numpy as np

from sabnet.planning.plans import NormalizationScheme


def normalize(channel: np.ndarray, scheme: NormalizationScheme) -> tuple[np.ndarray, dict]:
    """Normalize a channel (any shape) -> (float32 array, the values used, for the record).

    percentile_zscore: clip to the image's own percentiles of its nonzero voxels, then subtract
    their mean and divide by their standard deviation (MRI has no absolute intensity scale).
    global_clip_zscore: the same with cohort-wide clip values, mean and std (CT).
    """
    values = channel.astype(np.float32, copy=False)
    if scheme.scheme == "percentile_zscore":
        body = values[values != 0]
        if body.size < 16:
            body = values.ravel()
        low, high = np.percentile(body, [scheme.lower_percentile, scheme.upper_percentile])
        clipped_body = np.clip(body, low, high)
        mean, std = float(clipped_body.mean()), float(clipped_body.std())
    elif scheme.scheme == "global_clip_zscore":
        low, high, mean, std = scheme.clip_low, scheme.clip_high, scheme.mean, scheme.std
    else:
        raise ValueError(f"unknown normalization scheme {scheme.scheme!r}")
    std = max(std, 1e-6)
    out = (np.clip(values, low, high) - mean) / std
    return out.astype(np.float32), {"clip_low": float(low), "clip_high": float(high), "mean": float(mean), "std": float(std)}
