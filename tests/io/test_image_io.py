"""Reading and writing images keeps voxels and geometry exactly, in every format sabnet reads."""
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from sabnet.errors import SabnetError
from sabnet.io.geometry import Geometry, acquisition_plane
from sabnet.io.image_io import read_geometry, read_image, write_image

FORMATS = [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"]
# NIfTI stores spacing, origin and direction as float32: "exact" means to float32 precision.
FLOAT32_TOL = dict(rtol=1e-6, atol=1e-6)


def oblique_geometry() -> Geometry:
    """Slices 4 mm apart on a proper rotation that is not axis aligned (about 35 degrees off)."""
    rotation = Rotation.from_euler("xyz", [20, -15, 30], degrees=True).as_matrix()
    assert np.isclose(np.linalg.det(rotation), 1.0)
    return Geometry(size=(10, 8, 6), spacing_mm=(0.7, 0.9, 4.0), origin_mm=(-12.345678, 30.25, 7.1),
                    direction=rotation.ravel())


def assert_same_geometry(read: Geometry, expected: Geometry, **tol) -> None:
    tol = tol or dict(rtol=0, atol=1e-12)
    assert read.size == expected.size
    np.testing.assert_allclose(read.spacing_mm, expected.spacing_mm, **tol)
    np.testing.assert_allclose(read.origin_mm, expected.origin_mm, **tol)
    np.testing.assert_allclose(read.direction, expected.direction, **tol)


@pytest.mark.parametrize("ext", FORMATS)
def test_round_trip_keeps_voxels_and_oblique_geometry(tmp_path, ext):
    geometry = oblique_geometry()
    assert acquisition_plane(geometry) == (0, "oblique")
    rng = np.random.default_rng(1)
    intensities = rng.normal(100, 30, size=geometry.shape).astype(np.float32)
    labels = rng.integers(0, 3, size=geometry.shape).astype(np.uint8)

    write_image(intensities, geometry, tmp_path / f"image{ext}")
    array, read = read_image(tmp_path / f"image{ext}")
    assert array.dtype == np.float32 and array.shape == (6, 8, 10)
    np.testing.assert_array_equal(array, intensities)
    tol = FLOAT32_TOL if ext.startswith(".nii") else {}
    assert_same_geometry(read, geometry, **tol)
    assert read_geometry(tmp_path / f"image{ext}") == read  # header-only read agrees

    # A label map written on the geometry read from the input lies on top of that input.
    write_image(labels, read, tmp_path / f"labels{ext}")
    label_array, label_geometry = read_image(tmp_path / f"labels{ext}")
    assert label_array.dtype == np.uint8
    np.testing.assert_array_equal(label_array, labels)
    assert label_geometry.matches(read, spacing_rtol=1e-7, origin_atol_mm=1e-6, direction_atol=1e-7)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # atomic writes left nothing


def test_metaimage_header_and_data_files(tmp_path):
    geometry = oblique_geometry()
    write_image(np.zeros(geometry.shape, np.int16), geometry, tmp_path / "scan.mhd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.mhd", "scan.zraw"]
    assert "ElementDataFile = scan.zraw" in (tmp_path / "scan.mhd").read_text()


def test_four_d_file_with_one_volume_reads_as_3d(tmp_path):
    volume = sitk.JoinSeries([sitk.GetImageFromArray(np.full((3, 4, 5), 7, np.int16))])  # 4D, last size 1
    sitk.WriteImage(volume, str(tmp_path / "one.nii.gz"))
    array, geometry = read_image(tmp_path / "one.nii.gz")
    assert array.shape == (3, 4, 5) and geometry.size == (5, 4, 3)


def test_2d_and_4d_images_are_refused_with_the_file_named(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.uint8)), str(tmp_path / "flat.nii.gz"))
    series = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((3, 4, 5), np.uint8))] * 2)
    sitk.WriteImage(series, str(tmp_path / "dynamic.nii.gz"))
    with pytest.raises(SabnetError, match=r"flat\.nii\.gz: image is 2D"):
        read_image(tmp_path / "flat.nii.gz")
    with pytest.raises(SabnetError, match=r"dynamic\.nii\.gz: image is 4D"):
        read_image(tmp_path / "dynamic.nii.gz")


def test_bad_files_raise_sabnet_error_naming_the_file(tmp_path):
    with pytest.raises(SabnetError, match=r"missing\.nii\.gz: file not found"):
        read_image(tmp_path / "missing.nii.gz")
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    with pytest.raises(SabnetError, match=r"scan\.png: unknown image format"):
        read_image(tmp_path / "scan.png")
    geometry = oblique_geometry()
    write_image(np.ones(geometry.shape, np.float32), geometry, tmp_path / "cut.nii", compress=False)
    data = (tmp_path / "cut.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(data[: len(data) // 2])  # an interrupted copy
    with pytest.raises(SabnetError, match=r"cut\.nii: cannot be read"):
        read_image(tmp_path / "cut.nii")
    with pytest.raises(SabnetError, match=r"out\.jpg: unknown output format"):
        write_image(np.zeros(geometry.shape), geometry, tmp_path / "out.jpg")
