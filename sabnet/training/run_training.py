"""Train folds of a preprocessed cohort: the two stages, resume, and the end-of-training validation.

Stages and phases:
    --stage 2d   phase '2d': the adapter-SAM on slices with hybrid prompting (stage 1);
                 ends by writing checkpoint_final_2d.
    --stage 3d   phases 'depth' (the depth net on the low-resolution volumes) and 'fusion' (fusion
                 block, gate and decoder, image encoder frozen) (stage 2); starts from the fold's
                 checkpoint_final_2d.
    --stage all  the three phases in a row.
Phase lengths: `plan.training.epochs` for '2d', `stage2_epochs` for each stage-2 phase; `--epochs`
and `--iters-per-epoch` override every phase of the run (recorded in the checkpoints).

A new run of a fold removes that fold's old checkpoints it would replace (latest, best, final, and
final_2d when stage 1 runs) so they never mix with the new run's. `--continue` resumes from
checkpoint_latest: same plan (hash), same overrides; a finished phase goes on with the next one; a
finished run only writes what is missing (final checkpoint, validation). With `-f all --continue`,
folds that never started (no checkpoint_latest) start anew, so a killed five-fold run resumes.

`TrainingOptions.init_weights` (sab_finetune) gives a fold's stage 1 other weights to start from
than random or SAM ones; checkpoints record their origin as `finetuned_from`, through stage 2 and
`--continue` too.
"""
from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sabnet.errors import SabnetError
from sabnet.evaluation.evaluate import EvaluationResult
from sabnet.model.checkpoint import detect_variant, read_state_dict, weights_path
from sabnet.model.config import PRETRAINED_VARIANTS, ModelConfig
from sabnet.model.sab_model import SABModel, build_model
from sabnet.paths import DatasetRef
from sabnet.planning.plans import Plan, load_plan
from sabnet.preprocessing.store import PreprocessedStore
from sabnet.training.checkpoints import (checkpoint_dir, load_training_state, load_weights, read_metadata,
                                         recover_interrupted, remove_checkpoints, save_checkpoint)
from sabnet.training.depth_stage import DepthPhase, write_depth_probabilities
from sabnet.training.distributed import DistributedContext, barrier, gather_digests, start, stop, training_threads
from sabnet.training.embedding_cache import CacheSettings, EmbeddingCache, preprocessing_hash
from sabnet.training.layout import (DEPTH_PROBABILITIES_DIR, VALIDATION_DIR, fold_dir, prepare_results_folder,
                                    results_folder)
from sabnet.training.progress import ProgressLog
from sabnet.training.schedule import Schedule
from sabnet.training.slice_phase import SlicePhase
from sabnet.training.splits import fold_cases, load_or_create_splits
from sabnet.training.trainer import CALIBRATION_ITERATIONS, EpochLoop, stages_done
from sabnet.training.validation import final_modes, validate_fold

STAGE_PHASES = {"2d": ("2d",), "3d": ("depth", "fusion"), "all": ("2d", "depth", "fusion")}
ARCHITECTURE_KEYS = ("encoder", "patch_size", "encoder_embed_dim", "encoder_depth", "encoder_num_heads",
                     "encoder_global_attn_indexes", "prompt_embed_dim", "decoder_mlp_dim")


@dataclass
class TrainingOptions:
    """What `sab_train` was asked for. None means: the plan's value (or, with --continue, the run's)."""

    stage: str = "all"
    device: str | None = None
    sam_checkpoint: Path | None = None
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    n_workers: int = 2
    continue_training: bool = False
    final_validation: bool = True
    budget_minutes: float | None = None
    init_weights: dict[int, InitialWeights] | None = None

    def overrides(self) -> dict:
        return {"epochs": self.epochs, "iterations_per_epoch": self.iterations_per_epoch,
                "budget_minutes": self.budget_minutes}


