"""sab_verify_dataset -d D [-np N] [-o report.json]: check a raw cohort and list every problem.

Exit status 1 when any problem is an error, 0 otherwise (warnings only). Writes nothing into
the raw folder; `-o` writes the report (problems and duplicate groups) where you say.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sabnet.cli.common import run_command
from sabnet.dataset.verify import verify_dataset
from sabnet.io.atomic import write_json
from sabnet.paths import resolve_dataset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sab_verify_dataset", description=(
        "Check every case of a raw dataset (nnU-Net v2 layout) and report all problems: missing or extra "
        "files, unreadable files, shape/geometry mismatches, undeclared label values, NaN/Inf, non-3D images, "
        "wrong channel counts, unsafe case ids; warnings for empty label maps and duplicate images."))
    p.add_argument("-d", "--dataset", required=True,
                   help="dataset id (1), name (Dataset001_SpineVB3) or path to a raw dataset folder")
    p.add_argument("-np", "--n-workers", type=int, default=1, help="worker processes reading cases (default 1)")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="also write the report as JSON here (problems and duplicate_groups)")
    return p


def _display(path: Path | None, raw_dir: Path) -> str:
    if path is None:
        return str(raw_dir)
    try:
        return str(Path(path).relative_to(raw_dir))
    except ValueError:
        return str(path)


def _run(args: argparse.Namespace) -> int:
    ref = resolve_dataset(args.dataset)
    print(ref.roots.describe())
    print(f"verifying {ref.name}: reading {ref.raw_dir} (writes nothing there)")
    report = verify_dataset(ref.raw_dir, n_workers=args.n_workers)
    for problem in report.problems:
        print(f"{problem.severity.upper()} {_display(problem.file, ref.raw_dir)}: {problem.message}")
    for group in report.duplicate_groups:
        print(f"duplicate group (kept in one fold): {', '.join(group)}")
    if args.output is not None:
        write_json(args.output, report.to_dict())
        print(f"report written to {args.output}")
    verdict = "OK" if report.ok else "FAILED"
    print(f"{verdict}: {report.n_training} training and {report.n_test} test case(s), "
          f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    return 0 if report.ok else 1


def main(argv=None) -> int:
    return run_command(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
