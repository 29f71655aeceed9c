"""Metrics on hand-made masks whose Dice, IoU and surface distances are known by construction."""
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from sabnet.evaluation.metrics import as_label_map, label_metrics, missing_distance_mm, surface
from sabnet.io.geometry import Geometry


def grid(shape, axis_spacing_mm):
    """An axis-aligned geometry for an array of `shape` with the given spacing per array axis."""
    return Geometry.from_axes(shape, axis_spacing_mm, np.eye(3), (0.0, 0.0, 0.0))


def test_cubes_shifted_along_the_slice_axis():
    # Two 10x10x10 cubes, the prediction shifted by 3 slices of 3 mm (9 mm); in-plane 1.0 x 0.5 mm.
    spacing = (3.0, 1.0, 0.5)
    reference = np.zeros((20, 14, 14), np.uint8)
    prediction = reference.copy()
    reference[2:12, 2:12, 2:12] = 1
    prediction[5:15, 2:12, 2:12] = 1

    m = label_metrics(reference, prediction, grid(reference.shape, spacing), [1])[1]

    # Counting: 7 of 10 slices overlap -> 700 shared voxels of 1000 each.
    assert m["dice"] == pytest.approx(2 * 700 / 2000)
    assert m["iou"] == pytest.approx(700 / 1300)
    assert (m["n_ref_voxels"], m["n_pred_voxels"]) == (1000, 1000)
    # Surface of the reference cube: 1000 - 8**3 = 488 voxels. Their distances to the prediction's
    # surface: bottom face (100) 9 mm, side ring of the next two slices (36 each) 6 and 3 mm, side
    # rings of slices 3..9 (7 x 36) and the top face's rim (36) lie on the prediction's sides: 0 mm;
    # the top face's 8x8 inside lies inside the prediction, at the in-plane distance to its sides.
    # The shift is symmetric, so P->R distances are the same and ASD is the mean over the 488.
    k = np.arange(1, 9)
    to_side = np.minimum.outer(np.minimum(k, 9 - k) * 1.0, np.minimum(k, 9 - k) * 0.5)
    assert m["asd_mm"] == pytest.approx((100 * 9 + 36 * 6 + 36 * 3 + to_side.sum()) / 488)
    # The 100 largest of 488 distances are 9 mm, so the 95th percentile is 9 mm.
    assert m["hd95_mm"] == pytest.approx(9.0)


def test_single_voxels_are_apart_by_the_anisotropic_euclidean_distance():
    spacing = (2.5, 0.8, 1.2)
    reference = np.zeros((8, 8, 8), np.uint8)
    prediction = reference.copy()
    reference[2, 3, 4] = 1
    prediction[4, 6, 5] = 1
    expected = math.sqrt((2 * 2.5) ** 2 + (3 * 0.8) ** 2 + (1 * 1.2) ** 2)

    m = label_metrics(reference, prediction, grid(reference.shape, spacing), [1])[1]

    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert m["hd95_mm"] == pytest.approx(expected)
    assert m["asd_mm"] == pytest.approx(expected)


@pytest.mark.parametrize("spacing, radius_mm, gap_mm", [((1.5, 0.5, 0.5), 10.0, 3.0), ((2.0, 0.6, 0.6), 12.0, 2.0)])
def test_concentric_spheres_are_apart_by_the_radius_difference(spacing, radius_mm, gap_mm):
    shape = [int(2 * (radius_mm + gap_mm + 3) / s) for s in spacing]
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    distance_to_centre_mm = np.sqrt(z ** 2 + y ** 2 + x ** 2)
    reference = (distance_to_centre_mm <= radius_mm).astype(np.uint8)
    prediction = (distance_to_centre_mm <= radius_mm + gap_mm).astype(np.uint8)

    m = label_metrics(reference, prediction, grid(shape, spacing), [1])[1]

    # Voxelised surfaces follow the spheres to a fraction of a voxel.
    assert m["asd_mm"] == pytest.approx(gap_mm, abs=0.4)
    assert m["hd95_mm"] == pytest.approx(gap_mm, abs=0.4)
    assert m["dice"] == pytest.approx(2 * radius_mm ** 3 / (radius_mm ** 3 + (radius_mm + gap_mm) ** 3), abs=0.03)


