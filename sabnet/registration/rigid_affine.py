"""Rigid-then-affine registration of two MRI sequences of one exam, with SimpleITK.

`register(fixed, moving)` returns the transform that maps fixed-image world points (LPS, mm)
to moving-image world points, the direction `sitk.Resample(moving, fixed, transform)` needs.

How (each step a documented ITK facility, configured here):
- intensity bias: both images are divided by their N4 bias field first (`flatten_bias`: estimated
  inside the body on the image binned to about `BIAS_SPACING_MM` voxels). MRI intensity drifts
  smoothly across the field of view (coil sensitivity), differently in the two scans, and mutual
  information then prefers a pose where the drifts match over the one where the anatomy does. On
  a shoulder PD->STIR phantom pair (2.6 mm coronal slices) the metric on all body voxels was
  0.009 better at a pose 1.2 degrees and 0.9 mm off the true motion (bone error 0.92 mm, Dice
  0.923 against 0.971 for the true motion); it was a wrong optimum of the metric, not of the
  optimiser: restarting from body centres, 16-64 bins, 0-2 mm smoothing, or the body mask
  without margin all kept it better than the truth. After N4 the truth is better by 0.045 and
  the registration lands 0.09 mm from it. N4 on 8 mm voxels did as well and cost 1 s more;
- metric: Mattes mutual information (`N_HISTOGRAM_BINS` bins), which needs no intensity
  relation between the sequences, evaluated on a random sample of voxels inside the fixed
  image's body (`body_mask`, dilated by `MASK_MARGIN_MM`); about `N_SAMPLES` per level;
- rigid (Euler3D) on a 3-level pyramid (shrink 4, 2, 1; Gaussian smoothing 2, 1, 0 mm), started
  from the scanner coordinates (sequences of one exam share them) rotating about the centre of
  the fixed body, or (`start="centres"`) from matched body centres, for headers whose origins
  disagree;
- affine, started from the rigid result, on 2 levels (shrink 2, 1; smoothing 1, 0 mm), for what
  differs beyond a rigid motion (gradient calibration, a few % of scale). It is kept only when it
  improves the metric by at least `AFFINE_MIN_GAIN` (relative) on all voxels of the body, not just
  on the sampled ones, and stays a plausible body (no mirroring, scale within
  `AFFINE_SCALE_RANGE`). On phantoms whose true motion is rigid, always keeping it added
  0.05-0.15 mm of error (its 6 extra parameters fit sampling noise); with a 4 % scale between the
  scans it is kept and takes the error from 1.7-2.5 mm (rigid) to 0.2-0.6 mm. Its step shrinks
  more slowly on turns than the rigid one's (`AFFINE_RELAXATION`): on bias-flattened images, one
  level with the rigid setting stopped after about 20 steps, 1.5-2.5 % short of a 4 % scale along
  a knee's length; one level at 0.7, 0.6-1.5 % short; both changes, within 0.4 %;
- regular-step gradient descent, parameter scales from physical shift (steps in mm).
Accuracy on 20 phantom pairs of 128x128x30 voxels (5 locations, T1/T2/PD/STIR/GRE, 2.5-4 mm slices,
up to 5 degrees and 8 mm of motion): mean error at the bones 0.03-0.35 mm (mean 0.15; without the
bias step 0.04-1.17, mean 0.35), label Dice within 0.004 of the true motion's on every pair (was up
to 0.048 short); 5-12 s per pair on two busy cores, 1.3x the time without the bias step and with
the one-level affine.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from sabnet.errors import SabnetError

N_HISTOGRAM_BINS = 32
N_SAMPLES = 20_000            # metric samples per pyramid level (fewer when the body is smaller)
MASK_MARGIN_MM = 5.0
AIR_FRACTION = 0.1
BODY_SMOOTH_MM = 2.0
RIGID_SHRINK = (4, 2, 1)
RIGID_SIGMAS_MM = (2.0, 1.0, 0.0)
RIGID_STEP_MM = 2.0
AFFINE_STEP_MM = 0.5
MIN_STEP_MM = 1e-3
MAX_ITERATIONS = 100          # per rigid level; good pairs converge in 15-100, wrong ones would wander on
AFFINE_MAX_ITERATIONS = 200   # per affine level; a few % of scale takes about 100 steps of 0.5 mm
AFFINE_SCALE_RANGE = (0.8, 1.25)
AFFINE_SHRINK = (2, 1)
AFFINE_SIGMAS_MM = (1.0, 0.0)
RELAXATION = 0.5              # the step shrinks by this factor each time the gradient turns back
AFFINE_RELAXATION = 0.7       # (0.5 stopped the affine 1.5-2.5 % short of a 4 % scale; see the docstring)
AFFINE_MIN_GAIN = 0.005       # the affine must improve the metric on all body voxels by this fraction
BIAS_SPACING_MM = 12.0        # N4 sees the image binned to about this voxel size (the field is smooth)
BIAS_ITERATIONS = (50, 50)    # N4 iterations per B-spline fitting level (4, then 5 control points per axis)


@dataclass
class Registration:
    """The result of `register`.

    transform: fixed world point -> moving world point (an AffineTransform; rigid when the
        affine stage was not kept).
    stage: "rigid" or "affine", whichever was kept.
    start: "scanner" (identity start) or "centres" (body centres matched).
    metric: Mattes mutual information on all voxels of the fixed body, between the bias-flattened
        images (negative; lower is better).
    """

    transform: sitk.AffineTransform
    stage: str
    start: str
    metric: float


def body_mask(image: sitk.Image) -> sitk.Image:
    """The body (what is not air): voxels brighter than `AIR_FRACTION` of the image's 99th
    percentile after `BODY_SMOOTH_MM` Gaussian smoothing, enclosed holes filled.

    MRI air is the noise floor (a few % of the brightest tissue), every tissue but cortex, tendon
    and suppressed fat lies well above 10 %, and a field of view that lies inside the body (spine,
    hip) comes out whole. Returns a uint8 mask on the image's grid; raises SabnetError when the
    image is constant.
    """
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), BODY_SMOOTH_MM)
    values = sitk.GetArrayViewFromImage(smooth)
    top = float(np.percentile(values, 99))
    if not top > float(values.min()):
        raise SabnetError("image is constant (no body to register); check the file")
    body = sitk.BinaryThreshold(smooth, AIR_FRACTION * top, 1e38, 1, 0)
    return sitk.Cast(sitk.BinaryFillhole(body), sitk.sitkUInt8)


def dilate_mm(mask: sitk.Image, radius_mm: float) -> sitk.Image:
    """Binary dilation by about `radius_mm` along each axis (at least one voxel)."""
    radius = [max(1, int(round(radius_mm / s))) for s in mask.GetSpacing()]
    return sitk.BinaryDilate(mask, radius)


def flatten_bias(image: sitk.Image, body: sitk.Image) -> sitk.Image:
    """`image` divided by its N4 bias field (float32, same grid), the field estimated from the
    voxels of `body` (a uint8 mask on the image's grid) on the image binned to about
    `BIAS_SPACING_MM`, then evaluated on the full grid. About 0.3-0.6 s for a 128x128x30 image;
    the image unchanged when the binned body is empty."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    factors = [max(1, int(round(BIAS_SPACING_MM / s))) for s in image.GetSpacing()]
    binned = sitk.BinShrink(image, factors)
    share = sitk.BinShrink(sitk.Cast(body, sitk.sitkFloat32), factors)
    mask = sitk.Cast((share >= 0.5) & (binned > 0), sitk.sitkUInt8)   # N4 takes logarithms
    if not np.any(sitk.GetArrayViewFromImage(mask)):
        return image   # a body smaller than one binned voxel: nothing to estimate a field from
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(BIAS_ITERATIONS))
    n4.Execute(binned, mask)
    return sitk.Cast(image / sitk.Exp(n4.GetLogBiasFieldAsImage(image)), sitk.sitkFloat32)


