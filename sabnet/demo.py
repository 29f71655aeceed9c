"""`sab_demo`: the whole pipeline on an embedded default, with nothing downloaded or configured.

Makes a phantom cohort (several body locations and sequences, every acquisition plane), plans and
preprocesses it, trains the default small variant (one fold, stage 1 and stage 2) under a time
budget, predicts held-out phantoms automatically and with point prompts in 2D and 3D mode,
evaluates them, and writes QC pictures. Everything lands under one folder.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy import ndimage

from sabnet.dataset.raw_dataset import RawDataset
from sabnet.errors import SabnetError
from sabnet.io.atomic import atomic_path, write_json
from sabnet.io.image_io import read_image

DEMO_DATASET = "Dataset990_SabnetDemo"
LOCATIONS = ("knee", "hip", "shoulder", "lumbar_spine")
SEQUENCES = ("T1", "T2", "PD", "STIR")
CONFIGURATIONS = (("2d", False), ("3d", False), ("2d", True), ("3d", True))
MIN_COMPONENT_PX = 20  # prompt only structures at least this large on a slice
PROMPT_EVERY = 2       # ... on every second slice


@dataclass
class DemoSettings:
    """What the demo makes and how long it may take (minutes: the whole run, wall clock).

    The phantoms are small on purpose: about 112 px in-plane at 0.6-2 mm, so the plan picks a
    128 px encoder input and two CPU cores take about 4x more training steps in the budget than
    at 256 px (0.25 against 0.75 s per step of 8 slices). 80 training phantoms, because with 20
    the model learned them by heart (pseudo Dice on held-out phantoms 0.49 while the training
    loss fell to 0.15 without augmentation); with 80 it reached 0.72 in 5 minutes of stage 1
    against 0.66 with 20 (benchmarks in docs/benchmarks.md, Demo).
    """

    out: Path
    minutes: float = 9.0
    device: str = "cpu"
    n_cases: int = 80
    n_test_cases: int = 5
    in_plane_size: int = 112
    in_plane_spacing_mm: tuple[float, float] = (0.6, 2.0)
    seed: int = 2024
    workers: int = 1


@dataclass
class DemoResult:
    table: pd.DataFrame
    mean_dice: dict[str, float]
    folders: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


def demo_prompts(label_file: Path, slice_axis: int, label_mapping: dict[str, int]) -> list[dict]:
    """One positive point (IJK) at the deepest pixel of each labelled structure (in the plan's
    output labels) on every PROMPT_EVERY-th slice along the slice axis: what a user clicking once
    per bone would give."""
    from sabnet.preprocessing.case_preprocessing import map_labels

    labels = map_labels(read_image(label_file)[0], label_mapping)
    prompts = []
    for index in range(0, labels.shape[slice_axis], PROMPT_EVERY):
        plane = np.take(labels, index, axis=slice_axis)
        for value in np.unique(plane[plane > 0]):
            components, n = ndimage.label(plane == value)
            for c in range(1, n + 1):
                mask = components == c
                if mask.sum() < MIN_COMPONENT_PX:
                    continue
                depth = ndimage.distance_transform_edt(mask)
                r, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
                voxel = [r, col]
                voxel.insert(slice_axis, index)
                prompts.append({"label": int(value), "points": [list(map(int, voxel[::-1]))], "point_labels": [1]})
    return prompts


def _environment(out: Path) -> dict[str, str]:
    home = out / "sabnet_data"
    return {"SABNET_HOME": str(home), "SABNET_RAW": str(home / "raw"),
            "SABNET_PREPROCESSED": str(home / "preprocessed"), "SABNET_RESULTS": str(home / "results")}


def run_demo(settings: DemoSettings, say: Callable[[str], None] = print) -> DemoResult:
    """Run the demo; returns the Dice table (configuration x location/sequence) and where things are."""
    from sabnet.evaluation.evaluate import evaluate_folder, write
    from sabnet.inference.inputs import list_input_cases
    from sabnet.inference.model_folder import find_model_folder, load_ensemble
    from sabnet.inference.predict_cohort import PredictionSettings, predict_cohort
    from sabnet.inference.prompt_coordinates import read_prompts_file
    from sabnet.model.case_predictor import EnsemblePredictor
    from sabnet.paths import Roots, resolve_dataset
    from sabnet.phantoms.cohort import make_phantom_dataset
    from sabnet.preprocessing.plan_and_preprocess import PlanningOptions, plan_and_preprocess
    from sabnet.training.run_training import TrainingOptions, train

    start = time.perf_counter()
    out = settings.out.resolve()
    os.environ.update(_environment(out))
    roots = Roots.from_environment()
    say(roots.describe())

    say(f"[1/5] phantom cohort: {settings.n_cases} training + {settings.n_test_cases} held-out cases "
        f"({', '.join(LOCATIONS)}; {', '.join(SEQUENCES)})")
    raw = roots.raw / DEMO_DATASET
    if not (raw / "dataset.json").is_file():
        make_phantom_dataset(roots.raw, LOCATIONS, SEQUENCES, settings.n_cases, settings.seed,
                             n_test_cases=settings.n_test_cases, in_plane_size=settings.in_plane_size,
                             in_plane_spacing_mm=settings.in_plane_spacing_mm,
                             dataset_name=DEMO_DATASET, n_workers=2, progress=True)
    ref = resolve_dataset(DEMO_DATASET, roots)

    say("[2/5] plan and preprocess (one 'bone' label, as the published model)")
    planned = plan_and_preprocess(ref, PlanningOptions(binary=True, device="gpu" if settings.device == "cuda" else "cpu"),
                                  n_workers=2)
    plan = planned.plan
    say(f"      plan: {plan.model['variant']} at {plan.model['image_size']} px, in-plane "
        f"{plan.preprocessing.target_spacing_mm} mm, batch {plan.training.batch_size}")

    # still to come: prediction and evaluation (12 s on two cores at 128 px), the training's own
    # overrun of its budget (final checkpoints, the last epoch: about 10 s) and a margin
    overhead_min = (time.perf_counter() - start) / 60 + 0.45
    budget = max(1.0, settings.minutes - overhead_min)
    say(f"[3/5] train fold 0, stage 1 and stage 2, for about {budget:.1f} minutes")
    options = TrainingOptions(stage="all", device=settings.device, n_workers=settings.workers,
                              budget_minutes=budget, final_validation=False)
    train(ref, 0, options, log=lambda line: None)
    folder = find_model_folder(ref)

    say("[4/5] predict the held-out phantoms: automatic and with one click per bone, 2D and 3D mode")
    dataset = RawDataset.load(raw)
    cases = list_input_cases(raw / "imagesTs")
    prompts_file = out / "demo_prompts.json"
    if not prompts_file.is_file():
        prompts = {}
        for case in cases:
            from sabnet.inference.predict_image import preprocess_for_prediction

            image, geometry = read_image(case.sources[0])
            axis = preprocess_for_prediction([image], geometry, plan).properties["slice_frame"]["axes"][0]
            prompts[case.case_id] = {"coordinates": "ijk", "prompts": demo_prompts(raw / "labelsTs" / f"{case.case_id}.nii.gz", axis,
                                                                     plan.label_mapping)}
        write_json(prompts_file, prompts)
    prompts = read_prompts_file(prompts_file)
    rows, folders = [], {}
    metadata = {c: dataset.metadata(c) for c in dataset.case_metadata}
    for mode, prompted in CONFIGURATIONS:
        name = f"{mode}_{'prompted' if prompted else 'automatic'}"
        plan_, models, _ = load_ensemble(folder, [0], "final", settings.device, mode)
        predictor = EnsemblePredictor(models, settings.device, max(plan_.training.batch_size, 4))
        target = out / "predictions" / name
        report = predict_cohort(cases, plan_, predictor, PredictionSettings(target, mode, prompts if prompted else None,
                                                                            qc=(name == "3d_automatic")))
        if report.failed:
            raise SabnetError(f"demo: {name} prediction failed for {report.failed[0][0]}: {report.failed[0][1]}")
        result = evaluate_folder(raw / "labelsTs", target, plan_.labels, metadata,
                                 reference_mapping=plan_.label_mapping)
        write(result, target)
        folders[name] = target
        per_case = result.per_case.assign(configuration=name)
        rows.append(per_case)

    say("[5/5] evaluate")
    per_case = pd.concat(rows, ignore_index=True)
    table = _dice_table(per_case)
    mean_dice = per_case.groupby("configuration")["dice"].mean().to_dict()
    with atomic_path(out / "demo_dice.csv") as tmp:
        table.to_csv(tmp, float_format="%.4f")
    folders.update(model=folder, raw=raw, preprocessed=ref.preprocessed_dir,
                   progress=folder / "fold_0" / "progress.png", table=out / "demo_dice.csv")
    return DemoResult(table, mean_dice, folders, time.perf_counter() - start)


def _dice_table(per_case: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice per configuration (columns) by location and by sequence (rows), plus 'all'."""
    parts = []
    for key in ("location", "sequence"):
        t = per_case.pivot_table(index=key, columns="configuration", values="dice", aggfunc="mean")
        t.index = [f"{key}: {v}" for v in t.index]
        parts.append(t)
    overall = per_case.groupby("configuration")["dice"].mean().to_frame("all cases").T
    table = pd.concat(parts + [overall])
    order = [f"{m}_{'prompted' if p else 'automatic'}" for m, p in CONFIGURATIONS]
    return table[[c for c in order if c in table.columns]]
