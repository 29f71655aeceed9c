"""Few-shot fine-tuning: train a new cohort (NEW) starting from another dataset's (D) trained folds.

    sab_finetune -d NEW --from D [--cases K]

1. Plan: NEW gets D's plan (`finetune_plan`): D's model, normalization, image size, window and
   depth volume, so D's weights fit and see images as they were trained on; NEW's own fingerprint,
   case slicings, labels and in-plane target spacing (its bones have another size; --source-spacing
   keeps D's). D with labels background + bone ('binary') merges NEW's labels into 'bone';
   otherwise NEW keeps its declared labels. The schedule is a quarter of D's (at least 2 epochs per
   phase), with a one-epoch warm-up. Written as NEW's plans.json, then NEW is preprocessed with it.
2. Cases (`--cases K`): K training cases chosen by seed, one per subject before a second of any
   (`choose_cases`); validation on the cases of the other subjects, or, when none is left, on the
   training cases themselves (as nnU-Net's fold 'all'). Every fold gets the same split.
3. Each fold f starts from D's fold f (`initial_state`): every tensor is D's, except the output
   heads (mask token, hypernetwork MLP, IoU-head row per output channel) and label-embedding rows,
   which are matched by label NAME: a label D also has keeps D's head; a label D lacks starts
   fresh, as the model's constructor makes it (mask token and MLP at their default initialisation,
   label embedding zero), since copying another bone's head would make it start as that bone,
   which a softmax then has to unlearn. The decoder trunk, adapters and encoders carry D's
   knowledge either way. Checkpoints record `finetuned_from` (D, fold, checkpoint, plan hash, heads).
4. What trains: as SegmentAnyBone adapts SAM, D's image encoder stays frozen but for its adapters,
   and so does its prompt encoder; the adapters, mask decoder, detail branch and label embeddings
   learn (`--full-encoder` trains both encoders too, whether D started from a SAM checkpoint or
   not). On 2 hand phantoms this kept more of D's knowledge: 0.654 Dice after 3 minutes against
   0.631 with the whole encoder training (docs/benchmarks.md, Few-shot).

The result is a normal results folder `<results>/NEW/<variant>_<size>/fold_f` for `sab_predict -d NEW`.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from sabnet.dataset.raw_dataset import RawDataset
from sabnet.dataset.verify import verify_dataset
from sabnet.errors import SabnetError
from sabnet.io.atomic import atomic_path, read_json, write_json
from sabnet.io.geometry import Geometry
from sabnet.model.config import ModelConfig
from sabnet.model.sab_model import SABModel
from sabnet.paths import DatasetRef
from sabnet.planning.fingerprint import extract_fingerprint, load_fingerprint, write_fingerprint
from sabnet.planning.planner import label_plan, median_in_plane_spacing
from sabnet.planning.plans import PLANS_FILE, Plan, load_plan, save_plan
from sabnet.planning.slicing import majority_plane, slicing_for
from sabnet.preprocessing.preprocess_dataset import preprocess_dataset
from sabnet.preprocessing.store import PreprocessedStore
from sabnet.training.checkpoints import checkpoint_dir, load_checkpoint, read_metadata
from sabnet.training.run_training import FoldResult, InitialWeights, TrainingOptions, train
from sabnet.training.splits import SPLITS_FILE, case_groups, load_or_create_splits
from sabnet.version import __version__

EPOCH_FRACTION = 0.25        # share of D's epochs (each phase) a fine-tuning plan trains
MIN_EPOCHS = 2
FEW_SHOT_FILE = "finetune_cases.json"  # the splits sab_finetune wrote (so it may replace them)
ALL_LABELS = "<all>"         # label-embedding row 0: a prompt that asks for every label
CLASS_HEAD = re.compile(r"^(class_heads\.)(\d+)(\..+)$")  # one head per output channel
CLASS_TOKENS, LABEL_EMBED = "class_tokens.weight", "label_embed.weight"


@dataclass
class FinetuneOptions:
    """What `sab_finetune` was asked for. None: the default described in the CLI's help."""

    folds: list[int] | None = None
    n_cases: int | None = None
    stage: str | None = None
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    budget_minutes: float | None = None
    device: str | None = None
    n_workers: int = 2
    n_processes: int = 1
    replan: bool = False
    final_validation: bool = True
    source_spacing: bool = False
    full_encoder: bool = False


@dataclass
class FinetuneResult:
    plan: Plan
    plan_reused: bool
    stage: str
    train_ids: list[str]
    val_ids: list[str]
    heads: dict[str, str | None]
    folds: list[FoldResult] = field(default_factory=list)