def mask_centre_mm(mask: sitk.Image) -> np.ndarray:
    """World position (LPS, mm) of the centre of a non-empty binary mask."""
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(mask)
    return np.asarray(shape.GetCentroid(1))


def register(fixed: sitk.Image, moving: sitk.Image, affine: bool = True, start: str = "scanner",
             seed: int = 1, flattened: tuple[sitk.Image, sitk.Image] | None = None) -> Registration:
    """Register `moving` to `fixed` (both 3D scalar images); see the module docstring.

    start: "scanner" starts from the identity in world coordinates (sequences of one exam);
        "centres" from the translation that matches the centres of the two bodies (headers whose
        origins disagree). `seed` fixes the random metric samples, so a run is repeatable.
    flattened: (fixed, moving) already divided by their bias fields (`flatten_bias` inside their
        `body_mask`), when the caller has them: N4 is then not run again.
    """
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    if start not in ("scanner", "centres"):
        raise ValueError(f"start must be 'scanner' or 'centres', not {start!r}")
    fixed_body, moving_body = body_mask(fixed), body_mask(moving)
    metric_mask = dilate_mm(fixed_body, MASK_MARGIN_MM)
    n_mask = int(np.count_nonzero(sitk.GetArrayViewFromImage(metric_mask)))
    centre = mask_centre_mm(fixed_body)
    offset_mm = mask_centre_mm(moving_body) - centre if start == "centres" else np.zeros(3)
    if flattened is None:
        fixed, moving = flatten_bias(fixed, fixed_body), flatten_bias(moving, moving_body)
    else:
        fixed, moving = (sitk.Cast(image, sitk.sitkFloat32) for image in flattened)

    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(centre.tolist())
    rigid.SetTranslation(offset_mm.tolist())
    fractions = [_fraction(N_SAMPLES, n_mask / s ** 3) for s in RIGID_SHRINK]
    method = _method(metric_mask, RIGID_SHRINK, RIGID_SIGMAS_MM, fractions, RIGID_STEP_MM, seed)
    method.SetInitialTransform(rigid, inPlace=True)
    _execute(method, fixed, moving)
    as_affine = _affine_from_rigid(rigid)
    best = Registration(as_affine, "rigid", start, _check_metric(fixed, moving, metric_mask, as_affine))
    if not affine:
        return best

    candidate = sitk.AffineTransform(best.transform)
    fractions = [_fraction(N_SAMPLES, n_mask / s ** 3) for s in AFFINE_SHRINK]
    method = _method(metric_mask, AFFINE_SHRINK, AFFINE_SIGMAS_MM, fractions, AFFINE_STEP_MM, seed,
                     AFFINE_MAX_ITERATIONS, AFFINE_RELAXATION)
    method.SetInitialTransform(candidate, inPlace=True)
    _execute(method, fixed, moving)
    metric = _check_metric(fixed, moving, metric_mask, candidate)
    if metric < best.metric * (1 + AFFINE_MIN_GAIN) and _plausible(candidate):
        return Registration(candidate, "affine", best.start, metric)
    return best


