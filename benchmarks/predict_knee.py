"""Prediction speed on a real knee DICOM series: `sab_predict` end to end against the compute floor
(the same tiles through the encoder alone), 3D mode against 2D mode, the latency of an interactive
point, and a hand/wrist QC picture beside the published SegmentAnyBone mask.

    pip install -e .[bench]      # psutil
    python benchmarks/predict_knee.py [--model-folder DIR] [--repeats 3] [--out DIR] [--write-docs]
        [--knee ../shared/data/knee_dess_dicom] [--hand ../shared/data/hand_wrist_mri] [--device cpu]

Without --model-folder, one fold of the default small variant is trained first (only the model's
speed matters for the knee). `--model knee` (default): planned on knee phantoms made with this
series' own geometry (in-plane size and spacing, slice spacing, sagittal), so the plan's input size
is what a cohort of such knees gets (sab_tiny at 512 px for 0.31 mm pixels), trained a few steps.
`--model demo`: the `sab_demo --out <out>/demo --minutes <--demo-minutes>` model (128 px phantoms),
which runs the knee at the demo's coarse spacing. Everything is measured in this one process, after one untimed warm-up of each kind:
- end-to-end: `sab_predict -i <knee> --mode 2d|3d` through the CLI's `main`: model loading, DICOM
  reading, preprocessing, prediction, the inverse and writing the NIfTI;
- floor: the same preprocessed tiles (preprocessed once, outside the timing) through `model.encode`
  alone, in batches of the size sab_predict uses; only the encoder calls are timed.
The order of the three rotates from repeat to repeat; medians are reported. Memory: this process's
RSS sampled every 10 ms by a thread (psutil) during each measurement; the peak, and the peak above
the RSS at the start of that measurement (what the measurement added). Short spikes between two
samples can be missed. After the timed repeats, one instrumented run of each mode splits the
end-to-end time into phases (wrappers around the pipeline's functions, which also see the reader
and writer threads of predict_cohort).

Interactive: `InteractiveSession.from_model_folder`, `open` the knee, one warm-up point, then
--points positive points on different slices (inside the automatic mask where there is one); the
time of each `add_point` (prompt -> updated slice mask on the input grid). cProfile of more points
when the median misses the goal (or with --profile).

Writes <out>/predict_knee.md (also printed), runs.csv, phases.csv, interactive.csv and
hand_wrist_qc.png. --write-docs puts the tables between markers in the "Prediction" section of
docs/benchmarks.md and the picture in docs/images/hand_wrist_qc.png.
Goals: end-to-end 2D <= 1.2x the floor; 3D <= 1.15x 2D; point -> slice mask < 50 ms.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import io
import os
import platform
import pstats
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
GOALS = {"2d_over_floor": 1.2, "3d_over_2d": 1.15, "point_ms": 50.0}
KINDS = ("2d", "floor", "3d")
MB = 1e6
BEGIN, END = "<!-- predict_knee.py: begin -->", "<!-- predict_knee.py: end -->"


class RssSampler(threading.Thread):
    """Peak RSS (bytes) of this process, sampled every `interval_s` until `stop` is set."""

    def __init__(self, interval_s: float = 0.01):
        super().__init__(daemon=True)
        self.process, self.interval_s, self.stop = psutil.Process(), interval_s, threading.Event()
        self.start_rss = self.peak_rss = self.process.memory_info().rss

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            self.stop.wait(self.interval_s)


def measured(fn) -> dict:
    """Run fn() once: wall seconds, peak RSS and peak above the starting RSS (MB), load before."""
    load = os.getloadavg()[0]
    sampler = RssSampler()
    sampler.start()
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    return {"wall_s": wall, "peak_rss_mb": sampler.peak_rss / MB,
            "added_rss_mb": (sampler.peak_rss - sampler.start_rss) / MB, "load_before": load}


# ---- the model ------------------------------------------------------------------------------------
def demo_model_folder(out: Path, minutes: float) -> Path:
    """Train one fold of the default small variant with sab_demo (once) and return its model folder."""
    results = out / "demo" / "sabnet_data" / "results" / "Dataset990_SabnetDemo"
    found = sorted(p.parent for p in results.glob("*/plans.json")) if results.is_dir() else []
    if not found or not list(found[0].glob("fold_0/checkpoint_final/model.pth")):
        command = [shutil.which("sab_demo") or "sab_demo", "--out", str(out / "demo"), "--minutes", str(minutes)]
        print("training the model first: " + shlex.join(command), flush=True)
        subprocess.run(command, check=True)
        found = sorted(p.parent for p in results.glob("*/plans.json"))
    return found[0]


def knee_model_folder(out: Path, knee: Path, steps: int) -> Path:
    """Plan (binary) one fold on 6 knee phantoms with the geometry of the `knee` series, train it
    `steps` steps per phase (its speed is what matters, not its accuracy); return its model folder."""
    import SimpleITK as sitk

    from sabnet.paths import Roots, resolve_dataset
    from sabnet.planning.plans import save_plan
    from sabnet.phantoms.cohort import make_phantom_dataset
    from sabnet.preprocessing.plan_and_preprocess import PlanningOptions, plan_and_preprocess
    from sabnet.training.run_training import TrainingOptions, train

    home = out / "knee_model"
    os.environ.update(SABNET_RAW=str(home / "raw"), SABNET_PREPROCESSED=str(home / "preprocessed"),
                      SABNET_RESULTS=str(home / "results"))
    results = home / "results" / "Dataset995_KneeGeometry"
    found = sorted(p.parents[2] for p in results.glob("*/fold_0/checkpoint_final/model.pth"))
    if found:
        return found[0]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(sorted(knee.iterdir())[0]))
    reader.ReadImageInformation()
    size, spacing = reader.GetSize(), reader.GetSpacing()
    # phantom sides vary by -15..+10 % around in_plane_size: 0.9 x keeps them within the series' size
    slice_mm = 1.5 if len(list(knee.iterdir())) > 1 else spacing[2]
    print(f"training a model on knee phantoms of {size[0]} px at {spacing[0]:.4f} mm, {slice_mm} mm slices", flush=True)
    if not (home / "raw" / "Dataset995_KneeGeometry" / "dataset.json").is_file():
        make_phantom_dataset(home / "raw", ("knee",), ("T1", "T2", "PD", "GRE"), 6, seed=7, planes=("sagittal",),
                             in_plane_spacing_mm=(spacing[0], spacing[0]), slice_spacing_mm=(slice_mm, slice_mm),
                             in_plane_size=int(0.9 * size[0]), dataset_name="Dataset995_KneeGeometry", n_workers=2)
    ref = resolve_dataset("Dataset995_KneeGeometry", Roots.from_environment())
    planned = plan_and_preprocess(ref, PlanningOptions(binary=True), n_workers=2)
    # a few steps of each phase: at 512 px one step of 2 slices takes 15 s here, validating 64 slices minutes
    planned.plan.training.validation_slices = 8
    save_plan(planned.plan, ref.preprocessed_dir)
    train(ref, 0, TrainingOptions(stage="all", epochs=1, iterations_per_epoch=steps, final_validation=False),
          log=lambda line: None)
    return sorted(p.parents[2] for p in results.glob("*/fold_0/checkpoint_final/model.pth"))[0]


def predict_argv(folder: Path, image: Path, output: Path, mode: str, device: str, extra: list[str]) -> list[str]:
    """sab_predict arguments for a model folder <results>/<dataset>/<plan> (SABNET_RESULTS is set)."""
    return ["-i", str(image), "-o", str(output), "-d", folder.parent.name, "-p", folder.name, "--mode", mode,
            "--device", device, "--overwrite", *extra]


def sab_predict(argv: list[str]) -> str:
    """Run sab_predict's main in this process, its output captured; exits on failure."""
    from sabnet.cli.predict import main

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        code = main(argv)
    if code:
        sys.exit(f"sab_predict {shlex.join(argv)} failed:\n{captured.getvalue()}")
    return captured.getvalue()


