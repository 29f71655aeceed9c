"""The dataset fingerprint: what each case of a cohort is, and what the cohort is overall.

Written as `dataset_fingerprint.json` (per case: geometry, acquisition plane, nonzero box,
intensity percentiles, foreground statistics, sequence, location, voxels per label; summaries
overall, per sequence and per location) and `dataset_fingerprint.csv` (one row per case).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from sabnet.dataset.raw_dataset import RawCase, RawDataset
from sabnet.errors import SabnetError
from sabnet.io.atomic import atomic_path, read_json, write_json
from sabnet.io.geometry import acquisition_plane
from sabnet.io.image_io import read_image
from sabnet.parallel import map_cases

FINGERPRINT_VERSION = 1
PERCENTILES = (0.5, 50.0, 99.5)


def nonzero_box(channels: list[np.ndarray]) -> list[list[int]]:
    """[lo, hi) per array axis of the voxels that are nonzero in any channel (whole image if none)."""
    mask = np.zeros(channels[0].shape, dtype=bool)
    for c in channels:
        mask |= c != 0
    if not mask.any():
        return [[0, n] for n in mask.shape]
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def file_stamps(case: RawCase) -> dict[str, list[float]]:
    """Size and modification time of each file of a case, to tell when a case has changed."""
    stamps = {}
    for path in list(case.image_files) + ([case.label_file] if case.label_file else []):
        st = Path(path).stat()
        stamps[str(path)] = [st.st_size, st.st_mtime]
    return stamps


def case_fingerprint(case: RawCase) -> dict:
    """The fingerprint of one case (reads its images and label map once)."""
    channels, geometry = [], None
    for path in case.image_files:
        array, geometry = read_image(path)
        channels.append(array)
    labels = read_image(case.label_file)[0] if case.label_file and Path(case.label_file).exists() else None
    slice_axis, plane = acquisition_plane(geometry)
    spacing = list(geometry.axis_spacing_mm)
    in_plane = [spacing[a] for a in range(3) if a != slice_axis] if slice_axis >= 0 else spacing[1:]
    intensity, foreground = [], []
    fg_mask = labels > 0 if labels is not None else None
    for array in channels:
        values = array.astype(np.float32, copy=False)
        if not np.isfinite(values).all():
            raise SabnetError(f"{case.image_files[0]}: holds NaN or Inf intensities; run sab_verify_dataset")
        q = np.percentile(values, PERCENTILES)
        intensity.append({f"p{p:g}": float(v) for p, v in zip(PERCENTILES, q)})
        fg = values[fg_mask] if fg_mask is not None and fg_mask.any() else values
        foreground.append({"mean": float(fg.mean()), "std": float(fg.std())})
    voxels_per_label = {}
    if labels is not None:
        counts = np.bincount(labels.ravel().astype(np.int64)) if labels.min() >= 0 else None
        if counts is None:
            values, counts = np.unique(labels, return_counts=True)
        else:
            values = np.arange(len(counts))
        voxels_per_label = {str(int(v)): int(c) for v, c in zip(values, counts) if v != 0 and c > 0}
    return {
        "case_id": case.case_id,
        "sequence": case.sequence,
        "location": case.location,
        "subject": case.subject,
        "shape": list(geometry.shape),
        "spacing_mm": spacing,
        "geometry": geometry.to_dict(),
        "slice_axis": slice_axis,
        "plane": plane,
        "in_plane_spacing_mm": in_plane,
        "slice_spacing_mm": spacing[slice_axis] if slice_axis >= 0 else spacing[0],
        "nonzero_box": nonzero_box(channels),
        "intensity": intensity,
        "foreground": foreground,
        "voxels_per_label": voxels_per_label,
        "files": file_stamps(case),
    }


def _group_summary(cases: list[dict]) -> dict:
    fov = [max(n * s for n, s in zip(c["shape"], c["spacing_mm"]) if True) for c in cases]
    return {
        "n_cases": len(cases),
        "planes": dict(Counter(c["plane"] for c in cases)),
        "median_in_plane_spacing_mm": float(np.median([s for c in cases for s in c["in_plane_spacing_mm"]])),
        "median_slice_spacing_mm": float(np.median([c["slice_spacing_mm"] for c in cases])),
        "median_shape": [int(v) for v in np.median([c["shape"] for c in cases], axis=0)],
        "median_largest_extent_mm": float(np.median(fov)),
        "median_intensity_p50": float(np.median([c["intensity"][0]["p50"] for c in cases])),
        "median_foreground_mean": float(np.median([c["foreground"][0]["mean"] for c in cases])),
    }


def summarize(cases: list[dict]) -> dict:
    """Cohort summaries overall, per sequence and per location."""
    out = {"overall": _group_summary(cases), "per_sequence": {}, "per_location": {}}
    for key, target in (("sequence", "per_sequence"), ("location", "per_location")):
        for value in sorted({c[key] for c in cases}):
            out[target][value] = _group_summary([c for c in cases if c[key] == value])
    return out


def fingerprint_hash(fingerprint: dict) -> str:
    """A short hash of what the cohort is (ignores file times), recorded in plans.json."""
    content = [{k: v for k, v in c.items() if k != "files"} for c in fingerprint["cases"]]
    blob = json.dumps({"labels": fingerprint["labels"], "channels": fingerprint["channel_names"], "cases": content},
                      sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def extract_fingerprint(dataset: RawDataset, n_workers: int = 1, previous: dict | None = None) -> tuple[dict, list[tuple[str, str]]]:
    """Fingerprint every training case. Cases whose files are unchanged since `previous` are reused.

    Returns (fingerprint, errors) where errors lists (case_id, message) of cases that failed.
    """
    reuse = {c["case_id"]: c for c in (previous or {}).get("cases", []) if previous.get("version") == FINGERPRINT_VERSION}
    cases = dataset.training_cases()
    todo, kept = [], {}
    for case in cases:
        old = reuse.get(case.case_id)
        try:
            unchanged = old is not None and old["files"] == file_stamps(case) and \
                (old["sequence"], old["location"], old["subject"]) == (case.sequence, case.location, case.subject)
        except FileNotFoundError:
            unchanged = False
        if unchanged:
            kept[case.case_id] = old
        else:
            todo.append((case.case_id, case))
    outcomes = map_cases(case_fingerprint, todo, n_workers, desc="fingerprint")
    errors = [(o.case_id, o.error) for o in outcomes if o.error]
    kept.update({o.case_id: o.result for o in outcomes if not o.error})
    per_case = [kept[c.case_id] for c in cases if c.case_id in kept]
    if not per_case:
        raise SabnetError(f"{dataset.root}: no case could be fingerprinted; run sab_verify_dataset -d {dataset.root}")
    fingerprint = {
        "version": FINGERPRINT_VERSION,
        "dataset": dataset.root.name,
        "raw_dir": str(dataset.root),
        "channel_names": dataset.channel_names,
        "labels": dataset.labels,
        "cases": per_case,
        "summary": summarize(per_case),
    }
    fingerprint["hash"] = fingerprint_hash(fingerprint)
    return fingerprint, errors


def fingerprint_table(fingerprint: dict) -> pd.DataFrame:
    """One row per case, for printing and CSV."""
    rows = []
    for c in fingerprint["cases"]:
        rows.append({
            "case": c["case_id"], "sequence": c["sequence"], "location": c["location"], "plane": c["plane"],
            "shape": "x".join(map(str, c["shape"])),
            "spacing_mm": "x".join(f"{s:.3g}" for s in c["spacing_mm"]),
            "p0.5": round(c["intensity"][0]["p0.5"], 2), "p50": round(c["intensity"][0]["p50"], 2),
            "p99.5": round(c["intensity"][0]["p99.5"], 2),
            "fg_mean": round(c["foreground"][0]["mean"], 2), "fg_std": round(c["foreground"][0]["std"], 2),
            "labels": " ".join(f"{k}:{v}" for k, v in c["voxels_per_label"].items()),
        })
    return pd.DataFrame(rows)


def write_fingerprint(fingerprint: dict, folder: Path) -> pd.DataFrame:
    """Write dataset_fingerprint.json and .csv into `folder`; returns the table."""
    write_json(folder / "dataset_fingerprint.json", fingerprint)
    table = fingerprint_table(fingerprint)
    with atomic_path(folder / "dataset_fingerprint.csv") as tmp:
        table.to_csv(tmp, index=False)
    return table


def load_fingerprint(folder: Path) -> dict | None:
    path = folder / "dataset_fingerprint.json"
    return read_json(path) if path.is_file() else None
