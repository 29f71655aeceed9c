"""LiteMedSAM's encoder on this CPU: milliseconds per 256 px slice in float32 against bfloat16
autocast, side by side (interleaved, medians), the mask decoder's milliseconds per prompt, and the
Dice change bfloat16 brings to box-prompted vertebrae of the real spine.

    python benchmarks/encoder_speed.py [--data ../shared/data/Dataset001_SpineVB3] [--cases 4]
        [--slices-per-case 2] [--repeats 3] [--threads 2]

Slices: the central ones of the first --cases volumes (the preprocessing of `sab_predict
--pretrained`); per slice and vertebra one box from the manual labels, decoded from each
precision's embedding at the zero-shot threshold. sabnet encodes in bfloat16 only where the CPU
computes it natively (AMX or AVX-512 BF16; `sabnet.training.embedding_cache.autocast_dtype`), and
this benchmark says which this CPU is.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sabnet.dataset.raw_dataset import RawDataset
from sabnet.inference.predict_image import preprocess_for_prediction
from sabnet.inference.zero_shot import zero_shot_model, zero_shot_plan
from sabnet.io.image_io import read_image
from sabnet.model.case_predictor import ZERO_SHOT_OBJECT_THRESHOLD
from sabnet.model.depth_branch import pad_to_input
from sabnet.model.prompts import Prompts
from sabnet.planning.slicing import slicing_for
from sabnet.preprocessing.case_preprocessing import preprocess_arrays
from sabnet.training.embedding_cache import autocast_dtype

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset001_SpineVB3"


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--slices-per-case", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dataset = RawDataset.load(args.data)
    names = dataset.foreground_labels
    model = zero_shot_model(len(names))
    shift = float(np.log(ZERO_SHOT_OBJECT_THRESHOLD / (1 - ZERO_SHOT_OBJECT_THRESHOLD)))
    rows = []
    for case_id in dataset.case_ids()[: args.cases]:
        case = dataset.case(case_id)
        image, geometry = read_image(case.image_files[0])
        labels, _ = read_image(case.label_file)
        plan = zero_shot_plan(geometry, len(names))
        plan.label_mapping = {str(v): v for v in names.values()}  # to carry the labels along
        pre = preprocess_for_prediction([image], geometry, plan)
        moved = preprocess_arrays([image], geometry, labels, plan,
                                  slicing_for(geometry, plan.preprocessing.majority_plane), "unknown")
        n = pre.image.shape[0]
        for s in np.linspace(n * 0.35, n * 0.65, args.slices_per_case).round().astype(int):
            x = pad_to_input(torch.from_numpy(np.ascontiguousarray(pre.image[s:s + 1], np.float32)), 256)
            encoder_input = model.encoder_input(x)
            with torch.inference_mode():
                t32, e32 = timed(lambda: model.image_encoder(encoder_input), args.repeats)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    t16, e16 = timed(lambda: model.image_encoder(encoder_input), args.repeats)
                e16 = e16.float()
                for value in names.values():
                    truth = moved.labels[s] == value
                    if truth.sum() < 30:
                        continue
                    r, c = np.nonzero(truth)
                    prompt = Prompts(label=torch.tensor([1]), boxes=torch.tensor([[c.min(), r.min(), c.max(), r.max()]],
                                                                                 dtype=torch.float32))
                    h, w = truth.shape
                    dice = []
                    for emb in (e32, e16):
                        td, logits = timed(lambda: model.decode_object(model.encode(x, emb), prompt), 1)
                        found = (logits[0, 0, :h, :w] - shift > 0).numpy()
                        dice.append(2 * (found & truth).sum() / (found.sum() + truth.sum()))
                    rows.append({"case": case_id, "slice": int(s), "label": value, "fp32_ms": 1000 * t32,
                                 "bf16_ms": 1000 * t16, "decode_ms": 1000 * td, "dice_fp32": dice[0],
                                 "dice_bf16": dice[1], "max_abs_diff": float((e16 - e32).abs().max())})
            print(f"{case_id} slice {s}: fp32 {1000 * t32:.0f} ms, bf16 {1000 * t16:.0f} ms", flush=True)
    import pandas as pd

    frame = pd.DataFrame(rows)
    per_slice = frame.drop_duplicates(["case", "slice"])
    native = autocast_dtype(torch.device("cpu")) is not None
    print(f"\nCommand: python benchmarks/encoder_speed.py {' '.join(sys.argv[1:])}")
    print(f"CPU: {cpu_name()}, {args.threads} threads, torch {torch.__version__}; native bfloat16 (AMX or AVX-512 "
          f"BF16): {'yes' if native else 'no'}")
    print(f"encoder, median ms per 256 px slice over {len(per_slice)} slices: fp32 {per_slice.fp32_ms.median():.0f}, "
          f"bf16 autocast {per_slice.bf16_ms.median():.0f} (bf16 / fp32 = "
          f"{per_slice.bf16_ms.median() / per_slice.fp32_ms.median():.2f})")
    print(f"mask decoder, median ms per prompt: {frame.decode_ms.median():.0f}")
    print(f"box-prompted Dice over {len(frame)} vertebra slices: fp32 {frame.dice_fp32.mean():.4f}, bf16 "
          f"{frame.dice_bf16.mean():.4f} (change {frame.dice_bf16.mean() - frame.dice_fp32.mean():+.4f}); largest "
          f"embedding difference {frame.max_abs_diff.max():.3f}")


if __name__ == "__main__":
    main()
