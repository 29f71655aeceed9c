"""sab_make_phantoms: write a raw dataset of synthetic MRI phantoms with per-bone labels.

    sab_make_phantoms OUT --locations knee hip --sequences T1 T2 --cases 20 --seed 0 [--test-cases 5]
                      [--paired] [--planes sagittal coronal] [--name Dataset900_Phantoms]
"""
from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

from sabnet.cli.common import run_command
from sabnet.phantoms.cohort import LOCATIONS, PLANES, SEQUENCES, make_phantom_dataset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sab_make_phantoms", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", type=Path, help="folder to write the dataset folder into (e.g. $SABNET_RAW)")
    p.add_argument("--locations", nargs="+", default=list(LOCATIONS), choices=LOCATIONS, metavar="LOCATION",
                   help=f"body locations, cycled over subjects: {', '.join(LOCATIONS)}")
    p.add_argument("--sequences", nargs="+", default=["T1"], choices=SEQUENCES, metavar="SEQUENCE",
                   help=f"sequences, cycled over subjects: {', '.join(SEQUENCES)}")
    p.add_argument("--cases", type=int, default=10, help="training subjects (imagesTr)")
    p.add_argument("--test-cases", type=int, default=0, help="test subjects (imagesTs, truth in labelsTs)")
    p.add_argument("--seed", type=int, default=0, help="same seed and flags -> identical volumes")
    p.add_argument("--paired", action="store_true",
                   help="scan each subject twice (next sequence in --sequences) with a known rigid motion between")
    p.add_argument("--planes", nargs="+", default=["sagittal", "coronal", "axial", "oblique"], choices=PLANES,
                   metavar="PLANE", help=f"acquisition planes drawn per case: {', '.join(PLANES)}")
    p.add_argument("--in-plane-spacing", type=float, nargs=2, default=(0.4, 1.0), metavar=("MIN", "MAX"),
                   help="in-plane spacing range, mm")
    p.add_argument("--slice-spacing", type=float, nargs=2, default=(2.5, 4.0), metavar=("MIN", "MAX"),
                   help="slice spacing range, mm (equal bounds fix it)")
    p.add_argument("--size", type=int, default=256, help="about this many voxels per in-plane side")
    p.add_argument("--slices", type=int, default=None, help="slices per volume (default: cover the anatomy, 30-50)")
    p.add_argument("--no-permute", action="store_true", help="always store the slice axis as array axis 0")
    p.add_argument("--name", default="Dataset900_Phantoms", help="dataset folder name, DatasetNNN_Name")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes")
    return p


def _run(args: argparse.Namespace) -> int:
    dataset = make_phantom_dataset(
        args.out, args.locations, args.sequences, args.cases, args.seed,
        n_test_cases=args.test_cases, paired=args.paired, planes=args.planes,
        in_plane_spacing_mm=tuple(args.in_plane_spacing), slice_spacing_mm=tuple(args.slice_spacing),
        in_plane_size=args.size, n_slices=args.slices, permute_axes=not args.no_permute, dataset_name=args.name,
        n_workers=args.workers, progress=True,
    )
    cases = json.loads((dataset / "phantom_truth.json").read_text(encoding="utf-8"))["cases"]
    training = sum(1 for e in cases.values() if e["split"] == "train")
    print(f"wrote {dataset}")
    print(f"{len(cases)} volumes ({training} training, {len(cases) - training} test); locations: "
          f"{_counts(cases, 'location')}; sequences: {_counts(cases, 'sequence')}; planes: {_counts(cases, 'plane')}")
    return 0


def _counts(cases: dict, key: str) -> str:
    return ", ".join(f"{value} {n}" for value, n in sorted(Counter(e[key] for e in cases.values()).items()))


def main(argv=None) -> int:
    return run_command(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
