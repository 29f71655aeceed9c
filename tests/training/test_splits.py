"""Cross-validation splits: grouping by subject and identical images, balance, the user's own file."""
import json
from collections import Counter

import pytest

from sabnet.errors import SabnetError
from sabnet.training.splits import SPLITS_FILE, case_groups, fold_cases, load_or_create_splits, make_splits


def cohort():
    """57 cases: 3 locations x 2 sequences of singletons, plus subjects scanned several times."""
    cases = []
    for location, sequence, n in [("knee", "T1", 12), ("knee", "PD", 9), ("spine", "T2", 11),
                                  ("spine", "T1", 7), ("hip", "STIR", 6), ("hip", "T1", 3)]:
        for i in range(n):
            case_id = f"{location}_{sequence}_{i:02d}"
            cases.append({"case_id": case_id, "subject": case_id, "sequence": sequence, "location": location})
    # Subject s1 has a T1 and a PD knee scan, s2 three spine scans, s3 a hip and a knee scan.
    for case_id, subject, sequence, location in [
            ("s1_t1", "s1", "T1", "knee"), ("s1_pd", "s1", "PD", "knee"),
            ("s2_a", "s2", "T2", "spine"), ("s2_b", "s2", "T2", "spine"), ("s2_c", "s2", "T1", "spine"),
            ("s3_hip", "s3", "T1", "hip"), ("s3_knee", "s3", "T1", "knee"), ("s4", "s4", "T2", "spine")]:
        cases.append({"case_id": case_id, "subject": subject, "sequence": sequence, "location": location})
    return cases


DUPLICATES = [["knee_T1_00", "knee_T1_05"], ["s4", "spine_T2_03"]]  # identical images under two ids


def fold_of(splits):
    return {case_id: k for k, split in enumerate(splits) for case_id in split["val"]}


def test_every_case_is_validated_exactly_once_and_trained_on_in_the_other_folds():
    cases = cohort()
    splits = make_splits(cases, n_folds=5, seed=1, duplicate_groups=DUPLICATES)
    assert len(splits) == 5
    validated = Counter(i for s in splits for i in s["val"])
    assert set(validated) == {c["case_id"] for c in cases} and set(validated.values()) == {1}
    for split in splits:
        assert not set(split["train"]) & set(split["val"])
        assert len(split["train"]) + len(split["val"]) == len(cases)


def test_subjects_and_identical_images_never_straddle_training_and_validation():
    cases = cohort()
    splits = make_splits(cases, n_folds=5, seed=7, duplicate_groups=DUPLICATES)
    fold = fold_of(splits)
    together = [["s1_t1", "s1_pd"], ["s2_a", "s2_b", "s2_c"], ["s3_hip", "s3_knee"], *DUPLICATES]
    for group in together:
        assert len({fold[i] for i in group}) == 1, group
    # s4 is joined to spine_T2_03 by identical images: the union keeps all of them in one fold.
    assert ["s4", "spine_T2_03"] in case_groups(cases, DUPLICATES)


def test_each_location_and_sequence_is_spread_over_the_folds_within_one_case():
    # Only single-case groups, so the balance can be exact (+-1 per stratum).
    cases = [c for c in cohort() if not c["case_id"][:2] in ("s1", "s2", "s3", "s4")]
    for seed in range(10):
        splits = make_splits(cases, n_folds=5, seed=seed)
        fold = fold_of(splits)
        strata = Counter((c["location"], c["sequence"]) for c in cases)
        for stratum in strata:
            per_fold = Counter(fold[c["case_id"]] for c in cases if (c["location"], c["sequence"]) == stratum)
            counts = [per_fold.get(k, 0) for k in range(5)]
            assert max(counts) - min(counts) <= 1, (stratum, counts)
        sizes = [len(s["val"]) for s in splits]
        assert max(sizes) - min(sizes) <= 1, sizes


def test_balance_holds_roughly_with_multi_case_subjects():
    splits = make_splits(cohort(), n_folds=5, seed=3, duplicate_groups=DUPLICATES)
    sizes = [len(s["val"]) for s in splits]
    assert max(sizes) - min(sizes) <= 3  # the largest group has 3 cases


