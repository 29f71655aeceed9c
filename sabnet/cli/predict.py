"""sab_predict -i INPUT -o OUTPUT -d D: predict with the ensemble of trained folds."""
from __future__ import annotations

import argparse

from sabnet.cli.common import run_command
from sabnet.errors import SabnetError
from sabnet.paths import Roots, resolve_dataset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sab_predict", description=__doc__)
    p.add_argument("-i", "--input", required=True, help="an image, a folder of images, or a folder of DICOM series")
    p.add_argument("-o", "--output", required=True, help="output folder (label maps on the input's exact grid)")
    p.add_argument("-d", "--dataset", required=True, help="dataset the model was trained on: id, name or raw folder")
    p.add_argument("-p", "--plan", help="model folder name under the dataset's results (when there are several)")
    p.add_argument("-f", "--folds", nargs="+", type=int, help="folds to ensemble (default: all trained folds)")
    p.add_argument("-chk", "--checkpoint", choices=["final", "best", "latest"], default="final")
    p.add_argument("--mode", choices=["2d", "3d"], default="2d", help="3d uses the depth-attention branch")
    p.add_argument("--prompts", help="JSON file of points/boxes per case (see README)")
    p.add_argument("--save-probabilities", action="store_true", help="also write <case>_probabilities.npz")
    p.add_argument("--device", help="cpu, cuda or mps (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="slices per encoder call (default from the plan)")
    p.add_argument("--num-parts", type=int, default=1, help="split the cohort into this many parts ...")
    p.add_argument("--part-id", type=int, default=0, help="... and predict this one (0-based)")
    p.add_argument("--overwrite", action="store_true", help="predict cases that already have an output")
    p.add_argument("--qc", action="store_true", help="write <case>_qc.png with contours over a few slices")
    p.add_argument("--no-postprocessing", action="store_true", help="ignore the model folder's postprocessing.json")
    return p


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from sabnet.inference.inputs import list_input_cases
    from sabnet.inference.model_folder import find_model_folder, load_ensemble
    from sabnet.inference.postprocessing import load_postprocessing
    from sabnet.inference.predict_cohort import PredictionSettings, predict_cohort, select_part
    from sabnet.inference.prompt_coordinates import read_prompts_file
    from sabnet.model.case_predictor import EnsemblePredictor

    roots = Roots.from_environment()
    print(roots.describe())
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SabnetError("--device cuda: no CUDA GPU is visible; use --device cpu")
    ref = resolve_dataset(args.dataset, roots)
    folder = find_model_folder(ref, args.plan)
    plan, models, folds = load_ensemble(folder, args.folds, args.checkpoint, device, args.mode)
    cases = select_part(list_input_cases(args.input, len(plan.channel_names)), args.num_parts, args.part_id)
    prompts = read_prompts_file(args.prompts) if args.prompts else None
    if prompts:
        unknown = sorted(set(prompts) - {c.case_id for c in cases})
        if unknown and args.num_parts == 1:
            raise SabnetError(f"{args.prompts}: prompts for cases not in the input: {', '.join(unknown)}")
    settings = PredictionSettings(
        output_dir=Path(args.output), mode=args.mode, prompts=prompts, save_probabilities=args.save_probabilities,
        overwrite=args.overwrite, qc=args.qc,
        postprocessing=None if args.no_postprocessing else load_postprocessing(folder))
    print(f"reading {args.input} ({len(cases)} cases) and model {folder} (folds {', '.join(map(str, folds))}, "
          f"checkpoint_{args.checkpoint}, {args.mode} mode, {device})\nwriting {settings.output_dir}")
    predictor = EnsemblePredictor(models, device, args.batch_size or max(plan.training.batch_size, 4))
    report = predict_cohort(cases, plan, predictor, settings)
    print(f"predicted {len(report.written)}, skipped {len(report.skipped)} (already there; --overwrite to redo), "
          f"failed {len(report.failed)}")
    for case_id, message in report.failed:
        print(f"  {case_id}: {message}")
    return 1 if report.failed else 0


def main(argv=None) -> int:
    return run_command(_run, _parser(), argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