# ---- knee: end to end and floor -----------------------------------------------------------------
class Floor:
    """The knee's preprocessed tiles, stacked into encoder batches once; `run` times only encoding."""

    def __init__(self, folder: Path, knee: Path, device: str):
        from sabnet.inference.inputs import list_input_cases
        from sabnet.inference.model_folder import load_ensemble
        from sabnet.inference.predict_cohort import read_case
        from sabnet.inference.predict_image import preprocess_for_prediction
        from sabnet.model.case_predictor import case_tiles
        from sabnet.model.depth_branch import pad_to_input

        plan, self.models, _ = load_ensemble(folder, None, "final", device, "2d")
        self.batch_size = max(plan.training.batch_size, 4)  # what sab_predict uses without --batch-size
        channels, geometry, sequence = read_case(list_input_cases(knee)[0])
        image = preprocess_for_prediction(channels, geometry, plan, sequence=sequence).image
        size = self.models[0].config.image_size
        tiles = case_tiles(image.shape[0], image.shape[2], image.shape[3], size)
        crops = [pad_to_input(torch.from_numpy(np.ascontiguousarray(
            image[t.slice_index, :, t.row:t.row + size, t.col:t.col + size]))[None].float(), size)[0] for t in tiles]
        self.batches = [torch.stack(crops[i:i + self.batch_size]).to(device) for i in range(0, len(crops), self.batch_size)]
        self.device, self.n_tiles, self.shape, self.size = device, len(tiles), image.shape, size
        self.plane, self.variant = plan.preprocessing.majority_plane, plan.model.get("variant")

    @torch.inference_mode()
    def run(self) -> None:
        for model in self.models:
            for batch in self.batches:
                model.encode(batch)
        if self.device == "cuda":
            torch.cuda.synchronize()