def _fraction(n_samples: int, n_voxels: float) -> float:
    return float(min(1.0, n_samples / max(n_voxels, 1.0)))


def _method(mask: sitk.Image, shrink: tuple[int, ...], sigmas_mm: tuple[float, ...], fractions: list[float],
            step_mm: float, seed: int, max_iterations: int = MAX_ITERATIONS,
            relaxation: float = RELAXATION) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=N_HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(fractions, seed)
    method.SetMetricFixedMask(mask)
    # image gradients by central differences where needed, not from gradient-filtered images: the
    # filtered ones disagree with the interpolated values across thick slices and stopped the
    # optimiser 1-1.5 mm short of the optimum on 4 mm sagittal slices (0.3 mm without)
    method.MetricUseFixedImageGradientFilterOff()
    method.MetricUseMovingImageGradientFilterOff()
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=step_mm, minStep=MIN_STEP_MM,
                                                    numberOfIterations=max_iterations, relaxationFactor=relaxation,
                                                    gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel(list(sigmas_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _execute(method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image) -> None:
    try:
        method.Execute(fixed, moving)
    except RuntimeError as e:
        if "do not sufficiently overlap" in str(e) or "outside moving image buffer" in str(e):
            raise SabnetError("the two images do not overlap in the world (registration lost them); check that "
                              "they show the same body region, and their origins and orientations") from None
        raise


def _check_metric(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image, transform: sitk.Transform) -> float:
    """Mattes MI at `transform` on every voxel of `mask` (not only the sampled ones)."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=N_HISTOGRAM_BINS)
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform)
    try:
        return float(method.MetricEvaluate(fixed, moving))
    except RuntimeError:
        return 0.0  # no overlap: the worst value Mattes MI takes


def _affine_from_rigid(rigid: sitk.Euler3DTransform) -> sitk.AffineTransform:
    out = sitk.AffineTransform(3)
    out.SetCenter(rigid.GetCenter())
    out.SetMatrix(rigid.GetMatrix())
    out.SetTranslation(rigid.GetTranslation())
    return out


def _plausible(transform: sitk.AffineTransform) -> bool:
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
    scales = np.linalg.svd(matrix, compute_uv=False)
    lo, hi = AFFINE_SCALE_RANGE
    return bool(np.linalg.det(matrix) > 0 and scales.min() >= lo and scales.max() <= hi)
