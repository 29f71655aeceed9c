"""Real MRI: five-fold cross-validation of sabnet's model variants side by side (and, with --nnunet,
nnU-Net v2 2d) on the 36 lumbar spines of Dataset001_SpineVB3 (manual labels 1..5 = vertebral bodies
L1..L5), each fold under the same wall-clock training budget on the same machine, on the very same
folds, automatic and prompted, and on altered inputs.

    python benchmarks/real_spine.py [--variants lite_medsam_frozen lite_medsam sab_tiny]
        [--budget-minutes 15] [--folds 0 1 2 3 4] [--workers 2] [-np 2] [--device cpu|cuda] [--gpu]
        [--workdir /tmp/sabnet_real_spine] [--data ../shared/data/Dataset001_SpineVB3]
        [--t2-data ../shared/data/spine_tptbox_mri] [--nnunet [--nnunet-bin DIR]] [--quick]

Per variant (--variants; each with its own preprocessed and results roots under
<workdir>/sabnet/<variant>/, SABNET_PREPROCESSED and SABNET_RESULTS set per variant, one raw root
<workdir>/raw that links the data):
 1. sab_plan_and_preprocess -d <raw> -np N --variant <variant>. The folds: the first variant's
    splits_final.json (sabnet's own 5-fold split, written once), kept as <workdir>/splits_final.json
    and copied into every variant's preprocessed dataset folder before it trains, so that all
    variants (and nnU-Net) train and validate on the same cases; a variant whose splits file differs
    is refused.
 2. per fold: sab_train -f F --budget-minutes M -nw W (stage all: 2D, then depth + fusion; the budget
    covers the training epochs of both stages). For lite_medsam_frozen, the first fold's sab_train
    first fills the embedding cache of the frozen encoder for every case (all folds share it); sab_train
    has no flag to do that alone, so its one-time cost is read from the time stamps of the fold's
    training_log.txt ('embedding cache ...: encoding N cases' to 'embedding cache: ... (encoded N
    cases)'), and estimated again as the first fold's sab_train wall time minus the median of the
    later folds'.
 3. per fold, predictions of its validation cases by the fold's checkpoint_final, all into
    <workdir>/predictions/<variant>/<configuration>/<case>.nii.gz. They are made in this process
    (spine_predictions.py) exactly as `sab_predict -f F --no-postprocessing` makes them, but each image
    is encoded once for all the configurations that read it (the original image's embeddings come
    from the fold's embedding cache when it holds them); seconds and encoder calls per image are kept
    in prediction_times_fold<F>.json:
    2d_automatic, 3d_automatic  no prompts, --mode 2d and --mode 3d;
    click_per_slice  one positive point per vertebra on every slice (along the slice axis sabnet picks
                     for the case) that holds it, at its deepest pixel there (largest distance to its
                     outline); as sab_predict --prompts P --mode 2d --no-carry;
    click_carried    one positive point per vertebra on the middle slice of its extent along the slice
                     axis, at its deepest pixel there; as sab_predict --prompts P --mode 2d (each
                     prompted object carried to the neighbouring slices);
    remapped_2d, remapped_3d  the images with their intensities remapped as a T2 would show them
                     (fat and fluid swapped), predicted without prompts, --mode 2d and --mode 3d.
                     Made once for every case, <workdir>/remapped/imagesTr/<case>_0000.nii.gz (float32,
                     the original's geometry): each image clipped to its own 0.5 and 99.5 percentiles of
                     nonzero voxels and scaled to u in [0, 1], then a piecewise-linear curve through the
                     knots (u, v) = (0, 0), (0.08, 0.85), (0.35, 0.25), (0.7, 0.55), (1, 0.65), times 1000:
                     air stays dark, dark fluid becomes bright, muscle dark, fat and marrow intermediate;
    cropped_2d       the volumes cropped along the spine, to test whether the model names vertebrae by
                     their anatomy or by their place in the image: the cranio-caudal array axis is the
                     one along which the five labels' centroids (mm) spread the most, its cranial end the
                     side of L1; cases in sorted order alternate: even index, the cranial 25 % of the
                     image's extent along it removed; odd index, the caudal 20 %. Images and reference
                     labels are cropped alike (SimpleITK RegionOfInterest: the origin moves with the crop)
                     into <workdir>/cropped/imagesTr and labelsTr, what was cut in cropped/crops.json;
                     predicted in 2D without prompts, evaluated against the cropped references: a
                     vertebra cut away entirely is absent from the reference (Dice NaN if it is not
                     predicted either, 0 if it is).
    No postprocessing, as the fold's own validation predictions.
 4. the real T2-weighted crop <t2-data>/sub-mri_label-6_T2w.nii.gz (TPTBox test data, 1.5 mm; linked as
    <workdir>/inputs/t2_crop/tptbox_t2w_0000.nii.gz), predicted once per variant with the ensemble of
    the folds run (sab_predict -f <folds> --mode 2d and --mode 3d) and scored as one merged bone:
    (prediction > 0) against subregion labels 49 and 50 (vertebral body) of
    sub-mri_seg-subreg_label-6_msk.nii.gz. Its vertebrae are not L1..L5: only the merged figure means
    something. Skipped when the folder is missing.
nnU-Net (--nnunet): nnUNetv2_plan_and_preprocess -c 2d; the shared splits_final.json copied into its
preprocessed folder; per fold, nnU-Net's own nnUNetTrainer, 2d configuration, with a wall-clock
budget (nnU-Net has no budget flag): the script writes <workdir>/nnunet/budget_trainer.py (see
NNUNET_TRAINER below) and runs it with nnU-Net's Python. Its validation predictions (fold_F/validation)
are evaluated with the same sabnet code, as variant 'nnunet', configuration 2d_automatic.

Evaluation (sabnet.evaluation.evaluate_folder) per variant and configuration over the validation
cases of the folds run: Dice per vertebra L1..L5 (mean over cases; a vertebra absent from both
reference and prediction skipped), their mean, and the Dice of all vertebrae merged into one bone
label (prediction and reference > 0); the T2 crop's merged Dice per variant and mode.

Outputs under --workdir: dice.csv (variant, configuration, L1..L5, mean, merged, cases), per_case.csv
(one row per variant, configuration, case and label, label 'bone' for the merged Dice), and
real_spine.md: the Dice table (variant x configuration), the differences per variant (prompted minus
automatic, 3D minus 2D, remapped, cropped, T2 crop), the time per variant and fold (sab_train wall
seconds, training seconds and epochs x iterations per phase from checkpoint_final, prediction seconds
of the fold's sab_predict calls, embedding-cache seconds), the machine (CPU model, cores), dates, load
and every command in the order run. Every command's log and wall time are kept (logs/, steps.json);
a step already done is skipped when the script runs again, so folds and variants can be added to a
workdir later: --budget-minutes, --device, --workers, --data, --cases and --quick must stay the same
(checked against settings.json), the variants are merged into its list. Delete the workdir to start
over. --train-only plans and trains, then stops; the same command without it predicts and evaluates.

Flags: --variants (default lite_medsam_frozen lite_medsam sab_tiny); --budget-minutes per fold and tool
(default 15; --gpu 20; --quick 1); --folds (default 0 1 2 3 4); --workers augmentation workers of each
tool (sab_train -nw, nnUNet_n_proc_DA; default 2); -np processes for preprocessing (default 2);
--device cpu|cuda (default cpu); --gpu: preset of device cuda, 20 minutes per fold, more workers;
--workdir (default /tmp/sabnet_real_spine[_quick|_gpu]); --data the raw dataset (read only);
--t2-data the TPTBox folder; --nnunet, --nnunet-bin; --cases N: the first N cases only (a CPU-sized
run: a frozen pretrained encoder's cache costs about 2.6 s per slice of every case on two cores);
--quick: the first 6 cases, folds 0 and 1, a 1-minute budget: checks the script end to end; its
figures mean nothing.
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

from sabnet.dataset.raw_dataset import RawDataset
from sabnet.evaluation.evaluate import evaluate_folder, write
from sabnet.io.atomic import read_json, write_json
from sabnet.io.image_io import read_geometry, read_image, write_image
from sabnet.paths import DATASET_NAME
from sabnet.planning.plans import Plan, load_plan
from sabnet.planning.slicing import slicing_for
from sabnet.preprocessing.store import PreprocessedStore
from sabnet.training.layout import TRAINING_LOG, plan_name
from sabnet.training.splits import SPLITS_FILE, fold_cases, load_or_create_splits
from spine_predictions import Configuration, fold_predictor, predict_configurations  # benchmarks/
from spine_variants import (cache_seconds, crop_case, middle_slice_prompts, remap_to_t2, t2_reference,
                            vertebra_prompts)  # benchmarks/, beside this script

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset001_SpineVB3"
DEFAULT_T2 = DEFAULT_DATA.parent / "spine_tptbox_mri"
T2_IMAGE, T2_SUBREGIONS = "sub-mri_label-6_T2w.nii.gz", "sub-mri_seg-subreg_label-6_msk.nii.gz"
T2_CASE = "tptbox_t2w"
DEFAULT_VARIANTS = ("lite_medsam_frozen", "lite_medsam", "sab_tiny")
# configuration -> reference labels it is scored against
CONFIGURATIONS = {"2d_automatic": "original", "3d_automatic": "original", "click_per_slice": "original",
                  "click_carried": "original", "remapped_2d": "original", "remapped_3d": "original",
                  "cropped_2d": "cropped"}
T2_CONFIGURATIONS = ("t2_crop_2d", "t2_crop_3d")
# configuration -> (mode, prompts kind or None, carry) of the in-process predictions (spine_predictions.py)
PREDICTIONS = {"2d_automatic": ("2d", None, False), "3d_automatic": ("3d", None, False),
               "click_per_slice": ("2d", "per_slice", False), "click_carried": ("2d", "middle_slice", True),
               "remapped_2d": ("2d", None, False), "remapped_3d": ("3d", None, False),
               "cropped_2d": ("2d", None, False)}
# input images -> the configurations predicted from one encoding of them
INPUT_CONFIGURATIONS = {"original": ("2d_automatic", "3d_automatic", "click_per_slice", "click_carried"),
                        "remapped": ("remapped_2d", "remapped_3d"), "cropped": ("cropped_2d",)}
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
    """The run's folder: its settings, its steps (command, log, seconds) and every command's output.

    settings: what must stay the same between runs into one workdir; the keys in `merged` (lists)
    are joined with the workdir's instead (variants can be added later)."""

    def __init__(self, root: Path, settings: dict, merged: tuple[str, ...] = ("variants",)):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        kept = root / "settings.json"
        if kept.is_file():
            old = read_json(kept)
            strict_old = {k: v for k, v in old.items() if k not in merged}
            strict_new = {k: v for k, v in settings.items() if k not in merged}
            if strict_old != strict_new:
                sys.exit(f"{root} holds a run with other settings ({strict_old}, not {strict_new}); give another "
                         "--workdir or delete it")
            settings = dict(settings, **{k: list(dict.fromkeys(list(old.get(k, [])) + list(settings.get(k, []))))
                                         for k in merged})
        write_json(kept, settings)
        self.settings = settings
        self.steps_file = root / "steps.json"
        self.steps: dict = read_json(self.steps_file) if self.steps_file.is_file() else {}
        self.env = dict(os.environ, SABNET_RAW=str(root / "raw"), nnUNet_raw=str(root / "raw"),
                        nnUNet_preprocessed=str(root / "nnunet/preprocessed"),
                        nnUNet_results=str(root / "nnunet/results"))
        for name in ("SABNET_PREPROCESSED", "SABNET_RESULTS"):
            self.env.pop(name, None)

    def preprocessed_root(self, variant: str) -> Path:
        return self.root / "sabnet" / variant / "preprocessed"

    def results_root(self, variant: str) -> Path:
        return self.root / "sabnet" / variant / "results"

    def env_for(self, variant: str) -> dict:
        """The environment of a variant's sabnet commands: the shared raw root, its own preprocessed
        and results roots."""
        return dict(self.env, SABNET_PREPROCESSED=str(self.preprocessed_root(variant)),
                    SABNET_RESULTS=str(self.results_root(variant)))

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