@dataclass
class InitialWeights:
    """Weights a fold's stage 1 starts from instead of random or SAM weights (sab_finetune makes them).

    state_file: a state dict that fits the plan's model exactly.
    pretrained: its encoders come pretrained (an official SAM checkpoint's, or the fine-tuning source's),
        so in stage 1 they stay frozen but for their adapters.
    origin: where the weights come from (JSON-able); every checkpoint of the run records it as `finetuned_from`.
    """

    state_file: Path
    pretrained: bool
    origin: dict


@dataclass
class FoldResult:
    fold: int
    fold_dir: Path
    phases_trained: list[str]
    metadata: dict
    validation: dict[str, EvaluationResult] = field(default_factory=dict)


@dataclass
class _Start:
    """Where a fold's run begins: the model, the phase (index in the run's phases) and epoch."""

    model: SABModel
    phase_index: int
    start_epoch: int
    resume: dict | None
    run_info: dict
    history: list[dict]


def train(ref: DatasetRef, fold: int | str, options: TrainingOptions, log: Callable[[str], None] = print
          ) -> list[FoldResult]:
    """Train `fold` (an index, or 'all' for every fold in turn) of the preprocessed cohort `ref`."""
    if options.stage not in STAGE_PHASES:
        raise SabnetError(f"--stage {options.stage}: choose one of {', '.join(STAGE_PHASES)}")
    plan, store = _load_cohort(ref)
    ctx = start(options.device)
    say = log if ctx.is_main else (lambda _: None)
    try:
        cases = [{"case_id": c, **{k: store.properties(c).get(k, "") for k in ("subject", "sequence", "location")}}
                 for c in store.case_ids()]
        raw_dir = ref.raw_dir if (ref.raw_dir / "dataset.json").is_file() else None
        results = results_folder(ref, plan)
        if ctx.is_main:
            load_or_create_splits(ref.preprocessed_dir, cases, raw_dir, seed=plan.training.seed)
            prepare_results_folder(ref, plan)
        barrier(ctx)
        splits = load_or_create_splits(ref.preprocessed_dir, cases, raw_dir, seed=plan.training.seed)
        folds = list(range(len(splits))) if str(fold) == "all" else [_fold_index(fold, len(splits))]
        say(f"plan: {ref.preprocessed_dir / 'plans.json'} (hash {plan.hash()}): {plan.model['variant']} at "
            f"{plan.model['image_size']} px, labels {', '.join(n for n in plan.labels if n != 'background')}")
        say(f"results: {results}  device: {ctx.device}" + (f" x {ctx.world_size} processes" if ctx.distributed else ""))
        out = []
        for f in folds:
            train_ids, val_ids = fold_cases(splits, f)
            resume = options.continue_training and (str(fold) != "all" or
                                                    (checkpoint_dir(fold_dir(results, f), "latest") / "metadata.json").exists())
            out.append(_train_fold(ref, plan, store, f, train_ids, val_ids, results, options, resume, ctx, say))
        return out
    finally:
        stop(ctx)


def _load_cohort(ref: DatasetRef) -> tuple[Plan, PreprocessedStore]:
    store = PreprocessedStore(ref.preprocessed_dir)
    if not store.case_ids():
        raise SabnetError(f"{ref.preprocessed_dir}: dataset {ref.name} is not preprocessed; "
                          f"run sab_plan_and_preprocess -d {ref.name} first")
    return load_plan(ref.preprocessed_dir), store


def _fold_index(fold: int | str, n_folds: int) -> int:
    try:
        value = int(fold)
    except ValueError:
        raise SabnetError(f"-f {fold}: give a fold number (0..{n_folds - 1}) or 'all'") from None
    if not 0 <= value < n_folds:
        raise SabnetError(f"-f {fold}: fold out of range; the splits have {n_folds} folds (0..{n_folds - 1})")
    return value


