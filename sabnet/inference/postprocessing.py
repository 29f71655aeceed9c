"""Postprocessing of label maps, stored as plain JSON (never pickle).

    postprocessing.json: {"labels": {"<value>": {"keep_largest_component": bool,
                                                 "min_island_mm3": float}},
                          "series": [<value>, ...], "reason": "..."}

series: label values of structures that follow one another along the body (vertebrae, head to
foot), named by their order first (sabnet.inference.series_naming); [] leaves names as predicted.

Rules are chosen on the cross-validation predictions (sab_find_best_configuration) and applied by
sab_predict when the model folder holds the file.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from sabnet.errors import SabnetError
from sabnet.inference.series_naming import name_series
from sabnet.io.atomic import read_json, write_json

POSTPROCESSING_FILE = "postprocessing.json"


@dataclass(frozen=True)
class LabelRule:
    """keep_largest_component: drop every connected component of the label but the largest.
    min_island_mm3: drop components smaller than this volume (0: keep all)."""

    keep_largest_component: bool = False
    min_island_mm3: float = 0.0

    @property
    def does_something(self) -> bool:
        return self.keep_largest_component or self.min_island_mm3 > 0


@dataclass
class Postprocessing:
    labels: dict[int, LabelRule] = field(default_factory=dict)
    reason: str = ""
    series: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"labels": {str(k): asdict(v) for k, v in sorted(self.labels.items())}, "series": list(self.series),
                "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict) -> "Postprocessing":
        try:
            return cls({int(k): LabelRule(**v) for k, v in d.get("labels", {}).items()}, str(d.get("reason", "")),
                       [int(v) for v in d.get("series", [])])
        except (TypeError, ValueError) as e:
            raise SabnetError(f"postprocessing rules are malformed ({e}); fix {POSTPROCESSING_FILE} or delete it") from None


def apply_label_rule(labels: np.ndarray, value: int, rule: LabelRule, voxel_mm3: float) -> np.ndarray:
    """Apply one label's rule in place (removed voxels become background) and return `labels`."""
    if not rule.does_something:
        return labels
    mask = labels == value
    components, n = ndimage.label(mask)
    if n <= 1 and rule.min_island_mm3 <= 0:
        return labels
    sizes = np.bincount(components.ravel())[1:]
    keep = np.ones(n, dtype=bool)
    if rule.keep_largest_component and n > 1:
        keep[:] = False
        keep[int(np.argmax(sizes))] = True
    if rule.min_island_mm3 > 0:
        keep &= sizes * voxel_mm3 >= rule.min_island_mm3
    remove = np.concatenate([[False], ~keep])[components]
    labels[remove] = 0
    return labels


def apply_postprocessing(labels: np.ndarray, rules: Postprocessing, spacing_mm,
                         anchors: list[tuple[tuple, int]] | None = None) -> np.ndarray:
    """A copy of `labels` (array order; spacing_mm per array axis) with the series named in order
    (anchors: [(array index, label value)] the user's clicks) and then every label's rule applied."""
    out = name_series(labels, rules.series, spacing_mm, anchors) if rules.series else labels.copy()
    voxel_mm3 = float(np.prod(spacing_mm))
    for value, rule in rules.labels.items():
        apply_label_rule(out, value, rule, voxel_mm3)
    return out


def load_postprocessing(folder: Path) -> Postprocessing | None:
    path = Path(folder) / POSTPROCESSING_FILE
    return Postprocessing.from_dict(read_json(path)) if path.is_file() else None


def save_postprocessing(rules: Postprocessing, folder: Path) -> Path:
    path = Path(folder) / POSTPROCESSING_FILE
    write_json(path, rules.to_dict())
    return path
