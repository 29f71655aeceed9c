"""Stage 2, first phase: train the depth net on the low-resolution volumes; then each case's bone
probability volume is saved for the fusion phase.

The depth net reads a case's low-resolution volume (first channel, as prediction does) and is
trained with Dice + BCE against `depth_labels >= 0.5` (voxels that are at least half bone), one
volume per step, with random flips along each axis and a random intensity scale (0.9-1.1) as
augmentation. Validation: Dice of `p >= 0.5` on the fold's validation volumes, voxels summed over
all of them.

`write_depth_probabilities` then stores `fold_N/depth_probabilities/<case>.npy` ((D, h, w) float32,
the net's probabilities, exactly what prediction computes) for the loader's `attention_dir`.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from sabnet.io.atomic import atomic_path
from sabnet.model.sab_model import SABModel
from sabnet.planning.plans import Plan
from sabnet.preprocessing.store import PreprocessedStore
from sabnet.training.distributed import DistributedContext, all_reduce_sum, autocast
from sabnet.training.losses import dice_bce_loss
from sabnet.training.trainer import ValidationScores, epoch_seed

BONE_SHARE = 0.5          # a low-resolution voxel counts as bone when at least this share of it is bone
INTENSITY_SCALE = (0.9, 1.1)


class DepthPhase:
    """Phase 'depth' of one fold: only `model.depth_net` trains."""

    name = "depth"
    stage = "3d"
    tracks_best = False
    find_unused_parameters = False
    n_workers = 0  # volumes are read in this process

    def __init__(self, plan: Plan, store: PreprocessedStore, train_ids: list[str], val_ids: list[str], fold: int,
                 ctx: DistributedContext) -> None:
        self.plan, self.store, self.train_ids, self.val_ids = plan, store, train_ids, val_ids
        self.fold, self.ctx = fold, ctx

    def configure(self, model: SABModel) -> None:
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("depth_net."))

    def ddp_module(self, model: SABModel) -> nn.Module:
        return model.depth_net

    @contextlib.contextmanager
    def batches(self, epoch: int) -> Iterator[Iterator[dict]]:
        rng = np.random.default_rng(epoch_seed(self.plan.training.seed, self.fold, self.name, epoch, self.ctx.rank))
        yield self._volumes(rng)

    def prefetch(self, epoch: int) -> None:
        """Nothing to prepare: volumes are read in this process."""

    def close(self) -> None:
        """Nothing to release."""

    def _volumes(self, rng: np.random.Generator) -> Iterator[dict]:
        while True:
            case_id = self.train_ids[int(rng.integers(len(self.train_ids)))]
            volume, target = self._case(case_id)
            for axis in range(3):
                if rng.random() < 0.5:
                    volume, target = np.flip(volume, axis), np.flip(target, axis)
            volume = volume * rng.uniform(*INTENSITY_SCALE)
            yield {"volume": np.ascontiguousarray(volume), "target": np.ascontiguousarray(target)}

    def training_loss(self, net: nn.Module, batch: dict) -> Tensor:
        volume, target = self._tensors(batch)
        return dice_bce_loss(net(volume).float(), target)

    def limit_validation(self, n_samples: int) -> None:
        """The depth net validates on whole low-resolution volumes: a fraction of a second each."""

    @torch.no_grad()
    def validate(self, model: SABModel) -> ValidationScores:
        counts = torch.zeros(5, dtype=torch.float64)  # tp, fp, fn, loss sum, volumes
        for case_id in self.val_ids[self.ctx.rank::self.ctx.world_size]:
            volume, target = self._tensors(dict(zip(("volume", "target"), self._case(case_id))))
            with autocast(self.ctx.device):
                logits = model.depth_net(volume).float()
            p, t = logits > 0, target > 0
            counts += torch.tensor([(p & t).sum().item(), (p & ~t).sum().item(), (~p & t).sum().item(),
                                    float(dice_bce_loss(logits, target)), 1.0], dtype=torch.float64)
        tp, fp, fn, loss_sum, n = all_reduce_sum(counts, self.ctx).tolist()
        dice = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn > 0 else None
        return ValidationScores(loss_sum / n if n else None, {"bone (depth net)": dice})

    def _case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(D, h, w) float32 volume (first channel) and (D, h, w) float32 0/1 bone target."""
        volume = np.asarray(self.store.depth_image(case_id)[0], dtype=np.float32)
        target = (np.asarray(self.store.depth_labels(case_id), dtype=np.float32) >= BONE_SHARE).astype(np.float32)
        return volume, target

    def _tensors(self, batch: dict) -> tuple[Tensor, Tensor]:
        device = self.ctx.device
        return (torch.from_numpy(np.asarray(batch["volume"], np.float32))[None, None].to(device),
                torch.from_numpy(np.asarray(batch["target"], np.float32))[None, None].to(device))


@torch.no_grad()
def write_depth_probabilities(model: SABModel, store: PreprocessedStore, case_ids: list[str], out_dir: Path,
                              device: torch.device, show_progress: bool = True) -> Path:
    """Save each case's bone probability volume (D, h, w) float32 as `out_dir/<case>.npy`, atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    for case_id in tqdm(case_ids, desc="depth probabilities", unit="case", disable=not show_progress, leave=False):
        volume = torch.from_numpy(np.ascontiguousarray(store.depth_image(case_id)[:1], dtype=np.float32))[None]
        probabilities = model.depth_probabilities(volume.to(device))[0, 0].float().cpu().numpy()
        with atomic_path(out_dir / f"{case_id}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, probabilities.astype(np.float32))
    return out_dir
