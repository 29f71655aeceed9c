"""Shared test set-up: every test writes under its own temporary sabnet roots."""
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def sabnet_roots(tmp_path, monkeypatch):
    """Point SABNET_RAW/PREPROCESSED/RESULTS at a temporary folder for each test."""
    home = tmp_path / "sabnet_home"
    monkeypatch.setenv("SABNET_HOME", str(home))
    for key, sub in (("SABNET_RAW", "raw"), ("SABNET_PREPROCESSED", "preprocessed"), ("SABNET_RESULTS", "results")):
        monkeypatch.setenv(key, str(home / sub))
    return home


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test when the real data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not present: {path}")
    return path
