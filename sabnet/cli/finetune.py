"""sab_finetune -d NEW --from D [--folds 0 1 ...] [--cases K] [--stage 2d|all]
[--budget-minutes M | --epochs N] [--iters-per-epoch N] [--device cpu|cuda|mps] [-np N] [-nw N] [-p PLAN] [--replan] [--source-spacing] [--full-encoder]

Fine-tune D's trained folds on a new cohort NEW (another body location, sequence or site). NEW is
planned from D's plan (D's model, spacing, normalization and image size; NEW's own labels and
slicing), preprocessed, and each fold f starts from D's fold f and trains a short schedule. With
--cases K only K cases of NEW train (chosen by seed, one per subject first); the others validate.
The result is a normal results folder: predict with sab_predict -d NEW.
"""
from __future__ import annotations

import argparse

from tqdm import tqdm

from sabnet.cli.common import run_command
from sabnet.paths import Roots, resolve_dataset


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _minutes(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sab_finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True, help="the new dataset: id, name or raw folder path")
    p.add_argument("--from", dest="source", required=True, help="the trained dataset to start from: id, name or path")
    p.add_argument("-p", "--plan", help="D's model folder name under its results (when it has several)")
    p.add_argument("-f", "--folds", nargs="+", type=int, help="folds to fine-tune (default: every trained fold of D)")
    p.add_argument("--cases", dest="n_cases", type=_positive,
                   help="train on this many cases of NEW (default: NEW's own splits_final.json, else five folds)")
    p.add_argument("--stage", choices=["2d", "all"],
                   help="2d: stage 1 only; all: both stages (default: all when D's folds have stage 2, else 2d)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--budget-minutes", type=_minutes,
                        help="train each fold for about this many minutes (see sab_train --budget-minutes)")
    length.add_argument("--epochs", type=_positive, help="epochs of each phase (default: the plan's short schedule)")
    p.add_argument("--iters-per-epoch", dest="iterations_per_epoch", type=_positive,
                   help="iterations per epoch (default: plans.json)")
    p.add_argument("--device", choices=["cpu", "cuda", "mps"], default=None,
                   help="default: cuda if available, else mps if available, else cpu")
    p.add_argument("-np", "--num-processes", dest="n_processes", type=_positive, default=1,
                   help="processes for verifying, fingerprinting and preprocessing NEW (default 1)")
    p.add_argument("-nw", "--num-workers", dest="n_workers", type=int, default=2,
                   help="data augmentation worker processes (0: in-process; default 2)")
    p.add_argument("--replan", action="store_true",
                   help="replace a plans.json NEW already has (kept as plans.json.bak)")
    p.add_argument("--full-encoder", action="store_true",
                   help="also train the image and prompt encoders' own weights (default: frozen; the image "
                        "encoder's adapters, the decoder and the detail branch learn, as SegmentAnyBone adapts SAM)")
    p.add_argument("--source-spacing", action="store_true",
                   help="preprocess NEW at D's in-plane spacing (default: NEW's own median, as its bones have another size)")
    p.add_argument("--no-validation", dest="final_validation", action="store_false",
                   help="skip predicting the validation cases at the end")
    return p


def _run(args: argparse.Namespace) -> int:
    from sabnet.inference.model_folder import find_model_folder
    from sabnet.training.finetune import FinetuneOptions, finetune

    roots = Roots.from_environment()
    print(roots.describe())
    source = find_model_folder(resolve_dataset(args.source, roots), args.plan)
    ref = resolve_dataset(args.dataset, roots)
    print(f"fine-tuning {ref.name} ({ref.raw_dir}) from {source}")
    options = FinetuneOptions(folds=args.folds, n_cases=args.n_cases, stage=args.stage, epochs=args.epochs,
                              iterations_per_epoch=args.iterations_per_epoch, budget_minutes=args.budget_minutes,
                              device=args.device, n_workers=max(0, args.n_workers), n_processes=args.n_processes,
                              replan=args.replan, final_validation=args.final_validation,
                              source_spacing=args.source_spacing, full_encoder=args.full_encoder)
    result = finetune(ref, source, options, log=tqdm.write)
    fresh = [n for n, s in result.heads.items() if s is None]
    print(f"output heads: {len(result.heads) - len(fresh)} kept from {source.parent.name}"
          + (f", fresh for {', '.join(fresh)}" if fresh else ""))
    for fold in result.folds:
        print(f"fold {fold.fold}: {', '.join(fold.phases_trained) or 'nothing left to train'}; "
              f"checkpoints in {fold.fold_dir}")
        for mode, evaluation in fold.validation.items():
            print(f"  validation {mode}: mean foreground Dice {evaluation.mean_foreground_dice:.4f}")
    print(f"predict with: sab_predict -d {ref.name} -i <images> -o <output folder>")
    return 0


def main(argv=None) -> int:
    return run_command(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
