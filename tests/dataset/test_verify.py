"""sab_verify_dataset: every problem of a raw cohort is reported, each naming its file."""
import json
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from sabnet.cli.verify_dataset import main
from sabnet.dataset.duplicates import find_duplicate_cases
from sabnet.dataset.verify import case_id_problem, verify_dataset
from sabnet.io.geometry import Geometry
from sabnet.io.image_io import write_image

SHAPE = (4, 6, 5)  # array order (k, j, i)
GEOMETRY = Geometry(size=SHAPE[::-1], spacing_mm=(0.8, 0.8, 4.0), origin_mm=(10.0, -5.0, 2.5), direction=np.eye(3).ravel())


def make_dataset(root, case_ids=("c01", "c02", "c03"), channels=("T1",), labels=None, ending=".nii.gz"):
    """A small valid raw dataset: distinct random images, a label map with bone (1) in each."""
    labels = labels or {"background": 0, "bone": 1}
    rng = np.random.default_rng(len(case_ids))
    for case_id in case_ids:
        for c in range(len(channels)):
            write_image(rng.normal(100, 20, SHAPE).astype(np.float32), GEOMETRY, root / "imagesTr" / f"{case_id}_{c:04d}{ending}")
        label = np.zeros(SHAPE, np.uint8)
        label[1:3, 2:4, 1:4] = 1
        write_image(label, GEOMETRY, root / "labelsTr" / f"{case_id}{ending}")
    meta = {"channel_names": {str(i): n for i, n in enumerate(channels)}, "labels": labels,
            "numTraining": len(case_ids), "file_ending": ending}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def edit_json(root, **changes):
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(changes)
    (root / "dataset.json").write_text(json.dumps(meta))


@pytest.fixture
def ds(tmp_path):
    return make_dataset(tmp_path / "Dataset042_Test")


def only_problem(report, severity="error"):
    """The single problem of `severity` (the test changed one thing, so exactly one must show)."""
    found = [p for p in report.problems if p.severity == severity]
    assert len(found) == 1, [str(p) for p in report.problems]
    return found[0]


def test_a_clean_dataset_has_no_problems(ds, capsys):
    report = verify_dataset(ds)
    assert report.ok and report.problems == [] and report.n_training == 3
    before = sorted((p.relative_to(ds), p.stat().st_mtime_ns) for p in ds.rglob("*"))
    assert main(["-d", str(ds)]) == 0
    out = capsys.readouterr().out
    assert "sabnet roots:" in out and "OK: 3 training and 0 test case(s), 0 error(s), 0 warning(s)" in out
    assert sorted((p.relative_to(ds), p.stat().st_mtime_ns) for p in ds.rglob("*")) == before  # wrote nothing


def test_missing_image_channel(tmp_path):
    ds = make_dataset(tmp_path / "d", channels=("T1", "T2"))
    (ds / "imagesTr" / "c02_0001.nii.gz").unlink()
    p = only_problem(verify_dataset(ds))
    assert p.file == ds / "imagesTr" / "c02_0001.nii.gz" and p.case_id == "c02"
    assert "missing: channel 0001 (T2) of case c02" in p.message


def test_missing_label_map(ds):
    (ds / "labelsTr" / "c03.nii.gz").unlink()
    p = only_problem(verify_dataset(ds))
    assert p.file == ds / "labelsTr" / "c03.nii.gz" and "missing: label map of case c03" in p.message


def test_extra_file(ds):
    (ds / "imagesTr" / "notes.txt").write_text("scanner protocol")
    p = only_problem(verify_dataset(ds))
    assert p.file == ds / "imagesTr" / "notes.txt"
    assert "unexpected file in imagesTr: names must be {case}_{channel:04d}.nii.gz" in p.message


def test_label_map_without_images(ds):
    shutil.copy(ds / "labelsTr" / "c01.nii.gz", ds / "labelsTr" / "c99.nii.gz")
    p = only_problem(verify_dataset(ds))
    assert p.file == ds / "labelsTr" / "c99.nii.gz" and "label map without images" in p.message


