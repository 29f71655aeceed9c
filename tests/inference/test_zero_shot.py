"""Zero-shot prompting with the packaged LiteMedSAM: `sab_predict --pretrained --prompts` and
`InteractiveSession.pretrained()` segment a phantom bone in 3D from one box on one slice, with no
training, on the input's exact grid, with the label values the prompts file asks for."""
import json

import numpy as np
import pytest

from sabnet.cli.predict import main as predict_main
from sabnet.inference.interactive import InteractiveSession
from sabnet.inference.zero_shot import zero_shot_labels
from sabnet.io.image_io import read_geometry, read_image, write_image
from sabnet.phantoms.cohort import make_phantom


@pytest.fixture(scope="module")
def knee(tmp_path_factory):
    """A small sagittal knee phantom (96 px, 10 slices of 3 mm) with its bone labels."""
    folder = tmp_path_factory.mktemp("zero_shot")
    phantom = make_phantom("knee", "T1", seed=5, in_plane_size=96, in_plane_spacing_mm=(1.2, 1.4),
                           slice_spacing_mm=(3.0, 3.0), n_slices=10)
    write_image(phantom.image, phantom.geometry, folder / "images" / "knee_001.nii.gz")
    return folder, phantom


def _box_on_middle_slice(phantom, value):
    """One box (IJK corners) around bone `value` on the slice where it is largest, and that slice."""
    axis = phantom.slice_axis
    mask = phantom.labels == value
    areas = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    k = int(np.argmax(areas))
    voxels = np.argwhere(np.take(mask, k, axis=axis))
    lo, hi = voxels.min(axis=0), voxels.max(axis=0)
    corners = []
    for corner in (lo, hi):
        index = list(corner)
        index.insert(axis, k)
        corners.append([int(v) for v in index[::-1]])  # array order -> IJK
    return corners, k


def _dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def test_one_box_per_bone_segments_it_in_3d_with_no_training(knee, tmp_path, monkeypatch):
    folder, phantom = knee
    from sabnet.model import case_predictor

    walks = []  # the carried walks get the slices' intensities, for their stop where the signal changes

    def recording_carry(seeds, n_slices, segment, rules=None, image=None):
        walks.append((rules.max_intensity_shift, None if image is None else image.shape))
        return real_carry(seeds, n_slices, segment, rules, image)

    real_carry = case_predictor.carry_objects
    monkeypatch.setattr(case_predictor, "carry_objects", recording_carry)
    femur, tibia = 1, 2  # the knee phantom's femur and tibia
    prompts = {"knee_001": {"coordinates": "ijk", "prompts": [
        {"label": 7, "box": _box_on_middle_slice(phantom, femur)[0]},
        {"label": "tibia", "box": _box_on_middle_slice(phantom, tibia)[0]}]}}
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    out = tmp_path / "out"
    assert predict_main(["-i", str(folder / "images"), "-o", str(out), "--pretrained", "--prompts",
                         str(tmp_path / "p.json"), "--qc"]) == 0
    labels, geometry = read_image(out / "knee_001.nii.gz")
    assert not geometry.differences(read_geometry(folder / "images" / "knee_001.nii.gz"), spacing_rtol=1e-6,
                                    origin_atol_mm=1e-5, direction_atol=1e-6)
    table = json.loads((out / "labels.json").read_text())
    assert table == {"background": 0, "7": 7, "tibia": 8}  # a name takes the next value after the integers
    assert walks and all(shift == 2.0 and shape is not None and len(shape) == 3 for shift, shape in walks)
    assert set(np.unique(labels)) <= {0, 7, 8}
    for value, written in ((femur, 7), (tibia, 8)):
        truth, found = phantom.labels == value, labels == written
        slices_found = np.unique(np.argwhere(found)[:, phantom.slice_axis])
        assert len(slices_found) >= 3  # carried beyond the prompted slice
        assert _dice(found, truth) > 0.7, (value, _dice(found, truth))
    # without carrying, only the prompted slice
    assert predict_main(["-i", str(folder / "images"), "-o", str(tmp_path / "flat"), "--pretrained", "--prompts",
                         str(tmp_path / "p.json"), "--no-carry"]) == 0
    flat, _ = read_image(tmp_path / "flat" / "knee_001.nii.gz")
    assert len(np.unique(np.argwhere(flat == 7)[:, phantom.slice_axis])) == 1


def test_zero_shot_flags_that_do_not_fit_fail_with_a_message(knee, tmp_path, capsys):
    folder, _ = knee
    assert predict_main(["-i", str(folder / "images"), "-o", str(tmp_path), "--pretrained"]) != 0
    assert "--prompts" in capsys.readouterr().err
    (tmp_path / "p.json").write_text(json.dumps({"knee_001": {"prompts": [{"label": 1.5, "points": [[1, 2, 3]]}]}}))
    assert predict_main(["-i", str(folder / "images"), "-o", str(tmp_path), "--pretrained", "--prompts",
                         str(tmp_path / "p.json")]) != 0
    assert "must be a name or an integer" in capsys.readouterr().err
    assert predict_main(["-i", str(folder / "images"), "-o", str(tmp_path), "--pretrained", "-d", "1", "--prompts",
                         str(tmp_path / "p.json")]) != 0
    assert "drop -d" in capsys.readouterr().err


def test_names_and_integers_share_one_label_table():
    prompts = {"a": {"prompts": [{"label": "femur"}, {"label": 3}]}, "b": {"prompts": [{"label": "tibia"},
                                                                                       {"label": "femur"}]}}
    assert zero_shot_labels(prompts) == {"3": 3, "femur": 4, "tibia": 5}


def test_the_interactive_session_carries_a_box_with_pretrained_weights(knee):
    folder, phantom = knee
    session = InteractiveSession.pretrained(["femur"])
    labels = session.open(folder / "images" / "knee_001.nii.gz")
    assert not labels.any()  # nothing until prompted
    corners, k = _box_on_middle_slice(phantom, 1)
    results = session.add_box(corners[0], corners[1], "femur", propagate=None)
    assert len(results) >= 3 and any(r.index == k for r in results)
    assert _dice(session.labels == 1, phantom.labels == 1) > 0.7
