"""sab_transfer_labels: carry bone labels from an annotated sequence to another sequence of the same exam.

One pair:
    sab_transfer_labels --fixed T2.nii.gz --moving T1.nii.gz --labels T1_labels.nii.gz -o T2_labels.nii.gz
        [--min-quality 0.2] [--save-transform T2_to_T1.tfm] [--truth T2_truth.nii.gz] [--no-refine]
        [--no-super-resolution]
A cohort (nnU-Net raw layout, pairs matched by case_metadata subject and location, or listed):
    sab_transfer_labels -d DATASET --from-sequence T1 --to-sequence T2 [--out-dir DIR] [--overwrite]
    sab_transfer_labels -d DATASET --pairs pairs.json           # [{"moving": case, "fixed": case}, ...]

Exit status: 0 when everything asked for was written (or checked), 2 when a pair was refused for
low quality (nothing written for it), 1 on an error.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sabnet.cli.common import run_command
from sabnet.dataset.raw_dataset import RawDataset
from sabnet.errors import SabnetError
from sabnet.paths import resolve_dataset
from sabnet.registration.cohort import REFUSED, SKIPPED, pairs_by_sequence, read_pairs, transfer_cohort
from sabnet.registration.label_transfer import DEFAULT_MIN_QUALITY, transfer_labels

EXIT_REFUSED = 2
SINGLE = ("fixed", "moving", "labels", "output")
COHORT = ("dataset",)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sab_transfer_labels",
        description=("Register an annotated scan (moving) to another sequence of the same exam (fixed): rigid then "
                     "affine, Mattes mutual information, multi-resolution; decide how far each bone reaches between "
                     "the moving image's thick slices from that image's own in-plane detail; carry the labels onto "
                     "the fixed grid (shape-based, each bone keeping its volume) and refine them on the fixed "
                     "image's intensities; refuse to write when the alignment quality is below --min-quality."),
        epilog=("quality: the share of the two images' mutual information around each transferred bone that is "
                "lost when the result is moved 3 mm, for the worst-placed bone. A bone on its edges in the fixed "
                "image loses a good share (0.2-0.5 on well-aligned phantom pairs); a bone put where the fixed image "
                "has none loses little or gains (0.18 or less for another subject or a flipped image). "
                "Exit status 0: written (or checked); 2: a pair was refused; 1: error."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    one = p.add_argument_group("one pair")
    one.add_argument("--fixed", type=Path, help="image that receives the labels (file or DICOM folder)")
    one.add_argument("--moving", type=Path, help="annotated image (file or DICOM folder)")
    one.add_argument("--labels", type=Path, help="label map of the moving image")
    one.add_argument("-o", "--output", type=Path, help="where to write the labels on the fixed grid")
    one.add_argument("--save-transform", type=Path, default=None,
                     help="also write the transform (ITK .tfm; fixed world -> moving world)")
    one.add_argument("--truth", type=Path, default=None, help="the fixed image's own labels, to report Dice")
    cohort = p.add_argument_group("a cohort")
    cohort.add_argument("-d", "--dataset", help="dataset id, name or path to a raw dataset folder")
    cohort.add_argument("--from-sequence", help="sequence of the annotated cases (as in case_metadata), e.g. T1")
    cohort.add_argument("--to-sequence", help="sequence of the cases to label, e.g. T2")
    cohort.add_argument("--pairs", type=Path, help='JSON list of {"moving": case_id, "fixed": case_id} instead')
    cohort.add_argument("--out-dir", type=Path, default=None,
                        help="where the labels go (default: the dataset's labelsTr)")
    cohort.add_argument("--overwrite", action="store_true",
                        help="replace existing label files (default: keep them; the pair is only checked, with "
                             "Dice against the target's own labels in the report)")
    cohort.add_argument("--report", type=Path, default=None,
                        help="CSV report (default: label_transfer.csv in the dataset folder)")
    cohort.add_argument("--save-transforms", type=Path, default=None, help="folder for one .tfm per written pair")
    p.add_argument("--min-quality", type=float, default=DEFAULT_MIN_QUALITY,
                   help=f"refuse (write nothing) below this quality (default {DEFAULT_MIN_QUALITY})")
    p.add_argument("--rigid-only", action="store_true", help="skip the affine stage")
    p.add_argument("--no-refine", action="store_true",
                   help="write the labels as carried, without refining them on the fixed image's own intensities")
    p.add_argument("--no-super-resolution", action="store_true",
                   help="carry the labels slice by slice as given, without first deciding on the moving image where "
                        "each bone ends between its thick slices (faster, less exact on 3-4 mm slices)")
    return p


def _run(args: argparse.Namespace) -> int:
    single = [name for name in SINGLE if getattr(args, name) is not None]
    if args.dataset is not None:
        if single:
            raise SabnetError(f"give either -d (a cohort) or --fixed/--moving/--labels/-o (one pair), not both "
                              f"(also got --{single[0]})")
        return _run_cohort(args)
    missing = [name for name in SINGLE if getattr(args, name) is None]
    if missing:
        raise SabnetError(f"one pair needs --fixed, --moving, --labels and -o (missing --{missing[0]}); "
                          "or give -d DATASET for a cohort")
    result = transfer_labels(args.fixed, args.moving, args.labels, args.output, min_quality=args.min_quality,
                             truth_labels=args.truth, save_transform=args.save_transform, affine=not args.rigid_only,
                             refine=not args.no_refine, super_resolve=not args.no_super_resolution)
    q = result.quality
    worst = min(q.bone_sharpness, key=q.bone_sharpness.get, default=None)
    print(f"quality {q.value:.2f} (all bones {q.sharpness:.2f}"
          + (f", worst bone: label {worst} {q.bone_sharpness[worst]:.2f}" if worst is not None else "")
          + f"; nmi {q.nmi:.3f}); {result.registration.stage} "
          f"registration from {result.registration.start} coordinates"
          + (f" (best metric of {result.tries} tries)" if result.tries > 1 else "") + "; moving image covers "
          f"{100 * result.coverage:.0f}% of the fixed body")
    if result.fine_slices > 1:
        print(f"labels super-resolved to {result.fine_slices} fine voxels per moving slice on the moving image")
    if not args.no_refine:
        print(f"refinement on the fixed image changed {result.refined_voxels} voxel(s)")
    if result.dice:
        print("Dice against --truth: " + ", ".join(f"{k} {v:.3f}" for k, v in result.dice.items())
              + ("" if args.no_refine else f" (before refinement: all {result.dice_carried['all']:.3f})"))
    if not result.written:
        note = f"; existing {args.output} left as it was" if args.output.exists() else ""
        print(f"refused: {result.reason}; nothing written{note}")
        return EXIT_REFUSED
    print(f"labels {sorted(result.labels)} written to {args.output}"
          + (f", transform to {args.save_transform}" if args.save_transform else ""))
    return 0


def _run_cohort(args: argparse.Namespace) -> int:
    ref = resolve_dataset(args.dataset)
    dataset = RawDataset.load(ref.raw_dir)
    if args.pairs is not None:
        if args.from_sequence or args.to_sequence:
            raise SabnetError("give either --pairs or --from-sequence/--to-sequence, not both")
        pairs, skipped = read_pairs(args.pairs, dataset), []
    elif args.from_sequence and args.to_sequence:
        pairs, skipped = pairs_by_sequence(dataset, args.from_sequence, args.to_sequence)
    else:
        raise SabnetError("a cohort needs --from-sequence and --to-sequence (e.g. T1 and T2), or --pairs pairs.json")
    report = args.report or dataset.root / "label_transfer.csv"
    out_dir = args.out_dir or dataset.root / "labelsTr"
    print(f"{ref.name}: {len(pairs)} pair(s) to transfer, {len(skipped)} subject(s) skipped; labels to {out_dir}")
    table = transfer_cohort(dataset, pairs, report, out_dir=out_dir, min_quality=args.min_quality,
                            overwrite=args.overwrite, transforms_dir=args.save_transforms, skipped=skipped,
                            refine=not args.no_refine, super_resolve=not args.no_super_resolution)
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    print(", ".join(f"{n} {status}" for status, n in counts.items()) or "nothing to do")
    for _, row in table[table["status"].isin([REFUSED, SKIPPED])].iterrows():
        print(f"{row['status']} {row['fixed']}: {row['reason']}")
    print(f"report written to {report}")
    return EXIT_REFUSED if counts.get(REFUSED) else 0


def main(argv=None) -> int:
    return run_command(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