# ---- the plan ----------------------------------------------------------------------------------
def finetune_plan(source: Plan, fingerprint: dict, source_folder: Path, source_spacing: bool = False) -> Plan:
    """NEW's plan from D's (`source`, trained in `source_folder`) and NEW's fingerprint.

    The in-plane target spacing is NEW's own median (as sab_plan_and_preprocess would pick), since a
    new body location has bones of another size (hand phalanges at D's knee spacing would lose their
    detail); `source_spacing` keeps D's instead."""
    cases = fingerprint["cases"]
    geometries = [Geometry.from_dict(c["geometry"]) for c in cases]
    kept = ("image_size", "variant", "window_size", "normalization", "depth_volume", "batch_size")
    reasons = {k: f"as {source.dataset}: {v}" for k, v in source.reasons.items()
               if k in kept + (("target_spacing_mm",) if source_spacing else ())}
    reasons["finetuned_from"] = (f"{source.dataset} (plan hash {source.hash()}, model folder {source_folder}): its "
                                 "model, image size, window, normalization and depth volume are kept, so its trained "
                                 "weights fit and see images as they were trained on")
    majority, reasons["majority_plane"] = majority_plane(geometries)
    slicings = {c["case_id"]: slicing_for(g, majority) for c, g in zip(cases, geometries)}
    reasons["cases"] = "each case is sliced along its coarsest axis; isotropic cases follow the majority plane"
    if source_spacing:
        target = source.preprocessing.target_spacing_mm
    else:
        target, own = median_in_plane_spacing(cases, slicings)
        reasons["target_spacing_mm"] = (f"{own}; {source.dataset} was trained at "
                                        f"{source.preprocessing.target_spacing_mm:g} mm (--source-spacing keeps that)")
    model = dict(source.model)
    if source.label_mode == "binary":
        labels, mapping, _ = label_plan(fingerprint["labels"], binary=True)
        reasons["labels"] = (f"{source.dataset} predicts one 'bone' label: the {len(mapping)} declared labels are "
                             "merged into it, and its output head is kept")
    else:
        labels, mapping, _ = label_plan(fingerprint["labels"], binary=False)
        model.update(n_outputs=len(labels), n_labels=len(labels) - 1, output_mode="softmax")
        shared = [n for n in labels if n != "background" and n in source.labels]
        reasons["labels"] = (f"one output per declared label ({len(labels) - 1}) plus background; "
                             f"{len(shared)} of them ({', '.join(shared) or 'none'}) keep {source.dataset}'s output "
                             "head, the others start fresh")
    ModelConfig.from_dict(model)  # refuses an inconsistent model with its reason
    t = source.training
    training = replace(t, epochs=max(MIN_EPOCHS, round(t.epochs * EPOCH_FRACTION)),
                       stage2_epochs=max(MIN_EPOCHS, round(t.stage2_epochs * EPOCH_FRACTION)),
                       warmup_epochs=min(t.warmup_epochs, 1))
    reasons["training"] = (f"fine-tuning: {EPOCH_FRACTION:g} of {source.dataset}'s epochs per phase (at least "
                           f"{MIN_EPOCHS}), its learning rate and batch size, one warm-up epoch")
    preprocessing = replace(source.preprocessing, target_spacing_mm=target, majority_plane=majority, cases=slicings)
    return Plan(dataset=fingerprint["dataset"], fingerprint_hash=fingerprint["hash"], labels=labels,
                label_mapping=mapping, channel_names=fingerprint["channel_names"], preprocessing=preprocessing,
                model=model, training=training, memory_target_gb=source.memory_target_gb, reasons=reasons,
                sabnet_version=__version__)


# ---- the cases ---------------------------------------------------------------------------------
def choose_cases(cases: list[dict], n_cases: int, seed: int, duplicate_groups=()) -> list[str]:
    """`n_cases` case ids (sorted): subjects in a seeded order, one case of each before a second."""
    groups = case_groups(cases, duplicate_groups)
    if not 1 <= n_cases <= len(cases):
        raise SabnetError(f"--cases {n_cases}: the dataset has {len(cases)} training cases; choose 1..{len(cases)}")
    rng = np.random.default_rng(seed)
    queues = [[str(i) for i in rng.permutation(groups[g])] for g in rng.permutation(len(groups))]
    chosen: list[str] = []
    while len(chosen) < n_cases:
        for queue in queues:
            if queue and len(chosen) < n_cases:
                chosen.append(queue.pop(0))
    return sorted(chosen)


