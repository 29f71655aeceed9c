"""Interactive segmentation for tools built on sabnet (a 3D Slicer module, a notebook).

    session = InteractiveSession.from_model_folder(folder, device="cpu")
    labels = session.open("knee.nii.gz")                  # automatic prediction, input grid
    result = session.add_point((120, 88, 40), "femur")    # IJK voxel; no slice is re-encoded
    result[0].plane                                       # that slice's updated labels

    session = InteractiveSession.pretrained()             # zero-shot: LiteMedSAM's weights alone
    session.open("spine.nii.gz")                          # all background until prompted
    session.add_box((40, 60, 38), (80, 95, 38), "L3", propagate=None)   # the bone in 3D

Each slice is encoded once (embeddings kept per distinct encoder); a point or box only re-runs the
mask decoder. `propagate=n` carries the object to at most n slices on each side; `propagate=None`
carries it while it persists (sabnet.model.prompt_carrying).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sabnet.inference.model_folder import load_ensemble
from sabnet.inference.predict_image import preprocess_for_prediction
from sabnet.inference.prompt_coordinates import array_index_to_preprocessed, label_value, to_array_index
from sabnet.inference.zero_shot import zero_shot_model, zero_shot_plan
from sabnet.io.geometry import Geometry
from sabnet.io.image_io import read_image
from sabnet.model.case_predictor import (ZERO_SHOT_CARRY, ZERO_SHOT_OBJECT_THRESHOLD, CaseEmbeddings, EnsemblePredictor,
                                         merge_object)
from sabnet.model.click_labels import apply_clicked_labels
from sabnet.model.prompt_carrying import carry_objects
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
    """One open volume, its cached slice embeddings, and the prompts added so far.

    plan: the model's plan, or a function of the opened image's geometry that makes one (zero-shot).
    labels: the label names and values prompts may use (default: the plan's).
    """

    def __init__(self, plan: Plan | Callable[[Geometry], Plan], predictor: EnsemblePredictor, mode: str = "2d",
                 labels: dict[str, int] | None = None):
        self._plan_for = plan if callable(plan) else (lambda geometry: plan)
        self.plan: Plan | None = None if callable(plan) else plan
        self.predictor, self.mode = predictor, mode
        self._labels = labels
        self._values: np.ndarray | None = None  # zero-shot: output channel -> label value
        self.labels: np.ndarray | None = None
        self.geometry: Geometry | None = None
        self._case = None
        self._embeddings: CaseEmbeddings | None = None
        self._volumes: list = []
        self._automatic: torch.Tensor | None = None
        self._prompts: dict[int, dict[int, SlicePrompt]] = {}
        self._objects: dict[tuple[int, int], np.ndarray] = {}

    @classmethod
    def from_model_folder(cls, folder: Path | str, folds: list[int] | None = None, checkpoint: str = "final",
                          device: str = "cpu", mode: str = "2d") -> "InteractiveSession":
        plan, models, _ = load_ensemble(Path(folder), folds, checkpoint, device, mode)
        return cls(plan, EnsemblePredictor(models, device, max(plan.training.batch_size, 4)), mode)

    @classmethod
    def pretrained(cls, labels: dict[str, int] | list[str] | None = None, weights: Path | str = "lite_medsam",
                   device: str = "cpu") -> "InteractiveSession":
        """Zero-shot: the pretrained weights alone (LiteMedSAM's by default), no trained model.

        labels: the names (values 1, 2, ... in order) or {name: value} that prompts may use;
        default 'object' (value 1). Everything not prompted stays background.
        """
        if labels is None:
            labels = ["object"]
        if not isinstance(labels, dict):
            labels = {name: i + 1 for i, name in enumerate(labels)}
        n = len(labels)
        model = zero_shot_model(n, weights, device)
        channels = {"background": 0, **{name: i + 1 for i, name in enumerate(labels)}}
        predictor = EnsemblePredictor([model], device, 4, automatic=False, object_threshold=ZERO_SHOT_OBJECT_THRESHOLD, carry_rules=ZERO_SHOT_CARRY,
                                      point_boxes=True)
        session = cls(lambda geometry: zero_shot_plan(geometry, n), predictor, labels=channels)
        session._values = np.array([0] + list(labels.values()))
        return session

    # ---- opening -------------------------------------------------------------------------
    @torch.inference_mode()
    def open(self, image: Path | str | tuple[np.ndarray, Geometry]) -> np.ndarray:
        """Load a volume (a path, or (array, geometry)), encode every slice once (not in zero-shot
        mode, where only prompted slices are encoded), and return the automatic label map on the
        input's grid."""
        array, geometry = read_image(image) if isinstance(image, (str, Path)) else image
        self.geometry = geometry
        self.plan = self._plan_for(geometry)
        self._case = preprocess_for_prediction([array], geometry, self.plan)
        self._prompts.clear()
        self._objects.clear()
        self._embeddings = CaseEmbeddings(self.predictor, self._case.image, keep_all=True, keep=set())
        self._volumes = self.predictor.probability_volumes(self._case.depth_image, self.mode)
        n_slices, _, rows, cols = self._case.image.shape
        if self.predictor.automatic:
            self._automatic = self.predictor.automatic_probabilities(self._embeddings, self._volumes,
                                                                     self._case.properties)
        else:
            self._automatic = torch.zeros((self.predictor.n_classes, n_slices, rows, cols))
            self._automatic[0] = 1.0
        labels, _ = probabilities_to_original(self._automatic.numpy(), self._case.properties)
        self.labels = self._output_values(labels)
        return self.labels

    # ---- prompting -----------------------------------------------------------------------
    def add_point(self, position, label, positive: bool = True, coordinates: str = "ijk",
                  propagate: int | None = 0) -> list[SliceResult]:
        """Add a positive (or negative) point for `label` (name or value) at `position` (IJK voxel,
        or LPS/RAS mm) and return the updated slice (and the slices its object was carried to)."""
        s, r, c = self._to_slice(position, coordinates)
        prompt = self._prompt(s, label_value(label, self._label_table(), "point"))
        prompt.points = np.vstack([prompt.points, [[r, c]]])
        prompt.point_labels = np.append(prompt.point_labels, 1 if positive else 0)
        return self._update(s, prompt, propagate)

    def add_box(self, corner_a, corner_b, label, coordinates: str = "ijk", propagate: int | None = 0) -> list[SliceResult]:
        """Add a box (two opposite corners on one slice) for `label` and return the updated slices."""
        (s, r0, c0), (s1, r1, c1) = self._to_slice(corner_a, coordinates), self._to_slice(corner_b, coordinates)
        if s != s1:
            raise ValueError(f"box corners lie on different slices ({s} and {s1}); give a box on one slice")
        prompt = self._prompt(s, label_value(label, self._label_table(), "box"))
        prompt.box = (min(r0, r1), min(c0, c1), max(r0, r1), max(c0, c1))
        return self._update(s, prompt, propagate)

    def clear(self, position, coordinates: str = "ijk") -> SliceResult:
        """Remove every prompt and object of the slice holding `position` and return its automatic labels."""
        s = self._to_slice(position, coordinates)[0]
        self._prompts.pop(s, None)
        for key in [k for k in self._objects if k[0] == s]:
            del self._objects[key]
        return self._store(s)

    # ---- internals -----------------------------------------------------------------------
    def _label_table(self) -> dict[str, int]:
        return self._labels if self._labels is not None else self.plan.labels

    def _output_values(self, labels: np.ndarray) -> np.ndarray:
        return labels if self._values is None else self._values[labels]

    def _to_slice(self, position, coordinates: str) -> tuple[int, float, float]:
        if self._case is None:
            raise RuntimeError("open a volume first")
        s, r, c = array_index_to_preprocessed(to_array_index(position, coordinates, self.geometry), self._case.properties)[0]
        if not 0 <= s < self._case.image.shape[0]:
            raise ValueError(f"position {position} lies outside the volume")
        return int(s), float(r), float(c)

    def _prompt(self, s: int, value: int) -> SlicePrompt:
        return self._prompts.setdefault(s, {}).setdefault(value, SlicePrompt(value))

    @torch.inference_mode()
    def _segment(self, s: int, prompt: SlicePrompt) -> np.ndarray:
        return self.predictor.object_probability(self._embeddings, s, prompt, self._volumes, self._case.properties)

    def _update(self, s: int, prompt: SlicePrompt, propagate: int | None) -> list[SliceResult]:
        """Segment the prompted object on slice s and, when asked, carry it to its neighbours."""
        n_slices = self._case.image.shape[0]
        rules = self.predictor.carry_rules
        if propagate == 0:
            objects = {(s, prompt.label): self._segment(s, prompt)}
        else:
            seeds = {s: [prompt]}
            limit = n_slices if propagate is None else propagate
            window = (max(0, s - limit), min(n_slices - 1, s + limit))

            def segment(t: int, p: SlicePrompt) -> np.ndarray:
                if not window[0] <= t <= window[1]:
                    return np.zeros(self._case.image.shape[2:], np.float32)  # outside the window: the walk stops
                return self._segment(t, p)

            objects = carry_objects(seeds, n_slices, segment, rules, self._case.image[:, 0])
        self._objects.update(objects)
        return [self._store(t) for t in sorted({t for t, _ in objects})]

    def _store(self, s: int) -> SliceResult:
        """Write slice s (automatic labels with its objects merged) into the label map."""
        probabilities = self._automatic[:, s].clone()
        output_mode = self.predictor.config.output_mode
        for (t, label), p in self._objects.items():
            if t == s:
                probabilities = merge_object(probabilities, torch.from_numpy(p), label, output_mode,
                                             self.predictor.object_merge)
        if self.predictor.automatic and output_mode == "softmax" and s in self._prompts:  # a click names its bone
            clicked = {0: list(self._prompts[s].values())}
            probabilities = apply_clicked_labels(probabilities[:, None], clicked, carried=False)[:, 0]
        axis, index, plane = slice_probabilities_to_original(probabilities.numpy(), s, self._case.properties)
        plane = self._output_values(plane)
        where = [slice(None)] * 3
        where[axis] = index
        self.labels[tuple(where)] = plane
        return SliceResult(axis, index, plane)
