"""The interactive API: open once, then points and boxes update one slice without re-encoding."""
import numpy as np
import pytest

from model_folder_fixture import make_model_folder, use_roots
from sabnet.inference.interactive import InteractiveSession
from sabnet.io.image_io import read_image


@pytest.fixture(scope="module")
def session_and_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("interactive")
    raw, folder = make_model_folder(root, n_folds=1, dataset_name="Dataset961_Inter")
    image_file = sorted((raw / "imagesTr").iterdir())[0]
    labels, _ = read_image(raw / "labelsTr" / image_file.name.replace("_0000", ""))
    return folder, image_file, labels


def test_points_update_their_slice_without_encoding_again(session_and_case):
    folder, image_file, truth = session_and_case
    session = InteractiveSession.from_model_folder(folder, device="cpu")
    automatic = session.open(image_file).copy()
    n_encoded = session.predictor.encoder_calls
    assert n_encoded > 0 and automatic.shape == truth.shape

    k, j, i = np.argwhere(truth == 1)[len(np.argwhere(truth == 1)) // 2]
    results = session.add_point((i, j, k), "femur")
    assert session.predictor.encoder_calls == n_encoded  # the decoder only
    (result,) = results
    where = [slice(None)] * 3
    where[result.axis] = result.index
    assert result.index == (k, j, i)[result.axis]
    np.testing.assert_array_equal(session.labels[tuple(where)], result.plane)
    assert (session.labels != automatic).any()
    others = np.ones(truth.shape[result.axis], bool)
    others[result.index] = False
    assert np.array_equal(np.compress(others, session.labels, axis=result.axis),
                          np.compress(others, automatic, axis=result.axis))

    # a negative point and a box on the same slice, then propagation to neighbours
    session.add_point((i, j, k), "femur", positive=False)
    corner = np.array([k, j, i])
    offset = np.array([0 if a == result.axis else 4 for a in range(3)])
    boxed = session.add_box(tuple((corner - offset)[::-1]), tuple((corner + offset)[::-1]), "femur")
    assert boxed[0].index == result.index
    propagated = session.add_point((i, j, k), "femur", propagate=2)
    assert session.predictor.encoder_calls == n_encoded
    assert {r.index for r in propagated} >= {result.index}
    cleared = session.clear((i, j, k))
    assert cleared.index == result.index


def test_world_coordinates_land_on_the_same_voxel(session_and_case):
    folder, image_file, truth = session_and_case
    from sabnet.io.image_io import read_geometry

    geometry = read_geometry(image_file)
    a = InteractiveSession.from_model_folder(folder)
    b = InteractiveSession.from_model_folder(folder)
    a.open(image_file)
    b.open(image_file)
    k, j, i = np.argwhere(truth == 1)[0]
    lps = geometry.index_to_world([[k, j, i]])[0]
    ras = lps * [-1, -1, 1]
    ra = a.add_point((i, j, k), "femur")[0]
    rb = b.add_point(tuple(ras), "femur", coordinates="ras")[0]
    assert (ra.axis, ra.index) == (rb.axis, rb.index)
    np.testing.assert_array_equal(ra.plane, rb.plane)


def test_voxel_centres_in_world_coordinates_come_back_exactly():
    from sabnet.inference.prompt_coordinates import to_array_index
    from sabnet.io.geometry import Geometry

    angle = np.deg2rad(17.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    geometry = Geometry.from_axes((23, 83, 97), (3.7, 0.43, 0.43), rotation, (-101.3, 37.9, 12.1))
    rng = np.random.default_rng(0)
    index = np.column_stack([rng.integers(0, n, 50) for n in geometry.shape])
    lps = geometry.index_to_world(index)
    np.testing.assert_array_equal(to_array_index(lps, "lps", geometry), index)
    np.testing.assert_array_equal(to_array_index(lps * [-1, -1, 1], "ras", geometry), index)
    half = to_array_index(geometry.index_to_world(index + 0.5), "lps", geometry)
    np.testing.assert_allclose(half, index + 0.5, atol=1e-9)  # between centres stays continuous
