"""--continue: a run killed with SIGKILL in the middle of an epoch, resumed, ends with exactly the
weights of a run that was never stopped."""
import json
import os
import re
import signal
import time

import torch
from trainer_cohort import one_torch_thread, run_sab_train, tiny_cohort  # noqa: F401 (autouse fixture)

from sabnet.cli.train import main as sab_train
from sabnet.model.checkpoint import read_state_dict
from sabnet.paths import Roots, resolve_dataset
from sabnet.planning.plans import load_plan
from sabnet.training.layout import plan_name
from sabnet.training.run_training import TrainingOptions, train

EPOCHS, ITERATIONS = 3, 12


def _wait(condition, process, what: str, timeout_s: float = 240.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert process.poll() is None, f"training ended (exit {process.returncode}) before {what}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _latest_epoch(fold) -> int | None:
    try:
        return json.loads((fold / "checkpoint_latest" / "metadata.json").read_text())["epoch"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    raw = tiny_cohort()
    ref = resolve_dataset(str(raw))
    args = ["-d", str(raw), "-f", "2", "--stage", "2d", "--epochs", str(EPOCHS), "--iters-per-epoch",
            str(ITERATIONS), "-nw", "0", "--device", "cpu", "--no-validation"]
    fold = ref.results_dir / plan_name(load_plan(ref.preprocessed_dir)) / "fold_2"
    killed = run_sab_train(args, tmp_path / "killed.log")

    # kill when epoch index 1 is checkpointed and the bar of the last epoch shows 3+ iterations done
    _wait(lambda: _latest_epoch(fold) == 1, killed, "checkpoint_latest of epoch 1")
    bar = re.compile(rf"2d epoch {EPOCHS}/{EPOCHS}:\s+\d+%\|[^|]*\|\s+([3-9]|1[01])/{ITERATIONS}")
    _wait(lambda: bar.search((tmp_path / "killed.log").read_text(errors="replace")), killed,
          "iterations of the last epoch")
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert _latest_epoch(fold) == 1 and not (fold / "checkpoint_final").exists()

    # resumed here (one thread, as the killed process had), and a run that is never stopped
    assert sab_train(args + ["--continue"]) == 0
    assert f"continuing phase 2d at epoch {EPOCHS}/{EPOCHS}" in (fold / "training_log.txt").read_text(encoding="utf-8")
    reference_roots = Roots(ref.roots.raw, ref.roots.preprocessed, tmp_path / "reference_results")
    [reference] = train(resolve_dataset(str(raw), reference_roots), 2,
                        TrainingOptions(stage="2d", epochs=EPOCHS, iterations_per_epoch=ITERATIONS, n_workers=0,
                                        device="cpu", final_validation=False), log=lambda _: None)

    resumed = read_state_dict(fold / "checkpoint_final" / "model.pth")
    uninterrupted = read_state_dict(reference.fold_dir / "checkpoint_final" / "model.pth")
    assert resumed.keys() == uninterrupted.keys()
    assert [k for k in resumed if not torch.equal(resumed[k], uninterrupted[k])] == []
    # training did move the weights: the loss fell over the three epochs
    history = json.loads((fold / "checkpoint_final" / "metadata.json").read_text())["history"]
    assert [r["epoch"] for r in history] == list(range(EPOCHS))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