# Share of a time budget each phase gets, by the phases a run trains.
BUDGET_SHARES = {("2d",): {"2d": 1.0}, ("depth", "fusion"): {"depth": 0.2, "fusion": 0.8},
                 ("2d", "depth", "fusion"): {"2d": 0.75, "depth": 0.05, "fusion": 0.2}}


def phase_budget_s(phase: str, phases: tuple[str, ...], budget_minutes: float | None) -> float | None:
    """Seconds of training (validation per epoch included) a phase may take under a run's budget."""
    if budget_minutes is None:
        return None
    return 60.0 * budget_minutes * BUDGET_SHARES[tuple(phases)][phase]


def phase_schedule(phase: str, plan: Plan, overrides: dict) -> Schedule:
    """The effective schedule of a phase: plan defaults, overridden by the run's flags; under a
    time budget, by the epochs decided after the phase's first epoch (`overrides["phase_epochs"]`)."""
    t = plan.training
    epochs = (overrides.get("phase_epochs") or {}).get(phase)
    iterations = (overrides.get("phase_iterations") or {}).get(phase)
    return Schedule(epochs=epochs or overrides.get("epochs") or (t.epochs if phase == "2d" else t.stage2_epochs),
                    iterations_per_epoch=iterations or overrides.get("iterations_per_epoch") or t.iterations_per_epoch,
                    batch_size=1 if phase == "depth" else t.batch_size, initial_lr=t.initial_lr,
                    weight_decay=t.weight_decay, warmup_epochs=t.warmup_epochs)


def _train_fold(ref: DatasetRef, plan: Plan, store: PreprocessedStore, fold: int, train_ids: list[str],
                val_ids: list[str], results: Path, options: TrainingOptions, resume: bool, ctx: DistributedContext,
                say: Callable[[str], None]) -> FoldResult:
    fd = fold_dir(results, fold)
    phases = STAGE_PHASES[options.stage]
    progress = ProgressLog(fd, enabled=ctx.is_main, echo=say)
    if ctx.is_main:
        recover_interrupted(fd)
    barrier(ctx)
    begin = _resume_point(fd, plan, phases, options) if resume else _fresh_start(fd, plan, fold, phases, options, ctx)
    model = begin.model.to(ctx.device)
    run_info = dict(begin.run_info, device=str(ctx.device), world_size=ctx.world_size, n_workers=options.n_workers)
    progress.line(f"fold {fold}: {len(train_ids)} training / {len(val_ids)} validation cases; "
                  + (_resume_text(phases[begin.phase_index], begin.start_epoch, plan, run_info) if resume
                     else f"new run of stage {options.stage}"))
    if options.sam_checkpoint and (resume or phases[0] != "2d"):
        progress.line(f"note: --sam-checkpoint is used when stage 1 starts; this run's weights come from the "
                      f"fold's {'checkpoint_latest' if resume else 'checkpoint_final_2d'}")
    if "finetuned_from" in run_info and not resume and phases[0] == "2d":
        progress.line(f"starting from {run_info['finetuned_from'].get('summary', run_info['finetuned_from'])}")
    elif not run_info["pretrained"] and plan.model["variant"] in PRETRAINED_VARIANTS and not resume and phases[0] == "2d":
        progress.line(f"note: training {plan.model['variant']} from random weights (no pretrained weights given)")
    cache = _embedding_cache(model, plan, store, ref, phases[begin.phase_index:], run_info, ctx, progress)
    trained = []
    for index in range(begin.phase_index, len(phases)):
        name = phases[index]
        schedule = phase_schedule(name, plan, run_info["overrides"])
        start_epoch = begin.start_epoch if index == begin.phase_index else 0
        if start_epoch < schedule.epochs:
            phase = _make_phase(name, model, plan, store, train_ids, val_ids, schedule, fold, fd, options, run_info, ctx,
                                cache)
            phase.configure(model)
            counts = model.parameter_counts()
            progress.line(f"phase {name}: {schedule.epochs} epochs x {schedule.iterations_per_epoch} iterations, "
                          f"batch {schedule.batch_size}, lr {schedule.initial_lr:g}; parameters: "
                          f"{counts['trainable']:,} trainable, {counts['frozen']:,} frozen")
            budget = phase_budget_s(name, phases, run_info["overrides"].get("budget_minutes"))
            if budget is not None and (run_info["overrides"].get("phase_epochs") or {}).get(name) is None:
                progress.line(f"phase {name}: time budget {budget / 60:.1f} min; iterations per epoch are set after "
                              f"{CALIBRATION_ITERATIONS} timed iterations, the number of epochs after the first epoch")
            loop = EpochLoop(phase, model, schedule, ctx, fd, plan, run_info, begin.history, progress, budget)
            with training_threads(ctx, phase.n_workers):
                loop.run(start_epoch, begin.resume if index == begin.phase_index else None)
            trained.append(name)
        run_info["completed_phases"] = list(dict.fromkeys(run_info["completed_phases"] + [name]))
        if name == "2d" and ctx.is_main:
            save_checkpoint(fd, "final_2d", model, plan, _summary(run_info, begin.history, "2d"))
    digests = gather_digests(model, ctx)
    if len(set(digests)) != 1:
        raise RuntimeError(f"fold {fold}: processes ended with different weights ({digests}); DDP lost sync")
    final_meta = dict(_summary(run_info, begin.history, phases[-1]), weight_digests=digests)
    validation = {}
    if ctx.is_main:
        save_checkpoint(fd, "final", model, plan, final_meta)
        progress.line(f"fold {fold} trained: checkpoint_final written ({', '.join(run_info['completed_phases'])})")
        summary_file = fd / VALIDATION_DIR / "summary.csv"
        if options.final_validation and (trained or not summary_file.exists()):
            modes = final_modes(run_info["completed_phases"])
            validation = validate_fold(model, plan, ref.raw_dir, val_ids, fd, modes, ctx.device, plan.training.batch_size,
                                       cache=cache)
            for mode, result in validation.items():
                progress.line(f"validation ({mode} mode, {len(val_ids)} cases): mean foreground Dice "
                              f"{result.mean_foreground_dice:.4f}")
    return FoldResult(fold, fd, trained, final_meta, validation)


