"""Predict one preprocessed case with an ensemble of fold models: all slices through the encoder in
batches (tiles where a slice is larger than the encoder input), the depth branch once per case and
fold (3D mode), prompted slices decoded again from the same embeddings, probabilities averaged.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from sabnet.model.slice_prompts import SlicePrompt, batch_prompts
from sabnet.io.slice_frame import depth_positions
from sabnet.model.depth_branch import pad_to_input
from sabnet.model.sab_model import SABModel

MODES = ("2d", "3d")
TILE_OVERLAP = 0.25


def tile_origins(n: int, size: int, overlap: float = TILE_OVERLAP) -> list[int]:
    """Start pixels of tiles of `size` covering n pixels (one tile at 0 when n <= size)."""
    if n <= size:
        return [0]
    count = int(np.ceil((n - size) / (size * (1 - overlap)))) + 1
    return [int(round(v)) for v in np.linspace(0, n - size, count)]


@dataclass
class Tile:
    slice_index: int
    row: int
    col: int


def case_tiles(n_slices: int, rows: int, cols: int, size: int) -> list[Tile]:
    return [Tile(s, r, c) for s in range(n_slices) for r in tile_origins(rows, size) for c in tile_origins(cols, size)]


class EnsemblePredictor:
    """Class probabilities of preprocessed cases from one or more fold models (same plan).

    models: fold models in eval mode, on `device`.
    batch_size: tiles per encoder call.
    """

    def __init__(self, models: list[SABModel], device: str | torch.device = "cpu", batch_size: int = 8):
        if not models:
            raise ValueError("no models to predict with")
        self.models = models
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.config = models[0].config

    @property
    def n_classes(self) -> int:
        return self.config.n_outputs

    @torch.inference_mode()
    def predict(self, image: np.ndarray, depth_image: np.ndarray, properties: dict, mode: str = "2d",
                prompts: dict[int, list[SlicePrompt]] | None = None) -> np.ndarray:
        """image (n_slices, C, rows, cols), depth_image (C, D, h, w) -> probabilities
        (n_classes, n_slices, rows, cols) float32, averaged over the models.

        prompts: {slice index: [SlicePrompt, ...]}; those slices use prompted mode for the
        prompted labels, the others stay automatic.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        total = None
        for model in self.models:
            probs = self._predict_one_model(model, image, depth_image, properties, mode, prompts or {})
            total = probs if total is None else total + probs
        return (total / len(self.models)).numpy()

    def _predict_one_model(self, model: SABModel, image: np.ndarray, depth_image: np.ndarray, properties: dict,
                           mode: str, prompts: dict[int, list[SlicePrompt]]) -> torch.Tensor:
        cfg = model.config
        size = cfg.image_size
        n_slices, _, rows, cols = image.shape
        tiles = case_tiles(n_slices, rows, cols, size)
        prob_volume = None
        if mode == "3d":
            volume = torch.from_numpy(np.ascontiguousarray(depth_image[:1], dtype=np.float32))[None].to(self.device)
            prob_volume = model.depth_probabilities(volume)  # once per case
        accumulated = torch.zeros((self.n_classes, n_slices, rows, cols))
        weights = torch.zeros((1, n_slices, rows, cols))
        for start in range(0, len(tiles), self.batch_size):
            batch = tiles[start:start + self.batch_size]
            embeddings, attention = self.encode_tiles(model, image, batch, prob_volume, properties)
            probs = self.decode_tiles(model, embeddings, attention, batch, prompts)
            for t, p in zip(batch, probs.float().cpu()):
                h, w = min(size, rows - t.row), min(size, cols - t.col)
                accumulated[:, t.slice_index, t.row:t.row + h, t.col:t.col + w] += p[:, :h, :w]
                weights[:, t.slice_index, t.row:t.row + h, t.col:t.col + w] += 1
        return accumulated / weights

    def encode_tiles(self, model: SABModel, image: np.ndarray, tiles: list[Tile], prob_volume: torch.Tensor | None,
                     properties: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image embeddings of `tiles` (B, E, g, g) and, in 3D mode, their padded attention maps."""
        size = model.config.image_size
        images = torch.stack([self._tile_image(image, t, size) for t in tiles]).to(self.device)
        attention = None
        if prob_volume is not None:
            attention = self._attention(model, prob_volume, tiles, properties, image.shape[2], image.shape[3])
        return model.encode(images), attention

    def decode_tiles(self, model: SABModel, embeddings: torch.Tensor, attention: torch.Tensor | None,
                     tiles: list[Tile], prompts: dict[int, list[SlicePrompt]]) -> torch.Tensor:
        """Probabilities (B, n_classes, S, S) of tiles from their embeddings, prompted where asked."""
        size = model.config.image_size
        probs = self._probabilities(model, model.decode(embeddings, None, attention), size)
        prompted = [(i, p) for i, t in enumerate(tiles) for p in prompts.get(t.slice_index, [])]
        if prompted:
            probs = self._apply_prompts(model, embeddings, attention, tiles, probs, prompted, size)
        return probs

    def _tile_image(self, image: np.ndarray, tile: Tile, size: int) -> torch.Tensor:
        part = torch.from_numpy(np.ascontiguousarray(image[tile.slice_index, :, tile.row:tile.row + size, tile.col:tile.col + size]))
        return pad_to_input(part[None].float(), size)[0]

    def _attention(self, model: SABModel, prob_volume: torch.Tensor, batch: list[Tile], properties: dict,
                   rows: int, cols: int) -> torch.Tensor:
        size = model.config.image_size
        positions = torch.as_tensor(depth_positions([t.slice_index for t in batch], properties["shape"][0],
                                                    properties["depth_shape"][0]),
                                    dtype=torch.float32, device=self.device)
        maps = model.slice_attention(prob_volume, positions, (rows, cols))
        return torch.cat([pad_to_input(m[None, :, t.row:t.row + size, t.col:t.col + size], size) for m, t in zip(maps, batch)])

    def _probabilities(self, model: SABModel, logits: torch.Tensor, size: int) -> torch.Tensor:
        logits = model.upsample_logits(logits, (size, size))
        return torch.sigmoid(logits) if model.config.output_mode == "sigmoid" else torch.softmax(logits, dim=1)

    def _apply_prompts(self, model: SABModel, embeddings: torch.Tensor, attention: torch.Tensor | None,
                       batch: list[Tile], probs: torch.Tensor, prompted: list[tuple[int, SlicePrompt]],
                       size: int) -> torch.Tensor:
        """Decode prompted (tile, label) pairs from the cached embeddings and merge them: a prompted
        label takes the prompted run's probability; the other classes take the mean of the runs on
        that tile; each pixel is renormalised (softmax mode)."""
        cfg = model.config
        index = [i for i, _ in prompted]
        model_prompts = batch_prompts([p for _, p in prompted], [(batch[i].row, batch[i].col) for i in index],
                                      size, cfg.mask_size, cfg.max_prompt_points, self.device)
        att = attention[index] if attention is not None else None
        runs = self._probabilities(model, model.decode(embeddings[index], model_prompts, att), size)
        probs = probs.clone()
        by_tile: dict[int, list[int]] = defaultdict(list)
        for run, (i, _) in enumerate(prompted):
            by_tile[i].append(run)
        for i, run_ids in by_tile.items():
            merged = runs[run_ids].mean(dim=0)
            for run in run_ids:
                label = prompted[run][1].label
                channel = 0 if cfg.output_mode == "sigmoid" else label
                merged[channel] = runs[run, channel]
            if cfg.output_mode == "softmax":
                merged = merged / merged.sum(dim=0, keepdim=True).clamp(min=1e-6)
            probs[i] = merged
        return probs
