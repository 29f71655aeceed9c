"""Check a raw cohort before planning: every problem at once, each naming its file.

`verify_dataset(raw_dir)` reads dataset.json, lists imagesTr/labelsTr/imagesTs (or the
`dataset` file list), reads every image and label file once, and returns a
`VerificationReport`. Errors would make planning fail or train on wrong data; warnings are
worth knowing but do not block (empty label maps, the same image under two case ids).

Identical images are found as in `sabnet.dataset.duplicates`; `duplicate_groups` lists them for
the cross-validation split, which keeps each group in one fold.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sabnet.dataset.duplicates import group_duplicates
from sabnet.dataset.raw_dataset import CHANNEL_SUFFIX, RawDataset
from sabnet.dataset.verify_case import CaseTask, Problem, check_case, error, warning, without_path
from sabnet.errors import SabnetError
from sabnet.io.atomic import read_json
from sabnet.io.image_io import IMAGE_EXTENSIONS
from sabnet.parallel import map_cases

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")


@dataclass
class VerificationReport:
    """Everything `verify_dataset` found. duplicate_groups: training case ids whose images are
    identical, each group sorted, groups sorted by first id."""

    raw_dir: Path
    problems: list[Problem] = field(default_factory=list)
    duplicate_groups: list[list[str]] = field(default_factory=list)
    n_training: int = 0
    n_test: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    def to_dataframe(self) -> pd.DataFrame:
        """One row per problem: severity, case_id, file, message."""
        rows = [{"severity": p.severity, "case_id": p.case_id, "file": str(p.file) if p.file else None,
                 "message": p.message} for p in self.problems]
        return pd.DataFrame(rows, columns=["severity", "case_id", "file", "message"])

    def to_dict(self) -> dict:
        return {
            "raw_dir": str(self.raw_dir),
            "n_training": self.n_training,
            "n_test": self.n_test,
            "n_errors": len(self.errors),
            "n_warnings": len(self.warnings),
            "duplicate_groups": self.duplicate_groups,
            "problems": self.to_dataframe().to_dict(orient="records"),
        }


def case_id_problem(case_id: str) -> str | None:
    """Why `case_id` is unsafe to use in file names (path separators, '..', hidden, control
    characters), or None when it is safe."""
    if not case_id:
        return "case id is empty"
    if "/" in case_id or "\\" in case_id:
        return f"case id {case_id!r} contains a path separator"
    if ".." in case_id:
        return f"case id {case_id!r} contains '..'"
    if case_id.startswith("."):
        return f"case id {case_id!r} starts with '.' (a hidden file name)"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in case_id):
        return f"case id {case_id!r} contains control characters"
    return None


# ---- dataset.json -------------------------------------------------------------------------------
def _load_dataset_json(raw_dir: Path, problems: list[Problem]) -> RawDataset | None:
    path = raw_dir / "dataset.json"
    try:
        meta = read_json(path)
    except SabnetError as e:
        problems.append(error(path, None, without_path(e, path)))
        return None
    if not isinstance(meta, dict):
        problems.append(error(path, None, "must hold a JSON object"))
        return None
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        problems.append(error(path, None, f"missing key(s) {', '.join(missing)} (nnU-Net v2 raw format needs "
                                          f"{', '.join(REQUIRED_KEYS)})"))
        if any(k in missing for k in ("channel_names", "labels", "file_ending")):
            return None
    kinds = {"channel_names": (dict, "an object"), "labels": (dict, "an object"), "file_ending": (str, "a string"),
             "numTraining": (int, "an integer"), "case_metadata": (dict, "an object"), "dataset": (dict, "an object")}
    optional = ("case_metadata", "dataset")  # may be null
    wrong_type = [f"{k} must be {name}, not {meta[k]!r}" for k, (t, name) in kinds.items()
                  if k in meta and not isinstance(meta[k], t) and not (meta[k] is None and k in optional)]
    if wrong_type:
        problems.append(error(path, None, "; ".join(wrong_type)))
        return None
    try:
        dataset = RawDataset.load(raw_dir)
    except (SabnetError, TypeError, ValueError, AttributeError) as e:
        problems.append(error(path, None, without_path(e, path)))
        return None
    if dataset.file_ending.lower() not in IMAGE_EXTENSIONS:
        formats = ", ".join(IMAGE_EXTENSIONS)
        problems.append(error(path, None, f"file_ending {dataset.file_ending!r} is not a 3D image format sabnet "
                                          f"reads ({formats}); convert DICOM with sab_convert_dicom"))
        return None
    keys = sorted(dataset.channel_names)
    if not keys or keys != sorted(str(i) for i in range(len(keys))):
        problems.append(error(path, None, f"channel_names keys must be '0', '1', ... (one per channel); found {keys}"))
        return None
    return dataset


# ---- listing files ------------------------------------------------------------------------------
def _stem(name: str, ending: str) -> str | None:
    return name[: len(name) - len(ending)] if name.endswith(ending) and len(name) > len(ending) else None


def _scan_channels(dataset: RawDataset, folder: str, problems: list[Problem]) -> dict[str, dict[int, Path]]:
    """{case_id: {channel: file}} from the file names in `folder`; other entries are errors."""
    found: dict[str, dict[int, Path]] = {}
    directory = dataset.root / folder
    if not directory.is_dir():
        return found
    pattern = f"{{case}}_{{channel:04d}}{dataset.file_ending}"
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        stem = _stem(entry.name, dataset.file_ending)
        match = CHANNEL_SUFFIX.match(stem) if stem is not None else None
        if match is None:
            kind = "folder" if entry.is_dir() else "file"
            problems.append(error(entry, None, f"unexpected {kind} in {folder}: names must be {pattern} (file_ending "
                                               f"{dataset.file_ending!r} in dataset.json); move or rename it"))
            continue
        found.setdefault(match["case"], {})[int(match["channel"])] = entry
    return found


def _check_channels(dataset: RawDataset, folder: str, case_id: str, channels: dict[int, Path],
                    problems: list[Problem]) -> tuple[Path, ...]:
    """Report missing and undeclared channels; return the present declared channel files in order."""
    n = dataset.n_channels
    declared = ", ".join(f"{k}: {v}" for k, v in sorted(dataset.channel_names.items(), key=lambda kv: int(kv[0])))
    for channel in range(n):
        if channel not in channels:
            name = dataset.channel_names[str(channel)]
            problems.append(error(dataset.image_file(case_id, channel, folder), case_id,
                                  f"missing: channel {channel:04d} ({name}) of case {case_id}"))
    for channel in sorted(set(channels) - set(range(n))):
        problems.append(error(channels[channel], case_id,
                              f"channel {channel:04d} is not declared: dataset.json channel_names lists {n} "
                               f"channel(s) ({declared}); add it there or remove the file"))
    return tuple(channels[c] for c in range(n) if c in channels)


def _training_from_folders(dataset: RawDataset, problems: list[Problem], declared: frozenset[int]) -> list[CaseTask]:
    images_dir, labels_dir = dataset.root / "imagesTr", dataset.root / "labelsTr"
    cases = _scan_channels(dataset, "imagesTr", problems)
    label_files: dict[str, Path] = {}
    if labels_dir.is_dir():
        for entry in sorted(labels_dir.iterdir()):
            if entry.name.startswith("."):
                continue
            stem = _stem(entry.name, dataset.file_ending)
            if stem is None:
                problems.append(error(entry, None, f"unexpected file in labelsTr: names must be "
                                                   f"{{case}}{dataset.file_ending}; move or rename it"))
            else:
                label_files[stem] = entry
    elif cases:
        problems.append(error(labels_dir, None, "folder missing: every training case needs its label map here"))
    if not images_dir.is_dir() and (label_files or dataset.num_training):
        problems.append(error(images_dir, None, "folder missing: training images go here"))
    for stem, path in label_files.items():
        if stem not in cases:
            problems.append(error(path, stem, f"label map without images: no imagesTr/{stem}_0000"
                                              f"{dataset.file_ending}"))
    tasks = []
    for case_id, channels in sorted(cases.items()):
        files = _check_channels(dataset, "imagesTr", case_id, channels, problems)
        label = label_files.get(case_id)
        if label is None and labels_dir.is_dir():
            problems.append(error(dataset.label_file(case_id), case_id, f"missing: label map of case {case_id}"))
        tasks.append(CaseTask(case_id, "imagesTr", files, label, declared, len(files) == dataset.n_channels))
    return tasks


def _training_from_file_list(dataset: RawDataset, problems: list[Problem], declared: frozenset[int]) -> list[CaseTask]:
    json_path = dataset.root / "dataset.json"
    tasks = []
    for case_id, entry in sorted(dataset.file_list.items()):
        if (not isinstance(entry, dict) or not isinstance(entry.get("images"), list)
                or not all(isinstance(f, str) for f in entry["images"] + [entry.get("label") or ""])):
            problems.append(error(json_path, case_id, f"'dataset' entry {case_id!r} needs \"images\": [files, one "
                                                      f"per channel] and \"label\": file"))
            continue
        case = dataset.case(case_id)
        if len(case.image_files) != dataset.n_channels:
            problems.append(error(json_path, case_id, f"'dataset' entry {case_id!r} lists {len(case.image_files)} "
                                                      f"image(s) but channel_names declares {dataset.n_channels}"))
        present = []
        for path in case.image_files:
            if path.exists():
                present.append(path)
            else:
                problems.append(error(path, case_id, f"missing: image of case {case_id} (listed in dataset.json)"))
        label = case.label_file
        if label is None:
            problems.append(error(json_path, case_id, f"'dataset' entry {case_id!r} has no \"label\""))
        elif not label.exists():
            problems.append(error(label, case_id, f"missing: label map of case {case_id} (listed in dataset.json)"))
            label = None
        complete = len(present) == len(case.image_files) == dataset.n_channels
        tasks.append(CaseTask(case_id, "imagesTr", tuple(present), label, declared, complete))
    return tasks


def _test_cases(dataset: RawDataset, problems: list[Problem]) -> list[CaseTask]:
    tasks = []
    for case_id, channels in sorted(_scan_channels(dataset, "imagesTs", problems).items()):
        files = _check_channels(dataset, "imagesTs", case_id, channels, problems)
        tasks.append(CaseTask(case_id, "imagesTs", files, None, frozenset(), len(files) == dataset.n_channels))
    return tasks


# ---- the whole cohort ---------------------------------------------------------------------------
def verify_dataset(raw_dir: Path | str, n_workers: int = 1) -> VerificationReport:
    """Check every case of the raw cohort in `raw_dir`; reads each file once, writes nothing.

    Raises SabnetError only when `raw_dir` is not a folder; everything else is a Problem.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise SabnetError(f"{raw_dir}: not a folder; give a raw dataset folder holding dataset.json")
    report = VerificationReport(raw_dir)
    problems = report.problems
    dataset = _load_dataset_json(raw_dir, problems)
    if dataset is None:
        return report
    json_path = raw_dir / "dataset.json"
    dataset_json = read_json(json_path)
    declared = frozenset(dataset.labels.values())
    if dataset.file_list is not None:
        training = _training_from_file_list(dataset, problems, declared)
    else:
        training = _training_from_folders(dataset, problems, declared)
    test = _test_cases(dataset, problems)
    report.n_training, report.n_test = len(training), len(test)

    for task in training + test:
        reason = case_id_problem(task.case_id)
        if reason:
            where = task.image_files[0] if task.image_files else json_path
            problems.append(error(where, task.case_id, f"unsafe {reason}; rename the case"))
    if "numTraining" in dataset_json and dataset.num_training != len(training):
        problems.append(error(json_path, None, f"numTraining is {dataset.num_training} but {len(training)} training "
                                               "case(s) were found; correct numTraining"))
    if not training and not dataset.num_training:
        problems.append(warning(json_path, None, "no training cases: this cohort can be predicted on, not trained on"))
    known = {t.case_id for t in training + test}
    for case_id in sorted(set(dataset.case_metadata) - known):
        problems.append(warning(json_path, case_id, f"case_metadata names case {case_id!r}, which has no images"))

    items = [(f"{t.folder}/{t.case_id}", t) for t in training + test]
    outcomes = map_cases(check_case, items, n_workers=n_workers, desc="verifying")
    digests: dict[str, dict[str, str]] = {"imagesTr": {}, "imagesTs": {}}
    for (_, task), outcome in zip(items, outcomes):
        if outcome.error is not None:
            problems.append(error(task.image_files[0] if task.image_files else task.label_file, task.case_id,
                                  f"could not be checked: {outcome.error}"))
            continue
        case_problems, digest = outcome.result
        problems.extend(case_problems)
        if digest is not None:
            digests[task.folder][task.case_id] = digest
    first_file = {t.case_id: t.image_files[0] for t in training if t.image_files}
    report.duplicate_groups = group_duplicates(digests["imagesTr"])
    for group in report.duplicate_groups:
        for case_id in group[1:]:
            problems.append(warning(first_file[case_id], case_id,
                                    f"image identical to case {group[0]} ({first_file[group[0]].name}); "
                                     "identical cases are kept in one cross-validation fold"))
    by_digest = {d: c for c, d in sorted(digests["imagesTr"].items(), reverse=True)}
    for task in test:
        twin = by_digest.get(digests["imagesTs"].get(task.case_id))
        if twin is not None:
            problems.append(warning(task.image_files[0], task.case_id,
                                    f"test image identical to training case {twin}; results on it are not a fair test"))
    return report
