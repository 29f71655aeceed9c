"""sab_convert_dicom: a folder of DICOM studies becomes a raw dataset that verifies cleanly."""
import json

import numpy as np
import pytest
from conftest import write_dicom_series
from scipy.spatial.transform import Rotation

from sabnet.cli.convert_dicom import main
from sabnet.dataset.convert_dicom import convert_dicom, find_series, make_case_id
from sabnet.dataset.raw_dataset import RawDataset
from sabnet.dataset.verify import verify_dataset
from sabnet.io.geometry import Geometry
from sabnet.io.image_io import read_image, write_image

GEOMETRY = Geometry(size=(10, 8, 5), spacing_mm=(0.6, 0.6, 4.0), origin_mm=(-30.0, 15.5, 60.0),
                    direction=Rotation.from_euler("xyz", [12, 0, -18], degrees=True).as_matrix().ravel())


def series_tags(uid, patient, number, description, tr="550", te="12", **extra):
    return {"0020|000e": uid, "0020|000d": uid + ".0", "0010|0020": patient, "0020|0011": number,
            "0008|103e": description, "0018|0080": tr, "0018|0081": te, **extra}


@pytest.fixture
def studies(tmp_path):
    """Two patients, four volumes (one named like another), a localiser-like single slice, a text file."""
    root = tmp_path / "studies"
    rng = np.random.default_rng(5)
    volumes = {}
    for folder, tags in [
        ("P1/t1", series_tags("1.2.5.1", "P1", "3", "sag T1 knee")),
        ("P1/t2", series_tags("1.2.5.2", "P1", "4", "sag", tr="4000", te="90", **{"0018|0015": "KNEE"})),
        ("P2/x", series_tags("1.2.5.3", "P2", "3", "sag T1 knee")),
        ("P2/again", series_tags("1.2.5.4", "P2", "3", "sag T1 knee")),
    ]:
        volumes[folder] = rng.integers(0, 900, GEOMETRY.shape).astype(np.int16)
        write_dicom_series(root / folder, volumes[folder], GEOMETRY, tags)
    write_dicom_series(root / "P2/scout", np.zeros((1, 8, 10), np.int16), GEOMETRY, series_tags("1.2.5.9", "P2", "1", "scout"))
    (root / "P2" / "notes.txt").write_text("not DICOM")
    return root, volumes


def label_on_grid(value=1, geometry=GEOMETRY):
    label = np.zeros(geometry.shape, np.uint8)
    label[1:4, 2:6, 3:8] = value
    return label


