"""Write a cohort of synthetic MRI phantoms as an nnU-Net v2 raw dataset, with the truth about each case.

    <out_dir>/<dataset_name>/
        dataset.json           channel_names {"0": "MRI"}, labels (one id per bone name across
                               locations), numTraining, file_ending, case_metadata
        imagesTr/{case}_0000.nii.gz, labelsTr/{case}.nii.gz
        imagesTs/, labelsTs/   with n_test_cases
        phantom_truth.json     per case: split, subject, location, sequence, plane, slice_axis,
                               spacing, geometry, side, scale, anatomy parameters, bones shown;
                               "pairs": the rigid motion between the two scans of a paired subject

Subject i (cases first, then test cases) shows LOCATIONS[i % n_locations]; a training subject is
scanned in sequences[(i // n_locations) % n_sequences], the j-th test subject in
sequences[(j + j // n_locations) % n_sequences]; everything else is drawn from generators seeded
with (seed, i, ...), so a seed gives byte-identical arrays however many workers write them.
"""
from __future__ import annotations

import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from sabnet.errors import SabnetError
from sabnet.io.atomic import atomic_path, write_json
from sabnet.io.geometry import Geometry
from sabnet.io.image_io import write_image
from sabnet.paths import DATASET_NAME
from sabnet.phantoms.acquisition import PLANES, Placement, plan_geometry, render
from sabnet.phantoms.contrast import SEQUENCES
from sabnet.phantoms.locations import BONES, LOCATIONS, MIRRORABLE, build_anatomy, label_ids
from sabnet.phantoms.shapes import rotation

__all__ = ["LOCATIONS", "SEQUENCES", "PLANES", "BONES", "make_phantom_dataset", "make_phantom", "Phantom",
           "rigid_motion"]

FILE_ENDING = ".nii.gz"
MOTION_DEG, MOTION_MM = 5.0, 8.0   # paired scans: the subject turns up to this much about each axis and shifts


@dataclass(frozen=True)
class _Job:
    """Everything one worker needs to make one subject (one or two cases)."""

    index: int
    case_ids: tuple[str, ...]
    sequences: tuple[str, ...]
    location: str
    split: str
    seed: int
    planes: tuple[str, ...]
    in_plane_spacing_mm: tuple[float, float]
    slice_spacing_mm: tuple[float, float]
    in_plane_size: int
    n_slices: int | None
    permute_axes: bool
    label_ids: dict
    root: Path


def make_phantom_dataset(
    out_dir: Path,
    locations: Sequence[str] = LOCATIONS,
    sequences: Sequence[str] = ("T1",),
    n_cases: int = 10,
    seed: int = 0,
    *,
    n_test_cases: int = 0,
    paired: bool = False,
    planes: Sequence[str] = ("sagittal", "coronal", "axial", "oblique"),
    in_plane_spacing_mm: tuple[float, float] = (0.4, 1.0),
    slice_spacing_mm: tuple[float, float] = (2.5, 4.0),
    in_plane_size: int = 256,
    n_slices: int | None = None,
    permute_axes: bool = True,
    dataset_name: str = "Dataset900_Phantoms",
    n_workers: int = 1,
    progress: bool = False,
) -> Path:
    """Write `n_cases` training subjects (+ `n_test_cases` test subjects) to `out_dir/dataset_name`.

    paired: each subject is also scanned in the next sequence of `sequences` (the same one when
    only one is given) after a known rigid motion; its two cases are `<subject case>_1` and `_2`
    (so numTraining is 2 x n_cases); cases of one subject share `case_metadata[...]["subject"]`.
    planes: drawn per case; "oblique" tilts a cardinal plane 15-35 degrees. in_plane_spacing_mm,
    slice_spacing_mm: ranges drawn per case (equal bounds fix them). in_plane_size: about this many
    voxels per in-plane side. n_slices: None covers the location (30-50). permute_axes: store
    some cases with the slice axis elsewhere than array axis 0. n_workers: processes (output does
    not depend on it). The dataset is assembled in a temporary folder and moved into place.
    Returns the dataset folder.
    """
    _check(locations, sequences, n_cases, n_test_cases, planes, in_plane_spacing_mm, slice_spacing_mm,
           in_plane_size, n_slices, dataset_name)
    dataset_dir = Path(out_dir) / dataset_name
    ids = label_ids(locations)
    with atomic_path(dataset_dir) as tmp:
        jobs = _jobs(tmp, locations, sequences, n_cases, n_test_cases, paired, seed, planes, in_plane_spacing_mm,
                     slice_spacing_mm, in_plane_size, n_slices, permute_axes, ids)
        for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if n_test_cases else ()):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        pool = ProcessPoolExecutor(n_workers) if n_workers > 1 else None
        try:
            made = pool.map(_make_subject, jobs) if pool else map(_make_subject, jobs)
            results = list(tqdm(made, total=len(jobs), unit="subject", desc="phantoms", disable=not progress))
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)
        cases = {cid: entry for result in results for cid, entry in result["cases"].items()}
        pairs = [result["pair"] for result in results if result.get("pair")]
        write_json(tmp / "dataset.json", _dataset_json(dataset_name, ids, cases, locations, sequences, seed))
        write_json(tmp / "phantom_truth.json", {
            "generator": {"seed": seed, "locations": list(locations), "sequences": list(sequences),
                          "n_cases": n_cases, "n_test_cases": n_test_cases, "paired": paired, "planes": list(planes),
                          "in_plane_spacing_mm": list(in_plane_spacing_mm),
                          "slice_spacing_mm": list(slice_spacing_mm), "in_plane_size": in_plane_size,
                          "n_slices": n_slices, "permute_axes": permute_axes},
            "cases": cases,
            "pairs": pairs,
        })
    return dataset_dir


