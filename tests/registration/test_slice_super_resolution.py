"""Super-resolving thick-slice labels along their slice axis with their own image."""
import numpy as np
import pytest
import SimpleITK as sitk

from sabnet.io.geometry import Geometry
from sabnet.phantoms.cohort import make_phantom
from sabnet.registration.label_carrying import carry_labels
from sabnet.registration.rigid_affine import body_mask, flatten_bias
from sabnet.registration.slice_super_resolution import fine_factor, super_resolve_labels


def _scan(location, sequence, seed, plane, slice_mm=3.6):
    """A phantom on 1.2 mm pixels and `slice_mm` slices, with its labels on 3 sub-slices per slice."""
    phantom = make_phantom(location, sequence, seed, plane=plane, in_plane_spacing_mm=(1.2, 1.2),
                           slice_spacing_mm=(slice_mm, slice_mm), in_plane_size=112, sub_slices=3)
    image = phantom.geometry.apply_to(sitk.GetImageFromArray(phantom.image))
    labels = phantom.geometry.apply_to(sitk.GetImageFromArray(phantom.labels))
    return phantom, flatten_bias(image, body_mask(image)), labels


def _wrong_voxels(labels: np.ndarray, truth: np.ndarray) -> int:
    return int(np.count_nonzero((labels > 0) != (truth > 0)))


@pytest.mark.parametrize("location, sequence, seed, plane, at_most", [
    ("hand", "T1", 3, "sagittal", 0.7),      # fingers across 3.6 mm slices
    ("knee", "PD", 2, "sagittal", 0.55),
    ("hand", "STIR", 4, "sagittal", 0.85),   # marrow and fat both dark: the image tells less
])
def test_super_resolved_labels_know_better_than_shape_alone_where_bones_end(location, sequence, seed, plane,
                                                                             at_most):
    phantom, image, labels = _scan(location, sequence, seed, plane)
    fine = super_resolve_labels(labels, image)
    factor = fine_factor(3)                                  # 3.6 mm slices of 1.2 mm pixels
    assert Geometry.of(fine).matches(phantom.geometry.subdivided(phantom.slice_axis, factor))
    array = sitk.GetArrayFromImage(fine)
    assert array.dtype == phantom.labels.dtype and set(np.unique(array)) <= set(np.unique(phantom.labels))
    # every original slice centre keeps its label
    centres = np.take(array, np.arange(factor // 2, array.shape[phantom.slice_axis], factor), axis=phantom.slice_axis)
    assert np.array_equal(centres, phantom.labels)
    # between the centres (3 sub-slices per slice, where the truth is known): fewer wrong voxels
    # than the shape-based interpolation of the labels alone
    truth_geometry = phantom.geometry.subdivided(phantom.slice_axis, 3)
    truth_grid = truth_geometry.apply_to(sitk.Image(truth_geometry.size, sitk.sitkUInt8))
    identity = sitk.Transform(3, sitk.sitkIdentity)
    wrong = _wrong_voxels(carry_labels(fine, truth_grid, identity), phantom.fine_labels)
    wrong_by_shape = _wrong_voxels(carry_labels(labels, truth_grid, identity), phantom.fine_labels)
    print(f"{location} {sequence} {plane}: wrong fine voxels {wrong} against {wrong_by_shape} by shape alone")
    assert wrong < at_most * wrong_by_shape


def test_super_resolution_is_deterministic_and_leaves_thin_slices_alone():
    phantom, image, labels = _scan("hand", "T2", 1, "coronal")
    first, second = super_resolve_labels(labels, image), super_resolve_labels(labels, image)
    assert np.array_equal(sitk.GetArrayFromImage(first), sitk.GetArrayFromImage(second))
    # slices as thin as the pixels (1.2 mm): nothing to decide between them
    _, thin_image, thin_labels = _scan("hand", "T2", 1, "coronal", slice_mm=1.2)
    assert super_resolve_labels(thin_labels, thin_image) is None
    empty = sitk.Image(labels.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(labels)
    assert super_resolve_labels(empty, image) is None


def test_subdivided_grid_keeps_the_voxel_centres_and_the_field_of_view():
    geometry = Geometry((20, 30, 10), (1.0, 1.2, 4.0), (5.0, -3.0, 12.0),
                        sitk.VersorTransform((0.3, 0.2, 0.9), 0.5).GetMatrix())
    fine = geometry.subdivided(0, 5)             # array axis 0 = ITK k, the 4 mm axis
    assert fine.shape == (50, 30, 20) and np.allclose(fine.axis_spacing_mm, (0.8, 1.2, 1.0))
    index = np.array([[0, 0, 0], [3, 7, 11], [9, 29, 19]], dtype=float)
    on_fine = index * [5, 1, 1] + [2, 0, 0]
    assert np.allclose(geometry.index_to_world(index), fine.index_to_world(on_fine))
    assert np.allclose(geometry.extent_mm, fine.extent_mm)
    with pytest.raises(ValueError, match="odd factor"):
        geometry.subdivided(0, 2)
