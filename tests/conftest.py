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


def write_dicom_series(folder: Path, array, geometry, tags: dict[str, str]) -> Path:
    """Write a 3D array (array order k, j, i) on `geometry` as an MR DICOM series, one file per
    slice k, the way SimpleITK's DICOM series writing example does: each slice a 2D image whose
    ImagePositionPatient/ImageOrientationPatient tags place it (oblique allowed).

    `tags` maps DICOM keys ("0008|103e") to values; it must hold "0020|000e" (SeriesInstanceUID).
    Positions and directions are written with 10 significant digits (DICOM DS holds 16 characters).
    """
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    d = geometry.direction
    orientation = "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(array.shape[0]):
        image = sitk.GetImageFromArray(array[k])
        image.SetSpacing(geometry.spacing_mm[:2])
        position = geometry.index_to_world([[k, 0, 0]])[0]
        slice_tags = {"0008|0060": "MR", "0020|0037": orientation, "0020|0013": str(k + 1),
                      "0020|0032": "\\".join(f"{v:.10g}" for v in position),
                      "0018|0050": f"{geometry.spacing_mm[2]:.10g}",
                      "0008|0018": f"{tags['0020|000e']}.{k + 1}", **tags}
        for key, value in slice_tags.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{tags['0020|000e']}_{k:04d}.dcm"))
        writer.Execute(image)
    return folder
