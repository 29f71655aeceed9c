"""sab_evaluate -ref LABELS -pred PREDICTIONS [-d D] [-o OUT] [-np N] [--allow-missing]

Dice, IoU, 95% Hausdorff distance and average symmetric surface distance (mm) per case and
label, with means per label, per location and per sequence. Files are matched by case id (the
name without extension: case.nii.gz <-> case.nrrd). Writes summary.csv and summary.json into
PREDICTIONS (or OUT).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from sabnet.cli.common import run_command
from sabnet.dataset.raw_dataset import RawDataset
from sabnet.evaluation.evaluate import EvaluationResult, evaluate_folder, list_cases, write
from sabnet.paths import resolve_dataset
from sabnet.planning.plans import load_plan


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sab_evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-ref", "--reference", type=Path, required=True, metavar="LABELS", help="folder of reference label files")
    p.add_argument("-pred", "--prediction", type=Path, required=True, metavar="PREDICTIONS",
                   help="folder of predicted label files")
    p.add_argument("-d", "--dataset", metavar="D", help="dataset id, name or raw folder: label names and each case's sequence and "
                   "location come from its dataset.json (without it: every value found, location/sequence unknown)")
    p.add_argument("-o", "--output", type=Path, metavar="OUT", help="folder for summary.csv and summary.json (default: PREDICTIONS)")
    p.add_argument("-np", "--n-workers", type=int, default=1, metavar="N", help="worker processes (default 1)")
    p.add_argument("--allow-missing", action="store_true",
                   help="skip reference cases without a prediction (listed in the report) instead of failing")
    return p


def _run(args: argparse.Namespace) -> int:
    labels, metadata, mapping = None, None, None
    if args.dataset is not None:
        ref = resolve_dataset(args.dataset)
        dataset = RawDataset.load(ref.raw_dir)
        labels = dataset.foreground_labels
        metadata = {case: dataset.metadata(case) for case in list_cases(args.reference)}
        print(f"labels and case metadata from {ref.raw_dir / 'dataset.json'}")
        if (ref.preprocessed_dir / "plans.json").is_file():  # sabnet predicts the plan's output labels
            plan = load_plan(ref.preprocessed_dir)
            labels, mapping = {k: v for k, v in plan.labels.items() if v != 0}, plan.label_mapping
            print(f"output labels {', '.join(labels)} and the reference mapping from {ref.preprocessed_dir / 'plans.json'}")
    print(f"evaluating {args.prediction} against {args.reference}")
    result = evaluate_folder(args.reference, args.prediction, labels, metadata, args.n_workers, args.allow_missing,
                             reference_mapping=mapping)
    csv_path, json_path = write(result, args.output or args.prediction)
    _print_means(result)
    if result.missing_cases:
        print(f"skipped {len(result.missing_cases)} case(s) without a prediction: {', '.join(result.missing_cases)}")
    print(f"written: {csv_path}\n         {json_path}")
    return 0


def _print_means(result: EvaluationResult) -> None:
    with pd.option_context("display.width", 200, "display.max_rows", 200, "display.float_format", "{:.4f}".format):
        print(f"\nmeans per label ({result.per_case['case'].nunique()} case(s)):")
        print(result.means_per_label.to_string(index=False))
        for key, table in (("location", result.means_per_location), ("sequence", result.means_per_sequence)):
            if result.per_case[key].nunique() > 1:
                print(f"\nmeans per {key}:")
                print(table.to_string(index=False))
    print(f"\nmean foreground Dice: {result.mean_foreground_dice:.4f}")


def main(argv=None) -> int:
    return run_command(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
