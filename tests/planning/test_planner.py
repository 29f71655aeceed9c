"""Planning: the fingerprint of a cohort and the decisions the plan makes from it."""
import json

import numpy as np
import pytest

from sabnet.dataset.raw_dataset import RawDataset
from sabnet.io.geometry import Geometry
from sabnet.io.image_io import read_geometry, read_image
from sabnet.phantoms.cohort import make_phantom_dataset
from sabnet.planning.fingerprint import extract_fingerprint
from sabnet.planning.planner import MIN_SAM_INPUT_SIZE, choose_input_size, plan_cohort
from sabnet.planning.plans import Plan, load_plan, save_plan
from sabnet.planning.slicing import slicing_for


def small_cohort(tmp_path, name, **kwargs):
    settings = dict(locations=("knee",), sequences=("T1",), n_cases=3, seed=1, in_plane_size=64, n_slices=10)
    settings.update(kwargs)
    return make_phantom_dataset(tmp_path / name, dataset_name=name, **settings)


@pytest.mark.parametrize("plane", ["sagittal", "coronal", "axial", "oblique"])
def test_each_case_is_sliced_in_its_acquisition_plane(tmp_path, plane):
    raw = small_cohort(tmp_path, f"Dataset9{len(plane):02d}_{plane}", planes=(plane,), permute_axes=True,
                       in_plane_spacing_mm=(0.5, 0.5), slice_spacing_mm=(3.5, 3.5))
    fingerprint, errors = extract_fingerprint(RawDataset.load(raw))
    assert errors == []
    plan = plan_cohort(fingerprint)
    for case in fingerprint["cases"]:
        slicing = plan.preprocessing.cases[case["case_id"]]
        # the slice axis is the one whose spacing is 3.5 mm, wherever the array puts it
        assert case["spacing_mm"][slicing.slice_axis] == pytest.approx(3.5, rel=1e-3)
        assert slicing.plane == plane
        assert "coarsest axis" in slicing.reason
    if plane != "oblique":
        assert plan.preprocessing.majority_plane == plane


def test_isotropic_case_follows_majority_plane():
    # a 1 mm isotropic volume: axis 0 runs left-right (sagittal normal), axis 2 head-feet
    g = Geometry.from_axes((40, 200, 180), (1.0, 1.0, 1.0), np.array([[1, 0, 0], [0, 1, 0], [0, 0, -1.0]]), (0, 0, 0))
    assert slicing_for(g, "sagittal").slice_axis == 0
    assert slicing_for(g, "axial").slice_axis == 2
    assert "majority" in slicing_for(g, "coronal").reason


def test_plan_follows_spacing_and_field_of_view(tmp_path):
    fine = small_cohort(tmp_path, "Dataset941_Fine", in_plane_spacing_mm=(0.4, 0.4), in_plane_size=96)
    coarse = small_cohort(tmp_path, "Dataset942_Coarse", in_plane_spacing_mm=(0.8, 0.8), in_plane_size=96)
    wide = small_cohort(tmp_path, "Dataset943_Wide", in_plane_spacing_mm=(0.4, 0.4), in_plane_size=300)
    plans = {name: plan_cohort(extract_fingerprint(RawDataset.load(raw))[0]) for name, raw in
             (("fine", fine), ("coarse", coarse), ("wide", wide))}
    assert plans["fine"].preprocessing.target_spacing_mm == pytest.approx(0.4, rel=1e-3)
    assert plans["coarse"].preprocessing.target_spacing_mm == pytest.approx(0.8, rel=1e-3)
    # a field of view of ~300 px at 0.4 mm needs a larger encoder input than ~96 px
    assert plans["fine"].model["image_size"] == 128
    assert plans["wide"].model["image_size"] == 512
    # a pretrained SAM encoder is never shrunk below a 16 x 16 token grid
    assert choose_input_size(96, MIN_SAM_INPUT_SIZE)[0] == 256
    assert choose_input_size(96)[0] == 128 and choose_input_size(129)[0] == 256
    # the window divides the token grid, and the depth volume grows with the field of view
    for plan in plans.values():
        grid = plan.model["image_size"] // plan.model["patch_size"]
        assert grid % plan.model["window_size"] == 0
        assert set(plan.reasons) >= {"target_spacing_mm", "image_size", "window_size", "batch_size", "depth_volume"}
    assert plans["wide"].preprocessing.depth_volume.spacing_mm[1] > plans["fine"].preprocessing.depth_volume.spacing_mm[1]


def test_binary_mode_merges_labels_and_plan_round_trips(tmp_path):
    raw = small_cohort(tmp_path, "Dataset944_Bin")
    fingerprint, _ = extract_fingerprint(RawDataset.load(raw))
    plan = plan_cohort(fingerprint, binary=True)
    assert plan.labels == {"background": 0, "bone": 1}
    assert set(plan.label_mapping.values()) == {1}
    assert plan.model["output_mode"] == "sigmoid" and plan.model["n_outputs"] == 1
    save_plan(plan, tmp_path / "pp")
    again = load_plan(tmp_path / "pp")
    assert again.to_dict() == plan.to_dict() and again.hash() == plan.hash()
    edited = json.loads((tmp_path / "pp" / "plans.json").read_text())
    edited["preprocessing"]["target_spacing_mm"] = 1.25
    assert Plan.from_dict(edited).hash() != plan.hash()


def test_fingerprint_records_what_each_case_is(tmp_path):
    raw = small_cohort(tmp_path, "Dataset945_Fp", locations=("knee", "hand"), sequences=("T1", "T2"), n_cases=4)
    fingerprint, _ = extract_fingerprint(RawDataset.load(raw))
    case = fingerprint["cases"][0]
    image, geometry = read_image(next((raw / "imagesTr").glob(f"{case['case_id']}_0000*")))
    assert case["shape"] == list(image.shape)
    assert Geometry.from_dict(case["geometry"]) == geometry
    assert case["intensity"][0]["p0.5"] <= case["intensity"][0]["p50"] <= case["intensity"][0]["p99.5"]
    assert sum(case["voxels_per_label"].values()) > 0
    summary = fingerprint["summary"]
    assert summary["overall"]["n_cases"] == 4
    assert set(summary["per_location"]) == {"knee", "hand"} and set(summary["per_sequence"]) <= {"T1", "T2"}
