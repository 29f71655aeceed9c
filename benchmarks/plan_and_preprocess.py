"""Planning and preprocessing: `sab_plan_and_preprocess` against `nnUNetv2_plan_and_preprocess -c 2d`
on the same raw data with the same number of processes, run side by side in one invocation.

    pip install -e .[bench]       # psutil; nnunetv2 lives in its own environment (--nnunet-bin)
    python benchmarks/plan_and_preprocess.py [--nnunet-bin /work/nnunet_venv/bin] [-np 2] [--repeats 3]
        [--spine ../shared/data/Dataset001_SpineVB3] [--phantoms 20] [--out DIR]

Datasets: the real spine set (when present) and an anisotropic, mixed-plane phantom cohort (knee,
hip, shoulder; sagittal/coronal/axial/oblique; 0.4-0.8 mm in-plane, 3-4.5 mm slices, ~256 px),
generated once into --out with a fixed seed. Each repeat runs sab, then nnU-Net, in fresh
temporary roots, so that load from other work on the machine hits both alike; the raw files are
read once beforehand so that neither pays for a cold page cache.

Per run: wall time, and peak memory of the whole process tree, sampled every 50 ms (sum of RSS over
the process and all its children; the largest single-process RSS too). RSS sums count pages that
forked workers share with their parent once per process; the sum of PSS (each shared page split
among its sharers) is sampled every second as well (reading it costs ~20 ms per process). Writes
`<out>/plan_and_preprocess.md` (the tables), `runs.csv` (every run) and `logs/` (each run's output).
Goals: sab wall time <= 0.5x nnU-Net's, peak tree memory (RSS) <= 1.0x.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import psutil

from sabnet.paths import DATASET_NAME
from sabnet.phantoms.cohort import make_phantom_dataset

TOOLS = ("sab", "nnU-Net")
GOALS = {"wall": 0.5, "memory": 1.0}
MB = 1e6


@dataclass
class Run:
    """One measured run of one tool."""

    dataset: str
    tool: str
    repeat: int
    exit_code: int
    wall_s: float
    peak_tree_rss_mb: float
    peak_single_rss_mb: float
    peak_tree_pss_mb: float
    max_processes: int
    output_mb: float
    load_before: float
    log: str


class TreeSampler(threading.Thread):
    """Samples the memory of a process and all its descendants until stopped.

    peak_tree_rss: largest sum of RSS (bytes) seen at one sample; peak_single_rss: largest RSS of
    one process; peak_tree_pss: largest sum of PSS, sampled every `pss_interval_s` (0: never).
    """

    def __init__(self, root: psutil.Process, interval_s: float = 0.05, pss_interval_s: float = 1.0):
        super().__init__(daemon=True)
        self.root, self.interval_s, self.pss_interval_s = root, interval_s, pss_interval_s
        self.stop = threading.Event()
        self.peak_tree_rss = self.peak_single_rss = self.peak_tree_pss = 0
        self.max_processes = 0

    def run(self) -> None:
        next_pss = time.perf_counter()
        while not self.stop.is_set():
            tick = time.perf_counter()
            members = self._members()
            rss = [_memory(p, "rss") for p in members]
            self.peak_tree_rss = max(self.peak_tree_rss, sum(rss))
            self.peak_single_rss = max(self.peak_single_rss, max(rss, default=0))
            self.max_processes = max(self.max_processes, sum(r > 0 for r in rss))
            if self.pss_interval_s and tick >= next_pss:
                self.peak_tree_pss = max(self.peak_tree_pss, sum(_memory(p, "pss") for p in members))
                next_pss = tick + self.pss_interval_s
            self.stop.wait(max(0.0, self.interval_s - (time.perf_counter() - tick)))

    def _members(self) -> list[psutil.Process]:
        try:
            return [self.root] + self.root.children(recursive=True)
        except psutil.Error:  # the root has just exited
            return []


def _memory(process: psutil.Process, kind: str) -> int:
    """RSS or PSS of a process in bytes; 0 when it has exited meanwhile."""
    try:
        return process.memory_full_info().pss if kind == "pss" else process.memory_info().rss
    except psutil.Error:
        return 0


def measure(command: list[str], env: dict, log_path: Path, pss_interval_s: float) -> tuple[int, float, TreeSampler]:
    """Run `command` with stdout and stderr to `log_path`; (exit code, wall seconds, sampler)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        start = time.perf_counter()
        process = psutil.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        sampler = TreeSampler(process, pss_interval_s=pss_interval_s)
        sampler.start()
        code = process.wait()
        wall = time.perf_counter() - start
        sampler.stop.set()
        sampler.join()
    return code, wall, sampler


def sab_command(raw_dir: Path, n_processes: int, work: Path) -> tuple[list[str], dict]:
    """`sab_plan_and_preprocess -d <raw> -np N` (default verification) with roots under `work`."""
    env = dict(os.environ)
    for key, sub in (("SABNET_RAW", "raw"), ("SABNET_PREPROCESSED", "preprocessed"), ("SABNET_RESULTS", "results")):
        (work / sub).mkdir(parents=True)
        env[key] = str(work / sub)
    return [_sab_executable(), "-d", str(raw_dir), "-np", str(n_processes)], env


