"""Training under a time budget: the schedule is fitted to the budget and recorded."""
import json
import time

from trainer_cohort import one_torch_thread, tiny_cohort  # noqa: F401 (autouse fixture)

from sabnet.paths import resolve_dataset
from sabnet.planning.plans import load_plan
from sabnet.training.layout import results_folder
from sabnet.training.run_training import TrainingOptions, phase_schedule, train


def test_a_budget_sets_iterations_and_epochs_and_is_kept():
    raw = tiny_cohort()
    ref = resolve_dataset(str(raw))
    budget_minutes = 0.4
    start = time.perf_counter()
    [result] = train(ref, 0, TrainingOptions(stage="2d", n_workers=0, budget_minutes=budget_minutes,
                                             final_validation=False), log=lambda _: None)
    elapsed = time.perf_counter() - start
    meta = json.loads((result.fold_dir / "checkpoint_final" / "metadata.json").read_text())
    overrides = meta["overrides"]
    assert overrides["budget_minutes"] == budget_minutes
    epochs, iterations = overrides["phase_epochs"]["2d"], overrides["phase_iterations"]["2d"]
    assert epochs >= 2 and iterations >= 1
    trained = [r for r in meta["history"] if r["phase"] == "2d"]
    assert len(trained) == epochs  # the run ended where the fitted schedule said
    # the epochs fit the budget: their summed time stays near it (the last epoch may run over)
    assert sum(r["epoch_time_s"] for r in trained) <= 60 * budget_minutes * 1.5 + max(r["epoch_time_s"] for r in trained)
    assert elapsed < 60 * budget_minutes * 3 + 30
    # a resumed run rebuilds the very schedule from what the checkpoint recorded
    latest = json.loads((result.fold_dir / "checkpoint_latest" / "metadata.json").read_text())
    plan = load_plan(results_folder(ref, load_plan(ref.preprocessed_dir)))
    assert phase_schedule("2d", plan, latest["overrides"]).to_dict() == latest["schedule"]
    assert latest["schedule"]["epochs"] == epochs and latest["schedule"]["iterations_per_epoch"] == iterations
