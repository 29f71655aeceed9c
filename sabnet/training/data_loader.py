"""Training batches of 2D slices from the preprocessed store, their augmentation and their prompts.

`SliceDataLoader` reads single slices from the memory-mapped store (never a whole volume) and
places each at the top-left of the S x S model input, cropped or zero-padded like prediction does.
`make_augmenter` wraps it in batchgenerators' single- or multi-process augmenter, with the
augmentations of `sabnet.training.augmentation` and prompts drawn after augmentation.

Determinism: batch k depends only on (seed, k), through SeedSequence streams (seed, k, 0) for
sampling, (seed, k, 1) for augmentation and prompts. With n workers, worker i makes batches
i, i + n, ... and batchgenerators returns them in order, so the batches are the same for any
number of workers, and a run resumed with the same seed sees the same batches.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from batchgenerators.dataloading.data_loader import DataLoader
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.transforms.abstract_transforms import AbstractTransform

from sabnet.errors import SabnetError
from sabnet.model.config import ModelConfig
from sabnet.model.depth_branch import slice_attention_map
from sabnet.model.prompts import PromptSampler
from sabnet.planning.plans import Plan
from sabnet.preprocessing.case_preprocessing import slice_to_depth_position
from sabnet.preprocessing.store import PreprocessedStore
from sabnet.training.augmentation import SeededCompose, batch_rng, default_augmentations

SAMPLING_STREAM = 0
OPEN_CASES = 64  # memory maps (and foreground tables) kept open per process


class SliceDataLoader(DataLoader):
    """Endless random batches of slices: a case drawn uniformly, then a slice.

    foreground_fraction: expected share of samples forced to hold foreground: floor(B * f) per
        batch, plus one more with probability of the remainder. A forced sample takes a label drawn
        uniformly among its case's labels and a slice holding it (`slices_with_label`); a crop of a
        slice larger than S x S then holds a foreground voxel of that label (`foreground.npz`).
        Other samples take any slice and a random crop.
    seed: the seed of the batch sequence when the loader is iterated itself; `make_augmenter`
        restarts it at the augmenter's seed.
    attention_dir: stage 2; <attention_dir>/<case_id>.npy holds the depth net's bone probabilities
        (D, h, w) float32 and each sample gets its slice's attention map, cropped and padded like
        the image.
    Batch: "data" (B, C, S, S) float32, "seg" (B, 1, S, S) int16, "attention" (B, 1, S, S) float32
    (with attention_dir), "keys" [case ids], "slice_index" (B,) int, "slice_hw" (B, 2) real pixels
    per sample (top-left), "batch_index" int.
    """

    def __init__(self, store: PreprocessedStore, case_ids: list[str], plan: Plan, batch_size: int, *,
                 foreground_fraction: float, seed: int, attention_dir: Path | None = None,
                 number_of_threads_in_multithreaded: int = 1):
        if not case_ids:
            raise SabnetError(f"{store.folder}: no training cases to load; check the splits and the preprocessed data")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise SabnetError(f"foreground_fraction {foreground_fraction} must lie in [0, 1]")
        super().__init__(list(case_ids), batch_size, number_of_threads_in_multithreaded, None, infinite=True)
        self.indices = list(range(len(case_ids)))
        self.store = store
        self.case_ids = list(case_ids)
        self.config = ModelConfig.from_dict(plan.model)
        self.foreground_fraction = foreground_fraction
        self.attention_dir = Path(attention_dir) if attention_dir is not None else None
        self.properties = [store.properties(c) for c in self.case_ids]
        self._open: OrderedDict[str, dict] = OrderedDict()
        self._pid = os.getpid()
        self.restart(seed, number_of_threads_in_multithreaded)

    def restart(self, seed: int, n_streams: int = 1) -> None:
        """Start the batch sequence again from batch 0 of `seed`, split over `n_streams` workers."""
        self.seed = int(seed) % 2**63
        self.number_of_threads_in_multithreaded = max(1, int(n_streams))
        self._batches_made = 0

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()  # memory maps are reopened in another process
        return state

    def generate_train_batch(self) -> dict:
        batch_index = self.thread_id + self._batches_made * self.number_of_threads_in_multithreaded
        self._batches_made += 1
        if self.attention_dir is not None and os.getpid() != self._pid:
            torch.set_num_threads(1)  # a worker process: leave the cores to training
            self._pid = os.getpid()
        rng = np.random.default_rng([self.seed, batch_index, SAMPLING_STREAM])
        size, channels, n = self.config.image_size, self.config.in_channels, self.batch_size
        forced = int(n * self.foreground_fraction)
        forced += int(rng.random() < n * self.foreground_fraction - forced)
        forced_samples = set(rng.permutation(n)[:forced].tolist())
        batch = {
            "data": np.zeros((n, channels, size, size), np.float32),
            "seg": np.zeros((n, 1, size, size), np.int16),
            "keys": [], "slice_index": np.zeros(n, np.int64), "slice_hw": np.zeros((n, 2), np.int64),
            "batch_index": batch_index,
        }
        if self.attention_dir is not None:
            batch["attention"] = np.zeros((n, 1, size, size), np.float32)
        for b in range(n):
            case = int(rng.integers(len(self.case_ids)))
            self._fill(batch, b, case, b in forced_samples, rng)
        return batch

    def _fill(self, batch: dict, b: int, case: int, forced: bool, rng: np.random.Generator) -> None:
        """Read one slice of `case` into sample b of the batch."""
        case_id, properties = self.case_ids[case], self.properties[case]
        n_slices, rows, cols = properties["shape"]
        arrays = self._arrays(case_id)
        with_label = {k: v for k, v in properties.get("slices_with_label", {}).items() if v}
        anchor = None
        if forced and with_label:
            label = sorted(with_label)[int(rng.integers(len(with_label)))]
            slice_index = int(rng.choice(with_label[label]))
            voxels = arrays["foreground"].get(label)
            if voxels is not None:
                on_slice = voxels[voxels[:, 0] == slice_index]
                if len(on_slice):
                    anchor = on_slice[int(rng.integers(len(on_slice)))][1:]
        else:
            slice_index = int(rng.integers(n_slices))
        size = self.config.image_size
        r0 = _crop_start(rows, size, None if anchor is None else int(anchor[0]), rng)
        c0 = _crop_start(cols, size, None if anchor is None else int(anchor[1]), rng)
        h, w = min(rows, size), min(cols, size)
        window = (slice(r0, r0 + h), slice(c0, c0 + w))
        batch["data"][b, :, :h, :w] = arrays["image"][slice_index, :, window[0], window[1]]
        batch["seg"][b, 0, :h, :w] = arrays["labels"][slice_index, window[0], window[1]]
        batch["keys"].append(case_id)
        batch["slice_index"][b] = slice_index
        batch["slice_hw"][b] = (h, w)
        if self.attention_dir is not None:
            batch["attention"][b, 0, :h, :w] = self._attention(arrays["probabilities"], slice_index, properties,
                                                                (rows, cols))[window]

    def _attention(self, probabilities: np.ndarray, slice_index: int, properties: dict,
                   hw: tuple[int, int]) -> np.ndarray:
        """The slice's (rows, cols) attention map, as prediction builds it."""
        position = torch.as_tensor(slice_to_depth_position([slice_index], properties), dtype=torch.float32)
        volume = torch.from_numpy(np.array(probabilities, dtype=np.float32))[None, None]
        with torch.no_grad():
            att = slice_attention_map(volume, position, hw, self.config.depth_threshold,
                                      self.config.depth_neighbourhood_slices)
        return att[0, 0].numpy()

    def _arrays(self, case_id: str) -> dict:
        """Memory maps and foreground table of a case, kept open for the OPEN_CASES last used."""
        if case_id in self._open:
            self._open.move_to_end(case_id)
            return self._open[case_id]
        arrays = {"image": self.store.image(case_id), "labels": self.store.labels(case_id),
                  "foreground": self.store.foreground(case_id)}
        if self.attention_dir is not None:
            path = self.attention_dir / f"{case_id}.npy"
            if not path.is_file():
                raise SabnetError(f"{path}: depth probabilities of {case_id} missing; the 3D stage writes them "
                                  "before training, so restart stage 2")
            arrays["probabilities"] = np.load(path, mmap_mode="r")
        self._open[case_id] = arrays
        if len(self._open) > OPEN_CASES:
            self._open.popitem(last=False)
        return arrays


