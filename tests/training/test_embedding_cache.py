"""The embedding cache of a frozen pretrained encoder: a training step from it gives the uncached
step's loss, it is written once for every fold and redone when the plan or the weights change,
augmented copies move image and labels together, and sab_train uses it end to end."""
import numpy as np
import pytest
import torch
from trainer_cohort import NAME, one_torch_thread, tiny_cohort  # noqa: F401 (autouse fixture)

from sabnet.cli.train import main as sab_train
from sabnet.model.config import ModelConfig
from sabnet.model.sab_model import build_model
from sabnet.paths import resolve_dataset
from sabnet.planning.plans import load_plan, save_plan
from sabnet.preprocessing.store import PreprocessedStore
from sabnet.training.distributed import start, stop
from sabnet.training.embedding_cache import CACHE_FOLDER, CacheSettings, EmbeddingCache, preprocessing_hash
from sabnet.training.layout import results_folder
from sabnet.training.schedule import Schedule
from sabnet.training.slice_phase import SlicePhase

SIZE = 64  # LiteMedSAM's TinyViT runs at any multiple of 4 px; 64 keeps the tests quick


def _frozen_plan(preprocessed):
    """The tiny cohort planned for lite_medsam_frozen with the packaged weights, at 64 px."""
    plan = load_plan(preprocessed)
    planned = plan.model
    plan.model = ModelConfig.for_variant(
        "lite_medsam_frozen", SIZE, depth_channels=[4, 8],
        **{k: planned[k] for k in ("in_channels", "n_outputs", "output_mode", "n_labels", "depth_volume_shape",
                                   "depth_neighbourhood_slices")}).to_dict()
    plan.training.pretrained_weights = "lite_medsam"
    plan.training.cache_augmented_copies = 0.5
    save_plan(plan, preprocessed)
    return plan


@pytest.fixture
def cohort():
    raw = tiny_cohort()
    ref = resolve_dataset(raw)
    plan = _frozen_plan(ref.preprocessed_dir)
    return ref, plan, PreprocessedStore(ref.preprocessed_dir)


def _model(plan):
    model = build_model(ModelConfig.from_dict(plan.model), "lite_medsam")
    model.configure_trainable(True, "2d")
    assert not model.encoder_trains()
    return model


def test_a_step_from_the_cache_gives_the_uncached_steps_loss(cohort, monkeypatch):
    ref, plan, store = cohort
    model = _model(plan)
    # the cache encodes in bfloat16 where the CPU computes it natively (AVX-512 BF16, AMX: some CI
    # machines) and the live step in float32; the comparison is exact only at one precision
    monkeypatch.setattr("sabnet.training.embedding_cache.autocast_dtype", lambda device: None)
    settings = CacheSettings(augmented_copies=0, dtype="float32")
    cache = EmbeddingCache(ref.preprocessed_dir, EmbeddingCache.key_for(model, preprocessing_hash(plan), settings),
                           settings)
    cache.build(model, store, store.case_ids(), log=lambda _: None)
    ids = store.case_ids()
    ctx = start("cpu")
    try:
        schedule = Schedule(epochs=1, iterations_per_epoch=1, batch_size=4, initial_lr=1e-3, weight_decay=0.0,
                            warmup_epochs=1)
        cached = SlicePhase("2d", plan, store, ids[:4], ids[4:], schedule, 0, ctx, 0, True, cache=cache)
        with cached.batches(0) as batches:
            batch = next(iter(batches))
        assert batch["embedding"].shape == (4, 256, SIZE // 4, SIZE // 4) and (batch["copy"] == 0).all()
        live = {k: v for k, v in batch.items() if k != "embedding"}
        losses = []
        for sample in (batch, live):
            cached._rng = np.random.default_rng(5)  # the same correction prompts for both
            torch.manual_seed(0)
            losses.append(cached.training_loss(model, sample))
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
        losses[0].backward()
        assert model.class_tokens.weight.grad is not None
        assert all(p.grad is None for p in model.image_encoder.parameters())
    finally:
        stop(ctx)


def test_the_cache_is_written_once_and_redone_when_plan_or_weights_change(cohort):
    ref, plan, store = cohort
    model = _model(plan)
    settings = CacheSettings(augmented_copies=0.5, unit_range=True)
    key = EmbeddingCache.key_for(model, preprocessing_hash(plan), settings)
    cache = EmbeddingCache(ref.preprocessed_dir, key, settings)
    assert cache.build(model, store, store.case_ids(), log=lambda _: None) == len(store.case_ids())
    assert cache.build(model, store, store.case_ids(), log=lambda _: None) == 0  # every fold reuses it
    case = store.case_ids()[0]
    n_slices = store.properties(case)["shape"][0]
    assert cache.embeddings(case).dtype == np.float16 and len(cache.tiles(case)) == n_slices
    images, labels = cache.copy_arrays(case, 1)
    assert 0 < len(images) < n_slices  # half of the slices, about
    real = labels[0] > 0
    assert images.min() >= 0 and images.max() <= 1.0 and (labels.astype(int) <= max(plan.labels.values())).all()
    assert real.any() or not labels.any()
    # the same key for the same encoder and plan; another for an edited plan or other weights
    assert EmbeddingCache.key_for(model, preprocessing_hash(plan), settings) == key
    plan.preprocessing.target_spacing_mm *= 1.1
    assert EmbeddingCache.key_for(model, preprocessing_hash(plan), settings) != key
    with torch.no_grad():
        model.image_encoder.neck[0].weight.mul_(1.01)
    other = EmbeddingCache(ref.preprocessed_dir, EmbeddingCache.key_for(model, preprocessing_hash(plan), settings),
                           settings)
    assert other.key != key
    other.build(model, store, store.case_ids()[:1], log=lambda _: None)
    assert not cache.root.exists()  # a stale cache is removed: they are large


def test_sab_train_with_a_frozen_encoder_trains_from_the_cache(cohort, capsys):
    ref, plan, store = cohort
    assert sab_train(["-d", NAME, "-f", "0", "--stage", "2d"]) == 0
    folder = results_folder(ref, plan)
    log = (folder / "fold_0" / "training_log.txt").read_text()
    assert "embedding cache" in log and "encoded 6 cases" in log
    caches = list((ref.preprocessed_dir / CACHE_FOLDER).iterdir())
    assert len(caches) == 1
    assert (folder / "fold_0" / "validation" / "summary.csv").is_file()
    # a second fold finds the cache written
    assert sab_train(["-d", NAME, "-f", "1", "--stage", "2d"]) == 0
    assert "up to date" in (folder / "fold_1" / "training_log.txt").read_text()


def test_a_time_budget_limits_the_validation_slices():
    raw = tiny_cohort()
    ref = resolve_dataset(raw)
    plan, store = load_plan(ref.preprocessed_dir), PreprocessedStore(ref.preprocessed_dir)
    model = build_model(ModelConfig.from_dict(plan.model))
    ids = store.case_ids()
    ctx = start("cpu")
    try:
        schedule = Schedule(epochs=1, iterations_per_epoch=1, batch_size=4, initial_lr=1e-3, weight_decay=0.0,
                            warmup_epochs=1)
        phase = SlicePhase("2d", plan, store, ids[:4], ids[4:], schedule, 0, ctx, 0, False)
        seen = []
        original = model.forward
        model.forward = lambda images, *a, **k: seen.append(len(images)) or original(images, *a, **k)
        phase.validate(model)
        assert sum(seen) == plan.training.validation_slices
        seen.clear()
        phase.limit_validation(5)
        phase.validate(model)
        assert sum(seen) == 5
    finally:
        stop(ctx)