def nnunet_command(raw_dir: Path, n_processes: int, work: Path, nnunet_bin: Path) -> tuple[list[str], dict]:
    """`nnUNetv2_plan_and_preprocess -d <id> -c 2d` with N processes for verification, fingerprint
    and preprocessing; the raw folder is linked into a fresh nnUNet_raw under its DatasetNNN_Name."""
    env = dict(os.environ)
    for key, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        (work / sub).mkdir(parents=True)
        env[key] = str(work / sub)
    (work / "raw" / raw_dir.name).symlink_to(raw_dir.resolve(), target_is_directory=True)
    n = str(n_processes)
    dataset_id = str(int(DATASET_NAME.match(raw_dir.name).group(1)))
    return [str(nnunet_bin / "nnUNetv2_plan_and_preprocess"), "-d", dataset_id, "-c", "2d", "-np", n, "-npfp", n,
            "--verify_dataset_integrity"], env


def _sab_executable() -> str:
    beside = Path(sys.executable).with_name("sab_plan_and_preprocess")
    found = str(beside) if beside.exists() else shutil.which("sab_plan_and_preprocess")
    if not found:
        sys.exit("sab_plan_and_preprocess not found: install sabnet (pip install -e .[bench])")
    return found


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / MB


def warm_page_cache(raw_dir: Path) -> None:
    """Read every raw file once, so that the first run does not pay for a cold disk."""
    for path in raw_dir.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


def phantom_cohort(out: Path, n_cases: int, n_processes: int) -> Path:
    """The anisotropic, mixed-plane phantom cohort, made once per (n_cases, seed) and then reused."""
    folder = out / f"phantoms_{n_cases}_seed7"
    dataset = folder / "Dataset990_PhantomBench"
    if not (dataset / "dataset.json").is_file():
        print(f"making {n_cases} phantom cases in {folder} (once)")
        make_phantom_dataset(folder, locations=("knee", "hip", "shoulder"), sequences=("T1", "T2"), n_cases=n_cases,
                             seed=7, planes=("sagittal", "coronal", "axial", "oblique"),
                             in_plane_spacing_mm=(0.4, 0.8), slice_spacing_mm=(3.0, 4.5), in_plane_size=256,
                             dataset_name="Dataset990_PhantomBench", n_workers=n_processes, progress=True)
    return dataset


def benchmark_dataset(raw_dir: Path, args: argparse.Namespace) -> list[Run]:
    """Alternate sab and nnU-Net `args.repeats` times on one raw dataset."""
    warm_page_cache(raw_dir)
    runs = []
    for repeat in range(1, args.repeats + 1):
        for tool in TOOLS:
            work = args.out / "work" / f"{raw_dir.name}_{tool}_{repeat}"
            shutil.rmtree(work, ignore_errors=True)
            if tool == "sab":
                command, env = sab_command(raw_dir, args.num_processes, work)
            else:
                command, env = nnunet_command(raw_dir, args.num_processes, work, args.nnunet_bin)
            log = args.out / "logs" / f"{raw_dir.name}_{tool.replace('-', '').replace(' ', '')}_{repeat}.log"
            load = os.getloadavg()[0]
            code, wall, s = measure(command, env, log, args.pss_interval)
            run = Run(raw_dir.name, tool, repeat, code, wall, s.peak_tree_rss / MB, s.peak_single_rss / MB,
                      s.peak_tree_pss / MB, s.max_processes, folder_mb(work / "preprocessed"), load, str(log))
            runs.append(run)
            status = "ok" if code == 0 else f"FAILED (exit {code}, see {log})"
            print(f"  {raw_dir.name} {tool:8s} repeat {repeat}: {wall:7.1f} s, peak tree RSS {run.peak_tree_rss_mb:7.0f} MB, "
                  f"PSS {run.peak_tree_pss_mb:7.0f} MB, load before {load:.1f}  {status}", flush=True)
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    return runs


def machine() -> dict:
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        model = names[0] if names else model
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "python": platform.python_version()}