def test_unreadable_file(ds):
    (ds / "imagesTr" / "c02_0000.nii.gz").write_bytes(b"not an image at all")
    p = only_problem(verify_dataset(ds))
    assert p.file == ds / "imagesTr" / "c02_0000.nii.gz" and "cannot be read as an image" in p.message


def test_label_shape_differs_from_image_shape(ds):
    small = Geometry(size=(5, 6, 3), spacing_mm=GEOMETRY.spacing_mm, origin_mm=GEOMETRY.origin_mm, direction=GEOMETRY.direction)
    write_image(np.ones(small.shape, np.uint8), small, ds / "labelsTr" / "c01.nii.gz")
    p = only_problem(verify_dataset(ds))
    assert p.file == ds / "labelsTr" / "c01.nii.gz"
    assert "label shape (3, 6, 5) differs from image shape (4, 6, 5) of c01_0000.nii.gz" in p.message


@pytest.mark.parametrize("field, value, phrase", [
    ("spacing_mm", (0.8, 0.8, 5.0), "spacing (0.8, 0.8, 4) vs (0.8, 0.8, 5) mm"),
    ("origin_mm", (10.0, -5.0, 4.5), "origin (10, -5, 2.5) vs (10, -5, 4.5) mm"),
    ("direction", (0, 1, 0, 1, 0, 0, 0, 0, 1), "direction"),
])
def test_label_geometry_differs_beyond_tolerance(ds, field, value, phrase):
    moved = Geometry(**{**GEOMETRY.to_dict(), field: value})
    label = np.zeros(SHAPE, np.uint8)
    label[0, 0, 0] = 1
    write_image(label, moved, ds / "labelsTr" / "c02.nii.gz")
    p = only_problem(verify_dataset(ds))
    assert p.file == ds / "labelsTr" / "c02.nii.gz"
    assert p.message.startswith("label geometry differs from image c02_0000.nii.gz") and phrase in p.message


def test_geometry_within_tolerance_is_accepted(ds):
    nudged = Geometry(**{**GEOMETRY.to_dict(), "origin_mm": (10.0, -5.0, 2.5 + 1e-5)})
    label = np.zeros(SHAPE, np.uint8)
    label[0, 0, 0] = 1
    write_image(label, nudged, ds / "labelsTr" / "c02.nii.gz")
    assert verify_dataset(ds).problems == []


def test_channels_of_one_case_on_different_grids(tmp_path):
    ds = make_dataset(tmp_path / "d", channels=("T1", "T2"))
    shifted = Geometry(**{**GEOMETRY.to_dict(), "origin_mm": (0.0, 0.0, 0.0)})
    write_image(np.zeros(SHAPE, np.float32), shifted, ds / "imagesTr" / "c01_0001.nii.gz")
    p = only_problem(verify_dataset(ds))
    assert p.file == ds / "imagesTr" / "c01_0001.nii.gz"
    assert "geometry differs from channel file c01_0000.nii.gz: origin" in p.message


def test_undeclared_label_values(ds):
    label = np.zeros(SHAPE, np.uint8)
    label[0, :2, :2], label[3, 0, 0] = 1, 3
    write_image(label, GEOMETRY, ds / "labelsTr" / "c02.nii.gz")
    p = only_problem(verify_dataset(ds))
    assert p.file == ds / "labelsTr" / "c02.nii.gz"
    assert "label values [3] are not declared in dataset.json labels (declared: [0, 1])" in p.message


def test_non_integer_label_map(ds):
    label = np.zeros(SHAPE, np.float32)
    label[1, 1, 1] = 0.5
    write_image(label, GEOMETRY, ds / "labelsTr" / "c03.nii.gz")
    p = only_problem(verify_dataset(ds))
    assert p.file == ds / "labelsTr" / "c03.nii.gz" and "non-integer values (e.g. 0.5)" in p.message