def _resume_text(phase: str, epoch: int, plan: Plan, run_info: dict) -> str:
    n_epochs = phase_schedule(phase, plan, run_info["overrides"]).epochs
    if epoch < n_epochs:
        return f"continuing phase {phase} at epoch {epoch + 1}/{n_epochs}"
    return f"phase {phase} had finished; continuing after it"


def _embedding_cache(model: SABModel, plan: Plan, store: PreprocessedStore, ref: DatasetRef, phases: tuple[str, ...],
                     run_info: dict, ctx: DistributedContext, progress: ProgressLog) -> EmbeddingCache | None:
    """The embedding cache of a frozen pretrained encoder without adapters, filled for every case of
    the dataset (all folds share it), or None when the encoder trains or the plan says no."""
    if not plan.training.cache_embeddings or not run_info["pretrained"] or not set(phases) & {"2d", "fusion"}:
        return None
    model.configure_trainable(True, "2d")
    if model.encoder_trains():
        return None
    settings = CacheSettings(plan.training.cache_augmented_copies,
                             unit_range=any(n.scheme == "slice_unit" for n in plan.preprocessing.normalization.values()))
    cache = EmbeddingCache(ref.preprocessed_dir, EmbeddingCache.key_for(model, preprocessing_hash(plan), settings),
                           settings)
    if ctx.is_main:
        built = cache.build(model, store, store.case_ids(), ctx.device, log=progress.line)
        progress.line(f"embedding cache: {cache.root} ({'encoded ' + str(built) + ' cases' if built else 'up to date'})")
    barrier(ctx)
    return cache


