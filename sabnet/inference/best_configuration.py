"""`sab_find_best_configuration`: compare 2D mode, 3D mode and postprocessing on the
cross-validation predictions, keep what improves Dice, and write the recommended command.

Reads each fold's `validation/` (the fold's final mode) and `validation/<mode>/` (the other
mode), whose `modes.csv` lists the modes; references are the raw labels mapped to the plan's
output labels. Writes into the model folder: `postprocessing.json`, `configurations.csv` (mean
Dice per configuration and label) and `best_configuration.json` (choice, figures, command).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm import tqdm

from sabnet.dataset.raw_dataset import RawDataset
from sabnet.errors import SabnetError
from sabnet.inference.postprocessing import LabelRule, Postprocessing, apply_label_rule, save_postprocessing
from sabnet.inference.series_naming import name_series, vertebra_series
from sabnet.io.atomic import atomic_path, write_json
from sabnet.io.image_io import read_image
from sabnet.planning.plans import load_plan
from sabnet.preprocessing.case_preprocessing import map_labels

MIN_GAIN = 1e-3          # a rule must raise a label's mean Dice by more than this to be kept
MIN_3D_GAIN = 0.01       # 3D mode (a depth pass on top of every slice) must beat 2D by this much
ISLAND_FRACTION = 0.1    # candidate island threshold: this share of the label's median reference volume


@dataclass
class BestConfiguration:
    mode: str
    dice_by_mode: dict[str, float]
    postprocessing: Postprocessing
    dice_after_postprocessing: float
    table: pd.DataFrame
    command: str


def _dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    total = reference.sum() + prediction.sum()
    return float("nan") if total == 0 else 2.0 * np.logical_and(reference, prediction).sum() / total


def choose_mode(dice_by_mode: dict[str, float]) -> tuple[str, str]:
    """(mode, why): 3D mode only when its mean Dice beats 2D's by MIN_3D_GAIN; it costs a depth
    pass and more memory, and on the real spine it measured equal to 2D (docs/benchmarks.md)."""
    two, three = dice_by_mode.get("2d"), dice_by_mode.get("3d")
    if three is None or two is None:
        mode = "3d" if two is None else "2d"
        return mode, f"only {mode} mode was validated"
    if three >= two + MIN_3D_GAIN:
        return "3d", f"3D mode {three:.4f} beats 2D {two:.4f} by at least {MIN_3D_GAIN} mean Dice"
    return "2d", (f"3D mode {three:.4f} does not beat 2D {two:.4f} by {MIN_3D_GAIN} mean Dice: 2D is as good "
                  "and needs no depth pass")


def validation_predictions(folder: Path) -> dict[str, dict[str, Path]]:
    """{mode: {case_id: prediction file}} over all folds that finished validation."""
    found: dict[str, dict[str, Path]] = {}
    for fold in sorted(folder.glob("fold_*")):
        modes_file = fold / "validation" / "modes.csv"
        if not modes_file.is_file():
            continue
        modes = list(dict.fromkeys(pd.read_csv(modes_file)["mode"]))
        for mode in modes:
            where = fold / "validation" if mode == modes[-1] else fold / "validation" / mode
            for path in sorted(where.glob("*.nii.gz")):
                found.setdefault(mode, {})[path.name[: -len(".nii.gz")]] = path
    return found


def find_best_configuration(folder: Path, raw_dir: Path, dataset_arg: str) -> BestConfiguration:
    """Evaluate every mode on the cross-validation predictions, then choose postprocessing per
    label for the best mode; write the results into `folder`."""
    plan = load_plan(folder)
    dataset = RawDataset.load(raw_dir)
    predictions = validation_predictions(folder)
    if not predictions:
        raise SabnetError(f"{folder}: no cross-validation predictions (fold_N/validation/modes.csv); "
                          "finish training the folds with sab_train first")
    cases = sorted(set.intersection(*(set(p) for p in predictions.values())))
    labels = {v: k for k, v in plan.labels.items() if v != 0}
    rows, arrays = [], {}
    for mode, files in predictions.items():
        for case_id in tqdm(cases, desc=f"evaluate {mode}", unit="case", leave=False):
            reference, geometry = _reference(dataset, case_id, plan.label_mapping)
            prediction = read_image(files[case_id])[0]
            arrays[(mode, case_id)] = (reference, prediction, geometry)
            for value, name in labels.items():
                rows.append({"configuration": mode, "case": case_id, "label": name,
                             "dice": _dice(reference == value, prediction == value)})
    per_case = pd.DataFrame(rows)
    dice_by_mode = {m: float(per_case[per_case.configuration == m].groupby("label")["dice"].mean().mean())
                    for m in predictions}
    best_mode, mode_reason = choose_mode(dice_by_mode)

    rules = Postprocessing(reason=f"chosen on {len(cases)} cross-validation cases ({best_mode} mode); "
                                  f"a rule is kept when it raises the label's mean Dice by more than {MIN_GAIN}")
    series = vertebra_series(plan.labels)
    if series:  # names in order along the body, before the rules per label, which then see them
        named = {c: name_series(arrays[(best_mode, c)][1], series, arrays[(best_mode, c)][2].axis_spacing_mm)
                 for c in cases}
        after_naming = []
        for case_id in cases:
            reference = arrays[(best_mode, case_id)][0]
            for value, name in labels.items():
                after_naming.append(_dice(reference == value, named[case_id] == value))
                rows.append({"configuration": f"{best_mode} + series naming", "case": case_id, "label": name,
                             "dice": after_naming[-1]})
        before = per_case.loc[per_case.configuration == best_mode, "dice"]
        if np.nanmean(after_naming) > np.nanmean(before) + MIN_GAIN:
            rules.series = series
            for case_id in cases:
                reference, _, geometry = arrays[(best_mode, case_id)]
                arrays[(best_mode, case_id)] = (reference, named[case_id], geometry)
    for value, name in labels.items():
        candidates = _candidate_rules(value, [arrays[(best_mode, c)][0] for c in cases], arrays[(best_mode, cases[0])][2])
        scores = {}
        for label_rule in candidates:
            dices = []
            for case_id in cases:
                reference, prediction, geometry = arrays[(best_mode, case_id)]
                processed = apply_label_rule(prediction.copy(), value, label_rule, float(np.prod(geometry.spacing_mm)))
                dices.append(_dice(reference == value, processed == value))
            scores[label_rule] = float(np.nanmean(dices)) if not np.all(np.isnan(dices)) else float("nan")
            rows.append({"configuration": f"{best_mode} + {_describe(label_rule)}", "case": "mean", "label": name,
                         "dice": scores[label_rule]})
        baseline = scores[candidates[0]]
        best_rule = max(candidates[1:], key=lambda r: scores[r], default=None)
        if best_rule is not None and scores[best_rule] > baseline + MIN_GAIN:
            rules.labels[value] = best_rule
    after = []
    for case_id in cases:
        reference, prediction, geometry = arrays[(best_mode, case_id)]
        processed = prediction.copy()
        for value, label_rule in rules.labels.items():
            apply_label_rule(processed, value, label_rule, float(np.prod(geometry.spacing_mm)))
        after += [_dice(reference == v, processed == v) for v in labels]
    table = (pd.DataFrame(rows).groupby(["configuration", "label"])["dice"].mean().unstack("label"))
    table["foreground mean"] = table.mean(axis=1)

    command = (f"sab_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d {dataset_arg} -p {folder.name} --mode {best_mode}")
    result = BestConfiguration(best_mode, dice_by_mode, rules, float(np.nanmean(after)), table, command)
    save_postprocessing(rules, folder)
    with atomic_path(folder / "configurations.csv") as tmp:
        table.to_csv(tmp, float_format="%.4f")
    write_json(folder / "best_configuration.json", {
        "mode": best_mode, "mode_reason": mode_reason, "mean_dice_by_mode": dice_by_mode, "n_cases": len(cases),
        "postprocessing": rules.to_dict(), "mean_dice_after_postprocessing": result.dice_after_postprocessing,
        "command": command})
    return result


def _reference(dataset: RawDataset, case_id: str, mapping: dict[str, int]):
    case = dataset.case(case_id)
    if case.label_file is None or not case.label_file.is_file():
        raise SabnetError(f"{dataset.root}: no reference labels for validation case {case_id}")
    labels, geometry = read_image(case.label_file)
    return map_labels(labels, mapping), geometry


def _candidate_rules(value: int, references: list[np.ndarray], geometry) -> list[LabelRule]:
    """No rule, keep the largest component, and drop islands under a share of the median volume."""
    voxel_mm3 = float(np.prod(geometry.spacing_mm))
    volumes = []
    for reference in references:
        components, n = ndimage.label(reference == value)
        if n:
            volumes += (np.bincount(components.ravel())[1:] * voxel_mm3).tolist()
    candidates = [LabelRule(), LabelRule(keep_largest_component=True)]
    if volumes:
        candidates.append(LabelRule(min_island_mm3=round(ISLAND_FRACTION * float(np.median(volumes)), 1)))
    return candidates


def _describe(rule: LabelRule) -> str:
    if rule.keep_largest_component:
        return "largest component"
    if rule.min_island_mm3 > 0:
        return f"islands < {rule.min_island_mm3:g} mm3 removed"
    return "no postprocessing"
