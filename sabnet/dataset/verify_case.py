"""What can be wrong inside the files of one case, found by reading each file once.

`check_case` reads a case's channel files and its label map and returns its problems (unreadable
files, non-3D images, NaN/Inf, channels on different grids, label maps of another shape or grid,
non-integer or undeclared label values, empty label maps) and a digest of its voxels for finding
duplicates. It runs in worker processes, so it takes and returns plain picklable values.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sabnet.dataset.duplicates import add_to_digest, new_digest
from sabnet.errors import SabnetError
from sabnet.io import nifti_raw
from sabnet.io.image_io import image_extension, read_image


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a cohort. severity: "error" or "warning"; file: the file at fault
    (None when the problem is not about one file); case_id: the case it concerns, if any."""

    severity: str
    file: Path | None
    case_id: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.file if self.file else '-'}: {self.message}"


def error(file: Path | None, case_id: str | None, message: str) -> Problem:
    return Problem("error", file, case_id, message)


def warning(file: Path | None, case_id: str | None, message: str) -> Problem:
    return Problem("warning", file, case_id, message)


@dataclass(frozen=True)
class CaseTask:
    """What one worker checks: the existing files of one case, in channel order."""

    case_id: str
    folder: str
    image_files: tuple[Path, ...]
    label_file: Path | None
    declared_labels: frozenset[int]
    complete: bool  # every declared channel present, so a digest means "the same image"


def _label_values(labels: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array (bincount when the range is small)."""
    if labels.size and labels.dtype.kind in "ui" and labels.dtype.itemsize <= 4:
        lo, hi = int(labels.min()), int(labels.max())
        if lo >= 0 and hi < 1 << 16:
            return np.flatnonzero(np.bincount(labels.ravel(), minlength=hi + 1))
    return np.unique(labels)


def _nonfinite_counts(path: Path, array: np.ndarray) -> tuple[int, int]:
    """(NaN, Inf) voxels of an image; for NIfTI from the file, as ITK reads them as 0."""
    if image_extension(path) in (".nii", ".nii.gz"):
        return nifti_raw.nonfinite_counts(path)
    if array.dtype.kind != "f" or np.isfinite(array).all():
        return 0, 0
    return int(np.isnan(array).sum()), int(np.isinf(array).sum())


def check_case(task: CaseTask) -> tuple[list[Problem], str | None]:
    """Read each file of one case once; return its problems and a digest of its voxels."""
    problems: list[Problem] = []
    digest = new_digest()
    readable = True
    reference = None  # (file, geometry) of the first readable channel
    for path in task.image_files:
        try:
            array, geometry = read_image(path)
        except SabnetError as e:
            problems.append(error(path, task.case_id, without_path(e, path)))
            readable = False
            continue
        n_nan, n_inf = _nonfinite_counts(path, array)
        if n_nan or n_inf:
            problems.append(error(path, task.case_id, f"{n_nan} NaN and {n_inf} Inf intensities; replace them "
                                                      "(e.g. by 0) before planning"))
        if reference is None:
            reference = (path, geometry)
        else:
            diffs = reference[1].differences(geometry)
            if diffs:
                problems.append(error(path, task.case_id, f"geometry differs from channel file {reference[0].name}: "
                                                          f"{'; '.join(diffs)} (first vs this)"))
        add_to_digest(digest, array)
    if task.label_file is not None:
        problems.extend(_check_label(task, reference))
    return problems, (digest.hexdigest() if readable and task.complete and task.image_files else None)


def _check_label(task: CaseTask, reference) -> list[Problem]:
    path, case_id = task.label_file, task.case_id
    try:
        labels, geometry = read_image(path)
    except SabnetError as e:
        return [error(path, case_id, without_path(e, path))]
    problems = []
    if labels.dtype.kind == "f":
        whole = np.isfinite(labels) & (labels == np.round(labels))
        if not whole.all():
            example = labels[~whole].flat[0]
            problems.append(error(path, case_id, f"label map holds non-integer values (e.g. {example:g}); "
                                                 "label values must be whole numbers"))
            labels = None
        else:
            labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "uib":
        problems.append(error(path, case_id, f"label map has voxel type {labels.dtype}; use an integer type"))
        labels = None
    if labels is not None:
        values = [int(v) for v in _label_values(labels)]
        undeclared = [v for v in values if v not in task.declared_labels]
        if undeclared:
            problems.append(error(path, case_id, f"label values {undeclared} are not declared in dataset.json labels "
                                                 f"(declared: {sorted(task.declared_labels)})"))
        if values == [0] or not values:
            problems.append(warning(path, case_id, "label map is empty (background only)"))
    if reference is not None:
        image_file, image_geometry = reference
        if geometry.shape != image_geometry.shape:
            problems.append(error(path, case_id, f"label shape {geometry.shape} differs from image shape "
                                                 f"{image_geometry.shape} of {image_file.name} (array order k, j, i)"))
        else:
            diffs = image_geometry.differences(replace(geometry, size=image_geometry.size))
            if diffs:
                problems.append(error(path, case_id, f"label geometry differs from image {image_file.name}: "
                                                     f"{'; '.join(diffs)} (image vs label)"))
    return problems


def without_path(error: Exception, path: Path) -> str:
    """An error's message without the leading 'path: ' that Problem.file already gives."""
    text = str(error)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text
