"""Real MRI: five-fold cross-validation of sabnet (and, with --nnunet, nnU-Net v2 2d) on the 36
lumbar spines of Dataset001_SpineVB3 (manual labels L1..L5, vertebral bodies), each fold under the
same wall-clock training budget on the same machine.

    python benchmarks/real_spine.py [--data ../shared/data/Dataset001_SpineVB3] [--budget-minutes 6]
        [--folds 0 1 2 3 4] [--device cpu|cuda] [--gpu] [--nnunet] [--workdir DIR] [--quick]

sabnet, default settings (multi-label L1..L5, the planner's default small variant):
 1. sab_plan_and_preprocess; the 5-fold splits_final.json that sabnet makes, written once;
 2. per fold: sab_train -f F --budget-minutes M (stage all: 2D, then depth + fusion; the budget covers
    both stages). Its validation predictions give "3D automatic" (validation/) and "2D automatic"
    (validation/2d/);
 3. per fold, prompted: a prompts file with one positive point per vertebra on every slice (along the
    plan's slice axis) that contains it, at the vertebra's deepest pixel there (IJK, label = its name),
    then sab_predict -f F --prompts ... --mode 2d|3d --no-postprocessing on the fold's validation images.
nnU-Net (--nnunet): nnUNetv2_plan_and_preprocess -c 2d; sabnet's splits_final.json copied into its
preprocessed folder (the very same folds); per fold, nnU-Net's own nnUNetTrainer, 2d configuration,
with a wall-clock budget (nnU-Net has no budget flag): the script writes <workdir>/nnunet/budget_trainer.py
(see NNUNET_TRAINER below) and runs it with nnU-Net's Python. Its validation predictions
(fold_F/validation) are evaluated with the same sabnet code.
Evaluation (sabnet.evaluation.evaluate_folder) over the validation cases of the folds run: Dice per
vertebra, their mean, and Dice of all vertebrae merged into one bone label (prediction and reference > 0).

Data-augmentation workers: --workers for both tools (sab_train -nw, nnUNet_n_proc_DA). Every command,
its log and its wall time are kept under --workdir; steps already done there are skipped when the
script is run again with the same settings (delete the workdir to start over). Writes
<workdir>/real_spine.md (tables, machine, commands), dice.csv and per_case.csv.
--quick: the first 6 cases, folds 0 and 1, a 1-minute budget: checks the script end to end; its
figures mean nothing. --gpu: device cuda, 20 minutes per fold, more workers.
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
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from sabnet.dataset.raw_dataset import RawDataset
from sabnet.evaluation.evaluate import evaluate_folder, write
from sabnet.io.atomic import read_json, write_json
from sabnet.io.image_io import read_geometry, read_image, write_image
from sabnet.paths import DATASET_NAME
from sabnet.planning.plans import load_plan
from sabnet.planning.slicing import slicing_for
from sabnet.preprocessing.store import PreprocessedStore
from sabnet.training.splits import fold_cases, load_or_create_splits

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset001_SpineVB3"
SAB_CONFIGURATIONS = ("2d_automatic", "3d_automatic", "2d_prompted", "3d_prompted")
ROW_NAMES = {"2d_automatic": "sabnet 2D automatic", "3d_automatic": "sabnet 3D automatic",
             "2d_prompted": "sabnet 2D prompted", "3d_prompted": "sabnet 3D prompted", "nnunet_2d": "nnU-Net 2d"}
NNUNET_TRAINER_NAME = "nnUNetTrainerBudget"
NNUNET_TRAINER = '''"""Written by sabnet's benchmarks/real_spine.py; run with nnU-Net's Python:
    python budget_trainer.py DATASET_ID FOLD BUDGET_MINUTES cpu|cuda