def dataset_table(runs: list[Run]) -> tuple[str, dict]:
    """Markdown table of one dataset (medians over successful runs) and the goal verdicts."""
    ok = {t: [r for r in runs if r.tool == t and r.exit_code == 0] for t in TOOLS}
    failed = [r for r in runs if r.exit_code != 0]
    rows = [("wall time (s)", "wall_s", "wall"), ("peak tree memory, RSS sum (MB)", "peak_tree_rss_mb", "memory"),
            ("peak tree memory, PSS sum, 1 s samples (MB)", "peak_tree_pss_mb", None),
            ("largest single process RSS (MB)", "peak_single_rss_mb", None),
            ("processes at once (max)", "max_processes", None), ("preprocessed output (MB)", "output_mb", None)]
    lines = ["| median of successful runs | sab | nnU-Net | sab / nnU-Net | goal |", "|---|---:|---:|---:|---|"]
    verdicts = {}
    for label, key, goal in rows:
        med = {t: statistics.median(getattr(r, key) for r in ok[t]) if ok[t] else float("nan") for t in TOOLS}
        ratio = med["sab"] / med["nnU-Net"] if ok["sab"] and ok["nnU-Net"] and med["nnU-Net"] else float("nan")
        verdict = ""
        if goal:
            verdicts[goal] = ratio <= GOALS[goal]
            verdict = f"<= {GOALS[goal]:.1f}x: {'met' if verdicts[goal] else 'MISSED'}"
        digits = 0 if key == "max_processes" else 1
        lines.append(f"| {label} | {med['sab']:.{digits}f} | {med['nnU-Net']:.{digits}f} | {ratio:.2f} | {verdict} |")
    each = {t: [r for r in runs if r.tool == t] for t in TOOLS}
    lines.append("| wall time of each run, in order (s) | " + " | ".join(
        ", ".join(f"{r.wall_s:.1f}" if r.exit_code == 0 else "failed" for r in each[t]) for t in TOOLS) + " | | |")
    lines.append("| 1-minute load average before each run | " + " | ".join(
        ", ".join(f"{r.load_before:.1f}" for r in each[t]) for t in TOOLS) + " | | |")
    if failed:
        lines.append("\nFailed runs: " + "; ".join(f"{r.tool} repeat {r.repeat} (exit {r.exit_code}, {r.log})" for r in failed))
    return "\n".join(lines), verdicts


def report(all_runs: dict[str, list[Run]], info: dict, command: str, n_cases: dict[str, int], n_processes: int) -> str:
    parts = ["## Planning and preprocessing", "",
             f"Command: `{command}`", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB RAM, Python {info['python']}; "
             f"date {info['date']}; before the runs: `{info['uptime']}`", ""]
    for name, runs in all_runs.items():
        table, verdicts = dataset_table(runs)
        n_rep = max((r.repeat for r in runs), default=0)
        parts += [f"### {name} ({n_cases[name]} training cases, {n_rep} repeats, -np {n_processes})", "", table, "",
                  "Goals (wall <= 0.5x, memory <= 1.0x): " + ", ".join(f"{k} {'met' if v else 'missed'}"
                                                                      for k, v in verdicts.items()), ""]
    return "\n".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nnunet-bin", type=Path, default=Path("/work/nnunet_venv/bin"),
                   help="folder holding nnUNetv2_plan_and_preprocess")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="processes for every step of both tools")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--spine", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/Dataset001_SpineVB3",
                   help="a real raw dataset named DatasetNNN_Name (skipped when absent)")
    p.add_argument("--phantoms", type=int, default=20, help="phantom cases (0: no phantom cohort)")
    p.add_argument("--out", type=Path, default=Path("/tmp/sabnet_bench_plan_and_preprocess"),
                   help="phantom cohort, logs, runs.csv and plan_and_preprocess.md")
    p.add_argument("--pss-interval", type=float, default=1.0, help="seconds between PSS samples (0: none)")
    p.add_argument("--keep", action="store_true", help="keep each run's preprocessed output under <out>/work")
    args = p.parse_args(argv)
    command = "python " + shlex.join(["benchmarks/plan_and_preprocess.py"] + sys.argv[1:])
    if not (args.nnunet_bin / "nnUNetv2_plan_and_preprocess").exists():
        sys.exit(f"{args.nnunet_bin}/nnUNetv2_plan_and_preprocess not found: pip install nnunetv2 into a separate "
                 "environment and give its bin folder with --nnunet-bin")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    datasets = []
    if args.spine.is_dir() and (args.spine / "dataset.json").is_file():
        if not DATASET_NAME.match(args.spine.resolve().name):
            sys.exit(f"{args.spine}: nnU-Net needs a raw folder named DatasetNNN_Name")
        datasets.append(args.spine.resolve())
    else:
        print(f"{args.spine}: not present, skipped")
    if args.phantoms > 0:
        datasets.append(phantom_cohort(args.out, args.phantoms, args.num_processes))
    info = machine()
    print(f"{info['cpu']}, {info['cores']} cores; {info['uptime']}")
    all_runs, n_cases = {}, {}
    for raw_dir in datasets:
        n_cases[raw_dir.name] = len(list((raw_dir / "labelsTr").glob("*")))
        all_runs[raw_dir.name] = benchmark_dataset(raw_dir, args)
    pd.DataFrame([asdict(r) for runs in all_runs.values() for r in runs]).to_csv(args.out / "runs.csv", index=False)
    text = report(all_runs, info, command, n_cases, args.num_processes)
    (args.out / "plan_and_preprocess.md").write_text(text + "\n")
    print("\n" + text + f"\nwritten: {args.out / 'plan_and_preprocess.md'}, {args.out / 'runs.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
