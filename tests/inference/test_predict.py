"""sab_predict: exact geometry, ensembling, prompts, skip/overwrite, failures, parts, QC."""
import json

import numpy as np
import pytest
import torch

from conftest import write_dicom_series
from model_folder_fixture import make_model_folder, use_roots
from sabnet.cli.predict import main as predict_main
from sabnet.inference.model_folder import load_ensemble
from sabnet.inference.predict_image import preprocess_for_prediction
from sabnet.io.geometry import Geometry
from sabnet.io.image_io import read_geometry, read_image
from sabnet.model.case_predictor import EnsemblePredictor, case_tiles
from sabnet.model.slice_prompts import SlicePrompt


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    return make_model_folder(root) + (root / "home",)


@pytest.fixture(autouse=True)
def roots_of_the_model(model_folder, monkeypatch):
    use_roots(monkeypatch, model_folder[2])


def run_predict(raw, out, *extra):
    return predict_main(["-i", str(raw / "imagesTr"), "-o", str(out), "-d", str(raw), "--device", "cpu", *extra])


def test_outputs_have_exactly_the_input_geometry(model_folder, tmp_path):
    raw = model_folder[0]
    for mode in ("2d", "3d"):
        assert run_predict(raw, tmp_path / mode, "--mode", mode) == 0
        for image in sorted((raw / "imagesTr").iterdir()):
            out = tmp_path / mode / image.name.replace("_0000", "")
            # equal to float precision (NIfTI stores the direction as a float quaternion + sform)
            written, source = read_geometry(out), read_geometry(image)
            assert written.size == source.size
            assert not written.differences(source, spacing_rtol=1e-6, origin_atol_mm=1e-5, direction_atol=1e-6)
            labels, _ = read_image(out)
            assert labels.dtype == np.uint8


def test_dicom_series_input_keeps_its_geometry(model_folder, tmp_path):
    raw = model_folder[0]
    image, geometry = read_image(sorted((raw / "imagesTr").iterdir())[0])
    series = write_dicom_series(tmp_path / "dicom" / "knee", image.astype(np.int16), geometry,
                                {"0020|000e": "1.2.826.0.1.3680043.2.1125.1", "0008|103e": "sag T1 knee"})
    dicom_geometry = read_geometry(series)
    assert predict_main(["-i", str(tmp_path / "dicom"), "-o", str(tmp_path / "out"), "-d", str(raw)]) == 0
    written = read_geometry(tmp_path / "out" / "knee.nii.gz")
    assert not written.differences(dicom_geometry, spacing_rtol=1e-6, origin_atol_mm=1e-4, direction_atol=1e-6)


