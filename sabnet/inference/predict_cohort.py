"""`sab_predict` over many cases: reading and preprocessing the next case and writing the last one
overlap the current prediction; a failing case is reported and the rest finish; nothing
accumulates from one case to the next."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from sabnet.errors import SabnetError
from sabnet.inference.inputs import InputCase
from sabnet.inference.postprocessing import Postprocessing, apply_postprocessing
from sabnet.inference.prompt_coordinates import slice_prompts_for_case, to_array_index
from sabnet.inference.qc import write_qc_png
from sabnet.inference.series_naming import vertebra_series
from sabnet.inference.predict_image import preprocess_for_prediction
from sabnet.inference.zero_shot import zero_shot_plan
from sabnet.io.atomic import atomic_path
from sabnet.io.dicom import read_dicom_series, sequence_from_tags
from sabnet.io.geometry import Geometry
from sabnet.io.image_io import check_3d_scalar, read_image, write_image
from sabnet.model.case_predictor import EnsemblePredictor
from sabnet.planning.plans import Plan
from sabnet.preprocessing.inverse import probabilities_to_original


@dataclass
class PredictionSettings:
    """output_dir: where label maps go; mode: '2d' or '3d'; prompts: the prompts file's content, by
    case id; carry: follow each prompted object to the neighbouring slices; zero_shot_labels:
    {name: value} when pretrained weights segment the prompted objects alone (each image then gets
    its own plan, sabnet.inference.zero_shot); the other fields as sab_predict's flags say."""

    output_dir: Path
    mode: str = "2d"
    prompts: dict | None = None
    carry: bool = True
    save_probabilities: bool = False
    overwrite: bool = False
    qc: bool = False
    postprocessing: Postprocessing | None = None
    zero_shot_labels: dict[str, int] | None = None


@dataclass
class CohortReport:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def output_path(case: InputCase, settings: PredictionSettings) -> Path:
    return settings.output_dir / f"{case.case_id}{case.output_extension}"


