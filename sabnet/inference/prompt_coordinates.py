"""Where a user's prompt lands: input-image voxels (IJK) or world millimetres (LPS or RAS) ->
preprocessed slice coordinates (slice, row, col), and the prompts file format.

Voxel indices are IJK as 3D Slicer and ITK-SNAP show them (i fastest; the reverse of numpy's
array order). World positions are LPS millimetres as ITK uses them, or RAS as 3D Slicer shows
them (x and y negated).

Prompts file (JSON):
    {"case_id": {"coordinates": "ijk" | "lps" | "ras",
                 "prompts": [{"label": "femur" or 1,
                              "points": [[i, j, k], ...], "point_labels": [1, 0, ...],
                              "box": [[i0, j0, k0], [i1, j1, k1]]}]}}
Points go to the slice they lie on (positive 1, negative 0). A box's two corners may lie on
different slices: every slice between them gets the box.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from sabnet.errors import SabnetError
from sabnet.model.slice_prompts import SlicePrompt
from sabnet.io.atomic import read_json
from sabnet.io.geometry import Geometry
from sabnet.io.slice_frame import SliceFrame

COORDINATE_SYSTEMS = ("ijk", "lps", "ras")
SNAP_VOXELS = 1e-6


def to_array_index(positions: np.ndarray, coordinates: str, geometry: Geometry) -> np.ndarray:
    """(N, 3) positions in `coordinates` -> (N, 3) continuous array-order indices of the input.

    World positions within SNAP_VOXELS of a voxel centre land exactly on it: a centre converted to
    mm and back differs from its index by float rounding, and a prompt must not move with it."""
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    if coordinates == "ijk":
        return positions[:, ::-1]
    if coordinates == "ras":
        positions = positions * [-1, -1, 1]
    elif coordinates != "lps":
        raise SabnetError(f"prompt coordinates {coordinates!r} must be one of {', '.join(COORDINATE_SYSTEMS)}")
    index = geometry.world_to_index(positions)
    nearest = np.round(index)
    return np.where(np.abs(index - nearest) < SNAP_VOXELS, nearest, index)


def array_index_to_preprocessed(index: np.ndarray, properties: dict) -> np.ndarray:
    """(N, 3) array-order indices of the input -> (N, 3) (slice, row, col) in the preprocessed frame
    (slice rounded to the nearest slice; row and col continuous pixels)."""
    frame = SliceFrame.from_dict(properties["slice_frame"])
    box = properties["crop_box"]
    cropped = [hi - lo for lo, hi in box]
    out = np.empty((len(index), 3))
    for f, (axis, flip) in enumerate(zip(frame.axes, frame.flips)):
        x = index[:, axis] - box[axis][0]
        out[:, f] = cropped[axis] - 1 - x if flip else x
    n_rows, n_cols = properties["cropped_frame_shape"][1:]
    pp_rows, pp_cols = properties["shape"][1:]
    out[:, 1] = (out[:, 1] + 0.5) * pp_rows / n_rows - 0.5
    out[:, 2] = (out[:, 2] + 0.5) * pp_cols / n_cols - 0.5
    out[:, 0] = np.round(out[:, 0])
    return out


def label_value(label, labels: dict[str, int], where: str) -> int:
    """A prompt's label given by name or value -> the plan's output value."""
    if isinstance(label, str) and label in labels:
        return labels[label]
    if isinstance(label, (int, np.integer)) and int(label) in labels.values() and int(label) != 0:
        return int(label)
    names = ", ".join(k for k in labels if k != "background")
    raise SabnetError(f"{where}: label {label!r} is not one of the model's labels ({names})")


def slice_prompts_for_case(entries: list[dict], coordinates: str, geometry: Geometry, properties: dict,
                           labels: dict[str, int], where: str) -> dict[int, list[SlicePrompt]]:
    """The prompts of one case -> {preprocessed slice index: [SlicePrompt per label]}."""
    n_slices = properties["shape"][0]
    grouped: dict[tuple[int, int], dict] = defaultdict(lambda: {"points": [], "point_labels": [], "box": None})
    for n, entry in enumerate(entries):
        here = f"{where} prompt {n}"
        value = label_value(entry.get("label"), labels, here)
        points = np.asarray(entry.get("points", []), dtype=float).reshape(-1, 3)
        point_labels = np.asarray(entry.get("point_labels", [1] * len(points)), dtype=int)
        if len(point_labels) != len(points) or not set(point_labels.tolist()) <= {0, 1}:
            raise SabnetError(f"{here}: point_labels must give 1 (positive) or 0 (negative) for each point")
        if len(points):
            pp = array_index_to_preprocessed(to_array_index(points, coordinates, geometry), properties)
            for (s, r, c), v in zip(pp, point_labels):
                _check_slice(int(s), n_slices, here)
                grouped[(int(s), value)]["points"].append((r, c))
                grouped[(int(s), value)]["point_labels"].append(int(v))
        if entry.get("box") is not None:
            corners = np.asarray(entry["box"], dtype=float).reshape(2, 3)
            pp = array_index_to_preprocessed(to_array_index(corners, coordinates, geometry), properties)
            first, last = sorted(int(s) for s in pp[:, 0])
            _check_slice(first, n_slices, here)
            _check_slice(last, n_slices, here)
            rows, cols = sorted(pp[:, 1]), sorted(pp[:, 2])
            for s in range(first, last + 1):
                grouped[(s, value)]["box"] = (rows[0], cols[0], rows[1], cols[1])
        if not len(points) and entry.get("box") is None:
            raise SabnetError(f"{here}: give points and/or a box")
    out: dict[int, list[SlicePrompt]] = defaultdict(list)
    for (s, value), g in sorted(grouped.items()):
        out[s].append(SlicePrompt(value, np.asarray(g["points"], float).reshape(-1, 2),
                                  np.asarray(g["point_labels"], int), g["box"]))
    return dict(out)


def _check_slice(s: int, n_slices: int, where: str) -> None:
    if not 0 <= s < n_slices:
        raise SabnetError(f"{where}: lies outside the image (slice {s} of {n_slices} after cropping); check its coordinates")


def read_prompts_file(path: Path | str) -> dict[str, dict]:
    """Read and check the prompts file's structure: {case_id: {"coordinates", "prompts": [...]}}."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise SabnetError(f"{path}: must map case ids to their prompts")
    for case_id, spec in data.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("prompts"), list):
            raise SabnetError(f"{path}: case {case_id!r} needs a 'prompts' list")
        if spec.get("coordinates", "ijk") not in COORDINATE_SYSTEMS:
            raise SabnetError(f"{path}: case {case_id!r}: coordinates must be one of {', '.join(COORDINATE_SYSTEMS)}")
    return data
