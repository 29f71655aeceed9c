"""sab_plan_and_preprocess -d D [-np N]: fingerprint a cohort, plan it, preprocess it."""
from __future__ import annotations

import argparse

import pandas as pd

from sabnet.cli.common import run_command
from sabnet.paths import Roots, resolve_dataset
from sabnet.preprocessing.plan_and_preprocess import PlanningOptions, plan_and_preprocess


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sab_plan_and_preprocess", description=__doc__)
    p.add_argument("-d", "--dataset", required=True, help="dataset id (1), name (Dataset001_X) or raw folder path")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--binary", action="store_true", help="merge all labels into one 'bone' label, as the published model")
    p.add_argument("--sam-checkpoint", help="pretrained weights (.pth: SAM vit_b/l/h, MobileSAM, SegmentAnyBone): plan "
                                            "their architecture")
    p.add_argument("--variant", help="model variant (default: the planner's; sab_tiny, lite_medsam_frozen, lite_medsam, "
                                     "sab_small)")
    p.add_argument("--memory-target-gb", type=float, help="memory for one training step (GPU or CPU) to size batches")
    p.add_argument("--device", choices=["cpu", "gpu"], default=None,
                   help="what training will run on (default: gpu if one is visible, else cpu)")
    p.add_argument("--replan", action="store_true", help="plan again even if plans.json exists (old plan -> plans.json.bak)")
    p.add_argument("--plan-only", action="store_true", help="fingerprint and plan, do not preprocess")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the dataset check that runs first")
    p.add_argument("--verify", dest="verify", action="store_true", help="check the dataset first (default)")
    p.set_defaults(verify=True)
    return p


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible, without importing torch (planning never loads it): a
    device node, and no CUDA_VISIBLE_DEVICES hiding it."""
    import os
    from pathlib import Path

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def _run(args: argparse.Namespace) -> int:
    roots = Roots.from_environment()
    print(roots.describe())
    ref = resolve_dataset(args.dataset, roots)
    device = args.device or ("gpu" if gpu_visible() else "cpu")
    options = PlanningOptions(args.binary, args.sam_checkpoint, args.memory_target_gb, device, args.variant)
    print(f"reading {ref.raw_dir}\nwriting {ref.preprocessed_dir}")
    result = plan_and_preprocess(ref, options, args.num_processes, args.verify, args.replan, args.plan_only)
    if result.verification is not None:
        print(f"verification: {len(result.verification.errors)} errors, {len(result.verification.warnings)} warnings")
        for w in result.verification.warnings:
            print(f"  warning: {w.file or ''} {w.message}")
    with pd.option_context("display.max_rows", 60, "display.width", 200):
        print(result.fingerprint_table.to_string(max_rows=60))
    plan = result.plan
    print(f"\nplan {'reused (as edited)' if result.plan_reused else 'written'}: {result.folder / 'plans.json'}")
    print(f"  slices: {plan.preprocessing.majority_plane} majority; target in-plane spacing {plan.preprocessing.target_spacing_mm} mm")
    print(f"  model: {plan.model['variant']} at {plan.model['image_size']} px, batch {plan.training.batch_size}, "
          f"labels {', '.join(l for l in plan.labels if l != 'background')}"
          + (f"; pretrained weights {plan.training.pretrained_weights}" if plan.training.pretrained_weights else ""))
    problems = list(result.fingerprint_errors)
    if result.preprocessing is not None:
        pp = result.preprocessing
        print(f"preprocessed: {len(pp.written)} written, {len(pp.skipped)} already up to date, {len(pp.failed)} failed")
        problems += pp.failed
    if problems:
        print("cases that failed (the others are kept):")
        for case_id, message in problems:
            print(f"  {case_id}: {message}")
        return 1
    return 0


def main(argv=None) -> int:
    return run_command(_run, _parser(), argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
