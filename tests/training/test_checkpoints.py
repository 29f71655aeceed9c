"""Checkpoints: plain state dicts and JSON metadata loadable with weights_only=True; plan-hash,
settings and architecture checks; starting stage 1 from a SAM-format checkpoint."""
import json

import pytest
import torch
from trainer_cohort import one_torch_thread, tiny_cohort  # noqa: F401 (autouse fixture)

from sabnet.cli.train import main as sab_train
from sabnet.errors import SabnetError
from sabnet.model.checkpoint import SAM_PREFIXES, read_state_dict
from sabnet.model.config import ModelConfig
from sabnet.model.sab_model import SABModel
from sabnet.paths import resolve_dataset
from sabnet.planning.plans import load_plan, save_plan
from sabnet.training.checkpoints import KINDS, load_checkpoint, load_weights
from sabnet.training.run_training import TrainingOptions, train
from sabnet.version import __version__


def test_checkpoint_files_metadata_and_checks(capsys):
    raw = tiny_cohort()
    ref = resolve_dataset(str(raw))
    plan = load_plan(ref.preprocessed_dir)
    [result] = train(ref, 3, TrainingOptions(stage="2d", epochs=2, iterations_per_epoch=2, n_workers=0,
                                             final_validation=False), log=lambda _: None)
    fold = result.fold_dir
    meta = json.loads((fold / "checkpoint_latest" / "metadata.json").read_text())
    assert meta["sabnet_version"] == __version__ and meta["plan_hash"] == plan.hash() and meta["kind"] == "latest"
    assert (meta["fold"], meta["stage"], meta["phase"], meta["epoch"], meta["n_epochs"]) == (3, "2d", "2d", 1, 2)
    t = plan.training
    assert meta["schedule"] == {"epochs": 2, "iterations_per_epoch": 2, "batch_size": t.batch_size,
                                "initial_lr": t.initial_lr, "weight_decay": t.weight_decay, "warmup_epochs": 1}
    assert meta["overrides"] == {"epochs": 2, "iterations_per_epoch": 2, "budget_minutes": None}
    assert set(meta["pseudo_dice"]) == {n for n in plan.labels if n != "background"}
    assert isinstance(meta["ema_dice"], float) and meta["epoch_time_s"] > 0 and len(meta["history"]) == 2
    assert ModelConfig.from_dict(meta["model_config"]) == ModelConfig.from_dict(plan.model)
    assert meta["pretrained"] is False and meta["stages_done"] == ["2d"]

    for kind in KINDS:
        state = torch.load(fold / f"checkpoint_{kind}" / "model.pth", weights_only=True)
        assert state and all(isinstance(v, torch.Tensor) for v in state.values())
        assert (fold / f"checkpoint_{kind}" / "training_state.pth").is_file() == (kind == "latest")
    training_state = torch.load(fold / "checkpoint_latest" / "training_state.pth", weights_only=True)
    assert training_state["scheduler"]["last_epoch"] == 4  # 2 epochs x 2 iterations
    trainable = sum(p.requires_grad for p in result_model(plan).parameters())
    assert len(training_state["optimizer"]["param_groups"][0]["params"]) == trainable
    assert 0 < len(training_state["optimizer"]["state"]) <= trainable  # Adam state of the parameters that got gradients
    assert set(training_state["rng"]) >= {"python", "numpy", "torch"}
    model, final_meta = load_checkpoint(fold, "final", plan)
    final = read_state_dict(fold / "checkpoint_final" / "model.pth")
    assert all(torch.equal(v, final[k]) for k, v in model.state_dict().items())
    assert final_meta["weight_digests"] and final_meta["completed_phases"] == ["2d"]

    # another architecture is refused, naming what differs
    other = SABModel(ModelConfig.for_variant("sab_tiny", 64, n_outputs=plan.model["n_outputs"],
                                             n_labels=plan.model["n_labels"]))
    with pytest.raises(SabnetError, match="another model architecture.*encoder_depth"):
        load_weights(other, fold, "latest", plan)
    # --continue with other settings is refused
    base = ["-d", str(raw), "-f", "3", "--stage", "2d", "-nw", "0", "--no-validation", "--continue"]
    assert sab_train(base + ["--epochs", "5"]) == 1
    assert "--epochs 5 differs from the run being continued (2)" in capsys.readouterr().err
    # an edited plan no longer matches the checkpoints
    plan.training.initial_lr *= 2
    save_plan(plan, ref.preprocessed_dir)
    with pytest.raises(SabnetError, match="trained with another plan"):
        load_checkpoint(fold, "final", plan)
    assert sab_train(base) == 1
    assert "another plan" in capsys.readouterr().err


