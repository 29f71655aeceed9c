"""Naming vertebrae in order (sabnet.inference.series_naming) on the real spine: the predictions of
a `benchmarks/real_spine.py` run, as they are, named in order, and named in order with one click
that names the lowest vertebra in view (as `sab_predict --prompts` passes a positive point to the
naming), side by side on the same files.

    python benchmarks/series_naming.py --workdir /tmp/sabnet_real_spine [--variant sab_tiny]
        [--configurations 2d_automatic cropped_2d remapped_2d] [--data ../shared/data/Dataset001_SpineVB3]

The click: the deepest voxel (largest distance to its outline) of the most caudal vertebra of the
reference in view, labelled with its name. Dice per vertebra L1..L5 per case (a vertebra absent
from both reference and prediction skipped, as sab_evaluate does), averaged over cases, their mean
(as sab_evaluate's mean foreground Dice), and the merged Dice.
Writes <workdir>/series_naming.csv (per case) and prints the table (means over cases).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from sabnet.dataset.raw_dataset import RawDataset
from sabnet.inference.series_naming import name_series
from sabnet.io.image_io import read_image

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset001_SpineVB3"
REFERENCES = {"2d_automatic": "original", "3d_automatic": "original", "remapped_2d": "original",
              "remapped_3d": "original", "click_per_slice": "original", "click_carried": "original",
              "cropped_2d": "cropped"}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else float("nan")


def lowest_vertebra_click(reference: np.ndarray, series: list[int]) -> list[tuple[tuple, int]]:
    """[(array index, label)]: the deepest voxel of the most caudal vertebra present in `reference`
    (the series runs head to foot)."""
    present = [v for v in series if (reference == v).any()]
    if not present:
        return []
    body = np.pad(reference == present[-1], 1)
    depth = ndimage.distance_transform_edt(body)[1:-1, 1:-1, 1:-1]
    return [(tuple(int(v) for v in np.unravel_index(int(np.argmax(depth)), depth.shape)), present[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--variant", default="sab_tiny")
    parser.add_argument("--configurations", nargs="+", default=["2d_automatic", "cropped_2d", "remapped_2d"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    dataset = RawDataset.load(args.data)
    names = dataset.foreground_labels
    series = [names[n] for n in names]
    references = args.workdir / "evaluation" / "references"
    rows = []
    for configuration in args.configurations:
        folder = args.workdir / "predictions" / args.variant / configuration
        files = sorted(folder.glob("*.nii.gz"))
        if not files:
            sys.exit(f"{folder}: no predictions; run benchmarks/real_spine.py --workdir {args.workdir} first")
        for path in files:
            case_id = path.name[: -len(".nii.gz")]
            predicted, geometry = read_image(path)
            reference, _ = read_image(references / REFERENCES[configuration] / path.name)
            spacing = geometry.axis_spacing_mm
            for naming, labels in (("as predicted", predicted),
                                   ("named in order", name_series(predicted, series, spacing)),
                                   ("named in order + click on the lowest vertebra",
                                    name_series(predicted, series, spacing, lowest_vertebra_click(reference, series)))):
                rows.append({"configuration": configuration, "naming": naming, "case": case_id,
                             **{n: dice(labels == v, reference == v) for n, v in names.items()},
                             "merged": dice(labels > 0, reference > 0)})
    frame = pd.DataFrame(rows)
    frame.to_csv(args.workdir / "series_naming.csv", index=False, float_format="%.4f")
    table = frame.groupby(["configuration", "naming"], sort=False)[[*names, "merged"]].mean()
    table.insert(len(names), "mean per vertebra", table[list(names)].mean(axis=1))  # as sab_evaluate's mean
    table["cases"] = frame.groupby(["configuration", "naming"], sort=False)["case"].count()
    print(table.reset_index().to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
