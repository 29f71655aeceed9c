"""sab_predict on a spine cropped along its length: each vertebra keeps its label.

The network is replaced by a stand-in that finds the bodies and names them the way the real spine
showed (docs/benchmarks.md): by their place in the image, partly or wholly. What is tested is what
sabnet does with such names: the series named in order (postprocessing.json's `series`, which
sab_find_best_configuration chooses on cross-validation) and a click that names one body."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from model_folder_fixture import make_model_folder, use_roots
from sabnet.cli.predict import main as predict_main
from sabnet.inference.postprocessing import Postprocessing, save_postprocessing
from sabnet.io.image_io import read_image
from sabnet.planning.plans import load_plan

PHANTOMS = dict(dataset_name="Dataset965_Cropped", locations=("lumbar_spine",), sequences=("T2",), n_cases=1,
                n_slices=12, in_plane_size=96, planes=("sagittal",), slice_spacing_mm=(3.0, 3.5),
                in_plane_spacing_mm=(2.2, 2.6))


@pytest.fixture(scope="module")
def cropped_spine(tmp_path_factory):
    """(raw, model folder, home, input folder, cropped reference (array), L1..L5 values, axis, cranial sign):
    the phantom's cranial third cut away (L1 and part of L2 gone), geometry kept (the origin moves)."""
    root = tmp_path_factory.mktemp("cropped")
    raw, folder = make_model_folder(root, n_folds=1, **PHANTOMS)
    plan = load_plan(folder)
    values = [plan.labels[f"L{i}"] for i in range(1, 6)]
    image = sitk.ReadImage(str(sorted((raw / "imagesTr").iterdir())[0]))
    labels = sitk.ReadImage(str(sorted((raw / "labelsTr").iterdir())[0]))
    array = sitk.GetArrayFromImage(labels)
    centres = np.array([np.argwhere(array == v).mean(axis=0) for v in values])
    axis = int(np.argmax(centres.std(axis=0)))  # array axis along the spine
    cranial_low = centres[0, axis] < centres[-1, axis]  # L1 at the low indices
    itk_axis, n = 2 - axis, array.shape[axis]
    start, stop = (n // 3, n) if cranial_low else (0, n - n // 3)
    index = [slice(None)] * 3
    index[itk_axis] = slice(start, stop)
    inputs = root / "inputs"
    inputs.mkdir()
    sitk.WriteImage(image[tuple(index)], str(inputs / "cropped_0000.nii.gz"))
    reference = sitk.GetArrayFromImage(labels[tuple(index)])
    assert values[0] not in reference and all(v in reference for v in values[2:])  # L1 gone, L3..L5 whole
    save_postprocessing(Postprocessing(series=values), folder)
    return raw, folder, root / "home", inputs, reference, values, axis, cranial_low


def named_by_place(reference, values, axis, cranial_low, share):
    """A stand-in network's labels: the bodies it sees, named L1, L2, ... from the image's cranial
    end (share=1: every voxel so; share < 1: only that cranial share of each body, the rest right)."""
    position = np.moveaxis(np.indices(reference.shape), 0, -1)[..., axis] * (1 if cranial_low else -1)
    present = [v for v in values if v in reference]
    out = reference.copy()
    for rank, value in enumerate(present):
        body = reference == value
        top, bottom = position[body].min(), position[body].max()
        out[body & (position <= top + share * (bottom - top))] = values[rank]
    return out


@pytest.mark.parametrize("share, click", [(0.4, False), (1.0, True)])
def test_each_vertebra_of_a_cropped_spine_keeps_its_label(cropped_spine, tmp_path, monkeypatch, share, click):
    raw, folder, home, inputs, reference, values, axis, cranial_low = cropped_spine
    use_roots(monkeypatch, home)
    network_labels = named_by_place(reference, values, axis, cranial_low, share)
    assert (network_labels != reference).sum() > 0.1 * (reference > 0).sum()  # the names slid
    monkeypatch.setattr("sabnet.inference.predict_cohort.probabilities_to_original",
                        lambda probabilities, properties, keep=False: (network_labels.copy(), None))
    argv = ["-i", str(inputs), "-o", str(tmp_path / "out"), "-d", str(raw), "-f", "0", "--device", "cpu"]
    if click:  # one click names the lowest body in view L5: the others are counted from it, whether or
        # not sab_find_best_configuration chose to name the series in order
        k, j, i = np.argwhere(reference == values[-1]).mean(axis=0).round().astype(int)
        prompts = {"cropped": {"coordinates": "ijk", "prompts": [{"label": "L5", "points": [[int(i), int(j), int(k)]]}]}}
        (tmp_path / "prompts.json").write_text(json.dumps(prompts))
        argv += ["--no-postprocessing", "--prompts", str(tmp_path / "prompts.json")]
    assert predict_main(argv) == 0
    written, _ = read_image(tmp_path / "out" / "cropped.nii.gz")
    assert np.array_equal(written, reference)
    if click:  # without the click nothing in the image says which body is L5: the names stay slid
        monkeypatch.setattr("sabnet.inference.predict_cohort.probabilities_to_original",
                            lambda probabilities, properties, keep=False: (network_labels.copy(), None))
        argv = argv[:-2] + ["--overwrite"]
        assert predict_main(argv) == 0
        assert np.array_equal(read_image(tmp_path / "out" / "cropped.nii.gz")[0], network_labels)
