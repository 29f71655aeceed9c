"""Helpers of benchmarks/real_spine.py: the prompts derived from a label map, the altered inputs
(intensities remapped as a T2 would show them, volumes cropped along the spine, the real T2 crop's
reference) and the embedding cache's time read from a training log.

All arrays are in SimpleITK's numpy order (k, j, i); prompt points are written as IJK (the reverse),
as sab_predict's prompts file expects with "coordinates": "ijk". Images are written with
SimpleITK on the geometry of the image they come from (cropped ones keep their place in the world).
"""
from __future__ import annotations

import datetime
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from sabnet.io.atomic import atomic_path

# T1 -> T2-like remap: a piecewise-linear curve through these knots (u, v), u = the image's own
# intensity scaled to [0, 1] between its 0.5 and 99.5 percentiles of nonzero voxels (clipped), v
# the new intensity in [0, 1], then times REMAP_SCALE. Air (u 0) stays dark; dark fluid (u about
# 0.08) becomes bright (0.85); muscle (u about 0.35) dark (0.25); fat and marrow (u 0.7 to 1)
# intermediate (0.55 to 0.65).
REMAP_KNOTS = ((0.0, 0.0), (0.08, 0.85), (0.35, 0.25), (0.7, 0.55), (1.0, 0.65))
REMAP_PERCENTILES = (0.5, 99.5)
REMAP_SCALE = 1000.0
CROP_TOP_SHARE, CROP_BOTTOM_SHARE = 0.25, 0.20  # share of the cranio-caudal extent removed
T2_BODY_LABELS = (49, 50)  # TPTBox subregions: vertebral body (corpus border, corpus)


# ---- prompts ---------------------------------------------------------------------------------
def _deepest_point(mask: np.ndarray, slice_axis: int, index: int) -> list[int]:
    """IJK of the mask's deepest pixel (largest distance to its outline) on slice `index`."""
    plane = np.take(mask, index, axis=slice_axis)
    depth = ndimage.distance_transform_edt(np.pad(plane, 1))[1:-1, 1:-1]
    voxel = [0, 0, 0]
    voxel[slice_axis] = int(index)
    in_plane = [a for a in range(3) if a != slice_axis]
    for axis, position in zip(in_plane, np.unravel_index(int(np.argmax(depth)), depth.shape)):
        voxel[axis] = int(position)
    return voxel[::-1]


def _slices_holding(mask: np.ndarray, slice_axis: int) -> np.ndarray:
    return np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != slice_axis)))


def vertebra_prompts(labels: np.ndarray, slice_axis: int, names: dict[str, int]) -> list[dict]:
    """One positive point (IJK) per vertebra on every slice along `slice_axis` that holds it, at the
    vertebra's deepest pixel on that slice."""
    prompts = []
    for name, value in names.items():
        mask = labels == value
        for index in _slices_holding(mask, slice_axis):
            prompts.append({"label": name, "points": [_deepest_point(mask, slice_axis, index)], "point_labels": [1]})
    return prompts


def middle_slice_prompts(labels: np.ndarray, slice_axis: int, names: dict[str, int]) -> list[dict]:
    """One positive point (IJK) per vertebra, on the middle slice of its extent along `slice_axis`
    (the nearest slice that holds it, if that one does not), at its deepest pixel there."""
    prompts = []
    for name, value in names.items():
        mask = labels == value
        present = _slices_holding(mask, slice_axis)
        if not len(present):
            continue
        middle = (int(present[0]) + int(present[-1])) // 2
        index = int(present[np.argmin(np.abs(present - middle))])
        prompts.append({"label": name, "points": [_deepest_point(mask, slice_axis, index)], "point_labels": [1]})
    return prompts


