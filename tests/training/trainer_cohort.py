"""A tiny phantom cohort, planned and preprocessed once per test session, with its model shrunk
for speed (sab_tiny at 64 px with two encoder blocks); shared by the trainer tests.

Each test gets its own copy of the preprocessed folder under its own SABNET roots (see
tests/conftest.py), so tests never see each other's splits or results.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from sabnet.model.config import ModelConfig
from sabnet.paths import Roots, resolve_dataset
from sabnet.planning.plans import load_plan, save_plan

NAME = "Dataset970_TrainerPhantoms"
_BUILT: dict[str, Path] = {}


def _build() -> Path:
    from sabnet.phantoms.cohort import make_phantom_dataset
    from sabnet.preprocessing.plan_and_preprocess import PlanningOptions, plan_and_preprocess

    base = Path(tempfile.mkdtemp(prefix="sabnet_trainer_cohort_"))
    atexit.register(shutil.rmtree, base, True)
    roots = Roots(base / "raw", base / "preprocessed", base / "results")
    raw = make_phantom_dataset(base / "phantoms" / NAME, locations=("knee",), sequences=("T1", "T2"), n_cases=6, seed=11,
                               planes=("sagittal",), in_plane_size=64, n_slices=8, dataset_name=NAME)
    ref = resolve_dataset(raw, roots)
    plan_and_preprocess(ref, PlanningOptions(), n_workers=1)
    plan = load_plan(ref.preprocessed_dir)
    planned = plan.model
    plan.model = ModelConfig.for_variant(
        "sab_tiny", 64, encoder_depth=2, encoder_global_attn_indexes=[1], depth_channels=[4, 8],
        **{k: planned[k] for k in ("in_channels", "n_outputs", "output_mode", "n_labels", "depth_volume_shape",
                                   "depth_neighbourhood_slices")}).to_dict()
    t = plan.training
    t.batch_size, t.epochs, t.iterations_per_epoch, t.stage2_epochs, t.validation_slices = 4, 2, 4, 1, 8
    save_plan(plan, ref.preprocessed_dir)
    return ref.preprocessed_dir


def tiny_cohort(preprocessed: bool = True) -> Path:
    """The raw dataset folder of the session's cohort (give it to -d); with `preprocessed`, its
    preprocessed folder is first copied into this test's preprocessed root (SABNET_PREPROCESSED)."""
    if "preprocessed" not in _BUILT:
        _BUILT["preprocessed"] = _build()
    source = _BUILT["preprocessed"]
    if preprocessed:
        shutil.copytree(source, Path(os.environ["SABNET_PREPROCESSED"]) / NAME)
    return Path((source / "raw_location.txt").read_text().strip())


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Train in-process with one thread (as the subprocesses do): on two shared cores, OpenMP
    threads competing with other processes make a step tens of times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_sab_train(args: list[str], log: Path, torchrun_processes: int = 0, **env_overrides: str) -> subprocess.Popen:
    """Start sab_train (or torchrun with that many processes) in a subprocess with one thread per
    process; its output goes to `log`. Returns the running process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **env_overrides)
    if torchrun_processes:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={torchrun_processes}", "-m", "sabnet.cli.train", *args]
    else:
        command = [sys.executable, "-m", "sabnet.cli.train", *args]
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
