"""Training augmentations: small batchgenerators transforms, each with its probability and ranges.

A batch is batchgenerators' dict: "data" (B, C, S, S) float32 normalized slices, "seg" (B, 1, S, S)
integer labels, optionally "attention" (B, 1, S, S) float32, and "slice_hw" (B, 2): rows and
columns of each sample's real pixels at the top-left of the S x S frame (the rest is padding, 0).

Randomness. Every transform draws from the np.random.Generator in the batch's "rng" entry, which
`SeededCompose` creates per batch from (seed, batch_index) and removes afterwards; so a batch's
augmentation depends on nothing but the seed and its index, in any worker process. (batchgenerators'
stock transforms draw from the global np.random and are therefore not used.) Called on a batch
without "rng", a transform draws from a fresh, unseeded generator.

Order. Intensity transforms act on each sample's real pixels only and come first; the spatial
transform comes last and fills what it uncovers with 0, so padding stays exactly 0, as the model
sees it at prediction time. Intensity transforms never touch "seg" or "attention".
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy import ndimage
from scipy.interpolate import PchipInterpolator

from sabnet.training.spatial_augmentation import EndCut, FieldOfViewCrop, SpatialAugmentation, batch_rng, content_hw

__all__ = ["EndCut", "FieldOfViewCrop", "SpatialAugmentation"]  # spatial steps live in spatial_augmentation

RNG_KEY = "rng"
AUGMENT_STREAM = 1  # SeedSequence key of the augmentation stream (the loader's sampling uses 0)


class SeededCompose(AbstractTransform):
    """Apply `transforms` in order with one generator per batch, seeded by (seed, batch["batch_index"])."""

    def __init__(self, transforms: Sequence[AbstractTransform], seed: int):
        self.transforms = list(transforms)
        self.seed = int(seed) % 2**63

    def __call__(self, **data_dict):
        data_dict[RNG_KEY] = np.random.default_rng([self.seed, int(data_dict["batch_index"]), AUGMENT_STREAM])
        for transform in self.transforms:
            data_dict = transform(**data_dict)
        data_dict.pop(RNG_KEY, None)
        return data_dict


class _IntensityAugmentation(AbstractTransform):
    """Applies `apply` to the real pixels of each (sample, channel) with probability p_per_sample."""

    p_per_sample: float

    def __call__(self, **data_dict):
        rng = batch_rng(data_dict)
        data = data_dict["data"]
        for b, (h, w) in enumerate(content_hw(data_dict)):
            for c in range(data.shape[1]):
                if rng.random() < self.p_per_sample:
                    data[b, c, :h, :w] = self.apply(data[b, c, :h, :w], rng)
        return data_dict

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class BrightnessAugmentation(_IntensityAugmentation):
    """Multiply intensities by a factor drawn uniformly from `multiplier`."""

    def __init__(self, p_per_sample: float = 0.15, multiplier: tuple[float, float] = (0.75, 1.25)):
        self.p_per_sample = p_per_sample
        self.multiplier = tuple(multiplier)

    def apply(self, x, rng):
        return x * rng.uniform(*self.multiplier)


class ContrastAugmentation(_IntensityAugmentation):
    """Stretch intensities about their mean by a factor from `factor`, then clip to the old range."""

    def __init__(self, p_per_sample: float = 0.15, factor: tuple[float, float] = (0.75, 1.25)):
        self.p_per_sample = p_per_sample
        self.factor = tuple(factor)

    def apply(self, x, rng):
        mean = x.mean()
        return np.clip((x - mean) * rng.uniform(*self.factor) + mean, x.min(), x.max())


class GammaAugmentation(_IntensityAugmentation):
    """Rescale to [0, 1], raise to a power from `gamma`, and restore the old mean and standard deviation."""

    def __init__(self, p_per_sample: float = 0.3, gamma: tuple[float, float] = (0.7, 1.5)):
        self.p_per_sample = p_per_sample
        self.gamma = tuple(gamma)

    def apply(self, x, rng):
        low, span = x.min(), np.ptp(x)
        if span == 0:
            return x
        y = ((x - low) / span) ** rng.uniform(*self.gamma)
        return _standardize(y) * x.std() + x.mean()


class NoiseAugmentation(_IntensityAugmentation):
    """Add Gaussian noise with a standard deviation drawn from `sigma` (normalized intensity units)."""

    def __init__(self, p_per_sample: float = 0.1, sigma: tuple[float, float] = (0.0, 0.3)):
        self.p_per_sample = p_per_sample
        self.sigma = tuple(sigma)

    def apply(self, x, rng):
        return x + rng.normal(0.0, rng.uniform(*self.sigma), size=x.shape).astype(x.dtype)


class BlurAugmentation(_IntensityAugmentation):
    """Gaussian blur in-plane with a width drawn from `sigma_px` (pixels)."""

    def __init__(self, p_per_sample: float = 0.2, sigma_px: tuple[float, float] = (0.5, 1.0)):
        self.p_per_sample = p_per_sample
        self.sigma_px = tuple(sigma_px)

    def apply(self, x, rng):
        return ndimage.gaussian_filter(x, rng.uniform(*self.sigma_px), mode="nearest")


class SequenceAugmentation(_IntensityAugmentation):
    """Remap intensities so that one sequence teaches the look of others; the result is re-standardized.

    Intensities are first put on [0, 1] by the sample's 0.5/99.5 percentiles. One of three
    branches is then drawn (weights p_monotonic, p_fold, p_inversion):

    - monotonic: a random smooth increasing curve (monotone cubic through `n_knots` sorted random
      knots). Tissue order is kept, their spacing changes: T1 <-> proton-density-like weighting,
      other TR/TE, field strength, or coil shading of the grey levels.
    - fold: a curve rising from 0 to 1 at a random point in the lower-middle range, then falling to
      a low value at the top. On a T1 image (fat and marrow brightest, fluid and cartilage
      intermediate-dark, cortex and air black) this gives a fat-suppressed T2 / STIR-like image:
      marrow and fat dark, fluid, oedema and cartilage bright, cortex and air still black.
    - inversion: x -> -x. Marrow bright <-> dark: a crude T2/STIR look from T1 (and the reverse);
      air turns bright, which no sequence does, so the network has to rely on shape, not brightness.
    """

    BRANCHES = ("monotonic", "fold", "inversion")

    def __init__(self, p_per_sample: float = 0.3, p_monotonic: float = 0.4, p_fold: float = 0.3,
                 p_inversion: float = 0.3, n_knots: int = 3, fold_peak: tuple[float, float] = (0.1, 0.5),
                 fold_end: tuple[float, float] = (0.0, 0.3)):
        weights = np.array([p_monotonic, p_fold, p_inversion], dtype=float)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("branch probabilities must be >= 0 and not all 0")
        self.p_per_sample = p_per_sample
        self.branch_probabilities = weights / weights.sum()
        self.n_knots = n_knots
        self.fold_peak = tuple(fold_peak)
        self.fold_end = tuple(fold_end)

    def apply(self, x, rng):
        branch = self.BRANCHES[rng.choice(3, p=self.branch_probabilities)]
        return self.remap(x, branch, rng)

    def remap(self, x: np.ndarray, branch: str, rng: np.random.Generator) -> np.ndarray:
        """x remapped by one branch ("monotonic", "fold" or "inversion"), re-standardized."""
        if branch == "inversion":
            return _standardize(-x)
        low, high = np.percentile(x, [0.5, 99.5])
        if high <= low:
            return x
        u = np.clip((x - low) / (high - low), 0.0, 1.0)
        if branch == "monotonic":
            knots_y = np.concatenate([[0.0], np.sort(rng.uniform(0, 1, self.n_knots)), [1.0]])
            curve = PchipInterpolator(np.linspace(0, 1, self.n_knots + 2), knots_y)
        elif branch == "fold":
            curve = PchipInterpolator([0.0, rng.uniform(*self.fold_peak), 1.0], [0.0, 1.0, rng.uniform(*self.fold_end)])
        else:
            raise ValueError(f"unknown branch {branch!r}; one of {self.BRANCHES}")
        return _standardize(curve(u))


def _standardize(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32)
    return (y - y.mean()) / max(float(y.std()), 1e-6)


class UnitRange(AbstractTransform):
    """Each sample's real pixels back onto [0, 1] by their own minimum and maximum (per channel): the
    input range of LiteMedSAM's encoder, after augmentations that re-standardised the intensities.
    Padding stays 0. With `clip_only`, every pixel is clipped to [0, 1] instead (after a spatial
    step, whose cubic interpolation overshoots a little)."""

    def __init__(self, clip_only: bool = False):
        self.clip_only = clip_only

    def __call__(self, **data_dict):
        data = data_dict["data"]
        if self.clip_only:
            np.clip(data, 0.0, 1.0, out=data)
            return data_dict
        for b, (h, w) in enumerate(content_hw(data_dict)):
            for c in range(data.shape[1]):
                x = data[b, c, :h, :w]
                low, span = x.min(), np.ptp(x)
                data[b, c, :h, :w] = (x - low) / span if span > 0 else 0.0
        return data_dict


def default_augmentations(unit_range: bool = False) -> list[AbstractTransform]:
    """The training augmentations, in the order applied (intensity first, spatial last; with
    `unit_range` the intensities are put back onto [0, 1] before the spatial step, whose fill of 0
    belongs to it, and clipped to it after)."""
    intensity = [SequenceAugmentation(), BrightnessAugmentation(), ContrastAugmentation(), GammaAugmentation(),
                 NoiseAugmentation(), BlurAugmentation()]
    return _with_spatial(intensity, [EndCut(), FieldOfViewCrop(), SpatialAugmentation()], unit_range)


def _with_spatial(intensity: list[AbstractTransform], spatial: list[AbstractTransform], unit_range: bool) -> list:
    if not unit_range:
        return intensity + spatial
    return intensity + [UnitRange()] + spatial + [UnitRange(clip_only=True)]


def copy_augmentations(unit_range: bool = False) -> list[AbstractTransform]:
    """The augmentations of a cached embedding's augmented copy (sabnet.training.embedding_cache):
    every copy gets a sequence remap (another sequence's look), the other augmentations as in
    training, and a rotation or scaling half of the time."""
    intensity = [SequenceAugmentation(p_per_sample=1.0), BrightnessAugmentation(), ContrastAugmentation(),
                 GammaAugmentation(), NoiseAugmentation(), BlurAugmentation()]
    return _with_spatial(intensity, [EndCut(), FieldOfViewCrop(p_per_sample=0.5),
                                      SpatialAugmentation(p_rotation=0.5, p_scale=0.5)],
                         unit_range)