# ---- altered inputs ----------------------------------------------------------------------------
def _write(image: sitk.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def remap_to_t2(source: Path, target: Path) -> dict:
    """Write `source` with its intensities remapped by REMAP_KNOTS (float32, same geometry);
    returns the percentiles used."""
    image = sitk.ReadImage(str(source))
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    nonzero = array[array != 0]
    low, high = np.percentile(nonzero, REMAP_PERCENTILES) if nonzero.size else (0.0, 1.0)
    u = np.clip((array - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    knots = np.array(REMAP_KNOTS)
    out = sitk.GetImageFromArray((np.interp(u, knots[:, 0], knots[:, 1]) * REMAP_SCALE).astype(np.float32))
    out.CopyInformation(image)
    _write(out, target)
    return {"low": float(low), "high": float(high)}


def craniocaudal_axis(labels: np.ndarray, spacing_mm: tuple[float, ...], values: list[int]) -> tuple[int, bool]:
    """(array axis along which the labels' centroids spread the most, in mm; whether the cranial
    end, the side of the lowest label value present (L1), lies at low indices on that axis)."""
    present = [v for v in values if (labels == v).any()]
    if len(present) < 2:
        raise ValueError(f"labels {present} present: at least two vertebrae are needed to find the spine's axis")
    centroids = np.array(ndimage.center_of_mass(np.ones_like(labels, np.uint8), labels, present))
    centroids = centroids * np.asarray(spacing_mm)
    axis = int(np.argmax(centroids.var(axis=0)))
    return axis, bool(centroids[0, axis] < centroids[-1, axis])


def crop_case(image_files: list[Path], label_file: Path, image_targets: list[Path], label_target: Path,
              remove_top: bool, values: list[int]) -> dict:
    """Crop a case's images (channels) and its label map alike along the spine: CROP_TOP_SHARE of
    the extent off the cranial end (`remove_top`) or CROP_BOTTOM_SHARE off the caudal end; all
    written with their geometry (origin moved with the crop). Returns what was done."""
    label = sitk.ReadImage(str(label_file))
    array = sitk.GetArrayFromImage(label)
    axis, cranial_low = craniocaudal_axis(array, label.GetSpacing()[::-1], values)
    n = array.shape[axis]
    removed = int(round(n * (CROP_TOP_SHARE if remove_top else CROP_BOTTOM_SHARE)))
    at_low = remove_top == cranial_low  # cut at the low-index end of the axis
    keep = slice(removed, n) if at_low else slice(0, n - removed)
    index, size = [0, 0, 0], list(label.GetSize())
    itk_axis = 2 - axis
    index[itk_axis], size[itk_axis] = keep.start, keep.stop - keep.start
    sources = [sitk.ReadImage(str(p)) for p in image_files] + [label]
    for source, target in zip(sources, list(image_targets) + [label_target]):
        _write(sitk.RegionOfInterest(source, size, index), target)
    kept = np.take(array, range(keep.start, keep.stop), axis=axis)
    return {"array_axis": axis, "removed": "top" if remove_top else "bottom", "removed_voxels": removed,
            "extent_voxels": n, "kept_index_range": [keep.start, keep.stop],
            "labels_left": [int(v) for v in values if (kept == v).any()],
            "labels_cut_away": [int(v) for v in values if (array == v).any() and not (kept == v).any()]}


def t2_reference(subregion_file: Path, target: Path) -> int:
    """The T2 crop's bone reference: 1 where the subregion label is one of T2_BODY_LABELS, on the
    mask's own geometry; returns its voxel count."""
    mask = sitk.ReadImage(str(subregion_file))
    array = np.isin(sitk.GetArrayFromImage(mask), T2_BODY_LABELS).astype(np.uint8)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(mask)
    _write(out, target)
    return int(array.sum())


# ---- the embedding cache's time --------------------------------------------------------------
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)  (.*)$")


def cache_seconds(training_log: Path) -> tuple[float | None, int]:
    """(seconds, cases encoded) of the last embedding-cache fill in a fold's training_log.txt,
    from the time stamps of its 'embedding cache ...: encoding N cases' and 'embedding cache: ...
    (encoded N cases)' lines (1 s resolution); (0.0, 0) when the log says 'up to date'; (None, 0)
    when the log has no cache line (an encoder that trains)."""
    if not training_log.is_file():
        return None, 0
    started, result = None, (None, 0)
    for line in training_log.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        stamp, text = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"), m.group(2)
        if text.startswith("embedding cache ") and ": encoding " in text:
            started = stamp
        elif text.startswith("embedding cache: "):
            encoded = re.search(r"\(encoded (\d+) cases\)", text)
            if encoded and started is not None:
                result = ((stamp - started).total_seconds(), int(encoded.group(1)))
            elif "up to date" in text:
                result = (0.0, 0)
            started = None
    return result
