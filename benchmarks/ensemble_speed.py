"""Prediction time of a fold ensemble against one fold, and against the encoder alone.

    python benchmarks/ensemble_speed.py MODEL_FOLDER IMAGES_FOLDER [--folds 0 1] [--cases 2]
        [--mode 2d] [--repeats 2] [--threads 2]

MODEL_FOLDER: a trained plan folder (results/DatasetXXX/<plan>, with fold_F/checkpoint_final);
IMAGES_FOLDER: images as sab_predict reads them (<case>_0000.nii.gz). For each repeat, in turn:
the encoder alone on every tile of the cases (the floor: what no ensemble can go below), then the
ensembles of the first 1, 2, ... of --folds, each predicting every case as sab_predict does (the
same preprocessing and EnsemblePredictor; reading and preprocessing are timed apart and left out).
Folds that share a frozen encoder (lite_medsam_frozen) encode each tile once; folds whose encoder
trained (sab_tiny, lite_medsam) encode it once per fold. Prints the median seconds per case, the
encoder calls, the ratio to one fold and, from the per-fold increment, the five-fold estimate:
t(1) + 4 x (t(k) - t(1)) / (k - 1).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from sabnet.inference.inputs import list_input_cases
from sabnet.inference.model_folder import load_ensemble
from sabnet.inference.predict_cohort import read_case
from sabnet.inference.predict_image import preprocess_for_prediction
from sabnet.model.case_predictor import CaseEmbeddings, EnsemblePredictor, case_tiles


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def encoder_floor(predictor: EnsemblePredictor, image) -> float:
    """Seconds to encode every tile of one preprocessed image once."""
    n, _, rows, cols = image.shape
    tiles = case_tiles(n, rows, cols, predictor.config.image_size)
    started = time.perf_counter()
    CaseEmbeddings(predictor, image).get(0, tiles)
    return time.perf_counter() - started


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_folder", type=Path)
    p.add_argument("images", type=Path)
    p.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--cases", type=int, default=2, help="the first N cases of IMAGES_FOLDER")
    p.add_argument("--mode", choices=["2d", "3d"], default="2d")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan, models, _ = load_ensemble(args.model_folder, args.folds, "final", "cpu", args.mode)
    batch = max(plan.training.batch_size, 4)
    cases = sorted(list_input_cases(args.images, len(plan.channel_names)), key=lambda c: c.case_id)[: args.cases]
    prepared = []
    for case in cases:
        channels, geometry, sequence = read_case(case)
        prepared.append(preprocess_for_prediction(channels, geometry, plan, sequence=sequence))
    print(f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads; "
          f"{plan.model['variant']}, {len(prepared)} cases ({', '.join(c.case_id for c in cases)}), "
          f"{args.mode} mode, folds {args.folds}")
    times: dict[str, list[float]] = {}
    calls: dict[str, int] = {}
    for _ in range(args.repeats):
        floor = EnsemblePredictor(models[:1], "cpu", batch)
        times.setdefault("encoder alone", []).append(sum(encoder_floor(floor, pre.image) for pre in prepared)
                                                     / len(prepared))
        for k in range(1, len(models) + 1):
            predictor = EnsemblePredictor(models[:k], "cpu", batch)
            started = time.perf_counter()
            for pre in prepared:
                predictor.predict(pre.image, pre.depth_image, pre.properties, args.mode)
            name = f"{k} fold{'s' if k > 1 else ''}"
            times.setdefault(name, []).append((time.perf_counter() - started) / len(prepared))
            calls[name] = predictor.encoder_calls // len(prepared)
    one = statistics.median(times["1 fold"])
    print("\n| ensemble | s per case (median) | encoder calls per case | ratio to 1 fold |\n|---|---:|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} | {calls.get(name, '')} | "
              f"{statistics.median(values) / one:.2f} |")
    k = len(models)
    if k > 1:
        per_fold = (statistics.median(times[f'{k} folds']) - one) / (k - 1)
        five = one + 4 * per_fold
        print(f"\neach added fold: {per_fold:.1f} s per case; five folds estimated {five:.1f} s per case, "
              f"{five / one:.2f}x one fold")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
