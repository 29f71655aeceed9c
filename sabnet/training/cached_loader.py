"""Training batches from the embedding cache (sabnet.training.embedding_cache): the image
encoder's output is read, not computed, so a step costs only the decoder side.

A sample is a cache entry: a tile of copy 0 (the slice as preprocessed) or a slice of an augmented
copy, each with the image the detail branch reads, its labels and its embedding. Sampling follows
`SliceDataLoader`: a case drawn uniformly, then an entry of any copy; a sample forced to hold
foreground takes a label of its case uniformly and an entry holding it. Validation
(`augmented=False`) and the fusion phase (`attention_dir`) use copy 0 only, whose geometry the
depth-attention maps share.
Batch: the keys of `SliceDataLoader`'s, plus "embedding" (B, E, g, g) float32 and "copy" (B,).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sabnet.errors import SabnetError
from sabnet.planning.plans import Plan
from sabnet.preprocessing.store import PreprocessedStore
from sabnet.training.data_loader import SliceDataLoader
from sabnet.training.embedding_cache import EmbeddingCache


class CachedSliceDataLoader(SliceDataLoader):
    """Endless random batches of cached entries; arguments as `SliceDataLoader`'s, plus the cache."""

    def __init__(self, store: PreprocessedStore, case_ids: list[str], plan: Plan, batch_size: int, *,
                 cache: EmbeddingCache, foreground_fraction: float, seed: int, attention_dir: Path | None = None,
                 number_of_threads_in_multithreaded: int = 1, augmented: bool = True):
        for case_id in case_ids:
            if not cache.has(case_id, store.stamp(case_id)):
                raise SabnetError(f"{cache.root}: no cached embeddings of {case_id}; they are written before training "
                                  "starts, so start the run again")
        self.cache = cache
        super().__init__(store, case_ids, plan, batch_size, foreground_fraction=foreground_fraction, seed=seed,
                         attention_dir=attention_dir,
                         number_of_threads_in_multithreaded=number_of_threads_in_multithreaded)
        copies = None if augmented and attention_dir is None else [0]
        self.entries = [self._case_entries(c, copies) for c in self.case_ids]  # per case: (copy, index, labels)

    def _case_entries(self, case_id: str, copies: list[int] | None) -> list[tuple[int, int, frozenset]]:
        """Every entry of a case with the label values it holds."""
        size = self.config.image_size
        labels = self.store.labels(case_id)
        out = []
        for i, (s, r, c) in enumerate(self.cache.tiles(case_id, 0)):
            present = np.unique(labels[s, r:r + size, c:c + size])
            out.append((0, i, frozenset(int(v) for v in present if v)))
        for copy in (copies or range(1, self.cache.n_copies(case_id) + 1)):
            if copy == 0:
                continue
            _, copy_labels = self.cache.copy_arrays(case_id, copy)
            for i in range(len(copy_labels)):
                present = np.unique(copy_labels[i])
                out.append((copy, i, frozenset(int(v) for v in present if v)))
        return out

    def _fill(self, batch: dict, b: int, case: int, forced: bool, rng: np.random.Generator) -> None:
        case_id, entries = self.case_ids[case], self.entries[case]
        if "embedding" not in batch:
            grid, dim = self.config.grid_size, self.config.prompt_embed_dim
            batch["embedding"] = np.zeros((len(batch["data"]), dim, grid, grid), np.float32)
            batch["copy"] = np.zeros(len(batch["data"]), np.int64)
        candidates = range(len(entries))
        if forced:
            labels = sorted(set().union(*(e[2] for e in entries)))
            if labels:
                wanted = labels[int(rng.integers(len(labels)))]
                candidates = [i for i, e in enumerate(entries) if wanted in e[2]]
        copy, index, _ = entries[candidates[int(rng.integers(len(candidates)))]]
        size = self.config.image_size
        batch["embedding"][b] = self.cache.embeddings(case_id, copy)[index]
        batch["copy"][b] = copy
        slice_index, r0, c0 = (int(v) for v in self.cache.tiles(case_id, copy)[index])
        if copy == 0:
            arrays = self._arrays(case_id)
            n_slices, rows, cols = self.properties[case]["shape"]
            h, w = min(rows - r0, size), min(cols - c0, size)
            batch["data"][b, :, :h, :w] = arrays["image"][slice_index, :, r0:r0 + h, c0:c0 + w]
            batch["seg"][b, 0, :h, :w] = arrays["labels"][slice_index, r0:r0 + h, c0:c0 + w]
            if self.attention_dir is not None:
                window = (slice(r0, r0 + h), slice(c0, c0 + w))
                batch["attention"][b, 0, :h, :w] = self._attention(arrays["probabilities"], slice_index,
                                                                    self.properties[case], (rows, cols))[window]
        else:
            images, labels = self.cache.copy_arrays(case_id, copy)
            batch["data"][b] = images[index]
            batch["seg"][b, 0] = labels[index]
            h = w = size  # an augmented copy fills the frame: what lies outside the slice is 0 already
        batch["keys"].append(case_id)
        batch["slice_index"][b] = slice_index
        batch["slice_hw"][b] = (h, w)