def few_shot_splits(cases: list[dict], train_ids: list[str], n_folds: int, duplicate_groups=()) -> list[dict]:
    """Every fold: `train_ids` train; the cases of other subjects validate (the training cases
    themselves when no other subject is left)."""
    chosen = set(train_ids)
    val = sorted(i for g in case_groups(cases, duplicate_groups) if not chosen & set(g) for i in g)
    return [{"train": sorted(train_ids), "val": val or sorted(train_ids)} for _ in range(n_folds)]


# ---- the weights -------------------------------------------------------------------------------
def output_names(plan: Plan) -> list[str]:
    """The label each output channel predicts: softmax, every label by value; sigmoid, the bone."""
    by_value = [n for n, _ in sorted(plan.labels.items(), key=lambda kv: kv[1])]
    return by_value if plan.model["output_mode"] == "softmax" else by_value[1:]


def embedding_names(plan: Plan) -> list[str]:
    """The label each row of `label_embed` stands for: row 0 every label, row v the label of value v."""
    return [ALL_LABELS] + [n for n, v in sorted(plan.labels.items(), key=lambda kv: kv[1]) if v != 0]


def initial_state(source: dict[str, Tensor], source_plan: Plan, fresh: dict[str, Tensor], target_plan: Plan
                  ) -> tuple[dict[str, Tensor], dict[str, str | None]]:
    """The weights NEW's model starts from: D's (`source`), heads matched by label name, anything
    D lacks from `fresh` (a newly built model's state dict). Returns (state dict, {NEW's output
    label: D's label it starts from, or None for a fresh head})."""
    outputs = _index_map(output_names(target_plan), output_names(source_plan))
    rows = _index_map(embedding_names(target_plan), embedding_names(source_plan))
    state = {}
    for name, new in fresh.items():
        hyper = CLASS_HEAD.match(name)
        if name == CLASS_TOKENS:
            state[name] = _rows(source.get(name), new, outputs)
        elif name == LABEL_EMBED:
            state[name] = _rows(source.get(name), new, rows)
        elif hyper:
            j = outputs[int(hyper.group(2))]
            origin = None if j is None else source.get(f"{hyper.group(1)}{j}{hyper.group(3)}")
            state[name] = origin.clone() if origin is not None and origin.shape == new.shape else new.clone()
        else:
            kept = source.get(name)
            state[name] = kept.clone() if kept is not None and kept.shape == new.shape else new.clone()
    names = output_names(target_plan)
    heads = {n: (output_names(source_plan)[j] if j is not None else None) for n, j in zip(names, outputs)}
    return state, heads


def _index_map(target: list[str], source: list[str]) -> list[int | None]:
    return [source.index(n) if n in source else None for n in target]


def _rows(source: Tensor | None, fresh: Tensor, index: list[int | None]) -> Tensor:
    if source is None or source.shape[1:] != fresh.shape[1:]:
        return fresh.clone()
    return torch.stack([source[j] if j is not None else fresh[i] for i, j in enumerate(index)]).contiguous()


def source_folds(source_folder: Path) -> dict[int, str]:
    """{fold: checkpoint kind to start from} of D's trained folds: final, else final_2d."""
    found = {}
    for fd in sorted(Path(source_folder).glob("fold_*")):
        suffix = fd.name.split("_", 1)[1]
        kind = next((k for k in ("final", "final_2d") if (checkpoint_dir(fd, k) / "model.pth").is_file()), None)
        if suffix.isdigit() and kind:
            found[int(suffix)] = kind
    return found