def channel_name(case_id: str, channel: int) -> str:
    return f"{case_id}_{channel:04d}.nii.gz"


def altered_inputs(work: Workdir, dataset: RawDataset) -> dict:
    """The remapped and the cropped images of every case (made once; kept files are reused), and
    the crops' record {case: what crop_case did}."""
    remapped, cropped = work.root / "remapped", work.root / "cropped"
    labels = list(dataset.foreground_labels.values())
    crops_file = cropped / "crops.json"
    crops = read_json(crops_file) if crops_file.is_file() else {}
    made = 0
    for index, case_id in enumerate(dataset.case_ids()):
        case = dataset.case(case_id)
        for channel, image in enumerate(case.image_files):
            target = remapped / "imagesTr" / channel_name(case_id, channel)
            if not target.is_file():
                remap_to_t2(image, target)
                made += 1
        images = [cropped / "imagesTr" / channel_name(case_id, c) for c in range(len(case.image_files))]
        label = cropped / "labelsTr" / f"{case_id}.nii.gz"
        if case_id not in crops or not label.is_file() or not all(p.is_file() for p in images):
            crops[case_id] = crop_case(list(case.image_files), case.label_file, images, label, index % 2 == 0, labels)
            write_json(crops_file, crops)
            made += 1
    if made:
        print(f"# altered inputs: {made} remapped or cropped images written under {remapped} and {cropped}")
    return crops


