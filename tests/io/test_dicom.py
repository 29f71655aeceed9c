"""A DICOM series folder reads as one 3D image with its geometry; its tags name sequence and location."""
import numpy as np
import pytest
from conftest import write_dicom_series
from scipy.spatial.transform import Rotation

from sabnet.errors import SabnetError
from sabnet.io.dicom import location_from_tags, read_dicom_series, sequence_from_tags
from sabnet.io.geometry import Geometry
from sabnet.io.image_io import is_dicom_folder, read_geometry, read_image, write_image

UID = "1.2.826.0.1.3680043.2.1125.77"
# DICOM stores positions and directions as decimal strings; the helper writes 10 digits.
DS_TOL = dict(rtol=0, atol=1e-6)


def oblique_series_geometry() -> Geometry:
    rotation = Rotation.from_euler("zyx", [25, 10, -20], degrees=True).as_matrix()
    return Geometry(size=(12, 10, 5), spacing_mm=(0.5, 0.6, 4.0), origin_mm=(-40.5, 12.25, 88.0),
                    direction=rotation.ravel())


def mr_tags(uid: str = UID, **extra: str) -> dict[str, str]:
    tags = {"0020|000e": uid, "0020|000d": uid + ".1", "0010|0020": "P007", "0020|0011": "4",
            "0008|103e": "sag knee", "0018|0080": "550", "0018|0081": "11", "0018|0015": "KNEE"}
    tags.update(extra)
    return tags


def test_oblique_series_reads_with_its_geometry_and_a_label_map_fits_on_it(tmp_path):
    geometry = oblique_series_geometry()
    voxels = np.random.default_rng(2).integers(0, 2000, size=geometry.shape).astype(np.int16)
    folder = write_dicom_series(tmp_path / "series", voxels, geometry, mr_tags())
    assert is_dicom_folder(folder)

    array, read = read_image(folder)
    np.testing.assert_array_equal(array, voxels)
    assert read.size == geometry.size
    np.testing.assert_allclose(read.spacing_mm, geometry.spacing_mm, **DS_TOL)
    np.testing.assert_allclose(read.origin_mm, geometry.origin_mm, **DS_TOL)
    np.testing.assert_allclose(read.direction, geometry.direction, **DS_TOL)
    assert read_geometry(folder) == read

    labels = (array > 1000).astype(np.uint8)
    write_image(labels, read, tmp_path / "labels.nii.gz")
    label_array, label_geometry = read_image(tmp_path / "labels.nii.gz")
    np.testing.assert_array_equal(label_array, labels)
    assert label_geometry.size == read.size
    for got, want in ((label_geometry.spacing_mm, read.spacing_mm), (label_geometry.origin_mm, read.origin_mm),
                      (label_geometry.direction, read.direction)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # NIfTI holds float32


def test_series_tags_give_sequence_and_location(tmp_path):
    geometry = oblique_series_geometry()
    folder = write_dicom_series(tmp_path / "s", np.zeros(geometry.shape, np.int16), geometry,
                                mr_tags(**{"0008|103e": "sag 3mm", "0018|0080": "4200", "0018|0081": "95"}))
    _, tags = read_dicom_series(folder)
    assert tags["series_uid"] == UID and tags["patient_id"] == "P007" and tags["series_number"] == "4"
    assert sequence_from_tags(tags) == "T2"  # the description says nothing: TR 4200, TE 95
    assert location_from_tags(tags) == "knee"


def test_folder_with_two_series_needs_a_uid(tmp_path):
    geometry = oblique_series_geometry()
    write_dicom_series(tmp_path / "study", np.zeros(geometry.shape, np.int16), geometry, mr_tags("1.2.3.1"))
    write_dicom_series(tmp_path / "study", np.ones(geometry.shape, np.int16), geometry, mr_tags("1.2.3.2"))
    with pytest.raises(SabnetError, match=r"study: holds 2 DICOM series \(1\.2\.3\.1, 1\.2\.3\.2\)"):
        read_image(tmp_path / "study")
    image, tags = read_dicom_series(tmp_path / "study", "1.2.3.2")
    assert tags["series_uid"] == "1.2.3.2" and image.GetSize() == geometry.size


def test_single_slice_and_empty_folders_are_refused(tmp_path):
    geometry = oblique_series_geometry()
    write_dicom_series(tmp_path / "one", np.zeros((1,) + geometry.shape[1:], np.int16), geometry, mr_tags())
    with pytest.raises(SabnetError, match="has a single slice"):
        read_image(tmp_path / "one")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SabnetError, match=r"empty: no DICOM series found"):
        read_image(tmp_path / "empty")


@pytest.mark.parametrize("description, expected", [
    ("t2_tirm_cor", "STIR"), ("pd_tse_fs_sag", "PD"), ("T2 TSE sag", "T2"), ("t1_se_tra", "T1"),
    ("Sag DESS 3D", "GRE"), ("sag 3mm", "unknown"),
])
def test_sequence_from_the_description(description, expected):
    assert sequence_from_tags({"series_description": description}) == expected


@pytest.mark.parametrize("tr, te, ti, expected", [
    ("3500", "40", "150", "STIR"), ("25", "6", None, "GRE"), ("550", "12", None, "T1"),
    ("4000", "90", None, "T2"), ("3000\\3000", "30", None, "PD"), ("1200", "50", None, "unknown"),
])
def test_sequence_from_timing_when_the_description_says_nothing(tr, te, ti, expected):
    tags = {"series_description": "sag 3mm", "repetition_time_ms": tr, "echo_time_ms": te}
    if ti is not None:
        tags["inversion_time_ms"] = ti
    assert sequence_from_tags(tags) == expected


@pytest.mark.parametrize("tags, expected", [
    ({"body_part_examined": "KNEE"}, "knee"), ({"body_part_examined": "LSPINE"}, "lumbar_spine"),
    ({"series_description": "sag t1 lumbar"}, "lumbar_spine"), ({"protocol_name": "Wrist cor"}, "hand"),
    ({"body_part_examined": "ABDOMEN"}, "abdomen"), ({}, "unknown"),
])
def test_location_from_body_part_then_descriptions(tags, expected):
    assert location_from_tags(tags) == expected
