"""Evaluate predicted label maps against references: per case and label, then means.

`evaluate_case` measures in-memory arrays (training's validation calls it); `evaluate_folder`
matches two folders of label files by case id and measures every case; `EvaluationResult`
holds the per-case table and computes the means; `write` stores it as summary.csv (one row per
case and label) and summary.json (everything), and `read_summary` loads it back.

Means skip NaN (a label absent from both reference and prediction, see `metrics`). The
foreground mean of a metric is the mean over labels of its per-label means, as nnU-Net's
`foreground_mean`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from sabnet.dataset.raw_dataset import UNKNOWN
from sabnet.errors import SabnetError
from sabnet.evaluation.metrics import METRICS, as_label_map, label_metrics
from sabnet.io.atomic import atomic_path, read_json, write_json
from sabnet.io.geometry import Geometry
from sabnet.io.image_io import IMAGE_EXTENSIONS, image_extension, read_geometry, read_image, strip_extension
from sabnet.parallel import map_cases
from sabnet.preprocessing.case_preprocessing import map_labels

PER_CASE_COLUMNS = ["case", "label", "label_value", "dice", "iou", "hd95_mm", "asd_mm", "sequence", "location",
                    "n_ref_voxels", "n_pred_voxels"]
MEAN_COLUMNS = ["label", "label_value", "n_cases", "n_both_empty", *METRICS]
SUMMARY_CSV, SUMMARY_JSON = "summary.csv", "summary.json"
DEFINITIONS = {
    "dice": "2|R&P| / (|R|+|P|); NaN when reference and prediction are both empty",
    "iou": "|R&P| / |R|P|; NaN when both are empty",
    "hd95_mm": "max of the 95th percentiles of the directed surface distances R->P and P->R, mm",
    "asd_mm": "average symmetric surface distance: mean of all R->P and P->R surface distances, mm",
    "one_empty": "Dice 0, IoU 0, HD95 and ASD = field-of-view diagonal of the image, mm",
    "means": "NaN skipped; foreground_mean = mean over labels of the per-label means",
}


def evaluate_case(reference: np.ndarray, prediction: np.ndarray, geometry: Geometry, labels: Mapping[str, int], *,
                  case: str = "", sequence: str = UNKNOWN, location: str = UNKNOWN) -> list[dict]:
    """Rows (dicts with `PER_CASE_COLUMNS`) for one case, one per foreground label.

    reference, prediction: integer label maps of `geometry.shape` (array order k, j, i).
    labels: {name: value}; value 0 (background) is skipped.
    """
    if reference.shape != prediction.shape or tuple(reference.shape) != tuple(geometry.shape):
        raise SabnetError(f"case {case}: reference shape {reference.shape}, prediction shape {prediction.shape} and "
                          f"geometry shape {tuple(geometry.shape)} differ; evaluate a prediction on its reference's grid")
    foreground = {name: int(value) for name, value in labels.items() if int(value) != 0}
    try:
        per_value = label_metrics(reference, prediction, geometry, foreground.values())
    except ValueError as e:
        raise SabnetError(f"case {case}: {e}") from None
    return [{"case": case, "label": name, "label_value": value, **{m: per_value[value][m] for m in METRICS},
             "sequence": sequence, "location": location, "n_ref_voxels": per_value[value]["n_ref_voxels"],
             "n_pred_voxels": per_value[value]["n_pred_voxels"]}
            for name, value in sorted(foreground.items(), key=lambda kv: kv[1])]


@dataclass
class EvaluationResult:
    """Per-case metrics and their means.

    per_case: one row per case and label, columns `PER_CASE_COLUMNS`.
    labels: the foreground labels evaluated, {name: value}.
    missing_cases: reference cases that had no prediction and were skipped.
    """

    per_case: pd.DataFrame
    labels: dict[str, int]
    missing_cases: list[str] = field(default_factory=list)

    @classmethod
    def from_rows(cls, rows: Iterable[dict], labels: Mapping[str, int],
                  missing_cases: Iterable[str] = ()) -> "EvaluationResult":
        """Build from `evaluate_case` rows (of any number of cases)."""
        frame = pd.DataFrame(list(rows), columns=PER_CASE_COLUMNS)
        frame = frame.sort_values(["case", "label_value"], kind="stable").reset_index(drop=True)
        foreground = {str(k): int(v) for k, v in sorted(labels.items(), key=lambda kv: kv[1]) if int(v) != 0}
        return cls(frame, foreground, sorted(missing_cases))

    @property
    def means_per_label(self) -> pd.DataFrame:
        """Columns `MEAN_COLUMNS`; n_both_empty counts the NaN rows the means skip."""
        return self._means([])

    @property
    def means_per_location(self) -> pd.DataFrame:
        return self._means(["location"])

    @property
    def means_per_sequence(self) -> pd.DataFrame:
        return self._means(["sequence"])

    @property
    def mean_foreground_dice(self) -> float:
        """Mean over labels of the per-label mean Dice (NaN when nothing could be measured)."""
        return float(self.means_per_label["dice"].mean())

    def foreground_means(self, by: str | None = None) -> pd.DataFrame:
        """Mean over labels of each per-label mean, overall (by=None) or per "location"/"sequence".

        Columns: [by,] n_cases (distinct cases), dice, iou, hd95_mm, asd_mm."""
        keys = [by] if by else []
        per_label = self._means(keys)
        cases = self.per_case.groupby(keys)["case"].nunique() if keys else pd.Series([self.per_case["case"].nunique()])
        if not keys:
            return pd.DataFrame([{"n_cases": int(cases.iloc[0]), **per_label[list(METRICS)].mean().to_dict()}])
        means = per_label.groupby(keys, sort=True)[list(METRICS)].mean()
        return means.join(cases.rename("n_cases"))[["n_cases", *METRICS]].reset_index()

    def _means(self, keys: list[str]) -> pd.DataFrame:
        frame = self.per_case.assign(n_cases=1, n_both_empty=self.per_case["dice"].isna().astype(int))
        aggregations = {"n_cases": ("n_cases", "sum"), "n_both_empty": ("n_both_empty", "sum"),
                        **{m: (m, "mean") for m in METRICS}}
        out = frame.groupby(keys + ["label_value", "label"], sort=True).agg(**aggregations).reset_index()
        return out[keys + MEAN_COLUMNS]

    def to_json(self) -> dict:
        """Everything as plain JSON types; NaN becomes null."""
        def by_label(table: pd.DataFrame) -> dict:
            return {row["label"]: {k: row[k] for k in MEAN_COLUMNS[1:]} for row in table.to_dict("records")}

        def grouped(key: str) -> dict:
            table = self._means([key])
            return {row[key]: {"foreground_mean": {k: row[k] for k in ("n_cases", *METRICS)},
                               "per_label": by_label(table[table[key] == row[key]])}
                    for row in self.foreground_means(key).to_dict("records")}

        return _plain({
            "definitions": DEFINITIONS,
            "labels": self.labels,
            "n_cases": int(self.per_case["case"].nunique()),
            "missing_cases": self.missing_cases,
            "mean_foreground_dice": self.mean_foreground_dice,
            "foreground_mean": self.foreground_means().to_dict("records")[0],
            "means_per_label": by_label(self.means_per_label),
            "means_per_location": grouped("location"),
            "means_per_sequence": grouped("sequence"),
            "per_case": self.per_case.to_dict("records"),
        })


def write(result: EvaluationResult, out_dir: Path | str) -> tuple[Path, Path]:
    """Write summary.csv (per case and label) and summary.json (everything) atomically into
    `out_dir`; returns both paths."""
    out_dir = Path(out_dir)
    csv_path, json_path = out_dir / SUMMARY_CSV, out_dir / SUMMARY_JSON
    with atomic_path(csv_path) as tmp:
        result.per_case.to_csv(tmp, index=False)
    write_json(json_path, result.to_json())
    return csv_path, json_path


def read_summary(folder: Path | str) -> EvaluationResult:
    """Load what `write` wrote in `folder` (summary.csv and summary.json)."""
    folder = Path(folder)
    meta = read_json(folder / SUMMARY_JSON)
    text_columns = {c: str for c in ("case", "label", "sequence", "location")}
    try:
        frame = pd.read_csv(folder / SUMMARY_CSV, dtype=text_columns, keep_default_na=False, na_values=[""])
    except (FileNotFoundError, pd.errors.ParserError, ValueError) as e:
        raise SabnetError(f"{folder / SUMMARY_CSV}: cannot be read as an evaluation summary ({e}); "
                          "run sab_evaluate again") from None
    if list(frame.columns) != PER_CASE_COLUMNS:
        raise SabnetError(f"{folder / SUMMARY_CSV}: columns {list(frame.columns)} are not {PER_CASE_COLUMNS}; "
                          "run sab_evaluate again")
    return EvaluationResult(frame, {str(k): int(v) for k, v in meta.get("labels", {}).items()},
                            list(meta.get("missing_cases", [])))


# ---- folders ---------------------------------------------------------------------------------
def list_cases(folder: Path | str) -> dict[str, Path]:
    """{case id: file} for the image files in `folder` (case id = file name without extension)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SabnetError(f"{folder}: not a folder; give the folder holding the label files")
    cases: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file() or not image_extension(entry):
            continue
        case_id = strip_extension(entry)
        if case_id in cases:
            raise SabnetError(f"{folder}: case {case_id} has two files ({cases[case_id].name}, {entry.name}); keep one")
        cases[case_id] = entry
    return cases


