"""Sampling an `Anatomy` on a voxel grid: tissue map, bone labels and thick-slice signal, fast.

Most of a volume is far from any tissue boundary. The sampler cuts the grid into tiles a few
millimetres wide and one slice thick and paints the layers at the tile centres first, noting for
each tile the first layer whose distances come closer to one of its boundaries than the tile's
radius. Tiles without one are uniform and filled from their centre. In the other tiles every
voxel is painted, starting from the layers the tile centre already settled, and only voxels near
a boundary get the sub-slice samples that give thick slices their partial volume. Each layer is
evaluated only on the tiles it reaches, so cost follows boundary area, not volume.
`exhaustive=True` evaluates every layer at every voxel and sub-slice (the reference the
shortcuts are tested against).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sabnet.phantoms.anatomy import KEEP, Anatomy

LIPSCHITZ = 1.5       # bound on how fast the approximate distances change per mm, with a margin
SAFETY_MM = 0.3
TILE_MM = 4.0         # in-plane tile size


@dataclass(frozen=True)
class Grid:
    """Sample points on a 3D array: position of index (a0, a1, a2) = origin_mm + sum_a a_a * steps_mm[a].

    shape: array shape; origin_mm (3,): anatomical position of index (0, 0, 0); steps_mm (3, 3):
    row a is the anatomical displacement of one step along array axis a.
    """

    shape: tuple[int, int, int]
    origin_mm: np.ndarray
    steps_mm: np.ndarray

    def points(self, index):
        """Anatomical (x, y, z) float32 arrays at (broadcastable, possibly fractional) array indices."""
        steps = self.steps_mm.astype(np.float32)
        index = [np.asarray(i, dtype=np.float32) for i in index]
        return tuple(np.float32(self.origin_mm[c]) + index[0] * steps[0, c] + index[1] * steps[1, c]
                     + index[2] * steps[2, c] for c in range(3))


def reach(anatomy: Anatomy, p, margin_mm: float) -> list[np.ndarray]:
    """Per layer: which points lie inside its bounds grown by `margin_mm`."""
    x, y, z = p
    out = []
    for layer in anatomy.layers:
        lo, hi = layer.bounds()
        lo, hi = np.asarray(lo) - margin_mm, np.asarray(hi) + margin_mm
        out.append((x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]) & (z >= lo[2]) & (z <= hi[2]))
    return out


def paint(anatomy: Anatomy, p, rows: list[np.ndarray | None], tissue: np.ndarray, labels: np.ndarray | None,
          label_ids: dict | None, slack: np.ndarray | None = None, level_slack: float | None = None):
    """Paint the layers in order, in place, on points `p` (arrays of one shape, first axis = rows).

    rows[l]: the rows (indices along the first axis) layer l may paint, None for none. slack: if
    given, lowered to each evaluated layer's slack (mm). level_slack: if given, returns per layer
    the rows where that layer's slack is at or below it (the layer is not settled there).
    """
    unsettled = []
    for layer, idx in zip(anatomy.layers, rows):
        if idx is None or idx.size == 0:
            unsettled.append(np.zeros(0, dtype=np.intp))
            continue
        sub = tuple(c[idx] for c in p)
        fields = layer.fields(sub)
        code, label = layer.classify(fields, label_ids)
        tissue[idx] = np.where(code != KEEP, code, tissue[idx])
        if label is not None and labels is not None:
            labels[idx] = np.where(label != KEEP, label, labels[idx])
        if slack is not None or level_slack is not None:
            near = layer.slack(fields)
            if slack is not None:
                slack[idx] = np.minimum(slack[idx], near)
            if level_slack is not None:
                flat = near.reshape(idx.size, -1).min(axis=1)
                unsettled.append(idx[flat <= level_slack])
    return unsettled


def sample(anatomy: Anatomy, grid: Grid, slice_axis: int, spacing_mm, n_sub: int, table: np.ndarray,
           label_ids: dict[str, int], exhaustive: bool = False):
    """(signal float32, tissue uint8, labels uint8) on `grid`.

    signal: the mean of `table[tissue]` over `n_sub` samples across each voxel's slice thickness
    (offsets -1/3, 0, +1/3 of the slice spacing for 3); tissue and labels at voxel centres.
    spacing_mm: per array axis; slice_axis: the array axis slices are stacked along.
    """
    if exhaustive:
        return _sample_exhaustive(anatomy, grid, slice_axis, n_sub, table, label_ids)
    shape = tuple(grid.shape)
    spacing = np.asarray(spacing_mm, dtype=float)
    n_layers = len(anatomy.layers)
    slab_half_mm = spacing[slice_axis] / 2 if n_sub > 1 else 0.0

    # tiles: centres, radius, and which layers settle them
    tile = np.maximum(1, np.floor(TILE_MM / spacing)).astype(int)
    tile[slice_axis] = 1
    n_tiles = tuple(-(-np.asarray(shape) // tile))
    extent = tile * spacing
    extent[slice_axis] = max(spacing[slice_axis], 2 * slab_half_mm)
    radius = 0.5 * float(np.linalg.norm(extent))
    centres = grid.points(np.meshgrid(*[np.arange(n) * t + (t - 1) / 2 for n, t in zip(n_tiles, tile)],
                                      indexing="ij", sparse=True))
    centres = tuple(np.broadcast_to(c, n_tiles).ravel() for c in centres)
    n = centres[0].size
    t_reach = [np.flatnonzero(r) for r in reach(anatomy, centres, radius)]
    t_tissue, t_labels = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    before_t, before_l = [], []    # per layer: tissue / labels at the tile centres before it
    first_open = np.full(n, n_layers)
    for number, layer in enumerate(anatomy.layers):
        before_t.append(t_tissue.copy())
        before_l.append(t_labels.copy())
        rows = [None] * n_layers
        rows[number] = t_reach[number]
        open_rows = paint(anatomy, centres, rows, t_tissue, t_labels, label_ids,
                          level_slack=LIPSCHITZ * radius + SAFETY_MM)[number]
        first_open[open_rows] = np.minimum(first_open[open_rows], number)
    tissue = _repeat(t_tissue.reshape(n_tiles), tile, shape)
    labels = _repeat(t_labels.reshape(n_tiles), tile, shape)

    # voxels of open tiles, tile-major: arrays (n_open, voxels per tile)
    open_tiles = np.flatnonzero(first_open < n_layers)
    if open_tiles.size == 0:
        return table[tissue], tissue, labels
    row_of = np.full(n, -1, dtype=np.intp)
    row_of[open_tiles] = np.arange(open_tiles.size)
    corner = np.unravel_index(open_tiles, n_tiles)
    offsets = np.unravel_index(np.arange(int(np.prod(tile))), tuple(tile))
    index = [c[:, None] * t + o[None, :] for c, t, o in zip(corner, tile, offsets)]
    valid = (index[0] < shape[0]) & (index[1] < shape[1]) & (index[2] < shape[2])
    index = [np.minimum(i, s - 1) for i, s in zip(index, shape)]   # outside voxels repeat an edge one
    start = first_open[open_tiles]
    stacked_t, stacked_l = np.stack(before_t), np.stack(before_l)
    f_tissue = np.repeat(stacked_t[start, open_tiles][:, None], index[0].shape[1], axis=1)
    f_labels = np.repeat(stacked_l[start, open_tiles][:, None], index[0].shape[1], axis=1)
    layer_rows = []
    for number in range(n_layers):
        tiles = t_reach[number]
        tiles = tiles[(row_of[tiles] >= 0) & (first_open[tiles] <= number)]
        layer_rows.append(row_of[tiles])
    f_slack = np.full(f_tissue.shape, np.inf, dtype=np.float32)
    paint(anatomy, grid.points(index), layer_rows, f_tissue, f_labels, label_ids, slack=f_slack)
    put = tuple(i[valid] for i in index)
    tissue[put], labels[put] = f_tissue[valid], f_labels[valid]
    signal = table[tissue]
    if n_sub == 1:
        return signal, tissue, labels

    # partial volume: sub-slice samples where a boundary may cross the slice thickness
    edge_row, edge_col = np.nonzero(valid & (f_slack <= LIPSCHITZ * slab_half_mm + SAFETY_MM))
    if edge_row.size == 0:
        return signal, tissue, labels
    edge_index = [i[edge_row, edge_col] for i in index]
    first = np.searchsorted(edge_row, np.arange(open_tiles.size))
    last = np.searchsorted(edge_row, np.arange(open_tiles.size), side="right")
    edge_rows = [_ranges(first[r], last[r]) for r in layer_rows]
    base_t = stacked_t[start[edge_row], open_tiles[edge_row]]
    total = table[tissue[tuple(edge_index)]]
    for offset in (np.arange(n_sub) - (n_sub - 1) / 2) / n_sub:
        if offset == 0:
            continue
        shifted = list(edge_index)
        shifted[slice_axis] = edge_index[slice_axis] + np.float32(offset)
        sub_tissue = base_t.copy()
        paint(anatomy, grid.points(shifted), edge_rows, sub_tissue, None, None)
        total += table[sub_tissue]
    signal[tuple(edge_index)] = total / np.float32(n_sub)
    return signal, tissue, labels


def _sample_exhaustive(anatomy: Anatomy, grid: Grid, slice_axis: int, n_sub: int, table: np.ndarray,
                       label_ids: dict[str, int]):
    shape = tuple(grid.shape)
    index = [i.ravel() for i in np.indices(shape)]
    signal = np.zeros(int(np.prod(shape)), dtype=np.float32)
    for offset in (np.arange(n_sub) - (n_sub - 1) / 2) / n_sub:
        shifted = list(index)
        shifted[slice_axis] = index[slice_axis] + offset
        p = grid.points(shifted)
        rows = [np.flatnonzero(r) for r in reach(anatomy, p, 0.0)]
        sub_tissue, sub_labels = np.zeros(signal.size, np.uint8), np.zeros(signal.size, np.uint8)
        paint(anatomy, p, rows, sub_tissue, sub_labels, label_ids)
        signal += table[sub_tissue]
        if offset == 0:
            tissue, labels = sub_tissue.reshape(shape), sub_labels.reshape(shape)
    return (signal / np.float32(n_sub)).reshape(shape), tissue, labels


def _ranges(first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Concatenated aranges [first[i], last[i])."""
    counts = last - first
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.intp)
    shift = np.repeat(first - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    return np.arange(total, dtype=np.intp) + shift


def _repeat(coarse: np.ndarray, tile: np.ndarray, shape) -> np.ndarray:
    """Blow tiles up to voxels and crop to `shape`."""
    out = coarse
    for axis, t in enumerate(tile):
        if t > 1:
            out = np.repeat(out, t, axis=axis)
    return np.ascontiguousarray(out[: shape[0], : shape[1], : shape[2]])
