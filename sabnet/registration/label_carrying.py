"""Move a label map from one scan's grid onto another's through a transform.

A label map says, per moving voxel centre, which bone is there. On a scan with 3-4 mm slices the
true surface of a bone lies anywhere between its last centre inside and the next one outside, so
the fixed voxels whose centres fall in such a gap need a decision:

- `carried_shares`: each label's one-hot mask resampled linearly onto the fixed grid (a share in
  [0, 1] per voxel). Where it is exactly 1 or 0 every moving centre around the voxel agrees and
  the label is sure; in between is the gap. The shares sum to the bone's volume (in fixed voxels)
  that the moving labels imply. `labels_from_shares` gives each voxel the largest share: the
  stair-steps of the moving slices, moved (what `alignment_quality` judges).
- `carried_levels`: shape-based interpolation decides the gap. Each label's signed distance to
  its surface on the moving grid (mm, negative inside), smoothed by `SMOOTH_MM` (keeping at each
  moving voxel centre the sign its label gives), is resampled linearly, so the surface runs
  between slices the way a smooth bone does instead of in steps; then it is shifted so that the
  gap voxels below 0 bring the bone to the volume of its shares (interpolated distances alone
  shrink convex bones: about 10 % on phantom hands). A gap voxel where another bone has the
  larger share is left to that bone, so bones that touch keep their volumes too. Sure voxels stay
  as they are: a transform that moves nothing gives the labels back exactly, and one that moves
  them a small fraction of a voxel in-plane changes few.
- `carry_labels`: the label map of those levels (each voxel the bone whose level is below 0);
  `level_prior`: the probability that a voxel is inside each bone, 1 / (1 + exp(level /
  `PRIOR_WIDTH_MM`)), which `refine_labels` weighs against the fixed image's intensities.

Carrying hand phantoms (bones 4-8 mm across on 2.5-3.7 mm slices) with the true motion: mean
Dice 0.917 (linear shares) -> 0.951 (levels) over 10 pairs at 128 px; after refinement 0.935 ->
0.962 (benchmarks/label_transfer.py has the figures for whole transfers).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from sabnet.io.geometry import Geometry

SMOOTH_MM = 1.0           # Gaussian smoothing of each bone's signed distance on the moving grid
PRIOR_WIDTH_MM = 0.4      # level_prior: the log-odds of inside fall by 1 per this much level
CENTRE_MARGIN_MM = 0.25   # the distance at a moving voxel centre keeps at least this much of its label's sign
SURE = 1e-5               # shares within this of 0 or 1 are sure
SURE_LEVEL_MM = 10.0      # the level given to sure voxels (inside: at most -this, outside: at least +this)
_PAD = 4                  # moving voxels kept around each bone for its distance map


def carry_labels(labels: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """Move a label map onto `reference`'s grid through `transform` (reference world -> labels world).

    Shape-based: see `carried_levels`. Returns an array in array order on the reference grid, of
    the labels' integer type, holding only values present in `labels` (0 where the labels' field
    of view ends).
    """
    levels = carried_levels(labels, reference, transform)
    return labels_from_levels(levels, Geometry.of(reference).shape, sitk.GetArrayViewFromImage(labels).dtype)


def carried_shares(labels: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> dict:
    """Each label's one-hot mask linearly resampled onto `reference`'s grid, where it reaches.

    Returns label value -> (box, share): box a tuple of 3 slices of the reference grid (array
    order), share a float32 array of the box's shape in [0, 1], 0 outside the box. Value 0
    (background, also 1 beyond the labels' field of view) covers the whole grid.
    """
    array = sitk.GetArrayFromImage(labels)
    values = np.unique(array)
    whole = tuple(slice(0, n) for n in Geometry.of(reference).shape)
    out = {0: (whole, _resampled_share(array == 0, labels, reference, transform, outside=1.0)[1])}
    for value in values[values != 0]:
        out[int(value)] = _resampled_share(array == value, labels, reference, transform, outside=0.0)
    return out


def labels_from_shares(shares: dict, dtype) -> np.ndarray:
    """The label map of `carried_shares`: each voxel the value with the largest share (ties to the
    higher value, so a bone wins over background)."""
    bone, share = _largest_share(shares)
    return np.where(share >= shares[0][1], bone, 0).astype(dtype)


def carried_levels(labels: sitk.Image, reference: sitk.Image, transform: sitk.Transform,
                   shares: dict | None = None) -> dict:
    """Each bone's level on `reference`'s grid: below 0 inside, in mm of signed distance.

    shares: `carried_shares` of the same arguments (computed when None). Returns label value ->
    (box, level): the same boxes as the shares, level a float32 array of the box's shape. Sure
    voxels (share 1 or 0) get at most -`SURE_LEVEL_MM` or at least +`SURE_LEVEL_MM`; in the gap,
    the smoothed, resampled signed distance shifted so that round(sum of shares) voxels of the
    box are below 0 (see the module docstring).
    """
    shares = carried_shares(labels, reference, transform) if shares is None else shares
    array = sitk.GetArrayFromImage(labels)
    spacing = np.asarray(labels.GetSpacing(), dtype=float)[::-1]
    winner = _largest_share(shares)[0]
    out = {}
    for value, (box, share) in shares.items():
        if value == 0 or share.size == 0:
            continue
        sure_in, sure_out = share >= 1 - SURE, share <= SURE
        level = np.where(sure_in, -SURE_LEVEL_MM, SURE_LEVEL_MM).astype(np.float32)
        gap = ~(sure_in | sure_out)
        if gap.any():                            # so some moving voxel near the bone is not the bone
            lo, crop = _signed_distance(array == value, spacing)
            moved = _resample_crop(crop, lo, labels, reference, box, transform, sitk.sitkLinear, 2 * SURE_LEVEL_MM)
            # a voxel where another bone has the larger share is that bone's to take: the volume of
            # this one goes to its own voxels
            own = gap & ((winner[box] == value) | (winner[box] == 0))
            wanted = int(round(float(share.sum()))) - int(np.count_nonzero(sure_in))
            level[own] = _shifted_to_volume(moved[own], share[own], wanted)
            level[gap & ~own] = np.maximum(moved[gap & ~own], 0) + 1e-3
        out[int(value)] = (box, level)
    return out


def _largest_share(shares: dict) -> tuple[np.ndarray, np.ndarray]:
    """(bone, share) arrays of the reference grid: at each voxel the bone with the largest share
    (int32; ties to the higher value; 0 where no bone has a share) and that share (float32)."""
    best = np.zeros(shares[0][1].shape, np.float32)
    out = np.zeros(best.shape, np.int32)
    for value in sorted(v for v in shares if v != 0):
        box, share = shares[value]
        larger = (share >= best[box]) & (share > 0)
        out[box][larger] = value
        best[box] = np.maximum(best[box], share)
    return out, best


def _shifted_to_volume(level: np.ndarray, share: np.ndarray, wanted: int) -> np.ndarray:
    """`level` (1D) shifted so that exactly `wanted` of its values are below 0: the lowest, ties
    broken by the larger `share` (linear share of the same voxels), then by position; every value
    at least 1e-3 from 0."""
    wanted = min(max(wanted, 0), level.size)
    inside = np.zeros(level.size, bool)
    if wanted == 0:
        zero = float(level.min()) if level.size else 0.0
    else:
        chosen = np.lexsort((-share, level))[:wanted]
        inside[chosen] = True
        zero = float(level[chosen].max())
    shifted = level - zero
    return np.where(inside, np.minimum(shifted, 0) - 1e-3, np.maximum(shifted, 0) + 1e-3).astype(np.float32)


def labels_from_levels(levels: dict, shape: tuple, dtype) -> np.ndarray:
    """The label map of `carried_levels` on a grid of `shape`: each voxel the bone whose level is
    below 0 there (else 0). `carried_levels` leaves at most one bone below 0 per voxel (a voxel
    two bones share goes to the larger linear share); were there more, the lowest level wins."""
    best = np.zeros(shape, np.float32)
    out = np.zeros(shape, dtype=dtype)
    for value in sorted(levels):
        box, level = levels[value]
        lower = level < best[box]
        out[box][lower] = value
        best[box] = np.minimum(best[box], level)
    return out


def level_prior(levels: dict) -> dict:
    """label value -> (box, probability that a voxel is inside): 1 / (1 + exp(level / PRIOR_WIDTH_MM))."""
    return {value: (box, (1.0 / (1.0 + np.exp(np.clip(level / PRIOR_WIDTH_MM, -60, 60)))).astype(np.float32))
            for value, (box, level) in levels.items()}


def _signed_distance(mask: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(crop start in array order, signed distance in mm on the crop) of `mask`, cropped to its
    bounding box padded by `_PAD` voxels (at least 3 x `SMOOTH_MM`) and smoothed by `SMOOTH_MM`,
    keeping at each voxel centre at least `CENTRE_MARGIN_MM` of the sign its label gives. The mask
    must not fill the whole array (then nothing needs interpolating)."""
    pad = np.maximum(_PAD, np.ceil(3 * SMOOTH_MM / spacing)).astype(int)     # room for the smoothing
    lo, hi = _bounding_box(mask, pad)
    crop = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    distance = (ndimage.distance_transform_edt(~crop, sampling=spacing)
                - ndimage.distance_transform_edt(crop, sampling=spacing))
    smooth = ndimage.gaussian_filter(distance.astype(np.float32), SMOOTH_MM / spacing)
    # at the moving voxel centres the labels themselves decide: smoothing may round a corner, not flip a voxel
    return lo, np.where(crop, np.minimum(smooth, -CENTRE_MARGIN_MM), np.maximum(smooth, CENTRE_MARGIN_MM))


def _resampled_share(mask: np.ndarray, like: sitk.Image, reference: sitk.Image, transform: sitk.Transform,
                     outside: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """`mask` (on `like`'s grid) as 0/1, linearly resampled onto `reference`; `outside` beyond
    `like`'s field of view. Returns (box, share) as in `carried_shares`. A label (`outside` 0) is
    resampled from its bounding box (padded by 2 voxels), where it is 0 around, onto the part of
    the reference grid that box reaches: the same values, less work."""
    shape = Geometry.of(reference).shape
    whole = tuple(slice(0, n) for n in shape)
    if not mask.any():
        return whole, np.full(shape, outside, dtype=np.float32)
    lo, hi = _bounding_box(mask, pad=2) if outside == 0.0 else (np.zeros(3, int), np.asarray(mask.shape))
    crop = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32)
    box = _reached_box(_crop_image(crop, lo, like), reference, transform) if outside == 0.0 else whole
    if box is None:                     # the label lies outside the reference's field of view
        return (slice(0, 0),) * 3, np.zeros((0, 0, 0), dtype=np.float32)
    return box, _resample_crop(crop, lo, like, reference, box, transform, sitk.sitkLinear, outside)


def _crop_image(crop: np.ndarray, lo: np.ndarray, like: sitk.Image) -> sitk.Image:
    """`crop` (array order, starting at voxel `lo` of `like`) as an image placed where it lies in `like`."""
    image = sitk.GetImageFromArray(crop)
    image.SetSpacing(like.GetSpacing())
    image.SetDirection(like.GetDirection())
    image.SetOrigin(like.TransformIndexToPhysicalPoint([int(i) for i in lo[::-1]]))
    return image


def _resample_crop(crop: np.ndarray, lo: np.ndarray, like: sitk.Image, reference: sitk.Image, box: tuple,
                   transform: sitk.Transform, interpolator: int, outside: float) -> np.ndarray:
    """float32 array of `box`'s shape: `crop` (of `like`, from voxel `lo`) resampled onto the part
    `box` of `reference`'s grid through `transform`; `outside` where the crop does not reach."""
    target = sitk.Image([b.stop - b.start for b in box[::-1]], sitk.sitkFloat32)
    target.SetSpacing(reference.GetSpacing())
    target.SetDirection(reference.GetDirection())
    target.SetOrigin(reference.TransformIndexToPhysicalPoint([b.start for b in box[::-1]]))
    image = _crop_image(crop.astype(np.float32, copy=False), lo, like)
    return sitk.GetArrayFromImage(sitk.Resample(image, target, transform, interpolator, outside, sitk.sitkFloat32))


def _reached_box(crop: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> tuple[slice, ...] | None:
    """The box of `reference`'s grid (array order slices, 1 voxel of margin) that `crop`'s voxels
    reach through `transform` (reference world -> crop world); the whole grid when the transform
    has no inverse, None when nothing is reached."""
    shape = np.asarray(Geometry.of(reference).shape)
    try:
        inverse = transform.GetInverse()
    except RuntimeError:
        return tuple(slice(0, int(n)) for n in shape)
    size = np.asarray(crop.GetSize())
    corners = [crop.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
               for corner in np.stack(np.meshgrid(*[(-1.0, s) for s in size], indexing="ij"), -1).reshape(-1, 3)]
    index = np.asarray([reference.TransformPhysicalPointToContinuousIndex(inverse.TransformPoint(c))
                        for c in corners])[:, ::-1]        # array order
    lo = np.maximum(np.floor(index.min(axis=0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 2, shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _bounding_box(mask: np.ndarray, pad) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) array-order corners of `mask`'s bounding box, padded by `pad` voxels (one number or
    one per axis) and kept inside the array."""
    where = np.argwhere(mask)
    lo = np.maximum(where.min(axis=0) - pad, 0)
    hi = np.minimum(where.max(axis=0) + pad + 1, mask.shape)
    return lo, hi