def _jobs(root, locations, sequences, n_cases, n_test_cases, paired, seed, planes, in_plane_spacing_mm,
          slice_spacing_mm, in_plane_size, n_slices, permute_axes, ids) -> list[_Job]:
    jobs = []
    for index in range(n_cases + n_test_cases):
        location = locations[index % len(locations)]
        k = _sequence_index(index, n_cases, len(locations), len(sequences))
        base = f"phantom_{index:03d}"
        if paired:
            case_ids, seqs = (f"{base}_1", f"{base}_2"), (sequences[k], sequences[(k + 1) % len(sequences)])
        else:
            case_ids, seqs = (base,), (sequences[k],)
        jobs.append(_Job(index, case_ids, seqs, location, "train" if index < n_cases else "test", seed, tuple(planes),
                         tuple(in_plane_spacing_mm), tuple(slice_spacing_mm), in_plane_size, n_slices, permute_axes,
                         ids, root))
    return jobs


def _sequence_index(index: int, n_cases: int, n_locations: int, n_sequences: int) -> int:
    """Training subjects see every location in one sequence before the next sequence; held-out
    subjects step through sequences as they step through locations, so even a few of them cover
    several sequences."""
    if index < n_cases:
        return (index // n_locations) % n_sequences
    j = index - n_cases
    return (j + j // n_locations) % n_sequences


@dataclass
class Phantom:
    """One synthetic scan in memory.

    image: int16 (array order); labels: uint8 bone labels (ids in `label_ids`); tissue: uint8
    `sabnet.phantoms.anatomy.Tissue` at voxel centres; geometry: where the voxels lie; slice_axis:
    the array axis the slices are stacked along; plane: the plane the slices were planned in.
    """

    image: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray
    geometry: Geometry
    slice_axis: int
    plane: str
    label_ids: dict[str, int]
    fine_labels: np.ndarray | None = None


def make_phantom(location: str = "knee", sequence: str = "T1", seed: int = 0, *, plane: str = "sagittal",
                 in_plane_spacing_mm: tuple[float, float] = (0.4, 1.0), slice_spacing_mm: tuple[float, float] = (2.5, 4.0),
                 in_plane_size: int = 256, n_slices: int | None = None, permute_axes: bool = False,
                 sub_slices: int = 1) -> Phantom:
    """One phantom scan in memory (no files): subject 0 of `seed` at `location`, in `plane`.

    Same meaning of the arguments as in `make_phantom_dataset`; labels use the ids of `location`
    alone (1..n in the order of BONES[location]). sub_slices (odd) > 1: also sample the labels
    that many times per slice (`Phantom.fine_labels`), the truth a super-resolution is measured on.
    """
    _check([location], [sequence], 1, 0, [plane], in_plane_spacing_mm, slice_spacing_mm, in_plane_size, n_slices,
           "Dataset900_Phantoms")
    ids = label_ids([location])
    anatomy, placement, _, _ = _subject(location, seed, 0)
    scan_rng = np.random.default_rng([seed, 0, 1])
    geometry, slice_axis = plan_geometry(scan_rng, plane, anatomy, placement, in_plane_spacing_mm, slice_spacing_mm,
                                         in_plane_size, n_slices, permute_axes)
    result = render(anatomy, geometry, slice_axis, placement, sequence, ids, scan_rng)
    fine = None
    if sub_slices > 1:
        fine = render(anatomy, geometry.subdivided(slice_axis, sub_slices), slice_axis, placement, sequence, ids,
                      np.random.default_rng([seed, 0, 3])).labels
    return Phantom(result.image, result.labels, result.tissue, geometry, slice_axis, plane, ids, fine)


def _subject(location: str, seed: int, index: int):
    """(anatomy, placement in the scanner, scale, mirrored) of subject `index`."""
    rng = np.random.default_rng([seed, index, 0])
    anatomy = build_anatomy(location, rng)
    scale = float(rng.uniform(0.92, 1.08))
    mirror = bool(MIRRORABLE[location] and rng.random() < 0.5)
    return anatomy, Placement.draw(rng, scale, mirror), scale, mirror


def _make_subject(job: _Job) -> dict:
    """Make and write the case(s) of one subject; return their truth entries (and the pair's motion)."""
    anatomy, placement, scale, mirror = _subject(job.location, job.seed, job.index)
    scan_rng = np.random.default_rng([job.seed, job.index, 1])
    plane = str(scan_rng.choice(job.planes))
    geometry, slice_axis = plan_geometry(scan_rng, plane, anatomy, placement, job.in_plane_spacing_mm,
                                         job.slice_spacing_mm, job.in_plane_size, job.n_slices, job.permute_axes)
    subject = f"subject_{job.index:03d}"
    common = {"split": job.split, "subject": subject, "location": job.location, "plane": plane,
              "slice_axis": slice_axis, "side": ("left" if mirror else "right") if MIRRORABLE[job.location] else "midline",
              "scale": scale, "anatomy": _plain(anatomy.params)}
    out = {"cases": {}}
    placements, rngs = [placement], [scan_rng]
    if len(job.case_ids) == 2:
        motion_rng = np.random.default_rng([job.seed, job.index, 2])
        centre = geometry.index_to_world((np.asarray(geometry.shape, dtype=float)[None] - 1) / 2)[0]
        motion = rigid_motion(motion_rng.uniform(-MOTION_DEG, MOTION_DEG, 3), motion_rng.uniform(-MOTION_MM, MOTION_MM, 3),
                              centre)
        placements.append(placement.moved(np.asarray(motion["transform"]["matrix"]),
                                          np.asarray(motion["transform"]["offset_mm"])))
        rngs.append(motion_rng)
        out["pair"] = {"subject": subject, "first": job.case_ids[0], "second": job.case_ids[1], **motion}
    images, labels = ("imagesTr", "labelsTr") if job.split == "train" else ("imagesTs", "labelsTs")
    for case_id, sequence, where, rng in zip(job.case_ids, job.sequences, placements, rngs):
        result = render(anatomy, geometry, slice_axis, where, sequence, job.label_ids, rng)
        write_image(result.image, geometry, job.root / images / f"{case_id}_0000{FILE_ENDING}")
        write_image(result.labels, geometry, job.root / labels / f"{case_id}{FILE_ENDING}")
        present = np.flatnonzero(np.bincount(result.labels.ravel(), minlength=256))
        out["cases"][case_id] = {**common, "sequence": sequence, **_spacing(geometry, slice_axis),
                                 "geometry": geometry.to_dict(),
                                 "bones": [b for b in BONES[job.location] if job.label_ids[b] in present]}
    return out


def rigid_motion(rotation_deg, translation_mm, center_mm) -> dict:
    """The truth record of a rigid motion about `center_mm` (world LPS, mm).

    x2 = R (x1 - c) + c + t with R = Rz Ry Rx (angles `rotation_deg` about the world x, y, z axes),
    i.e. SimpleITK's Euler3DTransform(c, rx, ry, rz, t) with SetComputeZYX(True).
    """
    rx, ry, rz = (float(a) for a in rotation_deg)
    turn = rotation((0, 0, 1), rz) @ rotation((0, 1, 0), ry) @ rotation((1, 0, 0), rx)
    c, t = np.asarray(center_mm, dtype=float), np.asarray(translation_mm, dtype=float)
    offset = c + t - turn @ c
    return {
        "rotation_deg": [rx, ry, rz],
        "translation_mm": t.tolist(),
        "center_mm": c.tolist(),
        "transform": {
            "maps": "world position (LPS, mm) of a point of the subject in the first case -> its position in the "
                    "second case: x2 = matrix @ x1 + offset_mm",
            "matrix": turn.tolist(),
            "offset_mm": offset.tolist(),
            "itk": "sitk.Euler3DTransform(center_mm, *radians(rotation_deg), translation_mm) with "
                   "SetComputeZYX(True) is the same map; resample the first case onto the second with its inverse",
        },
    }


def _spacing(geometry: Geometry, slice_axis: int) -> dict:
    spacing = list(geometry.axis_spacing_mm)
    return {"axis_spacing_mm": spacing, "slice_spacing_mm": spacing[slice_axis],
            "in_plane_spacing_mm": min(s for a, s in enumerate(spacing) if a != slice_axis)}


def _dataset_json(name, ids, cases, locations, sequences, seed) -> dict:
    training = {c: e for c, e in cases.items() if e["split"] == "train"}
    meta = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, **ids},
        "numTraining": len(training),
        "file_ending": FILE_ENDING,
        "name": DATASET_NAME.match(name).group(2),
        "description": f"synthetic MRI phantoms of {', '.join(locations)} ({', '.join(sequences)}), seed {seed}, "
                       "made by sabnet.phantoms; truth in phantom_truth.json",
        "case_metadata": {c: {"sequence": e["sequence"], "location": e["location"], "subject": e["subject"]}
                          for c, e in cases.items()},
    }
    if len({e["sequence"] for e in cases.values()}) == 1:
        meta["sequence"] = next(iter(cases.values()))["sequence"]
    if len(set(locations)) == 1:
        meta["location"] = locations[0]
    return meta


