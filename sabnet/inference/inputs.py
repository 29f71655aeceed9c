"""What `sab_predict -i` points at: one image, a folder of images (nnU-Net's `case_0000.nii.gz`
channel naming or plain file names), or a folder of DICOM series (one case per series)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sabnet.errors import SabnetError
from sabnet.io.dicom import series_ids
from sabnet.io.image_io import image_extension, strip_extension

CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class InputCase:
    """One case to predict: its channel sources (files, or a DICOM folder + series UID)."""

    case_id: str
    sources: tuple[Path, ...]
    output_extension: str
    series_uid: str | None = None


def _dicom_cases(root: Path) -> list[InputCase]:
    cases, taken = [], set()
    for folder, _, files in sorted(os.walk(root)):
        if not files:
            continue
        uids = series_ids(folder)
        for n, uid in enumerate(uids):
            rel = Path(folder).relative_to(root)
            base = "_".join(rel.parts) or root.name
            case_id = base if len(uids) == 1 else f"{base}_s{n + 1}"
            while case_id in taken:
                case_id += "_"
            taken.add(case_id)
            cases.append(InputCase(case_id, (Path(folder),), ".nii.gz", uid))
    return cases


def list_input_cases(path: Path | str, n_channels: int = 1) -> list[InputCase]:
    """The cases under `path`, sorted by id. Channel files are grouped by their `_XXXX` suffix
    when every file has one; otherwise each image file is one single-channel case."""
    path = Path(path)
    if not path.exists():
        raise SabnetError(f"{path}: input not found")
    if path.is_file():
        if not image_extension(path):
            raise SabnetError(f"{path}: not an image file (.nii.gz, .nii, .nrrd, .mha, .mhd) or a DICOM folder")
        return [InputCase(strip_extension(path), (path,), image_extension(path))]
    files = sorted(p for p in path.iterdir() if p.is_file() and image_extension(p) and not p.name.startswith("."))
    if not files:
        cases = _dicom_cases(path)  # one header scan per folder
        if cases:
            return cases
        raise SabnetError(f"{path}: holds no images (.nii.gz, .nii, .nrrd, .mha, .mhd) and no DICOM series")
    stems = [strip_extension(p) for p in files]
    if all(CHANNEL.match(s) for s in stems):
        groups: dict[str, dict[int, Path]] = {}
        for p, s in zip(files, stems):
            m = CHANNEL.match(s)
            groups.setdefault(m.group("case"), {})[int(m.group("channel"))] = p
        cases = []
        for case_id, channels in sorted(groups.items()):
            if sorted(channels) != list(range(n_channels)):
                raise SabnetError(f"{path}: case {case_id} has channels {sorted(channels)}; the model needs "
                                  f"{', '.join(f'_{c:04d}' for c in range(n_channels))}")
            ordered = tuple(channels[c] for c in range(n_channels))
            cases.append(InputCase(case_id, ordered, image_extension(ordered[0])))
        return cases
    if n_channels != 1:
        raise SabnetError(f"{path}: the model needs {n_channels} channels per case; name files case_0000, case_0001, ...")
    return [InputCase(s, (p,), image_extension(p)) for p, s in zip(files, stems)]