def input_folder(work: Workdir, kind: str, name: str, files: dict[str, list[Path]]) -> Path:
    """A folder of links <case>_<channel>.nii.gz, made anew: what one sab_predict call reads."""
    folder = work.root / "inputs" / kind / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for case_id, paths in files.items():
        for channel, path in enumerate(paths):
            (folder / channel_name(case_id, channel)).symlink_to(Path(path).resolve())
    return folder


def case_slice_axis(plan: Plan, case_id: str, image_file: Path) -> int:
    """The array axis sabnet slices a case along (the plan's record, else the planning rule), as
    sab_predict does."""
    slicing = plan.preprocessing.cases.get(case_id) or slicing_for(read_geometry(image_file),
                                                                   plan.preprocessing.majority_plane)
    return slicing.slice_axis


def write_prompts(work: Workdir, dataset: RawDataset, plan: Plan, variant: str, fold: int, val_ids: list[str]
                  ) -> dict[str, Path]:
    """The prompts files of a fold's validation cases: {'per_slice': path, 'middle_slice': path}."""
    folder = work.root / "prompts" / variant
    files = {kind: folder / f"fold_{fold}_{kind}.json" for kind in ("per_slice", "middle_slice")}
    if all(p.is_file() for p in files.values()):
        return files
    content = {kind: {} for kind in files}
    for case_id in val_ids:
        case = dataset.case(case_id)
        labels, _ = read_image(case.label_file)
        axis = case_slice_axis(plan, case_id, case.image_files[0])
        for kind, make in (("per_slice", vertebra_prompts), ("middle_slice", middle_slice_prompts)):
            content[kind][case_id] = {"coordinates": "ijk", "prompts": make(labels, axis, dataset.foreground_labels)}
    for kind, path in files.items():
        write_json(path, content[kind])
    return files