def _make_phase(name, model, plan, store, train_ids, val_ids, schedule, fold, fd, options, run_info, ctx, cache=None):
    if name == "depth":
        return DepthPhase(plan, store, train_ids, val_ids, fold, ctx)
    attention_dir = None
    if name == "fusion":
        attention_dir = fd / DEPTH_PROBABILITIES_DIR
        if ctx.is_main:
            write_depth_probabilities(model, store, sorted(set(train_ids) | set(val_ids)), attention_dir, ctx.device)
        barrier(ctx)
    return SlicePhase(name, plan, store, train_ids, val_ids, schedule, fold, ctx, options.n_workers,
                      run_info["pretrained"], attention_dir, cache)


def _summary(run_info: dict, history: list[dict], phase: str) -> dict:
    last = next((r for r in reversed(history) if r["phase"] == phase), history[-1] if history else {})
    return dict(run_info, phase=phase, stage="2d" if phase == "2d" else "3d",
                stages_done=stages_done(run_info["completed_phases"]), epoch=last.get("epoch"),
                n_epochs=last.get("n_epochs"), pseudo_dice=last.get("dice"), ema_dice=last.get("ema_dice"),
                history=history)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _fresh_start(fd: Path, plan: Plan, fold: int, phases: tuple[str, ...], options: TrainingOptions,
                 ctx: DistributedContext) -> _Start:
    config = ModelConfig.from_dict(plan.model)
    _seed_everything(plan.training.seed + fold)
    origin = None
    if phases[0] == "2d" and (options.init_weights or {}).get(fold) is not None:
        init = options.init_weights[fold]
        model = _initialised_model(config, init)
        pretrained, checkpoint, history, done, origin = init.pretrained, None, [], [], init.origin
        stale = ("latest", "best", "final", "final_2d")
    elif phases[0] == "2d":
        checkpoint = options.sam_checkpoint or plan.training.pretrained_weights
        if options.sam_checkpoint is not None:
            _check_sam_checkpoint(Path(checkpoint), config)
        model = build_model(config, checkpoint)
        pretrained, history, done = checkpoint is not None, [], []
        stale = ("latest", "best", "final", "final_2d")
    else:
        if not (checkpoint_dir(fd, "final_2d") / "metadata.json").is_file():
            raise SabnetError(f"{fd}: no finished stage 1 (checkpoint_final_2d) to start stage 2 from; "
                              f"run sab_train with --stage 2d (or --stage all) for fold {fold} first")
        model = SABModel(config)
        meta = load_weights(model, fd, "final_2d", plan)
        pretrained, checkpoint, history, done = bool(meta.get("pretrained")), meta.get("sam_checkpoint"), \
            list(meta.get("history", [])), ["2d"]
        origin = meta.get("finetuned_from")
        stale = ("latest", "best", "final")
        if model.depth_fusion.restart_if_stuck() and ctx.is_main:
            ProgressLog(fd).line("note: checkpoint_final_2d has a depth fusion block from older sabnet that cannot learn "
                                 "(gate 0); stage 2 starts it afresh (zero last convolution, gate 1)")
    if ctx.is_main:
        removed = remove_checkpoints(fd, stale)
        for folder in ([DEPTH_PROBABILITIES_DIR, VALIDATION_DIR]):
            shutil.rmtree(fd / folder, ignore_errors=True)
        if removed:
            ProgressLog(fd).line(f"new run: removed the previous run's checkpoint_{', checkpoint_'.join(removed)}")
    barrier(ctx)
    run_info = {"fold": fold, "stage_request": options.stage, "phases": list(phases), "completed_phases": done,
                "overrides": options.overrides(), "pretrained": pretrained,
                "sam_checkpoint": str(checkpoint) if checkpoint else None}
    if origin is not None:
        run_info["finetuned_from"] = origin
    return _Start(model, 0, 0, None, run_info, history)


