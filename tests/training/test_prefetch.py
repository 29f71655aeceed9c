"""A segmentation phase starts the next epoch's augmentation workers while an epoch validates: the
epoch then trains on exactly the batches it would have drawn otherwise, and workers that no epoch
takes are stopped."""
import multiprocessing

import numpy as np
import torch
from trainer_cohort import one_torch_thread, tiny_cohort  # noqa: F401 (autouse fixture)

from sabnet.paths import resolve_dataset
from sabnet.planning.plans import load_plan
from sabnet.preprocessing.store import PreprocessedStore
from sabnet.training.distributed import DistributedContext
from sabnet.training.run_training import phase_schedule
from sabnet.training.slice_phase import SlicePhase


def _phase():
    ref = resolve_dataset(str(tiny_cohort()))
    plan, store = load_plan(ref.preprocessed_dir), PreprocessedStore(ref.preprocessed_dir)
    ids = store.case_ids()
    return SlicePhase("2d", plan, store, ids[:-1], ids[-1:], phase_schedule("2d", plan, {}), 0,
                      DistributedContext(torch.device("cpu")), n_workers=1, pretrained=False)


def _draw(phase, epoch, n=3):
    with phase.batches(epoch) as batches:
        return [next(batches) for _ in range(n)]


def test_prefetched_epoch_draws_the_same_batches_and_unused_workers_stop():
    phase = _phase()
    plain = _draw(phase, 1)
    baseline = len(multiprocessing.active_children())
    phase.prefetch(1)
    assert len(multiprocessing.active_children()) == baseline + 1  # its worker runs before the epoch starts
    prefetched = _draw(phase, 1)
    for a, b in zip(plain, prefetched):
        for key in ("data", "seg", "points", "prompt_label"):
            assert np.array_equal(a[key], b[key]), key
    assert len(multiprocessing.active_children()) == baseline  # the epoch's end stopped it

    phase.prefetch(2)  # the phase ends before epoch 2 (a shortened budget): close() stops the worker
    assert len(multiprocessing.active_children()) == baseline + 1
    phase.close()
    assert len(multiprocessing.active_children()) == baseline
    assert len(_draw(phase, 3, n=1)) == 1  # an epoch other than the prefetched one gets its own worker


def test_the_epoch_loop_prefetches_every_epoch_but_the_first_and_leaves_no_worker(monkeypatch):
    from sabnet.training.run_training import TrainingOptions, train

    calls = []
    original = SlicePhase.prefetch

    def recording(self, epoch):
        calls.append(epoch)
        original(self, epoch)

    monkeypatch.setattr(SlicePhase, "prefetch", recording)
    ref = resolve_dataset(str(tiny_cohort()))
    baseline = len(multiprocessing.active_children())
    train(ref, 0, TrainingOptions(stage="2d", epochs=3, iterations_per_epoch=2, n_workers=1, device="cpu",
                                  final_validation=False), log=lambda line: None)
    assert calls == [1, 2]  # after epochs 0 and 1; none after the last
    assert len(multiprocessing.active_children()) == baseline