def sabnet_folds(args, work: Workdir, dataset: RawDataset, splits: list[dict], variant: str, plan: Plan,
                 cropped: Path) -> dict:
    """Train each fold of a variant, gather its automatic predictions, make the other configurations;
    {fold: times}."""
    raw, env = str(dataset.root), work.env_for(variant)
    results = work.results_root(variant) / dataset.root.name / plan_name(plan)
    pred = work.root / "predictions" / variant
    preprocessed = work.preprocessed_root(variant) / dataset.root.name
    times = {}
    for fold in args.folds:
        val_ids = fold_cases(splits, fold)[1]
        train = work.run(f"{variant}/sab_train_fold{fold}", [
            console("sab_train"), "-d", raw, "-f", str(fold), "--budget-minutes", f"{args.budget_minutes:g}",
            "--device", args.device, "-nw", str(args.workers)], env=env)
        if args.train_only:
            continue
        prompts = {kind: read_json(path) for kind, path in write_prompts(work, dataset, plan, variant, fold,
                                                                          val_ids).items()}
        sources = {"original": {c: list(dataset.case(c).image_files) for c in val_ids},
                   "remapped": {c: [work.root / "remapped" / "imagesTr" / channel_name(c, k)
                                    for k in range(dataset.n_channels)] for c in val_ids},
                   "cropped": {c: [cropped / "imagesTr" / channel_name(c, k) for k in range(dataset.n_channels)]
                               for c in val_ids}}
        fold_plan, predictor = fold_predictor(results, fold, args.device)
        records_file = pred / f"prediction_times_fold{fold}.json"  # {case/kind: record}, kept for a resumed run
        records = read_json(records_file) if records_file.is_file() else {}
        for case_id in val_ids:
            for kind, names in INPUT_CONFIGURATIONS.items():
                outputs = {name: pred / name / f"{case_id}.nii.gz" for name in names}
                if f"{case_id}/{kind}" in records and all(p.is_file() for p in outputs.values()):
                    continue
                configurations = [Configuration(name, *PREDICTIONS[name][:1], prompts=(
                    prompts[PREDICTIONS[name][1]][case_id] if PREDICTIONS[name][1] else None),
                    carry=PREDICTIONS[name][2]) for name in names]
                record = predict_configurations(fold_plan, predictor, case_id, sources[kind][case_id], configurations,
                                                outputs, preprocessed if kind == "original" else None)
                records[f"{case_id}/{kind}"] = record
                write_json(records_file, records)
                print(f"  fold {fold} {case_id} {kind}: {', '.join(names)} in {record['seconds']:.0f} s "
                      f"({record['encoder_calls']} encoder calls{', cached embeddings' if record['cached'] else ''})",
                      flush=True)
        cache_s, cache_cases = cache_seconds(results / f"fold_{fold}" / TRAINING_LOG)
        times[fold] = {"sab_train_s": train["seconds"], **sab_epochs(results, fold),
                       "predict_s": sum(r["seconds"] for r in records.values()),
                       "predict_encoder_calls": sum(r["encoder_calls"] for r in records.values()),
                       "predict_cached_images": sum(r["cached"] for r in records.values()),
                       "cache_s": cache_s, "cache_cases": cache_cases}
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
    return {"epochs": ", ".join(parts), "training_s": train_s}


def t2_predictions(args, work: Workdir, dataset: RawDataset, variant: str, t2_input: Path) -> float:
    """The T2 crop predicted by the ensemble of the folds run, 2D and 3D mode; seconds taken."""
    tag = "-".join(map(str, args.folds))
    seconds = 0.0
    for mode in ("2d", "3d"):
        out = work.root / "t2_crop" / "predictions" / variant / f"folds_{tag}" / mode
        seconds += work.run(f"{variant}/predict_t2_crop_{mode}_folds{tag}", [
            console("sab_predict"), "-i", str(t2_input), "-o", str(out), "-d", str(dataset.root), "-f",
            *map(str, args.folds), "--mode", mode, "--device", args.device, "--no-postprocessing", "--overwrite"],
            env=work.env_for(variant))["seconds"]
        target = work.root / "predictions" / variant / f"t2_crop_{mode}"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / f"{T2_CASE}.nii.gz", target / f"{T2_CASE}.nii.gz")
    return seconds


