"""make_phantom_dataset: an nnU-Net raw dataset of phantoms, deterministic, with its truth."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from sabnet.dataset.raw_dataset import RawDataset
from sabnet.errors import SabnetError
from sabnet.io.image_io import read_image
from sabnet.phantoms.cohort import BONES, LOCATIONS, make_phantom_dataset

SMALL = dict(in_plane_size=48, n_slices=10, in_plane_spacing_mm=(4.0, 4.0), slice_spacing_mm=(4.0, 4.0))


def _arrays(dataset, folder="imagesTr"):
    return {p.name: read_image(p)[0] for p in sorted((dataset / folder).iterdir())}


def test_same_seed_gives_identical_volumes_and_another_seed_does_not(tmp_path):
    kwargs = dict(locations=["knee", "hand"], sequences=["T1", "STIR"], n_cases=3, **SMALL)
    first = make_phantom_dataset(tmp_path / "a", seed=7, **kwargs)
    again = make_phantom_dataset(tmp_path / "b", seed=7, n_workers=2, **kwargs)
    other = make_phantom_dataset(tmp_path / "c", seed=8, **kwargs)
    for folder in ("imagesTr", "labelsTr"):
        a, b, c = _arrays(first, folder), _arrays(again, folder), _arrays(other, folder)
        assert list(a) == list(b) == list(c)
        for name in a:
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
        assert any(a[n].shape != c[n].shape or not np.array_equal(a[n], c[n]) for n in a)
    assert (first / "phantom_truth.json").read_text() == (again / "phantom_truth.json").read_text()


def test_every_location_writes_its_bones_with_one_id_per_bone_name(tmp_path):
    # n_slices left to the generator: the slices cover each location's anatomy
    dataset = make_phantom_dataset(tmp_path, LOCATIONS, ["T1"], n_cases=len(LOCATIONS), seed=1, in_plane_size=48,
                                   in_plane_spacing_mm=(4.0, 4.0), slice_spacing_mm=(4.0, 4.0))
    meta = json.loads((dataset / "dataset.json").read_text())
    labels = meta["labels"]
    assert labels["background"] == 0
    assert sorted(labels.values()) == list(range(len(labels)))           # consecutive, as nnU-Net needs
    declared = {bone for location in LOCATIONS for bone in BONES[location]}
    assert set(labels) - {"background"} == declared                      # femur once for knee and hip
    truth = json.loads((dataset / "phantom_truth.json").read_text())["cases"]
    assert sorted(e["location"] for e in truth.values()) == sorted(LOCATIONS)
    for case_id, entry in truth.items():
        label_map, _ = read_image(dataset / "labelsTr" / f"{case_id}.nii.gz")
        present = set(np.unique(label_map)) - {0}
        expected = {labels[b] for b in BONES[entry["location"]]}
        assert present == expected, (entry["location"], present, expected)
        assert entry["bones"] == list(BONES[entry["location"]])
        for bone in BONES[entry["location"]]:
            assert (label_map == labels[bone]).sum() >= 10, (entry["location"], bone)
    assert meta["numTraining"] == len(LOCATIONS) and meta["file_ending"] == ".nii.gz"
    assert meta["channel_names"] == {"0": "MRI"}


def test_dataset_metadata_test_split_and_truth(tmp_path):
    dataset = make_phantom_dataset(tmp_path, ["lumbar_spine", "hip"], ["T2", "PD"], n_cases=4, seed=3,
                                   n_test_cases=2, dataset_name="Dataset901_Bones", **SMALL)
    assert dataset == tmp_path / "Dataset901_Bones"
    raw = RawDataset.load(dataset)
    assert raw.num_training == 4 and raw.labels == {"background": 0, "L1": 1, "L2": 2, "L3": 3, "L4": 4, "L5": 5,
                                                    "femur": 6, "pelvis": 7}
    assert raw.case_ids() == ["phantom_000", "phantom_001", "phantom_002", "phantom_003"]
    assert raw.case_ids("imagesTs") == ["phantom_004", "phantom_005"]
    assert (dataset / "labelsTs" / "phantom_005.nii.gz").is_file()
    # subjects cycle through locations, then sequences
    assert [(raw.metadata(c)["location"], raw.metadata(c)["sequence"]) for c in raw.case_ids()] == [
        ("lumbar_spine", "T2"), ("hip", "T2"), ("lumbar_spine", "PD"), ("hip", "PD")]
    truth = json.loads((dataset / "phantom_truth.json").read_text())
    entry = truth["cases"]["phantom_004"]
    assert entry["split"] == "test" and entry["subject"] == "subject_004"
    image, geometry = read_image(dataset / "imagesTs" / "phantom_004_0000.nii.gz")
    assert image.dtype == np.int16 and image.min() >= 0 and image.max() > 100
    assert list(geometry.axis_spacing_mm) == pytest.approx(entry["axis_spacing_mm"])
    assert entry["geometry"]["size"] == list(geometry.size)
    assert truth["pairs"] == []


def test_paired_second_case_is_the_first_moved_by_the_recorded_transform(tmp_path):
    dataset = make_phantom_dataset(tmp_path, ["knee"], ["T1", "T2"], n_cases=1, seed=5, paired=True,
                                   in_plane_spacing_mm=(1.5, 1.5), slice_spacing_mm=(1.5, 1.5), in_plane_size=64,
                                   n_slices=40, planes=["oblique"])
    truth = json.loads((dataset / "phantom_truth.json").read_text())
    (pair,) = truth["pairs"]
    assert (pair["first"], pair["second"]) == ("phantom_000_1", "phantom_000_2")
    assert [truth["cases"][c]["sequence"] for c in (pair["first"], pair["second"])] == ["T1", "T2"]
    assert RawDataset.load(dataset).metadata("phantom_000_2")["subject"] == "subject_000"
    first = sitk.ReadImage(str(dataset / "labelsTr" / "phantom_000_1.nii.gz"))
    second = sitk.ReadImage(str(dataset / "labelsTr" / "phantom_000_2.nii.gz"))

    motion = sitk.Euler3DTransform(pair["center_mm"], *np.radians(pair["rotation_deg"]), pair["translation_mm"])
    motion.SetComputeZYX(True)
    assert np.allclose(np.reshape(motion.GetMatrix(), (3, 3)), pair["transform"]["matrix"])
    x1 = np.array([10.0, -20.0, 30.0])
    x2 = np.array(pair["transform"]["matrix"]) @ x1 + pair["transform"]["offset_mm"]
    assert np.allclose(motion.TransformPoint(x1.tolist()), x2)
    assert max(abs(a) for a in pair["rotation_deg"]) > 0.5

    def resampled(image):  # the first case seen on the second grid, where the first grid reaches
        return sitk.GetArrayFromImage(sitk.Resample(image, second, motion.GetInverse(), sitk.sitkLinear, 0))

    seen = resampled(sitk.Cast(first * 0 + 1, sitk.sitkFloat32)) > 0.999
    moved = (resampled(sitk.Cast(first > 0, sitk.sitkFloat32)) > 0.5) & seen
    still = (sitk.GetArrayFromImage(first) > 0) & seen
    target = (sitk.GetArrayFromImage(second) > 0) & seen
    dice = lambda a, b: 2 * (a & b).sum() / (a.sum() + b.sum())  # noqa: E731
    assert dice(moved, target) > 0.97
    assert dice(still, target) < 0.9      # the motion is real: without it the labels do not match


@pytest.mark.parametrize("bad, message", [
    (dict(locations=["elbow"]), "unknown location elbow"),
    (dict(sequences=["FLAIR"]), "unknown sequence FLAIR"),
    (dict(planes=["diagonal"]), "unknown plane diagonal"),
    (dict(n_cases=0), "at least one case"),
    (dict(slice_spacing_mm=(0.0, 3.0)), "slice spacing"),
    (dict(dataset_name="phantoms"), "DatasetNNN_Name"),
])
def test_bad_arguments_raise_one_clear_error(tmp_path, bad, message):
    kwargs = dict(locations=["knee"], n_cases=1, **SMALL)
    kwargs.update(bad)
    with pytest.raises(SabnetError, match=message):
        make_phantom_dataset(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())
