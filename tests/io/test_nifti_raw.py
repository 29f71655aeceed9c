"""NIfTI facts that ITK's reader hides: non-finite voxels and truncated files, read from the file."""
import numpy as np
import pytest

from sabnet.io.geometry import Geometry
from sabnet.io.image_io import write_image
from sabnet.io.nifti_raw import nonfinite_counts, read_nifti_header, truncation

GEOMETRY = Geometry(size=(5, 6, 4), spacing_mm=(1.0, 1.0, 4.0), origin_mm=(0, 0, 0), direction=np.eye(3).ravel())


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nan_and_inf_are_counted_from_the_file(tmp_path, ext):
    image = np.ones(GEOMETRY.shape, np.float32)
    image[0, 0, :3] = np.nan
    image[3, 5, 4] = -np.inf
    write_image(image, GEOMETRY, tmp_path / f"scan{ext}")
    assert nonfinite_counts(tmp_path / f"scan{ext}") == (3, 1)
    header = read_nifti_header(tmp_path / f"scan{ext}")
    assert header.shape == (5, 6, 4) and header.datatype == 16 and header.bitpix == 32


def test_integer_and_clean_files_have_no_nonfinite_voxels(tmp_path):
    write_image(np.full(GEOMETRY.shape, -3, np.int16), GEOMETRY, tmp_path / "int.nii.gz")
    write_image(np.zeros(GEOMETRY.shape, np.float32), GEOMETRY, tmp_path / "clean.nii")
    assert nonfinite_counts(tmp_path / "int.nii.gz") == (0, 0)
    assert nonfinite_counts(tmp_path / "clean.nii") == (0, 0)
    assert truncation(tmp_path / "clean.nii") is None


def test_truncated_file_is_named_with_its_sizes(tmp_path):
    write_image(np.zeros(GEOMETRY.shape, np.float32), GEOMETRY, tmp_path / "scan.nii", compress=False)
    data = (tmp_path / "scan.nii").read_bytes()
    (tmp_path / "scan.nii").write_bytes(data[:-100])
    assert truncation(tmp_path / "scan.nii") == f"truncated: {len(data) - 100} bytes, the header promises {len(data)}"
    (tmp_path / "other.nii").write_bytes(b"plain text, no header")
    assert read_nifti_header(tmp_path / "other.nii") is None and truncation(tmp_path / "other.nii") is None
