"""Carrying labels drawn on thick slices onto another grid: shape-based interpolation between the
slices follows round bones better than linear shares, keeps their volume, and leaves the voxels
that every moving voxel around agrees on as they are."""
import numpy as np
import SimpleITK as sitk

from sabnet.io.geometry import Geometry
from sabnet.registration.label_carrying import (carried_levels, carried_shares, carry_labels, labels_from_levels,
                                                 labels_from_shares, level_prior)
from sabnet.registration.label_transfer import dice_per_label

# Three bones (mm, world x/y/z): a finger-like tube along y (1), a small round one (2), a flat one (3).
TUBE = ((-8.0, -20.0, 0.0), (-8.0, 20.0, 0.0), 3.5)           # end, end, radius
BALL = ((9.0, 4.0, 1.0), (4.0, 5.0, 4.5))                     # centre, semi-axes
PLATE = ((2.0, -16.0, -1.0), (7.0, 4.0, 3.0))


def _grid(size, spacing_mm, degrees=0.0, shift_mm=(0.0, 0.0, 0.0)) -> sitk.Image:
    """An empty image of `size` (x, y, z) voxels of `spacing_mm` centred near the world origin,
    turned by `degrees` about the world y axis and shifted by `shift_mm`."""
    image = sitk.Image(list(size), sitk.sitkUInt8)
    image.SetSpacing(list(spacing_mm))
    a = np.radians(degrees)
    direction = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    image.SetDirection(direction.ravel().tolist())
    half = direction @ ((np.asarray(size) - 1) / 2 * np.asarray(spacing_mm))
    image.SetOrigin((np.asarray(shift_mm) - half).tolist())
    return image


def _truth(like: sitk.Image) -> np.ndarray:
    """The bones' labels at `like`'s voxel centres (array order)."""
    geometry = Geometry.of(like)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), -1).reshape(-1, 3)
    p = geometry.index_to_world(index)
    labels = np.zeros(len(p), np.uint8)
    a, b, r = (np.asarray(v) for v in TUBE)
    t = np.clip((p - a) @ (b - a) / ((b - a) @ (b - a)), 0, 1)
    labels[np.linalg.norm(p - (a + t[:, None] * (b - a)), axis=1) < r] = 1
    for value, (centre, radii) in ((2, BALL), (3, PLATE)):
        labels[np.linalg.norm((p - np.asarray(centre)) / np.asarray(radii), axis=1) < 1] = value
    return labels.reshape(geometry.shape)


def _drawn_on(like: sitk.Image) -> sitk.Image:
    labels = sitk.GetImageFromArray(_truth(like))
    labels.CopyInformation(like)
    return labels


def test_shape_based_carrying_follows_round_bones_between_thick_slices_and_keeps_their_volume():
    fixed = _grid((40, 56, 30), (1.0, 1.0, 1.2), degrees=5.0, shift_mm=(0.3, 0.2, 1.3))
    truth, identity, everywhere = _truth(fixed), sitk.Transform(3, sitk.sitkIdentity), np.ones(_truth(fixed).shape, bool)
    gains = []
    for shift_mm in (0.0, 0.7, 1.3, 2.1):           # where the 4 mm slices fall on the bones
        labels = _drawn_on(_grid((40, 56, 9), (1.0, 1.0, 4.0), shift_mm=(0.0, 0.0, shift_mm)))
        shares = carried_shares(labels, fixed, identity)
        stepped = labels_from_shares(shares, np.uint8)
        levels = carried_levels(labels, fixed, identity, shares)
        carried = labels_from_levels(levels, Geometry.of(fixed).shape, np.uint8)
        assert np.array_equal(carried, carry_labels(labels, fixed, identity)) and carried.dtype == np.uint8
        linear, shaped = dice_per_label(truth, stepped, everywhere), dice_per_label(truth, carried, everywhere)
        gains.append([shaped[k] - linear[k] for k in (1, 2, 3, "all")])
        for value, (box, share) in shares.items():
            if value:
                # the volume the moving labels imply (the sum of their linear shares) is kept, bone by bone
                assert abs(np.count_nonzero(carried == value) - share.sum()) <= 0.5
                # voxels whose moving neighbours all agree are carried as they are
                sure = (share <= 1e-5) | (share >= 1 - 1e-5)
                assert np.array_equal(carried[box][sure] == value, stepped[box][sure] == value)
    gains = np.asarray(gains)
    print("Dice gained by shape-based carrying (rows: slice positions; tube, ball, plate, all)", gains.round(3).tolist())
    assert np.all(gains.mean(axis=0) > 0.02)            # every bone, on average over where the slices fall
    assert gains[:, 3].min() > 0.02                     # all bones together, wherever the slices fall


def test_level_prior_is_one_half_on_the_carried_surface_and_sure_far_from_it():
    moving = _grid((40, 56, 9), (1.0, 1.0, 4.0))
    fixed = _grid((40, 56, 30), (1.0, 1.0, 1.2), degrees=5.0)
    identity = sitk.Transform(3, sitk.sitkIdentity)
    shares = carried_shares(_drawn_on(moving), fixed, identity)
    levels = carried_levels(_drawn_on(moving), fixed, identity, shares)
    prior = level_prior(levels)
    for value, (box, level) in levels.items():
        p, share = prior[value][1], shares[value][1]
        # sure where every moving voxel around agrees, decided by the level in the gap between
        assert np.all(level[share >= 1 - 1e-5] <= -10) and np.all(level[share <= 1e-5] >= 10)
        gap = (share > 1e-5) & (share < 1 - 1e-5)
        assert np.all(np.abs(level[gap]) < 10) and (level[gap] < 0).any() and (level[gap] > 0).any()
        assert prior[value][0] == box and p.shape == level.shape
        assert np.all((p > 0.5) == (level < 0)) and np.all(np.diff(p.ravel()[np.argsort(level.ravel())]) <= 1e-7)
        assert np.all(p[level <= -10] > 0.999) and np.all(p[level >= 10] < 0.001)