def select_part(cases: list[InputCase], num_parts: int, part_id: int) -> list[InputCase]:
    """Every num_parts-th case starting at part_id (cases sorted by id), to split a cohort over machines."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise SabnetError(f"--part-id must be in 0..{num_parts - 1} for --num-parts {num_parts}")
    return sorted(cases, key=lambda c: c.case_id)[part_id::num_parts]


def read_case(case: InputCase) -> tuple[list[np.ndarray], Geometry, str]:
    """Channels (array order), geometry, and the sequence read from DICOM tags ('unknown' otherwise)."""
    if case.series_uid is not None:
        image, tags = read_dicom_series(case.sources[0], case.series_uid)
        check_3d_scalar(image, case.sources[0])
        return [sitk.GetArrayFromImage(image)], Geometry.of(image), sequence_from_tags(tags)
    channels, geometry = [], None
    for path in case.sources:
        array, g = read_image(path)
        if geometry is not None and g.differences(geometry):
            raise SabnetError(f"{path}: channel geometry differs from {case.sources[0]} ({'; '.join(g.differences(geometry))})")
        channels.append(array)
        geometry = g
    return channels, geometry, "unknown"


def _prepare(case: InputCase, plan: Plan, settings: PredictionSettings):
    channels, geometry, sequence = read_case(case)
    if settings.zero_shot_labels is not None:
        plan = zero_shot_plan(geometry, len(settings.zero_shot_labels))
        labels = {"background": 0, **{name: i + 1 for i, name in enumerate(settings.zero_shot_labels)}}
    else:
        labels = plan.labels
    preprocessed = preprocess_for_prediction(channels, geometry, plan, sequence=sequence)
    prompts = None
    if settings.prompts and case.case_id in settings.prompts:
        spec = settings.prompts[case.case_id]
        entries = spec["prompts"]
        if settings.zero_shot_labels is not None:  # integer labels are names of the zero-shot label table
            entries = [dict(e, label=str(e["label"])) for e in entries]
        prompts = slice_prompts_for_case(entries, spec.get("coordinates", "ijk"), geometry,
                                         preprocessed.properties, labels, f"prompts for {case.case_id}")
    return channels, geometry, preprocessed, prompts


def click_anchors(spec: dict | None, geometry: Geometry, plan_labels: dict[str, int]) -> list[tuple[tuple, int]]:
    """[(array index, label value)] of the positive points of one case's prompts ({"coordinates",
    "prompts"}): each says which label the structure under it has (a series is named from them)."""
    anchors = []
    for entry in (spec or {}).get("prompts", []):
        label = entry.get("label")
        value = label if isinstance(label, int) and not isinstance(label, bool) else plan_labels.get(str(label))
        points = np.asarray(entry.get("points", []), float).reshape(-1, 3)
        kinds = np.asarray(entry.get("point_labels", [1] * len(points))).reshape(-1)
        if value is None or not len(points):
            continue
        for index, kind in zip(to_array_index(points, spec.get("coordinates", "ijk"), geometry), kinds):
            if kind == 1:
                anchors.append((tuple(np.round(index).astype(int)), int(value)))
    return anchors


def _write(case: InputCase, plan: Plan, settings: PredictionSettings, channels, geometry: Geometry,
           labels: np.ndarray, probabilities: np.ndarray | None, properties: dict) -> None:
    plan_labels = plan.labels if plan is not None else {}  # zero-shot: no plan, nothing to count
    anchors = click_anchors(settings.prompts.get(case.case_id) if settings.prompts else None, geometry, plan_labels)
    rules = settings.postprocessing or Postprocessing()
    if anchors and not rules.series:
        # a click that names one vertebra names the others by counting from it, whether or not the
        # cross validation kept ordering alone (one click on the lowest vertebra of spines cropped
        # along their length: 0.359 -> 0.516 per vertebra; docs/benchmarks.md)
        rules = replace(rules, series=vertebra_series(plan_labels))
    if rules.series or rules.labels:
        labels = apply_postprocessing(labels, rules, geometry.axis_spacing_mm, anchors)
    if settings.zero_shot_labels is not None:  # channel i -> the i-th label's value
        lookup = np.array([0] + list(settings.zero_shot_labels.values()))
        labels = lookup[labels]
        plan_labels = {"background": 0, **settings.zero_shot_labels}
    else:
        plan_labels = plan.labels
    write_image(labels.astype(np.uint8 if labels.max() < 256 else np.uint16), geometry, output_path(case, settings))
    if probabilities is not None:
        with atomic_path(settings.output_dir / f"{case.case_id}_probabilities.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, probabilities=probabilities, labels=np.array(list(plan_labels)))
    if settings.qc:
        write_qc_png(channels[0], labels, geometry, properties["slice_frame"]["axes"][0], plan_labels,
                     settings.output_dir / f"{case.case_id}_qc.png", title=f"{case.case_id} ({settings.mode})")


def predict_cohort(cases: list[InputCase], plan: Plan, predictor: EnsemblePredictor,
                   settings: PredictionSettings) -> CohortReport:
    """Predict every case that has no output yet (all with `overwrite`)."""
    report = CohortReport()
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for case in cases:
        if output_path(case, settings).exists() and not settings.overwrite:
            report.skipped.append(case.case_id)
        else:
            todo.append(case)
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        pending_write: tuple[str, Future] | None = None
        upcoming = reader.submit(_prepare, todo[0], plan, settings) if todo else None
        for i, case in enumerate(tqdm(todo, desc="predict", unit="case", dynamic_ncols=True)):
            current, upcoming = upcoming, (reader.submit(_prepare, todo[i + 1], plan, settings) if i + 1 < len(todo) else None)
            try:
                channels, geometry, pre, prompts = current.result()
                probs = predictor.predict(pre.image, pre.depth_image, pre.properties, settings.mode, prompts,
                                          carry=settings.carry)
                labels, full = probabilities_to_original(probs, pre.properties, settings.save_probabilities)
                del probs
            except SabnetError as e:
                report.failed.append((case.case_id, str(e)))
                continue
            except Exception as e:  # keep going with the other cases; say what broke
                report.failed.append((case.case_id, f"{type(e).__name__}: {e}"))
                continue
            if pending_write is not None:
                _collect(pending_write, report)
            pending_write = (case.case_id, writer.submit(_write, case, plan, settings, channels, geometry, labels, full,
                                                         pre.properties))
        if pending_write is not None:
            _collect(pending_write, report)
    return report


def _collect(pending: tuple[str, Future], report: CohortReport) -> None:
    case_id, future = pending
    try:
        future.result()
        report.written.append(case_id)
    except Exception as e:
        report.failed.append((case_id, str(e) if isinstance(e, SabnetError) else f"{type(e).__name__}: {e}"))
