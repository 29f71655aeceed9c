"""Preprocess one case by the plan: crop to nonzero, reorient to the slice frame, resample
in-plane, normalize, and derive the depth-branch volume and foreground locations.

The arrays produced are in the slice frame: image (n_slices, C, rows, cols) float32, labels
(n_slices, rows, cols) uint8/uint16 with the plan's output label values. `properties` records
everything `sabnet.preprocessing.inverse` needs to put a prediction back on the original grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sabnet.io.geometry import Geometry
from sabnet.io.slice_frame import SliceFrame, depth_positions, frame_spacing_mm, slice_frame_for
from sabnet.planning.fingerprint import nonzero_box
from sabnet.planning.plans import CaseSlicing, Plan
from sabnet.preprocessing.normalization import clipped, normalization_values, standardized, unit_slices
from sabnet.preprocessing.resampling import in_plane_shape, resample_labels, resample_slices, resample_volume

MAX_FOREGROUND_LOCATIONS = 10000


@dataclass
class PreprocessedCase:
    """Arrays of one case in the slice frame at the planned spacing, and how they were made."""

    image: np.ndarray                 # (n_slices, C, rows, cols) float32
    labels: np.ndarray | None         # (n_slices, rows, cols) integer output labels
    depth_image: np.ndarray           # (C, D, h, w) float32, low-resolution
    depth_labels: np.ndarray | None   # (D, h, w) float16 share of bone per low-res voxel
    properties: dict


def map_labels(labels: np.ndarray, mapping: dict[str, int]) -> np.ndarray:
    """Raw label values -> the plan's output values (e.g. every bone -> 1 in binary mode)."""
    lut = np.zeros(max([int(k) for k in mapping] + [int(labels.max()), 0]) + 1, dtype=np.int64)
    for raw, out in mapping.items():
        lut[int(raw)] = out
    dtype = np.uint8 if max(mapping.values(), default=0) < 256 else np.uint16
    return lut[labels.astype(np.int64)].astype(dtype)


def depth_shape(frame_shape_mm: tuple[float, float, float], spacing_mm: list[float]) -> tuple[int, int, int]:
    """Low-resolution volume size covering the frame extent (slices, rows, cols) at `spacing_mm`."""
    return tuple(max(1, int(round(e / s))) for e, s in zip(frame_shape_mm, spacing_mm))


def foreground_locations(labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per label value: up to 10000 (slice, row, col) voxels, spread over every slice holding it."""
    out = {}
    for value in np.unique(labels):
        if value == 0:
            continue
        coords = np.argwhere(labels == value)  # sorted by slice
        if len(coords) > MAX_FOREGROUND_LOCATIONS:
            _, starts, counts = np.unique(coords[:, 0], return_index=True, return_counts=True)
            per_slice = max(1, MAX_FOREGROUND_LOCATIONS // len(starts))
            keep = [start + rng.choice(count, min(per_slice, count), replace=False) for start, count in zip(starts, counts)]
            coords = coords[np.sort(np.concatenate(keep))]
        out[str(int(value))] = coords.astype(np.int32)
    return out


def preprocess_arrays(channels: list[np.ndarray], geometry: Geometry, labels: np.ndarray | None, plan: Plan,
                      slicing: CaseSlicing, sequence: str) -> PreprocessedCase:
    """Preprocess arrays of one case (array order, as read) by `plan`."""
    pp = plan.preprocessing
    frame = slice_frame_for(geometry, slicing.slice_axis)
    box = nonzero_box(channels) if pp.crop_to_nonzero else [[0, n] for n in geometry.shape]
    crop = tuple(slice(lo, hi) for lo, hi in box)
    spacing = frame_spacing_mm(geometry, frame)
    cropped = [frame.to_frame(c[crop]) for c in channels]
    n_slices, rows, cols = cropped[0].shape
    out_hw = in_plane_shape((rows, cols), spacing[1:], pp.target_spacing_mm)
    scheme = pp.normalization_for(sequence)
    image, norm_record = [], []
    for c in cropped:
        # clip at full resolution, standardize the (smaller) resampled slices: the same result
        pixels = np.array(c, dtype=np.float32)  # one contiguous copy, worked on in place
        record = normalization_values(pixels, scheme)
        image.append(standardized(resample_slices(clipped(pixels, record, copy=False), out_hw, order=3), record))
        norm_record.append(record)
    image = np.stack(image, axis=1)  # (n_slices, C, rows, cols)
    per_slice = scheme.scheme == "slice_unit"
    volume_image = image.copy() if per_slice else image  # the depth branch sees the volume's own scaling
    out_labels = None
    if labels is not None:
        mapped = map_labels(frame.to_frame(labels[crop]), plan.label_mapping)
        present = np.flatnonzero(np.bincount(mapped.ravel(), minlength=1)).tolist()
        out_labels = resample_labels(mapped, out_hw, present)
    pp_spacing = [spacing[0], rows * spacing[1] / out_hw[0], cols * spacing[2] / out_hw[1]]
    extent = [n_slices * spacing[0], rows * spacing[1], cols * spacing[2]]
    d_shape = depth_shape(extent, pp.depth_volume.spacing_mm)
    depth_image = resample_volume(np.moveaxis(volume_image, 1, 0), d_shape)
    if per_slice:
        for c in range(image.shape[1]):
            image[:, c] = unit_slices(np.ascontiguousarray(image[:, c]))
    depth_labels = None
    if out_labels is not None:
        depth_labels = resample_volume((out_labels > 0).astype(np.float32), d_shape).astype(np.float16)
    properties = {
        "original_geometry": geometry.to_dict(),
        "slice_frame": frame.to_dict(),
        "slicing": {"slice_axis": slicing.slice_axis, "plane": slicing.plane, "reason": slicing.reason},
        "crop_box": box,
        "cropped_frame_shape": [n_slices, rows, cols],
        "frame_spacing_mm": list(spacing),
        "shape": [n_slices, *out_hw],
        "spacing_mm": pp_spacing,
        "normalization": norm_record,
        "depth_shape": list(d_shape),
        "depth_spacing_mm": [e / n for e, n in zip(extent, d_shape)],
        "sequence": sequence,
    }
    if out_labels is not None:
        properties["slices_with_label"] = {
            str(v): np.flatnonzero((out_labels == v).any(axis=(1, 2))).tolist()
            for v in sorted(set(plan.labels.values())) if v != 0
        }
    return PreprocessedCase(image, out_labels, depth_image, depth_labels, properties)


def slice_to_depth_position(slice_index: np.ndarray | float, properties: dict) -> np.ndarray:
    """Continuous low-resolution slice coordinate of full-resolution slice indices (extent-matched)."""
    return depth_positions(slice_index, properties["shape"][0], properties["depth_shape"][0])


def frame_of(properties: dict) -> SliceFrame:
    return SliceFrame.from_dict(properties["slice_frame"])
