"""Checkpoints of a trained fold: plain state dicts plus JSON metadata, loadable with weights_only.

    fold_N/checkpoint_<kind>/            kind: latest | best | final | final_2d
        model.pth            the model's state dict (SAM's names for SAM's parts)
        training_state.pth   optimizer, scheduler and RNG states (latest only; weights_only-safe)
        metadata.json        sabnet version, plan hash, model config, stage, epoch, metrics

latest: end of the last finished epoch (what --continue resumes); best: highest smoothed
validation Dice of the last segmentation phase; final: end of the stages run; final_2d: end of
stage 1, where stage 2 starts from.

Each checkpoint folder is written under a temporary name and swapped in, so a kill at any moment
leaves the previous complete checkpoint.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sabnet.errors import SabnetError
from sabnet.model.checkpoint import read_state_dict
from sabnet.model.config import ModelConfig
from sabnet.model.sab_model import SABModel
from sabnet.planning.plans import Plan
from sabnet.version import __version__

KINDS = ("latest", "best", "final", "final_2d")


def checkpoint_dir(fold_dir: Path, kind: str) -> Path:
    if kind not in KINDS:
        raise SabnetError(f"checkpoint kind {kind!r} must be one of {', '.join(KINDS)}")
    return Path(fold_dir) / f"checkpoint_{kind}"


def save_checkpoint(fold_dir: Path, kind: str, model: torch.nn.Module, plan: Plan, metadata: dict[str, Any],
                    training_state: dict[str, Any] | None = None, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint folder atomically. `metadata` must be JSON-serialisable. `weights`: a state
    dict of `model` taken earlier, written instead of the model's current weights."""
    final = checkpoint_dir(fold_dir, kind)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{uuid.uuid4().hex[:8]}-{final.name}"
    tmp.mkdir()
    try:
        module = model.module if hasattr(model, "module") else model
        state = module.state_dict() if weights is None else weights
        torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp / "model.pth")
        if training_state is not None:
            torch.save(training_state, tmp / "training_state.pth")
        meta = dict(metadata, sabnet_version=__version__, plan_hash=plan.hash(), kind=kind,
                    model_config=module.config.to_dict())
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        old = None
        if final.exists():
            old = final.parent / f".old-{uuid.uuid4().hex[:8]}-{final.name}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def recover_interrupted(fold_dir: Path) -> None:
    """If a kill fell between the two renames of `save_checkpoint`, put the old checkpoint back."""
    fold_dir = Path(fold_dir)
    if not fold_dir.is_dir():
        return
    for old in fold_dir.glob(".old-*-checkpoint_*"):
        target = fold_dir / old.name.split("-", 2)[2]
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, target)
    for tmp in fold_dir.glob(".tmp-*-checkpoint_*"):
        shutil.rmtree(tmp, ignore_errors=True)


def read_metadata(fold_dir: Path, kind: str) -> dict:
    path = checkpoint_dir(fold_dir, kind) / "metadata.json"
    if not path.is_file():
        raise SabnetError(f"{path.parent}: no {kind} checkpoint; train this fold first (sab_train) "
                          f"or choose another with -chk")
    return json.loads(path.read_text(encoding="utf-8"))


def load_checkpoint(fold_dir: Path, kind: str, plan: Plan, device: str | torch.device = "cpu") -> tuple[SABModel, dict]:
    """Build the fold's model from its checkpoint (weights_only) after checking the plan hash.

    Returns (model in eval mode on `device`, metadata).
    """
    meta = read_metadata(fold_dir, kind)
    _check_plan(meta, fold_dir, kind, plan)
    model = SABModel(ModelConfig.from_dict(meta["model_config"]))
    _load_state(model, fold_dir, kind)
    model.to(device).eval()
    return model, meta


def load_weights(model: torch.nn.Module, fold_dir: Path, kind: str, plan: Plan) -> dict:
    """Load a checkpoint's weights into an existing model (training resumes this way) after checking
    the plan hash and that the checkpoint's model config is the model's. Returns the metadata."""
    meta = read_metadata(fold_dir, kind)
    _check_plan(meta, fold_dir, kind, plan)
    if meta.get("model_config") != model.config.to_dict():
        changed = sorted(k for k, v in model.config.to_dict().items() if meta.get("model_config", {}).get(k) != v)
        raise SabnetError(f"{checkpoint_dir(fold_dir, kind)}: made for another model architecture (differs in "
                          f"{', '.join(changed[:6])}); retrain without --continue or restore that architecture")
    _load_state(model, fold_dir, kind)
    return meta


def _check_plan(meta: dict, fold_dir: Path, kind: str, plan: Plan) -> None:
    if meta.get("plan_hash") != plan.hash():
        raise SabnetError(f"{checkpoint_dir(fold_dir, kind)}: trained with another plan (hash {meta.get('plan_hash')}, "
                          f"plans.json now has {plan.hash()}); restore the plan it was trained with or retrain")


def _load_state(model: torch.nn.Module, fold_dir: Path, kind: str) -> None:
    state = read_state_dict(checkpoint_dir(fold_dir, kind) / "model.pth")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SabnetError(f"{checkpoint_dir(fold_dir, kind)}/model.pth does not fit its model config "
                          f"(missing {missing[:5]}, unexpected {unexpected[:5]}); the file is damaged or was replaced")


def remove_checkpoints(fold_dir: Path, kinds: tuple[str, ...]) -> list[str]:
    """Delete the named checkpoint folders of a fold (a new run must not leave an old run's best or
    final beside its own); returns the kinds that existed."""
    removed = []
    for kind in kinds:
        path = checkpoint_dir(fold_dir, kind)
        if path.exists():
            shutil.rmtree(path)
            removed.append(kind)
    return removed


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) random states, as types weights_only loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_state(fold_dir: Path, kind: str = "latest") -> dict:
    path = checkpoint_dir(fold_dir, kind) / "training_state.pth"
    if not path.is_file():
        raise SabnetError(f"{path}: no training state to continue from; start without --continue")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SabnetError(f"{path}: cannot be read ({type(e).__name__}: {e}); start without --continue") from None
