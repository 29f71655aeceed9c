"""sab_predict -i INPUT -o OUTPUT -d D: predict with the ensemble of trained folds.
sab_predict -i INPUT -o OUTPUT --pretrained --prompts p.json: segment the prompted objects with the
pretrained weights alone (LiteMedSAM, packaged), no training."""
from __future__ import annotations

import argparse

from sabnet.cli.common import run_command
from sabnet.errors import SabnetError
from sabnet.paths import Roots, resolve_dataset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sab_predict", description=__doc__)
    p.add_argument("-i", "--input", required=True, help="an image, a folder of images, or a folder of DICOM series")
    p.add_argument("-o", "--output", required=True, help="output folder (label maps on the input's exact grid)")
    p.add_argument("-d", "--dataset", help="dataset the model was trained on: id, name or raw folder")
    p.add_argument("--pretrained", action="store_true",
                   help="no trained model: the pretrained LiteMedSAM segments what --prompts asks for (zero-shot)")
    p.add_argument("--sam-checkpoint", help="with --pretrained: other 256 px TinyViT weights than the packaged LiteMedSAM")
    p.add_argument("-p", "--plan", help="model folder name under the dataset's results (when there are several)")
    p.add_argument("-f", "--folds", nargs="+", type=int, help="folds to ensemble (default: all trained folds)")
    p.add_argument("-chk", "--checkpoint", choices=["final", "best", "latest"], default="final")
    p.add_argument("--mode", choices=["2d", "3d"], default=None,
                   help="3d uses the depth-attention branch (default: the mode sab_find_best_configuration chose "
                        "for the model, else 2d)")
    p.add_argument("--prompts", help="JSON file of points/boxes per case (see README)")
    p.add_argument("--no-carry", action="store_true",
                   help="keep each prompt to the slice it lies on (default: a click names the bone it lands on "
                        "through the volume; with --pretrained each object is followed slice by slice while it persists)")
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
    from sabnet.inference.model_folder import chosen_mode, find_model_folder, load_ensemble
    from sabnet.inference.postprocessing import load_postprocessing
    from sabnet.inference.predict_cohort import PredictionSettings, predict_cohort, select_part
    from sabnet.inference.prompt_coordinates import read_prompts_file
    from sabnet.model.case_predictor import EnsemblePredictor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SabnetError("--device cuda: no CUDA GPU is visible; use --device cpu")
    if args.pretrained:
        return _run_zero_shot(args, device)
    if args.dataset is None:
        raise SabnetError("give the trained model's dataset with -d, or --pretrained --prompts p.json for zero-shot "
                          "prompting without training")
    if args.sam_checkpoint:
        raise SabnetError("--sam-checkpoint goes with --pretrained; a trained model brings its own weights")
    roots = Roots.from_environment()
    print(roots.describe())
    ref = resolve_dataset(args.dataset, roots)
    folder = find_model_folder(ref, args.plan)
    mode_reason = "as asked"
    if args.mode is None:
        args.mode, mode_reason = chosen_mode(folder)
    plan, models, folds = load_ensemble(folder, args.folds, args.checkpoint, device, args.mode)
    cases = select_part(list_input_cases(args.input, len(plan.channel_names)), args.num_parts, args.part_id)
    prompts = read_prompts_file(args.prompts) if args.prompts else None
    if prompts:
        unknown = sorted(set(prompts) - {c.case_id for c in cases})
        if unknown and args.num_parts == 1:
            raise SabnetError(f"{args.prompts}: prompts for cases not in the input: {', '.join(unknown)}")
    settings = PredictionSettings(
        output_dir=Path(args.output), mode=args.mode, prompts=prompts, carry=not args.no_carry,
        save_probabilities=args.save_probabilities, overwrite=args.overwrite, qc=args.qc,
        postprocessing=None if args.no_postprocessing else load_postprocessing(folder))
    print(f"reading {args.input} ({len(cases)} cases) and model {folder} (folds {', '.join(map(str, folds))}, "
          f"checkpoint_{args.checkpoint}, {args.mode} mode ({mode_reason}), {device})\nwriting {settings.output_dir}")
    predictor = EnsemblePredictor(models, device, args.batch_size or max(plan.training.batch_size, 4))
    return _report(predict_cohort(cases, plan, predictor, settings))


def _run_zero_shot(args: argparse.Namespace, device: str) -> int:
    from pathlib import Path

    from sabnet.inference.inputs import list_input_cases
    from sabnet.inference.predict_cohort import PredictionSettings, predict_cohort, select_part
    from sabnet.inference.prompt_coordinates import read_prompts_file
    from sabnet.inference.zero_shot import zero_shot_labels, zero_shot_model
    from sabnet.io.atomic import write_json
    from sabnet.model.case_predictor import ZERO_SHOT_CARRY, ZERO_SHOT_OBJECT_THRESHOLD, EnsemblePredictor

    if args.dataset or args.plan or args.folds:
        raise SabnetError("--pretrained uses the pretrained weights alone: drop -d, -p and -f")
    if not args.prompts:
        raise SabnetError("--pretrained segments what prompts ask for: give --prompts p.json (boxes or points per case)")
    if args.mode == "3d":
        raise SabnetError("--pretrained has no trained depth branch: use --mode 2d")
    prompts = read_prompts_file(args.prompts)
    labels = zero_shot_labels(prompts)
    cases = [c for c in list_input_cases(args.input, 1) if c.case_id in prompts]
    cases = select_part(cases, args.num_parts, args.part_id)
    missing = sorted(set(prompts) - {c.case_id for c in list_input_cases(args.input, 1)})
    if missing and args.num_parts == 1:
        raise SabnetError(f"{args.prompts}: prompts for cases not in the input: {', '.join(missing)}")
    weights = args.sam_checkpoint or "lite_medsam"
    model = zero_shot_model(len(labels), weights, device)
    settings = PredictionSettings(output_dir=Path(args.output), prompts=prompts, carry=not args.no_carry,
                                  save_probabilities=args.save_probabilities, overwrite=args.overwrite, qc=args.qc,
                                  zero_shot_labels=labels)
    print(f"reading {args.input} ({len(cases)} prompted cases); zero-shot with {model.checkpoint_report.path} "
          f"({device}); labels {labels}\nwriting {settings.output_dir}")
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    write_json(settings.output_dir / "labels.json", {"background": 0, **labels})
    predictor = EnsemblePredictor([model], device, args.batch_size or 4, automatic=False,
                                  object_threshold=ZERO_SHOT_OBJECT_THRESHOLD, carry_rules=ZERO_SHOT_CARRY, point_boxes=True)
    return _report(predict_cohort(cases, None, predictor, settings))


def _report(report) -> int:
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