def knee_repeats(args, folder: Path, floor: Floor) -> pd.DataFrame:
    """One warm-up of each kind, then args.repeats rounds in rotating order."""
    def once(kind: str, repeat: int) -> dict:
        if kind == "floor":
            row = measured(floor.run)
        else:
            target = args.out / "work" / f"knee_{kind}_{repeat}"
            shutil.rmtree(target, ignore_errors=True)
            row = measured(lambda: sab_predict(predict_argv(folder, args.knee, target, kind, args.device, [])))
            shutil.rmtree(target, ignore_errors=True)
        print(f"  {kind:5s} repeat {repeat}: {row['wall_s']:.2f} s, peak RSS {row['peak_rss_mb']:.0f} MB "
              f"(+{row['added_rss_mb']:.0f}), load {row['load_before']:.2f}", flush=True)
        return {"kind": kind, "repeat": repeat, **row}

    rows = [once(kind, 0) for kind in KINDS]  # warm-up: lazy imports, first-call allocations
    for r in range(1, args.repeats + 1):
        rows += [once(kind, r) for kind in KINDS[r % 3:] + KINDS[:r % 3]]
    return pd.DataFrame(rows)


PHASES = [  # (phase, module, attribute): the function whose time is the phase's
    ("load model", "sabnet.inference.model_folder", "load_ensemble"),
    ("read DICOM", "sabnet.inference.predict_cohort", "read_case"),
    ("preprocess", "sabnet.inference.predict_cohort", "preprocess_for_prediction"),
    ("predict: all", "sabnet.model.case_predictor", "EnsemblePredictor.predict"),
    ("predict: encoder", "sabnet.model.sab_model", "SABModel.encode"),
    ("predict: decode + upsample", "sabnet.model.case_predictor", "EnsemblePredictor.decode_tiles"),
    ("predict: depth net (3D)", "sabnet.model.sab_model", "SABModel.depth_probabilities"),
    ("predict: slice attention (3D)", "sabnet.model.sab_model", "SABModel.slice_attention"),
    ("inverse to input grid", "sabnet.inference.predict_cohort", "probabilities_to_original"),
    ("write NIfTI", "sabnet.inference.predict_cohort", "write_image"),
]


