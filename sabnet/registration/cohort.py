"""Label transfer across a raw cohort: pair each subject's annotated scan with its scan in another
sequence, write the carried labels into labelsTr/, and keep a CSV report of every pair.

Pairs come from dataset.json's `case_metadata` (`pairs_by_sequence`: same subject and location,
one sequence to another) or from a JSON file (`read_pairs`: [{"moving": case, "fixed": case}]).
An existing label file is not overwritten (unless asked), and when the target has labels of its
own the report gives the Dice of the transfer against them: that is how a user checks the
transfer on a few doubly annotated subjects before trusting it on the rest.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from sabnet.dataset.raw_dataset import RawDataset
from sabnet.errors import SabnetError
from sabnet.io.atomic import atomic_path, read_json
from sabnet.registration.label_transfer import DEFAULT_MIN_QUALITY, transfer_labels

WRITTEN, REFUSED, CHECKED, SKIPPED = "written", "refused", "checked (labels exist)", "skipped"


@dataclass(frozen=True)
class TransferPair:
    """moving: the annotated case whose labels are carried; fixed: the case that receives them."""

    subject: str
    moving: str
    fixed: str


def pairs_by_sequence(dataset: RawDataset, from_sequence: str,
                      to_sequence: str) -> tuple[list[TransferPair], list[dict]]:
    """Pair, per subject and location, its one annotated `from_sequence` case with its one
    `to_sequence` case (sequence names compare case-insensitively).

    Returns (pairs, skipped) where skipped holds report rows for subjects that cannot be paired
    (no annotated source, several candidates).
    """
    if from_sequence.lower() == to_sequence.lower():
        raise SabnetError(f"--from-sequence and --to-sequence are both {from_sequence}; name two different sequences")
    groups: dict[tuple[str, str], dict[str, list[str]]] = {}
    for case_id in dataset.case_ids("imagesTr"):
        meta = dataset.metadata(case_id)
        sequence = meta["sequence"].lower()
        if sequence in (from_sequence.lower(), to_sequence.lower()):
            groups.setdefault((meta["subject"], meta["location"]), {"from": [], "to": []})[
                "from" if sequence == from_sequence.lower() else "to"].append(case_id)
    if not groups:
        known = sorted({dataset.metadata(c)["sequence"] for c in dataset.case_ids("imagesTr")})
        raise SabnetError(f"{dataset.root / 'dataset.json'}: no case in sequence {from_sequence} or {to_sequence} "
                          f"(sequences found: {', '.join(known)}); set `sequence` in case_metadata or give --pairs")
    pairs, skipped = [], []
    for (subject, location), found in sorted(groups.items()):
        annotated = [c for c in found["from"] if _label_exists(dataset, c)]
        if len(found["to"]) != 1 or len(annotated) != 1:
            why = (f"{len(annotated)} annotated {from_sequence} case(s) ({', '.join(found['from']) or 'none'}) and "
                   f"{len(found['to'])} {to_sequence} case(s) ({', '.join(found['to']) or 'none'}) at {location}; "
                   "need one of each (or give --pairs)")
            skipped.append({"subject": subject, "moving": ",".join(found["from"]), "fixed": ",".join(found["to"]),
                            "status": SKIPPED, "reason": why})
            continue
        pairs.append(TransferPair(subject, annotated[0], found["to"][0]))
    return pairs, skipped


def read_pairs(path: Path | str, dataset: RawDataset) -> list[TransferPair]:
    """Pairs from a JSON list of {"moving": annotated case id, "fixed": target case id}."""
    entries = read_json(path)
    if not isinstance(entries, list) or not all(isinstance(e, dict) and {"moving", "fixed"} <= set(e) for e in entries):
        raise SabnetError(f'{path}: must hold a list of {{"moving": case_id, "fixed": case_id}} objects '
                          "(moving: the annotated case; fixed: the case that receives its labels)")
    known = set(dataset.case_ids("imagesTr"))
    pairs = []
    for entry in entries:
        for key in ("moving", "fixed"):
            if entry[key] not in known:
                raise SabnetError(f"{path}: case {entry[key]!r} ({key}) is not in {dataset.root / 'imagesTr'}")
        subject = dataset.metadata(entry["fixed"])["subject"]
        pairs.append(TransferPair(subject, str(entry["moving"]), str(entry["fixed"])))
    return pairs


def transfer_cohort(dataset: RawDataset, pairs: list[TransferPair], report: Path, out_dir: Path | None = None,
                    min_quality: float = DEFAULT_MIN_QUALITY, overwrite: bool = False,
                    transforms_dir: Path | None = None, skipped: list[dict] | None = None,
                    progress: bool = True, refine: bool = True, super_resolve: bool = True) -> pd.DataFrame:
    """Transfer labels for every pair and write the `report` CSV (rewritten after each pair).

    out_dir: where the labels go, `{fixed case}{file_ending}` (default the dataset's labelsTr); an
    existing file there is kept unless `overwrite` (the pair is then only checked). When the
    target has labels of its own in the dataset, the report gives the Dice against them.
    transforms_dir: also write `{fixed case}.tfm` for each written pair. refine, super_resolve: as
    in `transfer_labels`. A pair that fails
    (unreadable file, no overlap) is reported and the others go on.
    Returns the report table, one row per pair (plus the `skipped` rows given).
    """
    out_dir = Path(out_dir) if out_dir is not None else dataset.root / "labelsTr"
    names = {v: k for k, v in dataset.labels.items()}
    rows = list(skipped or [])
    for pair in tqdm(pairs, desc="label transfer", unit="pair", disable=not progress):
        out = out_dir / f"{pair.fixed}{dataset.file_ending}"
        own = dataset.case(pair.fixed).label_file           # the target's own annotation, if it has one
        row = {"subject": pair.subject, "moving": pair.moving, "fixed": pair.fixed,
               "sequences": f"{dataset.metadata(pair.moving)['sequence']}->{dataset.metadata(pair.fixed)['sequence']}"}
        start = time.perf_counter()
        try:
            moving_labels = dataset.case(pair.moving).label_file
            if moving_labels is None or not moving_labels.is_file():
                raise SabnetError(f"{moving_labels or pair.moving}: the moving case has no label file")
            result = transfer_labels(
                dataset.case(pair.fixed).image_files[0], dataset.case(pair.moving).image_files[0], moving_labels,
                out if overwrite or not out.exists() else None, min_quality=min_quality,
                truth_labels=own if own is not None and own.is_file() else None,
                save_transform=transforms_dir / f"{pair.fixed}.tfm" if transforms_dir else None, refine=refine,
                super_resolve=super_resolve)
        except RuntimeError as e:        # ITK on a file it cannot handle: report it, go on with the others
            rows.append({**row, "status": SKIPPED, "reason": str(e).strip().splitlines()[-1]})
        except SabnetError as e:
            rows.append({**row, "status": SKIPPED, "reason": str(e)})
        else:
            status = WRITTEN if result.written else REFUSED if result.reason else CHECKED
            bones = result.quality.bone_sharpness
            worst = min(bones, key=bones.get) if bones else None
            row.update(status=status, reason=result.reason, quality=result.quality.value, nmi=result.quality.nmi,
                       sharpness=result.quality.sharpness, worst_bone=names.get(worst, worst),
                       worst_bone_sharpness=bones.get(worst), stage=result.registration.stage,
                       start=result.registration.start, coverage=result.coverage,
                       fine_slices=result.fine_slices, refined_voxels=result.refined_voxels,
                       labels_file=str(out) if result.written else "", seconds=round(time.perf_counter() - start, 1))
            for value, dice in result.dice.items():
                row[f"dice_{names.get(value, value)}"] = dice
            rows.append(row)
        _write_report(rows, report)
    _write_report(rows, report)
    return pd.DataFrame(rows)


def _label_exists(dataset: RawDataset, case_id: str) -> bool:
    label = dataset.case(case_id).label_file
    return label is not None and label.is_file()


def _write_report(rows: list[dict], report: Path) -> None:
    with atomic_path(report) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.4g")
