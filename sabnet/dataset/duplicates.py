"""Identical images under different case ids, found by hashing voxels.

Real cohorts contain the same scan twice (exported twice, copied between studies). The
cross-validation split keeps each group of identical cases in one fold, so that no scan is in
training and validation at once. The hash covers each channel's voxels and shape, not the header
nor the voxel type: the same scan with a rewritten header, or stored as int16 and uint16, still
counts as the same.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np

from sabnet.dataset.raw_dataset import RawDataset
from sabnet.errors import SabnetError
from sabnet.io.image_io import read_image
from sabnet.parallel import map_cases


def new_digest():
    """A fresh hash object for one case's voxels."""
    return hashlib.blake2b(digest_size=16)


def group_duplicates(digests: dict[str, str]) -> list[list[str]]:
    """Groups (size > 1) of case ids sharing a digest; each group sorted, groups by first id."""
    groups: dict[str, list[str]] = defaultdict(list)
    for case_id, digest in digests.items():
        groups[digest].append(case_id)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def add_to_digest(digest, array: np.ndarray) -> None:
    """Add one channel (voxels and shape) of a case to its digest."""
    digest.update(np.asarray(array.shape, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(array).tobytes())


def _case_digest(image_files: tuple[Path, ...]) -> str:
    digest = new_digest()
    for path in image_files:
        add_to_digest(digest, read_image(path)[0])
    return digest.hexdigest()


def find_duplicate_cases(dataset: RawDataset | Path | str, n_workers: int = 1) -> list[list[str]]:
    """Training case ids whose images are identical (same digest as `verify_dataset` uses)."""
    if not isinstance(dataset, RawDataset):
        dataset = RawDataset.load(dataset)
    items = [(case.case_id, case.image_files) for case in dataset.training_cases()]
    outcomes = map_cases(_case_digest, items, n_workers=n_workers, desc="hashing images")
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        raise SabnetError(f"{failed[0].case_id}: {failed[0].error}; run sab_verify_dataset -d {dataset.root}")
    return group_duplicates({o.case_id: o.result for o in outcomes})