def test_series_become_cases_with_metadata_and_labels(studies, tmp_path):
    root, volumes = studies
    labels = tmp_path / "labels"
    write_image(label_on_grid(), GEOMETRY, labels / "1.2.5.1.nii.gz")  # by SeriesInstanceUID
    write_image(label_on_grid(), GEOMETRY, labels / "x.nrrd")  # by the series' folder name
    small = Geometry(size=(4, 4, 4), spacing_mm=(1, 1, 1), origin_mm=(0, 0, 0), direction=np.eye(3).ravel())
    write_image(np.zeros(small.shape, np.uint8), small, labels / "P1_s4_sag.nii.gz")  # by case id, wrong grid
    write_image(np.zeros(small.shape, np.uint8), small, labels / "nobody.nii.gz")

    out = tmp_path / "Dataset005_Knee"
    result = convert_dicom(root, out, labels_dir=labels)

    assert [(c.case_id, c.split) for c in result.cases] == [
        ("P1_s3_sag-T1-knee", "imagesTr"), ("P1_s4_sag", "imagesTs"),
        ("P2_s3_sag-T1-knee", "imagesTs"), ("P2_s3_sag-T1-knee-2", "imagesTr"),  # P2/again sorts before P2/x
    ]
    skipped = "\n".join(result.skipped)
    assert "P2/scout (series 1.2.5.9): DICOM series 1.2.5.9 has a single slice" in skipped
    assert "P1_s4_sag.nii.gz: label map is not on the series' grid" in skipped and "written to imagesTs" in skipped
    assert "nobody.nii.gz: label map matches no series" in skipped and len(result.skipped) == 3

    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["name"] == "Dataset005_Knee" and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "bone": 1} and meta["channel_names"] == {"0": "MRI"}
    assert meta["case_metadata"]["P1_s3_sag-T1-knee"] == {"sequence": "T1", "location": "knee", "subject": "P1"}
    assert meta["case_metadata"]["P1_s4_sag"] == {"sequence": "T2", "location": "knee", "subject": "P1"}
    assert meta["dicom_sources"]["P2_s3_sag-T1-knee-2"]["series_uid"] == "1.2.5.3"
    assert meta["dicom_sources"]["P2_s3_sag-T1-knee-2"]["folder"] == str((root / "P2" / "x").resolve())

    image, geometry = read_image(out / "imagesTr" / "P2_s3_sag-T1-knee-2_0000.nii.gz")
    np.testing.assert_array_equal(image, volumes["P2/x"])
    dicom_geometry = read_image(root / "P2" / "x")[1]
    assert geometry.matches(dicom_geometry, spacing_rtol=1e-6, origin_atol_mm=1e-5, direction_atol=1e-6)
    label, label_geometry = read_image(out / "labelsTr" / "P2_s3_sag-T1-knee-2.nii.gz")
    np.testing.assert_array_equal(label, label_on_grid())
    assert label_geometry == geometry

    dataset = RawDataset.load(out)
    assert dataset.metadata("P1_s4_sag")["sequence"] == "T2" and len(dataset.test_cases()) == 2
    report = verify_dataset(out)
    assert report.ok and report.n_training == 2 and report.n_test == 2, [str(p) for p in report.problems]


def test_without_labels_everything_goes_to_imagests(studies, tmp_path, capsys):
    root, _ = studies
    out = tmp_path / "unlabelled"
    assert main([str(root), str(out), "--name", "Dataset006_KneeTest"]) == 0
    printed = capsys.readouterr().out
    assert "4 case(s) written (0 labelled in imagesTr, 4 in imagesTs), 1 skipped" in printed
    assert "imagesTs/P1_s4_sag_0000: T2, knee, subject P1" in printed
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 0 and meta["name"] == "Dataset006_KneeTest"
    assert sorted(p.name for p in (out / "imagesTs").iterdir())[0] == "P1_s3_sag-T1-knee_0000.nii.gz"
    assert not (out / "imagesTr").exists()


def test_multi_valued_labels_are_declared(studies, tmp_path):
    root, _ = studies
    labels = tmp_path / "labels"
    label = label_on_grid()
    label[0, 0, 0] = 4
    write_image(label, GEOMETRY, labels / "1.2.5.1.nii.gz")
    convert_dicom(root, tmp_path / "out", labels_dir=labels)
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "label_1": 1, "label_4": 4}


def test_user_errors_are_one_line(studies, tmp_path, capsys):
    root, _ = studies
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert main([str(root), str(tmp_path / "full")]) == 1
    (tmp_path / "nodicom").mkdir()
    assert main([str(tmp_path / "nodicom"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sab_convert_dicom: error: {tmp_path / 'full'}: exists and is not empty; give a new folder for the dataset",
                   f"sab_convert_dicom: error: {tmp_path / 'nodicom'}: no DICOM series found in it or its subfolders"]
    assert not (tmp_path / "out").exists()


def test_case_ids_are_safe_and_unique():
    taken = set()
    tags = {"patient_id": "../Doe, John", "series_number": "7", "series_description": "T1 / sag (fs)"}
    first = make_case_id(tags, None, taken)
    assert first == "Doe-John_s7_T1-sag-fs"
    assert make_case_id(tags, None, taken) == "Doe-John_s7_T1-sag-fs-2"


def test_find_series_walks_subfolders(studies):
    root, _ = studies
    found = find_series(root)
    assert [(s.folder.relative_to(root).as_posix(), s.series_uid) for s in found] == [
        ("P1/t1", "1.2.5.1"), ("P1/t2", "1.2.5.2"), ("P2/again", "1.2.5.4"), ("P2/scout", "1.2.5.9"), ("P2/x", "1.2.5.3")]