def _crop_start(length: int, size: int, anchor: int | None, rng: np.random.Generator) -> int:
    """First index of a `size` window on an axis of `length` (0 when it fits), holding `anchor` if given."""
    if length <= size:
        return 0
    low, high = 0, length - size
    if anchor is not None:
        low, high = max(low, anchor - size + 1), min(high, anchor)
    return int(rng.integers(low, high + 1))


class PromptTransform(AbstractTransform):
    """Last step: "seg" (B, 1, S, S) -> (B, S, S) int64, and prompts drawn from it by `sampler`:
    "prompt_label" (B,), "points" (B, N, 2), "point_labels" (B, N), "boxes" (B, 4), "box_valid" (B,)."""

    def __init__(self, sampler: PromptSampler):
        self.sampler = sampler

    def __call__(self, **data_dict):
        seg = np.asarray(data_dict["seg"])[:, 0].astype(np.int64)
        prompts = self.sampler.sample(seg, batch_rng(data_dict))
        data_dict.update(seg=seg, prompt_label=prompts.label.numpy(), points=prompts.points.numpy(),
                         point_labels=prompts.point_labels.numpy(), boxes=prompts.boxes.numpy(),
                         box_valid=prompts.box_valid.numpy())
        return data_dict


def sampler_from_plan(plan: Plan) -> PromptSampler:
    """The training prompt sampler: the plan's prompt_probability, and no more points than the model
    takes (3 positive and 2 negative at most; a model without point tokens gets boxes only)."""
    max_points = ModelConfig.from_dict(plan.model).max_prompt_points
    negative = min(2, max_points // 3)
    positive = min(3, max_points - negative)
    return PromptSampler(prompt_probability=plan.training.prompt_probability, max_positive_points=positive,
                         max_negative_points=negative, box_probability=0.5 if positive else 1.0)


def make_augmenter(loader: SliceDataLoader, plan: Plan, n_workers: int, seed: int, training: bool = True):
    """An endless iterator of augmented batches with prompts (restarts `loader` at `seed`).

    n_workers 0: in-process (SingleThreadedAugmenter); else a MultiThreadedAugmenter with that many
    processes (stop them with its `_finish()`; they also stop when it is garbage-collected).
    training=False: no augmentation (validation), prompts still drawn.
    Batch: "data" (B, C, S, S) float32, "seg" (B, S, S) int64, "attention" (B, 1, S, S) when the
    loader has an attention_dir, the prompt arrays of `PromptTransform`, and the loader's "keys",
    "slice_index", "slice_hw", "batch_index". Batch k depends only on (seed, k), for any n_workers.
    """
    if n_workers < 0:
        raise SabnetError(f"number of data workers must be >= 0, got {n_workers}")
    loader.restart(seed, max(1, n_workers))
    unit_range = any(n.scheme == "slice_unit" for n in plan.preprocessing.normalization.values())
    steps = (default_augmentations(unit_range) if training else []) + [PromptTransform(sampler_from_plan(plan))]
    transform = SeededCompose(steps, seed)
    if n_workers == 0:
        return SingleThreadedAugmenter(loader, transform)
    seeds = [int(seed + i) % 2**32 for i in range(n_workers)]
    return MultiThreadedAugmenter(loader, transform, n_workers, num_cached_per_queue=2, seeds=seeds)
