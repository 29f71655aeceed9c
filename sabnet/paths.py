"""Where sabnet reads and writes: the raw, preprocessed and results roots, and dataset look-up.

`SABNET_RAW`, `SABNET_PREPROCESSED` and `SABNET_RESULTS` select the roots. Without them, all
three live under `~/sabnet_data/` (or `$SABNET_HOME` when set).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sabnet.errors import SabnetError

DATASET_NAME = re.compile(r"^Dataset(\d{3,})_(.+)$")


@dataclass(frozen=True)
class Roots:
    raw: Path
    preprocessed: Path
    results: Path

    @classmethod
    def from_environment(cls) -> "Roots":
        home = Path(os.environ.get("SABNET_HOME", Path.home() / "sabnet_data")).expanduser()
        return cls(
            raw=Path(os.environ.get("SABNET_RAW", home / "raw")).expanduser(),
            preprocessed=Path(os.environ.get("SABNET_PREPROCESSED", home / "preprocessed")).expanduser(),
            results=Path(os.environ.get("SABNET_RESULTS", home / "results")).expanduser(),
        )

    def describe(self) -> str:
        """One line a command prints to say where it reads and writes."""
        return f"sabnet roots: raw={self.raw}  preprocessed={self.preprocessed}  results={self.results}"


@dataclass(frozen=True)
class DatasetRef:
    """A raw dataset found by id, name or path.

    name: folder name, used for the preprocessed and results folders ('Dataset001_SpineVB3').
    raw_dir: the raw dataset folder (holding dataset.json).
    """

    name: str
    raw_dir: Path
    roots: Roots

    @property
    def dataset_id(self) -> int | None:
        m = DATASET_NAME.match(self.name)
        return int(m.group(1)) if m else None

    @property
    def preprocessed_dir(self) -> Path:
        return self.roots.preprocessed / self.name

    @property
    def results_dir(self) -> Path:
        return self.roots.results / self.name


def resolve_dataset(spec: str | int | Path, roots: Roots | None = None) -> DatasetRef:
    """Find a dataset from an id (`1`), a name (`Dataset001_SpineVB3`) or a path to a raw folder.

    A path works from anywhere on disk; nothing is copied into the raw root. When a name or id
    is not in the raw root but a preprocessed folder of that name exists (a cohort planned from
    a path), that is found too.
    """
    roots = roots or Roots.from_environment()
    text = str(spec).strip()
    path = Path(text).expanduser()
    if path.is_dir() and (path / "dataset.json").is_file():
        return DatasetRef(path.resolve().name, path.resolve(), roots)
    if text.isdigit():
        name = _find_by_id(int(text), roots)
        return DatasetRef(name, _raw_dir_of(name, roots), roots)
    if os.sep in text or text.startswith("."):
        raise SabnetError(f"{text}: not a raw dataset folder (no dataset.json there)")
    return DatasetRef(text, _raw_dir_of(text, roots), roots)


def _find_by_id(dataset_id: int, roots: Roots) -> str:
    names = set()
    for root in (roots.raw, roots.preprocessed, roots.results):
        if root.is_dir():
            for entry in root.iterdir():
                m = DATASET_NAME.match(entry.name)
                if m and int(m.group(1)) == dataset_id and entry.is_dir():
                    names.add(entry.name)
    if not names:
        raise SabnetError(f"no dataset with id {dataset_id} under {roots.raw} (or the preprocessed/results roots); "
                          "give a dataset name, a path to the raw folder, or set SABNET_RAW")
    if len(names) > 1:
        raise SabnetError(f"dataset id {dataset_id} is ambiguous: {', '.join(sorted(names))}; give the full name")
    return names.pop()


def _raw_dir_of(name: str, roots: Roots) -> Path:
    """The raw folder of a named dataset; the raw path recorded at planning time when the
    cohort was planned from a folder outside the raw root."""
    candidate = roots.raw / name
    if (candidate / "dataset.json").is_file():
        return candidate
    recorded = roots.preprocessed / name / "raw_location.txt"
    if recorded.is_file():
        return Path(recorded.read_text(encoding="utf-8").strip())
    if (roots.preprocessed / name).is_dir() or (roots.results / name).is_dir():
        return candidate
    raise SabnetError(f"dataset {name} not found: no {candidate}/dataset.json; give its path, or set SABNET_RAW")