# ---- the whole run -----------------------------------------------------------------------------
def finetune(ref: DatasetRef, source_folder: Path, options: FinetuneOptions, log: Callable[[str], None] = print
             ) -> FinetuneResult:
    """Plan and preprocess NEW (`ref`) from the trained model in `source_folder`, then fine-tune."""
    if options.stage not in (None, "2d", "all"):
        raise SabnetError(f"--stage {options.stage}: fine-tuning starts with stage 1; choose 2d or all")
    source_plan = load_plan(source_folder)
    trained = source_folds(source_folder)
    if not trained:
        raise SabnetError(f"{source_folder}: no fold of {source_plan.dataset} has finished training (no "
                          "checkpoint_final or checkpoint_final_2d); train it first: "
                          f"sab_train -d {source_plan.dataset} -f all")
    folds = sorted(set(options.folds)) if options.folds else sorted(trained)
    untrained = [f for f in folds if f not in trained]
    if untrained:
        raise SabnetError(f"{source_folder}: {source_plan.dataset} has no trained fold {untrained[0]} (trained: "
                          f"{', '.join(map(str, sorted(trained)))}); choose among those with --folds")
    if ref.name == source_plan.dataset:
        raise SabnetError(f"-d {ref.name} is the dataset the model was trained on; fine-tune into another dataset, "
                          f"or continue training with sab_train -d {ref.name} --continue")
    dataset = _raw_dataset(ref)
    if dataset.n_channels != len(source_plan.channel_names):
        channels = ", ".join(source_plan.channel_names.values())
        raise SabnetError(f"{ref.raw_dir / 'dataset.json'}: {dataset.n_channels} channel(s), but "
                          f"{source_plan.dataset}'s model reads {len(source_plan.channel_names)} ({channels}); "
                          "fine-tune from a model with as many channels, or give the new dataset those channels")
    n_available = len(dataset.case_ids())
    if options.n_cases is not None and not 1 <= options.n_cases <= n_available:
        raise SabnetError(f"--cases {options.n_cases}: {ref.name} has {n_available} training cases; "
                          f"choose 1..{n_available}")
    plan, reused, duplicates = _plan(ref, dataset, source_plan, source_folder, options, log)
    report = preprocess_dataset(dataset, plan, PreprocessedStore(ref.preprocessed_dir), options.n_processes)
    if report.failed:
        raise SabnetError(f"{ref.name}: {len(report.failed)} case(s) could not be preprocessed: "
                          + "; ".join(f"{c}: {m}" for c, m in report.failed[:3]))
    log(f"preprocessed {len(report.written)} case(s) with this plan ({len(report.skipped)} already up to date)")
    n_folds = max(max(trained), max(folds)) + 1
    split = _split(ref, dataset, plan, options.n_cases, n_folds, duplicates, log)
    metas = {f: read_metadata(Path(source_folder) / f"fold_{f}", trained[f]) for f in folds}
    stage = options.stage or ("all" if all("3d" in m.get("stages_done", []) for m in metas.values()) else "2d")
    result = FinetuneResult(plan, reused, stage, split["train"], split["val"], {})
    ref.results_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".finetune-init-", dir=ref.results_dir) as tmp:
        init = {}
        for f in folds:
            init[f], result.heads = _initial_weights(Path(source_folder), f, trained[f], metas[f], source_plan,
                                                     plan, Path(tmp), not options.full_encoder)
        training = TrainingOptions(stage=stage, device=options.device, epochs=options.epochs,
                                   iterations_per_epoch=options.iterations_per_epoch, n_workers=options.n_workers,
                                   final_validation=options.final_validation, budget_minutes=options.budget_minutes,
                                   init_weights=init)
        for f in folds:
            result.folds += train(ref, f, training, log)
    return result


def _raw_dataset(ref: DatasetRef) -> RawDataset:
    if not (ref.raw_dir / "dataset.json").is_file():
        raise SabnetError(f"{ref.raw_dir}: no raw dataset (dataset.json) for {ref.name}; give its raw folder with -d")
    return RawDataset.load(ref.raw_dir)


def _plan(ref: DatasetRef, dataset: RawDataset, source_plan: Plan, source_folder: Path, options: FinetuneOptions,
          log: Callable[[str], None]) -> tuple[Plan, bool, list[list[str]]]:
    """Verify and fingerprint NEW, and write (or keep) its fine-tuning plan. Returns (plan, reused,
    groups of identical images)."""
    folder = ref.preprocessed_dir
    folder.mkdir(parents=True, exist_ok=True)
    if ref.raw_dir.resolve() != (ref.roots.raw / ref.name).resolve():
        with atomic_path(folder / "raw_location.txt") as tmp:
            tmp.write_text(str(ref.raw_dir.resolve()) + "\n", encoding="utf-8")
    report = verify_dataset(ref.raw_dir, n_workers=options.n_processes)
    if not report.ok:
        first = report.errors[0]
        raise SabnetError(f"{ref.raw_dir}: the dataset has {len(report.errors)} error(s), the first: "
                          f"{first.file or ref.raw_dir}: {first.message}; sab_verify_dataset -d {ref.raw_dir} "
                          "lists them")
    write_json(folder / "verification.json", report.to_dict())
    fingerprint, failed = extract_fingerprint(dataset, options.n_processes, previous=load_fingerprint(folder))
    if failed:
        raise SabnetError(f"{ref.name}: case {failed[0][0]} cannot be read ({failed[0][1]}); run sab_verify_dataset")
    write_fingerprint(fingerprint, folder)
    plan = finetune_plan(source_plan, fingerprint, Path(source_folder), options.source_spacing)
    path = folder / PLANS_FILE
    reused = False
    if path.is_file() and not options.replan:
        existing = load_plan(folder)
        if _without_training(existing) != _without_training(plan):
            raise SabnetError(f"{path}: {ref.name} already has another plan; fine-tuning from {source_plan.dataset} "
                              "plans it anew: re-run with --replan (the old plan is kept as plans.json.bak), or "
                              "with --source-spacing if the old plan was made at the source's spacing")
        plan, reused = existing, True
        log(f"plan: {path} (kept: it is the fine-tuning plan from {source_plan.dataset}; its schedule as edited)")
    else:
        if path.is_file():
            with atomic_path(folder / "plans.json.bak") as tmp:
                tmp.write_bytes(path.read_bytes())
        save_plan(plan, folder)
        log(f"plan: {path} written from {source_plan.dataset}'s (hash {source_plan.hash()}); labels "
            f"{', '.join(n for n in plan.labels if n != 'background')}")
    return plan, reused, report.duplicate_groups