@contextlib.contextmanager
def phase_timers():
    """Wrap each PHASES function so that its calls add to a total (seconds); originals restored after."""
    import importlib

    totals, lock, restore = {name: 0.0 for name, _, _ in PHASES}, threading.Lock(), []
    for name, module, attribute in PHASES:
        owner = importlib.import_module(module)
        *path, leaf = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, leaf)

        def wrapper(*a, _original=original, _name=name, **k):
            start = time.perf_counter()
            try:
                return _original(*a, **k)
            finally:
                with lock:
                    totals[_name] += time.perf_counter() - start
        setattr(owner, leaf, wrapper)
        restore.append((owner, leaf, original))
    try:
        yield totals
    finally:
        for owner, leaf, original in restore:
            setattr(owner, leaf, original)


def knee_phases(args, folder: Path) -> pd.DataFrame:
    """One instrumented end-to-end run per mode: seconds per phase, and the rest."""
    rows = []
    for mode in ("2d", "3d"):
        target = args.out / "work" / f"knee_{mode}_phases"
        with phase_timers() as totals:
            start = time.perf_counter()
            sab_predict(predict_argv(folder, args.knee, target, mode, args.device, []))
            total = time.perf_counter() - start
        shutil.rmtree(target, ignore_errors=True)
        top = ("load model", "read DICOM", "preprocess", "predict: all", "inverse to input grid", "write NIfTI")
        inner = ("predict: encoder", "predict: decode + upsample", "predict: depth net (3D)", "predict: slice attention (3D)")
        totals["predict: tiling, accumulation (rest)"] = totals["predict: all"] - sum(totals[k] for k in inner)
        totals["CLI, listing inputs, threads (rest)"] = total - sum(totals[k] for k in top)
        totals["total"] = total
        rows += [{"mode": mode, "phase": k, "seconds": v} for k, v in totals.items()]
    return pd.DataFrame(rows)


# ---- interactive --------------------------------------------------------------------------------
def interactive(args, folder: Path) -> tuple[pd.DataFrame, float, str]:
    """(per-point times, seconds to open and encode the volume, cProfile summary or '')."""
    from scipy import ndimage

    from sabnet.inference.interactive import InteractiveSession
    from sabnet.io.image_io import read_image
    from sabnet.planning.slicing import slicing_for

    session = InteractiveSession.from_model_folder(folder, device=args.device)
    array, geometry = read_image(args.knee)
    start = time.perf_counter()
    labels = session.open((array, geometry))
    open_s = time.perf_counter() - start
    axis = slicing_for(geometry, session.plan.preprocessing.majority_plane).slice_axis
    n = array.shape[axis]
    slices = np.unique(np.linspace(n * 0.1, n * 0.9, 2 * args.points + 2).round().astype(int))

    def point(s: int) -> tuple[int, int, int]:
        """IJK of the deepest pixel of the automatic mask on slice s (the slice centre if empty)."""
        mask = np.take(labels, s, axis=axis) > 0
        depth = ndimage.distance_transform_edt(mask) if mask.any() else None
        rc = np.unravel_index(int(np.argmax(depth)), mask.shape) if depth is not None else np.array(mask.shape) // 2
        index = [int(v) for v in rc]
        index.insert(axis, int(s))
        return tuple(index[::-1])

    session.add_point(point(slices[0]), 1)  # warm-up
    rows = []
    for s in slices[1:args.points + 1]:
        position = point(s)
        start = time.perf_counter()
        session.add_point(position, 1)
        rows.append({"slice": int(s), "ijk": position, "ms": (time.perf_counter() - start) * 1000})
    times = pd.DataFrame(rows)
    summary = ""
    if args.profile or times["ms"].median() >= GOALS["point_ms"]:
        profiler = cProfile.Profile()
        profiler.enable()
        for s in slices[args.points + 1:]:
            session.add_point(point(s), 1)
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
        summary = text.getvalue()
    return times, open_s, summary