def brute_force(reference, prediction, spacing):
    """HD95 and ASD from all pairwise distances between surfaces found by scipy's erosion."""
    structure = ndimage.generate_binary_structure(3, 1)
    surfaces = [np.argwhere(m & ~ndimage.binary_erosion(m, structure)) * np.asarray(spacing)
                for m in (reference, prediction)]
    pairwise = cdist(*surfaces)
    d_rp, d_pr = pairwise.min(axis=1), pairwise.min(axis=0)
    hd95 = max(np.percentile(d_rp, 95), np.percentile(d_pr, 95))
    return hd95, np.concatenate([d_rp, d_pr]).mean()


def test_irregular_shapes_agree_with_all_pairwise_distances():
    rng = np.random.default_rng(0)
    spacing = (2.2, 0.7, 0.9)
    for seed in range(3):
        noise = ndimage.gaussian_filter(rng.normal(size=(3, 14, 22, 20)), (0, 2, 2, 2))
        reference = noise[0] > 0.05
        prediction = (noise[1] > 0.05) | (noise[2] > 0.15)
        reference[:, 0, :] = True  # touches the image border: border voxels are surface
        m = label_metrics(reference.astype(np.uint8), prediction.astype(np.uint8),
                          grid(reference.shape, spacing), [1])[1]
        hd95, asd = brute_force(reference, prediction, spacing)
        assert m["hd95_mm"] == pytest.approx(hd95), seed
        assert m["asd_mm"] == pytest.approx(asd), seed


def test_surface_is_the_mask_minus_its_erosion_with_border_voxels_on_it():
    mask = np.zeros((5, 6, 7), bool)
    mask[:, 1:5, 1:6] = True  # spans the whole first axis: first and last slices touch the border
    expected = mask & ~ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1))
    assert np.array_equal(surface(mask), expected)
    assert surface(mask)[0].sum() == 4 * 5  # the whole border slice is surface


def test_empty_masks_follow_the_documented_rules():
    geometry = grid((10, 12, 14), (3.0, 0.5, 0.5))
    diagonal = math.sqrt(30.0 ** 2 + 6.0 ** 2 + 7.0 ** 2)
    assert missing_distance_mm(geometry) == pytest.approx(diagonal)
    reference = np.zeros(geometry.shape, np.uint8)
    prediction = reference.copy()
    reference[2:4, 2:4, 2:4] = 2  # label 2 missed by the prediction
    prediction[5:7, 5:7, 5:7] = 3  # label 3 predicted where the reference has none

    m = label_metrics(reference, prediction, geometry, [1, 2, 3])

    assert all(math.isnan(m[1][k]) for k in ("dice", "iou", "hd95_mm", "asd_mm"))  # absent from both
    assert (m[1]["n_ref_voxels"], m[1]["n_pred_voxels"]) == (0, 0)
    for value, counts in ((2, (8, 0)), (3, (0, 8))):
        assert (m[value]["dice"], m[value]["iou"]) == (0.0, 0.0)
        assert m[value]["hd95_mm"] == m[value]["asd_mm"] == pytest.approx(diagonal)
        assert (m[value]["n_ref_voxels"], m[value]["n_pred_voxels"]) == counts


def test_labels_are_measured_separately():
    geometry = grid((12, 12, 12), (1.0, 1.0, 1.0))
    reference = np.zeros(geometry.shape, np.uint8)
    reference[1:5, 1:5, 1:5] = 1
    reference[6:10, 6:10, 6:10] = 2
    prediction = reference.copy()
    prediction[6:10, 6:10, 6:8] = 1  # half of label 2 predicted as label 1

    m = label_metrics(reference, prediction, geometry, [0, 1, 2])

    assert set(m) == {1, 2}  # background is not a label to evaluate
    assert m[1]["dice"] == pytest.approx(2 * 64 / (64 + 96))
    assert m[2]["dice"] == pytest.approx(2 * 32 / (64 + 32))
    assert m[2]["iou"] == pytest.approx(32 / 64)
    assert m[2]["hd95_mm"] == pytest.approx(2.0)  # the far face moved by 2 voxels; the rest stays put


def test_label_maps_may_be_float_files_with_whole_values_only():
    assert as_label_map(np.array([[[0.0, 2.0]]], np.float32)).dtype.kind == "i"
    assert as_label_map(np.array([[[True]]])).dtype == np.uint8
    with pytest.raises(ValueError, match="fractional"):
        as_label_map(np.array([[[0.5]]]), "pred.nii.gz")
    with pytest.raises(ValueError, match="negative"):
        as_label_map(np.array([[[-1]]], np.int16))
