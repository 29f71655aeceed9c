"""A tiny trained-looking model folder for prediction tests: a phantom cohort planned and
preprocessed, its plan shrunk to a tiny model, and folds saved with random weights."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from sabnet.model.config import ModelConfig
from sabnet.model.sab_model import SABModel
from sabnet.paths import resolve_dataset
from sabnet.phantoms.cohort import make_phantom_dataset
from sabnet.planning.plans import load_plan
from sabnet.preprocessing.plan_and_preprocess import PlanningOptions, plan_and_preprocess
from sabnet.training.checkpoints import save_checkpoint
from sabnet.training.layout import prepare_results_folder

TINY = dict(variant="custom", image_size=64, patch_size=8, window_size=8, encoder_embed_dim=32, encoder_depth=2,
            encoder_num_heads=2, encoder_global_attn_indexes=[1], prompt_embed_dim=32, decoder_num_heads=2,
            decoder_mlp_dim=64, depth_channels=[4, 8])


ROOT_VARIABLES = {"SABNET_HOME": "", "SABNET_RAW": "raw", "SABNET_PREPROCESSED": "preprocessed", "SABNET_RESULTS": "results"}


def use_roots(monkeypatch, home: Path) -> None:
    """Point the sabnet roots at `home` (module-scoped fixtures outlive the per-test roots)."""
    for key, sub in ROOT_VARIABLES.items():
        monkeypatch.setenv(key, str(home / sub))


def make_model_folder(root: Path, n_folds: int = 2, **phantom_settings) -> tuple[Path, Path]:
    """Returns (raw dataset folder, model folder), with the roots under root/home."""
    import pytest

    with pytest.MonkeyPatch.context() as monkeypatch:
        use_roots(monkeypatch, root / "home")
        return _make_model_folder(root, n_folds, **phantom_settings)


def _make_model_folder(root: Path, n_folds: int, **phantom_settings) -> tuple[Path, Path]:
    settings = dict(locations=("knee",), sequences=("T1",), n_cases=3, seed=11, in_plane_size=64, n_slices=8,
                    planes=("oblique", "sagittal"), slice_spacing_mm=(3.0, 4.0), dataset_name="Dataset960_Predict")
    settings.update(phantom_settings)
    raw = make_phantom_dataset(root / settings["dataset_name"], **settings)
    ref = resolve_dataset(str(raw))
    plan_and_preprocess(ref, PlanningOptions(), verify=False, plan_only=True)
    plans_file = ref.preprocessed_dir / "plans.json"
    plan = json.loads(plans_file.read_text())
    plan["model"].update(TINY)
    plans_file.write_text(json.dumps(plan, indent=1))
    plan = load_plan(ref.preprocessed_dir)
    folder = prepare_results_folder(ref, plan)
    for fold in range(n_folds):
        torch.manual_seed(100 + fold)
        model = SABModel(ModelConfig.from_dict(plan.model))
        with torch.no_grad():
            model.depth_fusion.block[-1].weight.normal_(0, 0.2)  # as if trained: 3D mode differs from 2D mode
        save_checkpoint(folder / f"fold_{fold}", "final", model, plan,
                        {"fold": fold, "stage": "3d", "stages_done": ["2d", "3d"], "epoch": 0})
    return raw, folder
