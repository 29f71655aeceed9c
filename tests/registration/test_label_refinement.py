"""Refining carried labels on the fixed image: thick-slice errors at bone edges are corrected, and
nothing changes where the image gives no evidence."""
import numpy as np
import SimpleITK as sitk

from sabnet.io.geometry import Geometry
from sabnet.registration.label_refinement import refine_labels
from sabnet.registration.label_carrying import (carried_levels, carried_shares, labels_from_levels, labels_from_shares,
                                                 level_prior)
from sabnet.registration.label_transfer import dice_per_label

IDENTITY = sitk.Transform(3, sitk.sitkIdentity)
# Two bones in soft tissue (mm, world x/y/z): a long one (1) and a small round one (2) 4 mm beside it.
BONES = {1: ((0.0, -6.0, 0.0), (9.0, 7.0, 24.0)), 2: ((0.0, 11.0, 0.0), (5.0, 5.0, 6.0))}
CORTEX_MM = 1.5
SIGNAL = {"outside": 0.40, "cortex": 0.03, "marrow": 0.90}     # T1-like: muscle, cortex, fatty marrow


def _grid(size, spacing_mm) -> sitk.Image:
    """An empty image of `size` (x, y, z) voxels of `spacing_mm`, centred on the world origin."""
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(list(spacing_mm))
    image.SetOrigin([-(n - 1) * s / 2 for n, s in zip(size, spacing_mm)])
    return image


def _depth_mm(like: sitk.Image, offset_mm=(0.0, 0.0, 0.0)) -> dict:
    """Per bone, how deep (mm, > 0 inside) each voxel centre (+ offset) lies, array order."""
    geometry = Geometry.of(like)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), -1).reshape(-1, 3)
    world = geometry.index_to_world(index) + np.asarray(offset_mm)
    out = {}
    for value, (centre, radii) in BONES.items():
        scaled = np.linalg.norm((world - centre) / radii, axis=1)     # ~ distance in units of the radius
        out[value] = ((1 - scaled) * min(radii)).reshape(geometry.shape)
    return out


def _labels(like: sitk.Image) -> np.ndarray:
    labels = np.zeros(Geometry.of(like).shape, np.uint8)
    for value, depth in _depth_mm(like).items():
        labels[depth > 0] = value
    return labels


def _fixed_image(like: sitk.Image, noise: float = 0.02, contrast: bool = True) -> np.ndarray:
    """T1-like image with partial volume across its 3 mm slices (3 samples each), a smooth bias and noise."""
    z_step = like.GetSpacing()[2]
    signal = np.zeros(Geometry.of(like).shape, np.float32)
    for dz in (-z_step / 3, 0.0, z_step / 3):
        sample = np.full(signal.shape, SIGNAL["outside"], np.float32)
        for depth in _depth_mm(like, (0.0, 0.0, dz)).values():
            sample[depth > 0] = SIGNAL["cortex"] if contrast else SIGNAL["outside"]
            sample[depth > CORTEX_MM] = SIGNAL["marrow"] if contrast else SIGNAL["outside"]
        signal += sample / 3
    rng = np.random.default_rng(0)
    bias = np.exp(0.2 * np.linspace(-1, 1, signal.shape[2]))[None, None, :]
    return (signal * bias + rng.normal(0, noise, signal.shape)).astype(np.float32)


def _carried_from_thick_slices(fixed: sitk.Image):
    """Labels drawn on a scan with 4 mm slices along x, carried onto `fixed` (1 x 1 x 3 mm) with
    the true (identity) motion as `transfer_labels` does: (carried labels, their prior, linear
    shares). Bone edges facing x are unsure by up to 2 mm."""
    moving = _grid((12, 64, 22), (4.0, 1.0, 3.0))
    labels = sitk.GetImageFromArray(_labels(moving))
    labels.CopyInformation(moving)
    shares = carried_shares(labels, fixed, IDENTITY)
    levels = carried_levels(labels, fixed, IDENTITY, shares)
    return labels_from_levels(levels, Geometry.of(fixed).shape, np.uint8), level_prior(levels), shares


