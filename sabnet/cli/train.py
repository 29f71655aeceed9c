"""sab_train -d D -f FOLD|all [--stage 2d|3d|all] [--sam-checkpoint PATH] [--device cpu|cuda|mps]
[--epochs N] [--iters-per-epoch N] [--budget-minutes M] [--continue] [-nw N] [--no-validation]

Train one fold (or all five, one after another) of a preprocessed cohort. Stage 1 (2d) trains the
adapter-SAM on slices with hybrid prompting; stage 2 (3d) trains the depth net on the
low-resolution volumes, then the fusion block, gate and decoder with the image encoder frozen.
Defaults come from plans.json. Results: <results>/<dataset>/<variant>_<size>/fold_N/.

Several GPUs (or processes) for one fold:  torchrun --nproc_per_node 4 $(which sab_train) -d D -f 0
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from tqdm import tqdm

from sabnet.cli.common import run_command
from sabnet.paths import Roots, resolve_dataset
from sabnet.training.run_training import STAGE_PHASES, TrainingOptions, train
from sabnet.training.validation import MODES_TABLE


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sab_train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True, help="dataset id (1), name (Dataset001_X) or raw folder path")
    p.add_argument("-f", "--fold", required=True, help="fold to train (0..4), or 'all' for every fold in turn")
    p.add_argument("--stage", choices=list(STAGE_PHASES), default="all",
                   help="2d: stage 1 only; 3d: stage 2 only (from the fold's stage-1 model); all: both (default)")
    p.add_argument("--sam-checkpoint", type=Path,
                   help="official SAM checkpoint (.pth) to start stage 1 from; the plan must have been made with it")
    p.add_argument("--device", choices=["cpu", "cuda", "mps"], default=None,
                   help="default: cuda if available, else mps if available, else cpu")
    p.add_argument("--epochs", type=_positive, help="epochs of each phase (default: plans.json)")
    p.add_argument("--iters-per-epoch", dest="iterations_per_epoch", type=_positive,
                   help="iterations per epoch (default: plans.json)")
    p.add_argument("--budget-minutes", type=float,
                   help="train each fold for about this many minutes: after each phase's first epoch, its number of "
                        "epochs is set to what fits (phases share the budget: 2d 75%%, depth 5%%, fusion 20%%)")
    p.add_argument("--continue", dest="continue_training", action="store_true",
                   help="resume from checkpoint_latest where a stopped run left off")
    p.add_argument("-nw", "--num-workers", dest="n_workers", type=int, default=2,
                   help="data augmentation worker processes per training process (0: in-process; default 2)")
    p.add_argument("--no-validation", dest="final_validation", action="store_false",
                   help="skip predicting the validation cases at the end (a later --continue writes it)")
    return p


def _run(args: argparse.Namespace) -> int:
    main_process = int(os.environ.get("RANK", "0")) == 0
    roots = Roots.from_environment()
    ref = resolve_dataset(args.dataset, roots)
    if main_process:
        print(roots.describe())
        print(f"reading {ref.preprocessed_dir}")
    options = TrainingOptions(stage=args.stage, device=args.device, sam_checkpoint=args.sam_checkpoint,
                              epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
                              n_workers=max(0, args.n_workers), continue_training=args.continue_training,
                              final_validation=args.final_validation, budget_minutes=args.budget_minutes)
    results = train(ref, args.fold, options, log=tqdm.write)
    if main_process:
        for result in results:
            trained = ", ".join(result.phases_trained) or "nothing left to train"
            print(f"fold {result.fold}: {trained}; checkpoints in {result.fold_dir}")
            for mode, evaluation in result.validation.items():
                print(f"  validation {mode}: mean foreground Dice {evaluation.mean_foreground_dice:.4f}")
            if result.validation:
                print(f"  per case and label: {result.fold_dir / 'validation' / 'summary.csv'}; modes compared: "
                      f"{result.fold_dir / 'validation' / MODES_TABLE}")
    return 0


def main(argv=None) -> int:
    return run_command(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