# ---- hand / wrist -------------------------------------------------------------------------------
def hand_wrist(args, folder: Path, picture: Path) -> dict:
    """sab_predict --qc on the hand, and the picture: sabnet's contours (top row) and the published
    model's (bottom row) on the same slices; Dice between the two bone masks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage import measure

    from sabnet.inference.qc import qc_slices
    from sabnet.io.atomic import atomic_path
    from sabnet.io.image_io import read_image
    from sabnet.planning.plans import load_plan
    from sabnet.planning.slicing import slicing_for

    image_path, published_path = args.hand / "hand_wrist.nii.gz", args.hand / "hand_wrist_segmentanybone_prediction.nrrd"
    target = args.out / "hand"
    results_root = os.environ.get("SABNET_RESULTS")
    os.environ["SABNET_RESULTS"] = str(folder.parent.parent)
    start = time.perf_counter()
    sab_predict(predict_argv(folder, image_path, target, "2d", args.device, ["--qc"]))
    seconds = time.perf_counter() - start
    if results_root is not None:
        os.environ["SABNET_RESULTS"] = results_root
    image, geometry = read_image(image_path)
    ours, published = (read_image(p) for p in (target / "hand_wrist.nii.gz", published_path))
    if ours[1].differences(geometry) or published[1].differences(geometry):
        sys.exit(f"{published_path}: not on the grid of {image_path}")
    ours, published = ours[0] > 0, published[0] > 0
    dice = 2 * (ours & published).sum() / max(ours.sum() + published.sum(), 1)
    axis = slicing_for(geometry, load_plan(folder).preprocessing.majority_plane).slice_axis
    slices = qc_slices((ours | published).astype(np.uint8), axis)
    in_plane = [a for a in range(3) if a != axis]
    aspect = geometry.axis_spacing_mm[in_plane[0]] / geometry.axis_spacing_mm[in_plane[1]]
    fig, axes = plt.subplots(2, len(slices), figsize=(3.2 * len(slices), 6.8), squeeze=False)
    for row, (mask, name, colour) in enumerate(((ours, "sabnet (demo model)", "tab:orange"),
                                                (published, "published SegmentAnyBone", "tab:cyan"))):
        for ax, s in zip(axes[row], slices):
            plane = np.take(image, s, axis=axis).astype(np.float32)
            low, high = np.percentile(plane, [1, 99.5])
            ax.imshow(plane, cmap="gray", vmin=low, vmax=max(high, low + 1e-6), aspect=aspect, interpolation="nearest")
            for contour in measure.find_contours(np.take(mask, s, axis=axis).astype(np.uint8), 0.5):
                ax.plot(contour[:, 1], contour[:, 0], color=colour, linewidth=1.0)
            ax.set_title(f"{name}, slice {s}", fontsize=8)
            ax.axis("off")
    fig.suptitle(f"hand_wrist.nii.gz: Dice between the two masks {dice:.3f} (the published mask is not ground truth)",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(picture) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return {"folder": folder, "dice": float(dice), "seconds": seconds, "sab_voxels": int(ours.sum()), "published_voxels": int(published.sum()),
            "slice_axis": axis, "slices": slices, "shape": image.shape}


# ---- report -------------------------------------------------------------------------------------
def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    import SimpleITK

    return (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 1e9:.1f} GB RAM, torch threads "
            f"{torch.get_num_threads()}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"SimpleITK {SimpleITK.Version.VersionString()}, numpy {np.__version__}")


def report(args, folder: Path, floor: Floor, runs: pd.DataFrame, phases: pd.DataFrame, points: pd.DataFrame,
           open_s: float, hand: dict, picture: str, started: str, load: tuple) -> str:
    timed = runs[runs.repeat > 0]
    med = timed.groupby("kind")[["wall_s", "peak_rss_mb", "added_rss_mb"]].median()
    r2d, r3d = med.wall_s["2d"] / med.wall_s["floor"], med.wall_s["3d"] / med.wall_s["2d"]
    ms = points["ms"]
    verdict = lambda ok: "met" if ok else "**missed**"
    names = {"2d": "end-to-end, 2D mode", "floor": "floor: encoder only", "3d": "end-to-end, 3D mode"}
    lines = [
        f"Command: `{shlex.join(['python', 'benchmarks/predict_knee.py', *sys.argv[1:]])}`",
        f"Model folder: `{folder}` (fold 0, {floor.variant} at {floor.size} px; sab_predict's batch of "
        f"{floor.batch_size} tiles).",
        f"Machine: {machine()}. Date: {started} to {datetime.datetime.now(datetime.timezone.utc):%H:%M} UTC. "
        f"Load average before the run: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} (1, 5, 15 min).",
        "",
        f"**Knee** (`{args.knee.name}`, 512 x 512 x 80 DICOM): preprocessed to {floor.shape[0]} slices of "
        f"{floor.shape[2]} x {floor.shape[3]} px, {floor.n_tiles} tiles of {floor.size} px. "
        f"{args.repeats} repeats after one warm-up each, order rotating; medians.",
        "",
        "| measurement | median wall (s) | each repeat (s) | warm-up (s) | peak RSS (MB) | added RSS (MB) | load before |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for kind in KINDS:
        own = runs[runs.kind == kind]
        each = ", ".join(f"{v:.2f}" for v in own[own.repeat > 0].wall_s)
        loads = ", ".join(f"{v:.1f}" for v in own[own.repeat > 0].load_before)
        lines.append(f"| {names[kind]} | {med.wall_s[kind]:.2f} | {each} | {own[own.repeat == 0].wall_s.iloc[0]:.2f} | "
                     f"{med.peak_rss_mb[kind]:.0f} | {med.added_rss_mb[kind]:.0f} | {loads} |")
    lines += [
        "", "| ratio | value | goal |", "|---|---:|---|",
        f"| end-to-end 2D / floor | {r2d:.2f} | <= {GOALS['2d_over_floor']}: {verdict(r2d <= GOALS['2d_over_floor'])} |",
        f"| end-to-end 3D / end-to-end 2D | {r3d:.2f} | <= {GOALS['3d_over_2d']}: {verdict(r3d <= GOALS['3d_over_2d'])} |",
        "", "Where the end-to-end time goes (one instrumented run per mode, seconds):", "",
        "| phase | 2D | 3D |", "|---|---:|---:|",
    ]
    table = phases.pivot_table(index="phase", columns="mode", values="seconds", sort=False)
    for phase, row in table.iterrows():
        lines.append(f"| {phase} | {row['2d']:.2f} | {row['3d']:.2f} |")
    lines += [
        "", f"**Interactive** (`InteractiveSession`, 2D mode): `open` (read, preprocess, encode every slice, "
        f"automatic labels) {open_s:.1f} s; then {len(ms)} points on different slices after one warm-up:", "",
        "| add_point, point -> updated slice mask | median (ms) | 90th percentile (ms) | max (ms) | goal |",
        "|---|---:|---:|---:|---|",
        f"| {len(ms)} points | {ms.median():.1f} | {ms.quantile(0.9):.1f} | {ms.max():.1f} | "
        f"< {GOALS['point_ms']:.0f} ms: {verdict(ms.median() < GOALS['point_ms'])} |",
        "", f"**Hand/wrist** (`hand_wrist.nii.gz`, array {' x '.join(map(str, hand['shape']))}, header 1 mm, identity): "
        f"model `{hand['folder']}`; `sab_predict --qc` {hand['seconds']:.1f} s. Dice between sabnet's bone mask and the published "
        f"SegmentAnyBone mask: {hand['dice']:.3f} ({hand['sab_voxels']} and {hand['published_voxels']} voxels). "
        "The published mask is another model's output, not ground truth.", "",
        f"![hand/wrist: sabnet (top) and the published model (bottom)]({picture})",
    ]
    return "\n".join(lines) + "\n"


def write_docs(section: str, docs: Path) -> None:
    """Put `section` between the markers of the "## Prediction" section (made when absent)."""
    from sabnet.io.atomic import atomic_path

    text = docs.read_text(encoding="utf-8")
    block = f"{BEGIN}\n{section}{END}"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + f"\n\n## Prediction\n\n{block}\n"
    with atomic_path(docs) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-folder", type=Path, help="trained model folder <results>/<dataset>/<plan> (default: train one)")
    p.add_argument("--hand-model-folder", type=Path,
                   help="model for the hand/wrist picture (default: the knee's; a briefly trained knee model "
                        "shows nothing there, give e.g. sab_demo's)")
    p.add_argument("--model", choices=["knee", "demo"], default="knee",
                   help="model to train when no --model-folder: planned on knee phantoms with the series' "
                        "geometry (default) or sab_demo's")
    p.add_argument("--train-steps", type=int, default=4, help="training steps per phase of the knee model (default 4)")
    p.add_argument("--demo-minutes", type=float, default=6.0, help="sab_demo budget when no --model-folder (default 6)")
    p.add_argument("--knee", type=Path, default=REPO.parent / "shared" / "data" / "knee_dess_dicom")
    p.add_argument("--hand", type=Path, default=REPO.parent / "shared" / "data" / "hand_wrist_mri")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--points", type=int, default=30, help="interactive points to time (default 30)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("/tmp/sabnet_bench_predict"))
    p.add_argument("--profile", action="store_true", help="cProfile interactive points even when the goal holds")
    p.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md and docs/images/hand_wrist_qc.png")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    for path in (args.knee, args.hand):
        if not path.exists():
            sys.exit(f"{path}: not found (real data under ../shared/data; give --knee / --hand)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model_folder:
        folder = args.model_folder.resolve()
    elif args.model == "knee":
        folder = knee_model_folder(args.out, args.knee, args.train_steps).resolve()
    else:
        folder = demo_model_folder(args.out, args.demo_minutes).resolve()
    os.environ["SABNET_RESULTS"] = str(folder.parent.parent)
    load, started = os.getloadavg(), f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d, %H:%M}"
    print(f"model {folder}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    floor = Floor(folder, args.knee, args.device)
    print(f"knee: {floor.n_tiles} tiles of {floor.size} px in batches of {floor.batch_size}", flush=True)
    runs = knee_repeats(args, folder, floor)
    phases = knee_phases(args, folder)
    print("interactive ...", flush=True)
    points, open_s, profile = interactive(args, folder)
    picture = REPO / "docs" / "images" / "hand_wrist_qc.png" if args.write_docs else args.out / "hand_wrist_qc.png"
    print("hand/wrist ...", flush=True)
    hand = hand_wrist(args, (args.hand_model_folder or folder).resolve(), picture)
    section = report(args, folder, floor, runs, phases, points, open_s, hand,
                     "images/hand_wrist_qc.png" if args.write_docs else str(picture), started, load)
    for name, table in (("runs", runs), ("phases", phases), ("interactive", points)):
        table.to_csv(args.out / f"{name}.csv", index=False, float_format="%.4f")
    (args.out / "predict_knee.md").write_text(section + ("\n```\n" + profile + "```\n" if profile else ""))
    if profile:
        print(profile)
    print(section)
    if args.write_docs:
        write_docs(section, REPO / "docs" / "benchmarks.md")
        print(f"updated {REPO / 'docs' / 'benchmarks.md'} and {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
