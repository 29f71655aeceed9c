"""Preprocess every training case of a cohort into the store, in worker processes.

Cases already up to date (same raw files, same plan settings) are skipped; a case that fails is
reported with its message and the others are kept.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sabnet.dataset.raw_dataset import RawCase, RawDataset
from sabnet.io.image_io import read_image
from sabnet.parallel import map_cases
from sabnet.planning.fingerprint import file_stamps
from sabnet.planning.plans import Plan
from sabnet.planning.slicing import slicing_for
from sabnet.preprocessing.case_preprocessing import foreground_locations, preprocess_arrays
from sabnet.preprocessing.store import PreprocessedStore

PREPROCESSING_VERSION = 1


@dataclass
class PreprocessingReport:
    written: list[str]
    skipped: list[str]
    failed: list[tuple[str, str]]


def case_stamp(case: RawCase, plan: Plan) -> str:
    """What a preprocessed case depends on: its raw files and the plan settings that shape it."""
    pp = asdict(plan.preprocessing)
    pp["cases"] = pp["cases"].get(case.case_id)
    content = {
        "version": PREPROCESSING_VERSION,
        "files": file_stamps(case),
        "preprocessing": pp,
        "labels": plan.labels,
        "label_mapping": plan.label_mapping,
        "sequence": case.sequence,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _preprocess_one(job: tuple[RawCase, Plan, str, str]) -> str:
    case, plan, store_folder, stamp = job
    channels, geometry = [], None
    for path in case.image_files:
        array, geometry = read_image(path)
        channels.append(array)
    labels = read_image(case.label_file)[0] if case.label_file else None
    slicing = plan.preprocessing.cases.get(case.case_id) or slicing_for(geometry, plan.preprocessing.majority_plane)
    result = preprocess_arrays(channels, geometry, labels, plan, slicing, case.sequence)
    result.properties.update(location=case.location, subject=case.subject)
    rng = np.random.default_rng(zlib.crc32(case.case_id.encode()))
    foreground = foreground_locations(result.labels, rng) if result.labels is not None else None
    PreprocessedStore(Path(store_folder)).write(case.case_id, result, stamp, foreground)
    return case.case_id


def preprocess_dataset(dataset: RawDataset, plan: Plan, store: PreprocessedStore, n_workers: int = 1,
                       case_ids: list[str] | None = None) -> PreprocessingReport:
    """Preprocess the training cases (all, or `case_ids`) that are not already up to date."""
    store.remove_leftovers()
    cases = [c for c in dataset.training_cases() if case_ids is None or c.case_id in case_ids]
    todo, skipped = [], []
    for case in cases:
        try:
            stamp = case_stamp(case, plan)
        except FileNotFoundError as e:
            todo.append((case.case_id, (case, plan, str(store.folder), f"missing:{e}")))
            continue
        if store.stamp(case.case_id) == stamp:
            skipped.append(case.case_id)
        else:
            todo.append((case.case_id, (case, plan, str(store.folder), stamp)))
    outcomes = map_cases(_preprocess_one, todo, n_workers, desc="preprocess")
    return PreprocessingReport(
        written=[o.case_id for o in outcomes if not o.error],
        skipped=skipped,
        failed=[(o.case_id, o.error) for o in outcomes if o.error],
    )