nnU-Net v2's default trainer (nnUNetTrainer) with a wall-clock training budget, fitted as sab_train
--budget-minutes fits its own: after 4 timed iterations (the first, which starts the loaders, not
counted) the iterations per epoch are set so that about 10 epochs fit 85 % of the budget (at most
nnU-Net's 250; validation iterations one fifth of them, as nnU-Net's 50 per 250); after every epoch
the number of epochs is set to what fits the rest of the budget at the mean epoch time so far (at
least 2, at most nnU-Net's 1000). The poly learning rate follows the number of epochs, so its
schedule runs to the end. run_training() is nnU-Net's loop, with the iteration count re-read at
every step. Device settings as nnUNetv2_train -device; then nnU-Net's own validation
(perform_actual_validation, checkpoint_final) without test-time mirroring, as sabnet predicts
(mirroring would cost 4x the prediction time on a CPU). Writes fold_F/budget.json."""
import json, multiprocessing, sys, time

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

CALIBRATION_ITERATIONS, TARGET_EPOCHS, VALIDATION_SHARE, MAX_EPOCHS = 4, 10, 0.15, 1000


class nnUNetTrainerBudget(nnUNetTrainer):
    budget_s = 60.0

    def run_training(self):
        self.on_train_start()
        self.iteration_s, start = None, time.perf_counter()
        while self.current_epoch < self.num_epochs:
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs, times = [], []
            while len(outputs) < self.num_iterations_per_epoch:
                tick = time.perf_counter()
                outputs.append(self.train_step(next(self.dataloader_train)))
                times.append(time.perf_counter() - tick)
                if self.iteration_s is None and len(outputs) == CALIBRATION_ITERATIONS:
                    self._fit_iterations(float(np.median(times[1:])))
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                self.on_validation_epoch_end([self.validation_step(next(self.dataloader_val))
                                              for _ in range(self.num_val_iterations_per_epoch)])
            self.on_epoch_end()  # counts the epoch
            self._fit_epochs(time.perf_counter() - start)
        self.training_s = time.perf_counter() - start
        self.on_train_end()

    def _fit_iterations(self, iteration_s):
        self.iteration_s = iteration_s
        total = max(2, int(self.budget_s * (1 - VALIDATION_SHARE) // max(iteration_s, 1e-6)))
        self.num_iterations_per_epoch = int(min(self.num_iterations_per_epoch, max(1, total // TARGET_EPOCHS)))
        self.num_val_iterations_per_epoch = max(1, round(self.num_iterations_per_epoch / 5))
        self._set_epochs(max(2, min(MAX_EPOCHS, total // self.num_iterations_per_epoch)))
        self.print_to_log_file(f"budget {self.budget_s:.0f} s: {iteration_s:.2f} s per iteration; "
                               f"{self.num_iterations_per_epoch} iterations per epoch")

    def _fit_epochs(self, spent_s):
        done = self.current_epoch
        left = max(0.0, self.budget_s - spent_s)
        self._set_epochs(int(max(2 if done == 1 else done, min(MAX_EPOCHS, done + left // (spent_s / done)))))

    def _set_epochs(self, n):
        self.num_epochs = int(n)
        self.lr_scheduler.max_steps = int(n)


def main():
    dataset_id, fold, minutes, device_name = sys.argv[1:5]
    if device_name == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    else:
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        torch.backends.cudnn.benchmark = True
    folder = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(int(dataset_id)))
    plans = load_json(join(folder, "nnUNetPlans.json"))
    plans["continue_training"] = False
    trainer = nnUNetTrainerBudget(plans=plans, configuration="2d", fold=int(fold),
                                  dataset_json=load_json(join(folder, "dataset.json")), device=torch.device(device_name))
    trainer.budget_s = 60.0 * float(minutes)
    trainer.run_training()
    tick = time.perf_counter()
    trainer.inference_allowed_mirroring_axes = None  # no test-time mirroring: sabnet predicts without it
    trainer.perform_actual_validation(False)
    record = {"budget_s": trainer.budget_s, "seconds_per_iteration": trainer.iteration_s,
              "iterations_per_epoch": trainer.num_iterations_per_epoch,
              "validation_iterations_per_epoch": trainer.num_val_iterations_per_epoch, "epochs": trainer.num_epochs,
              "batch_size": trainer.batch_size, "training_s": trainer.training_s,
              "validation_s": time.perf_counter() - tick}
    with open(join(trainer.output_folder, "budget.json"), "w") as f:
        json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
'''


class Workdir:
    """The run's folder: its settings, its steps (command, log, seconds) and every command's output."""

    def __init__(self, root: Path, settings: dict):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        kept = root / "settings.json"
        if kept.is_file() and read_json(kept) != settings:
            sys.exit(f"{root} holds a run with other settings ({read_json(kept)}); give another --workdir or delete it")
        write_json(kept, settings)
        self.steps_file = root / "steps.json"
        self.steps: dict = read_json(self.steps_file) if self.steps_file.is_file() else {}
        self.env = dict(os.environ, SABNET_RAW=str(root / "raw"), SABNET_PREPROCESSED=str(root / "sabnet/preprocessed"),
                        SABNET_RESULTS=str(root / "sabnet/results"), nnUNet_raw=str(root / "raw"),
                        nnUNet_preprocessed=str(root / "nnunet/preprocessed"),
                        nnUNet_results=str(root / "nnunet/results"))

    def run(self, key: str, argv: list[str], display: str | None = None, env: dict | None = None) -> dict:
        """Run a command once (a step recorded as done is skipped); output to logs/<key>.log."""
        if key in self.steps:
            print(f"  done earlier ({self.steps[key]['seconds']:.0f} s): {self.steps[key]['command']}")
            return self.steps[key]
        text = display or shlex.join(argv)
        log = self.root / "logs" / f"{key}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"$ {text}\n  [{datetime.datetime.now():%H:%M:%S}] log: {log}", flush=True)
        started = time.perf_counter()
        with open(log, "w") as out:
            code = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env or self.env)
        seconds = time.perf_counter() - started
        if code != 0:
            sys.exit(f"failed (exit {code}) after {seconds:.0f} s: {text}\nlast lines of {log}:\n"
                     + "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:]))
        print(f"  {seconds:.0f} s", flush=True)
        self.steps[key] = {"command": text, "seconds": round(seconds, 1), "log": str(log)}
        write_json(self.steps_file, self.steps)
        return self.steps[key]


def console(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        sys.exit(f"{name} is not installed: pip install -e . from the repository root")
    return found


def link_raw_dataset(source: Path, target: Path, n_cases: int | None) -> RawDataset:
    """The raw dataset as links under the workdir (the first n_cases cases only, when given)."""
    dataset = RawDataset.load(source)
    ids = dataset.case_ids()[:n_cases] if n_cases else dataset.case_ids()
    if not (target / "dataset.json").is_file():
        for case_id in ids:
            case = dataset.case(case_id)
            for path, folder in [(p, "imagesTr") for p in case.image_files] + [(case.label_file, "labelsTr")]:
                (target / folder).mkdir(parents=True, exist_ok=True)
                (target / folder / path.name).symlink_to(path.resolve())
        description = json.loads((source / "dataset.json").read_text(encoding="utf-8"))
        write_json(target / "dataset.json", dict(description, numTraining=len(ids)))
    return RawDataset.load(target)


def vertebra_prompts(label_file: Path, slice_axis: int, labels: dict[str, int]) -> list[dict]:
    """One positive point (IJK) per vertebra on every slice along `slice_axis` that contains it, at
    the vertebra's deepest pixel on that slice (largest distance to its outline there)."""
    array, _ = read_image(label_file)
    in_plane = [a for a in range(3) if a != slice_axis]
    prompts = []
    for name, value in labels.items():
        mask = array == value
        if not mask.any():
            continue
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        for index in range(box[slice_axis].start, box[slice_axis].stop):
            region = tuple(slice(index, index + 1) if a == slice_axis else box[a] for a in range(3))
            plane = np.squeeze(mask[region], axis=slice_axis)
            if not plane.any():
                continue
            depth = ndimage.distance_transform_edt(np.pad(plane, 1))[1:-1, 1:-1]
            voxel = [0, 0, 0]
            voxel[slice_axis] = index
            for axis, position in zip(in_plane, np.unravel_index(int(np.argmax(depth)), depth.shape)):
                voxel[axis] = box[axis].start + int(position)
            prompts.append({"label": name, "points": [voxel[::-1]], "point_labels": [1]})
    return prompts


def sabnet_folds(args, work: Workdir, dataset: RawDataset, splits: list[dict], results: Path) -> dict:
    """Train each fold, gather its automatic predictions, predict its prompted ones; {fold: seconds}."""
    raw, pred = str(dataset.root), work.root / "predictions"
    plan = load_plan(work.root / "sabnet/preprocessed" / dataset.root.name)
    times = {}
    for fold in args.folds:
        val_ids = fold_cases(splits, fold)[1]
        step = work.run(f"sab_train_fold{fold}", [console("sab_train"), "-d", raw, "-f", str(fold), "--budget-minutes",
                                                  f"{args.budget_minutes:g}", "--device", args.device,
                                                  "-nw", str(args.workers)])
        validation = results / f"fold_{fold}" / "validation"
        for configuration, folder in (("3d_automatic", validation), ("2d_automatic", validation / "2d")):
            for case_id in val_ids:
                (pred / configuration).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / f"{case_id}.nii.gz", pred / configuration / f"{case_id}.nii.gz")
        inputs, prompts_file = work.root / "inputs" / f"fold_{fold}", work.root / "prompts" / f"fold_{fold}.json"
        if not prompts_file.is_file():
            prompts = {}
            for case_id in val_ids:
                case = dataset.case(case_id)
                inputs.mkdir(parents=True, exist_ok=True)
                for image in case.image_files:
                    (inputs / image.name).unlink(missing_ok=True)
                    (inputs / image.name).symlink_to(image.resolve())
                axis = slicing_for(read_geometry(case.image_files[0]), plan.preprocessing.majority_plane).slice_axis
                prompts[case_id] = {"coordinates": "ijk",
                                    "prompts": vertebra_prompts(case.label_file, axis, dataset.foreground_labels)}
            write_json(prompts_file, prompts)
        seconds = step["seconds"]
        for mode in ("2d", "3d"):
            seconds += work.run(f"sab_predict_fold{fold}_{mode}_prompted", [
                console("sab_predict"), "-i", str(inputs), "-o", str(pred / f"{mode}_prompted"), "-d", raw, "-f",
                str(fold), "--prompts", str(prompts_file), "--mode", mode, "--device", args.device,
                "--no-postprocessing", "--overwrite"])["seconds"]
        times[fold] = {"sab_train_s": step["seconds"], "sabnet_total_s": seconds, **sab_epochs(results, fold)}
    return times


