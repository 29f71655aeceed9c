"""sab_find_best_configuration -d D: compare 2D/3D mode and postprocessing on the cross-validation
predictions and print the recommended sab_predict command."""
from __future__ import annotations

import argparse

import pandas as pd

from sabnet.cli.common import run_command
from sabnet.paths import Roots, resolve_dataset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sab_find_best_configuration", description=__doc__)
    p.add_argument("-d", "--dataset", required=True, help="dataset id, name or raw folder")
    p.add_argument("-p", "--plan", help="model folder name (when the dataset has several)")
    return p


def _run(args: argparse.Namespace) -> int:
    from sabnet.inference.best_configuration import find_best_configuration
    from sabnet.inference.model_folder import find_model_folder

    roots = Roots.from_environment()
    print(roots.describe())
    ref = resolve_dataset(args.dataset, roots)
    folder = find_model_folder(ref, args.plan)
    print(f"reading {folder} (cross-validation predictions) and {ref.raw_dir} (references)\nwriting {folder}")
    result = find_best_configuration(folder, ref.raw_dir, args.dataset)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(result.table.round(4).to_string())
    print("\nmean foreground Dice: " + ", ".join(f"{m} {d:.4f}" for m, d in result.dice_by_mode.items()))
    kept = {v: r for v, r in result.postprocessing.labels.items()}
    print(f"postprocessing kept for {len(kept)} label(s); after it: {result.dice_after_postprocessing:.4f}")
    print(f"\nrecommended:\n  {result.command}")
    return 0


def main(argv=None) -> int:
    return run_command(_run, _parser(), argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
