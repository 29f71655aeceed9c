"""End of training: predict the fold's validation cases as whole volumes, the way `sab_predict`
does (raw image -> the plan's preprocessing -> `EnsemblePredictor` -> `probabilities_to_original`,
back onto the raw image's grid), and evaluate them against their raw reference labels with
sabnet.evaluation.

    fold_N/validation/
        <case>.nii.gz            the prediction in the fold's final mode, on the raw image's grid
        summary.csv/json         its evaluation (sabnet.evaluation.write; read_summary reads it)
        2d/<case>.nii.gz, 2d/summary.csv/json
                                 after stage 2 (final mode '3d'): the same model in 2D mode
        modes.csv                one row per mode and label (and 'foreground mean'): mean Dice
                                 and IoU, to compare the modes at a glance
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm import tqdm

from sabnet.dataset.raw_dataset import RawDataset
from sabnet.evaluation.evaluate import EvaluationResult, evaluate_case, write
from sabnet.io.atomic import atomic_path
from sabnet.io.image_io import read_image, write_image
from sabnet.model.case_predictor import CaseEmbeddings, EnsemblePredictor
from sabnet.model.sab_model import SABModel
from sabnet.planning.plans import Plan
from sabnet.planning.slicing import slicing_for
from sabnet.preprocessing.case_preprocessing import map_labels, preprocess_arrays
from sabnet.preprocessing.inverse import probabilities_to_original
from sabnet.training.embedding_cache import EmbeddingCache
from sabnet.training.layout import VALIDATION_DIR

MODES_TABLE = "modes.csv"


def validate_fold(model: SABModel, plan: Plan, raw_dir: Path, case_ids: list[str], fold_dir: Path,
                  modes: list[str], device, batch_size: int = 8, show_progress: bool = True,
                  cache: EmbeddingCache | None = None) -> dict[str, EvaluationResult]:
    """Predict and evaluate `case_ids` in each of `modes` ('2d', '3d'); the last mode is the fold's
    final one and goes into `validation/` itself, the others into `validation/<mode>/`. Each case
    is encoded once for all modes, or not at all when `cache` (a frozen encoder's embedding cache)
    holds it.

    Returns {mode: EvaluationResult} (Dice, IoU, HD95, ASD per case and label).
    """
    dataset = RawDataset.load(raw_dir)
    predictor = EnsemblePredictor([model], device, batch_size=batch_size)
    model.eval()
    out = Path(fold_dir) / VALIDATION_DIR
    folders = {mode: out if mode == modes[-1] else out / mode for mode in modes}
    rows: dict[str, list[dict]] = {mode: [] for mode in modes}
    for case_id in tqdm(case_ids, desc="validation", unit="case", disable=not show_progress, leave=False):
        case = dataset.case(case_id)
        channels, geometry = [], None
        for path in case.image_files:
            array, geometry = read_image(path)
            channels.append(array)
        reference = map_labels(read_image(case.label_file)[0], plan.label_mapping)
        slicing = plan.preprocessing.cases.get(case_id) or slicing_for(geometry, plan.preprocessing.majority_plane)
        prepared = preprocess_arrays(channels, geometry, None, plan, slicing, case.sequence)
        stored = None
        if cache is not None and case_id in cache.index()["cases"]:
            embeddings = cache.embeddings(case_id)
            if len(embeddings) == len(cache.tiles(case_id)):
                stored = {cache.index()["encoder"]: (cache.lookup(case_id), embeddings)}
        shared = CaseEmbeddings(predictor, prepared.image, keep_all=len(modes) > 1, stored=stored)
        for mode in modes:
            probabilities = predictor.predict(prepared.image, prepared.depth_image, prepared.properties, mode,
                                              embeddings=shared)
            labels, _ = probabilities_to_original(probabilities, prepared.properties)
            write_image(labels, geometry, folders[mode] / f"{case_id}.nii.gz")
            rows[mode] += evaluate_case(reference, labels, geometry, plan.labels, case=case_id,
                                        sequence=case.sequence, location=case.location)
    results = {mode: EvaluationResult.from_rows(rows[mode], plan.labels) for mode in modes}
    for mode, result in results.items():
        write(result, folders[mode])
    _write_modes_table(results, out / MODES_TABLE)
    return results


def _write_modes_table(results: dict[str, EvaluationResult], path: Path) -> None:
    frames = []
    for mode, result in results.items():
        per_label = result.means_per_label[["label", "n_cases", "dice", "iou"]]
        overall = result.foreground_means()[["n_cases", "dice", "iou"]].assign(label="foreground mean")
        frames.append(pd.concat([per_label, overall], ignore_index=True).assign(mode=mode))
    table = pd.concat(frames, ignore_index=True)[["mode", "label", "n_cases", "dice", "iou"]]
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")


def final_modes(phases_done: list[str]) -> list[str]:
    """Modes to validate: '2d' after stage 1 only; '2d' and '3d' (final) once stage 2 ran."""
    return ["2d", "3d"] if "fusion" in phases_done else ["2d"]

