"""sab_finetune: a knee model (D) fine-tuned on a few hip cases (NEW): the plan it makes, the weights it
starts from, a results folder sab_predict uses, and its user errors."""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_cohort import NAME as SOURCE, one_torch_thread, tiny_cohort  # noqa: F401 (autouse fixture)

from sabnet.cli.finetune import main as sab_finetune
from sabnet.cli.predict import main as sab_predict
from sabnet.io.image_io import read_geometry, read_image
from sabnet.model.config import ModelConfig
from sabnet.model.sab_model import SABModel
from sabnet.paths import Roots, resolve_dataset
from sabnet.phantoms.cohort import make_phantom_dataset
from sabnet.planning.fingerprint import load_fingerprint
from sabnet.planning.planner import plan_cohort
from sabnet.planning.plans import load_plan
from sabnet.training.checkpoints import load_checkpoint, read_metadata
from sabnet.training.finetune import choose_cases, few_shot_splits, finetune_plan, initial_state, output_names
from sabnet.training.layout import results_folder
from sabnet.training.run_training import TrainingOptions, train

NEW = "Dataset973_FinetuneHip"
SHORT = ["--epochs", "1", "--iters-per-epoch", "2", "-nw", "0"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """D: the tiny knee cohort (multi-label) with fold 0 trained briefly (stage 1); returns its
    raw folder and its results folder (copied into each test's roots by `roots`)."""
    home = tmp_path_factory.mktemp("finetune_source")
    with pytest.MonkeyPatch.context() as mp:
        for key, sub in (("SABNET_RAW", "raw"), ("SABNET_PREPROCESSED", "preprocessed"), ("SABNET_RESULTS", "results")):
            mp.setenv(key, str(home / sub))
        torch.set_num_threads(1)
        raw = tiny_cohort()
        train(resolve_dataset(str(raw)), 0, TrainingOptions(stage="2d", epochs=1, iterations_per_epoch=3, n_workers=0,
                                                           final_validation=False), log=lambda _: None)
    return raw, home / "results" / SOURCE


@pytest.fixture(scope="module")
def hip(tmp_path_factory):
    """NEW: three hip subjects (femur is a label the knee has too; pelvis is not) and one test case."""
    return make_phantom_dataset(tmp_path_factory.mktemp("finetune_new"), locations=("hip",), sequences=("T1",),
                                n_cases=3, n_test_cases=1, seed=21, planes=("coronal",), in_plane_size=64,
                                in_plane_spacing_mm=(1.3, 1.5),
                                n_slices=8, dataset_name=NEW)


@pytest.fixture
def roots(source):
    shutil.copytree(source[1], Roots.from_environment().results / SOURCE)
    return Roots.from_environment()


def test_finetune_writes_a_results_folder_that_predicts(source, hip, roots, tmp_path, capsys):
    assert sab_finetune(["-d", str(hip), "--from", str(source[0]), "--cases", "2", *SHORT]) == 0
    out = capsys.readouterr().out
    new, d_plan = resolve_dataset(str(hip)), load_plan(roots.results / SOURCE / "sab_tiny_64")

    # NEW's plan: D's model, normalization and depth volume; NEW's labels, slicing and in-plane
    # spacing (the one sab_plan_and_preprocess would pick for NEW; --source-spacing keeps D's)
    plan = load_plan(new.preprocessed_dir)
    assert SOURCE in plan.reasons["finetuned_from"] and d_plan.hash() in plan.reasons["finetuned_from"]
    fingerprint = load_fingerprint(new.preprocessed_dir)
    own_spacing = plan_cohort(fingerprint).preprocessing.target_spacing_mm
    assert plan.preprocessing.target_spacing_mm == own_spacing != d_plan.preprocessing.target_spacing_mm
    kept = finetune_plan(d_plan, fingerprint, roots.results / SOURCE / "sab_tiny_64", source_spacing=True)
    assert kept.preprocessing.target_spacing_mm == d_plan.preprocessing.target_spacing_mm
    assert kept.preprocessing.cases == plan.preprocessing.cases and kept.model == plan.model
    assert plan.preprocessing.normalization == d_plan.preprocessing.normalization
    assert plan.preprocessing.depth_volume == d_plan.preprocessing.depth_volume
    assert sorted(plan.preprocessing.cases) == [f"phantom_{i:03d}" for i in range(3)]
    hip_labels = json.loads((hip / "dataset.json").read_text())["labels"]
    assert set(plan.labels) == set(hip_labels)
    assert plan.model == dict(d_plan.model, n_outputs=len(hip_labels), n_labels=len(hip_labels) - 1)

    # two training cases, the third validates, the same in every fold
    splits = json.loads((new.preprocessed_dir / "splits_final.json").read_text())
    ids = sorted(plan.preprocessing.cases)
    assert len(splits) == 1 and len(splits[0]["train"]) == 2
    assert sorted(splits[0]["train"] + splits[0]["val"]) == ids

    # a normal results folder, its checkpoints saying where they started
    fold = results_folder(new, plan) / "fold_0"
    meta = read_metadata(fold, "final")
    origin = meta["finetuned_from"]
    assert origin["dataset"] == SOURCE and origin["fold"] == 0 and origin["checkpoint"] == "final"
    assert origin["plan_hash"] == d_plan.hash() and meta["plan_hash"] == plan.hash()
    assert origin["heads"]["femur"] == "femur" and origin["heads"]["background"] == "background"
    assert origin["heads"]["pelvis"] is None
    assert read_metadata(fold, "latest")["finetuned_from"] == origin
    assert "fresh for pelvis" in out and "sab_predict -d" in out
    assert f"starting from {SOURCE} fold 0" in (fold / "training_log.txt").read_text()

    # training started from D; D's encoder stayed frozen but for its adapters, the decoder learned
    d_model, _ = load_checkpoint(roots.results / SOURCE / "sab_tiny_64" / "fold_0", "final", d_plan)
    new_model, _ = load_checkpoint(fold, "final", plan)
    d_state, new_state = d_model.state_dict(), new_model.state_dict()
    torch.manual_seed(0)
    fresh = SABModel(ModelConfig.from_dict(plan.model)).state_dict()
    for key in ("image_encoder.blocks.1.mlp.lin1.weight", "image_encoder.patch_embed.proj.weight"):
        assert torch.equal(new_state[key], d_state[key]) and not torch.equal(fresh[key], d_state[key])
    adapter = next(k for k in d_state if k.startswith("image_encoder.") and "adapter" in k)
    for key in (adapter, "mask_decoder.output_upscaling.0.weight"):
        assert not torch.equal(new_state[key], d_state[key]), key

    # sab_predict -d NEW uses it unchanged; label maps on the inputs' exact grid
    assert sab_predict(["-i", str(hip / "imagesTs"), "-o", str(tmp_path / "pred"), "-d", str(hip)]) == 0
    for image in sorted((hip / "imagesTs").iterdir()):
        written = tmp_path / "pred" / image.name.replace("_0000", "")
        assert not read_geometry(written).differences(read_geometry(image), spacing_rtol=1e-6, origin_atol_mm=1e-5,
                                                      direction_atol=1e-6)
        assert set(np.unique(read_image(written)[0])) <= set(plan.labels.values())


def test_full_encoder_trains_the_encoders_own_weights_too(source, hip, roots):
    assert sab_finetune(["-d", str(hip), "--from", str(source[0]), "--cases", "2", "--full-encoder",
                         "--no-validation", *SHORT]) == 0
    new = resolve_dataset(str(hip))
    plan, d_plan = load_plan(new.preprocessed_dir), load_plan(roots.results / SOURCE / "sab_tiny_64")
    d_model, _ = load_checkpoint(roots.results / SOURCE / "sab_tiny_64" / "fold_0", "final", d_plan)
    new_model, _ = load_checkpoint(results_folder(new, plan) / "fold_0", "final", plan)
    key = "image_encoder.blocks.1.mlp.lin1.weight"
    assert not torch.equal(new_model.state_dict()[key], d_model.state_dict()[key])


def test_initial_state_keeps_shared_heads_and_starts_new_labels_fresh(source, roots):
    d_plan = load_plan(roots.results / SOURCE / "sab_tiny_64")
    d_model, _ = load_checkpoint(roots.results / SOURCE / "sab_tiny_64" / "fold_0", "final", d_plan)
    d_state = d_model.state_dict()
    d_labels = output_names(d_plan)
    shared = d_labels[2]  # a knee bone NEW also has, at another output index
    labels = {"background": 0, "radius": 1, shared: 2}
    new_plan = replace(d_plan, labels=labels, model=dict(d_plan.model, n_outputs=3, n_labels=2))
    torch.manual_seed(3)
    fresh = SABModel(ModelConfig.from_dict(new_plan.model)).state_dict()
    state, heads = initial_state(d_state, d_plan, fresh, new_plan)
    assert heads == {"background": "background", "radius": None, shared: shared}
    model = SABModel(ModelConfig.from_dict(new_plan.model))
    model.load_state_dict(state)  # fits exactly

    per_output = ("class_tokens", "class_heads", "label_embed")
    body = [k for k in fresh if not k.startswith(per_output)]
    assert len(body) > 100 and all(torch.equal(state[k], d_state[k]) for k in body)
    j = d_labels.index(shared)
    for new_index, old_index in ((0, 0), (2, j)):  # background and the shared bone keep D's heads
        assert torch.equal(state["class_tokens.weight"][new_index], d_state["class_tokens.weight"][old_index])
        for part in ("layers.0.weight", "layers.2.bias"):
            assert torch.equal(state[f"class_heads.{new_index}.{part}"], d_state[f"class_heads.{old_index}.{part}"])
    assert torch.equal(state["label_embed.weight"][2], d_state["label_embed.weight"][j])  # row = label value
    assert torch.equal(state["label_embed.weight"][0], d_state["label_embed.weight"][0])  # 'all labels'
    # the new label starts as a newly built model's head: fresh token and MLP, zero label embedding
    assert torch.equal(state["class_tokens.weight"][1], fresh["class_tokens.weight"][1])
    assert torch.equal(state["class_heads.1.layers.0.weight"], fresh["class_heads.1.layers.0.weight"])
    assert not any(torch.equal(state["class_heads.1.layers.0.weight"], d_state[f"class_heads.{i}.layers.0.weight"])
                   for i in range(len(d_labels)))
    assert not state["label_embed.weight"][1].any()

    # a binary model fine-tuned in binary mode keeps every tensor
    binary = replace(d_plan, labels={"background": 0, "bone": 1},
                     model=dict(d_plan.model, n_outputs=1, n_labels=1, output_mode="sigmoid"))
    b_state = SABModel(ModelConfig.from_dict(binary.model)).state_dict()
    torch.manual_seed(4)
    kept, heads = initial_state(b_state, binary, SABModel(ModelConfig.from_dict(binary.model)).state_dict(), binary)
    assert heads == {"bone": "bone"} and all(torch.equal(kept[k], b_state[k]) for k in b_state)


def test_few_shot_cases_prefer_different_subjects():
    cases = [{"case_id": f"c{i}", "subject": f"s{i // 2}"} for i in range(8)]  # four subjects, two cases each
    chosen = choose_cases(cases, 3, seed=1)
    assert len({c["subject"] for c in cases if c["case_id"] in chosen}) == 3
    assert choose_cases(cases, 3, seed=1) == chosen and choose_cases(cases, 8, seed=1) == [c["case_id"] for c in cases]
    [split] = few_shot_splits(cases, chosen, 1)
    # a subject with a training case never validates
    trained = {c["subject"] for c in cases if c["case_id"] in chosen}
    assert split["val"] and all(c["subject"] not in trained for c in cases if c["case_id"] in split["val"])
    # no other subject left: validation on the training cases themselves
    assert few_shot_splits(cases, choose_cases(cases, 4, seed=2), 2)[1]["val"] == choose_cases(cases, 4, seed=2)


def test_user_errors_are_one_line(source, hip, roots, tmp_path, capsys):
    def error(args):
        assert sab_finetune(args) == 1
        err = capsys.readouterr().err.strip()  # progress bars of the steps before, then one line
        assert "Traceback" not in err and err.splitlines()[-1].startswith("sab_finetune: error: ")
        return err.splitlines()[-1]

    d = str(source[0])
    assert "not found" in error(["-d", "Dataset998_Nowhere", "--from", d])
    assert "choose 1..3" in error(["-d", str(hip), "--from", d, "--cases", "10"])
    assert "no trained fold 3" in error(["-d", str(hip), "--from", d, "--folds", "3"])
    assert "another dataset" in error(["-d", d, "--from", d])
    two_channels = shutil.copytree(hip, tmp_path / "Dataset974_TwoChannels")
    meta = json.loads((two_channels / "dataset.json").read_text())
    meta["channel_names"] = {"0": "T1", "1": "T2"}
    (two_channels / "dataset.json").write_text(json.dumps(meta))
    assert "1 (MRI)" in error(["-d", str(two_channels), "--from", d])
    # D without a finished fold
    folder = roots.results / SOURCE / "sab_tiny_64"
    shutil.move(folder / "fold_0", tmp_path / "fold_0")
    assert "has finished training" in error(["-d", str(hip), "--from", d])
    shutil.move(tmp_path / "fold_0", folder / "fold_0")
    # NEW planned on its own already: its plan is not replaced without --replan
    from sabnet.preprocessing.plan_and_preprocess import PlanningOptions, plan_and_preprocess

    plan_and_preprocess(resolve_dataset(str(hip)), PlanningOptions(), verify=False, plan_only=True)
    assert "--replan" in error(["-d", str(hip), "--from", d, "--cases", "2"])
    # the user's own splits are used as given; --cases would contradict them
    splits = [{"train": ["x"], "val": ["y"]}]
    Path(roots.preprocessed / NEW / "splits_final.json").write_text(json.dumps(splits))
    assert "own splits" in error(["-d", str(hip), "--from", d, "--cases", "2", "--replan", *SHORT])
