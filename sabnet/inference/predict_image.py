"""Predict one image given as arrays on its geometry: preprocess by the plan, predict with the
ensemble, and map the result back onto exactly the input's grid."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sabnet.model.case_predictor import EnsemblePredictor
from sabnet.model.slice_prompts import SlicePrompt
from sabnet.io.geometry import Geometry
from sabnet.planning.plans import Plan
from sabnet.planning.slicing import slicing_for
from sabnet.preprocessing.case_preprocessing import preprocess_arrays
from sabnet.preprocessing.inverse import probabilities_to_original

UNKNOWN_SEQUENCE = "unknown"


@dataclass
class ImagePrediction:
    """labels: (array order, as the input) output label values; probabilities: (K, *input shape)
    float32 or None; properties: the preprocessing record (frame, crop, spacing)."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    properties: dict


def preprocess_for_prediction(channels: list[np.ndarray], geometry: Geometry, plan: Plan, case_id: str | None = None,
                              sequence: str = UNKNOWN_SEQUENCE):
    """The plan's preprocessing of a new image (its slicing decided by the same rule as planning)."""
    slicing = plan.preprocessing.cases.get(case_id) if case_id else None
    if slicing is None:
        slicing = slicing_for(geometry, plan.preprocessing.majority_plane)
    return preprocess_arrays(channels, geometry, None, plan, slicing, sequence)


def predict_image(channels: list[np.ndarray], geometry: Geometry, plan: Plan, predictor: EnsemblePredictor,
                  mode: str = "2d", prompts: dict[int, list[SlicePrompt]] | None = None,
                  keep_probabilities: bool = False, case_id: str | None = None,
                  sequence: str = UNKNOWN_SEQUENCE) -> ImagePrediction:
    """channels: list of (array order) arrays of one image -> its prediction on the same grid.

    prompts are in preprocessed slice coordinates; build them with
    `sabnet.inference.prompt_coordinates` from voxel or world positions.
    """
    case = preprocess_for_prediction(channels, geometry, plan, case_id, sequence)
    probabilities = predictor.predict(case.image, case.depth_image, case.properties, mode, prompts)
    labels, full = probabilities_to_original(probabilities, case.properties, keep_probabilities)
    return ImagePrediction(labels, full, case.properties)