def sab_epochs(results: Path, fold: int) -> dict:
    """Epochs x iterations per phase and training seconds, from the fold's checkpoint_final."""
    meta = read_json(results / f"fold_{fold}" / "checkpoint_final" / "metadata.json")
    iterations = meta["overrides"].get("phase_iterations") or {}
    parts, train_s = [], 0.0
    for phase in ("2d", "depth", "fusion"):
        records = [r for r in meta["history"] if r["phase"] == phase]
        parts.append(f"{phase} {len(records)}x{iterations.get(phase, '?')}")
        train_s += sum(r["epoch_time_s"] for r in records)
    return {"sabnet_epochs": ", ".join(parts), "sabnet_training_s": train_s}


def nnunet_folds(args, work: Workdir, dataset: RawDataset, splits_file: Path) -> dict:
    """Plan, preprocess and train nnU-Net 2d on sabnet's folds; gather its validation predictions."""
    bin_dir, name = args.nnunet_bin, dataset.root.name
    dataset_id = str(int(DATASET_NAME.match(name).group(1)))
    env = dict(work.env, nnUNet_n_proc_DA=str(args.workers), nnUNet_def_n_proc=str(args.processes))
    n = str(args.processes)
    work.run("nnunet_plan_and_preprocess", [str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", dataset_id, "-c", "2d",
                                            "-np", n, "-npfp", n, "--verify_dataset_integrity"], env=env)
    target = work.root / "nnunet/preprocessed" / name / "splits_final.json"
    if not target.is_file() or read_json(target) != read_json(splits_file):
        shutil.copyfile(splits_file, target)
        print(f"# copied sabnet's {splits_file} to {target}")
    trainer = work.root / "nnunet" / "budget_trainer.py"
    trainer.write_text(NNUNET_TRAINER, encoding="utf-8")
    results = work.root / "nnunet/results" / name / f"{NNUNET_TRAINER_NAME}__nnUNetPlans__2d"
    times = {}
    for fold in args.folds:
        step = work.run(f"nnunet_train_fold{fold}", [str(bin_dir / "python"), str(trainer), dataset_id, str(fold),
                                                     f"{args.budget_minutes:g}", args.device], env=env)
        out = work.root / "predictions" / "nnunet_2d"
        out.mkdir(parents=True, exist_ok=True)
        for case_id in fold_cases(read_json(splits_file), fold)[1]:
            shutil.copyfile(results / f"fold_{fold}" / "validation" / f"{case_id}.nii.gz", out / f"{case_id}.nii.gz")
        record = read_json(results / f"fold_{fold}" / "budget.json")
        times[fold] = {"nnunet_total_s": step["seconds"], "nnunet_training_s": record["training_s"],
                       "nnunet_epochs": f"{record['epochs']}x{record['iterations_per_epoch']} "
                                        f"(batch {record['batch_size']})"}
    return times


