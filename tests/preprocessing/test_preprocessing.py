"""Preprocessing: the store, its exact inverse, re-runs, interruptions and corrupt cases."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sabnet.cli.plan_and_preprocess import main as plan_and_preprocess_main
from sabnet.dataset.raw_dataset import RawDataset
from sabnet.io.geometry import acquisition_plane
from sabnet.io.image_io import read_image
from sabnet.paths import resolve_dataset
from sabnet.phantoms.cohort import make_phantom_dataset
from sabnet.planning.fingerprint import extract_fingerprint
from sabnet.planning.planner import plan_cohort
from sabnet.planning.plans import load_plan
from sabnet.preprocessing.case_preprocessing import preprocess_arrays
from sabnet.preprocessing.inverse import labels_to_original, probabilities_to_original
from sabnet.preprocessing.store import PreprocessedStore


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture
def oblique_cohort(tmp_path):
    return make_phantom_dataset(tmp_path / "Dataset950_Oblique", locations=("knee",), sequences=("T1", "PD"), n_cases=2,
                                seed=3, planes=("oblique",), in_plane_spacing_mm=(0.45, 0.45),
                                slice_spacing_mm=(3.5, 3.5), in_plane_size=96, n_slices=14, permute_axes=True,
                                dataset_name="Dataset950_Oblique")


def test_inverse_restores_labels_of_an_oblique_anisotropic_case(oblique_cohort):
    dataset = RawDataset.load(oblique_cohort)
    fingerprint, _ = extract_fingerprint(dataset)
    plan = plan_cohort(fingerprint)
    plan.preprocessing.target_spacing_mm = 0.7  # force real in-plane resampling
    case = dataset.training_cases()[0]
    image, geometry = read_image(case.image_files[0])
    labels, _ = read_image(case.label_file)
    assert acquisition_plane(geometry)[1] == "oblique"
    result = preprocess_arrays([image], geometry, labels, plan, plan.preprocessing.cases[case.case_id], case.sequence)
    n_slices, rows, cols = result.labels.shape
    assert n_slices == geometry.shape[plan.preprocessing.cases[case.case_id].slice_axis]  # never interpolated
    assert result.properties["spacing_mm"][1] == pytest.approx(0.7, rel=0.02)
    # the slices are normalized by the values recorded: clipped, then zero mean and unit std in the body
    record = result.properties["normalization"][0]
    low, high = ((record[k] - record["mean"]) / record["std"] for k in ("clip_low", "clip_high"))
    slices = result.image[:, 0]
    assert low - 1e-4 <= slices.min() and slices.max() <= high + 1e-4
    body = slices[slices > low + 0.05 * (high - low)]
    assert abs(float(body.mean())) < 0.25 and 0.75 < float(body.std()) < 1.25
    restored = labels_to_original(result.labels, result.properties)
    assert restored.shape == labels.shape
    for value in np.unique(labels[labels > 0]):
        out = plan.label_mapping[str(int(value))]
        assert dice(restored == out, labels == value) >= 0.99 - 0.04 * (value == 3)  # thin fibula loses more
    assert dice(restored > 0, labels > 0) >= 0.99
    # probabilities take the same road: one-hot in, same labels out
    one_hot = np.stack([result.labels == k for k in range(len(plan.labels))]).astype(np.float32)
    from_probs, probs = probabilities_to_original(one_hot, result.properties, keep_probabilities=True)
    assert dice(from_probs > 0, labels > 0) >= 0.99
    assert probs.shape == (len(plan.labels),) + labels.shape


def test_plan_and_preprocess_writes_store_and_rerun_skips(oblique_cohort, capsys):
    assert plan_and_preprocess_main(["-d", str(oblique_cohort), "-np", "1"]) == 0
    ref = resolve_dataset(str(oblique_cohort))
    store = PreprocessedStore(ref.preprocessed_dir)
    assert store.case_ids() == sorted(RawDataset.load(oblique_cohort).case_ids())
    case_id = store.case_ids()[0]
    image, labels = store.image(case_id), store.labels(case_id)
    assert isinstance(image, np.memmap) and image.ndim == 4 and labels.shape == (image.shape[0],) + image.shape[2:]
    props = store.properties(case_id)
    assert props["slices_with_label"] and store.foreground(case_id)
    assert store.depth_image(case_id).shape[1:] == tuple(props["depth_shape"])
    assert abs(float(np.mean(image)) ) < 1.0  # z-scored
    mtime = (store.case_dir(case_id) / "image.npy").stat().st_mtime
    out = capsys.readouterr().out
    assert "2 written" in out and "sabnet roots" in out
    assert plan_and_preprocess_main(["-d", str(oblique_cohort), "-np", "1"]) == 0
    assert "0 written, 2 already up to date" in capsys.readouterr().out
    assert (store.case_dir(case_id) / "image.npy").stat().st_mtime == mtime


def test_an_edited_plan_is_used_as_edited(oblique_cohort, capsys):
    assert plan_and_preprocess_main(["-d", str(oblique_cohort), "--plan-only"]) == 0
    folder = resolve_dataset(str(oblique_cohort)).preprocessed_dir
    text = (folder / "plans.json").read_text()
    plan = load_plan(folder)
    edited = text.replace(f'"target_spacing_mm": {plan.preprocessing.target_spacing_mm}', '"target_spacing_mm": 0.9')
    assert edited != text
    (folder / "plans.json").write_text(edited)
    assert plan_and_preprocess_main(["-d", str(oblique_cohort)]) == 0
    assert "reused (as edited)" in capsys.readouterr().out
    store = PreprocessedStore(folder)
    assert store.properties(store.case_ids()[0])["spacing_mm"][1] == pytest.approx(0.9, rel=0.03)
    # asking for something else without --replan is refused with the fix
    assert plan_and_preprocess_main(["-d", str(oblique_cohort), "--binary"]) == 1
    assert "--replan" in capsys.readouterr().err


def test_a_corrupt_case_is_reported_while_the_others_are_kept(tmp_path, capsys):
    raw = make_phantom_dataset(tmp_path / "Dataset951_Corrupt", locations=("hand",), n_cases=3, seed=5,
                               in_plane_size=64, n_slices=8, dataset_name="Dataset951_Corrupt")
    victim = sorted((raw / "imagesTr").iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:200])
    assert plan_and_preprocess_main(["-d", str(raw), "--no-verify", "-np", "2"]) == 1
    captured = capsys.readouterr()
    assert victim.name.split("_0000")[0] in captured.out and "failed" in captured.out
    store = PreprocessedStore(resolve_dataset(str(raw)).preprocessed_dir)
    assert len(store.case_ids()) == 2
    # with verification on (the default) the same dataset stops before planning, naming the file
    assert plan_and_preprocess_main(["-d", str(raw)]) == 1
    assert victim.name in capsys.readouterr().err


def test_a_killed_run_leaves_no_half_case_and_recovers(tmp_path):
    raw = make_phantom_dataset(tmp_path / "Dataset952_Kill", locations=("knee",), n_cases=6, seed=7,
                               in_plane_size=128, n_slices=24, dataset_name="Dataset952_Kill")
    env = dict(os.environ)
    command = [sys.executable, "-c", "import sys; from sabnet.cli.plan_and_preprocess import main; sys.exit(main())",
               "-d", str(raw), "-np", "1", "--no-verify"]
    data = resolve_dataset(str(raw)).preprocessed_dir / "data"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    killed = False
    while time.time() < deadline and process.poll() is None:
        entries = list(data.iterdir()) if data.is_dir() else []
        # kill while a case is being written, or at the latest once two cases are done
        if any(p.name.startswith(".tmp-") for p in entries) or sum(not p.name.startswith(".") for p in entries) >= 2:
            process.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.001)
    process.wait()
    assert killed, "the run finished before it could be killed"
    store = PreprocessedStore(data.parent)
    complete = store.case_ids()
    assert len(complete) < 6
    for case_id in complete:  # whatever looks complete is complete
        assert np.asarray(store.image(case_id)).shape[0] == store.properties(case_id)["shape"][0]
    result = subprocess.run(command, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{6 - len(complete)} written, {len(complete)} already up to date" in result.stdout
    assert len(store.case_ids()) == 6
    assert not any(p.name.startswith(".") for p in data.iterdir())
