"""Interactive segmentation for tools built on sabnet (a 3D Slicer module, a notebook).

    session = InteractiveSession.from_model_folder(folder, device="cpu")
    labels = session.open("knee.nii.gz")                  # automatic prediction, input grid
    result = session.add_point((120, 88, 40), "femur")    # IJK voxel; no slice is re-encoded
    result.plane                                          # that slice's updated labels

Each slice is encoded once (embeddings cached per fold model); a point or box only re-runs the
mask decoder of its slice. `propagate=n` carries the corrected mask to n slices on each side as a
dense prompt.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sabnet.inference.model_folder import load_ensemble
from sabnet.inference.predict_image import preprocess_for_prediction
from sabnet.inference.prompt_coordinates import array_index_to_preprocessed, label_value, to_array_index
from sabnet.io.geometry import Geometry
from sabnet.io.image_io import read_image
from sabnet.model.case_predictor import EnsemblePredictor, case_tiles
from sabnet.model.detail_branch import ImageEmbeddings
from sabnet.model.slice_prompts import SlicePrompt
from sabnet.planning.plans import Plan
from sabnet.preprocessing.inverse import probabilities_to_original, slice_probabilities_to_original


@dataclass
class SliceResult:
    """The updated labels of one slice: `plane` is the input array's plane at `index` along `axis`."""

    axis: int
    index: int
    plane: np.ndarray