def evaluate_all(work: Workdir, dataset: RawDataset, case_ids: list[str], configurations: list[str]
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Dice per vertebra, mean, and merged bone for each configuration: (table, per-case rows)."""
    evaluation = work.root / "evaluation"
    labels = dataset.foreground_labels
    metadata = {c: dataset.metadata(c) for c in case_ids}
    references, references_bone = evaluation / "references", evaluation / "references_bone"
    for case_id in case_ids:
        array, geometry = read_image(dataset.label_file(case_id))
        write_image(array, geometry, references / f"{case_id}.nii.gz")
        write_image((array > 0).astype(np.uint8), geometry, references_bone / f"{case_id}.nii.gz")
    rows, per_case = [], []
    for configuration in configurations:
        source, bone = work.root / "predictions" / configuration, evaluation / configuration / "bone"
        for case_id in case_ids:
            array, geometry = read_image(source / f"{case_id}.nii.gz")
            write_image((array > 0).astype(np.uint8), geometry, bone / f"{case_id}.nii.gz")
        result = evaluate_folder(references, source, labels, metadata, n_workers=2)
        merged = evaluate_folder(references_bone, bone, {"bone": 1}, metadata, n_workers=2)
        write(result, evaluation / configuration)
        write(merged, bone)
        dice = result.means_per_label.set_index("label")["dice"]
        rows.append({"configuration": ROW_NAMES[configuration], **{k: dice[k] for k in labels},
                     "mean": result.mean_foreground_dice, "merged bone": merged.mean_foreground_dice,
                     "cases": len(case_ids)})
        per_case.append(pd.concat([result.per_case, merged.per_case]).assign(configuration=configuration))
    return pd.DataFrame(rows), pd.concat(per_case, ignore_index=True)


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    import torch

    gpu = f"; GPU {torch.cuda.get_device_name(0)}" if device == "cuda" and torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores, {memory_gb:.0f} GB RAM{gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def markdown_tables(table: pd.DataFrame, times: dict) -> tuple[list[str], list[str]]:
    """The Dice table (configuration x labels) and the per-fold time table, as markdown lines."""
    columns = [c for c in table.columns if c != "configuration"]
    dice = ["| configuration | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for row in table.to_dict("records"):
        dice.append(f"| {row['configuration']} | " + " | ".join(
            str(row[c]) if c == "cases" else f"{row[c]:.3f}" for c in columns) + " |")
    names = [("sab_train_s", "sab_train wall (s)"), ("sabnet_training_s", "sabnet training (s)"),
             ("sabnet_epochs", "sabnet epochs x iterations"), ("sabnet_total_s", "sabnet wall with prompted (s)"),
             ("nnunet_total_s", "nnU-Net wall (s)"), ("nnunet_training_s", "nnU-Net training (s)"),
             ("nnunet_epochs", "nnU-Net epochs x iterations")]
    present = [(k, h) for k, h in names if any(k in t for t in times.values())]
    folds = ["| fold | " + " | ".join(h for _, h in present) + " |", "|---|" + "---:|" * len(present)]
    for fold, t in sorted(times.items()):
        folds.append(f"| {fold} | " + " | ".join(f"{t[k]:.0f}" if isinstance(t.get(k), float) else str(t.get(k, ""))
                                                 for k, _ in present) + " |")
    return dice, folds


def report(args, work: Workdir, table: pd.DataFrame, times: dict, started: datetime.datetime, load) -> str:
    dice, folds = markdown_tables(table, times)
    finished = datetime.datetime.now().astimezone()
    names = ["SABNET_RAW", "SABNET_PREPROCESSED", "SABNET_RESULTS"]
    names += ["nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"] if args.nnunet else []
    commands = [f"export {k}={work.env[k]}" for k in names]
    if args.nnunet:
        commands.append(f"export nnUNet_n_proc_DA={args.workers} nnUNet_def_n_proc={args.processes}")
    commands += [s["command"] for s in work.steps.values()]
    return "\n".join([
        f"Command: `python {shlex.join(['benchmarks/real_spine.py'] + sys.argv[1:])}`"
        + (" (--quick: its figures mean nothing)" if args.quick else ""), "",
        f"Budget: {args.budget_minutes:g} min of training per fold and tool; folds {' '.join(map(str, args.folds))}; "
        f"device {args.device}; {args.workers} augmentation workers per tool.",
        f"Machine: {machine(args.device)}. Load average (1, 5, 15 min) at the start "
        f"{', '.join(f'{v:.1f}' for v in load)}; at the end {', '.join(f'{v:.1f}' for v in os.getloadavg())}.",
        f"Date: {started:%Y-%m-%d %H:%M} to {finished:%Y-%m-%d %H:%M %Z}.", "",
        "Cross-validation Dice (mean over the validation cases of the folds run):", "", *dice, "",
        "Per fold (wall: the whole command, final validation included; training: the epochs the budget covers):", "",
        *folds, "", "Commands, in the order run:", "", "```", *commands, "```"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the raw Dataset001_SpineVB3 folder (read only)")
    p.add_argument("--budget-minutes", type=float, help="training budget per fold and tool (default 6; --gpu 20; --quick 1)")
    p.add_argument("--folds", type=int, nargs="+", help="folds to run (default 0 1 2 3 4; --quick 0 1)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default cpu (--gpu: cuda)")
    p.add_argument("--gpu", action="store_true", help="preset: --device cuda, 20 min per fold, more workers")
    p.add_argument("--nnunet", action="store_true", help="also train and evaluate nnU-Net v2 2d on the same folds")
    p.add_argument("--nnunet-bin", type=Path, default=Path("/work/nnunet_venv/bin"),
                   help="bin folder of the environment that has nnunetv2 (its python and nnUNetv2_* commands)")
    p.add_argument("--workers", type=int, help="augmentation workers of each tool (default 2; --gpu up to 12)")
    p.add_argument("-np", "--processes", type=int, help="processes for preprocessing (default 2; --gpu up to 8)")
    p.add_argument("--workdir", type=Path, help="default /tmp/sabnet_real_spine[_quick|_gpu]")
    p.add_argument("--quick", action="store_true", help="6 cases, folds 0 1, 1 minute: a smoke check")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 2
    args.device = args.device or ("cuda" if args.gpu else "cpu")
    args.budget_minutes = args.budget_minutes or (1.0 if args.quick else 20.0 if args.gpu else 6.0)
    args.folds = args.folds or ([0, 1] if args.quick else [0, 1, 2, 3, 4])
    args.workers = args.workers or (max(2, min(12, cores - 2)) if args.gpu else 2)
    args.processes = args.processes or (max(2, min(8, cores)) if args.gpu else 2)
    suffix = "_quick" if args.quick else "_gpu" if args.gpu else ""
    args.workdir = (args.workdir or Path(f"/tmp/sabnet_real_spine{suffix}")).resolve()
    if not (args.data / "dataset.json").is_file() or not DATASET_NAME.match(args.data.resolve().name):
        sys.exit(f"{args.data}: not a raw dataset folder named DatasetNNN_Name (with dataset.json)")
    if args.nnunet and not (args.nnunet_bin / "nnUNetv2_plan_and_preprocess").is_file():
        sys.exit(f"{args.nnunet_bin}: no nnUNetv2_plan_and_preprocess; give nnU-Net's environment with --nnunet-bin")
    started, load = datetime.datetime.now().astimezone(), os.getloadavg()
    settings = {"data": str(args.data.resolve()), "quick": args.quick, "budget_minutes": args.budget_minutes,
                "device": args.device, "workers": args.workers}
    work = Workdir(args.workdir, settings)
    dataset = link_raw_dataset(args.data, work.root / "raw" / args.data.resolve().name, 6 if args.quick else None)
    print(f"{machine(args.device)}; load {load[0]:.1f}\nworkdir {work.root}")

    work.run("sab_plan_and_preprocess", [console("sab_plan_and_preprocess"), "-d", str(dataset.root), "-np",
                                         str(args.processes), "--device", "gpu" if args.device == "cuda" else "cpu"])
    preprocessed = work.root / "sabnet/preprocessed" / dataset.root.name
    plan, store = load_plan(preprocessed), PreprocessedStore(preprocessed)
    if plan.labels != {"background": 0, **dataset.foreground_labels}:
        sys.exit(f"{preprocessed}/plans.json: labels {plan.labels} are not the dataset's; the benchmark needs the "
                 "default multi-label plan")
    cases = [{"case_id": c, **{k: store.properties(c).get(k, "") for k in ("subject", "sequence", "location")}}
             for c in store.case_ids()]
    splits = load_or_create_splits(preprocessed, cases, dataset.root, seed=plan.training.seed)
    if max(args.folds) >= len(splits) or min(args.folds) < 0:
        sys.exit(f"--folds {args.folds}: the splits have {len(splits)} folds (0..{len(splits) - 1})")
    from sabnet.training.layout import plan_name

    times = sabnet_folds(args, work, dataset, splits, work.root / "sabnet/results" / dataset.root.name / plan_name(plan))
    configurations = list(SAB_CONFIGURATIONS)
    if args.nnunet:
        for fold, t in nnunet_folds(args, work, dataset, preprocessed / "splits_final.json").items():
            times[fold].update(t)
        configurations.append("nnunet_2d")
    case_ids = sorted(c for f in args.folds for c in fold_cases(splits, f)[1])
    print(f"evaluating {len(configurations)} configurations on {len(case_ids)} validation cases")
    table, per_case = evaluate_all(work, dataset, case_ids, configurations)
    table.to_csv(work.root / "dice.csv", index=False, float_format="%.4f")
    per_case.to_csv(work.root / "per_case.csv", index=False, float_format="%.4f")
    text = report(args, work, table, times, started, load)
    (work.root / "real_spine.md").write_text(text + "\n", encoding="utf-8")
    print("\n" + text + f"\n\nwritten: {work.root / 'real_spine.md'}, dice.csv, per_case.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
