"""Carry bone labels from an annotated sequence to another sequence of the same exam.

The paper brings non-T1 sequences into training this way: register the annotated volume
(moving) to the other sequence (fixed), move its labels onto the fixed grid, and keep the result
only when the alignment is convincing.

- `super_resolve_labels` (slice_super_resolution.py) first decides, on a grid 5-7 times finer
  along the moving slice axis, how far each bone reaches between two thick slices, taught by the
  moving image's own in-plane detail.
- `carry_labels` (label_carrying.py) moves a label map through a transform: linear shares of each
  label's one-hot mask where the moving voxels agree, shape-based interpolation of its signed
  distance in the gaps between (fine) slices, keeping each bone's volume. Those levels are also
  the prior with which `refine_labels` (label_refinement.py) decides the unsure band around each
  bone on the fixed image's own intensities.
- `alignment_quality` says whether the bones are really aligned (see `Quality`).
- `transfer_labels` does the whole job for one pair of files and refuses to write below
  `min_quality`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sabnet.errors import SabnetError
from sabnet.evaluation.metrics import dice_iou
from sabnet.io.atomic import atomic_path
from sabnet.io.geometry import Geometry
from sabnet.io.image_io import array_to_image, read_image, write_image
from sabnet.registration.label_carrying import (carried_levels, carried_shares, labels_from_levels, labels_from_shares,
                                                 level_prior)
from sabnet.registration.label_refinement import refine_labels
from sabnet.registration.rigid_affine import Registration, body_mask, flatten_bias, mask_centre_mm, register
from sabnet.registration.slice_super_resolution import super_resolve_labels

DEFAULT_MIN_QUALITY = 0.2
QUALITY_SHIFT_MM = 3.0      # how far the result is moved to see whether the agreement depends on it
QUALITY_MARGIN_MM = 5.0     # the quality looks at fixed voxels this close to a transferred bone
QUALITY_SMOOTH_MM = 1.0     # both images are smoothed this much first (noise would dilute the figure)
N_QUALITY_BINS = 32
MIN_QUALITY_VOXELS = 500
RECENTRE_MM = 20.0          # body centres further apart: also try starting from matched centres
RETRY_SEED_STEP = 1         # a try below the quality threshold is repeated with the seed this much on


@dataclass(frozen=True)
class Quality:
    """How convincingly the transferred bones sit on the fixed image.

    Around the transferred bones (fixed voxels within `QUALITY_MARGIN_MM` of a bone, inside the
    moved image; both images smoothed by 1 mm) the two images share information: their
    normalised mutual information, 2 MI / (H_fixed + H_moved) on equal-count bins (`nmi`: 0 when
    one says nothing about the other, 1 when it determines it). Its level depends on the pair of
    sequences and the noise (0.08-0.29 on well-aligned phantom pairs, STIR and GRE lowest), so it
    cannot judge a case by itself. What does is how much of it needs the bones exactly where they
    were put:

    sharpness: 1 - (mean nmi with the result moved `QUALITY_SHIFT_MM` along each fixed axis, both
        ways) / nmi, for all bones together; bone_sharpness: the same around each bone (label
        value -> figure; bones with fewer than `MIN_QUALITY_VOXELS` voxels around them are not
        judged alone). Bone edges that coincide lose a good share when moved; a bone put where the
        fixed image has none loses little or even gains (a negative figure).
    value: the quality figure, the lowest of these: the share of agreement that the worst-placed
        bone (or all bones together) loses when moved 3 mm. On 20 phantom pairs with a known
        motion (5 locations, T1/T2/PD/STIR/GRE, 2.5-4 mm slices) it was 0.21-0.52 for all but two
        good PD->STIR pairs (0.13: a knee and a shoulder, both within 0.001 Dice of the true motion);
        on 24 wrong pairs (another subject, voxels flipped under their header) 0.18 or less,
        except two whose labels were right all the same: a flipped spine that is its own mirror
        image (0.34, Dice 0.96) and a hip onto a look-alike subject (0.26, Dice 0.95). Since each
        pair below the threshold gets the further tries of `_registration_starts` (stop 16), one
        more wrong pair passes, another subject's spine (0.24, Dice 0.94), and the highest wrong
        pair with bad labels scores 0.12 (Dice 0.61). `DEFAULT_MIN_QUALITY` is 0.2. Judged on the bias-flattened images that registration aligns,
        the good pairs scored as high or higher (the PD->STIR shoulder 0.27, the knee 0.145) but so
        did wrong ones: a third passed (another subject's spine, 0.18 -> 0.24, Dice 0.95 all the
        same) and the highest wrong pair with bad labels came to 0.195 (Dice 0.64); so the raw
        images are used.
    """

    value: float
    nmi: float
    sharpness: float
    bone_sharpness: dict = field(default_factory=dict)


@dataclass
class TransferResult:
    """What `transfer_labels` did for one pair.

    quality: the `Quality` of the final alignment; written: whether `out_labels` was written.
    registration: transform (fixed world -> moving world) and how it was found.
    coverage: fraction of the fixed image's body that the moving image covers (labels can only be
        transferred there). labels: transferred voxels per label value (after refinement).
    refined_voxels: voxels whose label the refinement changed (0 without it).
    fine_slices: fine voxels per moving slice that the labels were super-resolved to before they
        were carried (1: carried as given: thin slices, or super-resolution off).
    tries: registrations run (more than 1 when the first fell below the quality threshold).
    dice: per label value and "all" (any bone), against `truth_labels` inside that covered part,
        when truth was given; dice_carried: the same for the labels before refinement.
    reason: why nothing was written ("" when written).
    """

    quality: Quality
    written: bool
    registration: Registration
    coverage: float
    labels: dict[int, int] = field(default_factory=dict)
    refined_voxels: int = 0
    fine_slices: int = 1
    tries: int = 1
    dice: dict = field(default_factory=dict)
    dice_carried: dict = field(default_factory=dict)
    reason: str = ""


def alignment_quality(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                      carried: np.ndarray) -> Quality:
    """The `Quality` of `transform` (fixed world -> moving world), judged around `carried`, the
    labels already moved onto the fixed grid (array order)."""
    fixed = sitk.SmoothingRecursiveGaussian(sitk.Cast(fixed, sitk.sitkFloat32), QUALITY_SMOOTH_MM)
    moving = sitk.SmoothingRecursiveGaussian(sitk.Cast(moving, sitk.sitkFloat32), QUALITY_SMOOTH_MM)
    radius = [max(1, int(round(QUALITY_MARGIN_MM / s))) for s in fixed.GetSpacing()]
    regions = {"all": _dilated(carried > 0, fixed, radius)}
    for value in np.unique(carried[carried > 0]):
        regions[int(value)] = _dilated(carried == value, fixed, radius)
    fixed_values = sitk.GetArrayFromImage(fixed)

    def nmi_per_region(t: sitk.Transform) -> dict:
        moved = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, t, sitk.sitkLinear, np.nan, sitk.sitkFloat32))
        out = {}
        for key, region in regions.items():
            inside = region & np.isfinite(moved)
            bins = N_QUALITY_BINS if key == "all" else N_QUALITY_BINS // 2
            out[key] = (normalised_mutual_information(fixed_values[inside], moved[inside], bins)
                        if np.count_nonzero(inside) >= MIN_QUALITY_VOXELS else np.nan)
        return out

    at_result = nmi_per_region(transform)
    axes = np.asarray(fixed.GetDirection()).reshape(3, 3).T   # row d: world vector of ITK index axis d
    moved = [nmi_per_region(sitk.CompositeTransform([transform, sitk.TranslationTransform(
        3, (sign * QUALITY_SHIFT_MM * axis).tolist())])) for axis in axes for sign in (-1.0, 1.0)]
    sharpness = {}
    for key, value in at_result.items():
        shifted = [m[key] for m in moved if np.isfinite(m[key])]
        if np.isfinite(value) and value > 0 and shifted:
            sharpness[key] = float(max(-1.0, 1.0 - np.mean(shifted) / value))
    if "all" not in sharpness:
        return Quality(value=-1.0, nmi=float(np.nan_to_num(at_result["all"])), sharpness=-1.0, bone_sharpness={})
    bones = {k: v for k, v in sharpness.items() if k != "all"}
    value = min([sharpness["all"], *bones.values()])
    return Quality(value=float(value), nmi=float(at_result["all"]), sharpness=sharpness["all"], bone_sharpness=bones)


def _dilated(mask: np.ndarray, like: sitk.Image, radius: list[int]) -> np.ndarray:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(like)
    return sitk.GetArrayFromImage(sitk.BinaryDilate(image, radius)).astype(bool)


def normalised_mutual_information(a: np.ndarray, b: np.ndarray, n_bins: int = N_QUALITY_BINS) -> float:
    """2 MI(a, b) / (H(a) + H(b)) of two equally long value arrays, on `n_bins` equal-count bins each."""
    joint = np.bincount(_equal_count_bins(a, n_bins) * n_bins + _equal_count_bins(b, n_bins),
                        minlength=n_bins * n_bins).reshape(n_bins, n_bins) / a.size
    h_a, h_b, h_ab = _entropy(joint.sum(axis=1)), _entropy(joint.sum(axis=0)), _entropy(joint)
    return float(2.0 * (h_a + h_b - h_ab) / (h_a + h_b)) if h_a + h_b > 0 else 0.0


def _equal_count_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    return np.searchsorted(edges, values, side="right")


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def transfer_labels(fixed_image: Path | str, moving_image: Path | str, moving_labels: Path | str,
                    out_labels: Path | str | None, min_quality: float = DEFAULT_MIN_QUALITY,
                    truth_labels: Path | str | None = None, save_transform: Path | str | None = None,
                    affine: bool = True, seed: int = 1, refine: bool = True,
                    super_resolve: bool = True) -> TransferResult:
    """Register `moving_image` (the annotated sequence) to `fixed_image`, carry `moving_labels` over
    and write them to `out_labels` on the fixed grid, unless the quality is below `min_quality`
    (`out_labels` None: judge only, write nothing).

    The registration starts from the scanner coordinates; while it falls short of `min_quality`
    (and of `DEFAULT_MIN_QUALITY`, so that a benchmark that writes every pair tries as the default
    does) it is tried again with fresh metric samples, then from matched body centres (headers
    whose origins disagree), and the try with the best metric kept (`_registration_starts`);
    each is judged on the labels moved as linear shares (`labels_from_shares`, the stair-steps of
    the moving slices), on which the quality's threshold was set. The labels are then
    super-resolved along the moving slice axis (`super_resolve_labels`, when the moving slices are
    thick and `super_resolve`), carried shape-based (`carried_levels`) and refined on the fixed
    image's own intensities (`refine_labels`; `refine` False: written as carried). `truth_labels`
    (the fixed image's own labels, when known) adds Dice per label, of the written labels and of
    the carried ones.
    `save_transform` writes the transform (ITK .tfm, fixed world -> moving world) when the labels
    are written. Nothing is written for a refused pair; an existing `out_labels` is left alone.
    """
    fixed, moving = _read(fixed_image), _read(moving_image)
    labels = _read_labels(moving_labels, moving, moving_image)
    flat = (flatten_bias(fixed, body_mask(fixed)), flatten_bias(moving, body_mask(moving)))
    results = []
    good_enough = max(min_quality, DEFAULT_MIN_QUALITY)
    for start, samples in _registration_starts(fixed, moving, seed):
        registration = register(fixed, moving, affine=affine, start=start, seed=samples, flattened=flat)
        shares = carried_shares(labels, fixed, registration.transform)
        stepped = labels_from_shares(shares, sitk.GetArrayViewFromImage(labels).dtype)
        quality = alignment_quality(fixed, moving, registration.transform, stepped)
        results.append((registration, shares, quality))
        if quality.value >= good_enough:
            break
    # the try the images agree with best (lowest Mattes MI on the whole body), not the best quality:
    # picking the highest of several qualities would lift wrong pairs over the threshold
    registration, shares, quality = min(results, key=lambda r: r[0].metric)
    fine = super_resolve_labels(labels, flat[1], seed=seed) if super_resolve else None
    fine_slices = 1 if fine is None else max(f // n for f, n in zip(fine.GetSize(), labels.GetSize()))
    if fine is not None:
        labels, shares = fine, carried_shares(fine, fixed, registration.transform)
    levels = carried_levels(labels, fixed, registration.transform, shares)
    geometry = Geometry.of(fixed)
    carried = labels_from_levels(levels, geometry.shape, sitk.GetArrayViewFromImage(labels).dtype)
    final = (refine_labels(sitk.GetArrayViewFromImage(flat[0]), carried, level_prior(levels), geometry.axis_spacing_mm)
             if refine else carried)

    covered = coverage_of(moving, fixed, registration.transform)
    body = sitk.GetArrayViewFromImage(body_mask(fixed)).astype(bool)
    present = {int(v): int(n) for v, n in zip(*np.unique(final, return_counts=True)) if v != 0}
    result = TransferResult(quality=quality, written=False, registration=registration,
                            coverage=float(np.count_nonzero(covered & body) / max(np.count_nonzero(body), 1)),
                            labels=present, refined_voxels=int(np.count_nonzero(final != carried)),
                            fine_slices=fine_slices, tries=len(results))
    if truth_labels is not None:
        truth = sitk.GetArrayFromImage(_read_labels(truth_labels, fixed, fixed_image, need_bones=False))
        result.dice = dice_per_label(truth, final, covered)
        result.dice_carried = dice_per_label(truth, carried, covered)
    if quality.value < min_quality:
        result.reason = f"quality {quality.value:.2f} is below the minimum {min_quality:.2f}"
        return result
    if out_labels is None:
        return result
    write_image(final, geometry, out_labels)
    if save_transform is not None:
        with atomic_path(Path(save_transform)) as tmp:
            sitk.WriteTransform(registration.transform, str(tmp))
    result.written = True
    return result


def dice_per_label(truth: np.ndarray, carried: np.ndarray, where: np.ndarray) -> dict:
    """Dice per label value (either map) and for "all" bones together, counted inside `where`."""
    out = {}
    for value in np.union1d(np.unique(truth[where]), np.unique(carried[where])):
        if value != 0:
            out[int(value)] = dice_iou((truth == value) & where, (carried == value) & where)[0]
    out["all"] = dice_iou((truth > 0) & where, (carried > 0) & where)[0]
    return out


def coverage_of(moving: sitk.Image, fixed: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """Boolean array on the fixed grid: the voxels that the moving image's field of view covers."""
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    return sitk.GetArrayFromImage(sitk.Resample(ones, fixed, transform, sitk.sitkNearestNeighbor, 0)).astype(bool)


def _registration_starts(fixed: sitk.Image, moving: sitk.Image, seed: int):
    """(start, metric-sample seed) for each try, in order: the scanner coordinates, then fresh
    random metric samples from there (one draw of samples can lead the optimiser into a wrong
    optimum: a phantom spine at Mattes MI -0.25, quality 0.14, Dice 0.64 aligned at MI -0.41,
    quality 0.37, Dice 0.97 with the next seed), then the same two from matched body centres when
    those disagree."""
    yield "scanner", seed
    yield "scanner", seed + RETRY_SEED_STEP
    if _centres_disagree(fixed, moving):
        yield "centres", seed
        yield "centres", seed + RETRY_SEED_STEP


def _centres_disagree(fixed: sitk.Image, moving: sitk.Image) -> bool:
    distance = np.linalg.norm(mask_centre_mm(body_mask(fixed)) - mask_centre_mm(body_mask(moving)))
    return bool(distance > RECENTRE_MM)


def _read(path: Path | str) -> sitk.Image:
    """A 3D image file or DICOM folder as a SimpleITK image (4D files with one volume squeezed)."""
    return array_to_image(*read_image(path))


def _read_labels(path: Path | str, image: sitk.Image, image_path: Path | str, need_bones: bool = True) -> sitk.Image:
    """Read a label map that must lie on `image`'s grid and hold integer values (some of them
    bones, when `need_bones`)."""
    labels = _read(path)
    mismatch = Geometry.of(labels).differences(Geometry.of(image))
    if mismatch:
        raise SabnetError(f"{path}: label map does not lie on the grid of {image_path} ({'; '.join(mismatch)}); "
                          "give the labels of that image")
    array = sitk.GetArrayFromImage(labels)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise SabnetError(f"{path}: label map holds non-integer values; labels must be whole numbers")
        array = array.astype(np.int32)
    if array.min() < 0:
        raise SabnetError(f"{path}: label map holds negative values; labels must be 0 (background) or positive")
    if need_bones and not np.any(array):
        raise SabnetError(f"{path}: label map is empty (all 0); there is nothing to transfer")
    dtype = np.uint8 if array.max() <= np.iinfo(np.uint8).max else np.uint16 if array.max() <= 65535 else np.int32
    out = sitk.GetImageFromArray(array.astype(dtype))
    out.CopyInformation(labels)
    return out
