"""How fast stage 1 learns on a preprocessed store: automatic-mode pseudo Dice against steps and seconds.

    python benchmarks/learning_speed.py PREPROCESSED_DIR [--steps 1200] [--seconds 300] [--lr 1e-3]
        [--batch 8] [--no-augment] [--prompt-probability P] [--model '{"detail_channels": 16}']
        [--picture out.png]

Trains the plan's model from scratch on the 2D phase's ingredients (the plan's loss, AdamW, 20-step
warm-up then polynomial decay over --steps, the training augmentation, hybrid prompts) on every case
but one per sequence, and every 100 steps (and when --seconds is up) prints the training loss and
the pseudo Dice of the automatic mode on 8 fixed batches of 8 foreground slices of the held-out
cases. Used for the demo's settings (docs/benchmarks.md, Demo): make the stores with `sab_demo` or
`sab_make_phantoms` + `sab_plan_and_preprocess --binary`, run one setting at a time (2 cores).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sabnet.model.config import ModelConfig
from sabnet.model.prompts import Prompts
from sabnet.model.sab_model import build_model
from sabnet.planning.plans import load_plan
from sabnet.preprocessing.store import PreprocessedStore
from sabnet.training.data_loader import SliceDataLoader, make_augmenter
from sabnet.training.losses import segmentation_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("preprocessed", type=Path, help="a preprocessed store (with plans.json) of a binary plan")
    p.add_argument("--steps", type=int, default=1200, help="length of the learning-rate schedule")
    p.add_argument("--seconds", type=float, default=float("inf"), help="stop after this long")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--prompt-probability", type=float, help="share of prompted samples (default: the plan's)")
    p.add_argument("--model", type=json.loads, default={}, help="JSON overrides of the plan's model settings")
    p.add_argument("--picture", type=Path, help="also draw held-out slices with truth (green) and prediction (red)")
    args = p.parse_args()

    plan, store = load_plan(args.preprocessed), PreprocessedStore(args.preprocessed)
    if args.prompt_probability is not None:
        plan.training.prompt_probability = args.prompt_probability
    plan.model = dict(plan.model, **args.model)
    by_sequence: dict[str, list[str]] = {}
    for case in store.case_ids():
        by_sequence.setdefault(store.properties(case)["sequence"], []).append(case)
    held_out = [cases[i % len(cases)] for i, cases in enumerate(by_sequence.values())]
    training = [c for c in store.case_ids() if c not in held_out]
    print("held out:", ", ".join(f"{c} ({store.properties(c)['sequence']}/{store.properties(c).get('location', '?')})"
                                 for c in held_out), flush=True)
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(plan.model))
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / args.steps) ** 0.9)
    batches = make_augmenter(SliceDataLoader(store, training, plan, args.batch, foreground_fraction=0.67, seed=1),
                             plan, 1, 1, training=not args.no_augment)
    held = make_augmenter(SliceDataLoader(store, held_out, plan, 8, foreground_fraction=1.0, seed=5), plan, 0, 5,
                          training=False)
    validation = [next(held) for _ in range(8)]
    start, losses = time.perf_counter(), []
    for step in range(args.steps):
        b = next(batches)
        x, target = _tensors(b)
        prompts = Prompts(label=torch.as_tensor(b["prompt_label"]).long(), points=torch.as_tensor(b["points"]),
                          point_labels=torch.as_tensor(b["point_labels"]).long(), boxes=torch.as_tensor(b["boxes"]),
                          box_valid=torch.as_tensor(b["box_valid"]).bool())
        loss = segmentation_loss(model(x, prompts).float(), target, plan.model["output_mode"])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 12)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        out_of_time = time.perf_counter() - start > args.seconds
        if (step + 1) % 100 == 0 or out_of_time or step + 1 == args.steps:
            print(f"step {step + 1}: loss {np.mean(losses[-50:]):.3f}  pseudo Dice {_dice(model, validation, plan):.3f}  "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
        if out_of_time:
            break
    if args.picture:
        _draw(model, validation[:4], args.picture)


def _tensors(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(np.asarray(batch["data"], np.float32))
    return x, torch.as_tensor(np.asarray(batch["seg"])).long().reshape(-1, *x.shape[-2:])


@torch.no_grad()
def _predicted(model, x: torch.Tensor, output_mode: str) -> torch.Tensor:
    logits = model(x)
    return logits[:, 0] > 0 if output_mode == "sigmoid" else logits.argmax(1) > 0


def _dice(model, batches: list[dict], plan) -> float:
    model.eval()
    tp = fp = fn = 0
    for b in batches:
        x, target = _tensors(b)
        pred, truth = _predicted(model, x, plan.model["output_mode"]), target > 0
        tp += (pred & truth).sum().item()
        fp += (pred & ~truth).sum().item()
        fn += (~pred & truth).sum().item()
    model.train()
    return 2 * tp / max(1, 2 * tp + fp + fn)


def _draw(model, batches: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    fig, axes = plt.subplots(len(batches), 8, figsize=(24, 3 * len(batches)), squeeze=False)
    for row, b in zip(axes, batches):
        x, target = _tensors(b)
        pred = _predicted(model, x, "sigmoid" if model.config.n_outputs == 1 else "softmax").numpy()
        for i, ax in enumerate(row):
            ax.imshow(x[i, 0], cmap="gray")
            ax.contour(target[i].numpy() > 0, colors="g", linewidths=0.6)
            ax.contour(pred[i], colors="r", linewidths=0.6)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=60)


if __name__ == "__main__":
    main()
