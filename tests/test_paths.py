"""Where sabnet reads and writes, and how `-d` finds a dataset by id, name or path."""
import json

import pytest

from sabnet.errors import SabnetError
from sabnet.paths import Roots, resolve_dataset


def make_raw(folder):
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0},
                                                     "numTraining": 0, "file_ending": ".nii.gz"}))
    return folder


def test_by_id_and_by_name_in_the_raw_root(sabnet_roots):
    raw = make_raw(sabnet_roots / "raw" / "Dataset001_SpineVB3")
    make_raw(sabnet_roots / "raw" / "Dataset012_Knee")
    for spec in ("1", 1, "Dataset001_SpineVB3"):
        ref = resolve_dataset(spec)
        assert ref.name == "Dataset001_SpineVB3" and ref.raw_dir == raw and ref.dataset_id == 1
    assert ref.preprocessed_dir == sabnet_roots / "preprocessed" / "Dataset001_SpineVB3"
    assert ref.results_dir == sabnet_roots / "results" / "Dataset001_SpineVB3"


def test_by_path_anywhere_on_disk_without_copying(tmp_path, sabnet_roots, monkeypatch):
    cohort = make_raw(tmp_path / "elsewhere" / "knee_cohort")
    ref = resolve_dataset(str(cohort))
    assert ref.name == "knee_cohort" and ref.raw_dir == cohort.resolve() and ref.dataset_id is None
    assert ref.preprocessed_dir == sabnet_roots / "preprocessed" / "knee_cohort"
    assert not (sabnet_roots / "raw").exists()  # nothing copied into the raw root
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert resolve_dataset("knee_cohort").raw_dir == cohort.resolve()  # a relative path works too


def test_a_name_planned_from_a_path_finds_its_raw_folder_again(tmp_path, sabnet_roots):
    cohort = make_raw(tmp_path / "far" / "Dataset020_Hand")
    (sabnet_roots / "preprocessed" / "Dataset020_Hand").mkdir(parents=True)
    (sabnet_roots / "preprocessed" / "Dataset020_Hand" / "raw_location.txt").write_text(f"{cohort}\n")
    assert resolve_dataset("20").raw_dir == cohort
    assert resolve_dataset("Dataset020_Hand").raw_dir == cohort


def test_unknown_or_ambiguous_datasets_say_what_to_do(tmp_path, sabnet_roots):
    with pytest.raises(SabnetError, match=r"no dataset with id 7 under .*raw.*set SABNET_RAW"):
        resolve_dataset("7")
    with pytest.raises(SabnetError, match=r"dataset Dataset009_X not found: no .*Dataset009_X/dataset.json"):
        resolve_dataset("Dataset009_X")
    make_raw(sabnet_roots / "raw" / "Dataset003_A")
    make_raw(sabnet_roots / "raw" / "Dataset003_B")
    with pytest.raises(SabnetError, match="dataset id 3 is ambiguous: Dataset003_A, Dataset003_B"):
        resolve_dataset(3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SabnetError, match="not a raw dataset folder"):
        resolve_dataset(str(tmp_path / "empty"))


def test_default_roots_without_environment(tmp_path, monkeypatch):
    for key in ("SABNET_HOME", "SABNET_RAW", "SABNET_PREPROCESSED", "SABNET_RESULTS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    roots = Roots.from_environment()
    home = tmp_path / "me" / "sabnet_data"
    assert roots == Roots(raw=home / "raw", preprocessed=home / "preprocessed", results=home / "results")
    assert roots.describe() == f"sabnet roots: raw={home / 'raw'}  preprocessed={home / 'preprocessed'}  results={home / 'results'}"

    monkeypatch.setenv("SABNET_HOME", str(tmp_path / "lab"))
    monkeypatch.setenv("SABNET_RESULTS", str(tmp_path / "big_disk"))
    roots = Roots.from_environment()
    assert (roots.raw, roots.preprocessed, roots.results) == (
        tmp_path / "lab" / "raw", tmp_path / "lab" / "preprocessed", tmp_path / "big_disk")
