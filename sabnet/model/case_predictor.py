"""Predict one preprocessed case with an ensemble of fold models.

Encoding: every slice goes through each distinct image encoder once, in tiles where a slice is
larger than the encoder input. Folds whose encoders are identical (a frozen pretrained encoder
without adapters, as `lite_medsam_frozen` trains) share one encoding and only decode apart, so a
five-fold ensemble costs about one encoding. The depth branch runs once per case and fold (3D).

Automatic pass: each fold's class probabilities, averaged. Prompted slices then run the prompted
pass (SAM's object output, averaged over the folds) and the prompted label takes the object's
probability there (or the larger of the two: `object_merge`); zero-shot, `carry` follows each
prompt's object to the neighbouring slices (sabnet.model.prompt_carrying). Last, a positive click
names the structure it lands on (sabnet.model.click_labels: the slice's connected component, or
with `carry` the volume's). With `automatic=False` (pretrained weights used zero-shot) only
prompted objects are segmented and everything else is background.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from sabnet.io.slice_frame import depth_positions
from sabnet.model.click_labels import apply_clicked_labels
from sabnet.model.depth_branch import pad_to_input
from sabnet.model.point_box_search import box_for_point
from sabnet.model.prompt_carrying import CarryRules, carry_objects
from sabnet.model.sab_model import SABModel
from sabnet.model.slice_prompts import SlicePrompt, batch_prompts

MODES = ("2d", "3d")
OBJECT_MERGES = ("union", "replace")  # how a prompted object enters its label (merge_object)
TILE_OVERLAP = 0.25
# LiteMedSAM's object output under-segments bone: on phantoms of knee, hip, shoulder and spine in
# T1, T2, PD and STIR, one box per bone and slice gave 3D Dice 0.848 / 0.867 / 0.878 at thresholds
# 0.5 / 0.3 / 0.2 (0.843 / 0.870 at 0.5 / 0.2 with boxes 10 % looser); 0.2 is used zero-shot
ZERO_SHOT_OBJECT_THRESHOLD = 0.2
# LiteMedSAM was trained with boxes alone: a mask prompt makes it worse (carried boxes on the real
# spine, 2 cases: 0.611 per vertebra with the previous mask, 0.649 without), so zero-shot carries
# boxes, drawn where the rescaled probability is >= 0.6 (raw 0.27: at raw 0.5 the box shrinks slice
# after slice, at the object itself it grows), and stops where the object's signal leaves the seed's
# (4 development volumes: 0.688 -> 0.770 per vertebra); each box stays within the seed object's box
# grown by a fifth of its side, so that L5's walk cannot creep into the sacrum and ilium (0.770 ->
# 0.777; sabnet.model.prompt_carrying)
ZERO_SHOT_CARRY = CarryRules(use_mask=False, box_threshold=0.6, max_intensity_shift=2.0, seed_box_margin=0.2)


def tile_origins(n: int, size: int, overlap: float = TILE_OVERLAP) -> list[int]:
    """Start pixels of tiles of `size` covering n pixels (one tile at 0 when n <= size)."""
    if n <= size:
        return [0]
    count = int(np.ceil((n - size) / (size * (1 - overlap)))) + 1
    return [int(round(v)) for v in np.linspace(0, n - size, count)]


@dataclass(frozen=True)
class Tile:
    slice_index: int
    row: int
    col: int


def case_tiles(n_slices: int, rows: int, cols: int, size: int) -> list[Tile]:
    return [Tile(s, r, c) for s in range(n_slices) for r in tile_origins(rows, size) for c in tile_origins(cols, size)]


def encoder_digest(model: SABModel) -> str:
    """A digest of everything between a slice and its image embedding (encoder and channel mixer)."""
    digest = hashlib.sha256()
    for prefix in ("image_encoder.", "channel_mixer."):
        for name, tensor in model.state_dict().items():
            if name.startswith(prefix):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class CaseEmbeddings:
    """The image embeddings of one case's tiles, per distinct encoder, computed when first asked for
    (kept in float16 on the CPU only where `keep` says: prompted slices, or every slice when
    prompts are carried), or read from `stored`: {encoder digest: ({(slice, row, col): entry},
    (N, E, g, g) array)}, a cache's embeddings of this very preprocessed image."""

    def __init__(self, predictor: "EnsemblePredictor", image: np.ndarray, keep_all: bool = False,
                 keep: set[int] | None = None, stored: dict[str, tuple[dict, np.ndarray]] | None = None):
        self.predictor, self.image = predictor, image
        self.keep_all, self.keep = keep_all, keep or set()
        self._kept: dict[tuple[int, Tile], torch.Tensor] = {}
        self._stored = {g: stored[d] for g, d in enumerate(predictor.group_digests) if stored and d in stored}

    def get(self, group: int, tiles: list[Tile]) -> torch.Tensor:
        """(len(tiles), E, g, g) float32 on the predictor's device."""
        computed = {}
        if group in self._stored:
            lookup, array = self._stored[group]
            for t in tiles:
                entry = lookup.get((t.slice_index, t.row, t.col))
                if entry is not None:
                    computed[t] = torch.from_numpy(np.asarray(array[entry], dtype=np.float32)).to(self.predictor.device)
        missing = [t for t in tiles if (group, t) not in self._kept and t not in computed]
        if missing:
            model = self.predictor.models[self.predictor.group_models[group][0]]
            with torch.inference_mode():
                for start in range(0, len(missing), self.predictor.encode_batch):
                    part = missing[start:start + self.predictor.encode_batch]
                    images = self.predictor.tile_images(self.image, part, model.config.image_size)
                    self.predictor.encoder_calls += 1
                    out = model.image_encoder(model.encoder_input(images))
                    for t, e in zip(part, out):
                        computed[t] = e
                        if self.keep_all or t.slice_index in self.keep:
                            self._kept[(group, t)] = e.to("cpu", torch.float16)
        device = self.predictor.device
        return torch.stack([computed[t] if t in computed else self._kept[(group, t)].to(device, torch.float32)
                            for t in tiles])


