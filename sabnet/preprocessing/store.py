"""The preprocessed store: one folder per case, plain .npy arrays read as memory maps.

    <preprocessed>/<dataset>/data/<case_id>/
        image.npy         (n_slices, C, rows, cols) float32, slice-contiguous: a slice is one read
        labels.npy        (n_slices, rows, cols) uint8/uint16 output labels
        depth_image.npy   (C, D, h, w) float32, the depth branch's low-resolution volume
        depth_labels.npy  (D, h, w) float16, share of bone per low-resolution voxel
        foreground.npz    per label value: (M, 3) int32 (slice, row, col) foreground voxels
        properties.json   geometry, frame, crop, spacing, normalization, stamp

A case folder is written under a temporary name and renamed when complete, so a killed run never
leaves a case that looks finished; `properties.json["stamp"]` tells whether it is up to date.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from sabnet.errors import SabnetError
from sabnet.io.atomic import read_json
from sabnet.preprocessing.case_preprocessing import PreprocessedCase

DATA_FOLDER = "data"


class PreprocessedStore:
    """Read and write the preprocessed cases of one dataset (folder `<preprocessed>/<dataset>`)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.data = self.folder / DATA_FOLDER

    def case_dir(self, case_id: str) -> Path:
        return self.data / case_id

    def case_ids(self) -> list[str]:
        """Complete cases (temporary folders of interrupted runs are not cases)."""
        if not self.data.is_dir():
            return []
        return sorted(p.name for p in self.data.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / "properties.json").is_file())

    def stamp(self, case_id: str) -> str | None:
        path = self.case_dir(case_id) / "properties.json"
        try:
            return json.loads(path.read_text(encoding="utf-8")).get("stamp")
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write(self, case_id: str, case: PreprocessedCase, stamp: str,
              foreground: dict[str, np.ndarray] | None = None) -> Path:
        """Write a case under a temporary name, then rename it into place (replacing an old one)."""
        self.data.mkdir(parents=True, exist_ok=True)
        tmp = self.data / f".tmp-{uuid.uuid4().hex[:8]}-{case_id}"
        tmp.mkdir()
        try:
            np.save(tmp / "image.npy", np.ascontiguousarray(case.image, dtype=np.float32))
            np.save(tmp / "depth_image.npy", np.ascontiguousarray(case.depth_image, dtype=np.float32))
            if case.labels is not None:
                np.save(tmp / "labels.npy", np.ascontiguousarray(case.labels))
                np.save(tmp / "depth_labels.npy", np.ascontiguousarray(case.depth_labels))
                np.savez(tmp / "foreground.npz", **(foreground or {}))
            properties = dict(case.properties, case_id=case_id, stamp=stamp)
            (tmp / "properties.json").write_text(json.dumps(properties, indent=1), encoding="utf-8")
            final = self.case_dir(case_id)
            if final.exists():
                old = self.data / f".old-{uuid.uuid4().hex[:8]}-{case_id}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            return final
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def remove_leftovers(self) -> int:
        """Delete temporary folders left by interrupted runs; returns how many."""
        if not self.data.is_dir():
            return 0
        leftovers = [p for p in self.data.iterdir() if p.name.startswith((".tmp-", ".old-"))]
        for p in leftovers:
            shutil.rmtree(p, ignore_errors=True)
        return len(leftovers)

    # ---- reading --------------------------------------------------------------------------
    def properties(self, case_id: str) -> dict:
        return read_json(self._existing(case_id) / "properties.json")

    def image(self, case_id: str) -> np.ndarray:
        """(n_slices, C, rows, cols) float32 memory map; index a slice to read only that slice."""
        return np.load(self._existing(case_id) / "image.npy", mmap_mode="r")

    def labels(self, case_id: str) -> np.ndarray:
        return np.load(self._existing(case_id) / "labels.npy", mmap_mode="r")

    def depth_image(self, case_id: str) -> np.ndarray:
        return np.load(self._existing(case_id) / "depth_image.npy")

    def depth_labels(self, case_id: str) -> np.ndarray:
        return np.load(self._existing(case_id) / "depth_labels.npy")

    def foreground(self, case_id: str) -> dict[str, np.ndarray]:
        with np.load(self._existing(case_id) / "foreground.npz") as f:
            return {k: f[k] for k in f.files}

    def _existing(self, case_id: str) -> Path:
        path = self.case_dir(case_id)
        if not (path / "properties.json").is_file():
            raise SabnetError(f"{path}: case not preprocessed; run sab_plan_and_preprocess for this dataset")
        return path
