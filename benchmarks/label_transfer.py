"""Label transfer on phantom pairs with a known motion: Dice against the truth, quality and time.

    python benchmarks/label_transfer.py [--pairs 10] [--size 128] [--seed 0] [--wrong] [--csv out.csv]

Makes paired phantom subjects in a temporary folder (the 5 locations in turn; subjects 0-4 are
T1->T2, 5-9 T2->PD, 10-14 PD->STIR, 15-19 STIR->GRE; planes drawn per subject, slices 2.5-4 mm,
30 of them, up to 5 degrees and 8 mm of motion) and transfers the labels of each subject's first
scan onto its second with `transfer_labels`. Per pair it prints: quality (and its nmi, sharpness
and worst-bone parts), seconds, Dice over all bones and for the worst bone after refinement and
before it ("carried_"), the voxels refinement changed, the fine voxels per moving slice the labels
were super-resolved to (fine_slices), predicted / true bone volume (after and before), and the Dice
of labels carried with the true motion ("ceiling": the labels as given, shape-based, what carrying
them costs by itself on these thick slices, all bones and worst bone; "stepped_ceiling": the same
with linear shares alone; "fine_ceiling": the labels super-resolved on the moving image first).
Dice and volumes are counted where the moving image covers the fixed one.

--wrong adds pairs that must be refused: the first scan of one subject onto the second scan of
another subject at the same location (needs --pairs 10 or more), and onto a fixed image whose
voxels were flipped along each axis in turn while its header stayed (a mislabelled orientation).
`--pairs 20 --wrong` took about 25-35 minutes on two busy cores; `--pairs 20 --size 256`, about 10.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from sabnet.phantoms.cohort import LOCATIONS, make_phantom_dataset
from sabnet.registration.label_carrying import carried_shares, carry_labels, labels_from_shares
from sabnet.registration.label_transfer import DEFAULT_MIN_QUALITY, coverage_of, dice_per_label, transfer_labels
from sabnet.registration.rigid_affine import body_mask, flatten_bias
from sabnet.registration.slice_super_resolution import super_resolve_labels

SEQUENCES = ("T1", "T2", "PD", "STIR", "GRE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10, help="paired subjects (default 10)")
    parser.add_argument("--size", type=int, default=128, help="about this many voxels per in-plane side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wrong", action="store_true", help="also run pairs that must be refused")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_phantom_dataset(Path(tmp), LOCATIONS, SEQUENCES, args.pairs, seed=args.seed, paired=True,
                                       in_plane_size=args.size, n_slices=30, in_plane_spacing_mm=(0.6, 1.2),
                                       slice_spacing_mm=(2.5, 4.0))
        truth = json.loads((dataset / "phantom_truth.json").read_text())
        rows = [_run(dataset, truth, p["first"], p["second"], "same subject", p) for p in truth["pairs"]]
        if args.wrong:
            rows += _wrong_pairs(dataset, truth, Path(tmp))
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    good = table[table.kind == "same subject"]
    print(f"\nsame subject: {len(good)} pairs, Dice all >= {good.dice_all.min():.3f} "
          f"(median {good.dice_all.median():.3f}; {int((good.dice_all >= 0.95).sum())} pairs >= 0.95), before "
          f"refinement >= {good.carried_dice_all.min():.3f} ({int((good.carried_dice_all >= 0.95).sum())} >= 0.95); "
          f"refinement changed Dice all by {(good.dice_all - good.carried_dice_all).min():+.4f} to "
          f"{(good.dice_all - good.carried_dice_all).max():+.4f}; volume ratio {good.carried_volume_ratio.mean():.3f} "
          f"-> {good.volume_ratio.mean():.3f} (mean);"
          f" worst bone >= {good.dice_worst_bone.min():.3f}; ceiling worst bone >= {good.ceiling_worst_bone.min():.3f};"
          f" true motion, carried as given >= {good.ceiling_all.min():.3f} (mean {good.ceiling_all.mean():.3f}),"
          f" super-resolved >= {good.fine_ceiling_all.min():.3f} (mean {good.fine_ceiling_all.mean():.3f});"
          f" quality >= {good.quality.min():.2f}; {good.seconds.median():.1f} s per pair (median)")
    if args.wrong:
        bad = table[table.kind != "same subject"]
        print(f"wrong pairs: {len(bad)}, quality <= {bad.quality.max():.2f}, "
              f"{int((bad.quality >= DEFAULT_MIN_QUALITY).sum())} would be written at "
              f"--min-quality {DEFAULT_MIN_QUALITY}")
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    if args.csv:
        table.to_csv(args.csv, index=False)


def _run(dataset: Path, truth: dict, moving_case: str, fixed_case: str, kind: str, pair: dict | None,
         fixed_image: Path | None = None, fixed_truth: Path | None = None) -> dict:
    fixed_image = fixed_image or dataset / "imagesTr" / f"{fixed_case}_0000.nii.gz"
    fixed_truth = fixed_truth or dataset / "labelsTr" / f"{fixed_case}.nii.gz"
    moving_image = dataset / "imagesTr" / f"{moving_case}_0000.nii.gz"
    moving_labels = dataset / "labelsTr" / f"{moving_case}.nii.gz"
    (dataset / "out.nii.gz").unlink(missing_ok=True)
    start = time.perf_counter()
    # written whatever the quality (a wrong pair's figure can be below 0), so every pair has its Dice
    result = transfer_labels(fixed_image, moving_image, moving_labels, dataset / "out.nii.gz", min_quality=-np.inf,
                             truth_labels=fixed_truth)
    seconds = time.perf_counter() - start
    case = truth["cases"][fixed_case]
    bones = {k: v for k, v in result.dice.items() if k != "all"}
    carried_bones = [v for k, v in result.dice_carried.items() if k != "all"]
    fixed, moving = sitk.ReadImage(str(fixed_image)), sitk.ReadImage(str(moving_image))
    transform = result.registration.transform
    carried = carry_labels(sitk.ReadImage(str(moving_labels)), fixed, transform)
    covered = coverage_of(moving, fixed, transform)
    true_volume = max(int(np.count_nonzero((sitk.GetArrayViewFromImage(sitk.ReadImage(str(fixed_truth))) > 0)
                                           & covered)), 1)
    row = {"kind": kind, "moving": moving_case, "fixed": fixed_case, "location": case["location"],
           "sequences": f"{truth['cases'][moving_case]['sequence']}->{case['sequence']}", "plane": case["plane"],
           "spacing_mm": "x".join(f"{s:.1f}" for s in case["axis_spacing_mm"]),
           "quality": result.quality.value, "nmi": result.quality.nmi, "sharpness": result.quality.sharpness,
           "worst_bone_sharpness": min(result.quality.bone_sharpness.values(), default=np.nan),
           "stage": result.registration.stage, "seconds": seconds, "dice_all": result.dice["all"],
           "dice_worst_bone": min(bones.values()) if bones else np.nan,
           "carried_dice_all": result.dice_carried["all"],
           "carried_dice_worst_bone": min(carried_bones) if carried_bones else np.nan,
           "refined_voxels": result.refined_voxels, "fine_slices": result.fine_slices,
           "volume_ratio": np.count_nonzero((sitk.GetArrayViewFromImage(sitk.ReadImage(str(dataset / "out.nii.gz"))) > 0)
                                            & covered) / true_volume,
           "carried_volume_ratio": np.count_nonzero((carried > 0) & covered) / true_volume}
    if pair is not None:
        ceiling = _ceiling(fixed_image, moving_image, moving_labels, fixed_truth, pair)
        row.update(ceiling_all=ceiling["all"], stepped_ceiling_all=ceiling["stepped_all"],
                   fine_ceiling_all=ceiling["fine_all"],
                   ceiling_worst_bone=min(v for k, v in ceiling.items() if isinstance(k, int)),
                   motion_deg=float(np.abs(pair["rotation_deg"]).max()),
                   motion_mm=float(np.linalg.norm(pair["translation_mm"])))
    return row


def _ceiling(fixed_image: Path, moving_image: Path, moving_labels: Path, fixed_truth: Path, pair: dict) -> dict:
    """Dice of labels carried with the true motion (fixed = second scan, moving = first)."""
    matrix, offset = np.asarray(pair["transform"]["matrix"]), np.asarray(pair["transform"]["offset_mm"])
    true = sitk.AffineTransform(3)
    true.SetMatrix(matrix.T.ravel().tolist())           # second -> first: x1 = R^T (x2 - offset)
    true.SetTranslation((-(matrix.T @ offset)).tolist())
    fixed, moving = sitk.ReadImage(str(fixed_image)), sitk.ReadImage(str(moving_image))
    labels = sitk.ReadImage(str(moving_labels))
    covered = coverage_of(moving, fixed, true)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(fixed_truth)))
    out = dice_per_label(truth, carry_labels(labels, fixed, true), covered)
    out["stepped_all"] = dice_per_label(truth, labels_from_shares(carried_shares(labels, fixed, true), np.uint8),
                                        covered)["all"]
    fine = super_resolve_labels(labels, flatten_bias(moving, body_mask(moving)), seed=1)
    out["fine_all"] = dice_per_label(truth, carry_labels(fine, fixed, true), covered)["all"] if fine is not None else np.nan
    return out


def _wrong_pairs(dataset: Path, truth: dict, tmp: Path) -> list[dict]:
    rows = []
    by_location: dict[str, list[dict]] = {}
    for pair in truth["pairs"]:
        by_location.setdefault(truth["cases"][pair["first"]]["location"], []).append(pair)
    for pairs in by_location.values():
        for a, b in zip(pairs, pairs[1:]):
            rows.append(_run(dataset, truth, a["first"], b["second"], "other subject", None))
    for pair in truth["pairs"][:3]:
        image = sitk.ReadImage(str(dataset / "imagesTr" / f"{pair['second']}_0000.nii.gz"))
        labels = sitk.ReadImage(str(dataset / "labelsTr" / f"{pair['second']}.nii.gz"))
        for axis in range(3):
            paths = []
            for what, source in (("image", image), ("labels", labels)):
                flipped = sitk.GetImageFromArray(np.flip(sitk.GetArrayFromImage(source), axis).copy())
                flipped.CopyInformation(source)
                paths.append(tmp / f"flipped_{what}.nii.gz")
                sitk.WriteImage(flipped, str(paths[-1]))
            rows.append(_run(dataset, truth, pair["first"], pair["second"], f"flipped axis {axis}", None,
                             fixed_image=paths[0], fixed_truth=paths[1]))
    return rows


if __name__ == "__main__":
    main()