class InteractiveSession:
    """One open volume, its cached slice embeddings, and the prompts added so far."""

    def __init__(self, plan: Plan, predictor: EnsemblePredictor, mode: str = "2d"):
        self.plan, self.predictor, self.mode = plan, predictor, mode
        self.labels: np.ndarray | None = None
        self.geometry: Geometry | None = None
        self._case = None
        self._cache: dict[int, list[tuple[list, torch.Tensor, torch.Tensor | None]]] = {}
        self._prob_volumes: list[torch.Tensor | None] = []
        self._prompts: dict[int, dict[int, SlicePrompt]] = {}

    @classmethod
    def from_model_folder(cls, folder: Path | str, folds: list[int] | None = None, checkpoint: str = "final",
                          device: str = "cpu", mode: str = "2d") -> "InteractiveSession":
        plan, models, _ = load_ensemble(Path(folder), folds, checkpoint, device, mode)
        return cls(plan, EnsemblePredictor(models, device, max(plan.training.batch_size, 4)), mode)

    # ---- opening -------------------------------------------------------------------------
    @torch.inference_mode()
    def open(self, image: Path | str | tuple[np.ndarray, Geometry]) -> np.ndarray:
        """Load a volume (a path, or (array, geometry)), encode every slice once, and return the
        automatic label map on the input's grid."""
        array, geometry = read_image(image) if isinstance(image, (str, Path)) else image
        self.geometry = geometry
        self._case = preprocess_for_prediction([array], geometry, self.plan)
        self._cache.clear()
        self._prompts.clear()
        self._prob_volumes = []
        depth = torch.from_numpy(np.ascontiguousarray(self._case.depth_image[:1], dtype=np.float32))[None]
        for model in self.predictor.models:
            self._prob_volumes.append(model.depth_probabilities(depth.to(self.predictor.device)) if self.mode == "3d" else None)
        self._encode_all()
        n_slices = self._case.image.shape[0]
        probabilities = np.stack([self._slice_probabilities(s) for s in range(n_slices)], axis=1)
        self.labels, _ = probabilities_to_original(probabilities, self._case.properties)
        return self.labels

    # ---- prompting -----------------------------------------------------------------------
    def add_point(self, position, label, positive: bool = True, coordinates: str = "ijk",
                  propagate: int = 0) -> list[SliceResult]:
        """Add a positive (or negative) point for `label` (name or value) at `position` (IJK voxel,
        or LPS/RAS mm) and return the updated slice (and the propagated neighbours)."""
        s, r, c = self._to_slice(position, coordinates)
        prompt = self._prompt(s, label_value(label, self.plan.labels, "point"))
        prompt.points = np.vstack([prompt.points, [[r, c]]])
        prompt.point_labels = np.append(prompt.point_labels, 1 if positive else 0)
        return self._update(s, prompt.label, propagate)

    def add_box(self, corner_a, corner_b, label, coordinates: str = "ijk", propagate: int = 0) -> list[SliceResult]:
        """Add a box (two opposite corners on one slice) for `label` and return the updated slice."""
        (s, r0, c0), (s1, r1, c1) = self._to_slice(corner_a, coordinates), self._to_slice(corner_b, coordinates)
        if s != s1:
            raise ValueError(f"box corners lie on different slices ({s} and {s1}); give a box on one slice")
        prompt = self._prompt(s, label_value(label, self.plan.labels, "box"))
        prompt.box = (min(r0, r1), min(c0, c1), max(r0, r1), max(c0, c1))
        return self._update(s, prompt.label, propagate)

    def clear(self, position, coordinates: str = "ijk") -> SliceResult:
        """Remove every prompt of the slice holding `position` and return its automatic labels."""
        s = self._to_slice(position, coordinates)[0]
        self._prompts.pop(s, None)
        return self._store(s, self._slice_probabilities(s))

    # ---- internals -----------------------------------------------------------------------
    def _to_slice(self, position, coordinates: str) -> tuple[int, float, float]:
        if self._case is None:
            raise RuntimeError("open a volume first")
        s, r, c = array_index_to_preprocessed(to_array_index(position, coordinates, self.geometry), self._case.properties)[0]
        if not 0 <= s < self._case.image.shape[0]:
            raise ValueError(f"position {position} lies outside the volume")
        return int(s), float(r), float(c)

    def _prompt(self, s: int, value: int) -> SlicePrompt:
        return self._prompts.setdefault(s, {}).setdefault(value, SlicePrompt(value))

    def _update(self, s: int, value: int, propagate: int) -> list[SliceResult]:
        probabilities = self._slice_probabilities(s)
        results = [self._store(s, probabilities)]
        for step in (1, -1):
            previous = probabilities
            for n in range(1, propagate + 1):
                t = s + step * n
                if not 0 <= t < self._case.image.shape[0]:
                    break
                mask = previous[0] >= 0.5 if previous.shape[0] == 1 else previous.argmax(axis=0) == value
                if not mask.any():
                    break
                carried = SlicePrompt(value, mask=mask)
                previous = self._slice_probabilities(t, extra=[carried])
                results.append(self._store(t, previous))
        return results

    def _store(self, s: int, probabilities: np.ndarray) -> SliceResult:
        axis, index, plane = slice_probabilities_to_original(probabilities, s, self._case.properties)
        where = [slice(None)] * 3
        where[axis] = index
        self.labels[tuple(where)] = plane
        return SliceResult(axis, index, plane)

    def _encode_all(self) -> None:
        """Encode every tile of every slice in batches, filling the per-slice cache."""
        image, properties = self._case.image, self._case.properties
        for m, model in enumerate(self.predictor.models):
            tiles = case_tiles(image.shape[0], image.shape[2], image.shape[3], model.config.image_size)
            for start in range(0, len(tiles), self.predictor.batch_size):
                batch = tiles[start:start + self.predictor.batch_size]
                embeddings, attention = self.predictor.encode_tiles(model, image, batch, self._prob_volumes[m], properties)
                for s in sorted({t.slice_index for t in batch}):
                    idx = [i for i, t in enumerate(batch) if t.slice_index == s]
                    entry = ([batch[i] for i in idx], embeddings[idx], None if attention is None else attention[idx])
                    if (s, m) in self._cache:  # a slice whose tiles straddle two batches
                        old = self._cache[(s, m)]
                        entry = (old[0] + entry[0], ImageEmbeddings.cat([old[1], entry[1]]),
                                 None if attention is None else torch.cat([old[2], entry[2]]))
                    self._cache[(s, m)] = entry

    @torch.inference_mode()
    def _slice_probabilities(self, s: int, extra: list[SlicePrompt] | None = None) -> np.ndarray:
        """(K, rows, cols) of preprocessed slice s, averaged over models, with its prompts."""
        image, properties = self._case.image, self._case.properties
        _, _, rows, cols = image.shape
        prompts = {s: list(self._prompts.get(s, {}).values()) + (extra or [])}
        total = None
        for m, model in enumerate(self.predictor.models):
            size = model.config.image_size
            if (s, m) not in self._cache:
                tiles = [t for t in case_tiles(image.shape[0], rows, cols, size) if t.slice_index == s]
                embeddings, attention = self.predictor.encode_tiles(model, image, tiles, self._prob_volumes[m], properties)
                self._cache[(s, m)] = (tiles, embeddings, attention)
            tiles, embeddings, attention = self._cache[(s, m)]
            probs = self.predictor.decode_tiles(model, embeddings, attention, tiles, prompts).float().cpu()
            out = torch.zeros((probs.shape[1], rows, cols))
            weight = torch.zeros((1, rows, cols))
            for t, p in zip(tiles, probs):
                h, w = min(size, rows - t.row), min(size, cols - t.col)
                out[:, t.row:t.row + h, t.col:t.col + w] += p[:, :h, :w]
                weight[:, t.row:t.row + h, t.col:t.col + w] += 1
            out /= weight
            total = out if total is None else total + out
        return (total / len(self.predictor.models)).numpy()
