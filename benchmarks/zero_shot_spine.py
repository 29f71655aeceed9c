"""Zero-shot prompting on real MRI: the packaged LiteMedSAM, no training, on the 36 lumbar spines of
Dataset001_SpineVB3, with prompts derived from the manual labels, through sabnet's own path
(prompts file entries in IJK -> `slice_prompts_for_case` -> `EnsemblePredictor(automatic=False)`
-> the input's grid):

  (a) boxes:   a box per vertebra on every slice that holds it (along the slice axis sabnet picks);
  (b) carried: a box per vertebra on its middle slice only, carried to the other slices;
  (c) point:   one positive point per vertebra (its deepest pixel) on its middle slice, carried;
  carried_stop22, carried_stop23: (b)'s seeds carried by the rules shipped before stop 23 and
      before stop 24, side by side.

The carrying rules were chosen on DEVELOPMENT_CASES; the summary also gives the other cases alone.

Each case is encoded once for all configurations (one CaseEmbeddings shared). Dice per vertebra (3D, per
case) and of the five vertebrae merged into one bone; medians and means over cases.

    python benchmarks/zero_shot_spine.py [--data ../shared/data/Dataset001_SpineVB3] [--cases N]
        [--out /tmp/zero_shot_spine] [--no-mask-prompt]

Writes <out>/zero_shot_per_case.csv and <out>/zero_shot.md (table, command, CPU, time).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from sabnet.dataset.raw_dataset import RawDataset
from sabnet.inference.predict_image import preprocess_for_prediction
from sabnet.inference.prompt_coordinates import slice_prompts_for_case
from sabnet.inference.zero_shot import zero_shot_model, zero_shot_plan
from sabnet.io.image_io import read_image
from sabnet.model.case_predictor import ZERO_SHOT_CARRY, ZERO_SHOT_OBJECT_THRESHOLD, CaseEmbeddings, EnsemblePredictor
from sabnet.model.prompt_carrying import CarryRules
from sabnet.preprocessing.inverse import probabilities_to_original

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset001_SpineVB3"
CONFIGURATIONS = ("boxes", "carried", "point", "carried_stop22", "carried_stop23")
# the peers of `carried`: the same seeds carried by earlier rules. Before stop 23: the box drawn where
# the raw probability is >= 0.5, no intensity stop; before stop 24: no bound on the carried box
EARLIER_CARRY = {"carried_stop22": CarryRules(use_mask=False, box_threshold=0.8),
                 "carried_stop23": dataclasses.replace(ZERO_SHOT_CARRY, seed_box_margin=None)}
# the volumes the carrying rules were chosen on (sabnet.model.prompt_carrying): reported apart
DEVELOPMENT_CASES = ("vb3_001", "vb3_002", "vb3_003", "vb3_004")


def configuration_rules(configuration: str, rules: CarryRules) -> tuple[str, CarryRules]:
    """(the prompt entries' configuration, the carrying rules) a configuration runs with: `rules`,
    or for an earlier stop's peer (carried_stop22, ...) that stop's rules (with `rules`' mask setting)
    on the `carried` entries."""
    if configuration in EARLIER_CARRY:
        return "carried", dataclasses.replace(EARLIER_CARRY[configuration], use_mask=rules.use_mask)
    return configuration, rules


def vertebra_prompts(labels: np.ndarray, slice_axis: int, names: dict[str, int]) -> dict[str, list[dict]]:
    """Prompt entries (IJK) of each configuration for one label map (array order; the earlier
    stops' peers take the `carried` entries)."""
    out = {c: [] for c in CONFIGURATIONS if c not in EARLIER_CARRY}
    in_plane = [a for a in range(3) if a != slice_axis]
    for name, value in names.items():
        mask = labels == value
        if not mask.any():
            continue
        present = np.flatnonzero(mask.any(axis=tuple(in_plane)))
        middle = int(present[len(present) // 2])
        for k in present:
            plane = np.take(mask, k, axis=slice_axis)
            rows, cols = np.nonzero(plane)
            corners = []
            for r, c in ((rows.min(), cols.min()), (rows.max(), cols.max())):
                index = [0, 0, 0]
                index[slice_axis], index[in_plane[0]], index[in_plane[1]] = int(k), int(r), int(c)
                corners.append(index[::-1])
            entry = {"label": name, "box": corners}
            out["boxes"].append(entry)
            if k == middle:
                out["carried"].append(entry)
                depth = ndimage.distance_transform_edt(np.pad(plane, 1))[1:-1, 1:-1]
                r, c = np.unravel_index(int(np.argmax(depth)), depth.shape)
                index = [0, 0, 0]
                index[slice_axis], index[in_plane[0]], index[in_plane[1]] = int(k), int(r), int(c)
                out["point"].append({"label": name, "points": [index[::-1]], "point_labels": [1]})
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cases", type=int, default=None, help="the first N cases only")
    parser.add_argument("--out", type=Path, default=Path("/tmp/zero_shot_spine"))
    parser.add_argument("--mask-prompt", action="store_true", help="carry the previous mask too, not the box alone")
    parser.add_argument("--configurations", nargs="+", choices=CONFIGURATIONS, default=list(CONFIGURATIONS))
    parser.add_argument("--threshold", type=float, default=ZERO_SHOT_OBJECT_THRESHOLD,
                        help="object probability threshold (sab_predict --pretrained's); the carrying rules stay "
                             "as shipped, on the map rescaled to it")
    args = parser.parse_args()
    if not (args.data / "dataset.json").is_file():
        sys.exit(f"{args.data}: no dataset here; give --data")
    torch.set_num_threads(2)
    dataset = RawDataset.load(args.data)
    names = dataset.foreground_labels
    table = {"background": 0, **{n: i + 1 for i, n in enumerate(names)}}  # the zero-shot channels
    model = zero_shot_model(len(names))
    carry_rules = dataclasses.replace(ZERO_SHOT_CARRY, use_mask=args.mask_prompt)
    predictor = EnsemblePredictor([model], "cpu", 4, automatic=False, carry_rules=carry_rules,
                                  object_threshold=args.threshold, point_boxes=True)
    rows, started = [], time.perf_counter()
    case_ids = dataset.case_ids()
    case_ids = ([c for c in case_ids if c not in DEVELOPMENT_CASES] + [c for c in case_ids if c in DEVELOPMENT_CASES])[
        : args.cases]  # test cases first: a stopped run has the honest figures
    partial = args.out / "zero_shot_per_case.partial.csv"  # kept after every case: a stopped run resumes
    if partial.is_file():
        rows = [r for r in pd.read_csv(partial).to_dict("records") if r["configuration"] in args.configurations]
    complete = {c for c in {r["case"] for r in rows}  # a case counts as done with every configuration asked for
                if {r["configuration"] for r in rows if r["case"] == c} == set(args.configurations)}
    rows = [r for r in rows if r["case"] in complete]
    done = complete
    args.out.mkdir(parents=True, exist_ok=True)
    for n, case_id in enumerate(case_ids):
        if case_id in done:
            continue
        case = dataset.case(case_id)
        image, geometry = read_image(case.image_files[0])
        labels, _ = read_image(case.label_file)
        plan = zero_shot_plan(geometry, len(names))
        pre = preprocess_for_prediction([image], geometry, plan)
        axis = pre.properties["slice_frame"]["axes"][0]
        prompts = vertebra_prompts(labels, axis, names)
        shared = CaseEmbeddings(predictor, pre.image, keep_all=True)
        tick = time.perf_counter()
        for configuration in args.configurations:
            kind, predictor.carry_rules = configuration_rules(configuration, carry_rules)
            slice_prompts = slice_prompts_for_case(prompts[kind], "ijk", geometry, pre.properties, table,
                                                   case_id)
            t0 = time.perf_counter()
            probabilities = predictor.predict(pre.image, pre.depth_image, pre.properties, "2d", slice_prompts,
                                              carry=configuration != "boxes", embeddings=shared)
            predicted, _ = probabilities_to_original(probabilities, pre.properties)
            row = {"case": case_id, "configuration": configuration, "seconds": time.perf_counter() - t0,
                   "merged": dice(predicted > 0, labels > 0)}
            for name, value in names.items():
                row[name] = dice(predicted == table[name], labels == value)
            rows.append(row)
        pd.DataFrame(rows).to_csv(partial, index=False, float_format="%.6f")
        print(f"[{n + 1}/{len(case_ids)}] {case_id}: " + ", ".join(
            f"{r['configuration']} {np.nanmean([r[k] for k in names]):.3f}/{r['merged']:.3f}"
            for r in rows[-len(args.configurations):])
              + f" ({time.perf_counter() - tick:.0f} s, {predictor.encoder_calls} encoder calls so far)", flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out / "zero_shot_per_case.csv", index=False, float_format="%.4f")
    summary = []
    test = frame[~frame.case.isin(DEVELOPMENT_CASES)]
    for configuration, cases, part in [(c, "all", frame[frame.configuration == c]) for c in args.configurations] + [
            (c, "test (not development)", test[test.configuration == c]) for c in args.configurations]:
        if part.empty:
            continue
        per_vertebra = part[list(names)]
        summary.append({"configuration": configuration, "cases": f"{cases}, {len(part)}",
                        **{n: per_vertebra[n].mean() for n in names},
                        "mean per vertebra": float(np.nanmean(per_vertebra.to_numpy())),
                        "median per vertebra (cases)": float(np.nanmedian(per_vertebra.mean(axis=1))),
                        "merged mean": part["merged"].mean(), "merged median": part["merged"].median(),
                        "merged worst": part["merged"].min(), "s per case": part["seconds"].median()})
    text = pd.DataFrame(summary).to_markdown(index=False, floatfmt=".3f")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    report = (f"# Zero-shot prompting, LiteMedSAM, {len(case_ids)} cases of {args.data.name}\n\n"
              f"Command: `python benchmarks/zero_shot_spine.py {' '.join(sys.argv[1:])}`\n"
              f"CPU: {cpu}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
              f"{datetime.datetime.now():%Y-%m-%d %H:%M}; {time.perf_counter() - started:.0f} s in all, "
              f"{predictor.encoder_calls} encoder calls\n\n{text}\n")
    (args.out / "zero_shot.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
