"""The segmentation phases: stage 1 ('2d', adapter-SAM on slices) and stage 2's 'fusion' phase
(fusion block, gate and decoder on slices with depth-attention maps, image encoder frozen).

Training batches come from the data pipeline (`SliceDataLoader` + `make_augmenter`) with hybrid
prompts. Every sample trains the automatic pass against the full label slice (every output
channel); a prompted sample (points and/or a box for one label) also trains the prompted pass
(SAM's object output) against that label's mask, as prediction uses both. Half of the prompted
samples become corrections: their points move into the errors of the model's own automatic
prediction of the same step (`correction_prompts`), so that a click in a missed bone brings it back.
Validation: a fixed, seeded set of `plan.training.validation_slices` foreground slices of the
fold's validation cases, without augmentation, in automatic mode; pseudo Dice per label from true
and false positives and negatives summed over all those slices (as nnU-Net's pseudo Dice).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from sabnet.model.prompts import Prompts
from sabnet.model.sab_model import SABModel
from sabnet.planning.plans import Plan
from sabnet.preprocessing.store import PreprocessedStore
from sabnet.training.cached_loader import CachedSliceDataLoader
from sabnet.training.correction_prompts import correction_prompts, correction_samples, predicted_labels
from sabnet.training.data_loader import SliceDataLoader, make_augmenter, sampler_from_plan
from sabnet.training.distributed import DistributedContext, all_reduce_sum, autocast
from sabnet.training.embedding_cache import EmbeddingCache
from sabnet.training.losses import object_loss, segmentation_loss
from sabnet.training.schedule import Schedule
from sabnet.training.trainer import ValidationScores, epoch_seed

CORRECTION_SHARE = 0.5  # of the prompted samples: points in the model's own errors (correction_prompts)

VALIDATION_SEED_OFFSET = 1000  # validation slices are drawn with seed plan seed + offset + fold


class SlicePhase:
    """Phase '2d' or 'fusion' of one fold.

    attention_dir: stage 2's per-case bone probability volumes (fusion only); the loader turns
    them into each slice's attention map.
    n_workers: augmentation worker processes (0: in this process).
    pretrained: the model's encoders came pretrained (a SAM checkpoint, or sab_finetune's source):
        they stay frozen but for the image encoder's adapters.
    cache: the embedding cache of a frozen encoder: batches then carry the embeddings and the
        encoder does not run (sabnet.training.cached_loader).
    """

    tracks_best = True
    find_unused_parameters = True

    def __init__(self, name: str, plan: Plan, store: PreprocessedStore, train_ids: list[str], val_ids: list[str],
                 schedule: Schedule, fold: int, ctx: DistributedContext, n_workers: int, pretrained: bool,
                 attention_dir: Path | None = None, cache: EmbeddingCache | None = None) -> None:
        if name not in ("2d", "fusion"):
            raise ValueError(f"SlicePhase is '2d' or 'fusion', not {name!r}")
        if (name == "fusion") != (attention_dir is not None):
            raise ValueError("the fusion phase (and only it) needs attention_dir")
        self.name, self.stage = name, ("2d" if name == "2d" else "3d")
        self.plan, self.store, self.train_ids, self.val_ids = plan, store, train_ids, val_ids
        self.schedule, self.fold, self.ctx = schedule, fold, ctx
        self.n_workers, self.pretrained, self.attention_dir = n_workers, pretrained, attention_dir
        self.cache = cache
        self.output_mode = plan.model["output_mode"]
        self.labels = {name: value for name, value in plan.labels.items() if value != 0}
        self._validation_batches: list[dict] | None = None
        self._validation_limit: int | None = None
        self._sampler = sampler_from_plan(plan)
        self._rng = np.random.default_rng(plan.training.seed)
        self._prefetched: tuple[int, object] | None = None  # (epoch, started augmenter)

    # ---- Phase interface -------------------------------------------------------------------
    def configure(self, model: SABModel) -> None:
        model.configure_trainable(self.pretrained, self.stage)
        if self.name == "fusion":  # attention comes from the saved probabilities: the depth net stays as saved
            for p in model.depth_net.parameters():
                p.requires_grad_(False)

    def ddp_module(self, model: SABModel) -> nn.Module:
        return model

    @contextlib.contextmanager
    def batches(self, epoch: int) -> Iterator[Iterator[dict]]:
        seed = epoch_seed(self.plan.training.seed, self.fold, self.name, epoch, self.ctx.rank)
        if self._prefetched is not None and self._prefetched[0] == epoch:
            augmenter = self._prefetched[1]
            self._prefetched = None
        else:
            self.close()
            augmenter = self._training_augmenter(seed)
        self._rng = np.random.default_rng(seed + 1)  # correction prompts: replayed exactly on resume
        try:
            yield augmenter
        finally:
            _finish(augmenter)

    def prefetch(self, epoch: int) -> None:
        """Start the augmentation workers of `epoch` now: they fork and fill their queues while the
        current epoch validates (about 0.3 s an epoch on two cores). `batches(epoch)` takes them."""
        if self.n_workers == 0 or self._prefetched is not None:
            return
        augmenter = self._training_augmenter(epoch_seed(self.plan.training.seed, self.fold, self.name, epoch,
                                                        self.ctx.rank))
        try:
            augmenter.restart()  # batchgenerators' public way to start the worker processes
        except BaseException:
            _finish(augmenter)
            raise
        self._prefetched = (epoch, augmenter)

    def close(self) -> None:
        """Stop prefetched workers that no epoch took (the phase ended earlier than planned)."""
        if self._prefetched is not None:
            _finish(self._prefetched[1])
            self._prefetched = None

    def training_loss(self, net: nn.Module, batch: dict) -> Tensor:
        images, target, attention = self._tensors(batch)
        prompts = Prompts(
            label=torch.as_tensor(batch["prompt_label"], dtype=torch.long), points=torch.as_tensor(batch["points"]),
            point_labels=torch.as_tensor(batch["point_labels"], dtype=torch.long),
            boxes=torch.as_tensor(batch["boxes"]), box_valid=torch.as_tensor(batch["box_valid"], dtype=torch.bool),
        ).to(self.ctx.device)
        model = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
        prompted = [b for b in range(prompts.batch_size) if not bool(prompts.automatic[b]) and int(prompts.label[b]) != 0]
        corrections = correction_samples(prompts, self._rng, CORRECTION_SHARE)

        def prompts_for(automatic_logits: Tensor) -> tuple[Tensor, Prompts]:
            chosen = prompts
            if corrections:
                predicted = predicted_labels(automatic_logits[corrections], self.output_mode)
                chosen = correction_prompts(prompts, corrections, target.cpu().numpy(), predicted,
                                            model.config.mask_size, self._sampler, self._rng)
            index = torch.as_tensor(prompted, dtype=torch.long, device=images.device)
            return index, chosen[index]

        embedding = self._cached_embedding(batch)
        logits, objects, index = net(images, attention, embedding=embedding, prompts_for=prompts_for)
        loss = segmentation_loss(logits.float(), target, self.output_mode)
        if objects is not None:
            wanted = (target[index] == prompts.label[index][:, None, None])[:, None]
            loss = loss + object_loss(objects.float(), wanted)
        return loss

    def limit_validation(self, n_samples: int) -> None:
        self._validation_limit = n_samples

    @torch.no_grad()
    def validate(self, model: SABModel) -> ValidationScores:
        """Pseudo Dice per label on the validation slices (the first `limit_validation` of them
        under a time budget; shared out over processes)."""
        batches = self.validation_batches()
        if self._validation_limit is not None:
            kept, left = [], self._validation_limit
            for batch in batches:
                if left <= 0:
                    break
                kept.append({k: v[:left] for k, v in batch.items()})
                left -= len(batch["data"])
            batches = kept
        counts = torch.zeros(len(self.labels), 3, dtype=torch.float64)  # tp, fp, fn per label
        loss_sum = torch.zeros(2, dtype=torch.float64)  # sum of batch losses, number of batches
        for batch in batches[self.ctx.rank::self.ctx.world_size]:
            images, target, attention = self._tensors(batch)
            with autocast(self.ctx.device):
                logits = model(images, attention, embedding=self._cached_embedding(batch)).float()
            loss_sum += torch.tensor([float(segmentation_loss(logits, target, self.output_mode)), 1.0])
            predicted = (logits[:, 0] > 0).long() if self.output_mode == "sigmoid" else logits.argmax(1)
            if self.output_mode == "sigmoid":
                target = (target > 0).long()
            for i, value in enumerate(self.labels.values()):
                p, t = predicted == value, target == value
                counts[i] += torch.tensor([(p & t).sum().item(), (p & ~t).sum().item(), (~p & t).sum().item()],
                                          dtype=torch.float64)
        counts = all_reduce_sum(counts, self.ctx)
        loss_sum = all_reduce_sum(loss_sum, self.ctx)
        dice = {}
        for (name, _), (tp, fp, fn) in zip(self.labels.items(), counts.tolist()):
            dice[name] = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) > 0 else None
        loss = loss_sum[0].item() / loss_sum[1].item() if loss_sum[1] > 0 else None
        return ValidationScores(loss, dice)

    # ---- helpers ---------------------------------------------------------------------------
    def validation_batches(self) -> list[dict]:
        """The fixed validation slices (drawn once per phase), as batches of the training batch size."""
        if self._validation_batches is None:
            n_slices = self.plan.training.validation_slices
            seed = self.plan.training.seed + VALIDATION_SEED_OFFSET + self.fold
            augmenter = self._augmenter(self.val_ids, seed, 1.0, training=False, n_workers=0)
            batches, drawn = [], 0
            while drawn < n_slices:
                batch = next(augmenter)
                keep = min(len(batch["data"]), n_slices - drawn)
                batches.append({k: batch[k][:keep] for k in ("data", "seg", "attention", "embedding") if k in batch})
                drawn += keep
            _finish(augmenter)
            self._validation_batches = batches
        return self._validation_batches

    def _training_augmenter(self, seed: int):
        return self._augmenter(self.train_ids, seed, self.plan.training.foreground_fraction, training=True)

    def _augmenter(self, case_ids: list[str], seed: int, foreground_fraction: float, training: bool,
                   n_workers: int | None = None):
        n_workers = self.n_workers if n_workers is None else n_workers
        common = dict(foreground_fraction=foreground_fraction, seed=seed, attention_dir=self.attention_dir,
                      number_of_threads_in_multithreaded=max(1, n_workers))
        if self.cache is not None:  # augmentation lives in the cache's copies
            loader = CachedSliceDataLoader(self.store, case_ids, self.plan, self.schedule.batch_size, cache=self.cache,
                                           augmented=training, **common)
            return make_augmenter(loader, self.plan, n_workers, seed, training=False)
        loader = SliceDataLoader(self.store, case_ids, self.plan, self.schedule.batch_size, **common)
        return make_augmenter(loader, self.plan, n_workers, seed, training=training)

    def _cached_embedding(self, batch: dict) -> Tensor | None:
        """The batch's image embeddings (B, E, g, g) float32 when it comes from the embedding cache."""
        if "embedding" not in batch:
            return None
        return torch.as_tensor(np.asarray(batch["embedding"]), dtype=torch.float32).to(self.ctx.device)

    def _tensors(self, batch: dict) -> tuple[Tensor, Tensor, Tensor | None]:
        """images (B, C, S, S) float, target (B, S, S) long, attention (B, 1, S, S) or None, on the device."""
        device = self.ctx.device
        images = torch.as_tensor(np.asarray(batch["data"], dtype=np.float32)).to(device)
        seg = torch.as_tensor(np.asarray(batch["seg"])).long()
        target = seg.reshape(seg.shape[0], *seg.shape[-2:]).to(device)
        attention = None
        if self.name == "fusion":
            attention = torch.as_tensor(np.asarray(batch["attention"], dtype=np.float32)).to(device)
        return images, target, attention


def _finish(augmenter) -> None:
    """Stop a MultiThreadedAugmenter's worker processes (an in-process augmenter has none)."""
    finish = getattr(augmenter, "_finish", None)
    if finish is not None:
        finish()

