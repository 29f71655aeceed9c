"""Five-fold cross-validation splits (`splits_final.json`), made once per cohort.

Cases are first joined into groups that must not be separated: all cases of one subject
(`case_metadata.subject`) and every set of identical images (`find_duplicate_cases`), joined
transitively (union-find). Whole groups are then dealt to folds, largest first, each to the fold
that holds the fewest cases of the group's (location, sequence) strata so far, ties broken by the
fold's size and then at random (seeded); groups of one size are dealt one stratum after another.
A stratum of single-case groups therefore spreads over the folds within +-1, and the folds'
sizes stay within about a group's size of each other.

Fewer independent groups than folds is refused (a fold would have no validation case): the
message says how many folds the cohort can give.

The file is nnU-Net's format, a list of {"train": [ids], "val": [ids]}, so a user's own
`splits_final.json` (nnU-Net's included) is used exactly as given.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from sabnet.errors import SabnetError
from sabnet.io.atomic import read_json, write_json

SPLITS_FILE = "splits_final.json"


def case_groups(cases: list[dict], duplicate_groups: Sequence[Sequence[str]] = ()) -> list[list[str]]:
    """Case ids joined by shared subject or identical images; each group sorted, groups sorted."""
    ids = [c["case_id"] for c in cases]
    parent = {i: i for i in ids}

    def root(i: str) -> str:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(a: str, b: str) -> None:
        parent[root(a)] = root(b)

    first_of_subject: dict[str, str] = {}
    for case in cases:
        subject = str(case.get("subject") or "")
        if subject:
            join(case["case_id"], first_of_subject.setdefault(subject, case["case_id"]))
    for group in duplicate_groups:
        known = [i for i in group if i in parent]
        for other in known[1:]:
            join(other, known[0])
    groups: dict[str, list[str]] = {}
    for i in ids:
        groups.setdefault(root(i), []).append(i)
    return sorted(sorted(g) for g in groups.values())


def make_splits(cases: list[dict], n_folds: int = 5, seed: int = 12345,
                duplicate_groups: Sequence[Sequence[str]] = ()) -> list[dict]:
    """cases: [{"case_id", "subject", "sequence", "location"}] -> [{"train": [ids], "val": [ids]}] * n_folds.

    Whole groups (same subject, identical images) go to one fold; folds are balanced over
    (location, sequence) strata and in size; the same seed gives the same splits.
    """
    ids = [c["case_id"] for c in cases]
    if len(set(ids)) != len(ids):
        doubled = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise SabnetError(f"case ids occur twice: {', '.join(doubled[:5])}; case ids must be unique")
    if n_folds < 2:
        raise SabnetError(f"cross-validation needs at least 2 folds, got n_folds={n_folds}")
    groups = case_groups(cases, duplicate_groups)
    if len(groups) < n_folds:
        raise SabnetError(
            f"{n_folds} folds need at least {n_folds} independent groups of cases, but the {len(ids)} cases form only "
            f"{len(groups)} (cases of one subject, and identical images, always stay together); "
            f"use at most {len(groups)} folds" + (" or add cases" if len(groups) < 2 else ""))

    stratum = {c["case_id"]: (str(c.get("location", "")), str(c.get("sequence", ""))) for c in cases}
    strata = sorted(set(stratum.values()))
    column = {s: k for k, s in enumerate(strata)}
    counts = np.zeros((n_folds, len(strata)), dtype=np.int64)  # cases per fold and stratum
    sizes = np.zeros(n_folds, dtype=np.int64)
    rng = np.random.default_rng(seed)
    stratum_rank = dict(zip(strata, rng.permutation(len(strata)).tolist()))
    main_stratum = [Counter(stratum[i] for i in g).most_common(1)[0][0] for g in groups]
    # Largest groups first; then one stratum after another, so that each stratum's remainder
    # lands on the folds that are smallest at that moment; random within a stratum.
    order = sorted(rng.permutation(len(groups)), key=lambda g: (-len(groups[g]), stratum_rank[main_stratum[g]]))
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    for g in order:
        group_counts = np.zeros(len(strata), dtype=np.int64)
        for case_id in groups[g]:
            group_counts[column[stratum[case_id]]] += 1
        crowding = counts @ group_counts  # how full each fold already is in this group's strata
        tie_break = rng.random(n_folds)
        fold = min(range(n_folds), key=lambda f: (crowding[f], sizes[f], tie_break[f]))
        folds[fold].extend(groups[g])
        counts[fold] += group_counts
        sizes[fold] += len(groups[g])
    return [{"train": sorted(i for f, fold in enumerate(folds) if f != k for i in fold), "val": sorted(folds[k])}
            for k in range(n_folds)]


def load_or_create_splits(preprocessed_dir: Path, cases: list[dict], raw_dir: Path | None,
                          n_folds: int = 5, seed: int = 12345) -> list[dict]:
    """The cohort's splits: `preprocessed_dir/splits_final.json` as given when it exists (every id in
    it must be one of `cases`), else new splits (identical images found in `raw_dir` when given),
    written atomically to that file."""
    path = Path(preprocessed_dir) / SPLITS_FILE
    if path.is_file():
        splits = read_json(path)
        _check_splits(splits, {c["case_id"] for c in cases}, path)
        return splits
    duplicates: list[list[str]] = []
    if raw_dir is not None:
        from sabnet.dataset.duplicates import find_duplicate_cases

        duplicates = find_duplicate_cases(raw_dir)
    splits = make_splits(cases, n_folds, seed, duplicates)
    write_json(path, splits)
    return splits


def fold_cases(splits: list[dict], fold: int) -> tuple[list[str], list[str]]:
    """(training ids, validation ids) of `fold`."""
    if not 0 <= int(fold) < len(splits):
        raise SabnetError(f"fold {fold} does not exist: the splits have {len(splits)} folds (0..{len(splits) - 1})")
    split = splits[int(fold)]
    return list(split["train"]), list(split["val"])


def _check_splits(splits, known_ids: set[str], path: Path) -> None:
    shape_ok = isinstance(splits, list) and splits and all(
        isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("val"), list) for s in splits)
    if not shape_ok:
        raise SabnetError(f"{path}: must be a list of {{\"train\": [case ids], \"val\": [case ids]}}, one per fold; "
                          "fix it, or delete it to have sabnet make new splits")
    used = {i for s in splits for i in s["train"] + s["val"]}
    unknown = sorted(str(i) for i in used - known_ids)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise SabnetError(f"{path}: case ids not in the preprocessed dataset: {shown}; fix the ids, "
                          "or delete the file to have sabnet make new splits")
