"""`sab_plan_and_preprocess`: verify, fingerprint, plan (or reuse an edited plan), preprocess."""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sabnet.dataset.raw_dataset import RawDataset
from sabnet.dataset.verify import VerificationReport, verify_dataset
from sabnet.errors import SabnetError
from sabnet.io.atomic import atomic_path, write_json
from sabnet.paths import DatasetRef
from sabnet.planning.fingerprint import extract_fingerprint, load_fingerprint, write_fingerprint
from sabnet.planning.planner import plan_cohort
from sabnet.planning.plans import PLANS_FILE, Plan, load_plan, save_plan
from sabnet.preprocessing.preprocess_dataset import PreprocessingReport, preprocess_dataset
from sabnet.preprocessing.store import PreprocessedStore


@dataclass
class PlanningOptions:
    """What the user asked the planner for (recorded beside the plan to notice a changed request)."""

    binary: bool = False
    sam_checkpoint: str | None = None
    memory_target_gb: float | None = None
    device: str = "cpu"
    variant: str | None = None

    def to_dict(self) -> dict:
        return {"binary": self.binary, "sam_checkpoint": self.sam_checkpoint,
                "memory_target_gb": self.memory_target_gb, "device": self.device, "variant": self.variant}


@dataclass
class PlanAndPreprocessResult:
    folder: Path
    plan: Plan
    plan_reused: bool
    fingerprint_table: pd.DataFrame
    verification: VerificationReport | None
    fingerprint_errors: list[tuple[str, str]] = field(default_factory=list)
    preprocessing: PreprocessingReport | None = None


def plan_and_preprocess(ref: DatasetRef, options: PlanningOptions, n_workers: int = 1, verify: bool = True,
                        replan: bool = False, plan_only: bool = False) -> PlanAndPreprocessResult:
    """Run the planning stage (and preprocessing unless `plan_only`) for one dataset."""
    folder = ref.preprocessed_dir
    folder.mkdir(parents=True, exist_ok=True)
    if ref.raw_dir.resolve() != (ref.roots.raw / ref.name).resolve():
        with atomic_path(folder / "raw_location.txt") as tmp:
            tmp.write_text(str(ref.raw_dir.resolve()) + "\n", encoding="utf-8")

    report = None
    if verify:
        report = verify_dataset(ref.raw_dir, n_workers=n_workers)
        if not report.ok:
            lines = "\n".join(f"  {p.file or ref.raw_dir}: {p.message}" for p in report.errors[:30])
            more = f"\n  ... and {len(report.errors) - 30} more" if len(report.errors) > 30 else ""
            raise SabnetError(f"{ref.raw_dir}: the dataset has {len(report.errors)} error(s); fix them "
                              f"(sab_verify_dataset -d {ref.raw_dir} lists them all):\n{lines}{more}")
        write_json(folder / "verification.json", report.to_dict())

    dataset = RawDataset.load(ref.raw_dir)
    fingerprint, fp_errors = extract_fingerprint(dataset, n_workers, previous=load_fingerprint(folder))
    table = write_fingerprint(fingerprint, folder)

    plan_path = folder / PLANS_FILE
    options_path = folder / "planner_options.json"
    reused = False
    if plan_path.is_file() and not replan:
        plan = load_plan(folder)
        old_options = _read_options(options_path)
        if plan.fingerprint_hash != fingerprint["hash"]:
            raise SabnetError(f"{plan_path}: was made for another version of this cohort (cases or images changed); "
                              "re-run with --replan to plan again (your edits are kept as plans.json.bak)")
        if old_options is not None and old_options != options.to_dict():
            raise SabnetError(f"{plan_path}: was made with other options ({old_options}); re-run with --replan "
                              "to plan with the new ones (the old plan is kept as plans.json.bak)")
        reused = True
    else:
        if plan_path.is_file():
            shutil.copy2(plan_path, folder / "plans.json.bak")
        plan = plan_cohort(fingerprint, binary=options.binary,
                           sam_checkpoint=Path(options.sam_checkpoint) if options.sam_checkpoint else None,
                           memory_target_gb=options.memory_target_gb, device=options.device,
                           variant=options.variant)
        save_plan(plan, folder)
        write_json(options_path, options.to_dict())

    result = PlanAndPreprocessResult(folder, plan, reused, table, report, fp_errors)
    if not plan_only:
        result.preprocessing = preprocess_dataset(dataset, plan, PreprocessedStore(folder), n_workers)
    return result


def _read_options(path: Path) -> dict | None:
    from sabnet.io.atomic import read_json

    return read_json(path) if path.is_file() else None
