"""Turn a folder of DICOM studies into a raw dataset (nnU-Net v2 layout, sabnet's extensions).

Every DICOM series anywhere under the input folder becomes one single-channel case:

- with a label map for it in `labels_dir` (named after the series' SeriesInstanceUID, its case id
  or its folder's name, any sabnet image format, on the series' grid):
  `imagesTr/{case}_0000.nii.gz` + `labelsTr/{case}.nii.gz`;
- without one: `imagesTs/{case}_0000.nii.gz`, ready for sab_predict. An unlabelled cohort thus
  verifies cleanly; to train on a case later, label it and move it to imagesTr/labelsTr.

dataset.json gets `case_metadata` (sequence and location read from the DICOM tags, subject =
PatientID) and `dicom_sources` (case id -> series UID and folder). Series that cannot be read
as one 3D volume (single slices, non-image objects, colour images) are reported and skipped.
Case ids come from PatientID, SeriesNumber and SeriesDescription: if PatientID identifies a
person in your data, anonymise before converting.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from sabnet.errors import SabnetError
from sabnet.io.atomic import write_json
from sabnet.io.dicom import location_from_tags, read_dicom_series, sequence_from_tags, series_ids
from sabnet.io.geometry import Geometry
from sabnet.io.image_io import check_3d_scalar, image_extension, read_image, strip_extension, write_image

FILE_ENDING = ".nii.gz"


@dataclass(frozen=True)
class SeriesRef:
    """One DICOM series: the folder holding its files and its SeriesInstanceUID."""

    folder: Path
    series_uid: str


@dataclass(frozen=True)
class ConvertedCase:
    case_id: str
    split: str  # "imagesTr" (labelled) or "imagesTs"
    source: SeriesRef
    sequence: str
    location: str
    subject: str
    label_file: Path | None = None


@dataclass
class ConversionResult:
    """What `convert_dicom` wrote and what it skipped (one line each: where, and why)."""

    dataset_dir: Path
    cases: list[ConvertedCase] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def n_training(self) -> int:
        return sum(c.split == "imagesTr" for c in self.cases)


def find_series(input_dir: Path | str) -> list[SeriesRef]:
    """Every DICOM series in `input_dir` and its subfolders, ordered by folder then UID."""
    found = []
    for folder, subfolders, files in os.walk(input_dir):
        subfolders.sort()
        if files:
            found.extend(SeriesRef(Path(folder), uid) for uid in sorted(series_ids(folder)))
    return sorted(found, key=lambda s: (str(s.folder), s.series_uid))


def _slug(text: str, max_len: int = 32) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:max_len].strip("-")


def make_case_id(tags: dict[str, str], folder: Path, taken: set[str]) -> str:
    """A file-name-safe case id from PatientID, SeriesNumber and SeriesDescription (else the
    folder name), made unique against `taken` with -2, -3, ... and added to it."""
    parts = [_slug(tags.get("patient_id", "")) or _slug(folder.name) or "case"]
    number = _slug(tags.get("series_number", ""))
    if number:
        parts.append(f"s{number}")
    description = _slug(tags.get("series_description", "") or tags.get("protocol_name", ""))
    if description:
        parts.append(description)
    base = "_".join(parts)
    case_id, n = base, 1
    while case_id in taken:
        n += 1
        case_id = f"{base}-{n}"
    taken.add(case_id)
    return case_id


def _index_labels(labels_dir: Path) -> dict[str, Path]:
    if not labels_dir.is_dir():
        raise SabnetError(f"{labels_dir}: labels folder not found")
    index = {}
    for entry in sorted(labels_dir.iterdir()):
        if entry.is_file() and image_extension(entry) and not entry.name.startswith("."):
            index[strip_extension(entry)] = entry
    return index


def _label_for(series: SeriesRef, case_id: str, labels: dict[str, Path], folder_counts: dict[str, int]) -> Path | None:
    for key in (series.series_uid, case_id):
        if key in labels:
            return labels[key]
    if folder_counts.get(series.folder.name) == 1:
        return labels.get(series.folder.name)
    return None


def _read_label(path: Path, geometry: Geometry) -> np.ndarray:
    """The label map at `path` as an unsigned integer array on `geometry`'s grid."""
    labels, label_geometry = read_image(path)
    diffs = geometry.differences(label_geometry)
    if diffs:
        raise SabnetError(f"{path}: label map is not on the series' grid ({'; '.join(diffs)}, series vs label)")
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise SabnetError(f"{path}: label map holds non-integer values")
    if labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max:
        raise SabnetError(f"{path}: label values must lie in 0..65535")
    return labels.astype(np.uint8 if labels.max() <= 255 else np.uint16)


