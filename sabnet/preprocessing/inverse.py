"""The exact inverse of preprocessing: slice-frame arrays back onto the original image grid.

Undo in-plane resampling, then the reorientation (transposes/flips), then the crop (pad with
background). Works slice-chunk by slice-chunk, so memory stays at the size of the output.
"""
from __future__ import annotations

import numpy as np

from sabnet.io.geometry import Geometry
from sabnet.io.slice_frame import SliceFrame
from sabnet.preprocessing.resampling import resample_labels, resample_slices

CHUNK_SLICES = 8


def _uncrop(frame_array: np.ndarray, properties: dict, fill: float) -> np.ndarray:
    """(..., cropped frame shape) -> (..., original array shape), background outside the crop."""
    frame = SliceFrame.from_dict(properties["slice_frame"])
    geometry = Geometry.from_dict(properties["original_geometry"])
    lead = frame_array.shape[:-3]
    out = np.full(lead + tuple(geometry.shape), fill, dtype=frame_array.dtype)
    crop = tuple(slice(lo, hi) for lo, hi in properties["crop_box"])
    out[(Ellipsis,) + crop] = frame.from_frame(frame_array)
    return out


def labels_to_original(labels: np.ndarray, properties: dict) -> np.ndarray:
    """(n_slices, rows, cols) labels in the preprocessed frame -> labels on the original grid."""
    rows, cols = properties["cropped_frame_shape"][1:]
    values = sorted(int(v) for v in np.unique(labels))
    restored = np.concatenate([resample_labels(labels[i:i + CHUNK_SLICES], (rows, cols), values)
                               for i in range(0, labels.shape[0], CHUNK_SLICES)])
    return _uncrop(restored, properties, 0)


def probabilities_to_original(probabilities: np.ndarray, properties: dict, keep_probabilities: bool = False
                              ) -> tuple[np.ndarray, np.ndarray | None]:
    """(K, n_slices, rows, cols) class probabilities -> (label map, probabilities or None) on the
    original grid. Probabilities are resampled bilinearly and the argmax taken there, as nnU-Net
    does; K == 1 is a single sigmoid channel (label 1 where p >= 0.5)."""
    n_classes, n_slices = probabilities.shape[:2]
    rows, cols = properties["cropped_frame_shape"][1:]
    labels = np.zeros((n_slices, rows, cols), dtype=np.uint8 if n_classes < 256 else np.uint16)
    kept = np.zeros((n_classes, n_slices, rows, cols), dtype=np.float32) if keep_probabilities else None
    for start in range(0, n_slices, CHUNK_SLICES):
        part = resample_slices(np.asarray(probabilities[:, start:start + CHUNK_SLICES], dtype=np.float32), (rows, cols), order=1)
        labels[start:start + part.shape[1]] = (part[0] >= 0.5) if n_classes == 1 else part.argmax(axis=0)
        if kept is not None:
            kept[:, start:start + part.shape[1]] = part
    label_map = _uncrop(labels, properties, 0)
    if kept is None:
        return label_map, None
    background = np.zeros(n_classes, dtype=np.float32)
    background[0] = 0 if n_classes == 1 else 1
    full = np.stack([_uncrop(kept[k], properties, float(background[k])) for k in range(n_classes)])
    return label_map, full


def slice_location(slice_index: int, properties: dict) -> tuple[int, int]:
    """(original array axis, index along it) of preprocessed slice `slice_index`."""
    frame = SliceFrame.from_dict(properties["slice_frame"])
    axis, flip = frame.axes[0], frame.flips[0]
    lo, hi = properties["crop_box"][axis]
    return axis, lo + ((hi - lo - 1 - slice_index) if flip else slice_index)


def slice_probabilities_to_original(probabilities: np.ndarray, slice_index: int, properties: dict
                                    ) -> tuple[int, int, np.ndarray]:
    """(K, rows, cols) probabilities of one preprocessed slice -> (axis, index, 2D labels) where the
    2D labels cover the original array's plane at `index` along `axis` (remaining axes in array
    order), background outside the crop."""
    frame = SliceFrame.from_dict(properties["slice_frame"])
    geometry = Geometry.from_dict(properties["original_geometry"])
    rows, cols = properties["cropped_frame_shape"][1:]
    restored = resample_slices(np.asarray(probabilities, dtype=np.float32), (rows, cols), order=1)
    labels = (restored[0] >= 0.5).astype(np.uint8) if restored.shape[0] == 1 else restored.argmax(axis=0).astype(np.uint8)
    for f in (1, 2):
        if frame.flips[f]:
            labels = np.flip(labels, axis=f - 1)
    row_axis, col_axis = frame.axes[1], frame.axes[2]
    if row_axis > col_axis:
        labels = labels.T
    first, second = sorted((row_axis, col_axis))
    plane = np.zeros((geometry.shape[first], geometry.shape[second]), dtype=labels.dtype)
    box = properties["crop_box"]
    plane[box[first][0]:box[first][1], box[second][0]:box[second][1]] = labels
    axis, index = slice_location(slice_index, properties)
    return axis, index, plane
