"""A positive click names the structure it lands on.

A user who clicks on L3 with label L3 says two things: segment this, and this is L3. SAM's
prompted pass answers the first (`EnsemblePredictor.object_probability`); this module answers the
second. The automatic pass of a multi-label model often finds the bone and calls it by its
neighbour's name (on the real spine, merged bone Dice is 0.12 above the mean per-vertebra Dice at
8 CPU minutes of training, and a T2 scan had every vertebra named wrong): a click then moves the
whole structure under it to the clicked label.

Structures are connected components of the predicted foreground (any label but background):
- per slice (`carried=False`): 2D components of each prompted slice;
- carried (`carried=True`): 3D components of the volume, so that one click per vertebra on one
  slice names the vertebra on every slice it reaches.
A component that holds clicks of several labels (two vertebrae joined by a bridge of false
positives) is split between them, each voxel to the nearest click (in voxels of the preprocessed
grid). Components without a click keep the automatic labels. Softmax outputs only: a sigmoid model
has one bone channel and no names.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from sabnet.model.slice_prompts import SlicePrompt


def positive_clicks(prompts: dict[int, list[SlicePrompt]], shape: tuple[int, int, int]) -> np.ndarray:
    """(K, 4) int rows (slice, row, col, label) of the positive points of `prompts` inside a volume
    of `shape` (n_slices, rows, cols); points are rounded to the nearest pixel."""
    clicks = []
    for s, slice_prompts in prompts.items():
        for prompt in slice_prompts:
            points = np.asarray(prompt.points, float).reshape(-1, 2)
            kinds = np.asarray(prompt.point_labels).reshape(-1)
            for (r, c), kind in zip(points, kinds):
                r, c = int(round(r)), int(round(c))
                if kind == 1 and 0 <= s < shape[0] and 0 <= r < shape[1] and 0 <= c < shape[2]:
                    clicks.append((s, r, c, prompt.label))
    return np.asarray(clicks, dtype=np.int64).reshape(-1, 4)


def clicked_labels(foreground: np.ndarray, clicks: np.ndarray, carried: bool) -> np.ndarray:
    """The label each foreground voxel takes from the clicks: (n_slices, rows, cols) int64, 0 where
    no click names the voxel's structure.

    foreground: (n_slices, rows, cols) bool; clicks: (K, 4) (slice, row, col, label).
    """
    named = np.zeros(foreground.shape, np.int64)
    if not len(clicks):
        return named
    if carried:
        _name_components(foreground, clicks, named)
    else:
        for s in np.unique(clicks[:, 0]):
            on_slice = clicks[clicks[:, 0] == s].copy()
            on_slice[:, 0] = 0  # the slice is a volume of one slice
            _name_components(foreground[s:s + 1], on_slice, named[s:s + 1])
    return named


def _name_components(foreground: np.ndarray, clicks: np.ndarray, named: np.ndarray) -> None:
    """Fill `named` (same shape as foreground) in the components of `foreground` that hold clicks."""
    components, _ = ndimage.label(foreground)
    hit = components[clicks[:, 0], clicks[:, 1], clicks[:, 2]]
    for component in np.unique(hit[hit > 0]):
        mine = clicks[hit == component]
        voxels = np.argwhere(components == component)
        if len(np.unique(mine[:, 3])) == 1:
            named[tuple(voxels.T)] = mine[0, 3]
            continue
        nearest = np.empty(len(voxels), np.int64)
        for start in range(0, len(voxels), 65536):  # (voxels x clicks) distances, in parts
            part = voxels[start:start + 65536]
            d = ((part[:, None, :] - mine[None, :, :3]) ** 2).sum(axis=2)
            nearest[start:start + len(part)] = mine[d.argmin(axis=1), 3]
        named[tuple(voxels.T)] = nearest


def apply_clicked_labels(probabilities: torch.Tensor, prompts: dict[int, list[SlicePrompt]], carried: bool
                         ) -> torch.Tensor:
    """Softmax class probabilities (K, n_slices, rows, cols) with every clicked structure moved to its
    click's label: there the label takes all the foreground probability (1 - background) and the
    other labels none, so the voxel stays foreground and takes the clicked name."""
    shape = tuple(probabilities.shape[1:])
    clicks = positive_clicks(prompts, shape)
    clicks = clicks[(clicks[:, 3] > 0) & (clicks[:, 3] < probabilities.shape[0])]
    if not len(clicks):
        return probabilities
    foreground = (probabilities.argmax(dim=0) != 0).numpy()
    named = torch.from_numpy(clicked_labels(foreground, clicks, carried))
    where = named > 0
    if not bool(where.any()):
        return probabilities
    out = probabilities.clone()
    s, r, c = where.nonzero(as_tuple=True)
    foreground_probability = 1 - out[0, s, r, c]
    out[1:, s, r, c] = 0
    out[named[s, r, c], s, r, c] = foreground_probability
    return out
