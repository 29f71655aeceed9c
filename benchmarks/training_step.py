"""One training step of the default small variant, sabnet's against SAM's own building blocks.

    python benchmarks/training_step.py [--size 128] [--batch 8] [--threads 2] [--repeats 15]

Times, in one process and interleaved (so a busy machine slows both alike), the median of
  - forward + backward of sab_tiny at --size px on --batch slices: with sabnet's ChannelLayerNorm
    (one fused layer_norm kernel) against segment_anything's LayerNorm2d (six element-wise passes)
    in the same places, same weights;
  - one AdamW step over the model's trainable parameters: fused (sabnet's make_optimizer on the
    CPU) against PyTorch's default implementation.
Random weights and images: the arithmetic is the same whatever they hold.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from segment_anything.modeling.common import LayerNorm2d

from sabnet.model.channel_norm import replace_channel_norms
from sabnet.model.config import ModelConfig
from sabnet.model.sab_model import build_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=128, help="encoder input, px (the demo's plan: 128)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = ModelConfig.for_variant("sab_tiny", args.size, n_outputs=1, output_mode="sigmoid")
    torch.manual_seed(0)
    ours = build_model(config)
    sams = build_model(config)
    sams.load_state_dict(ours.state_dict())
    replace_channel_norms(sams, LayerNorm2d)      # segment_anything's own, same parameters
    images = torch.randn(args.batch, 1, args.size, args.size)

    def step(model) -> None:
        model.zero_grad(set_to_none=True)
        model(images).square().mean().backward()

    params = [q for q in ours.parameters() if q.requires_grad]
    for q in params:
        q.grad = torch.randn_like(q)
    fused = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, fused=True)
    plain = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    runs = {"forward + backward, ChannelLayerNorm": lambda: step(ours),
            "forward + backward, SAM's LayerNorm2d": lambda: step(sams),
            "AdamW step, fused": fused.step, "AdamW step, default": plain.step}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(args.repeats + 2):           # two warm-up rounds
        for name, run in runs.items():
            if name.startswith("AdamW"):
                for q in params:
                    q.grad = torch.randn_like(q) if q.grad is None else q.grad
            start = time.perf_counter()
            run()
            if repeat >= 2:
                times[name].append(time.perf_counter() - start)
    print(f"sab_tiny at {args.size} px, batch {args.batch}, {args.threads} thread(s), "
          f"{sum(q.numel() for q in params):,} trainable parameters in {len(params)} tensors; median of {args.repeats}")
    print("| run | median ms | ratio |\n|---|---:|---:|")
    for a, b in (("forward + backward, ChannelLayerNorm", "forward + backward, SAM's LayerNorm2d"),
                 ("AdamW step, fused", "AdamW step, default")):
        ta, tb = np.median(times[a]) * 1e3, np.median(times[b]) * 1e3
        print(f"| {a} | {ta:.1f} | {ta / tb:.2f} |\n| {b} | {tb:.1f} | 1.00 |")


if __name__ == "__main__":
    main()
