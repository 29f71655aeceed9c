"""DICOM series: reading a series folder, and what its tags say about sequence and body location."""
from __future__ import annotations

import re
from pathlib import Path

import SimpleITK as sitk

from sabnet.errors import SabnetError

TAGS = {
    "series_description": "0008|103e",
    "protocol_name": "0018|1030",
    "study_description": "0008|1030",
    "body_part_examined": "0018|0015",
    "repetition_time_ms": "0018|0080",
    "echo_time_ms": "0018|0081",
    "inversion_time_ms": "0018|0082",
    "scanning_sequence": "0018|0020",
    "sequence_name": "0018|0024",
    "modality": "0008|0060",
    "patient_id": "0010|0020",
    "study_uid": "0020|000d",
    "series_uid": "0020|000e",
    "series_number": "0020|0011",
}

# Order matters: the first pattern that matches a description wins.
SEQUENCE_PATTERNS = [
    ("STIR", r"stir|tirm|\bir\b|inversion"),
    ("PD", r"\bpd|proton|pdw|_pd|pd_"),
    ("T2", r"t2"),
    ("T1", r"t1"),
    ("GRE", r"\bgre|dess|flash|fl3d|ffe|medic|swi|gradient|vibe|space_gre"),
]
LOCATION_PATTERNS = [
    ("lumbar_spine", r"l-?spine|lumbar|lws|\bls\b|lspine"),
    ("spine", r"spine|vertebra|\bc-?spine|t-?spine|thoracic|cervical"),
    ("knee", r"knee|knie|genou"),
    ("hand", r"hand|wrist|finger|carpal"),
    ("hip", r"\bhip|pelvis|femoral head"),
    ("shoulder", r"shoulder|humer|schulter"),
    ("ankle", r"ankle|foot|calcane"),
    ("elbow", r"elbow"),
]


def series_ids(folder: Path | str) -> list[str]:
    """SeriesInstanceUIDs of the DICOM series directly inside `folder`."""
    return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def read_dicom_series(folder: Path | str, series_uid: str | None = None) -> tuple[sitk.Image, dict[str, str]]:
    """Read one DICOM series from `folder` as a 3D image, with the tags of its first slice.

    With several series in the folder, `series_uid` must say which; the error lists them.
    Returns (image, tags) where tags maps the names in `TAGS` to their string values.
    """
    folder = Path(folder)
    if series_uid is None:  # each scan of the folder reads every file's header: only when needed
        ids = series_ids(folder)
        if not ids:
            raise SabnetError(f"{folder}: no DICOM series found in this folder")
        if len(ids) > 1:
            raise SabnetError(f"{folder}: holds {len(ids)} DICOM series ({', '.join(ids)}); "
                              "give one series per folder, or convert them with sab_convert_dicom")
        series_uid = ids[0]
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid)
    if not files:
        raise SabnetError(f"{folder}: no DICOM series {series_uid} in this folder (were files moved?)")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise SabnetError(f"{folder}: DICOM series {series_uid} cannot be read ({str(e).strip().splitlines()[-1]})") from None
    if len(files) < 2:
        raise SabnetError(f"{folder}: DICOM series {series_uid} has a single slice; sabnet needs 3D volumes")
    tags = {}
    for name, key in TAGS.items():
        if reader.HasMetaDataKey(0, key):
            tags[name] = reader.GetMetaData(0, key).strip()
    return image, tags


def _number(text: str | None) -> float | None:
    try:
        return float(str(text).split("\\")[0])
    except (TypeError, ValueError):
        return None


def sequence_from_tags(tags: dict[str, str]) -> str:
    """MRI sequence (T1, T2, PD, STIR, GRE) from descriptions, else from TR/TE/TI; else 'unknown'.

    Timing rules (ms): TI in 80..300 -> STIR; TR < 100 -> GRE; TR < 1000 and TE < 30 -> T1;
    TR >= 1500 and TE >= 60 -> T2; TR >= 1500 and TE < 45 -> PD.
    """
    text = " ".join(tags.get(k, "") for k in ("series_description", "protocol_name", "sequence_name")).lower()
    for name, pattern in SEQUENCE_PATTERNS:
        if re.search(pattern, text):
            return name
    tr, te, ti = (_number(tags.get(k)) for k in ("repetition_time_ms", "echo_time_ms", "inversion_time_ms"))
    if ti is not None and 80 <= ti <= 300:
        return "STIR"
    if tr is None or te is None:
        return "unknown"
    if tr < 100:
        return "GRE"
    if tr < 1000 and te < 30:
        return "T1"
    if tr >= 1500 and te >= 60:
        return "T2"
    if tr >= 1500 and te < 45:
        return "PD"
    return "unknown"


def location_from_tags(tags: dict[str, str]) -> str:
    """Body location from BodyPartExamined, then the descriptions; else 'unknown'."""
    for key in ("body_part_examined", "series_description", "protocol_name", "study_description"):
        text = tags.get(key, "").lower()
        for name, pattern in LOCATION_PATTERNS:
            if text and re.search(pattern, text):
                return name
    body_part = tags.get("body_part_examined", "").strip().lower()
    return re.sub(r"[^a-z0-9]+", "_", body_part).strip("_") or "unknown"