def test_refinement_corrects_thick_slice_errors_toward_the_truth_without_growing_the_bones():
    fixed = _grid((48, 64, 22), (1.0, 1.0, 3.0))
    truth, image = _labels(fixed), _fixed_image(fixed)
    carried, prior, shares = _carried_from_thick_slices(fixed)
    refined = refine_labels(image, carried, prior, Geometry.of(fixed).axis_spacing_mm)

    everywhere = np.ones(truth.shape, bool)
    before, after = dice_per_label(truth, carried, everywhere), dice_per_label(truth, refined, everywhere)
    print("Dice before", {k: round(v, 3) for k, v in before.items()},
          "after", {k: round(v, 3) for k, v in after.items()})
    assert before["all"] < 0.96 and after["all"] > before["all"] + 0.02
    # neither bone grows or shrinks (one voxel more all round would add a third to the small one, which
    # has 216 voxels: its caps, cut by 3 mm slices, darken voxels whose centres lie just outside)
    assert 0.97 < np.count_nonzero(refined) / np.count_nonzero(truth) < 1.03
    for bone in (1, 2):
        assert after[bone] > before[bone]
        assert 0.92 < np.count_nonzero(refined == bone) / np.count_nonzero(truth == bone) < 1.1
    # only voxels where carrying was unsure change, and a bone never takes another bone's voxel
    changed = refined != carried
    unsure = np.zeros(truth.shape, bool)
    for value, (box, share) in shares.items():
        if value:
            unsure[box] |= (share > 0) & (share < 1)
    assert changed.any() and not (changed & ~unsure).any()
    assert not ((carried > 0) & (refined > 0) & changed).any()
    assert refined.dtype == carried.dtype


def test_refinement_keeps_the_carried_labels_where_the_image_shows_no_edge():
    fixed = _grid((48, 64, 22), (1.0, 1.0, 3.0))
    carried, prior, _ = _carried_from_thick_slices(fixed)
    flat = _fixed_image(fixed, contrast=False)          # soft tissue only: noise and bias, no bone to see
    refined = refine_labels(flat, carried, prior, Geometry.of(fixed).axis_spacing_mm)
    assert np.array_equal(refined, carried)


def test_labels_carried_without_doubt_are_left_alone():
    fixed = _grid((48, 64, 22), (1.0, 1.0, 3.0))
    truth = _labels(fixed)
    labels = sitk.GetImageFromArray(truth)
    labels.CopyInformation(fixed)
    shares = carried_shares(labels, fixed, IDENTITY)                # same grid: every share is 0 or 1
    image = _fixed_image(fixed, noise=0.1)                           # even a noisy image changes nothing
    assert np.array_equal(refine_labels(image, labels_from_shares(shares, np.uint8), shares, (3.0, 1.0, 1.0)), truth)


def test_a_label_outside_the_fixed_field_of_view_takes_no_memory_and_is_left_out():
    moving = _grid((40, 40, 40), (2.0, 2.0, 2.0))          # +-39 mm
    fixed = _grid((12, 12, 12), (1.0, 1.0, 1.0))           # +-5.5 mm
    labels = np.zeros(Geometry.of(moving).shape, np.uint8)
    labels[18:22, 18:22, 18:22] = 1                        # around the centre: inside the fixed grid
    labels[34:38, 34:38, 34:38] = 2                        # about 30 mm off: outside it
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(moving)
    shares = carried_shares(image, fixed, IDENTITY)
    assert shares[2][1].size == 0 and shares[1][1].size > 0
    carried = labels_from_shares(shares, np.uint8)
    assert set(np.unique(carried)) == {0, 1}
    refined = refine_labels(np.zeros(carried.shape, np.float32), carried, shares, (1.0, 1.0, 1.0))
    assert np.array_equal(refined, carried)