def shared_splits(args, work: Workdir, dataset: RawDataset, plans: dict[str, Plan]) -> tuple[list[dict], Path]:
    """The folds every variant uses: <workdir>/splits_final.json (made from the first variant's
    preprocessed cohort by sabnet's own rule when missing), copied into each variant's preprocessed
    dataset folder; a variant that holds other splits is refused."""
    canonical = work.root / SPLITS_FILE
    if canonical.is_file():
        splits = read_json(canonical)
    else:
        first = args.variants[0]
        preprocessed = work.preprocessed_root(first) / dataset.root.name
        store = PreprocessedStore(preprocessed)
        cases = [{"case_id": c, **{k: store.properties(c).get(k, "") for k in ("subject", "sequence", "location")}}
                 for c in store.case_ids()]
        splits = load_or_create_splits(preprocessed, cases, dataset.root, seed=plans[first].training.seed)
        write_json(canonical, splits)
        print(f"# folds: {canonical} (from {preprocessed / SPLITS_FILE})")
    for variant in args.variants:
        target = work.preprocessed_root(variant) / dataset.root.name / SPLITS_FILE
        if target.is_file():
            if read_json(target) != splits:
                sys.exit(f"{target}: other folds than {canonical}; the variants must share their folds (move "
                         f"{work.root / 'sabnet' / variant} away to train {variant} again on the shared folds)")
        else:
            shutil.copyfile(canonical, target)
            print(f"# copied {canonical} to {target}")
    return splits, canonical


def nnunet_folds(args, work: Workdir, dataset: RawDataset, splits_file: Path) -> dict:
    """Plan, preprocess and train nnU-Net 2d on the shared folds; gather its validation predictions."""
    bin_dir, name = args.nnunet_bin, dataset.root.name
    dataset_id = str(int(DATASET_NAME.match(name).group(1)))
    env = dict(work.env, nnUNet_n_proc_DA=str(args.workers), nnUNet_def_n_proc=str(args.processes))
    n = str(args.processes)
    work.run("nnunet_plan_and_preprocess", [str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", dataset_id, "-c", "2d",
                                            "-np", n, "-npfp", n, "--verify_dataset_integrity"], env=env)
    target = work.root / "nnunet/preprocessed" / name / SPLITS_FILE
    if not target.is_file() or read_json(target) != read_json(splits_file):
        shutil.copyfile(splits_file, target)
        print(f"# copied {splits_file} to {target}")
    trainer = work.root / "nnunet" / "budget_trainer.py"
    trainer.write_text(NNUNET_TRAINER, encoding="utf-8")
    results = work.root / "nnunet/results" / name / f"{NNUNET_TRAINER_NAME}__nnUNetPlans__2d"
    times = {}
    for fold in args.folds:
        step = work.run(f"nnunet_train_fold{fold}", [str(bin_dir / "python"), str(trainer), dataset_id, str(fold),
                                                     f"{args.budget_minutes:g}", args.device], env=env)
        out = work.root / "predictions" / "nnunet" / "2d_automatic"
        out.mkdir(parents=True, exist_ok=True)
        for case_id in fold_cases(read_json(splits_file), fold)[1]:
            shutil.copyfile(results / f"fold_{fold}" / "validation" / f"{case_id}.nii.gz", out / f"{case_id}.nii.gz")
        record = read_json(results / f"fold_{fold}" / "budget.json")
        times[fold] = {"sab_train_s": step["seconds"], "training_s": record["training_s"],
                       "epochs": f"{record['epochs']}x{record['iterations_per_epoch']} (batch {record['batch_size']})"}
    return times


def write_references(folder: Path, files: dict[str, Path]) -> None:
    """Reference label maps (`folder`) and their merged bone masks (`folder`_bone), made anew."""
    bone = folder.with_name(folder.name + "_bone")
    for target in (folder, bone):
        shutil.rmtree(target, ignore_errors=True)
    for case_id, path in files.items():
        array, geometry = read_image(path)
        write_image(array, geometry, folder / f"{case_id}.nii.gz")
        write_image((array > 0).astype(np.uint8), geometry, bone / f"{case_id}.nii.gz")


