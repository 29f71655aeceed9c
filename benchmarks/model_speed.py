"""Model speed on this machine: forward time per slice for each variant and input size, SAM's window
14 against a window that divides the token grid, and the depth branch's cost per volume against the
encoder's cost for all slices of that volume. Prints markdown tables.

    python benchmarks/model_speed.py              # the default set, 1 thread (about 10 minutes)
    python benchmarks/model_speed.py --large      # also vit_l / vit_h at 256

Each time is the median over --repeats runs after a warm-up run (a warm-up slower than 5 s counts
as a run), in inference mode, with random weights. Both the process CPU time and the wall time are
given: with one thread the CPU time is what the wall time would be on an otherwise idle machine, so
it is the number to compare on a shared machine.
"""
from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time

import torch

from sabnet.model.config import ModelConfig
from sabnet.model.sab_model import SABModel

DEFAULT_RUNS = [("sab_tiny", 256), ("sab_tiny", 512), ("sab_small", 256), ("sab_small", 512),
                ("vit_b", 256), ("vit_b", 512), ("vit_b", 1024)]
LARGE_RUNS = [("vit_l", 256), ("vit_h", 256)]


def timed(fn, repeats: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one call of `fn`, medians."""
    def once() -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        return time.process_time() - cpu, time.perf_counter() - wall

    first = once()
    runs = [first] if first[1] > 5 else []
    runs += [once() for _ in range(repeats - len(runs))]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def slice_times(config: ModelConfig, batch: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Per-slice (CPU, wall) seconds of encode and decode, automatic 2D mode. Larger inputs use
    smaller batches (batch * (256 / S)^2 slices, at least 1)."""
    batch = max(1, batch * 256 ** 2 // config.image_size ** 2)
    torch.manual_seed(0)
    model = SABModel(config).eval()
    images = torch.randn(batch, config.in_channels, config.image_size, config.image_size)
    with torch.inference_mode():
        encode = timed(lambda: model.encode(images), repeats)
        embeddings = model.encode(images)
        decode = timed(lambda: model.decode(embeddings), repeats)
    return {"encode": tuple(t / batch for t in encode), "decode": tuple(t / batch for t in decode)}


def depth_times(config: ModelConfig, repeats: int) -> tuple[float, float]:
    """(CPU, wall) seconds of the depth probabilities of one volume of config.depth_volume_shape."""
    torch.manual_seed(0)
    model = SABModel(config).eval()
    volume = torch.randn(1, 1, *config.depth_volume_shape)
    with torch.inference_mode():
        return timed(lambda: model.depth_probabilities(volume), repeats)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}" if seconds >= 0.01 else f"{seconds * 1e3:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--batch", type=int, default=4, help="slices per forward pass at input 256")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--slices", type=int, default=40, help="slices per volume for the depth comparison")
    parser.add_argument("--large", action="store_true", help="also time vit_l and vit_h at 256")
    parser.add_argument("--variants", nargs="+", metavar="V", help="time only these variants (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shown = sys.argv[1:] if argv is None else argv
    print(f"command: python benchmarks/model_speed.py {shlex.join(shown)}".rstrip())
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}; "
          f"batch {args.batch} at 256, median of {args.repeats}\n")

    print("| variant | input | grid | window | encode CPU ms/slice | decode CPU ms/slice | total wall ms/slice |")
    print("|---|---|---|---|---|---|---|")
    encode_cpu: dict[str, float] = {}
    for variant, size in DEFAULT_RUNS + (LARGE_RUNS if args.large else []):
        if args.variants and variant not in args.variants:
            continue
        config = ModelConfig.for_variant(variant, size)
        t = slice_times(config, args.batch, args.repeats)
        if size == 256:
            encode_cpu[variant] = t["encode"][0]
        print(f"| {variant} | {size} | {config.grid_size} | {config.window_size} | {ms(t['encode'][0])} | "
              f"{ms(t['decode'][0])} | {ms(t['encode'][1] + t['decode'][1])} |", flush=True)

    print("\nWindow size at input 256 (a 16 x 16 token grid; SAM's 14 pads it to 28 x 28):\n")
    print("| variant | window | encode CPU ms/slice |")
    print("|---|---|---|")
    for variant in [v for v in ("vit_b", "sab_tiny") if not args.variants or v in args.variants]:
        for window in (14, 16, 8):
            t = slice_times(ModelConfig.for_variant(variant, 256, window_size=window), args.batch, args.repeats)
            print(f"| {variant} | {window} | {ms(t['encode'][0])} |", flush=True)

    print(f"\nDepth branch: one low-resolution volume against encoding {args.slices} slices at 256:\n")
    print("| variant | volume | depth net CPU ms/volume | encoder CPU ms/volume | depth / encoder |")
    print("|---|---|---|---|---|")
    for variant, enc in encode_cpu.items():
        config = ModelConfig.for_variant(variant, 256)
        depth = depth_times(config, args.repeats)[0]
        shape = "x".join(map(str, config.depth_volume_shape))
        print(f"| {variant} | {shape} | {ms(depth)} | {ms(enc * args.slices)} | {depth / (enc * args.slices):.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
