"""Intensity normalization: sampled statistics of large images, and standardizing after resampling."""
import numpy as np
import pytest

from sabnet.planning.plans import NormalizationScheme
from sabnet.preprocessing.normalization import MAX_STATISTICS_VOXELS, clipped, normalization_values, standardized
from sabnet.preprocessing.resampling import resample_slices


def _mri_like(shape, seed=0):
    """Rician-ish tissue classes with a dark background and a few bright outliers (int16, as DICOM)."""
    rng = np.random.default_rng(seed)
    image = rng.choice([0.0, 300.0, 800.0, 1500.0], size=shape, p=[0.3, 0.3, 0.3, 0.1])
    image = np.abs(image + rng.normal(0, 60, shape))
    image[rng.random(shape) < 1e-4] = 30000  # flow artefacts: what the percentile clip is for
    image[:, :4] = 0
    return image.astype(np.int16)


def test_statistics_of_a_large_image_come_from_a_sample_that_matches_the_whole():
    image = _mri_like((40, 256, 256))  # 2.6 M voxels: sampled
    assert image.size > MAX_STATISTICS_VOXELS
    scheme = NormalizationScheme()
    sampled = normalization_values(image, scheme)
    body = image[image != 0].astype(np.float64)
    low, high = np.percentile(body, [scheme.lower_percentile, scheme.upper_percentile])
    clip = np.clip(body, low, high)
    assert sampled["clip_low"] == pytest.approx(low, rel=0.02, abs=2.0)
    assert sampled["clip_high"] == pytest.approx(high, rel=0.02)
    assert sampled["mean"] == pytest.approx(clip.mean(), rel=0.005)
    assert sampled["std"] == pytest.approx(clip.std(), rel=0.005)
    assert high < 30000  # the outliers are clipped away


def test_standardizing_after_resampling_equals_normalizing_first():
    image = _mri_like((6, 90, 70), seed=1)
    scheme = NormalizationScheme()
    values = normalization_values(image, scheme)
    normalized = standardized(clipped(image, values), values)
    first = resample_slices(normalized, (40, 31), order=3)
    after = standardized(resample_slices(clipped(image, values), (40, 31), order=3), values)
    np.testing.assert_allclose(after, first, atol=1e-4)
    # the input is left alone, and normalizing gives zero mean and unit std inside the body
    assert image.dtype == np.int16
    body = normalized[image != 0]
    assert abs(float(body.mean())) < 0.05 and float(body.std()) == pytest.approx(1.0, rel=0.05)
