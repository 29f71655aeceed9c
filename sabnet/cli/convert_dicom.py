"""sab_convert_dicom INPUT_DIR OUT_DATASET_DIR [--name NAME] [--labels DIR]: DICOM studies -> raw dataset.

Series with a label map in --labels go to imagesTr/labelsTr, the others to imagesTs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sabnet.cli.common import run_command
from sabnet.dataset.convert_dicom import convert_dicom
from sabnet.paths import DATASET_NAME, Roots


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sab_convert_dicom", description=(
        "Convert every DICOM series found under INPUT_DIR (searched recursively) into a raw dataset folder: "
        "one case per series, NIfTI images, dataset.json with each case's sequence, location and subject read "
        "from the DICOM tags. Series with a label map (see --labels) go to imagesTr/labelsTr, the others to "
        "imagesTs. Series that cannot be read are listed and skipped."))
    p.add_argument("input_dir", type=Path, help="folder of DICOM studies (any nesting)")
    p.add_argument("out_dir", type=Path,
                   help="raw dataset folder to create, e.g. $SABNET_RAW/Dataset002_Knee (must not exist or be empty)")
    p.add_argument("--name", default=None, help="dataset name written to dataset.json (default: OUT_DIR's folder name)")
    p.add_argument("--labels", type=Path, default=None, metavar="DIR",
                   help="folder of label maps, each named after a series' SeriesInstanceUID, its case id or its "
                        "folder's name (e.g. 1.2.840....nii.gz), on the series' grid")
    return p


def _run(args: argparse.Namespace) -> int:
    roots = Roots.from_environment()
    print(roots.describe())
    print(f"reading DICOM under {args.input_dir}; writing the raw dataset to {args.out_dir}")
    result = convert_dicom(args.input_dir, args.out_dir, name=args.name, labels_dir=args.labels)
    for case in result.cases:
        print(f"{case.split}/{case.case_id}_0000: {case.sequence}, {case.location}, subject {case.subject} "
              f"<- {case.source.folder}")
    for line in result.skipped:
        print(f"skipped {line}")
    print(f"{len(result.cases)} case(s) written ({result.n_training} labelled in imagesTr, "
          f"{len(result.cases) - result.n_training} in imagesTs), {len(result.skipped)} skipped; "
          f"next: sab_verify_dataset -d {args.out_dir}")
    out = args.out_dir.resolve()
    if out.parent != roots.raw.resolve() or not DATASET_NAME.match(out.name):
        print(f"note: refer to it by its path; to use an id or name, place it as {roots.raw}/DatasetNNN_Name")
    return 0


def main(argv=None) -> int:
    return run_command(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