def test_the_same_seed_gives_the_same_splits_and_another_seed_other_splits():
    cases = cohort()
    assert make_splits(cases, 5, 42, DUPLICATES) == make_splits(list(reversed(cases)), 5, 42, DUPLICATES)
    assert make_splits(cases, 5, 42, DUPLICATES) != make_splits(cases, 5, 43, DUPLICATES)


def test_fewer_independent_groups_than_folds_is_refused_with_the_folds_it_can_give():
    cases = [{"case_id": f"c{i}", "subject": f"p{i % 3}", "sequence": "T1", "location": "knee"} for i in range(9)]
    with pytest.raises(SabnetError, match="only 3.*use at most 3 folds"):
        make_splits(cases, n_folds=5)
    assert len(make_splits(cases, n_folds=3)) == 3


def test_splits_are_written_once_and_then_read_back(tmp_path):
    cases = cohort()
    splits = load_or_create_splits(tmp_path, cases, raw_dir=None, n_folds=5, seed=5)
    assert json.loads((tmp_path / SPLITS_FILE).read_text()) == splits
    assert load_or_create_splits(tmp_path, cases, None, n_folds=5, seed=99) == splits  # the file wins


def test_a_users_own_splits_file_is_used_as_given(tmp_path):
    cases = cohort()[:6]
    ids = [c["case_id"] for c in cases]
    own = [{"train": ids[:4], "val": ids[4:]}, {"train": ids[2:], "val": ids[:2]}]  # two folds, their choice
    (tmp_path / SPLITS_FILE).write_text(json.dumps(own))
    splits = load_or_create_splits(tmp_path, cases, None)
    assert splits == own
    assert fold_cases(splits, 1) == (ids[2:], ids[:2])
    with pytest.raises(SabnetError, match="fold 2 does not exist.*2 folds"):
        fold_cases(splits, 2)


def test_a_splits_file_naming_unknown_cases_is_refused_naming_the_file(tmp_path):
    cases = cohort()[:6]
    ids = [c["case_id"] for c in cases]
    (tmp_path / SPLITS_FILE).write_text(json.dumps([{"train": ids[:5], "val": [ids[5], "ghost_case"]}]))
    with pytest.raises(SabnetError, match=rf"{SPLITS_FILE}.*ghost_case.*delete the file"):
        load_or_create_splits(tmp_path, cases, None)
    (tmp_path / SPLITS_FILE).write_text(json.dumps({"train": ids}))
    with pytest.raises(SabnetError, match=rf"{SPLITS_FILE}: must be a list"):
        load_or_create_splits(tmp_path, cases, None)


def test_identical_images_in_the_raw_folder_are_found_and_kept_together(tmp_path):
    import numpy as np
    import SimpleITK as sitk

    raw = tmp_path / "Dataset900_Dup"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    volumes = [rng.integers(0, 100, (4, 6, 6)).astype(np.int16) for _ in range(6)]
    volumes[5] = volumes[0].copy()  # case_5 is case_0 exported again
    for i, volume in enumerate(volumes):
        sitk.WriteImage(sitk.GetImageFromArray(volume), str(raw / "imagesTr" / f"case_{i}_0000.nii.gz"))
        labels = sitk.GetImageFromArray((volume > 50).astype(np.uint8))
        sitk.WriteImage(labels, str(raw / "labelsTr" / f"case_{i}.nii.gz"))
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "bone": 1},
                                                  "numTraining": 6, "file_ending": ".nii.gz"}))
    cases = [{"case_id": f"case_{i}", "subject": f"case_{i}", "sequence": "T1", "location": "knee"} for i in range(6)]
    for seed in range(4):
        (tmp_path / "pp" / SPLITS_FILE).unlink(missing_ok=True)
        fold = fold_of(load_or_create_splits(tmp_path / "pp", cases, raw, n_folds=5, seed=seed))
        assert fold["case_0"] == fold["case_5"]
