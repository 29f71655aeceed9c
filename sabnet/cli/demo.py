"""sab_demo: phantoms -> plan -> train -> predict (automatic and prompted, 2D and 3D) -> evaluate,
with nothing downloaded and nothing configured."""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from sabnet.cli.common import run_command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sab_demo", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("sabnet_demo"), help="folder for everything (default ./sabnet_demo)")
    p.add_argument("--minutes", type=float, default=9.0, help="about how long the whole demo may take (default 9)")
    p.add_argument("--device", choices=["cpu", "cuda", "mps"], default=None, help="default: cuda if available, else cpu")
    p.add_argument("--cases", type=int, default=80, help="training phantoms (default 80)")
    p.add_argument("--test-cases", type=int, default=5, help="held-out phantoms (default 5)")
    return p


def _run(args: argparse.Namespace) -> int:
    import torch

    from sabnet.demo import DemoSettings, run_demo

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = run_demo(DemoSettings(args.out, args.minutes, device, args.cases, args.test_cases))
    with pd.option_context("display.width", 160, "display.max_columns", 10):
        print("\nMean Dice on the held-out phantoms (bone):")
        print(result.table.round(3).to_string())
    f = result.folders
    print(f"\nfinished in {result.seconds / 60:.1f} minutes. Everything is under {args.out.resolve()}:")
    print(f"  raw phantoms        {f['raw']}")
    print(f"  plan and store      {f['preprocessed']}  (plans.json, dataset_fingerprint.csv)")
    print(f"  trained model       {f['model']}  (fold_0/progress.png, training_log.txt)")
    print(f"  predictions         {args.out.resolve() / 'predictions'}  (QC pictures in 3d_automatic/*_qc.png)")
    print(f"  Dice table          {f['table']}")
    print("\nThe same on your own data (nnU-Net raw layout: dataset.json, imagesTr/, labelsTr/):")
    print("  sab_verify_dataset -d /path/to/Dataset001_MyBones")
    print("  sab_plan_and_preprocess -d /path/to/Dataset001_MyBones")
    print("  sab_train -d Dataset001_MyBones -f all")
    print("  sab_predict -i /path/to/new_images -o /path/to/predictions -d Dataset001_MyBones")
    print("  sab_evaluate -ref /path/to/reference_labels -pred /path/to/predictions -d Dataset001_MyBones")
    return 0


def main(argv=None) -> int:
    return run_command(_run, _parser(), argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
