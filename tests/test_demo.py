"""sab_demo, shortened: a small phantom cohort and a one-minute training budget, end to end through
the console entry point. Its Dice means nothing at this length; what it checks is that every stage
runs and leaves what the demo promises (table, CSV, QC pictures, progress.png, exact geometry)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from sabnet.cli.demo import main
from sabnet.demo import CONFIGURATIONS, DEMO_DATASET
from sabnet.io.image_io import read_geometry, read_image

COLUMNS = [f"{mode}_{'prompted' if prompted else 'automatic'}" for mode, prompted in CONFIGURATIONS]


def test_shortened_demo_runs_every_stage(tmp_path, monkeypatch, capsys):
    for key in ("SABNET_HOME", "SABNET_RAW", "SABNET_PREPROCESSED", "SABNET_RESULTS"):
        monkeypatch.setenv(key, "unused")  # the demo points these at its own folder; restored afterwards
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--minutes", "1", "--cases", "5", "--test-cases", "2", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "Mean Dice on the held-out phantoms" in printed and "all cases" in printed
    assert all(column in printed for column in COLUMNS)
    assert "sab_predict -i" in printed and str(out.resolve()) in printed

    table = pd.read_csv(out / "demo_dice.csv", index_col=0)
    assert list(table.columns) == COLUMNS
    assert "all cases" in table.index
    assert any(i.startswith("location: ") for i in table.index) and any(i.startswith("sequence: ") for i in table.index)
    assert np.isfinite(table.values).all() and (table.values >= 0).all() and (table.values <= 1).all()

    raw = out / "sabnet_data" / "raw" / DEMO_DATASET
    test_cases = sorted(p.name.split("_0000")[0] for p in (raw / "imagesTs").iterdir())
    assert len(test_cases) == 2
    prompts = json.loads((out / "demo_prompts.json").read_text(encoding="utf-8"))
    assert sorted(prompts) == test_cases and all(prompts[c]["prompts"] for c in test_cases)
    for column in COLUMNS:
        folder = out / "predictions" / column
        assert (folder / "summary.csv").is_file()
        for case in test_cases:
            predicted, geometry = read_image(folder / f"{case}.nii.gz")
            source = read_geometry(raw / "imagesTs" / f"{case}_0000.nii.gz")  # NIfTI keeps float32 precision
            assert geometry.size == source.size
            assert geometry.matches(source, spacing_rtol=1e-6, origin_atol_mm=1e-4, direction_atol=1e-6)
            assert set(np.unique(predicted)) <= {0, 1}
    assert all((out / "predictions" / "3d_automatic" / f"{case}_qc.png").is_file() for case in test_cases)
    fold = next((out / "sabnet_data" / "results" / DEMO_DATASET).glob("*/fold_0"))
    assert (fold / "progress.png").is_file() and (fold / "checkpoint_final" / "model.pth").is_file()
    log = (fold / "training_log.txt").read_text(encoding="utf-8")
    assert "phase 2d" in log and "phase depth" in log and "phase fusion" in log
