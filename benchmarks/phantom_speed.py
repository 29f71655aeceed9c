"""How long the phantom generator takes for a cohort of about 256x256x40 volumes.

    python benchmarks/phantom_speed.py [--cases 20] [--workers 2] [--size 256] [--slices 40]

Writes into a temporary folder (removed afterwards) and prints wall time, CPU time of the worker
processes, and seconds per case. The target is 20 cases in under 30 s on two cores.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from sabnet.phantoms.cohort import LOCATIONS, make_phantom_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--sequences", nargs="+", default=["T1", "T2"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cpu0 = _cpu_s()
        start = time.perf_counter()
        dataset = make_phantom_dataset(Path(tmp), LOCATIONS, args.sequences, args.cases, seed=0,
                                       in_plane_size=args.size, n_slices=args.slices, n_workers=args.workers)
        wall = time.perf_counter() - start
        cpu = _cpu_s() - cpu0
        cases = json.loads((dataset / "phantom_truth.json").read_text())["cases"]
        voxels = sum(e["geometry"]["size"][0] * e["geometry"]["size"][1] * e["geometry"]["size"][2]
                     for e in cases.values())
        size_mb = sum(f.stat().st_size for f in dataset.rglob("*.nii.gz")) / 1e6
    print(f"{len(cases)} cases, {voxels / len(cases) / 1e6:.2f} M voxels each (~{args.size}x{args.size}x{args.slices}), "
          f"{args.workers} worker(s), {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"wall {wall:.1f} s ({wall / len(cases):.2f} s per case), CPU {cpu:.1f} s ({cpu / len(cases):.2f} s per case), "
          f"{size_mb:.0f} MB written")


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
