"""The trainer: losses and schedule, a stage-1 run that learns and reports, stage 2 on top of it,
and the user errors of sab_train."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread
from trainer_cohort import one_torch_thread, tiny_cohort  # noqa: F401 (autouse fixture)

from sabnet.cli.train import main as sab_train
from sabnet.io.image_io import read_geometry
from sabnet.paths import resolve_dataset
from sabnet.planning.plans import load_plan
from sabnet.preprocessing.store import PreprocessedStore
from sabnet.training.checkpoints import load_checkpoint
from sabnet.training.layout import results_folder
from sabnet.training.losses import segmentation_loss
from sabnet.training.run_training import TrainingOptions, train
from sabnet.training.schedule import Schedule, lr_factor, make_optimizer


def test_losses_reward_the_right_answer():
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[:, 4:10, 4:10] = 1
    target[:, 12:, 12:] = 2
    right = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() * 20 - 10
    wrong = right.roll(1, dims=1)
    assert segmentation_loss(right, target, "softmax") < 0.01
    assert segmentation_loss(wrong, target, "softmax") > 1.5
    bone = right[:, 1:2] * 0 + (target > 0)[:, None].float() * 20 - 10
    assert segmentation_loss(bone, target, "sigmoid") < 0.01
    assert segmentation_loss(-bone, target, "sigmoid") > 1.5


def test_schedule_warms_up_then_decays_to_zero_per_iteration():
    assert [lr_factor(s, 4, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 20) == 1.0
    assert lr_factor(12, 4, 20) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(19, 4, 20) == pytest.approx((1 / 16) ** 0.9)
    schedule = Schedule(epochs=5, iterations_per_epoch=4, batch_size=2, initial_lr=1e-3, weight_decay=0.01,
                        warmup_epochs=1)
    optimizer, scheduler = make_optimizer([torch.nn.Parameter(torch.zeros(1))], schedule)
    lrs = []
    for _ in range(schedule.total_iterations):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] < 0.1e-3
    # on the CPU the fused kernel; a plain optimizer's saved state (an older checkpoint) loads into it
    assert optimizer.param_groups[0]["fused"]
    plain = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    plain.step()
    fused, _ = make_optimizer([torch.nn.Parameter(torch.zeros(1))], schedule)
    fused.load_state_dict(plain.state_dict())
    fused.step()
    assert not fused.param_groups[0]["fused"]  # the saved settings win: that run goes on plain
    # a run too short for the planned warm-up warms up over at most half of it
    assert Schedule(2, 4, 2, 1e-3, 0.01, warmup_epochs=5).warmup_epochs == 1
    assert Schedule(1, 4, 2, 1e-3, 0.01, warmup_epochs=5).warmup_epochs == 0


def test_stage1_learns_and_shows_progress_and_validation():
    raw = tiny_cohort()
    ref = resolve_dataset(str(raw))
    lines = []
    [result] = train(ref, 0, TrainingOptions(stage="2d", epochs=4, iterations_per_epoch=10, n_workers=0),
                     log=lines.append)
    history = result.metadata["history"]
    assert [r["epoch"] for r in history] == [0, 1, 2, 3]
    # the loss really falls: mean of the last 10 iterations well below the first 10
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert all(r["val_loss"] is not None and 0 <= r["mean_dice"] <= 1 for r in history)
    assert history[-1]["mean_dice"] > history[0]["mean_dice"]

    fold = result.fold_dir
    plan = load_plan(ref.preprocessed_dir)
    assert fold == results_folder(ref, plan) / "fold_0"
    assert load_plan(fold.parent).hash() == plan.hash() and (fold.parent / "dataset.json").is_file()
    log = (fold / "training_log.txt").read_text()
    assert log.count("pseudo Dice") == 4 and "2d epoch 4/4" in log and "trainable" in log
    picture = imread(fold / "progress.png")
    assert picture.ndim == 3 and picture.shape[0] > 300 and picture.std() > 0.05
    for kind in ("latest", "best", "final", "final_2d"):
        assert (fold / f"checkpoint_{kind}" / "model.pth").is_file()

    # validation: every validation case predicted on its raw image's grid and evaluated
    val_ids = json.loads((ref.preprocessed_dir / "splits_final.json").read_text())[0]["val"]
    summary = pd.read_csv(fold / "validation" / "summary.csv")
    foreground = [n for n in plan.labels if n != "background"]
    assert sorted(summary["case"].unique()) == sorted(val_ids)
    assert len(summary) == len(val_ids) * len(foreground)
    measured = summary["dice"].dropna()
    assert len(measured) > 0 and measured.between(0, 1).all() and (summary["iou"].dropna() <= measured + 1e-9).all()
    assert summary["sequence"].isin(["T1", "T2"]).all() and (summary["location"] == "knee").all()
    means = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(means["means_per_location"]) == {"knee"} and means["mean_foreground_dice"] is not None
    for case in val_ids:
        prediction = fold / "validation" / f"{case}.nii.gz"
        assert read_geometry(prediction).matches(read_geometry(raw / "imagesTr" / f"{case}_0000.nii.gz"))
    modes = pd.read_csv(fold / "validation" / "modes.csv")
    assert set(modes["mode"]) == {"2d"} and "foreground mean" in set(modes["label"])
    assert any("mean foreground Dice" in line for line in lines)


def test_stage2_trains_depth_branch_and_fusion_on_top_of_stage1(capsys):
    raw = tiny_cohort()
    common = ["-d", str(raw), "-f", "1", "--iters-per-epoch", "3", "--epochs", "1", "-nw", "0"]
    # stage 2 needs a finished stage 1
    assert sab_train(common + ["--stage", "3d"]) == 1
    err = capsys.readouterr().err
    assert "checkpoint_final_2d" in err and "--stage 2d" in err and "Traceback" not in err
    assert sab_train(common + ["--stage", "2d", "--no-validation"]) == 0
    assert sab_train(common + ["--stage", "3d"]) == 0
    ref = resolve_dataset(str(raw))
    plan = load_plan(ref.preprocessed_dir)
    fold = results_folder(ref, plan) / "fold_1"
    stage1, _ = load_checkpoint(fold, "final_2d", plan)
    stage2, meta = load_checkpoint(fold, "final", plan)
    assert meta["stages_done"] == ["2d", "3d"] and meta["completed_phases"] == ["2d", "depth", "fusion"]
    assert [r["phase"] for r in meta["history"]] == ["2d", "depth", "fusion"]
    # the image encoder (adapters included) is frozen in stage 2; the depth net and the fusion block trained
    s1, s2 = stage1.state_dict(), stage2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1 if k.startswith("image_encoder."))
    assert not all(torch.equal(s1[k], s2[k]) for k in s1 if k.startswith("depth_net."))
    assert stage1.depth_fusion.block[-1].weight.abs().sum() == 0 < stage2.depth_fusion.block[-1].weight.abs().sum()
    # each case's bone probability volume, saved for the loader, is what the final depth net gives
    store = PreprocessedStore(ref.preprocessed_dir)
    for case in store.case_ids():
        saved = np.load(fold / "depth_probabilities" / f"{case}.npy")
        assert saved.shape == tuple(store.properties(case)["depth_shape"])
    case = store.case_ids()[0]
    with torch.no_grad():
        expected = stage2.depth_probabilities(torch.from_numpy(store.depth_image(case)[:1])[None])[0, 0].numpy()
    np.testing.assert_allclose(np.load(fold / "depth_probabilities" / f"{case}.npy"), expected, atol=1e-6)
    # validation of both modes: the final (3d) one in validation/, 2d beside it
    modes = pd.read_csv(fold / "validation" / "modes.csv")
    assert set(modes["mode"]) == {"2d", "3d"}
    assert (fold / "validation" / "summary.csv").is_file() and (fold / "validation" / "2d" / "summary.csv").is_file()
    out = capsys.readouterr().out
    assert "validation 3d: mean foreground Dice" in out and "validation 2d" in out


def test_user_errors_are_one_line(capsys):
    raw = tiny_cohort(preprocessed=False)
    base = ["-d", str(raw), "-nw", "0", "--epochs", "1", "--iters-per-epoch", "1"]

    def error(args):
        assert sab_train(base + args) == 1
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and err.splitlines()[-1].startswith("sab_train: error: ")
        return err.splitlines()[-1]

    message = error(["-f", "0"])
    assert "not preprocessed" in message and "sab_plan_and_preprocess" in message
    tiny_cohort()
    assert "fold out of range" in error(["-f", "7"])
    assert "no checkpoint_latest to continue from" in error(["-f", "0", "--continue"])
    message = error(["-f", "0", "--sam-checkpoint", str(raw / "dataset.json")])
    assert "without a SAM checkpoint" in message and "--replan" in message
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in error(["-f", "0", "--device", "cuda"])
