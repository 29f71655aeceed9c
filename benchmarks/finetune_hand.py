"""Few-shot fine-tuning on phantoms: a knee + lumbar spine + hip model fine-tuned on 2 hand volumes,
against the same variant trained from scratch on those 2 volumes, both evaluated on held-out hands.

    python benchmarks/finetune_hand.py [--source-minutes 8] [--finetune-minutes 1 3] [--source-cases 60]
        [--test-cases 6] [--size 112] [--spacing 0.6 2.0] [-np 2] [--workdir DIR] [--quick]

Binary mode ('bone'): hand bones share no name with knee, spine or hip bones, so in multi-label
mode every hand output head would start fresh; merged into 'bone', the source's head carries over.

Steps (each a console command, printed as run; logs in <workdir>/logs):
 1. source: phantoms of knee, lumbar_spine and hip (T1/T2, seed 0), planned --binary, fold 0
    trained (stage 2d) for --source-minutes;
 2. hand: 2 training phantoms + --test-cases held-out ones in imagesTs/labelsTs (seed 7);
 3. for each budget of --finetune-minutes:
    (a) sab_finetune --cases 2 from the source (the hands at their own in-plane spacing, the source's
        model and image size);
    (b) the same 2 volumes as a separate dataset, planned on their own (binary), its model and in-plane
        spacing set to the fine-tuning plan's (only the starting weights differ), the same split,
        trained from scratch for the same minutes;
 4. both predict the held-out hands (2D mode); sabnet.evaluation scores them against the
    references merged to one bone label (Dice, HD95 in mm per case; means).
--quick: tiny phantoms (64 px, 8 slices), the model shrunk to 64 px and 2 encoder blocks, budgets
of a few seconds: checks that the pipeline runs, its figures mean nothing.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sabnet.evaluation.evaluate import evaluate_folder
from sabnet.io.image_io import read_image, write_image
from sabnet.model.config import ModelConfig
from sabnet.phantoms.cohort import make_phantom_dataset
from sabnet.planning.plans import load_plan, save_plan

SOURCE, HAND, SCRATCH = "Dataset981_KneeSpineHip", "Dataset982_HandFinetune", "Dataset983_HandScratch"
OWN_SETTINGS = ("in_channels", "n_outputs", "output_mode", "n_labels", "depth_volume_shape",
                "depth_neighbourhood_slices")
QUICK_MODEL = dict(image_size=64, encoder_depth=2, encoder_global_attn_indexes=[1], depth_channels=[4, 8])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source-minutes", type=float, default=8.0, help="training budget of the source model")
    p.add_argument("--finetune-minutes", type=float, nargs="+", default=[1.0, 3.0],
                   help="budgets of fine-tuning and of the scratch run; both arms run at each (default 1 3)")
    p.add_argument("--source-cases", type=int, default=60, help="source phantoms (a third per location)")
    p.add_argument("--test-cases", type=int, default=6, help="held-out hand phantoms")
    p.add_argument("--size", type=int, default=112, help="about this many voxels per in-plane side")
    p.add_argument("--spacing", type=float, nargs=2, default=(0.6, 2.0),
                   help="range of in-plane spacings in mm (default 0.6 2.0: the demo's phantoms, planned at 128 px)")
    p.add_argument("-np", "--processes", type=int, default=2, help="processes for phantoms and preprocessing")
    p.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder, removed)")
    p.add_argument("--quick", action="store_true", help="a tiny run that checks the pipeline (figures meaningless)")
    args = p.parse_args()
    if args.quick:
        args.source_minutes, args.finetune_minutes = 0.4, [0.25]
        args.source_cases, args.test_cases, args.size = 6, 2, 64
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sabnet_finetune_hand_"))
    try:
        run(args, work.resolve())
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    env = dict(os.environ, SABNET_RAW=str(work / "raw"), SABNET_PREPROCESSED=str(work / "preprocessed"),
               SABNET_RESULTS=str(work / "results"))
    os.environ.update({k: env[k] for k in ("SABNET_RAW", "SABNET_PREPROCESSED", "SABNET_RESULTS")})
    steps: list[tuple[str, float]] = []
    load_before = os.getloadavg()
    shape = dict(in_plane_size=args.size, in_plane_spacing_mm=tuple(args.spacing), n_slices=8 if args.quick else None,
                 n_workers=args.processes)
    started = time.perf_counter()
    source = make_phantom_dataset(work / "phantoms", ("knee", "lumbar_spine", "hip"), ("T1", "T2"),
                                  args.source_cases, seed=0, dataset_name=SOURCE, **shape)
    hand = make_phantom_dataset(work / "phantoms", ("hand",), ("T1", "T2"), 2, seed=7, n_test_cases=args.test_cases,
                                dataset_name=HAND, **shape)
    steps.append(("make phantoms", time.perf_counter() - started))
    np_flag = ["-np", str(args.processes)]

    _command(steps, work, "plan_and_preprocess", ["-d", str(source), "--binary", *np_flag, "--plan-only"], env)
    if args.quick:
        _set_model(work / "preprocessed" / SOURCE, dict(load_plan(work / "preprocessed" / SOURCE).model, **QUICK_MODEL))
    _command(steps, work, "plan_and_preprocess", ["-d", str(source), "--binary", *np_flag], env)
    _command(steps, work, "train", ["-d", str(source), "-f", "0", "--stage", "2d", "--budget-minutes",
                                    f"{args.source_minutes:g}", "-nw", "1"], env)

    references = _bone_references(hand / "labelsTs", work / "references")
    rows, per_case = [], []
    for i, minutes in enumerate(args.finetune_minutes):
        finetuned = hand if i == 0 else _copy_dataset(hand, work / "phantoms", f"Dataset{984 + 2 * i}_HandFinetune")
        scratch = _copy_dataset(hand, work / "phantoms", f"Dataset{985 + 2 * i}_HandScratch" if i else SCRATCH)
        _command(steps, work, "finetune", ["-d", str(finetuned), "--from", str(source), "--cases", "2",
                                           "--budget-minutes", f"{minutes:g}", "-nw", "1", *np_flag], env)
        finetune_plan = load_plan(work / "preprocessed" / finetuned.name)
        _command(steps, work, "plan_and_preprocess", ["-d", str(scratch), "--binary", *np_flag, "--plan-only"], env)
        _set_model(work / "preprocessed" / scratch.name, finetune_plan.model,
                   finetune_plan.preprocessing.target_spacing_mm)
        _command(steps, work, "plan_and_preprocess", ["-d", str(scratch), "--binary", *np_flag], env)
        shutil.copyfile(work / "preprocessed" / finetuned.name / "splits_final.json",
                        work / "preprocessed" / scratch.name / "splits_final.json")
        print(f"# copied {finetuned.name}'s splits_final.json (the 2 training cases sab_finetune chose) to "
              f"{scratch.name}")
        _command(steps, work, "train", ["-d", str(scratch), "-f", "0", "--stage", "2d", "--budget-minutes",
                                        f"{minutes:g}", "-nw", "1"], env)
        budget_rows = []
        for name, dataset in (("fine-tuned", finetuned), ("from scratch", scratch)):
            out = work / "predictions" / f"{name.replace(' ', '_')}_{minutes:g}min"
            _command(steps, work, "predict", ["-i", str(hand / "imagesTs"), "-o", str(out), "-d", str(dataset),
                                              "--mode", "2d"], env)
            table = evaluate_folder(references, out, labels={"bone": 1}).per_case
            budget_rows.append({"minutes": minutes, "model": name, "dice": table["dice"].mean(),
                                "hd95_mm": table["hd95_mm"].mean(), "dice_min": table["dice"].min(),
                                "epochs": _epochs(work / "results" / dataset.name)})
            per_case.append(table.set_index("case")["dice"].rename(f"{name}, {minutes:g} min"))
        keys = ["dice", "hd95_mm", "dice_min"]
        budget_rows.append({"minutes": minutes, "model": "difference", "epochs": "",
                            **{k: budget_rows[0][k] - budget_rows[1][k] for k in keys}})
        rows += budget_rows
    summary = pd.DataFrame(rows)
    _report(args, summary, pd.concat(per_case, axis=1), steps, load_before, work)


def _command(steps: list, work: Path, module: str, argv: list[str], env: dict) -> None:
    """Run the console command `sab_<module>`, its output into logs/; stop on failure."""
    console = f"sab_{module}"
    beside = Path(sys.executable).parent / console
    program = str(beside) if beside.is_file() else shutil.which(console)
    if program is None:
        raise SystemExit(f"{console} is not installed: pip install -e . from the repository root")
    text = f"{console} {shlex.join(argv)}"
    print(f"$ {text}", flush=True)
    log = work / "logs" / f"{len(steps):02d}_{module}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call([program, *argv], stdout=out,
                               stderr=subprocess.STDOUT, env=env)
    steps.append((text, time.perf_counter() - started))
    if code != 0:
        raise SystemExit(f"{console} failed (exit {code}); its output: {log}\n" + log.read_text()[-2000:])


def _copy_dataset(dataset: Path, parent: Path, name: str) -> Path:
    """A copy of a raw dataset under another name (its dataset.json's name too)."""
    copy = shutil.copytree(dataset, parent / name)
    description = json.loads((copy / "dataset.json").read_text())
    description["name"] = name
    (copy / "dataset.json").write_text(json.dumps(description, indent=1))
    return copy


def _set_model(preprocessed: Path, model: dict, target_spacing_mm: float | None = None) -> None:
    """Give a plan another model architecture (a variant and image size) and, when given, another
    in-plane target spacing, keeping its own outputs and depth-volume settings."""
    plan = load_plan(preprocessed)
    own = {k: plan.model[k] for k in OWN_SETTINGS}
    plan.model = ModelConfig.from_dict(dict(model, **own)).to_dict()
    if target_spacing_mm is not None:
        plan.preprocessing.target_spacing_mm = float(target_spacing_mm)
    save_plan(plan, preprocessed)
    print(f"# edited {preprocessed / 'plans.json'}: model {plan.model['variant']} at {plan.model['image_size']} px, "
          f"in-plane {plan.preprocessing.target_spacing_mm} mm")


def _bone_references(labels_dir: Path, out: Path) -> Path:
    """The held-out label maps with every bone merged into label 1, on their own grids."""
    for path in sorted(labels_dir.glob("*.nii.gz")):
        labels, geometry = read_image(path)
        write_image((labels > 0).astype(np.uint8), geometry, out / path.name)
    return out


def _epochs(dataset_results: Path) -> str:
    meta = json.loads(next(dataset_results.glob("*/fold_0/checkpoint_final/metadata.json")).read_text())
    history = [r for r in meta["history"] if r["phase"] == "2d"]
    iterations = (meta["overrides"].get("phase_iterations") or {}).get("2d", "?")
    return f"{len(history)} x {iterations} it"


def _report(args, summary: pd.DataFrame, per_case: pd.DataFrame, steps: list, load_before, work: Path) -> None:
    with pd.option_context("display.width", 200, "display.float_format", "{:.4f}".format):
        print("\nheld-out hand phantoms (bone, 2D mode), mean over cases:")
        print(summary.to_string(index=False))
        print("\nper case Dice:")
        print(per_case.to_string())
    print("\nsteps (wall seconds):")
    for text, seconds in steps:
        print(f"  {seconds:7.1f}  {text}")
    machine = f"{platform.node()}  {platform.processor() or platform.machine()}"
    print(f"\n{datetime.datetime.now().isoformat(timespec='minutes')}  {machine}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, {'quick run' if args.quick else 'full run'}; "
          f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}; work folder {work}")


if __name__ == "__main__":
    main()
