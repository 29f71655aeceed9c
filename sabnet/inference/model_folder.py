"""Finding a trained model folder and loading its folds as an ensemble.

    <SABNET_RESULTS>/<dataset>/<plan name>/     plans.json, dataset.json, postprocessing.json
        fold_0 .. fold_4/checkpoint_{final,best,latest}/
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from sabnet.errors import SabnetError
from sabnet.model.sab_model import SABModel
from sabnet.paths import DatasetRef
from sabnet.planning.plans import PLANS_FILE, Plan, load_plan
from sabnet.training.checkpoints import checkpoint_dir, load_checkpoint


def find_model_folder(ref: DatasetRef, name: str | None = None) -> Path:
    """The trained model folder of a dataset (the only one, or the one called `name`)."""
    if name:
        folder = ref.results_dir / name
        if not (folder / PLANS_FILE).is_file():
            raise SabnetError(f"{folder}: no trained model here (no {PLANS_FILE}); train with sab_train -d {ref.name}")
        return folder
    candidates = sorted(p.parent for p in ref.results_dir.glob(f"*/{PLANS_FILE}")) if ref.results_dir.is_dir() else []
    if not candidates:
        raise SabnetError(f"{ref.results_dir}: no trained model for {ref.name}; train one with sab_train -d {ref.name} -f all")
    if len(candidates) > 1:
        raise SabnetError(f"{ref.results_dir}: several trained models ({', '.join(c.name for c in candidates)}); "
                          "choose one with -p NAME")
    return candidates[0]


BEST_CONFIGURATION_FILE = "best_configuration.json"
DEFAULT_MODE = "2d"  # 3D mode has not measured better than 2D on real data (docs/benchmarks.md)


def chosen_mode(folder: Path) -> tuple[str, str]:
    """(mode, why) sab_predict uses when not told: the mode sab_find_best_configuration chose for
    this model folder (its best_configuration.json), else DEFAULT_MODE."""
    path = folder / BEST_CONFIGURATION_FILE
    if path.is_file():
        try:
            best = json.loads(path.read_text(encoding="utf-8"))
            mode, why = best.get("mode"), best.get("mode_reason")
        except (OSError, ValueError, AttributeError) as e:
            raise SabnetError(f"{path}: unreadable ({e}); run sab_find_best_configuration again or give --mode") from e
        if mode not in ("2d", "3d"):
            raise SabnetError(f"{path}: mode {mode!r} is neither 2d nor 3d; run sab_find_best_configuration again "
                              "or give --mode")
        return mode, f"chosen by sab_find_best_configuration ({path.name}{': ' + why if why else ''})"
    return DEFAULT_MODE, ("the default: 3D mode has not measured better than 2D on real data; "
                          "sab_find_best_configuration compares them on this model's folds")


def available_folds(folder: Path, checkpoint: str) -> list[int]:
    folds = []
    for fold_dir in sorted(folder.glob("fold_*")):
        suffix = fold_dir.name.split("_", 1)[1]
        if suffix.isdigit() and (checkpoint_dir(fold_dir, checkpoint) / "model.pth").is_file():
            folds.append(int(suffix))
    return sorted(folds)


def load_ensemble(folder: Path, folds: list[int] | None, checkpoint: str, device: str | torch.device,
                  mode: str = "2d") -> tuple[Plan, list[SABModel], list[int]]:
    """Load `folds` (default: every fold with that checkpoint) of a model folder for `mode`."""
    plan = load_plan(folder)
    folds = folds if folds else available_folds(folder, checkpoint)
    if not folds:
        raise SabnetError(f"{folder}: no fold has a checkpoint_{checkpoint}; finish training or choose -chk latest")
    models = []
    for fold in folds:
        fold_dir = folder / f"fold_{fold}"
        model, meta = load_checkpoint(fold_dir, checkpoint, plan, device)
        if mode == "3d" and "3d" not in meta.get("stages_done", [meta.get("stage", "2d")]):
            raise SabnetError(f"{fold_dir}: trained without the depth branch (stage 2); run sab_train --stage 3d "
                              "or predict with --mode 2d")
        models.append(model)
    return plan, models, folds
