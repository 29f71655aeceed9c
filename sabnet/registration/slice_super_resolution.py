"""Super-resolve a thick-slice label map along its slice axis, taught by its own image.

On a scan with 3-4 mm slices and 1 mm pixels a label map says which bone each slice centre lies
in. Where a bone's surface runs between two slice centres it may lie anywhere in the gap, and
shape-based interpolation (label_carrying.py) can only guess where from the labels around. The
image says more: each voxel averages the tissue across its slab, so the voxels on either side of
the gap are darker or brighter as the cortex reaches further into it.

How a slab's intensities relate to where the surface lies depends on the sequence, on the tissue
beside the bone and on the noise, so it is learnt from the same image (self-supervision, as SMORE
does for the image itself: Zhao et al., IEEE TMI 40:805, 2021). Within a slice the pixels are
`ratio` = slice spacing / pixel spacing times finer, so thick slices are simulated along each
in-plane axis (`ratio` pixels averaged per slab, the labels kept at every `ratio`-th pixel, at
every phase). That gives examples whose answer is known: how many of the `ratio` - 1 fine pixels
beyond a bone's last slab centre, towards the next centre, still belong to the bone. A gradient-
boosted classifier learns that count from the slab intensities and the label pattern around the
end (`end_features`); it is then applied along the real slice axis, its probabilities averaged
over the two in-plane directions the neighbours can be taken along.

`super_resolve_labels` returns the label map on a grid `factor` times finer along the slice axis:
the original slice centres keep their labels, and between a bone's last centre and the next
(background) centre the bone reaches as far as the expected count says. `carry_labels` then moves
that map as it would any other. The method assumes bones look alike across the slices and within
them (round cross-sections, cortex of one thickness), which holds for limbs and vertebrae better
than anything drawn from the labels alone; benchmarks/label_transfer.py measures what it gives.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage, stats
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from sabnet.io.geometry import Geometry
from sabnet.registration.label_carrying import SURE_LEVEL_MM, carried_levels

MIN_RATIO = 1.5            # slice spacing / largest pixel spacing below this: the slices are not thick
MIN_EXAMPLES = 500         # fewer simulated bone ends than this: too little to learn from
MAX_EXAMPLES = 120_000     # simulated ends kept for training (a random subset beyond that)
NEIGHBOURS = 2             # columns on each side along the neighbour axis that the features look at
RUN_CAP = 4                # run lengths in the features are counted up to this many voxels
OFFSET_CAP = 2             # a neighbour column's end is counted up to this many voxels past the end
CLASSIFIER = dict(max_iter=150, learning_rate=0.1, random_state=0)
SHAPE_PRIOR_SD = 0.15      # sd of the shape-based prior on where a surface lies (fraction of the gap)
PRIOR_FLOOR = 1e-3         # added to each count's prior mass, so strong evidence can overrule it


def super_resolve_labels(labels: sitk.Image, image: sitk.Image, seed: int = 0) -> sitk.Image | None:
    """`labels` on a grid `factor` times finer along their slice axis, or None when there is no
    thick slice axis (slice / pixel spacing below `MIN_RATIO`) or too little to learn from.

    labels: integer label map (0 background); image: the scan it annotates, on the same grid,
    best bias-flattened (any real type). factor: `fine_factor` of the slice / pixel spacing ratio
    (5 for 3.6 mm slices of 1.2 mm pixels); fine voxels are centred so that
    every `factor`-th one (starting at factor // 2) sits on an original voxel centre and keeps its
    label (`Geometry.subdivided`). Deterministic for a `seed`.
    """
    array = sitk.GetArrayFromImage(labels)
    values = sitk.GetArrayFromImage(image).astype(np.float32)
    if values.shape != array.shape:
        raise ValueError(f"image {values.shape} and labels {array.shape} differ in shape")
    spacing = np.asarray(labels.GetSpacing(), dtype=float)[::-1]        # array order
    axis = int(np.argmax(spacing))
    ratio = int(round(spacing[axis] / np.delete(spacing, axis).max()))
    if spacing[axis] < MIN_RATIO * np.delete(spacing, axis).max() or not array.any():
        return None
    near = ndimage.binary_dilation(array > 0, iterations=2)
    scale = float(np.median(values[near]))
    if not scale > 0:
        return None
    values /= scale
    examples = _simulated_examples(values, array, spacing, axis, ratio)
    if examples is None:
        return None
    features, counts = examples
    rng = np.random.default_rng(seed)
    if len(counts) > MAX_EXAMPLES:
        keep = rng.choice(len(counts), MAX_EXAMPLES, replace=False)
        features, counts = features[keep], counts[keep]
    with threadpool_limits(1):          # two OpenMP threads fitted these small trees 5x slower than one
        classifier = HistGradientBoostingClassifier(**{**CLASSIFIER, "random_state": seed}).fit(features, counts)
        index, direction, probabilities = _end_probabilities(classifier, values, array, axis, ratio)
    factor = fine_factor(ratio)
    reach = _reach(probabilities, counts, shape_reach(labels, index, direction, axis, factor))
    return _fine_labels(labels, array, axis, factor, index, direction, reach)


def fine_factor(ratio: int) -> int:
    """Fine voxels per slice for a slice / pixel spacing `ratio`: the odd number 2 or 3 above it
    (5 for 3, 7 for 4 or 5). The classifier decides the surface to one of `ratio` parts of the
    gap; fine voxels only that size (factor = ratio) put it on those parts' edges, and carrying
    the stair-steps between them cost the real spine of benchmarks/slice_super_resolution.py up
    to 9 % more wrong voxels than shape-based interpolation alone (ratio + 2: 0.90-1.00 of them;
    2 x ratio + 1: 0.93-1.01, and 0.001 mean Dice on the phantom pairs)."""
    return 2 * (ratio // 2) + 3


def slab_weights(ratio: int) -> np.ndarray:
    """Weights of the pixels a slab `ratio` pixels thick averages, centred on a pixel: `ratio`
    ones when odd, `ratio` - 1 ones and a half at either end when even (length 2 * (ratio // 2) + 1)."""
    weights = np.ones(2 * (ratio // 2) + 1)
    if ratio % 2 == 0:
        weights[[0, -1]] = 0.5
    return weights / weights.sum()


def bone_ends(labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Where runs of one label end along array axis 0 next to background: (k, direction, p, q),
    k the last voxel of the run, direction +1 (the background voxel is k + 1) or -1 (k - 1), and
    p, q the indices along axes 1 and 2. Runs ending at the array's edge or against another label
    are left out (nothing beyond them to decide)."""
    inside = labels > 0
    ends = []
    for direction in (1, -1):
        beyond = np.zeros_like(inside)
        if direction == 1:
            beyond[:-1] = inside[:-1] & (labels[1:] == 0)
        else:
            beyond[1:] = inside[1:] & (labels[:-1] == 0)
        k, p, q = np.nonzero(beyond)
        ends.append((k, np.full(k.size, direction), p, q))
    return tuple(np.concatenate(parts) for parts in zip(*ends))


def end_features(values: np.ndarray, labels: np.ndarray, k: np.ndarray, direction: np.ndarray,
                 p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(n_ends, 18) float32 features of bone ends along array axis 0, with axis 1 a fine axis:

    - the (scaled) intensities one voxel inward, at the end, and one and two voxels beyond it;
    - how far the run reaches inward and the background beyond it (voxels, up to `RUN_CAP`);
    - for the columns `NEIGHBOURS` away on either side along axis 1: their intensities at the end
      and one voxel beyond, and where their run of the same label stops relative to this one
      (-`OFFSET_CAP`: two voxels short ... +`OFFSET_CAP`: two voxels further).
    """
    n, n_p, _ = labels.shape
    value = labels[k, p, q]
    along = lambda step: np.clip(k + direction * step, 0, n - 1)
    columns = [values[along(step), p, q] for step in (-1, 0, 1, 2)]
    inward, outward = np.zeros(k.size), np.zeros(k.size)
    still_in, still_out = np.ones(k.size, bool), np.ones(k.size, bool)
    for step in range(RUN_CAP):
        inside = k - direction * step
        still_in &= (inside >= 0) & (inside < n) & (labels[np.clip(inside, 0, n - 1), p, q] == value)
        inward += still_in
        beyond = k + direction * (step + 1)
        still_out &= (beyond >= 0) & (beyond < n) & (labels[np.clip(beyond, 0, n - 1), p, q] == 0)
        outward += still_out
    columns += [inward, outward]
    for shift in [s for s in range(-NEIGHBOURS, NEIGHBOURS + 1) if s != 0]:
        side = np.clip(p + shift, 0, n_p - 1)
        columns += [values[along(0), side, q], values[along(1), side, q]]
        further, short = np.zeros(k.size), np.zeros(k.size)
        for step in range(1, OFFSET_CAP + 1):          # the neighbour's run goes on beyond the end
            further += (labels[along(step), side, q] == value) & (further == step - 1)
        for step in range(OFFSET_CAP):                 # ... or stops before it
            short += (labels[along(-step), side, q] != value) & (short == step)
        columns.append(further - short)
    return np.stack(columns, axis=1).astype(np.float32)


def _simulated_examples(values: np.ndarray, labels: np.ndarray, spacing: np.ndarray, axis: int,
                        ratio: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(features, counts) of bone ends on thick slices simulated along each in-plane axis:
    `ratio` pixels averaged per slab around every `ratio`-th pixel (each phase in turn), labels at
    those centres; count = how many of the `ratio` - 1 fine pixels beyond an end, towards the next
    centre, still hold the end's label. Only along in-plane axes whose pixels are about as large
    as the largest (so `ratio` of them make a slab as thick as a real one). None with fewer than
    `MIN_EXAMPLES` ends."""
    fine_axes = [a for a in range(3) if a != axis]
    features, counts = [], []
    for along in fine_axes:
        if int(round(spacing[axis] / spacing[along])) != ratio:
            continue
        other = fine_axes[1] if along == fine_axes[0] else fine_axes[0]
        order = (along, other, axis)            # column axis, neighbour axis (fine), the real slice axis
        fine_values, fine_labels = np.transpose(values, order), np.transpose(labels, order)
        slabs_everywhere = ndimage.correlate1d(fine_values, slab_weights(ratio), axis=0, mode="nearest")
        half = ratio // 2
        for phase in range(ratio):
            centres = np.arange(phase + half, fine_values.shape[0] - half, ratio)
            if centres.size < 3:
                continue
            slabs = slabs_everywhere[centres]
            thick = fine_labels[centres]
            k, direction, p, q = bone_ends(thick)
            features.append(end_features(slabs, thick, k, direction, p, q))
            value, count, still = thick[k, p, q], np.zeros(k.size, np.int64), np.ones(k.size, bool)
            for step in range(1, ratio):
                position = centres[k] + direction * step
                still &= fine_labels[np.clip(position, 0, fine_labels.shape[0] - 1), p, q] == value
                count += still
            counts.append(count)
    if not counts or sum(c.size for c in counts) < MIN_EXAMPLES:
        return None
    return np.concatenate(features), np.concatenate(counts)


def _end_probabilities(classifier: HistGradientBoostingClassifier, values: np.ndarray, labels: np.ndarray,
                       axis: int, ratio: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each bone end along the real slice axis: (index (n, 3) array order, direction,
    probabilities (n, ratio) of each count), the classifier's probabilities averaged over the two
    in-plane axes the neighbours can be taken along (counts it never saw get 0)."""
    fine_axes = [a for a in range(3) if a != axis]
    found = []
    for neighbour_axis in fine_axes:
        order = (axis, neighbour_axis, fine_axes[1] if neighbour_axis == fine_axes[0] else fine_axes[0])
        column_values, column_labels = np.transpose(values, order), np.transpose(labels, order)
        k, direction, p, q = bone_ends(column_labels)
        probabilities = np.zeros((k.size, ratio))
        probabilities[:, classifier.classes_] = classifier.predict_proba(
            end_features(column_values, column_labels, k, direction, p, q))
        index = np.empty((k.size, 3), np.int64)
        index[:, order[0]], index[:, order[1]], index[:, order[2]] = k, p, q
        key = np.ravel_multi_index(index.T, labels.shape) * 2 + (direction > 0)
        found.append((np.argsort(key), index, direction, probabilities))
    (first, index, direction, probabilities), (second, _, _, other) = found   # the same ends in two orders
    return index[first], direction[first], (probabilities[first] + other[second]) / 2


def shape_reach(labels: sitk.Image, index: np.ndarray, direction: np.ndarray, axis: int, factor: int) -> np.ndarray:
    """How far into the gap beyond each bone end shape-based interpolation puts the surface
    (fraction of the gap to the next centre, 0-1): where the end's label's level from
    `carried_levels` on `Geometry.of(labels).subdivided(axis, factor)` crosses 0 between the
    end's centre and the next one. index (n, 3) array order, direction +-1 along `axis`."""
    geometry = Geometry.of(labels).subdivided(axis, factor)
    levels = carried_levels(labels, geometry.apply_to(sitk.Image(geometry.size, sitk.sitkUInt8)),
                            sitk.Transform(3, sitk.sitkIdentity))
    value = sitk.GetArrayViewFromImage(labels)[tuple(index.T)]
    along = np.full((index.shape[0], factor + 1), SURE_LEVEL_MM, np.float32)   # end centre .. next centre
    for label, (box, level) in levels.items():
        ends = np.flatnonzero(value == label)
        start = np.asarray([b.start for b in box])
        for step in range(factor + 1):
            where = index[ends].copy()
            where[:, axis] = factor * where[:, axis] + factor // 2 + direction[ends] * step
            where -= start
            inside = np.all((where >= 0) & (where < level.shape), axis=1)
            along[ends[inside], step] = level[tuple(where[inside].T)]
    reach = np.full(index.shape[0], 0.5)
    found = np.zeros(index.shape[0], bool)
    for step in range(factor):
        low, high = along[:, step], along[:, step + 1]
        crossing = ~found & (low < 0) & (high >= 0)
        reach[crossing] = (step + low[crossing] / (low[crossing] - high[crossing])) / factor
        found |= crossing
    return reach


def _reach(probabilities: np.ndarray, counts: np.ndarray, prior_reach: np.ndarray) -> np.ndarray:
    """Expected fraction of the gap each bone fills, ((count + 0.5) / ratio averaged over its
    posterior). The classifier's probabilities over the training counts' frequencies are the
    image's evidence (its likelihood of each count), weighed against the shape-based prior: a
    normal distribution about `prior_reach` (`SHAPE_PRIOR_SD` of the gap) over each count's part
    of the gap."""
    ratio = probabilities.shape[1]
    frequency = np.bincount(counts, minlength=ratio) / counts.size
    edges = np.arange(ratio + 1) / ratio
    edges[0], edges[-1] = -np.inf, np.inf
    mass = np.diff(stats.norm.cdf((edges[None, :] - prior_reach[:, None]) / SHAPE_PRIOR_SD), axis=1)
    posterior = probabilities / np.maximum(frequency, 1e-3) * (mass + PRIOR_FLOOR)
    posterior /= posterior.sum(axis=1, keepdims=True)
    return posterior @ ((np.arange(ratio) + 0.5) / ratio)


def _fine_labels(labels: sitk.Image, array: np.ndarray, axis: int, factor: int, index: np.ndarray,
                 direction: np.ndarray, reach: np.ndarray) -> sitk.Image:
    """The label map on `Geometry.of(labels).subdivided(axis, factor)`: each fine voxel the label
    of the voxel it lies in, then between each bone end and the next centre, fine voxel j
    (1 .. factor - 1 beyond the end's centre) the bone's where j / factor < reach, background
    beyond."""
    fine = np.repeat(array, factor, axis=axis)
    value = array[tuple(index.T)]
    for step in range(1, factor):
        where = index.copy()
        where[:, axis] = factor * index[:, axis] + factor // 2 + direction * step
        fine[tuple(where.T)] = np.where(step / factor < reach, value, 0)
    image = sitk.GetImageFromArray(fine)
    Geometry.of(labels).subdivided(axis, factor).apply_to(image)
    return image