def test_float_label_map_with_whole_values_is_accepted(ds):
    label = np.zeros(SHAPE, np.float32)
    label[1, 1, 1] = 1.0
    write_image(label, GEOMETRY, ds / "labelsTr" / "c03.nii.gz")
    assert verify_dataset(ds).problems == []


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd"])  # ITK reads NIfTI NaN as 0: sabnet looks in the file
def test_nan_and_inf_intensities(tmp_path, ending):
    ds = make_dataset(tmp_path / "d", ending=ending)
    image = np.ones(SHAPE, np.float32)
    image[0, 0, 0], image[1, 1, 1] = np.nan, np.inf
    write_image(image, GEOMETRY, ds / "imagesTr" / f"c01_0000{ending}")
    p = only_problem(verify_dataset(ds))
    assert p.file == ds / "imagesTr" / f"c01_0000{ending}" and "1 NaN and 1 Inf intensities" in p.message


def test_2d_image(ds):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 5), np.float32)), str(ds / "imagesTr" / "c02_0000.nii.gz"))
    p = only_problem(verify_dataset(ds))
    assert p.file == ds / "imagesTr" / "c02_0000.nii.gz" and "image is 2D" in p.message and "needs 3D" in p.message


def test_4d_image(ds):
    series = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros(SHAPE, np.float32))] * 3)
    sitk.WriteImage(series, str(ds / "imagesTr" / "c02_0000.nii.gz"))
    p = only_problem(verify_dataset(ds))
    assert p.file == ds / "imagesTr" / "c02_0000.nii.gz" and "image is 4D" in p.message


def test_channel_count_does_not_match_channel_names(ds):
    shutil.copy(ds / "imagesTr" / "c01_0000.nii.gz", ds / "imagesTr" / "c01_0001.nii.gz")
    p = only_problem(verify_dataset(ds))
    assert p.file == ds / "imagesTr" / "c01_0001.nii.gz"
    assert "channel 0001 is not declared: dataset.json channel_names lists 1 channel(s) (0: T1)" in p.message


def test_unsafe_case_ids(ds):
    for name in ("c01_0000.nii.gz", "c01.nii.gz"):
        folder = "imagesTr" if name.endswith("_0000.nii.gz") else "labelsTr"
        (ds / folder / name).rename(ds / folder / name.replace("c01", "a\\b"))
    report = verify_dataset(ds)
    p = only_problem(report)
    assert p.file == ds / "imagesTr" / "a\\b_0000.nii.gz"
    assert "unsafe case id 'a\\\\b' contains a path separator" in p.message

    files = {"../escape": {"images": ["imagesTr/c02_0000.nii.gz"], "label": "labelsTr/c02.nii.gz"}}
    edit_json(ds, dataset=files, numTraining=1)
    p = only_problem(verify_dataset(ds))
    assert p.case_id == "../escape" and "unsafe case id '../escape' contains a path separator" in p.message
    assert case_id_problem("..") and case_id_problem(".hidden") and case_id_problem("case_01") is None


def test_num_training_that_does_not_match(ds):
    edit_json(ds, numTraining=5)
    p = only_problem(verify_dataset(ds))
    assert p.file == ds / "dataset.json" and "numTraining is 5 but 3 training case(s) were found" in p.message


def test_dataset_json_that_is_not_json_or_lacks_keys(ds):
    (ds / "dataset.json").write_text('{"channel_names": {"0": "T1"},')
    p = only_problem(verify_dataset(ds))
    assert p.file == ds / "dataset.json" and "not valid JSON" in p.message
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": {"background": 0, "bone": 1}}))
    p = only_problem(verify_dataset(ds))
    assert p.file == ds / "dataset.json" and "missing key(s) numTraining, file_ending" in p.message


