"""Where training writes: one results folder per dataset and plan, one sub-folder per fold.

    <SABNET_RESULTS>/<dataset>/<variant>_<image_size>/
        plans.json, dataset.json     copies made at training start: prediction needs only this folder
        fold_0/ .. fold_4/
            checkpoint_latest/ checkpoint_best/ checkpoint_final/ checkpoint_final_2d/
            training_log.txt, progress.png
            depth_probabilities/<case>.npy   stage 2: the depth net's bone probabilities per case
            validation/                      full-volume predictions of the fold's validation cases
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from sabnet.errors import SabnetError
from sabnet.io.atomic import atomic_path
from sabnet.paths import DatasetRef
from sabnet.planning.plans import PLANS_FILE, Plan, save_plan

TRAINING_LOG = "training_log.txt"
PROGRESS_PLOT = "progress.png"
VALIDATION_DIR = "validation"
DEPTH_PROBABILITIES_DIR = "depth_probabilities"


def plan_name(plan: Plan) -> str:
    """'sab_tiny_256': the model variant and input size that tell trained configurations apart."""
    return f"{plan.model['variant']}_{plan.model['image_size']}"


def results_folder(ref: DatasetRef, plan: Plan) -> Path:
    """<results root>/<dataset>/<variant>_<image_size>."""
    return ref.results_dir / plan_name(plan)


def fold_dir(results: Path, fold: int) -> Path:
    return Path(results) / f"fold_{int(fold)}"


def prepare_results_folder(ref: DatasetRef, plan: Plan) -> Path:
    """Create the results folder and copy plans.json and dataset.json into it.

    A folder whose folds hold checkpoints of another plan is refused: overwriting its plans.json
    would make those checkpoints unusable.
    """
    folder = results_folder(ref, plan)
    folder.mkdir(parents=True, exist_ok=True)
    foreign = [p.parent for p in folder.glob("fold_*/checkpoint_*/metadata.json")
               if _plan_hash_of(p) not in (None, plan.hash())]
    if foreign:
        raise SabnetError(f"{folder}: holds models trained with another plan ({foreign[0]}); restore that plan in "
                          f"{ref.preprocessed_dir / PLANS_FILE}, or move {folder} away to train with the new one")
    save_plan(plan, folder)
    source = ref.raw_dir / "dataset.json"
    if source.is_file():
        with atomic_path(folder / "dataset.json") as tmp:
            shutil.copyfile(source, tmp)
    return folder


def _plan_hash_of(metadata_file: Path) -> str | None:
    try:
        return json.loads(metadata_file.read_text(encoding="utf-8")).get("plan_hash")
    except (OSError, json.JSONDecodeError):
        return None