def evaluate_folder(reference_dir: Path | str, prediction_dir: Path | str, labels: Mapping[str, int] | None = None,
                    case_metadata: Mapping[str, Mapping[str, str]] | None = None, n_workers: int = 1,
                    allow_missing: bool = False, reference_mapping: Mapping[str, int] | None = None) -> EvaluationResult:
    """Evaluate every reference label file against the prediction of the same case id.

    labels: {name: value}; None evaluates every non-zero value found (named label_<value>).
    reference_mapping: {raw value: output value}, a plan's `label_mapping`, applied to the
        references first (a binary plan merges every bone into 1, as its predictions do).
    case_metadata: {case id: {"sequence", "location"}}; cases not in it are "unknown".
    Missing predictions are an error listing the cases, unless `allow_missing` (then they are
    skipped and listed in `missing_cases`). A prediction whose geometry differs from its
    reference is an error naming the case and what differs.
    """
    references = list_cases(reference_dir)
    if not references:
        raise SabnetError(f"{reference_dir}: no label files ({', '.join(IMAGE_EXTENSIONS)}) found")
    predictions = list_cases(prediction_dir)
    missing = [c for c in references if c not in predictions]
    if missing and not allow_missing:
        raise SabnetError(f"{prediction_dir}: no prediction for {len(missing)} of {len(references)} case(s): "
                          f"{_some(missing)}; predict them, or pass --allow-missing to evaluate the others")
    cases = [c for c in references if c in predictions]
    if not cases:
        raise SabnetError(f"{prediction_dir}: none of the {len(references)} reference case(s) has a prediction "
                          "(files are matched by name: case.nii.gz <-> case.nrrd)")
    _check_geometries(cases, references, predictions)
    case_metadata = case_metadata or {}
    items = []
    for case in cases:
        meta = case_metadata.get(case) or {}
        items.append((case, (case, references[case], predictions[case], labels, reference_mapping,
                             str(meta.get("sequence") or UNKNOWN), str(meta.get("location") or UNKNOWN))))
    outcomes = map_cases(_evaluate_files, items, n_workers, desc="evaluating")
    failed = [f"{o.case_id}: {o.error}" for o in outcomes if o.error]
    if failed:
        raise SabnetError(f"could not evaluate {len(failed)} case(s): {_some(failed, 3, '; ')}")
    rows = [row for o in outcomes for row in o.result]
    if labels is None:
        labels = {f"label_{v}": v for v in sorted({row["label_value"] for row in rows})}
        rows = _fill_absent(rows, labels, items)
    return EvaluationResult.from_rows(rows, labels, missing)


