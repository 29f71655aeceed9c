"""Slice planning of phantoms: planes a planner can detect, anisotropic spacing, stored axis order."""
import json

import numpy as np
import pytest

from sabnet.io.geometry import acquisition_plane, plane_of_normal
from sabnet.io.image_io import read_geometry
from sabnet.phantoms.acquisition import OBLIQUE_TILT_DEG, PLANES, plane_vectors
from sabnet.phantoms.cohort import make_phantom, make_phantom_dataset

TINY = dict(in_plane_size=24, n_slices=6, in_plane_spacing_mm=(3.0, 3.0), slice_spacing_mm=(6.0, 6.0))


@pytest.mark.parametrize("plane", PLANES)
def test_planner_finds_the_plane_from_the_geometry(plane):
    slice_axes = set()
    for seed in range(6):
        phantom = make_phantom("knee", "T1", seed, plane=plane, permute_axes=True, **TINY)
        assert acquisition_plane(phantom.geometry) == (phantom.slice_axis, plane)
        slice_axes.add(phantom.slice_axis)
    assert len(slice_axes) > 1      # the slice axis is not always array axis 0


def test_oblique_planes_tilt_15_to_35_degrees_off_the_nearest_cardinal_axis():
    rng = np.random.default_rng(0)
    for _ in range(200):
        normal = plane_vectors("oblique", rng)[2]
        tilt = np.degrees(np.arccos(np.abs(normal).max()))
        assert OBLIQUE_TILT_DEG[0] - 1e-6 <= tilt <= OBLIQUE_TILT_DEG[1] + 1e-6
        assert plane_of_normal(normal) == "oblique"
        vectors = plane_vectors("axial", rng)
        assert np.allclose(vectors @ vectors.T, np.eye(3)) and plane_of_normal(vectors[2]) == "axial"


def test_anisotropic_spacing_is_what_was_asked():
    phantom = make_phantom("lumbar_spine", "T2", 0, plane="sagittal", in_plane_spacing_mm=(0.4, 0.4),
                           slice_spacing_mm=(3.5, 3.5), in_plane_size=32, n_slices=5)
    spacing = np.asarray(phantom.geometry.axis_spacing_mm)
    assert spacing[phantom.slice_axis] == pytest.approx(3.5)
    assert np.delete(spacing, phantom.slice_axis) == pytest.approx([0.4, 0.4])
    assert phantom.image.shape[phantom.slice_axis] == 5
    assert all(27 <= n <= 36 for a, n in enumerate(phantom.image.shape) if a != phantom.slice_axis)


def test_written_geometry_matches_the_truth_and_ranges(tmp_path):
    dataset = make_phantom_dataset(tmp_path, ["knee", "hand", "shoulder"], ["PD"], n_cases=9, seed=4, in_plane_size=24,
                                   n_slices=6, in_plane_spacing_mm=(2.0, 3.0), slice_spacing_mm=(4.0, 6.0))
    truth = json.loads((dataset / "phantom_truth.json").read_text())["cases"]
    for case_id, entry in truth.items():
        geometry = read_geometry(dataset / "imagesTr" / f"{case_id}_0000.nii.gz")   # as a planner sees it
        assert acquisition_plane(geometry) == (entry["slice_axis"], entry["plane"])
        assert list(geometry.axis_spacing_mm) == pytest.approx(entry["axis_spacing_mm"], rel=1e-5)
        assert 2.0 <= entry["in_plane_spacing_mm"] <= 3.0 and 4.0 <= entry["slice_spacing_mm"] <= 6.0
        assert np.allclose(geometry.direction, entry["geometry"]["direction"], atol=1e-5)
    assert len({e["plane"] for e in truth.values()}) > 1


def test_field_of_view_is_centred_on_the_anatomy():
    # in-plane spacing drawn where the range allows a field of view that covers the location
    phantom = make_phantom("lumbar_spine", "T1", 3, plane="sagittal", in_plane_spacing_mm=(0.3, 5.0),
                           in_plane_size=64, n_slices=8)
    fov = np.asarray(phantom.geometry.extent_mm)
    assert np.delete(fov, phantom.slice_axis).max() >= 200          # L1 to the sacrum fits
    assert set(np.unique(phantom.labels)) == {0, 1, 2, 3, 4, 5}