def test_every_problem_is_reported_in_one_pass(ds):
    (ds / "labelsTr" / "c03.nii.gz").unlink()
    (ds / "imagesTr" / "c02_0000.nii.gz").write_bytes(b"junk")
    (ds / "imagesTr" / "stray.nii.gz").write_bytes(b"junk")
    edit_json(ds, numTraining=7)
    report = verify_dataset(ds)
    assert len(report.errors) == 4
    assert {p.file.name for p in report.errors} == {"c03.nii.gz", "c02_0000.nii.gz", "stray.nii.gz", "dataset.json"}
    table = report.to_dataframe()
    assert list(table.columns) == ["severity", "case_id", "file", "message"] and len(table) == 4


def test_empty_label_map_is_a_warning_and_exits_0(ds, capsys):
    write_image(np.zeros(SHAPE, np.uint8), GEOMETRY, ds / "labelsTr" / "c02.nii.gz")
    report = verify_dataset(ds)
    p = only_problem(report, "warning")
    assert report.ok and p.file == ds / "labelsTr" / "c02.nii.gz" and "label map is empty" in p.message
    assert main(["-d", str(ds)]) == 0
    assert "WARNING labelsTr/c02.nii.gz: label map is empty (background only)" in capsys.readouterr().out


def test_duplicate_images_are_a_warning_grouped_for_cross_validation(ds, tmp_path, capsys):
    for case_id in ("c04", "c05"):
        shutil.copy(ds / "imagesTr" / "c01_0000.nii.gz", ds / "imagesTr" / f"{case_id}_0000.nii.gz")
        shutil.copy(ds / "labelsTr" / "c01.nii.gz", ds / "labelsTr" / f"{case_id}.nii.gz")
    edit_json(ds, numTraining=5)
    report = verify_dataset(ds)
    assert report.ok and report.duplicate_groups == [["c01", "c04", "c05"]]
    assert [(p.case_id, "image identical to case c01" in p.message) for p in report.warnings] == [("c04", True), ("c05", True)]
    assert find_duplicate_cases(ds) == [["c01", "c04", "c05"]]

    assert main(["-d", str(ds), "-o", str(tmp_path / "report.json")]) == 0
    assert "duplicate group (kept in one fold): c01, c04, c05" in capsys.readouterr().out
    assert json.loads((tmp_path / "report.json").read_text())["duplicate_groups"] == [["c01", "c04", "c05"]]


def test_cli_errors_exit_1_without_traceback(ds, capsys, sabnet_roots):
    (ds / "imagesTr" / "c02_0000.nii.gz").write_bytes(b"junk")
    assert main(["-d", str(ds)]) == 1
    captured = capsys.readouterr()
    assert "ERROR imagesTr/c02_0000.nii.gz: cannot be read as an image" in captured.out
    assert "FAILED: 3 training and 0 test case(s), 1 error(s)" in captured.out
    assert "Traceback" not in captured.out + captured.err

    # by name from the raw root, through the console script in its own process
    raw = sabnet_roots / "raw"
    raw.mkdir(parents=True)
    shutil.move(str(ds), raw / ds.name)
    run = subprocess.run([shutil.which("sab_verify_dataset") or "sab_verify_dataset", "-d", "42"],
                         capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert run.returncode == 1 and "ERROR imagesTr/c02_0000.nii.gz" in run.stdout
    assert "Traceback" not in run.stdout + run.stderr

    assert main(["-d", "Dataset777_Nothing"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sab_verify_dataset: error: dataset Dataset777_Nothing not found")


def test_worker_processes_give_the_same_report(ds, capsys):
    (ds / "imagesTr" / "c02_0000.nii.gz").write_bytes(b"junk")
    shutil.copy(ds / "imagesTr" / "c01_0000.nii.gz", ds / "imagesTr" / "c03_0000.nii.gz")
    one, two = verify_dataset(ds, n_workers=1), verify_dataset(ds, n_workers=2)
    assert one.problems == two.problems and one.duplicate_groups == two.duplicate_groups == [["c01", "c03"]]
    assert main(["-d", str(ds), "-np", "2"]) == 1
    assert "FAILED: 3 training and 0 test case(s), 1 error(s), 1 warning(s)" in capsys.readouterr().out
