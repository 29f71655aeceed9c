"""Two processes with DistributedDataParallel (gloo, CPU) train one fold: both end with identical
weights, and only rank 0 writes checkpoints and logs."""
import json

from trainer_cohort import run_sab_train, tiny_cohort

from sabnet.paths import resolve_dataset
from sabnet.planning.plans import load_plan
from sabnet.training.checkpoints import load_checkpoint
from sabnet.training.distributed import weights_digest
from sabnet.training.layout import plan_name


def test_two_gloo_processes_train_one_fold(tmp_path):
    raw = tiny_cohort()
    ref = resolve_dataset(str(raw))
    plan = load_plan(ref.preprocessed_dir)
    args = ["-d", str(raw), "-f", "0", "--stage", "2d", "--epochs", "2", "--iters-per-epoch", "3", "-nw", "0",
            "--device", "cpu", "--no-validation"]
    process = run_sab_train(args, tmp_path / "torchrun.log", torchrun_processes=2)
    output = tmp_path / "torchrun.log"
    assert process.wait(timeout=400) == 0, output.read_text(encoding="utf-8", errors="replace")[-3000:]

    fold = ref.results_dir / plan_name(plan) / "fold_0"
    model, meta = load_checkpoint(fold, "final", plan)
    assert meta["world_size"] == 2
    # every process's weights hashed at the end: all equal, and equal to what rank 0 saved
    assert len(meta["weight_digests"]) == 2 and len(set(meta["weight_digests"])) == 1
    assert meta["weight_digests"][0] == weights_digest(model)
    # each epoch was validated on both processes' shares and logged once, by rank 0
    assert [r["epoch"] for r in meta["history"]] == [0, 1] and all(r["val_loss"] for r in meta["history"])
    log = (fold / "training_log.txt").read_text(encoding="utf-8")
    assert log.count("2d epoch 1/2:") == 1 and log.count("2d epoch 2/2:") == 1
    printed = output.read_text(encoding="utf-8", errors="replace")
    assert printed.count("sabnet roots:") == 1 and printed.count("checkpoints in") == 1
    latest = json.loads((fold / "checkpoint_latest" / "metadata.json").read_text())
    assert latest["world_size"] == 2 and latest["epoch"] == 1
