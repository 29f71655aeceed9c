"""Zero-shot prompting: the pretrained weights alone (LiteMedSAM's, packaged) segment what a user's
boxes and points ask for, with no training on the user's data (`sab_predict --pretrained`).

Labels come from the prompts file: an integer label is the value written for it in the output
label map; a name gets the next free value (after every integer used), the same for every case,
and `labels.json` beside the outputs lists them. Each image is planned on its own as LiteMedSAM
was trained: sliced along its acquisition plane (an isotropic volume across its thinnest extent),
each slice resampled so that its longer side spans the 256 px input, intensities clipped to the
volume's 0.5 / 99.5 percentiles and each slice scaled to [0, 1]. Outside the prompted objects
everything is background; predictions go back onto the input's exact grid.
"""
from __future__ import annotations

from pathlib import Path

from sabnet.errors import SabnetError
from sabnet.io.geometry import Geometry
from sabnet.model.config import PRETRAINED_IMAGE_SIZES, ModelConfig
from sabnet.planning.plans import (DepthVolumePlan, NormalizationScheme, Plan, PreprocessingPlan,
                                   TrainingPlan)
from sabnet.planning.slicing import majority_plane, slicing_for

ZERO_SHOT_VARIANT = "lite_medsam_frozen"
DEPTH_GRID = 64


def zero_shot_labels(prompts: dict[str, dict]) -> dict[str, int]:
    """{name: output value} of every label in a prompts file ({case: {"prompts": [...]}}); integer
    labels keep their value, names take the next free values in order of appearance."""
    values: dict[str, int] = {}
    names: list[str] = []
    for case_id, spec in prompts.items():
        for n, entry in enumerate(spec["prompts"]):
            label = entry.get("label")
            if isinstance(label, bool) or not isinstance(label, (int, str)):
                raise SabnetError(f"prompts for {case_id}, prompt {n}: label {label!r} must be a name or an integer")
            if isinstance(label, int):
                if not 0 < label < 65536:
                    raise SabnetError(f"prompts for {case_id}, prompt {n}: label value {label} must lie in 1..65535")
                values[str(label)] = label
            elif label not in names:
                names.append(label)
    free = max(values.values(), default=0)
    for name in names:
        free += 1
        values[name] = free
    return values


def zero_shot_plan(geometry: Geometry, n_labels: int, image_size: int | None = None) -> Plan:
    """A plan for one image: its own slicing, the spacing that fits its slices into the encoder
    input, LiteMedSAM's normalisation, and `n_labels` output channels (besides background)."""
    image_size = image_size or PRETRAINED_IMAGE_SIZES[ZERO_SHOT_VARIANT]
    plane, _ = majority_plane([geometry])
    slicing = slicing_for(geometry, plane)
    extents = [n * s for a, (n, s) in enumerate(zip(geometry.shape, geometry.axis_spacing_mm)) if a != slicing.slice_axis]
    spacing = round(max(extents) / image_size, 6)
    through = geometry.axis_spacing_mm[slicing.slice_axis]
    low = max(extents) / DEPTH_GRID
    depth = DepthVolumePlan([max(through, low), low, low], [DEPTH_GRID] * 3, 10.0)
    model = ModelConfig.for_variant(ZERO_SHOT_VARIANT, image_size, n_outputs=n_labels + 1, n_labels=n_labels)
    labels = {"background": 0, **{f"object_{i}": i for i in range(1, n_labels + 1)}}
    return Plan(dataset="zero_shot", fingerprint_hash="", labels=labels, label_mapping={},
                channel_names={"0": "MRI"},
                preprocessing=PreprocessingPlan(spacing, plane, {"default": NormalizationScheme("slice_unit")}, depth,
                                                {}, crop_to_nonzero=False),
                model=model.to_dict(), training=TrainingPlan(batch_size=4, epochs=0, iterations_per_epoch=0,
                                                             initial_lr=0.0),
                memory_target_gb=4.0,
                reasons={"zero_shot": "pretrained weights used as they are: no training on this data"})


def zero_shot_model(n_labels: int, weights: Path | str = "lite_medsam", device: str = "cpu"):
    """The pretrained network for zero-shot prompting, in eval mode on `device`."""
    from sabnet.model.checkpoint import config_from_checkpoint
    from sabnet.model.sab_model import build_model

    image_size = PRETRAINED_IMAGE_SIZES[ZERO_SHOT_VARIANT]
    if str(weights) != "lite_medsam":
        config = config_from_checkpoint(weights, image_size, n_outputs=n_labels + 1, n_labels=n_labels)
        if config.encoder != "tiny_vit" or config.patch_size != 4:
            raise SabnetError(f"{weights}: zero-shot prompting runs LiteMedSAM's 256 px TinyViT; this checkpoint is a "
                              f"{config.variant} model: train with it instead (sab_plan_and_preprocess --sam-checkpoint)")
    else:
        config = ModelConfig.for_variant(ZERO_SHOT_VARIANT, image_size, n_outputs=n_labels + 1, n_labels=n_labels)
    return build_model(config, weights).eval().to(device)