def test_ensemble_is_the_mean_of_its_folds(model_folder):
    raw, folder = model_folder[:2]
    plan, models, folds = load_ensemble(folder, None, "final", "cpu", "3d")
    assert folds == [0, 1]
    image, geometry = read_image(sorted((raw / "imagesTr").iterdir())[0])
    case = preprocess_for_prediction([image], geometry, plan)
    args = (case.image, case.depth_image, case.properties, "3d")
    single = [EnsemblePredictor([m]).predict(*args) for m in models]
    both = EnsemblePredictor(models).predict(*args)
    np.testing.assert_allclose(both, (single[0] + single[1]) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(single[0], single[1])


def test_folds_that_share_a_frozen_encoder_encode_each_slice_once(model_folder, monkeypatch):
    raw, folder = model_folder[:2]
    plan, models, _ = load_ensemble(folder, None, "final", "cpu", "2d")
    with torch.no_grad():  # two folds of a frozen pretrained encoder: same encoder, other decoders
        models[1].image_encoder.load_state_dict(models[0].image_encoder.state_dict())
    calls = []
    for m in models:
        original = m.image_encoder.forward
        monkeypatch.setattr(m.image_encoder, "forward", lambda x, original=original: calls.append(len(x)) or original(x))
    image, geometry = read_image(sorted((raw / "imagesTr").iterdir())[0])
    case = preprocess_for_prediction([image], geometry, plan)
    n_tiles = len(case_tiles(*case.image.shape[:1], *case.image.shape[2:], plan.model["image_size"]))
    shared = EnsemblePredictor(models, batch_size=4)
    both = shared.predict(case.image, case.depth_image, case.properties, "2d")
    assert sum(calls) == n_tiles and len(shared.group_models) == 1  # every tile once, not once per fold
    single = [EnsemblePredictor([m]).predict(case.image, case.depth_image, case.properties, "2d") for m in models]
    np.testing.assert_allclose(both, (single[0] + single[1]) / 2, rtol=1e-5, atol=1e-6)
    calls.clear()
    with torch.no_grad():
        models[1].image_encoder.neck[0].weight.mul_(1.01)  # folds with their own adapters: encoded apart
    EnsemblePredictor(models, batch_size=4).predict(case.image, case.depth_image, case.properties, "2d")
    assert sum(calls) == 2 * n_tiles


def test_depth_branch_runs_once_per_case_and_fold(model_folder, monkeypatch):
    raw, folder = model_folder[:2]
    plan, models, _ = load_ensemble(folder, None, "final", "cpu", "3d")
    calls = []
    for m in models:
        original = m.depth_probabilities
        monkeypatch.setattr(m, "depth_probabilities", lambda v, original=original: calls.append(1) or original(v))
    image, geometry = read_image(sorted((raw / "imagesTr").iterdir())[0])
    case = preprocess_for_prediction([image], geometry, plan)
    EnsemblePredictor(models, batch_size=2).predict(case.image, case.depth_image, case.properties, "3d")
    assert len(calls) == len(models)  # not once per slice or batch


def test_saved_probabilities_and_skip_then_overwrite(model_folder, tmp_path, capsys):
    raw = model_folder[0]
    assert run_predict(raw, tmp_path, "--save-probabilities", "-f", "0") == 0
    first = sorted(tmp_path.glob("*.nii.gz"))[0]
    probabilities = np.load(first.with_name(first.name.replace(".nii.gz", "_probabilities.npz")))["probabilities"]
    labels, _ = read_image(first)
    assert probabilities.shape[1:] == labels.shape
    np.testing.assert_array_equal(probabilities.astype(np.float32).argmax(axis=0), labels)
    stamp = first.stat().st_mtime_ns
    capsys.readouterr()
    assert run_predict(raw, tmp_path, "-f", "0") == 0
    assert "skipped 3" in capsys.readouterr().out and first.stat().st_mtime_ns == stamp
    assert run_predict(raw, tmp_path, "-f", "0", "--overwrite") == 0
    assert first.stat().st_mtime_ns != stamp


def test_a_corrupt_input_is_reported_and_the_others_finish(model_folder, tmp_path, capsys):
    raw = model_folder[0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    images = sorted((raw / "imagesTr").iterdir())
    for image in images:
        (inputs / image.name).write_bytes(image.read_bytes())
    (inputs / images[1].name).write_bytes(images[1].read_bytes()[:300])
    code = predict_main(["-i", str(inputs), "-o", str(tmp_path / "out"), "-d", str(raw), "-f", "0"])
    out = capsys.readouterr().out
    assert code == 1 and "failed 1" in out and images[1].name.split("_0000")[0] in out
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == len(images) - 1
    assert not list((tmp_path / "out").glob(".tmp-*"))


def test_parts_split_the_cohort_and_qc_pictures(model_folder, tmp_path):
    raw = model_folder[0]
    for part in (0, 1):
        assert run_predict(raw, tmp_path, "-f", "0", "--num-parts", "2", "--part-id", str(part), "--qc") == 0
    assert len(list(tmp_path.glob("*.nii.gz"))) == 3 and len(list(tmp_path.glob("*_qc.png"))) == 3
    assert predict_main(["-i", str(raw / "imagesTr"), "-o", str(tmp_path), "-d", str(raw), "--num-parts", "2",
                         "--part-id", "2"]) == 1


def test_prompts_not_carried_change_only_their_slice(model_folder, tmp_path):
    raw = model_folder[0]
    image_file = sorted((raw / "imagesTr").iterdir())[0]
    case_id = image_file.name.split("_0000")[0]
    labels, geometry = read_image(raw / "labelsTr" / f"{case_id}.nii.gz")
    k, j, i = np.argwhere(labels == 1)[len(np.argwhere(labels == 1)) // 2]  # a femur voxel
    prompts = {case_id: {"coordinates": "ijk", "prompts": [{"label": "femur", "points": [[int(i), int(j), int(k)]],
                                                            "point_labels": [1]}]}}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    assert run_predict(raw, tmp_path / "auto", "-f", "0") == 0
    assert run_predict(raw, tmp_path / "prompted", "-f", "0", "--prompts", str(tmp_path / "prompts.json"),
                       "--no-carry") == 0
    auto, _ = read_image(tmp_path / "auto" / f"{case_id}.nii.gz")
    prompted, _ = read_image(tmp_path / "prompted" / f"{case_id}.nii.gz")
    changed = np.argwhere(auto != prompted)
    assert len(changed) > 0
    # every change lies on the prompted slice (the slice axis of this case, through the point)
    plan, _, _ = load_ensemble(model_folder[1], [0], "final", "cpu")
    axis = preprocess_for_prediction([read_image(image_file)[0]], geometry, plan).properties["slice_frame"]["axes"][0]
    assert set(changed[:, axis]) == {(k, j, i)[axis]}
    # a label the model does not know is one clear error
    prompts[case_id]["prompts"][0]["label"] = "humerus"
    (tmp_path / "bad.json").write_text(json.dumps(prompts))
    assert run_predict(raw, tmp_path / "bad", "-f", "0", "--prompts", str(tmp_path / "bad.json")) == 1


def test_without_mode_it_predicts_in_the_mode_find_best_configuration_chose(model_folder, tmp_path, capsys):
    raw, folder = model_folder[:2]
    image = sorted((raw / "imagesTr").iterdir())[0]
    name = image.name.replace("_0000", "")
    assert run_predict(raw, tmp_path / "default") == 0  # no choice written: 2D
    assert "2d mode (the default" in capsys.readouterr().out
    best = folder / "best_configuration.json"
    try:
        best.write_text(json.dumps({"mode": "3d"}))
        assert run_predict(raw, tmp_path / "chosen") == 0
        assert "3d mode (chosen by sab_find_best_configuration" in capsys.readouterr().out
        assert run_predict(raw, tmp_path / "3d", "--mode", "3d") == 0
        chosen, three, two = (read_image(tmp_path / d / name)[0] for d in ("chosen", "3d", "default"))
        assert np.array_equal(chosen, three) and not np.array_equal(chosen, two)
        best.write_text(json.dumps({"mode": "4d"}))
        assert run_predict(raw, tmp_path / "bad") != 0
        assert "best_configuration.json: mode '4d'" in capsys.readouterr().err
    finally:
        best.unlink(missing_ok=True)
