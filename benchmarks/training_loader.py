"""Is the data pipeline the bottleneck of training? Iterations per second of one training step of the
default small variant fed by the real pipeline (1 and 2 worker processes) against the same step fed
one precomputed batch, measured side by side in interleaved rounds (so that load from other work on
the machine hits every mode alike).

    python benchmarks/training_loader.py -d Dataset001_SpineVB3 [--rounds 3 --iterations 2]
    python benchmarks/training_loader.py --preprocessed /path/to/preprocessed/Dataset001_SpineVB3 [--device cuda]

The step is a plain forward / backward / AdamW step on Dice + cross-entropy (Dice + BCE for a
sigmoid plan) with the sampled hybrid prompts, at the plan's input size and batch size. Prints a
markdown table: the median seconds per iteration, iterations per second, and the ratio of each mode
to the precomputed batch (1.10 = 10% slower). Also times the pipeline alone, in-process.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sabnet.model.config import ModelConfig
from sabnet.model.prompts import Prompts
from sabnet.model.sab_model import build_model
from sabnet.paths import resolve_dataset
from sabnet.planning.planner import DEFAULT_VARIANT
from sabnet.planning.plans import load_plan
from sabnet.preprocessing.store import PreprocessedStore
from sabnet.training.data_loader import SliceDataLoader, make_augmenter
from sabnet.training.losses import segmentation_loss

MODEL_FIELDS = ("in_channels", "n_outputs", "output_mode", "n_labels", "depth_volume_shape",
                "depth_neighbourhood_slices")


def benchmark_config(plan) -> ModelConfig:
    """The plan's model when it is the default variant, else the default variant at the planned size."""
    if plan.model["variant"] == DEFAULT_VARIANT:
        return ModelConfig.from_dict(plan.model)
    settings = {k: plan.model[k] for k in MODEL_FIELDS}
    return ModelConfig.for_variant(DEFAULT_VARIANT, plan.model["image_size"], **settings)


def to_tensors(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, Prompts]:
    prompts = Prompts(label=torch.from_numpy(batch["prompt_label"]), points=torch.from_numpy(batch["points"]),
                      point_labels=torch.from_numpy(batch["point_labels"]), boxes=torch.from_numpy(batch["boxes"]),
                      box_valid=torch.from_numpy(batch["box_valid"]))
    return torch.from_numpy(batch["data"]).to(device), torch.from_numpy(batch["seg"]).to(device), prompts.to(device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", help="dataset id, name or raw folder (its preprocessed folder is used)")
    p.add_argument("--preprocessed", type=Path, help="a preprocessed dataset folder (plans.json + data/)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the modes")
    p.add_argument("--iterations", type=int, default=2, help="timed iterations per mode and round")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per mode first")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts of the pipeline modes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="where the model trains: cpu (default) or cuda")
    args = p.parse_args(argv)
    if (args.dataset is None) == (args.preprocessed is None):
        p.error("give exactly one of -d/--dataset or --preprocessed")
    folder = args.preprocessed or resolve_dataset(args.dataset).preprocessed_dir
    plan, store = load_plan(folder), PreprocessedStore(folder)
    case_ids = store.case_ids()
    if not case_ids:
        p.error(f"{folder}: no preprocessed cases; run sab_plan_and_preprocess first")
    config = benchmark_config(plan)
    batch_size = plan.training.batch_size

    def loader(seed: int) -> SliceDataLoader:
        return SliceDataLoader(store, case_ids, plan, batch_size, foreground_fraction=plan.training.foreground_fraction,
                               seed=seed)

    # Worker processes start at the first batch drawn (the warm-up), after the model exists, as in training.
    pipelines = {f"pipeline, {n} worker{'s' * (n > 1)}": make_augmenter(loader(args.seed), plan, n, args.seed + n)
                 for n in args.workers}
    in_process = make_augmenter(loader(args.seed), plan, 0, args.seed)
    device = torch.device(args.device)
    fixed = to_tensors(next(in_process), device)

    torch.manual_seed(args.seed)
    model = build_model(config).to(device)
    model.train()
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=plan.training.initial_lr,
                                  weight_decay=plan.training.weight_decay)

    def step(images, target, prompts) -> None:
        loss = segmentation_loss(model(images, prompts), target, config.output_mode)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    def iterate(mode: str) -> float:
        start = time.perf_counter()
        step(*(fixed if mode == "precomputed batch" else to_tensors(next(pipelines[mode]), device)))
        return time.perf_counter() - start

    modes = ["precomputed batch", *pipelines]
    times: dict[str, list[float]] = {m: [] for m in modes}
    for mode in modes:
        for _ in range(args.warmup):
            iterate(mode)
    for r in range(args.rounds):
        for mode in modes:
            times[mode] += [iterate(mode) for _ in range(args.iterations)]
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{m} {np.median(t):.2f} s" for m, t in times.items()),
              file=sys.stderr)
    alone = []
    for _ in range(max(10, args.rounds * args.iterations)):
        start = time.perf_counter()
        next(in_process)
        alone.append(time.perf_counter() - start)
    for augmenter in pipelines.values():
        augmenter._finish()

    base = float(np.median(times["precomputed batch"]))
    given = argv if argv is not None else sys.argv[1:]
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *given])
    print(f"\n`{command}`\n")
    where = f"{device} ({torch.cuda.get_device_name()})" if device.type == "cuda" else str(device)
    print(f"{config.variant} at {config.image_size} px, batch {batch_size}, {len(case_ids)} cases of {plan.dataset}; "
          f"torch {torch.__version__} on {where}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"{args.rounds} rounds x {args.iterations} iterations per mode\n")
    print("| mode | median s / iteration | iterations / s | ratio to precomputed |")
    print("|---|---|---|---|")
    for mode in modes:
        median = float(np.median(times[mode]))
        print(f"| {mode} | {median:.3f} | {1 / median:.3f} | {median / base:.3f} |")
    median = float(np.median(alone))
    print(f"| data pipeline alone, in-process (no training) | {median:.3f} | {1 / median:.2f} | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