def _check_geometries(cases: list[str], references: dict[str, Path], predictions: dict[str, Path]) -> None:
    """Compare headers only (fast); one error listing every case whose grids differ."""
    problems = []
    for case in cases:
        differences = read_geometry(references[case]).differences(read_geometry(predictions[case]))
        if differences:
            problems.append(f"case {case} ({predictions[case].name}): {', '.join(differences)} (reference vs prediction)")
    if problems:
        raise SabnetError(f"prediction geometry differs from the reference for {len(problems)} case(s): "
                          f"{_some(problems, 3, '; ')}; predictions must lie on their reference's grid "
                          "(same size, spacing, origin and direction)")


def _evaluate_files(arg: tuple) -> list[dict]:
    case, reference_path, prediction_path, labels, reference_mapping, sequence, location = arg
    reference, geometry = _read_labels(reference_path)
    if reference_mapping is not None:
        reference = map_labels(reference, dict(reference_mapping))
    prediction, _ = _read_labels(prediction_path)
    if labels is None:
        values = sorted(set(_values_present(reference)) | set(_values_present(prediction)))
        labels = {f"label_{v}": v for v in values if v != 0}
    return evaluate_case(reference, prediction, geometry, labels, case=case, sequence=sequence, location=location)


def _read_labels(path: Path) -> tuple[np.ndarray, Geometry]:
    array, geometry = read_image(path)
    try:
        return as_label_map(array, str(path)), geometry
    except ValueError as e:
        raise SabnetError(str(e)) from None


def _values_present(array: np.ndarray) -> list[int]:
    """Distinct values of a non-negative integer array (one counting pass when values are small)."""
    if array.size == 0:
        return []
    if int(array.max()) <= 1 << 16:
        return [int(v) for v in np.flatnonzero(np.bincount(array.ravel().astype(np.intp, copy=False)))]
    return [int(v) for v in np.unique(array)]


def _fill_absent(rows: list[dict], labels: dict[str, int], items: list[tuple]) -> list[dict]:
    """Without declared labels, a case gets rows only for values it holds; add the rows of the
    other labels, which are absent from both maps (NaN metrics, zero voxels)."""
    seen = {(row["case"], row["label_value"]) for row in rows}
    for _, (case, _, _, _, _, sequence, location) in items:
        for name, value in labels.items():
            if (case, value) not in seen:
                rows.append({"case": case, "label": name, "label_value": value, **{m: math.nan for m in METRICS},
                             "sequence": sequence, "location": location, "n_ref_voxels": 0, "n_pred_voxels": 0})
    return rows


def _some(items: list[str], n: int = 10, sep: str = ", ") -> str:
    shown = sep.join(items[:n])
    return shown + (f"{sep}... ({len(items) - n} more)" if len(items) > n else "")


def _plain(value):
    """Numpy scalars -> Python, NaN/inf -> None, recursively."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