def _label_names(values: set[int]) -> dict[str, int]:
    """dataset.json labels: 1 is "bone" for binary maps; otherwise label_<value>, to be renamed."""
    foreground = sorted(values - {0})
    if foreground in ([], [1]):
        return {"background": 0, "bone": 1}
    return {"background": 0, **{f"label_{v}": v for v in foreground}}


def convert_dicom(input_dir: Path | str, out_dir: Path | str, name: str | None = None,
                  labels_dir: Path | str | None = None) -> ConversionResult:
    """Convert every DICOM series under `input_dir` into the raw dataset folder `out_dir`
    (created; must not exist or be empty). `name` goes into dataset.json (default: the folder's
    name). Raises SabnetError when nothing could be converted."""
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    if not input_dir.is_dir():
        raise SabnetError(f"{input_dir}: input folder not found")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SabnetError(f"{out_dir}: exists and is not empty; give a new folder for the dataset")
    labels = _index_labels(Path(labels_dir)) if labels_dir is not None else {}
    all_series = find_series(input_dir)
    if not all_series:
        raise SabnetError(f"{input_dir}: no DICOM series found in it or its subfolders")
    folder_counts: dict[str, int] = {}
    for s in all_series:
        folder_counts[s.folder.name] = folder_counts.get(s.folder.name, 0) + 1

    result = ConversionResult(out_dir)
    taken: set[str] = set()
    used_labels: set[Path] = set()
    label_values: set[int] = set()
    for series in tqdm(all_series, desc="converting series", unit="series", dynamic_ncols=True):
        where = f"{series.folder} (series {series.series_uid})"
        try:
            image, tags = read_dicom_series(series.folder, series.series_uid)
            check_3d_scalar(image, series.folder)
        except SabnetError as e:
            result.skipped.append(f"{where}: {str(e).removeprefix(f'{series.folder}: ')}")
            continue
        case_id = make_case_id(tags, series.folder, taken)
        geometry = Geometry.of(image)
        label_file = _label_for(series, case_id, labels, folder_counts)
        label_array = None
        if label_file is not None:
            used_labels.add(label_file)
            try:
                label_array = _read_label(label_file, geometry)
            except SabnetError as e:
                result.skipped.append(f"{label_file}: {str(e).removeprefix(f'{label_file}: ')}; "
                                      f"case {case_id} written to imagesTs without it")
                label_file = None
        split = "imagesTr" if label_array is not None else "imagesTs"
        write_image(sitk.GetArrayFromImage(image), geometry, out_dir / split / f"{case_id}_0000{FILE_ENDING}")
        if label_array is not None:
            write_image(label_array, geometry, out_dir / "labelsTr" / f"{case_id}{FILE_ENDING}")
            label_values.update(int(v) for v in np.unique(label_array))
        subject = tags.get("patient_id") or series.folder.name
        result.cases.append(ConvertedCase(case_id, split, series, sequence_from_tags(tags), location_from_tags(tags),
                                          subject, label_file))
    for stem, path in labels.items():
        if path not in used_labels:
            result.skipped.append(f"{path}: label map matches no series (name it after a SeriesInstanceUID, "
                                  "a case id or a series folder)")
    if not result.cases:
        raise SabnetError(f"{input_dir}: no DICOM series could be converted; " + " | ".join(result.skipped[:3]))
    write_json(out_dir / "dataset.json", _dataset_json(result, name or out_dir.resolve().name, label_values))
    return result


def _dataset_json(result: ConversionResult, name: str, label_values: set[int]) -> dict:
    return {
        "name": name,
        "channel_names": {"0": "MRI"},
        "labels": _label_names(label_values),
        "numTraining": result.n_training,
        "file_ending": FILE_ENDING,
        "case_metadata": {c.case_id: {"sequence": c.sequence, "location": c.location, "subject": c.subject}
                          for c in result.cases},
        "dicom_sources": {c.case_id: {"series_uid": c.source.series_uid, "folder": str(c.source.folder.resolve()),
                                      "split": c.split} for c in result.cases},
    }