def _plain(params: dict) -> dict:
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in params.items()}


def _check(locations, sequences, n_cases, n_test_cases, planes, in_plane_spacing_mm, slice_spacing_mm,
           in_plane_size, n_slices, dataset_name) -> None:
    """SabnetError for arguments a user can get wrong."""
    for what, given, known in (("location", locations, LOCATIONS), ("sequence", sequences, SEQUENCES),
                               ("plane", planes, PLANES)):
        if not given:
            raise SabnetError(f"no {what} given; choose from {', '.join(known)}")
        unknown = [g for g in given if g not in known]
        if unknown:
            raise SabnetError(f"unknown {what} {', '.join(map(str, unknown))}; choose from {', '.join(known)}")
    if n_cases < 1 or n_test_cases < 0:
        raise SabnetError(f"need at least one case (got {n_cases}) and no negative test cases (got {n_test_cases})")
    for what, bounds in (("in-plane spacing", in_plane_spacing_mm), ("slice spacing", slice_spacing_mm)):
        if len(bounds) != 2 or min(bounds) <= 0:
            raise SabnetError(f"{what} range {tuple(bounds)} mm: give two positive bounds (min, max)")
    if in_plane_size < 16 or (n_slices is not None and n_slices < 2):
        raise SabnetError(f"in-plane size {in_plane_size} / n_slices {n_slices}: need at least 16 voxels per side "
                          "and 2 slices")
    if not DATASET_NAME.match(dataset_name) or not re.fullmatch(r"[\w.-]+", dataset_name):
        raise SabnetError(f"dataset name {dataset_name!r}: use the nnU-Net form DatasetNNN_Name, e.g. Dataset900_Phantoms")
