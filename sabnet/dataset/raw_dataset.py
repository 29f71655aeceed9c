"""A raw cohort in nnU-Net v2's layout, with sabnet's optional extensions.

    dataset.json          channel_names, labels, numTraining, file_ending, optional `dataset`
                          file list; sabnet extensions: `sequence`, `location` (cohort-wide) and
                          `case_metadata` {case_id: {"sequence", "location", "subject"}}
    imagesTr/{case}_{0000}{file_ending}
    labelsTr/{case}{file_ending}
    imagesTs/{case}_{0000}{file_ending}
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from sabnet.errors import SabnetError
from sabnet.io.atomic import read_json

UNKNOWN = "unknown"
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class RawCase:
    """One case: its channel files (ordered 0000, 0001, ...), its label file, and what it shows."""

    case_id: str
    image_files: tuple[Path, ...]
    label_file: Path | None
    sequence: str = UNKNOWN
    location: str = UNKNOWN
    subject: str = ""

    def to_dict(self) -> dict:
        return {
            "case_id": self.case_id,
            "image_files": [str(p) for p in self.image_files],
            "label_file": str(self.label_file) if self.label_file else None,
            "sequence": self.sequence,
            "location": self.location,
            "subject": self.subject,
        }


@dataclass
class RawDataset:
    """The parsed dataset.json of a raw cohort and where its files are."""

    root: Path
    channel_names: dict[str, str]
    labels: dict[str, int]
    file_ending: str
    num_training: int
    sequence: str | None = None
    location: str | None = None
    case_metadata: dict[str, dict] = field(default_factory=dict)
    file_list: dict[str, dict] | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path | str) -> "RawDataset":
        """Parse `root/dataset.json`; a missing file or key raises SabnetError naming it."""
        root = Path(root)
        path = root / "dataset.json"
        meta = read_json(path)
        if not isinstance(meta, dict):
            raise SabnetError(f"{path}: must hold a JSON object")
        missing = [k for k in ("channel_names", "labels", "file_ending") if k not in meta]
        if missing:
            raise SabnetError(f"{path}: missing {', '.join(missing)} (nnU-Net v2 raw format: channel_names, labels, "
                              "numTraining, file_ending)")
        labels = meta["labels"]
        if not isinstance(labels, dict) or any(isinstance(v, (list, tuple)) for v in labels.values()):
            raise SabnetError(f"{path}: labels must map each name to one integer value (region labels are not supported)")
        try:
            labels = {str(k): int(v) for k, v in labels.items()}
        except (TypeError, ValueError):
            raise SabnetError(f"{path}: label values must be integers") from None
        if 0 not in labels.values():
            raise SabnetError(f"{path}: labels must declare background as 0")
        if len(set(labels.values())) != len(labels):
            raise SabnetError(f"{path}: two label names share one value")
        known = {"channel_names", "labels", "file_ending", "numTraining", "sequence", "location", "case_metadata", "dataset"}
        return cls(
            root=root,
            channel_names={str(k): str(v) for k, v in meta["channel_names"].items()},
            labels=labels,
            file_ending=str(meta["file_ending"]),
            num_training=int(meta.get("numTraining", 0)),
            sequence=meta.get("sequence"),
            location=meta.get("location"),
            case_metadata=dict(meta.get("case_metadata") or {}),
            file_list=meta.get("dataset"),
            extra={k: v for k, v in meta.items() if k not in known},
        )

    # ---- layout ---------------------------------------------------------------------------
    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    @property
    def foreground_labels(self) -> dict[str, int]:
        """Declared labels without background, ordered by value."""
        return {k: v for k, v in sorted(self.labels.items(), key=lambda kv: kv[1]) if v != 0}

    def image_file(self, case_id: str, channel: int, folder: str = "imagesTr") -> Path:
        return self.root / folder / f"{case_id}_{channel:04d}{self.file_ending}"

    def label_file(self, case_id: str) -> Path:
        return self.root / "labelsTr" / f"{case_id}{self.file_ending}"

    def case_ids(self, folder: str = "imagesTr") -> list[str]:
        """Case ids in `folder`, from the `dataset` file list when given, else from channel files."""
        if self.file_list is not None and folder == "imagesTr":
            return sorted(self.file_list)
        directory = self.root / folder
        if not directory.is_dir():
            return []
        ids = set()
        for entry in directory.iterdir():
            if entry.name.startswith(".") or not entry.name.endswith(self.file_ending):
                continue
            m = CHANNEL_SUFFIX.match(entry.name[: len(entry.name) - len(self.file_ending)])
            if m:
                ids.add(m.group("case"))
        return sorted(ids)

    # ---- cases ----------------------------------------------------------------------------
    def metadata(self, case_id: str) -> dict[str, str]:
        """Sequence, location and subject of a case: case_metadata, then cohort-wide, then unknown."""
        own = self.case_metadata.get(case_id) or {}
        return {
            "sequence": str(own.get("sequence") or self.sequence or UNKNOWN),
            "location": str(own.get("location") or self.location or UNKNOWN),
            "subject": str(own.get("subject") or case_id),
        }

    def case(self, case_id: str, folder: str = "imagesTr") -> RawCase:
        if self.file_list is not None and folder == "imagesTr" and case_id in self.file_list:
            entry = self.file_list[case_id]
            images = tuple(self._resolve(p) for p in entry.get("images", []))
            label = self._resolve(entry["label"]) if entry.get("label") else None
        else:
            images = tuple(self.image_file(case_id, c, folder) for c in range(self.n_channels))
            label = self.label_file(case_id) if folder == "imagesTr" else None
        return RawCase(case_id, images, label, **self.metadata(case_id))

    def training_cases(self) -> list[RawCase]:
        return [self.case(c) for c in self.case_ids("imagesTr")]

    def test_cases(self) -> list[RawCase]:
        return [self.case(c, "imagesTs") for c in self.case_ids("imagesTs")]

    def _resolve(self, p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() else self.root / path

    def to_json(self) -> dict:
        """dataset.json content (as it would be written)."""
        out = {
            "channel_names": self.channel_names,
            "labels": self.labels,
            "numTraining": self.num_training,
            "file_ending": self.file_ending,
        }
        if self.sequence:
            out["sequence"] = self.sequence
        if self.location:
            out["location"] = self.location
        if self.case_metadata:
            out["case_metadata"] = self.case_metadata
        if self.file_list is not None:
            out["dataset"] = self.file_list
        out.update(self.extra)
        return out