def _without_training(plan: Plan) -> dict:
    d = plan.to_dict()
    for key in ("training", "reasons", "sabnet_version"):
        d.pop(key)
    return d


def _split(ref: DatasetRef, dataset: RawDataset, plan: Plan, n_cases: int | None, n_folds: int,
           duplicates: list[list[str]], log: Callable[[str], None]) -> dict:
    """Write (or read) NEW's splits_final.json; returns the split of the first fold."""
    path = ref.preprocessed_dir / SPLITS_FILE
    ours_file = ref.preprocessed_dir / FEW_SHOT_FILE
    cases = [{"case_id": c.case_id, "subject": c.subject, "sequence": c.sequence, "location": c.location}
             for c in dataset.training_cases()]
    ours = read_json(ours_file).get("splits") if ours_file.is_file() else None
    users_own = path.is_file() and read_json(path) != ours
    if n_cases is None or users_own:
        if n_cases is not None:
            raise SabnetError(f"{path}: {ref.name} has its own splits, which sab_finetune uses as given; drop --cases, "
                              "or delete the file to have --cases choose the training cases")
        try:
            splits = load_or_create_splits(ref.preprocessed_dir, cases, ref.raw_dir, seed=plan.training.seed)
        except SabnetError as e:
            raise SabnetError(f"{e}; or fine-tune on a few cases with --cases K") from None
        log(f"splits: {path} ({len(splits)} folds; fold 0 trains on {len(splits[0]['train'])} cases)")
        return splits[0]
    train_ids = choose_cases(cases, n_cases, plan.training.seed, duplicates)
    splits = few_shot_splits(cases, train_ids, n_folds, duplicates)
    write_json(path, splits)
    write_json(ours_file, {"n_cases": n_cases, "seed": plan.training.seed, "train": train_ids, "splits": splits})
    same = splits[0]["val"] == train_ids
    log(f"splits: {path}: every fold trains on {', '.join(train_ids)}; validation on "
        + ("the same cases (no other subject is left)" if same else ", ".join(splits[0]["val"])))
    return splits[0]


def _initial_weights(source_folder: Path, fold: int, kind: str, meta: dict, source_plan: Plan, plan: Plan,
                     tmp: Path, frozen_encoder: bool) -> tuple[InitialWeights, dict[str, str | None]]:
    fd = source_folder / f"fold_{fold}"
    model, _ = load_checkpoint(fd, kind, source_plan)
    torch.manual_seed(plan.training.seed + fold)
    fresh = SABModel(ModelConfig.from_dict(plan.model)).state_dict()
    state, heads = initial_state(model.state_dict(), source_plan, fresh, plan)
    path = tmp / f"fold_{fold}.pth"
    torch.save(state, path)
    new = [n for n, s in heads.items() if s is None]
    origin = {"dataset": source_plan.dataset, "model_folder": str(source_folder), "fold": fold,
              "checkpoint": kind, "plan_hash": source_plan.hash(), "stages_done": meta.get("stages_done", []),
              "sam_checkpoint": meta.get("sam_checkpoint"), "heads": heads,
              "summary": f"{source_plan.dataset} fold {fold} (checkpoint_{kind}); "
                         + (f"fresh output heads for {', '.join(new)}" if new else "every output head kept")}
    return InitialWeights(path, frozen_encoder, origin), heads
