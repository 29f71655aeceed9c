"""Folder evaluation, summaries and the sab_evaluate command on small hand-made label files."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from sabnet.cli.evaluate import main
from sabnet.errors import SabnetError
from sabnet.evaluation import EvaluationResult, evaluate_case, evaluate_folder, read_summary, write
from sabnet.io.geometry import Geometry
from sabnet.io.image_io import write_image

GEOMETRY = Geometry((12, 10, 8), (0.5, 0.5, 3.0), (-3.0, 4.0, 10.0), (1, 0, 0, 0, 0, 1, 0, -1, 0))
LABELS = {"background": 0, "femur": 1, "tibia": 2}


def label_map(femur_slices, tibia_slices=None):
    """Array-order (8, 10, 12) map: femur (1) fills rows 1..4 of `femur_slices`, tibia (2) rows 6..9."""
    array = np.zeros(GEOMETRY.shape, np.uint8)
    array[femur_slices, 1:5, 2:10] = 1
    if tibia_slices is not None:
        array[tibia_slices, 6:10, 2:10] = 2
    return array


@pytest.fixture
def cohort(tmp_path):
    """Three cases: knee/T1 perfect, knee/PD with femur 4 of 6 slices, spine/T1 with tibia missed.

    Femur Dice: 1, 2*4/(6+4) = 0.8, 1 -> mean 14/15. Tibia: 1, 1, 0 (missed) -> mean 2/3.
    """
    ref, pred = tmp_path / "labelsTs", tmp_path / "predictions"
    cases = {
        "knee_001": (label_map(slice(1, 7), slice(2, 6)), label_map(slice(1, 7), slice(2, 6)), ".nii.gz"),
        "knee_002": (label_map(slice(1, 7), slice(2, 6)), label_map(slice(2, 6), slice(2, 6)), ".nrrd"),
        "spine_001": (label_map(slice(1, 7), slice(2, 6)), label_map(slice(1, 7)), ".nii.gz"),
    }
    for case, (reference, prediction, ending) in cases.items():
        write_image(reference, GEOMETRY, ref / f"{case}.nii.gz")
        write_image(prediction, GEOMETRY, pred / f"{case}{ending}")  # matched by case id, any format
    metadata = {"knee_001": {"sequence": "T1", "location": "knee"}, "knee_002": {"sequence": "PD", "location": "knee"},
                "spine_001": {"sequence": "T1", "location": "spine"}}
    return ref, pred, metadata


def test_evaluate_case_gives_one_row_per_foreground_label():
    reference = label_map(slice(1, 7), slice(2, 6))
    prediction = label_map(slice(2, 6))

    rows = evaluate_case(reference, prediction, GEOMETRY, LABELS, case="c1", sequence="T2", location="hip")

    assert [(r["label"], r["label_value"]) for r in rows] == [("femur", 1), ("tibia", 2)]
    femur, tibia = rows
    assert femur["dice"] == pytest.approx(0.8)
    assert femur["hd95_mm"] == pytest.approx(3.0)  # one 3 mm slice lost at each end
    assert (femur["n_ref_voxels"], femur["n_pred_voxels"]) == (6 * 4 * 8, 4 * 4 * 8)
    assert tibia["dice"] == 0.0 and tibia["asd_mm"] == pytest.approx(math.hypot(6.0, 5.0, 24.0))
    assert (femur["case"], femur["sequence"], femur["location"]) == ("c1", "T2", "hip")
    with pytest.raises(SabnetError, match="case c1: reference shape"):
        evaluate_case(reference, prediction[:-1], GEOMETRY, LABELS, case="c1")


def test_folder_means_per_label_location_and_sequence(cohort):
    ref, pred, metadata = cohort

    result = evaluate_folder(ref, pred, LABELS, metadata, n_workers=2)

    table = result.per_case.set_index(["case", "label"])
    assert list(result.per_case.columns) == ["case", "label", "label_value", "dice", "iou", "hd95_mm", "asd_mm",
                                             "sequence", "location", "n_ref_voxels", "n_pred_voxels"]
    assert len(table) == 6 and result.labels == {"femur": 1, "tibia": 2}
    assert table.loc[("knee_002", "femur"), "dice"] == pytest.approx(0.8)
    assert table.loc[("spine_001", "tibia"), "dice"] == 0.0
    per_label = result.means_per_label.set_index("label")
    assert per_label.loc["femur", "dice"] == pytest.approx(14 / 15)
    assert per_label.loc["tibia", "dice"] == pytest.approx(2 / 3)
    assert per_label.loc["tibia", "n_cases"] == 3
    assert result.mean_foreground_dice == pytest.approx((14 / 15 + 2 / 3) / 2)
    per_location = result.means_per_location.set_index(["location", "label"])
    assert per_location.loc[("knee", "femur"), "dice"] == pytest.approx(0.9)
    assert per_location.loc[("spine", "tibia"), "dice"] == 0.0
    per_sequence = result.means_per_sequence.set_index(["sequence", "label"])
    assert per_sequence.loc[("T1", "tibia"), "dice"] == pytest.approx(0.5)
    assert per_sequence.loc[("PD", "femur"), "n_cases"] == 1
    by_location = result.foreground_means("location").set_index("location")
    assert by_location.loc["knee", "dice"] == pytest.approx((0.9 + 1.0) / 2)
    assert by_location.loc["spine", "n_cases"] == 1


def test_summary_files_round_trip_and_json_has_every_mean(cohort, tmp_path):
    ref, pred, metadata = cohort
    result = evaluate_folder(ref, pred, LABELS, metadata)

    csv_path, json_path = write(result, tmp_path / "out")

    assert len(pd.read_csv(csv_path)) == 6
    summary = json.loads(json_path.read_text())
    assert summary["mean_foreground_dice"] == pytest.approx(result.mean_foreground_dice)
    assert summary["means_per_label"]["femur"]["dice"] == pytest.approx(14 / 15)
    assert summary["means_per_location"]["knee"]["per_label"]["femur"]["dice"] == pytest.approx(0.9)
    assert summary["means_per_location"]["spine"]["foreground_mean"]["n_cases"] == 1
    assert summary["means_per_sequence"]["PD"]["per_label"]["tibia"]["dice"] == 1.0
    assert len(summary["per_case"]) == 6
    loaded = read_summary(tmp_path / "out")
    pd.testing.assert_frame_equal(loaded.per_case, result.per_case, check_dtype=False)
    assert loaded.labels == result.labels
    assert loaded.mean_foreground_dice == pytest.approx(result.mean_foreground_dice)


def test_labels_absent_from_both_maps_are_nan_and_left_out_of_means(tmp_path):
    both = label_map(slice(1, 7))  # no tibia anywhere
    rows = evaluate_case(both, both, GEOMETRY, LABELS, case="a")
    rows += evaluate_case(label_map(slice(1, 7), slice(2, 6)), label_map(slice(1, 7), slice(3, 6)), GEOMETRY,
                          LABELS, case="b")
    result = EvaluationResult.from_rows(rows, LABELS)

    tibia = result.means_per_label.set_index("label").loc["tibia"]
    assert tibia["dice"] == pytest.approx(2 * 3 / 7)  # case b only; case a is NaN
    assert (tibia["n_cases"], tibia["n_both_empty"]) == (2, 1)
    _, json_path = write(result, tmp_path)
    cells = {(r["case"], r["label"]): r for r in json.loads(json_path.read_text())["per_case"]}
    assert cells[("a", "tibia")]["dice"] is None  # NaN is written as null: valid JSON


def test_without_labels_every_value_found_is_evaluated(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    write_image(label_map(slice(1, 7), slice(2, 6)), GEOMETRY, ref / "a.nii.gz")
    write_image(label_map(slice(1, 7), slice(2, 6)), GEOMETRY, pred / "a.nii.gz")
    write_image(label_map(slice(1, 7)), GEOMETRY, ref / "b.nii.gz")
    write_image(label_map(slice(1, 7)).astype(np.float32), GEOMETRY, pred / "b.nii.gz")  # float file, whole values

    result = evaluate_folder(ref, pred)

    assert result.labels == {"label_1": 1, "label_2": 2}
    table = result.per_case.set_index(["case", "label"])
    assert table.loc[("a", "label_2"), "dice"] == 1.0
    assert math.isnan(table.loc[("b", "label_2"), "dice"])
    assert set(result.per_case["location"]) == {"unknown"}


def test_binary_predictions_are_scored_against_references_merged_by_the_plan_mapping(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    reference = label_map(slice(1, 7), slice(2, 6))  # two bones, values 1 and 2
    write_image(reference, GEOMETRY, ref / "a.nii.gz")
    write_image((reference > 0).astype(np.uint8), GEOMETRY, pred / "a.nii.gz")  # a binary model: all bone is 1

    merged = evaluate_folder(ref, pred, {"bone": 1}, reference_mapping={"1": 1, "2": 1})
    unmerged = evaluate_folder(ref, pred, {"bone": 1})

    assert merged.per_case["dice"].tolist() == [1.0]
    assert unmerged.per_case["dice"].iloc[0] < 1.0  # only the first bone's voxels would count as reference


def test_geometry_mismatch_names_the_case_and_what_differs(cohort):
    ref, pred, _ = cohort
    moved = Geometry(GEOMETRY.size, (0.5, 0.5, 3.3), GEOMETRY.origin_mm, GEOMETRY.direction)
    write_image(label_map(slice(1, 7)), moved, pred / "knee_002.nrrd")

    with pytest.raises(SabnetError, match=r"case knee_002 \(knee_002.nrrd\): spacing .*3\.3"):
        evaluate_folder(ref, pred, LABELS)


def test_missing_predictions_are_an_error_unless_allowed(cohort):
    ref, pred, _ = cohort
    (pred / "spine_001.nii.gz").unlink()

    with pytest.raises(SabnetError, match="no prediction for 1 of 3 case.*spine_001.*--allow-missing"):
        evaluate_folder(ref, pred, LABELS)
    result = evaluate_folder(ref, pred, LABELS, allow_missing=True)
    assert result.missing_cases == ["spine_001"]
    assert sorted(result.per_case["case"].unique()) == ["knee_001", "knee_002"]


def write_dataset(folder, metadata):
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": 0, "file_ending": ".nii.gz",
        "case_metadata": metadata}))
    return folder


def test_command_prints_means_and_writes_summaries(cohort, tmp_path, capsys):
    ref, pred, metadata = cohort
    dataset = write_dataset(tmp_path / "Dataset007_Bones", metadata)

    assert main(["-ref", str(ref), "-pred", str(pred), "-d", str(dataset)]) == 0

    out = capsys.readouterr().out
    assert "means per label" in out and "means per location" in out and "means per sequence" in out
    assert "femur" in out and f"{(14 / 15 + 2 / 3) / 2:.4f}" in out
    summary = json.loads((pred / "summary.json").read_text())
    assert set(summary["means_per_location"]) == {"knee", "spine"}
    assert (pred / "summary.csv").is_file()


def test_command_user_errors_exit_1_with_one_line(cohort, tmp_path, capsys):
    ref, pred, _ = cohort
    write_image(label_map(slice(1, 7))[:, :, :-1], Geometry((11, 10, 8), GEOMETRY.spacing_mm, GEOMETRY.origin_mm,
                                                           GEOMETRY.direction), pred / "knee_001.nii.gz")
    assert main(["-ref", str(ref), "-pred", str(pred), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "case knee_001" in err and "size" in err
    assert not (tmp_path / "out").exists()

    assert main(["-ref", str(tmp_path / "nowhere"), "-pred", str(pred)]) == 1
    assert "nowhere: not a folder" in capsys.readouterr().err
    write_image(label_map(slice(1, 7)).astype(np.float32) * 0.5, GEOMETRY, pred / "knee_001.nii.gz")
    assert main(["-ref", str(ref), "-pred", str(pred), "-o", str(tmp_path / "out")]) == 1
    assert "knee_001.nii.gz holds fractional" in capsys.readouterr().err
