"""Training speed of vit_b at the planned input size on one GPU: iterations per second (with the
real data pipeline, and the model alone on one fixed batch) and peak GPU memory.

    python benchmarks/train_gpu.py [--sam-checkpoint sam_vit_b_01ec64.pth] [--cases 8] [--iterations 30]
                                   [--workers 8] [--stage 2d|all] [--out DIR]

It makes a small phantom cohort (knee and hip, T1 and T2, ~256 x 256 x 24), plans it for a GPU
with a vit_b checkpoint (a randomly initialised one in SAM's format, written with
segment_anything.build_sam_vit_b(), when none is given: frozen and trainable parts are then as with
the official file), preprocesses it and trains fold 0 for two epochs with `sab_train`'s code
(bf16 autocast); the second epoch's rate is reported (the first includes CUDA warm-up). Without
a CUDA GPU it says so and exits 0 (`--device cpu` runs the same steps on the CPU, as a dry run).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sam-checkpoint", type=Path, help="official sam_vit_b_01ec64.pth (default: random weights)")
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--iterations", type=int, default=30, help="iterations per epoch (two epochs are run)")
    p.add_argument("--workers", type=int, default=8, help="data augmentation worker processes")
    p.add_argument("--stage", choices=["2d", "all"], default="2d")
    p.add_argument("--batch-size", type=int, help="override the planned batch size")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--out", type=Path, help="folder for results.json (default: a temporary folder)")
    args = p.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU is visible to PyTorch here: nothing to benchmark (run this on a GPU machine)")
        return 0

    from segment_anything import build_sam_vit_b

    from sabnet.paths import Roots, resolve_dataset
    from sabnet.phantoms.cohort import make_phantom_dataset
    from sabnet.planning.plans import load_plan, save_plan
    from sabnet.preprocessing.plan_and_preprocess import PlanningOptions, plan_and_preprocess
    from sabnet.training.run_training import TrainingOptions, train

    work = Path(tempfile.mkdtemp(prefix="sabnet_train_gpu_"))
    roots = Roots(work / "raw", work / "preprocessed", work / "results")
    start = time.perf_counter()
    raw = make_phantom_dataset(work / "phantoms", locations=("knee", "hip"), sequences=("T1", "T2"),
                               n_cases=args.cases, seed=1, in_plane_size=256, n_slices=24,
                               dataset_name="Dataset980_TrainGpu")
    checkpoint = args.sam_checkpoint
    if checkpoint is None:
        torch.manual_seed(0)
        checkpoint = work / "sam_vit_b_random.pth"
        torch.save(build_sam_vit_b().state_dict(), checkpoint)
    ref = resolve_dataset(raw, roots)
    plan_and_preprocess(ref, PlanningOptions(sam_checkpoint=str(checkpoint), device="gpu" if args.device == "cuda"
                                             else "cpu"), n_workers=min(8, args.workers))
    plan = load_plan(ref.preprocessed_dir)
    if args.batch_size:
        plan.training.batch_size = args.batch_size
        save_plan(plan, ref.preprocessed_dir)
    setup_s = time.perf_counter() - start
    print(f"cohort, checkpoint, plan and preprocessing: {setup_s:.0f} s; plan: {plan.model['variant']} at "
          f"{plan.model['image_size']} px, window {plan.model['window_size']}, batch {plan.training.batch_size}")

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    [result] = train(ref, 0, TrainingOptions(stage=args.stage, device=args.device, sam_checkpoint=checkpoint,
                                             epochs=2, iterations_per_epoch=args.iterations, n_workers=args.workers),
                     log=print)
    train_s = time.perf_counter() - start
    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
    model_only = model_only_rate(ref, plan, result, args)

    rows = []
    for phase in dict.fromkeys(r["phase"] for r in result.metadata["history"]):
        last = [r for r in result.metadata["history"] if r["phase"] == phase][-1]
        batch = 1 if phase == "depth" else plan.training.batch_size
        rows.append({"phase": phase, "batch": batch, "iterations_per_s": last["iterations_per_s"],
                     "samples_per_s": round(last["iterations_per_s"] * batch, 1),
                     "epoch_time_s": last["epoch_time_s"]})
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    report = {"command": command, "device": device, "variant": plan.model["variant"],
              "image_size": plan.model["image_size"], "batch_size": plan.training.batch_size,
              "workers": args.workers, "phases": rows, "model_only_iterations_per_s": model_only,
              "peak_gpu_memory_gib": round(peak_gb, 2), "train_call_s": round(train_s, 1), "setup_s": round(setup_s, 1),
              "validation_mean_dice": {m: r.mean_foreground_dice for m, r in result.validation.items()}}
    print(f"\n`{command}` on {device}; {plan.model['variant']} at {plan.model['image_size']} px, "
          f"batch {plan.training.batch_size}, {args.workers} data workers"
          + (", bf16 autocast\n" if args.device == "cuda" else ", float32\n"))
    print("| phase | batch | it/s (data pipeline) | slices/s | it/s (model only, one batch) | peak GPU memory |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        alone = f"{model_only:.2f}" if row["phase"] == "2d" else ""
        print(f"| {row['phase']} | {row['batch']} | {row['iterations_per_s']:.2f} | {row['samples_per_s']} | "
              f"{alone} | {peak_gb:.1f} GiB |")
    print(f"\ntrain() call {train_s:.0f} s (two epochs per phase, validation, final full-volume validation)")
    out = args.out or work
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    print(f"written: {out / 'results.json'}")
    return 0


def model_only_rate(ref, plan, result, args, steps: int = 20) -> float:
    """Stage-1 training steps per second on one fixed batch (no data loading): the ceiling the
    pipeline is compared with."""
    from sabnet.preprocessing.store import PreprocessedStore
    from sabnet.training.checkpoints import load_checkpoint
    from sabnet.training.distributed import autocast, start
    from sabnet.training.run_training import phase_schedule
    from sabnet.training.schedule import make_optimizer
    from sabnet.training.slice_phase import SlicePhase
    from sabnet.io.atomic import read_json
    from sabnet.training.splits import SPLITS_FILE, fold_cases

    ctx = start(args.device)
    model, _ = load_checkpoint(result.fold_dir, "final_2d", plan, ctx.device)
    train_ids, val_ids = fold_cases(read_json(ref.preprocessed_dir / SPLITS_FILE), 0)
    schedule = phase_schedule("2d", plan, {"epochs": 2, "iterations_per_epoch": steps})
    phase = SlicePhase("2d", plan, PreprocessedStore(ref.preprocessed_dir), train_ids, val_ids, schedule, 0, ctx,
                       0, pretrained=True)
    phase.configure(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, _ = make_optimizer(params, schedule)
    with phase.batches(0) as batches:
        batch = next(batches)
    for i in range(steps + 3):
        if i == 3:
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            start_time = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast(ctx.device):
            loss = phase.training_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 12.0)
        optimizer.step()
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    return round(steps / (time.perf_counter() - start_time), 3)


if __name__ == "__main__":
    raise SystemExit(main())
