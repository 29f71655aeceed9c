"""A positive click names the structure it lands on (sabnet.model.click_labels): on probability
volumes whose automatic labels are known to be wrong."""
import numpy as np
import torch

from sabnet.model.click_labels import apply_clicked_labels, clicked_labels, positive_clicks
from sabnet.model.slice_prompts import SlicePrompt

N_CLASSES = 4  # background + three 'vertebrae'


def spine(n_slices=9, rows=40, cols=20):
    """Three boxes stacked along the rows, each on slices 1..7, separated by two empty rows:
    (labels (n_slices, rows, cols) with the true names 1, 2, 3; probabilities (4, ...) that call
    every box by the wrong name: 1 -> 2, 2 -> 3, 3 -> 1)."""
    truth = np.zeros((n_slices, rows, cols), np.int64)
    for value, (r0, r1) in zip((1, 2, 3), ((2, 12), (14, 24), (26, 36))):
        truth[1:8, r0:r1, 4:16] = value
    wrong = np.where(truth > 0, truth % 3 + 1, 0)
    probabilities = np.full((N_CLASSES, *truth.shape), 0.05, np.float32)
    for value in range(N_CLASSES):
        probabilities[value][wrong == value] = 0.85
    return truth, torch.from_numpy(probabilities)


def click(label, s, r, c, kind=1):
    return SlicePrompt(label, points=np.array([[r, c]], float), point_labels=np.array([kind]))


def test_a_click_on_each_structure_of_a_slice_renames_those_structures_there_only():
    truth, probabilities = spine()
    prompts = {4: [click(1, 4, 7, 10), click(2, 4, 19, 10), click(3, 4, 31, 10)]}
    out = apply_clicked_labels(probabilities, prompts, carried=False)
    labels = out.argmax(0).numpy()
    assert np.array_equal(labels[4], truth[4])
    assert np.array_equal(labels[3], probabilities.argmax(0).numpy()[3])  # other slices untouched
    assert torch.allclose(out.sum(0), probabilities.sum(0))  # probability is moved, not made
    assert torch.allclose(out[0], probabilities[0])  # the background keeps its share


def test_carried_clicks_name_each_structure_in_3d_from_one_slice():
    truth, probabilities = spine()
    prompts = {2: [click(1, 2, 7, 10)], 4: [click(2, 4, 19, 10)], 6: [click(3, 6, 31, 10)]}
    labels = apply_clicked_labels(probabilities, prompts, carried=True).argmax(0).numpy()
    assert np.array_equal(labels, truth)
    per_slice = apply_clicked_labels(probabilities, prompts, carried=False).argmax(0).numpy()
    assert np.array_equal(per_slice[4, 14:24] == 2, truth[4, 14:24] == 2)  # named on its own slice only
    assert (per_slice[2, 14:24, 4:16] == 3).all()  # elsewhere the automatic (wrong) name stays


def test_a_structure_clicked_twice_is_split_between_its_clicks_by_distance():
    foreground = np.zeros((1, 30, 10), bool)
    foreground[0, 2:28, 2:8] = True  # two vertebrae joined by a bridge
    clicks = np.array([[0, 6, 5, 1], [0, 22, 5, 2]])
    named = clicked_labels(foreground, clicks, carried=False)[0]
    assert (named[2:14, 2:8] == 1).all() and (named[15:28, 2:8] == 2).all()
    assert (named[~foreground[0]] == 0).all()


def test_clicks_off_the_foreground_negative_clicks_and_unknown_labels_change_nothing():
    truth, probabilities = spine()
    prompts = {4: [click(1, 4, 13, 10), click(2, 4, 7, 10, kind=0), click(9, 4, 31, 10)]}  # gap, negative, no class 9
    out = apply_clicked_labels(probabilities, prompts, carried=True)
    assert torch.equal(out, probabilities)
    assert positive_clicks({4: [click(1, 4, 13, 10), click(1, 4, 50, 10)]}, truth.shape).tolist() == [[4, 13, 10, 1]]


def test_a_prompted_object_in_union_adds_to_its_label_and_never_removes_it():
    from sabnet.model.case_predictor import merge_object

    probabilities = torch.tensor([[0.1, 0.8, 0.8], [0.8, 0.1, 0.1], [0.1, 0.1, 0.1]])[:, None]  # (3, 1, 3)
    found = torch.tensor([[0.0, 0.9, 0.0]])  # the object covers pixel 1, not pixel 0 where label 1 already is
    union = merge_object(probabilities, found, 1, "softmax", "union").argmax(0)[0].tolist()
    replace = merge_object(probabilities, found, 1, "softmax", "replace").argmax(0)[0].tolist()
    assert union == [1, 1, 0] and replace == [0, 1, 0]


def test_the_predictor_names_clicked_bones_and_walks_no_object_when_it_has_an_automatic_pass(monkeypatch):
    from sabnet.model.case_predictor import EnsemblePredictor
    from sabnet.model.config import ModelConfig
    from sabnet.model.sab_model import build_model

    truth, probabilities = spine()
    model = build_model(ModelConfig.for_variant("sab_tiny", image_size=64, n_outputs=N_CLASSES, n_labels=3)).eval()
    predictor = EnsemblePredictor([model])
    segmented = []

    def true_object(cache, s, prompt, volumes, properties):  # a perfect prompted pass
        segmented.append(s)
        return (truth[s] == prompt.label).astype(np.float32)

    monkeypatch.setattr(predictor, "automatic_probabilities", lambda *args, **kwargs: probabilities.clone())
    monkeypatch.setattr(predictor, "object_probability", true_object)
    image = np.zeros((truth.shape[0], 1, *truth.shape[1:]), np.float32)
    prompts = {2: [click(1, 2, 7, 10)], 4: [click(2, 4, 19, 10)], 6: [click(3, 6, 31, 10)]}
    carried = predictor.predict(image, image[0], {}, "2d", prompts, carry=True)
    assert np.array_equal(carried.argmax(0), truth)
    assert sorted(segmented) == [2, 4, 6]  # the prompted slices only: no walk
    one_slice = predictor.predict(image, image[0], {}, "2d", prompts, carry=False).argmax(0)
    assert (one_slice[4, 14:24, 4:16] == 2).all() and (one_slice[2, 14:24, 4:16] == 3).all()  # its slice only