def result_model(plan) -> SABModel:
    model = SABModel(ModelConfig.from_dict(plan.model))
    model.configure_trainable(pretrained=False, stage="2d")
    return model


def test_stage1_starts_from_a_sam_format_checkpoint(tmp_path, capsys):
    raw = tiny_cohort()
    ref = resolve_dataset(str(raw))
    plan = load_plan(ref.preprocessed_dir)
    # a plan made for a checkpoint ("custom" SAM architecture) and that checkpoint: SAM's tensors only
    plan.model["variant"] = "custom"
    save_plan(plan, ref.preprocessed_dir)
    sam = {k: v for k, v in SABModel(ModelConfig.from_dict(plan.model)).state_dict().items()
           if k.startswith(SAM_PREFIXES) and ".adapter_" not in k}
    torch.save(sam, tmp_path / "sam_custom.pth")
    deeper = dict(plan.model, encoder_depth=3, encoder_global_attn_indexes=[2])
    torch.save({k: v for k, v in SABModel(ModelConfig.from_dict(deeper)).state_dict().items() if k in sam or
                k.startswith("image_encoder.blocks.2.") and ".adapter_" not in k}, tmp_path / "sam_deeper.pth")
    args = ["-d", str(raw), "-f", "4", "--stage", "2d", "--epochs", "1", "--iters-per-epoch", "2", "-nw", "0",
            "--no-validation", "--sam-checkpoint"]
    assert sab_train(args + [str(tmp_path / "sam_deeper.pth")]) == 1
    err = capsys.readouterr().err
    assert "sam_deeper.pth" in err and "encoder_depth" in err and "Traceback" not in err

    assert sab_train(args + [str(tmp_path / "sam_custom.pth")]) == 0
    model, meta = load_checkpoint(ref.results_dir / "custom_64" / "fold_4", "final", plan)
    assert meta["pretrained"] is True and meta["sam_checkpoint"].endswith("sam_custom.pth")
    state = model.state_dict()
    # SAM's encoder weights stayed frozen; adapters and decoder trained
    assert all(torch.equal(state[k], sam[k]) for k in sam if k.startswith(("image_encoder.", "prompt_encoder.")))
    assert not all(torch.equal(state[k], sam[k]) for k in sam if k.startswith("mask_decoder."))
    adapters = [k for k in state if ".adapter_" in k and k.endswith("up.weight")]
    assert adapters and any(state[k].abs().sum() > 0 for k in adapters)


def test_best_checkpoint_keeps_the_best_epoch_when_written_later(monkeypatch):
    """Within a phase checkpoint_best and progress.png are written at most every WRITE_INTERVAL_S
    (and after the first and last epoch); the best weights wait in memory, so what is finally
    written is the best epoch's model, not the last one's."""
    from sabnet.training import progress, trainer
    from sabnet.training.slice_phase import SlicePhase
    from sabnet.training.trainer import ValidationScores

    monkeypatch.setattr(trainer, "WRITE_INTERVAL_S", 1e9)
    dice = iter([0.2, 0.9, 0.1, 0.1])  # smoothed: 0.2, 0.27, 0.253, 0.2377: best after epoch 2 of 4
    weights_after = []

    def validate(self, model):
        weights_after.append({k: v.clone() for k, v in model.state_dict().items()})
        return ValidationScores(0.5, {name: next(dice) for name in list(self.labels)[:1]})

    plots = []
    monkeypatch.setattr(SlicePhase, "validate", validate)
    monkeypatch.setattr(progress, "plot_progress", lambda history, path: plots.append(len(history)))
    ref = resolve_dataset(str(tiny_cohort()))
    [result] = train(ref, 4, TrainingOptions(stage="2d", epochs=4, iterations_per_epoch=2, n_workers=0,
                                             final_validation=False), log=lambda _: None)
    fold = result.fold_dir
    assert plots == [1, 4]  # after the first and the last epoch only
    best = json.loads((fold / "checkpoint_best" / "metadata.json").read_text())
    assert best["epoch"] == 1 and best["ema_dice"] == pytest.approx(0.27)
    written = read_state_dict(fold / "checkpoint_best" / "model.pth")
    assert all(torch.equal(written[k], weights_after[1][k]) for k in written)
    assert not all(torch.equal(written[k], weights_after[3][k]) for k in written)
    log = (fold / "training_log.txt").read_text()
    assert log.count("checkpoint_best written") == 2 and "smoothed Dice 0.2700, epoch 2)" in log
    # checkpoint_latest still follows every epoch (what --continue resumes from)
    assert json.loads((fold / "checkpoint_latest" / "metadata.json").read_text())["epoch"] == 3