def evaluate_all(work: Workdir, dataset: RawDataset, case_ids: list[str], runs: list[tuple[str, str]],
                 t2_reference_file: Path | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Dice per vertebra, their mean and the merged bone Dice of each (variant, configuration):
    (table, per-case rows). T2 crop configurations get the merged Dice alone."""
    evaluation = work.root / "evaluation"
    labels = dataset.foreground_labels
    metadata = {c: dataset.metadata(c) for c in case_ids}
    references = evaluation / "references"
    write_references(references / "original", {c: dataset.label_file(c) for c in case_ids})
    write_references(references / "cropped", {c: work.root / "cropped" / "labelsTr" / f"{c}.nii.gz" for c in case_ids})
    if t2_reference_file is not None:
        write_references(references / "t2_crop", {T2_CASE: t2_reference_file})
        metadata[T2_CASE] = {"sequence": "T2", "location": "spine"}
    rows, per_case = [], []
    for variant, configuration in runs:
        kind = CONFIGURATIONS.get(configuration, "t2_crop")
        ids = [T2_CASE] if kind == "t2_crop" else case_ids
        source = work.root / "predictions" / variant / configuration
        bone = evaluation / variant / configuration / "bone"
        shutil.rmtree(bone, ignore_errors=True)
        for case_id in ids:
            array, geometry = read_image(source / f"{case_id}.nii.gz")
            write_image((array > 0).astype(np.uint8), geometry, bone / f"{case_id}.nii.gz")
        merged = evaluate_folder(references / f"{kind}_bone", bone, {"bone": 1}, metadata, n_workers=2)
        write(merged, bone)
        row = {"variant": variant, "configuration": configuration, **{k: np.nan for k in labels}, "mean": np.nan,
               "merged": merged.mean_foreground_dice, "cases": len(ids)}
        frames = [merged.per_case]
        if kind != "t2_crop":
            result = evaluate_folder(references / kind, source, labels, metadata, n_workers=2)
            write(result, evaluation / variant / configuration)
            dice = result.means_per_label.set_index("label")["dice"]
            row.update({k: dice[k] for k in labels}, mean=result.mean_foreground_dice)
            frames.insert(0, result.per_case)
        rows.append(row)
        per_case.append(pd.concat(frames).assign(variant=variant, configuration=configuration))
    table = pd.DataFrame(rows)
    per_case_table = pd.concat(per_case, ignore_index=True)
    first = ["variant", "configuration"]
    return table, per_case_table[first + [c for c in per_case_table.columns if c not in first]]


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    import torch

    gpu = f"; GPU {torch.cuda.get_device_name(0)}" if device == "cuda" and torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores ({usable} usable by this process), {memory_gb:.0f} GB RAM{gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} torch threads")


def _number(value, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def dice_table(table: pd.DataFrame, labels: list[str]) -> list[str]:
    columns = [*labels, "mean", "merged"]
    lines = ["| variant | configuration | " + " | ".join(columns) + " | cases |",
             "|---|---|" + "---:|" * (len(columns) + 1)]
    for row in table.to_dict("records"):
        lines.append(f"| {row['variant']} | {row['configuration']} | "
                     + " | ".join(_number(row[c]) for c in columns) + f" | {row['cases']} |")
    return lines


def difference_table(table: pd.DataFrame) -> list[str]:
    """Per variant: prompted minus automatic, 3D minus 2D, remapped and cropped (their mean and its
    difference to 2D automatic), the T2 crop's merged Dice."""
    mean = {(r["variant"], r["configuration"]): r["mean"] for r in table.to_dict("records")}
    merged = {(r["variant"], r["configuration"]): r["merged"] for r in table.to_dict("records")}
    head = ["click per slice − 2D auto", "click carried − 2D auto", "3D auto − 2D auto",
            "remapped 2D (− 2D auto)", "remapped 3D (− 3D auto)", "cropped 2D (− 2D auto)",
            "T2 crop merged 2D", "T2 crop merged 3D"]
    lines = ["| variant | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for variant in dict.fromkeys(table["variant"]):
        if (variant, "click_per_slice") not in mean:
            continue
        m = {c: mean.get((variant, c), np.nan) for c in CONFIGURATIONS}
        auto2d, auto3d = m["2d_automatic"], m["3d_automatic"]
        cells = [_number(m["click_per_slice"] - auto2d, signed=True), _number(m["click_carried"] - auto2d, signed=True),
                 _number(auto3d - auto2d, signed=True),
                 f"{_number(m['remapped_2d'])} ({_number(m['remapped_2d'] - auto2d, signed=True)})",
                 f"{_number(m['remapped_3d'])} ({_number(m['remapped_3d'] - auto3d, signed=True)})",
                 f"{_number(m['cropped_2d'])} ({_number(m['cropped_2d'] - auto2d, signed=True)})",
                 _number(merged.get((variant, "t2_crop_2d"))), _number(merged.get((variant, "t2_crop_3d")))]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines


def time_table(times: dict) -> tuple[list[str], list[str]]:
    """The per variant and fold time table, and one line per cached variant on its one-time cost."""
    head = ["sab_train wall (s)", "training (s)", "epochs x iterations", "prediction (s)", "embedding cache (s)"]
    lines = ["| variant | fold | " + " | ".join(head) + " |", "|---|---|" + "---:|" * 2 + "---|" + "---:|" * 2]
    notes = []
    for variant, folds in times.items():
        for fold, t in sorted(folds.items()):
            cache = "" if t.get("cache_s") is None else (f"{t['cache_s']:.0f} ({t['cache_cases']} cases)"
                                                         if t["cache_cases"] else "0 (up to date)")
            lines.append(f"| {variant} | {fold} | {t['sab_train_s']:.0f} | {t['training_s']:.0f} | {t['epochs']} | "
                         + (f"{t['predict_s']:.0f}" if "predict_s" in t else "") + f" | {cache} |")
        built = [(f, t) for f, t in sorted(folds.items()) if t.get("cache_cases")]
        if built:
            fold, t = built[-1]
            others = [u["sab_train_s"] for f, u in folds.items() if f != fold and u.get("cache_s") is not None]
            estimate = (f"; fold {fold}'s sab_train wall minus the median of the other folds' "
                        f"({len(others)}): {t['sab_train_s'] - float(np.median(others)):.0f} s" if others else "")
            notes.append(f"- {variant}: embedding cache filled once, {t['cache_cases']} cases, in {t['cache_s']:.0f} s "
                         f"(time stamps of fold {fold}'s training_log.txt){estimate}.")
    return lines, notes


def crop_summary(crops: dict, case_ids: list[str], labels: dict[str, int]) -> str:
    names = {v: k for k, v in labels.items()}
    chosen = [crops[c] for c in case_ids]
    top = sum(c["removed"] == "top" for c in chosen)
    lost: dict[str, int] = {}
    for c in chosen:
        for value in c["labels_cut_away"]:
            lost[names.get(value, str(value))] = lost.get(names.get(value, str(value)), 0) + 1
    gone = ", ".join(f"{k} in {n}" for k, n in sorted(lost.items())) or "none"
    return (f"Cropped cases: {top} of {len(chosen)} with the cranial 25 % of the extent removed, {len(chosen) - top} "
            f"with the caudal 20 %; vertebrae cut away entirely (absent from the cropped reference): {gone}.")


def report(args, work: Workdir, table: pd.DataFrame, times: dict, labels: dict[str, int], crops: dict,
           case_ids: list[str], started: datetime.datetime, load) -> str:
    finished = datetime.datetime.now().astimezone()
    time_lines, cache_notes = time_table(times)
    commands = ["export SABNET_RAW=" + work.env["SABNET_RAW"]]
    for variant in args.variants:
        env = work.env_for(variant)
        commands.append(f"# {variant}: export SABNET_PREPROCESSED={env['SABNET_PREPROCESSED']} "
                        f"SABNET_RESULTS={env['SABNET_RESULTS']}")
    if args.nnunet:
        commands += [f"export {k}={work.env[k]}" for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")]
        commands.append(f"export nnUNet_n_proc_DA={args.workers} nnUNet_def_n_proc={args.processes}")
    commands += [s["command"] for s in work.steps.values()]
    return "\n".join([
        f"Command: `python {shlex.join(['benchmarks/real_spine.py'] + sys.argv[1:])}`"
        + (" (--quick: its figures mean nothing)" if args.quick else ""), "",
        f"Variants: {' '.join(args.variants)}{' and nnU-Net v2 2d' if args.nnunet else ''}. Budget: "
        f"{args.budget_minutes:g} min of training per fold and variant; "
        f"{'the first ' + str(args.cases) + ' cases; ' if args.cases else ''}folds {' '.join(map(str, args.folds))} "
        f"({len(case_ids)} validation cases); device {args.device}; {args.workers} augmentation workers.",
        f"Machine: {machine(args.device)}. Load average (1, 5, 15 min) at the start "
        f"{', '.join(f'{v:.1f}' for v in load)}; at the end {', '.join(f'{v:.1f}' for v in os.getloadavg())}.",
        f"Date: {started:%Y-%m-%d %H:%M} to {finished:%Y-%m-%d %H:%M %Z}.", "",
        "Cross-validation Dice (mean over the validation cases of the folds run; mean: over L1..L5; merged: all "
        "vertebrae as one bone; t2_crop_*: the real T2 crop, ensemble of the folds run, merged only):", "",
        *dice_table(table, list(labels)), "",
        crop_summary(crops, case_ids, labels), "",
        "Per variant, mean Dice over L1..L5 (differences in the same cases):", "", *difference_table(table), "",
        "Time per variant and fold (sab_train wall: the whole command, embedding cache and final validation "
        "included; training: the epochs the budget covers; prediction: the fold's validation images, original, "
        "remapped and cropped, each encoded once for all its configurations):", "",
        *time_lines, "", *cache_notes, *([""] if cache_notes else []),
        "Commands, in the order run:", "", "```", *commands, "```"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                   help=f"sabnet model variants (default {' '.join(DEFAULT_VARIANTS)})")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the raw Dataset001_SpineVB3 folder (read only)")
    p.add_argument("--t2-data", type=Path, default=DEFAULT_T2,
                   help=f"the TPTBox folder with {T2_IMAGE} and {T2_SUBREGIONS} (skipped when missing)")
    p.add_argument("--budget-minutes", type=float,
                   help="training budget per fold and tool (default 15; --gpu 20; --quick 1)")
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
    p.add_argument("--cases", type=int, help="the first N cases only (default all; --quick 6): a CPU-sized run")
    p.add_argument("--train-only", action="store_true",
                   help="plan and train the folds, then stop (a later run without it predicts and evaluates)")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 2
    args.variants = list(dict.fromkeys(args.variants))
    args.device = args.device or ("cuda" if args.gpu else "cpu")
    args.budget_minutes = args.budget_minutes or (1.0 if args.quick else 20.0 if args.gpu else 15.0)
    args.folds = sorted(set(args.folds or ([0, 1] if args.quick else [0, 1, 2, 3, 4])))
    args.cases = args.cases or (6 if args.quick else None)
    args.workers = args.workers or (max(2, min(12, cores - 2)) if args.gpu else 2)
    args.processes = args.processes or (max(2, min(8, cores)) if args.gpu else 2)
    suffix = "_quick" if args.quick else "_gpu" if args.gpu else ""
    args.workdir = (args.workdir or Path(f"/tmp/sabnet_real_spine{suffix}")).resolve()
    if not (args.data / "dataset.json").is_file() or not DATASET_NAME.match(args.data.resolve().name):
        sys.exit(f"{args.data}: not a raw dataset folder named DatasetNNN_Name (with dataset.json)")
    if args.nnunet and not (args.nnunet_bin / "nnUNetv2_plan_and_preprocess").is_file():
        sys.exit(f"{args.nnunet_bin}: no nnUNetv2_plan_and_preprocess; give nnU-Net's environment with --nnunet-bin")
    started, load = datetime.datetime.now().astimezone(), os.getloadavg()
    settings = {"layout": "variants", "data": str(args.data.resolve()), "quick": args.quick,
                "budget_minutes": args.budget_minutes, "device": args.device, "workers": args.workers,
                "cases": args.cases, "variants": args.variants}
    work = Workdir(args.workdir, settings)
    dataset = link_raw_dataset(args.data, work.root / "raw" / args.data.resolve().name, args.cases)
    print(f"{machine(args.device)}; load {load[0]:.1f}\nworkdir {work.root}; variants {' '.join(args.variants)} "
          f"(this workdir: {' '.join(work.settings['variants'])})")
    crops = altered_inputs(work, dataset)
    t2_input = t2_reference_file = None
    if (args.t2_data / T2_IMAGE).is_file() and (args.t2_data / T2_SUBREGIONS).is_file():
        t2_input = input_folder(work, "t2_crop", "all", {T2_CASE: [args.t2_data / T2_IMAGE]})
        t2_reference_file = work.root / "t2_crop" / "reference" / f"{T2_CASE}.nii.gz"
        t2_reference(args.t2_data / T2_SUBREGIONS, t2_reference_file)
    else:
        print(f"# {args.t2_data}: no {T2_IMAGE} with {T2_SUBREGIONS}; the T2 crop is skipped")

    plans = {}
    for variant in args.variants:
        work.run(f"{variant}/sab_plan_and_preprocess", [
            console("sab_plan_and_preprocess"), "-d", str(dataset.root), "-np", str(args.processes), "--variant",
            variant, "--device", "gpu" if args.device == "cuda" else "cpu"], env=work.env_for(variant))
        preprocessed = work.preprocessed_root(variant) / dataset.root.name
        plans[variant] = load_plan(preprocessed)
        if plans[variant].labels != {"background": 0, **dataset.foreground_labels}:
            sys.exit(f"{preprocessed}/plans.json: labels {plans[variant].labels} are not the dataset's; the benchmark "
                     "needs the default multi-label plan")
    splits, splits_file = shared_splits(args, work, dataset, plans)
    if max(args.folds) >= len(splits) or min(args.folds) < 0:
        sys.exit(f"--folds {args.folds}: the splits have {len(splits)} folds (0..{len(splits) - 1})")

    times, runs = {}, []
    for variant in args.variants:
        times[variant] = sabnet_folds(args, work, dataset, splits, variant, plans[variant], work.root / "cropped")
        if args.train_only:
            continue
        runs += [(variant, c) for c in CONFIGURATIONS]
        if t2_input is not None:
            t2_predictions(args, work, dataset, variant, t2_input)
            runs += [(variant, c) for c in T2_CONFIGURATIONS]
    if args.train_only:
        print(f"trained: {' '.join(args.variants)}, folds {args.folds}; run again without --train-only to evaluate")
        return 0
    if args.nnunet:
        times["nnunet"] = nnunet_folds(args, work, dataset, splits_file)
        runs.append(("nnunet", "2d_automatic"))
    case_ids = sorted(c for f in args.folds for c in fold_cases(splits, f)[1])
    print(f"evaluating {len(runs)} variant x configuration runs on {len(case_ids)} validation cases")
    table, per_case = evaluate_all(work, dataset, case_ids, runs, t2_reference_file)
    table.to_csv(work.root / "dice.csv", index=False, float_format="%.4f")
    per_case.to_csv(work.root / "per_case.csv", index=False, float_format="%.4f")
    text = report(args, work, table, times, dataset.foreground_labels, crops, case_ids, started, load)
    (work.root / "real_spine.md").write_text(text + "\n", encoding="utf-8")
    print("\n" + text + f"\n\nwritten: {work.root / 'real_spine.md'}, dice.csv, per_case.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
