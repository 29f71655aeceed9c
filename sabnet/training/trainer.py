"""The epoch loop of one training phase of one fold.

A fold trains in up to three phases (see `run_training`): '2d' (stage 1, the adapter-SAM on slices),
'depth' and 'fusion' (stage 2). Each phase is an object with the `Phase` interface below; `EpochLoop`
does what every phase shares: AdamW over the trainable parameters with warm-up + polynomial decay
per iteration, bf16 autocast on CUDA, gradient clipping (norm 12), a tqdm bar per epoch, validation
after each epoch, the smoothed validation Dice (exponential moving average, weight 0.1 for the new
epoch, as nnU-Net), a line per epoch in `training_log.txt` and `checkpoint_latest` (with optimizer,
scheduler and RNG states) after every epoch; after a phase's first and last epoch and otherwise at
most every WRITE_INTERVAL_S, `checkpoint_best` (the weights of the best smoothed Dice so far, kept in
memory between writes; a run killed in between keeps the best written before) and `progress.png`.
Short CPU epochs (the demo's take 7 s) thus spend their time training: drawing the plot and
writing a best checkpoint after each cost 8 % of such an epoch.

Determinism: each epoch's batches come from a loader and augmenter seeded by (plan seed, fold,
phase, epoch, rank), so a run resumed from `checkpoint_latest` replays the very batches an
uninterrupted run sees; on the CPU the weights then match bit for bit.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import ContextManager, Iterator, Protocol

import numpy as np
from torch import Tensor, nn
from tqdm import tqdm

from sabnet.model.sab_model import SABModel
from sabnet.planning.plans import Plan
from sabnet.training.checkpoints import rng_state, save_checkpoint, set_rng_state
from sabnet.training.distributed import DistributedContext, all_reduce_max, autocast, wrap
from sabnet.training.progress import ProgressLog
from sabnet.training.schedule import Schedule, make_optimizer

GRADIENT_CLIP_NORM = 12.0
EMA_WEIGHT = 0.1  # weight of the newest epoch in the smoothed validation Dice
MAX_BUDGET_EPOCHS = 1000
CALIBRATION_ITERATIONS = 4   # under a time budget, iterations timed before the epoch length is set
TARGET_EPOCHS = 10           # ... chosen so that about this many epochs fit the budget
VALIDATION_SHARE = 0.15      # share of the budget assumed for per-epoch validation when calibrating
VALIDATION_MIN_SAMPLES = 8   # a time budget never validates on fewer samples
PHASE_NUMBERS = {"2d": 1, "depth": 2, "fusion": 3}
WRITE_INTERVAL_S = 60.0      # checkpoint_best and progress.png at most this often within a phase


def epoch_seed(plan_seed: int, fold: int, phase: str, epoch: int, rank: int = 0) -> int:
    """The data seed of one epoch of one process: a fixed function of its coordinates."""
    return int(np.random.SeedSequence([int(plan_seed), int(fold), PHASE_NUMBERS[phase], int(epoch),
                                       int(rank)]).generate_state(1)[0])


@dataclass
class ValidationScores:
    """loss: mean validation loss (None: not measured); dice: {label: pseudo Dice or None}."""

    loss: float | None
    dice: dict[str, float | None]

    @property
    def mean_dice(self) -> float | None:
        values = [v for v in self.dice.values() if v is not None]
        return float(np.mean(values)) if values else None


class Phase(Protocol):
    """What EpochLoop needs from a phase.

    name: '2d' | 'depth' | 'fusion'; stage: '2d' | '3d' (the model stage it trains);
    tracks_best: whether it writes checkpoint_best; find_unused_parameters: for DDP; n_workers:
    the augmentation worker processes it runs beside training (0: none).
    """

    name: str
    stage: str
    tracks_best: bool
    find_unused_parameters: bool
    n_workers: int

    def configure(self, model: SABModel) -> None:
        """Set requires_grad on the model's parameters for this phase."""

    def ddp_module(self, model: SABModel) -> nn.Module:
        """The module that `training_loss` calls (wrapped in DDP when distributed)."""

    def batches(self, epoch: int) -> ContextManager[Iterator[dict]]:
        """The epoch's training batches (an endless iterator), closed at the end of the epoch."""

    def prefetch(self, epoch: int) -> None:
        """Start preparing `epoch`'s batches while the current epoch validates (may do nothing)."""

    def close(self) -> None:
        """Release what `prefetch` started and no epoch used (the phase ends)."""

    def training_loss(self, net: nn.Module, batch: dict) -> Tensor:
        """Loss of one batch through `net` (the possibly wrapped `ddp_module`)."""

    def validate(self, model: SABModel) -> ValidationScores:
        """Scores on the fold's validation cases, the same on every process."""

    def limit_validation(self, n_samples: int) -> None:
        """Validate on at most `n_samples` samples from now on (a time budget's epochs are short)."""