def _initialised_model(config: ModelConfig, init: InitialWeights) -> SABModel:
    model = build_model(config)
    try:
        missing, unexpected = model.load_state_dict(read_state_dict(init.state_file), strict=False)
    except RuntimeError as e:  # tensors of another shape
        raise SabnetError(f"{init.state_file}: initial weights do not fit the plan's model ({e}); "
                          "make them again for this plan") from None
    if missing or unexpected:
        raise SabnetError(f"{init.state_file}: initial weights do not fit the plan's model (missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}); make them again for this plan")
    return model


def _check_sam_checkpoint(path: Path, config: ModelConfig) -> None:
    if config.variant not in PRETRAINED_VARIANTS and config.variant != "custom":
        raise SabnetError(f"--sam-checkpoint {path}: plans.json was made without a SAM checkpoint (variant "
                          f"{config.variant}); plan again with it: sab_plan_and_preprocess -d <dataset> "
                          f"--sam-checkpoint {path} --replan")
    info = detect_variant(read_state_dict(weights_path(path)))
    # windowed blocks whose window covers the whole grid have global-sized tables: then the
    # checkpoint cannot tell which blocks are global, and only the rest is compared
    distinct = info["encoder"] == "vit" and (info["checkpoint_window_size"]
                                             != info["checkpoint_image_size"] // info["patch_size"])
    keys = [k for k in ARCHITECTURE_KEYS if k != "encoder_global_attn_indexes" or distinct]
    differ = [k for k in keys if info[k] != getattr(config, k)]
    if differ:
        raise SabnetError(f"{path}: a {info['variant']} checkpoint, but plans.json plans a {config.variant} model "
                          f"({', '.join(differ)} differ); give a {config.variant} checkpoint, or plan again with this "
                          "one (sab_plan_and_preprocess --sam-checkpoint ... --replan)")


def _resume_point(fd: Path, plan: Plan, phases: tuple[str, ...], options: TrainingOptions) -> _Start:
    if not (checkpoint_dir(fd, "latest") / "metadata.json").is_file():
        raise SabnetError(f"{fd}: no checkpoint_latest to continue from; start without --continue")
    meta = read_metadata(fd, "latest")
    phase = meta["phase"]
    if phase not in phases:
        hint = ("start stage 2 without --continue (it starts from checkpoint_final_2d)" if phase == "2d"
                else f"continue with --stage {meta.get('stage_request', 'all')}")
        raise SabnetError(f"{checkpoint_dir(fd, 'latest')}: is from phase '{phase}', which --stage {options.stage} "
                          f"does not run; {hint}")
    recorded = meta.get("overrides", {})
    for key, value in options.overrides().items():
        if value is not None and value != recorded.get(key):
            flag = {"epochs": "--epochs", "iterations_per_epoch": "--iters-per-epoch",
                    "budget_minutes": "--budget-minutes"}[key]
            was = recorded.get(key)
            raise SabnetError(f"{flag} {value} differs from the run being continued "
                              f"({was if was is not None else 'the plan default'}); continue it with the same "
                              "settings, or start a new run without --continue")
    config = ModelConfig.from_dict(plan.model)
    model = SABModel(config)
    load_weights(model, fd, "latest", plan)
    if phase_schedule(phase, plan, recorded).to_dict() != meta.get("schedule"):
        raise SabnetError(f"{checkpoint_dir(fd, 'latest')}: its schedule {meta.get('schedule')} is not what the plan "
                          "now gives; restore the plan it was trained with or start a new run")
    run_info = {k: meta[k] for k in ("fold", "pretrained", "sam_checkpoint", "completed_phases")}
    run_info.update(stage_request=options.stage, phases=list(phases), overrides=recorded)
    if "finetuned_from" in meta:
        run_info["finetuned_from"] = meta["finetuned_from"]
    index, epoch = phases.index(phase), int(meta["epoch"]) + 1
    resume = {"training_state": load_training_state(fd, "latest"), "metadata": meta}
    return _Start(model, index, epoch, resume, run_info, list(meta.get("history", [])))
