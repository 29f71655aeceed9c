"""What a user watches during training: `training_log.txt` (one line per epoch and per event) and
`progress.png` (losses, validation Dice, learning rate, epoch time), redrawn with checkpoint_best
(after a phase's first and last epoch, otherwise at most once a minute: see `trainer`).

An epoch record (one dict per epoch, kept in checkpoint metadata so a resumed run draws the whole
history) holds: phase, epoch (0-based, within the phase), n_epochs, lr (at the epoch's last
iteration), train_loss, val_loss, dice {label: pseudo Dice}, mean_dice, ema_dice (smoothed mean
Dice), epoch_time_s, train_time_s, iterations_per_s.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sabnet.io.atomic import atomic_path
from sabnet.training.layout import PROGRESS_PLOT, TRAINING_LOG

PHASE_TITLES = {"2d": "stage 1 (2D)", "depth": "stage 2: depth net", "fusion": "stage 2: fusion"}


def format_epoch(record: dict) -> str:
    """One log line: 'fold 0 2d epoch 3/40: lr 1.0e-03 train loss 0.51 val loss 0.40 Dice femur 0.81 ...'."""
    dice = " ".join(f"{name} {_num(value)}" for name, value in record["dice"].items())
    return (f"fold {record['fold']} {record['phase']} epoch {record['epoch'] + 1}/{record['n_epochs']}: "
            f"lr {record['lr']:.2e}  train loss {record['train_loss']:.4f}  val loss {_num(record['val_loss'], 4)}  "
            f"pseudo Dice {dice}  smoothed Dice {_num(record['ema_dice'])}  "
            f"time {record['epoch_time_s']:.1f} s ({record['iterations_per_s']:.2f} it/s)")


class ProgressLog:
    """Appends to `fold_dir/training_log.txt` and redraws `fold_dir/progress.png`; silent when not
    `enabled` (processes other than rank 0)."""

    def __init__(self, fold_dir: Path, enabled: bool = True, echo=None) -> None:
        self.fold_dir = Path(fold_dir)
        self.enabled = enabled
        self.echo = echo  # also print each line (e.g. tqdm.write), or None

    @property
    def log_path(self) -> Path:
        return self.fold_dir / TRAINING_LOG

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        self.fold_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {text}\n")
        if self.echo is not None:
            self.echo(text)

    def epoch(self, record: dict) -> None:
        """One line for an epoch's record."""
        self.line(format_epoch(record))

    def plot(self, history: list[dict]) -> None:
        """Redraw progress.png from all epochs so far."""
        if self.enabled:
            plot_progress(history, self.fold_dir / PROGRESS_PLOT)


def plot_progress(history: list[dict], path: Path) -> Path:
    """Four panels over all epochs of the fold (phases one after another): losses, validation Dice
    (pseudo Dice per label, and the smoothed mean), learning rate, epoch time."""
    x = list(range(1, len(history) + 1))
    fig = Figure(figsize=(12, 9), dpi=80)
    FigureCanvasAgg(fig)
    (losses, dice), (lr, timing) = fig.subplots(2, 2)
    losses.plot(x, [r["train_loss"] for r in history], "b-", label="train loss")
    losses.plot(x, [_nan(r["val_loss"]) for r in history], "r-", label="validation loss")
    labels = list(dict.fromkeys(name for r in history for name in r["dice"]))
    for name in labels:
        dice.plot(x, [_nan(r["dice"].get(name)) for r in history], "-", lw=1, alpha=0.6, label=name)
    dice.plot(x, [_nan(r["ema_dice"]) for r in history], "k-", lw=2, label="smoothed mean")
    dice.set_ylim(0, 1)
    lr.plot(x, [r["lr"] for r in history], "g-")
    timing.plot(x, [r["epoch_time_s"] for r in history], "m-")
    for ax, title in ((losses, "loss"), (dice, "validation pseudo Dice"), (lr, "learning rate"),
                      (timing, "epoch time (s)")):
        ax.set_title(title)
        ax.set_xlabel("epoch (all phases)")
        ax.grid(alpha=0.3)
        for start, phase in _phase_starts(history):
            ax.axvline(start, color="0.6", ls="--", lw=1)
            if ax is losses:
                ax.annotate(PHASE_TITLES.get(phase, phase), (start, 1), xycoords=("data", "axes fraction"),
                            fontsize=8, va="top", rotation=90, color="0.4")
    losses.legend(fontsize=8)
    if len(labels) <= 12:
        dice.legend(fontsize=7, ncol=2)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.07, top=0.95, wspace=0.22, hspace=0.32)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _phase_starts(history: list[dict]) -> list[tuple[float, str]]:
    starts, previous = [], None
    for i, record in enumerate(history):
        if record["phase"] != previous:
            starts.append((i + 0.5, record["phase"]))
            previous = record["phase"]
    return starts


def _nan(value) -> float:
    return math.nan if value is None else float(value)


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