class EpochLoop:
    """Trains `phase` for `schedule.epochs` epochs; see the module docstring.

    run_info: fold-level metadata stored in every checkpoint (fold, stage request, phases, ...).
    history: the fold's epoch records so far (all phases); this loop appends to it.
    """

    def __init__(self, phase: Phase, model: SABModel, schedule: Schedule, ctx: DistributedContext, fold_dir,
                 plan: Plan, run_info: dict, history: list[dict], progress: ProgressLog,
                 budget_s: float | None = None) -> None:
        self.phase, self.model, self.schedule, self.ctx = phase, model, schedule, ctx
        self.fold_dir, self.plan, self.run_info = fold_dir, plan, run_info
        self.history, self.progress = history, progress
        self.budget_s = budget_s
        self.ema_dice: float | None = None
        self.best_ema_dice: float | None = None
        self._last_write_s: float | None = None  # perf_counter of the last best/plot write
        self._unwritten_best: tuple[dict, dict] | None = None  # (weights, metadata) of a best not yet written

    def run(self, start_epoch: int = 0, resume: dict | None = None) -> None:
        """Epochs start_epoch..epochs-1. `resume`: {"training_state", "metadata"} of checkpoint_latest."""
        self.phase.configure(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer, scheduler = make_optimizer(params, self.schedule)
        net = wrap(self.phase.ddp_module(self.model), self.ctx, self.phase.find_unused_parameters)
        if resume is not None:
            optimizer.load_state_dict(resume["training_state"]["optimizer"])
            scheduler.load_state_dict(resume["training_state"]["scheduler"])
            set_rng_state(resume["training_state"]["rng"])
            self.ema_dice = resume["metadata"].get("ema_dice")
            self.best_ema_dice = resume["metadata"].get("best_ema_dice")
        epoch = start_epoch
        try:
            while epoch < self.schedule.epochs:
                self._epoch(epoch, net, params, optimizer, scheduler)
                epoch += 1
        finally:
            self.phase.close()

    def _fit_budget_iterations(self, iteration_times_s: list[float], scheduler) -> None:
        """Under a time budget, after the first CALIBRATION_ITERATIONS of the phase: iterations per
        epoch such that about TARGET_EPOCHS epochs fit the budget (never more than planned)."""
        t = all_reduce_max(float(np.median(iteration_times_s[1:] or iteration_times_s)), self.ctx)
        total = max(2, int(self.budget_s * (1 - VALIDATION_SHARE) // max(t, 1e-6)))
        iterations = int(min(self.schedule.iterations_per_epoch, max(1, total // TARGET_EPOCHS)))
        self.run_info["overrides"].setdefault("phase_iterations", {})[self.phase.name] = iterations
        self._reschedule(scheduler, iterations_per_epoch=iterations,
                         epochs=max(2, min(MAX_BUDGET_EPOCHS, total // iterations)))
        self.progress.line(f"phase {self.phase.name}: {t:.2f} s per iteration; {iterations} iterations per epoch "
                           f"to fit the budget of {self.budget_s / 60:.1f} min")
        # validating on a quarter of the samples an epoch trains on keeps it near a tenth of the epoch
        # (a forward pass costs about a third of a training step)
        self.phase.limit_validation(max(VALIDATION_MIN_SAMPLES, iterations * self.schedule.batch_size // 4))

    def _fit_budget_epochs(self, epoch: int, spent_s: float, scheduler) -> None:
        """Under a time budget, after every epoch: the epochs that fit what is left of the budget at
        the mean epoch time so far (validation included), so a machine that slows down or speeds up
        mid-run still ends near the budget; at least 2 epochs. Recorded in run_info, so checkpoints
        and a resumed run use the schedule as it stood."""
        mean_s = all_reduce_max(spent_s / (epoch + 1), self.ctx)
        left = max(0.0, self.budget_s - spent_s)
        epochs = int(max(2 if epoch == 0 else epoch + 1, min(MAX_BUDGET_EPOCHS, epoch + 1 + left // max(mean_s, 1e-6))))
        if epochs == self.schedule.epochs:
            return
        self.run_info["overrides"].setdefault("phase_epochs", {})[self.phase.name] = epochs
        self._reschedule(scheduler, epochs=epochs)
        if epoch == 0:
            self.progress.line(f"phase {self.phase.name}: first epoch took {mean_s:.1f} s; the budget of "
                               f"{self.budget_s / 60:.1f} min holds {epochs} epochs")
        else:
            self.progress.line(f"phase {self.phase.name}: epochs now take {mean_s:.1f} s on average; "
                               f"{epochs} epochs fit the budget")

    def _reschedule(self, scheduler, **changes) -> None:
        """Change the phase's schedule mid-run; the scheduler's warm-up and decay follow it."""
        self.schedule = replace(self.schedule, **changes)
        scheduler.warmup_steps = self.schedule.warmup_iterations
        scheduler.total_steps = self.schedule.total_iterations

    def _budget_pending(self, key: str) -> bool:
        return self.budget_s is not None and (self.run_info["overrides"].get(key) or {}).get(self.phase.name) is None

    def _epoch(self, epoch: int, net: nn.Module, params: list, optimizer, scheduler) -> None:
        ctx, schedule, name = self.ctx, self.schedule, self.phase.name
        start = time.perf_counter()
        self.model.train()
        losses = []
        bar = tqdm(total=schedule.iterations_per_epoch, desc=f"fold {self.run_info['fold']} {name} "
                   f"epoch {epoch + 1}/{schedule.epochs}", unit="it", disable=not ctx.is_main,
                   dynamic_ncols=True, leave=False)
        calibrate = epoch == 0 and self._budget_pending("phase_iterations")
        iteration_times = []
        with self.phase.batches(epoch) as batches:
            iteration = 0
            while iteration < self.schedule.iterations_per_epoch:
                tick = time.perf_counter()
                batch = next(batches)
                optimizer.zero_grad(set_to_none=True)
                with autocast(ctx.device):
                    loss = self.phase.training_loss(net, batch)
                loss.backward()
                nn.utils.clip_grad_norm_(params, GRADIENT_CLIP_NORM)
                optimizer.step()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.1e}")
                bar.update()
                iteration += 1
                iteration_times.append(time.perf_counter() - tick)
                if calibrate and iteration == CALIBRATION_ITERATIONS:
                    self._fit_budget_iterations(iteration_times, scheduler)
                    bar.total = self.schedule.iterations_per_epoch
                    bar.set_description(f"fold {self.run_info['fold']} {name} epoch 1/{self.schedule.epochs}")
        bar.close()
        train_time = time.perf_counter() - start
        if epoch + 1 < self.schedule.epochs:  # the next epoch's data workers start while this one validates
            self.phase.prefetch(epoch + 1)
        self.model.eval()
        scores = self.phase.validate(self.model)
        improved = self._smooth(scores)
        epoch_time = time.perf_counter() - start
        if self.budget_s is not None:
            spent = epoch_time + sum(r["epoch_time_s"] for r in self.history if r["phase"] == name)
            self._fit_budget_epochs(epoch, spent, scheduler)
        schedule = self.schedule
        record = {
            "fold": self.run_info["fold"], "phase": name, "epoch": epoch, "n_epochs": schedule.epochs, "lr": lr,
            "train_loss": float(np.mean(losses)), "val_loss": scores.loss, "dice": scores.dice,
            "mean_dice": scores.mean_dice, "ema_dice": self.ema_dice, "epoch_time_s": round(epoch_time, 3),
            "train_time_s": round(train_time, 3),
            "iterations_per_s": round(schedule.iterations_per_epoch / max(train_time, 1e-9), 3),
        }
        self.history.append(record)
        if ctx.is_main:
            metadata = self.metadata(epoch, record)
            self.progress.epoch(record)
            if improved:
                self._unwritten_best = ({k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()},
                                        metadata)
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}
            save_checkpoint(self.fold_dir, "latest", self.model, self.plan, metadata, state)
            now = time.perf_counter()
            if (self._last_write_s is None or epoch + 1 >= schedule.epochs  # a loop runs one phase
                    or now - self._last_write_s >= WRITE_INTERVAL_S):
                if self._unwritten_best is not None:
                    weights, best_metadata = self._unwritten_best
                    save_checkpoint(self.fold_dir, "best", self.model, self.plan, best_metadata, weights=weights)
                    self.progress.line(f"checkpoint_best written (smoothed Dice {best_metadata['ema_dice']:.4f}, "
                                       f"epoch {best_metadata['epoch'] + 1})")
                    self._unwritten_best = None
                self.progress.plot(self.history)
                self._last_write_s = time.perf_counter()

    def _smooth(self, scores: ValidationScores) -> bool:
        """Update the smoothed Dice; True when it beats the phase's best (and the phase keeps a best)."""
        value = scores.mean_dice
        if value is None:
            return False
        self.ema_dice = value if self.ema_dice is None else (1 - EMA_WEIGHT) * self.ema_dice + EMA_WEIGHT * value
        if not self.phase.tracks_best or (self.best_ema_dice is not None and self.ema_dice <= self.best_ema_dice):
            return False
        self.best_ema_dice = self.ema_dice
        return True

    def metadata(self, epoch: int, record: dict) -> dict:
        return dict(self.run_info, phase=self.phase.name, stage=self.phase.stage,
                    stages_done=stages_done(self.run_info["completed_phases"] + [self.phase.name]), epoch=epoch,
                    n_epochs=self.schedule.epochs, schedule=self.schedule.to_dict(), train_loss=record["train_loss"],
                    val_loss=record["val_loss"], pseudo_dice=record["dice"], ema_dice=self.ema_dice,
                    best_ema_dice=self.best_ema_dice, epoch_time_s=record["epoch_time_s"],
                    history=[_json_safe(r) for r in self.history])


def stages_done(phases: list[str]) -> list[str]:
    """Model stages that weights trained in `phases` have: '2d' after phase '2d', '3d' after 'fusion'
    (the prediction modes the model supports; a stage-2 model keeps its 2D mode)."""
    return [stage for stage, phase in (("2d", "2d"), ("3d", "fusion")) if phase in phases]


def _json_safe(record: dict) -> dict:
    """NaN -> None so metadata.json stays strict JSON."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return None if isinstance(v, float) and math.isnan(v) else v
    return clean(record)