class EnsemblePredictor:
    """Class probabilities of preprocessed cases from one or more fold models (same plan).

    models: fold models in eval mode, on `device`.
    batch_size: tiles per decoder call; encode_batch: tiles per encoder call (1 on a CPU, where a
        TinyViT's large first-stage activations make bigger batches slower per slice).
    automatic: run the automatic pass (False: pretrained weights used zero-shot, prompts only).
    carry_rules: how `carry` follows objects to neighbouring slices.
    object_threshold: the object probability that counts as inside (objects are reported rescaled
        so that 0.5 stands for it): 0.5 for trained models; pretrained LiteMedSAM under-segments
        bone and takes ZERO_SHOT_OBJECT_THRESHOLD.
    point_boxes: give a lone positive click a box first (sabnet.model.point_box_search), for
        pretrained networks that were trained with boxes only.
    object_merge: how a prompted object enters its label (`merge_object`): 'union' (default with
        the automatic pass: an object adds where the automatic pass missed, never removes) or
        'replace' (default zero-shot, where there is no automatic pass).
    walk_objects: `carry` walks each object slice by slice with the prompted pass (default only
        zero-shot). With the automatic pass, carrying is the 3D naming of the clicked bones
        (sabnet.model.click_labels): on the real spine (sab_tiny, 8 CPU minutes, fold 0) walking
        added nothing to it, and 'replace' with walking lost 0.20 per vertebra (0.612 against
        0.813; up to 0.26 on one volume) (docs/benchmarks.md).
    """

    def __init__(self, models: list[SABModel], device: str | torch.device = "cpu", batch_size: int = 8,
                 automatic: bool = True, carry_rules: CarryRules | None = None, encode_batch: int | None = None,
                 object_threshold: float = 0.5, point_boxes: bool = False, object_merge: str | None = None,
                 walk_objects: bool | None = None):
        if not models:
            raise ValueError("no models to predict with")
        self.models = models
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.encode_batch = encode_batch or (batch_size if self.device.type == "cuda" else 1)
        self.automatic = automatic
        self.carry_rules = carry_rules or CarryRules()
        self.object_logit_shift = float(np.log(object_threshold / (1 - object_threshold)))
        self.point_boxes = point_boxes
        self.object_merge = object_merge or ("union" if automatic else "replace")
        if self.object_merge not in OBJECT_MERGES:
            raise ValueError(f"object_merge must be one of {OBJECT_MERGES}, got {object_merge!r}")
        self.walk_objects = (not automatic) if walk_objects is None else walk_objects
        self.config = models[0].config
        digests = [encoder_digest(m) for m in models]
        unique = list(dict.fromkeys(digests))
        self.group_digests = unique
        self.model_group = [unique.index(d) for d in digests]  # model index -> encoder group
        self.group_models = [[m for m, g in enumerate(self.model_group) if g == group] for group in range(len(unique))]
        self.encoder_calls = 0  # encoder forward calls so far (tests count them)

    @property
    def n_classes(self) -> int:
        return self.config.n_outputs

    @torch.inference_mode()
    def predict(self, image: np.ndarray, depth_image: np.ndarray, properties: dict, mode: str = "2d",
                prompts: dict[int, list[SlicePrompt]] | None = None, carry: bool = False,
                embeddings: CaseEmbeddings | None = None) -> np.ndarray:
        """image (n_slices, C, rows, cols), depth_image (C, D, h, w) -> probabilities
        (n_classes, n_slices, rows, cols) float32, averaged over the models.

        prompts: {slice index: [SlicePrompt, ...]}; the prompted labels take their prompted objects'
        probabilities there (and, with `carry`, on the neighbouring slices the objects reach); the
        structure under a positive click takes its label (in 3D with `carry`).
        embeddings: this image's CaseEmbeddings, to share them between calls (both modes).
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        prompts = {s: p for s, p in (prompts or {}).items() if p}
        cache = embeddings or CaseEmbeddings(self, image, keep_all=carry and bool(prompts), keep=set(prompts))
        volumes = self.probability_volumes(depth_image, mode)
        n_slices, _, rows, cols = image.shape
        if self.automatic:
            probabilities = self.automatic_probabilities(cache, volumes, properties)
        else:
            probabilities = torch.zeros((self.n_classes, n_slices, rows, cols))
            probabilities[0] = 1.0
        if prompts:
            def segment(s: int, prompt: SlicePrompt) -> np.ndarray:
                return self.object_probability(cache, s, prompt, volumes, properties)

            objects = (carry_objects(prompts, n_slices, segment, self.carry_rules, image[:, 0])
                       if carry and self.walk_objects else
                       {(s, p.label): segment(s, p) for s, ps in prompts.items() for p in ps})
            for (s, label), p in objects.items():
                probabilities[:, s] = merge_object(probabilities[:, s], torch.from_numpy(p), label,
                                                   self.config.output_mode, self.object_merge)
            if self.automatic and self.config.output_mode == "softmax":
                probabilities = apply_clicked_labels(probabilities, prompts, carried=carry)
        return probabilities.numpy()

    def probability_volumes(self, depth_image: np.ndarray, mode: str) -> list[torch.Tensor | None]:
        """Each model's depth-branch bone probabilities (1, 1, D, H, W) in 3D mode (None in 2D)."""
        if mode != "3d":
            return [None] * len(self.models)
        volume = torch.from_numpy(np.ascontiguousarray(depth_image[:1], dtype=np.float32))[None].to(self.device)
        with torch.inference_mode():
            return [model.depth_probabilities(volume) for model in self.models]

    @torch.inference_mode()
    def automatic_probabilities(self, cache: CaseEmbeddings, volumes: list, properties: dict,
                                slices: list[int] | None = None) -> torch.Tensor:
        """The automatic pass, averaged over the models: (n_classes, n_slices, rows, cols) on the CPU
        (only `slices` filled when given)."""
        image = cache.image
        n_slices, _, rows, cols = image.shape
        size = self.config.image_size
        tiles = [t for t in case_tiles(n_slices, rows, cols, size) if slices is None or t.slice_index in slices]
        accumulated = torch.zeros((self.n_classes, n_slices, rows, cols))
        weights = torch.zeros((1, n_slices, rows, cols))
        for start in range(0, len(tiles), self.batch_size):
            batch = tiles[start:start + self.batch_size]
            images = None
            for group, members in enumerate(self.group_models):
                embedding = cache.get(group, batch)
                for m in members:
                    model = self.models[m]
                    images = self.tile_images(image, batch, size) if images is None else images
                    attention = self.tile_attention(model, volumes[m], batch, properties, rows, cols)
                    logits = model.decode(model.encode(images, embedding), attention)
                    probs = self.probabilities(model, logits).float().cpu()
                    for t, p in zip(batch, probs):
                        h, w = min(size, rows - t.row), min(size, cols - t.col)
                        accumulated[:, t.slice_index, t.row:t.row + h, t.col:t.col + w] += p[:, :h, :w]
            for t in batch:
                h, w = min(size, rows - t.row), min(size, cols - t.col)
                weights[:, t.slice_index, t.row:t.row + h, t.col:t.col + w] += len(self.models)
        return accumulated / weights.clamp(min=1)

    @torch.inference_mode()
    def object_probability(self, cache: CaseEmbeddings, s: int, prompt: SlicePrompt, volumes: list,
                           properties: dict) -> np.ndarray:
        """The prompted object's probability on slice s, (rows, cols) float32, averaged over models;
        tiles the prompt does not reach count as background."""
        if self.point_boxes:
            prompt = box_for_point(prompt, cache.image.shape[2:],
                                   lambda p: self._object_probability(cache, s, p, volumes, properties))
        return self._object_probability(cache, s, prompt, volumes, properties)

    def _object_probability(self, cache: CaseEmbeddings, s: int, prompt: SlicePrompt, volumes: list,
                            properties: dict) -> np.ndarray:
        image = cache.image
        _, _, rows, cols = image.shape
        size, cfg = self.config.image_size, self.config
        tiles = [t for t in case_tiles(image.shape[0], rows, cols, size) if t.slice_index == s]
        model_prompts = batch_prompts([prompt] * len(tiles), [(t.row, t.col) for t in tiles], size, cfg.mask_size,
                                      cfg.max_prompt_points, self.device)
        reached = ~model_prompts.automatic
        out = torch.zeros((rows, cols))
        weight = torch.zeros((rows, cols))
        for t in tiles:
            h, w = min(size, rows - t.row), min(size, cols - t.col)
            weight[t.row:t.row + h, t.col:t.col + w] += 1
        index = torch.nonzero(reached).flatten()
        if len(index):
            chosen = [tiles[i] for i in index.tolist()]
            images = self.tile_images(image, chosen, size)
            for group, members in enumerate(self.group_models):
                embedding = cache.get(group, chosen)
                for m in members:
                    model = self.models[m]
                    attention = self.tile_attention(model, volumes[m], chosen, properties, rows, cols)
                    logits = model.decode_object(model.encode(images, embedding), model_prompts[index], attention)
                    logits = model.upsample_logits(logits) - self.object_logit_shift
                    probs = torch.sigmoid(logits).float().cpu() / len(self.models)
                    for t, p in zip(chosen, probs):
                        h, w = min(size, rows - t.row), min(size, cols - t.col)
                        out[t.row:t.row + h, t.col:t.col + w] += p[0, :h, :w]
        return (out / weight.clamp(min=1)).numpy()

    def tile_images(self, image: np.ndarray, tiles: list[Tile], size: int) -> torch.Tensor:
        """(len(tiles), C, S, S) float32 on the device, each tile at the top-left, zero-padded."""
        parts = [torch.from_numpy(np.ascontiguousarray(image[t.slice_index, :, t.row:t.row + size, t.col:t.col + size],
                                                       dtype=np.float32)) for t in tiles]
        return torch.stack([pad_to_input(p[None], size)[0] for p in parts]).to(self.device)

    def tile_attention(self, model: SABModel, prob_volume: torch.Tensor | None, tiles: list[Tile], properties: dict,
                       rows: int, cols: int) -> torch.Tensor | None:
        """Padded depth-attention maps (B, 1, S, S) of the tiles in 3D mode, None in 2D."""
        if prob_volume is None:
            return None
        size = model.config.image_size
        positions = torch.as_tensor(depth_positions([t.slice_index for t in tiles], properties["shape"][0],
                                                    properties["depth_shape"][0]),
                                    dtype=torch.float32, device=self.device)
        maps = model.slice_attention(prob_volume, positions, (rows, cols))
        return torch.cat([pad_to_input(m[None, :, t.row:t.row + size, t.col:t.col + size], size) for m, t in zip(maps, tiles)])

    def probabilities(self, model: SABModel, logits: torch.Tensor) -> torch.Tensor:
        logits = model.upsample_logits(logits)
        return torch.sigmoid(logits) if model.config.output_mode == "sigmoid" else torch.softmax(logits, dim=1)


def merge_object(probabilities: torch.Tensor, object_probability: torch.Tensor, label: int, output_mode: str,
                 how: str = "replace") -> torch.Tensor:
    """A slice's class probabilities (K, rows, cols) with a prompted object (rows, cols) of `label`.

    softmax: the label takes the object's probability ('replace': a click both adds and removes;
    'union': the larger of the object's and the label's own, a click only adds) and the other
    classes share the rest in their old proportions; sigmoid (one bone channel): the bone channel
    takes the larger of the two.
    """
    if output_mode == "sigmoid":
        return torch.maximum(probabilities, object_probability[None])
    if how == "union":
        object_probability = torch.maximum(object_probability, probabilities[label])
    others = probabilities.clone()
    others[label] = 0
    total = others.sum(dim=0)
    empty = total < 1e-6  # where the label had it all, the rest goes to the background
    others[0] = torch.where(empty, torch.ones_like(total), others[0])
    out = others * ((1 - object_probability) / torch.where(empty, torch.ones_like(total), total))[None]
    out[label] = object_probability
    return out