def test_a_plate_caught_by_one_thick_slice_keeps_its_volume_on_the_nearest_slices():
    """A plate thinner than the slices, which one 4 mm slice of the moving labels caught, lands on a
    fixed grid shifted by 1.5 mm mostly on the nearest slice and keeps its volume; shape-based
    interpolation reads a bone seen on one slice as round (thinner at its rim), so part of its rim
    goes to the next slice's middle. No bone the moving labels do not hold appears."""
    moving = _grid((40, 56, 9), (1.0, 1.0, 4.0))
    labels = np.zeros(Geometry.of(moving).shape, np.uint8)
    labels[4, 10:40, 10:30] = 5
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(moving)
    fixed = _grid((40, 56, 9), (1.0, 1.0, 4.0), shift_mm=(0.0, 0.0, 1.5))    # fixed slice 4 is 1.5 mm off
    carried = carry_labels(image, fixed, sitk.Transform(3, sitk.sitkIdentity))
    assert set(np.unique(carried)) == {0, 5}
    per_slice = np.count_nonzero(carried, axis=(1, 2))
    assert per_slice.sum() == np.count_nonzero(labels) and per_slice[4] > 0.8 * per_slice.sum()
    assert per_slice[3] + per_slice[4] == per_slice.sum()


def test_bones_that_touch_keep_their_volumes_and_a_tie_takes_exactly_the_volume():
    """Two blocks side by side carried onto a grid offset by a fraction of a voxel: the voxels both
    want go to the larger share and each keeps its volume. A plate caught by one 4 mm slice and
    carried half a slice away (every candidate voxel tied) still gets exactly its volume."""
    moving = _grid((40, 56, 9), (1.0, 1.0, 4.0))
    labels = np.zeros(Geometry.of(moving).shape, np.uint8)
    labels[3:6, 10:20, 5:25], labels[3:6, 10:20, 25:35] = 1, 2
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(moving)
    fixed = _grid((40, 56, 9), (1.0, 1.0, 4.0), shift_mm=(0.3, 0.0, -1.3))
    identity = sitk.Transform(3, sitk.sitkIdentity)
    shares = carried_shares(image, fixed, identity)
    carried = carry_labels(image, fixed, identity)
    for value in (1, 2):
        assert abs(np.count_nonzero(carried == value) - shares[value][1].sum()) <= 0.5

    plate = np.zeros(labels.shape, np.uint8)
    plate[4, 10:40, 10:30] = 5
    image = sitk.GetImageFromArray(plate)
    image.CopyInformation(moving)
    carried = carry_labels(image, _grid((40, 56, 9), (1.0, 1.0, 4.0), shift_mm=(0.0, 0.0, 2.0)), identity)
    assert np.count_nonzero(carried == 5) == np.count_nonzero(plate)


def test_a_shift_of_a_fraction_of_a_voxel_in_plane_changes_almost_nothing():
    """Carrying onto the same grid moved by 0.1 or 0.3 of an in-plane voxel: linear shares keep every
    label (each voxel stays nearest its own centre); the shape-based levels keep the labels at the
    moving voxel centres too: nothing changes at 0.1, and at 0.3 only a few surface voxels where
    the smoothed surface rounds a corner of these 1-2 slice thin bones."""
    moving = _grid((40, 56, 9), (1.0, 1.0, 4.0))
    labels = _drawn_on(moving)
    truth = sitk.GetArrayFromImage(labels)
    surface = np.zeros(truth.shape, bool)
    for axis in range(3):
        for step in (1, -1):
            surface |= np.roll(truth, step, axis=axis) != truth
    carried = carry_labels(labels, moving, sitk.TranslationTransform(3, (0.1, 0.0, 0.0)))
    assert np.array_equal(carried, truth)
    changed = carry_labels(labels, moving, sitk.TranslationTransform(3, (0.3, 0.0, 0.0))) != truth
    assert np.count_nonzero(changed) <= 0.02 * np.count_nonzero(truth) and not (changed & ~surface).any()


def test_a_label_map_that_is_one_bone_everywhere_is_carried_as_it_is():
    """Every moving voxel is the bone: nothing to interpolate, the bone covers what the moving scan covers."""
    moving = _grid((20, 24, 9), (1.0, 1.0, 4.0))
    image = sitk.GetImageFromArray(np.full(Geometry.of(moving).shape, 3, np.uint8))
    image.CopyInformation(moving)
    fixed = _grid((20, 24, 12), (1.0, 1.0, 4.0), shift_mm=(0.4, 0.0, 9.5))         # 2-3 slices beyond it
    identity = sitk.Transform(3, sitk.sitkIdentity)
    carried = carry_labels(image, fixed, identity)
    stepped = labels_from_shares(carried_shares(image, fixed, identity), np.uint8)
    assert np.array_equal(carried, stepped) and set(np.unique(carried)) == {0, 3}
