"""sab_find_best_configuration: modes and postprocessing chosen on cross-validation predictions."""
import json

import numpy as np
import pandas as pd
import pytest

from model_folder_fixture import make_model_folder, use_roots
from sabnet.cli.find_best_configuration import main as find_best_main
from sabnet.inference.postprocessing import load_postprocessing
from sabnet.io.image_io import read_image, write_image
from sabnet.planning.plans import load_plan
from sabnet.preprocessing.case_preprocessing import map_labels


@pytest.fixture
def folder_with_cv_predictions(tmp_path, monkeypatch):
    """Two folds whose validation predictions are the references with defects: in 2D mode a
    spurious island of femur far from the bone, in 3D mode the same plus a missing slab of tibia."""
    raw, folder = make_model_folder(tmp_path, dataset_name="Dataset962_Best")
    use_roots(monkeypatch, tmp_path / "home")
    plan = load_plan(folder)
    cases = sorted(p.name[: -len(".nii.gz")] for p in (raw / "labelsTr").iterdir())
    for n, case_id in enumerate(cases):
        labels, geometry = read_image(raw / "labelsTr" / f"{case_id}.nii.gz")
        reference = map_labels(labels, plan.label_mapping)
        island = reference.copy()
        island[:3, :10, :10] = plan.labels["femur"]  # a false island in a corner
        worse = island.copy()
        worse[worse == plan.labels["tibia"]] = 0 if n % 2 else plan.labels["tibia"]
        fold = folder / f"fold_{n % 2}" / "validation"
        write_image(worse, geometry, fold / f"{case_id}.nii.gz")       # final mode: 3d
        write_image(island, geometry, fold / "2d" / f"{case_id}.nii.gz")
        modes = pd.DataFrame({"mode": ["2d", "3d"], "label": ["foreground mean"] * 2, "dice": [0, 0]})
        modes.to_csv(fold / "modes.csv", index=False)
    return raw, folder, plan


def test_the_better_mode_and_useful_postprocessing_are_chosen(folder_with_cv_predictions, capsys):
    raw, folder, plan = folder_with_cv_predictions
    assert find_best_main(["-d", str(raw)]) == 0
    out = capsys.readouterr().out
    best = json.loads((folder / "best_configuration.json").read_text())
    assert best["mode"] == "2d" and "does not beat 2D" in best["mode_reason"]
    from sabnet.inference.model_folder import chosen_mode
    mode, why = chosen_mode(folder)  # what sab_predict uses when --mode is not given
    assert mode == "2d" and "sab_find_best_configuration" in why and best["mode_reason"] in why
    assert best["mean_dice_by_mode"]["2d"] > best["mean_dice_by_mode"]["3d"]
    rules = load_postprocessing(folder)
    femur = rules.labels[plan.labels["femur"]]
    assert femur.keep_largest_component or femur.min_island_mm3 > 0  # the island goes
    assert best["mean_dice_after_postprocessing"] > best["mean_dice_by_mode"]["2d"]
    assert f"--mode 2d" in best["command"] and best["command"] in out
    table = pd.read_csv(folder / "configurations.csv", index_col=0)
    assert {"2d", "3d"} <= set(table.index) and "foreground mean" in table.columns


def test_no_cross_validation_predictions_is_one_clear_error(tmp_path, monkeypatch, capsys):
    raw, folder = make_model_folder(tmp_path, n_folds=1, dataset_name="Dataset963_Empty")
    use_roots(monkeypatch, tmp_path / "home")
    assert find_best_main(["-d", str(raw)]) == 1
    assert "no cross-validation predictions" in capsys.readouterr().err


def test_3d_mode_is_chosen_only_when_it_clearly_beats_2d():
    from sabnet.inference.best_configuration import MIN_3D_GAIN, choose_mode

    assert choose_mode({"2d": 0.80, "3d": 0.80 + MIN_3D_GAIN / 2})[0] == "2d"  # equal within noise: 2D
    mode, why = choose_mode({"2d": 0.80, "3d": 0.80 + 2 * MIN_3D_GAIN})
    assert mode == "3d" and "beats 2D" in why
    assert choose_mode({"2d": 0.80, "3d": 0.70})[0] == "2d"
    assert choose_mode({"3d": 0.70}) == ("3d", "only 3d mode was validated")


def test_vertebrae_named_partly_by_their_neighbours_name_get_series_naming(tmp_path, monkeypatch):
    """Phantom lumbar spines whose 'predictions' call the cranial 40 % of each body by the name of
    the body above (a network that reads names off the place in the image): naming the series in
    order is chosen, and raises Dice."""
    raw, folder = make_model_folder(tmp_path, dataset_name="Dataset964_Series", locations=("lumbar_spine",),
                                    sequences=("T2",), n_slices=12, in_plane_size=96, planes=("sagittal",),
                                    slice_spacing_mm=(3.0, 3.5), in_plane_spacing_mm=(2.2, 2.6))
    use_roots(monkeypatch, tmp_path / "home")
    plan = load_plan(folder)
    values = [plan.labels[f"L{i}"] for i in range(1, 6)]
    for n, path in enumerate(sorted((raw / "labelsTr").iterdir())):
        labels, geometry = read_image(path)
        reference = map_labels(labels, plan.label_mapping)
        centres = np.array([np.argwhere(reference == v).mean(axis=0) for v in values])
        axis = int(np.argmax(centres.std(axis=0)))
        position = np.moveaxis(np.indices(reference.shape), 0, -1)[..., axis]
        predicted = reference.copy()
        for upper, value in zip(values, values[1:]):
            body = reference == value
            top, bottom = position[body].min(), position[body].max()
            cranial = top + 0.4 * (bottom - top) if centres[0, axis] < centres[-1, axis] else bottom - 0.4 * (bottom - top)
            part = body & ((position <= cranial) if centres[0, axis] < centres[-1, axis] else (position >= cranial))
            predicted[part] = upper
        fold = folder / f"fold_{n % 2}" / "validation"
        write_image(predicted, geometry, fold / path.name)
        pd.DataFrame({"mode": ["2d"], "label": ["foreground mean"], "dice": [0]}).to_csv(fold / "modes.csv", index=False)
    assert find_best_main(["-d", str(raw)]) == 0
    rules = load_postprocessing(folder)
    assert rules.series == values
    best = json.loads((folder / "best_configuration.json").read_text())
    assert best["mean_dice_after_postprocessing"] > best["mean_dice_by_mode"]["2d"] + 0.1
    table = pd.read_csv(folder / "configurations.csv", index_col=0)
    assert table.loc["2d + series naming", "foreground mean"] > 0.99 > table.loc["2d", "foreground mean"]
