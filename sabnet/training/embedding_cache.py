"""The embedding cache: a frozen image encoder's output, computed once per slice and kept on disk.

A frozen encoder's embedding depends only on the preprocessed slice, so when it neither trains
nor carries adapters (`lite_medsam_frozen`) every fold of a dataset trains its decoder side from
the same cached embeddings, and validation reads them instead of encoding again.

    <preprocessed>/<dataset>/embeddings/<key>/
        cache.json                  what the key stands for (encoder digest, plan, copies), per case its stamp
        <case>/tiles_0.npy          (N, 3) int32 (slice, row, col): the prediction tiles of every slice
        <case>/embedding_0.npy      (N, E, g, g) float16: their embeddings (memory-mapped when read)
        <case>/tiles_k.npy ...      k >= 1, augmented copies: one S x S crop of a share of the slices,
        <case>/image_k.npy          (M, C, S, S) float16 augmented by `copy_augmentations`,
        <case>/labels_k.npy         (M, S, S) its labels moved alike, and
        <case>/embedding_k.npy      (M, E, g, g) their embeddings

Image-space augmentation cannot reuse a cached embedding, so the cache holds augmented copies
instead: `augmented_copies` copies (a fraction: that share of the slices get one) of each slice,
each with a sequence remap (monotonic, fat/fluid fold or inversion) and the other intensity and
geometric augmentations drawn once, seeded by (case, slice, copy). `key` changes when the
encoder's weights, the plan's preprocessing or model input, or the copies change; a case is
redone when its preprocessed stamp changes. Each case is written under a temporary name and
renamed, so a killed run leaves no half case.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sabnet.io.atomic import read_json, write_json
from sabnet.model.case_predictor import case_tiles, encoder_digest
from sabnet.model.depth_branch import pad_to_input
from sabnet.model.sab_model import SABModel
from sabnet.training.augmentation import copy_augmentations

CACHE_FOLDER = "embeddings"
CACHE_VERSION = 1
COPY_SEED = 7103  # the augmented copies' seed stream: (COPY_SEED, crc32 of the case id, slice, copy)


@dataclass
class CacheSettings:
    """augmented_copies: augmented copies per slice (0.5: half of the slices get one);
    dtype: 'float16' (default; half the disk) or 'float32' (exact, for tests);
    unit_range: the plan scales slices to [0, 1]: augmented images are scaled back to it."""

    augmented_copies: float = 1.0
    dtype: str = "float16"
    unit_range: bool = False


def preprocessing_hash(plan) -> str:
    """A hash of what makes a plan's preprocessed slices (not its training schedule)."""
    parts = {"preprocessing": plan.to_dict()["preprocessing"], "labels": plan.label_mapping,
             "image_size": plan.model["image_size"], "in_channels": plan.model["in_channels"]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 where the processor computes it natively (CUDA; CPUs with AMX or AVX-512 BF16),
    else None (float32): on an AVX2-only CPU, bfloat16 autocast made TinyViT 25x slower."""
    if device.type == "cuda":
        return torch.bfloat16
    cpu = getattr(torch, "cpu", None)
    native = any(getattr(cpu, f, lambda: False)() for f in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return torch.bfloat16 if native else None


class EmbeddingCache:
    """The cache of one dataset for one frozen encoder (see the module docstring)."""

    def __init__(self, preprocessed_dir: Path, key: str, settings: CacheSettings):
        self.root = Path(preprocessed_dir) / CACHE_FOLDER / key
        self.key, self.settings = key, settings
        self._index: dict | None = None

    @staticmethod
    def key_for(model: SABModel, plan_hash: str, settings: CacheSettings) -> str:
        parts = {"version": CACHE_VERSION, "encoder": encoder_digest(model), "plan": plan_hash,
                 "image_size": model.config.image_size, "copies": settings.augmented_copies,
                 "dtype": settings.dtype, "unit_range": settings.unit_range}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    # ---- reading ------------------------------------------------------------------------
    def index(self) -> dict:
        if self._index is None:
            path = self.root / "cache.json"
            self._index = read_json(path) if path.is_file() else {"cases": {}}
        return self._index

    def has(self, case_id: str, stamp: str | None) -> bool:
        entry = self.index()["cases"].get(case_id)
        return entry is not None and entry.get("stamp") == stamp and (self.root / case_id).is_dir()

    def tiles(self, case_id: str, copy: int = 0) -> np.ndarray:
        """(N, 3) int32 (slice, row, col) of a copy's entries."""
        return np.load(self.root / case_id / f"tiles_{copy}.npy")

    def embeddings(self, case_id: str, copy: int = 0) -> np.ndarray:
        """(N, E, g, g) memory map."""
        return np.load(self.root / case_id / f"embedding_{copy}.npy", mmap_mode="r")

    def copy_arrays(self, case_id: str, copy: int) -> tuple[np.ndarray, np.ndarray]:
        """An augmented copy's images (M, C, S, S) and labels (M, S, S), memory maps."""
        folder = self.root / case_id
        return np.load(folder / f"image_{copy}.npy", mmap_mode="r"), np.load(folder / f"labels_{copy}.npy", mmap_mode="r")

    def n_copies(self, case_id: str) -> int:
        return int(self.index()["cases"][case_id]["copies"])

    def lookup(self, case_id: str) -> dict[tuple[int, int, int], int]:
        """{(slice, row, col): entry} of copy 0, for prediction to find a tile's embedding."""
        return {tuple(int(v) for v in t): i for i, t in enumerate(self.tiles(case_id, 0))}

    # ---- building -----------------------------------------------------------------------
    def build(self, model: SABModel, store, case_ids: list[str], device: torch.device | str = "cpu",
              log=print) -> int:
        """Encode every case not cached yet (copy 0 and the augmented copies); returns how many
        cases were encoded. Stale caches of other keys in the dataset are removed first."""
        device = torch.device(device)
        todo = [c for c in case_ids if not self.has(c, store.stamp(c))]
        if not todo:
            return 0
        self._remove_other_keys()
        self.root.mkdir(parents=True, exist_ok=True)
        index = self.index()
        index.update(key=self.key, settings=vars(self.settings), encoder=encoder_digest(model))
        size = model.config.image_size
        n_tiles = sum(len(case_tiles(*store.properties(c)["shape"], size)) for c in todo)
        n_slices = sum(store.properties(c)["shape"][0] for c in todo)
        expected = n_tiles + n_slices * self.settings.augmented_copies
        log(f"embedding cache {self.root}: encoding {len(todo)} cases (about {expected:.0f} slices; once for every "
            f"fold){'' if autocast_dtype(device) is None else ' in bfloat16'}")
        model.eval()
        with tqdm(total=int(round(expected)), desc="embedding cache", unit="slice", dynamic_ncols=True) as bar:
            for case_id in todo:
                self._build_case(model, store, case_id, zlib.crc32(case_id.encode()), size, device, bar)
                index["cases"][case_id] = {"stamp": store.stamp(case_id),
                                           "copies": int(np.ceil(self.settings.augmented_copies))}
                write_json(self.root / "cache.json", index)
        return len(todo)

    def _build_case(self, model: SABModel, store, case_id: str, order: int, size: int, device: torch.device,
                    bar) -> None:
        image, labels = store.image(case_id), store.labels(case_id)
        n_slices, _, rows, cols = image.shape
        tmp = self.root / f".tmp-{uuid.uuid4().hex[:8]}-{case_id}"
        tmp.mkdir(parents=True)
        try:
            tiles = case_tiles(n_slices, rows, cols, size)
            crops = [pad_to_input(torch.from_numpy(np.array(image[t.slice_index, :, t.row:t.row + size,
                                                                  t.col:t.col + size], dtype=np.float32))[None], size)[0]
                     for t in tiles]
            np.save(tmp / "tiles_0.npy", np.array([[t.slice_index, t.row, t.col] for t in tiles], np.int32))
            np.save(tmp / "embedding_0.npy", self._encode(model, crops, device, bar))
            for copy in range(1, int(np.ceil(self.settings.augmented_copies)) + 1):
                self._augmented_copy(model, image, labels, order, copy, size, device, tmp, bar)
            final = self.root / case_id
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _augmented_copy(self, model, image, labels, order: int, copy: int, size: int, device, folder: Path, bar) -> None:
        n_slices, channels, rows, cols = image.shape
        share = self.settings.augmented_copies - (copy - 1)  # the last copy may cover part of the slices
        chosen = [s for s in range(n_slices)
                  if np.random.default_rng([COPY_SEED, order, s, copy]).random() < min(1.0, share)]
        steps = copy_augmentations(self.settings.unit_range)
        images, segs, where = [], [], []
        for s in chosen:
            rng = np.random.default_rng([COPY_SEED, order, s, copy, 1])
            r0 = int(rng.integers(0, max(rows - size, 0) + 1))
            c0 = int(rng.integers(0, max(cols - size, 0) + 1))
            h, w = min(rows, size), min(cols, size)
            data = np.zeros((1, channels, size, size), np.float32)
            seg = np.zeros((1, 1, size, size), np.int16)
            data[0, :, :h, :w] = image[s, :, r0:r0 + h, c0:c0 + w]
            seg[0, 0, :h, :w] = labels[s, r0:r0 + h, c0:c0 + w]
            batch = {"data": data, "seg": seg, "slice_hw": np.array([[h, w]]), "rng": rng}
            for step in steps:
                batch = step(**batch)
            images.append(batch["data"][0])
            segs.append(batch["seg"][0, 0])
            where.append((s, r0, c0))
        dtype = np.dtype(self.settings.dtype)
        np.save(folder / f"tiles_{copy}.npy", np.array(where, np.int32).reshape(-1, 3))
        np.save(folder / f"image_{copy}.npy", np.array(images, dtype).reshape(-1, channels, size, size))
        np.save(folder / f"labels_{copy}.npy", np.array(segs, labels.dtype).reshape(-1, size, size))
        np.save(folder / f"embedding_{copy}.npy",
                self._encode(model, [torch.from_numpy(np.asarray(i, np.float32)) for i in images], device, bar))

    @torch.inference_mode()
    def _encode(self, model: SABModel, crops: list[torch.Tensor], device: torch.device, bar) -> np.ndarray:
        """Embeddings (N, E, g, g) of S x S crops, one encoder call per crop on a CPU."""
        dtype = np.dtype(self.settings.dtype)
        grid, dim = model.config.grid_size, model.config.prompt_embed_dim
        out = np.zeros((len(crops), dim, grid, grid), dtype)
        autocast = autocast_dtype(device)
        batch = 8 if device.type == "cuda" else 1
        for start in range(0, len(crops), batch):
            images = torch.stack(crops[start:start + batch]).to(device)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                embedding = model.image_encoder(model.encoder_input(images))
            out[start:start + len(images)] = embedding.float().cpu().numpy().astype(dtype)
            bar.update(len(images))
        return out

    def _remove_other_keys(self) -> None:
        parent = self.root.parent
        if parent.is_dir():
            for other in parent.iterdir():
                if other.is_dir() and other.name != self.key:
                    shutil.rmtree(other, ignore_errors=True)
