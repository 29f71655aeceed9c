"""PromptSampler: where points and boxes fall, and the automatic / prompted mix."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from sabnet.model.config import ModelConfig
from sabnet.model.prompts import PromptSampler
from sabnet.model.sab_model import SABModel


def two_discs(size=96):
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int64)
    labels[(yy - 30) ** 2 + (xx - 30) ** 2 <= 15 ** 2] = 1
    labels[(yy - 65) ** 2 + (xx - 60) ** 2 <= 10 ** 2] = 2
    return labels


def test_positive_points_lie_deep_inside_and_negatives_outside_the_prompted_structure():
    labels = np.stack([two_discs()] * 64)
    sampler = PromptSampler(prompt_probability=1.0, max_positive_points=3, max_negative_points=2, box_probability=0.0)
    prompts = sampler.sample(labels, np.random.default_rng(0))
    depth = {k: ndimage.distance_transform_edt(labels[0] == k) for k in (1, 2)}
    n_pos = n_neg = 0
    for b in range(64):
        label = int(prompts.label[b])
        assert label in (1, 2)
        for (x, y), kind in zip(prompts.points[b].numpy().astype(int), prompts.point_labels[b].tolist()):
            if kind == 1:
                n_pos += 1
                assert labels[b, y, x] == label
                assert depth[label][y, x] >= 0.5 * depth[label].max()  # deep: away from the border
            elif kind == 0:
                n_neg += 1
                assert labels[b, y, x] != label
                assert ndimage.distance_transform_edt(labels[b] != label)[y, x] <= sampler.negative_margin_px
    assert n_pos >= 64 and n_neg > 20
    assert set(prompts.label.tolist()) == {1, 2}  # the label is chosen among those present


def test_negative_points_come_from_false_positives_of_a_previous_prediction():
    labels = two_discs()[None]
    previous = np.zeros_like(labels, bool)
    previous[0, 80:90, 5:15] = True  # a false positive far from label 1
    sampler = PromptSampler(prompt_probability=1.0, max_negative_points=2, box_probability=0.0)
    rng = np.random.default_rng(3)
    found = 0
    for _ in range(20):
        prompts = sampler.sample(labels, rng, labels=[1], previous_prediction=previous)
        for (x, y), kind in zip(prompts.points[0].numpy().astype(int), prompts.point_labels[0].tolist()):
            if kind == 0:
                assert previous[0, y, x]
                found += 1
    assert found > 5


def test_boxes_contain_the_structure_up_to_the_jitter():
    labels = np.stack([two_discs()] * 40)
    sampler = PromptSampler(prompt_probability=1.0, box_probability=1.0, box_jitter_fraction=0.1)
    prompts = sampler.sample(labels, np.random.default_rng(1), labels=[2] * 40)
    assert prompts.box_valid.all()
    # disc 2: columns 50..70, rows 55..75 (21 pixels): each edge within 0.1 * 21 pixels
    exact = np.array([50, 55, 70, 75])
    offsets = prompts.boxes.numpy() - exact
    assert np.abs(offsets).max() <= 2.1 + 1e-6
    assert np.abs(offsets).max() > 0.5  # and the jitter is real
    assert (prompts.point_labels >= 0).sum(1).min() >= 0  # a box alone is a valid prompt


@pytest.mark.parametrize("probability", [0.0, 0.3, 1.0])
def test_the_automatic_prompted_mix_follows_the_probability(probability):
    labels = np.stack([two_discs()] * 400)
    prompts = PromptSampler(prompt_probability=probability).sample(labels, np.random.default_rng(2))
    share = 1 - prompts.automatic.float().mean().item()
    assert share == pytest.approx(probability, abs=0.06)
    assert (prompts.label[prompts.automatic] == 0).all()


def test_empty_slices_and_absent_labels_give_automatic_samples():
    labels = np.zeros((3, 32, 32), np.int64)
    labels[2, 5:10, 5:10] = 1
    prompts = PromptSampler(prompt_probability=1.0).sample(labels, np.random.default_rng(0), labels=[1, 2, 2])
    assert prompts.automatic.tolist() == [True, True, True]
    assert prompts.points.shape == (3, 5, 2)


def test_sampled_prompts_drive_the_model_in_a_mixed_batch():
    torch.manual_seed(0)
    model = SABModel(ModelConfig.for_variant("sab_tiny", 96, n_outputs=3, n_labels=2)).eval()
    prompts = PromptSampler(prompt_probability=0.5).sample(np.stack([two_discs()] * 6), np.random.default_rng(4))
    assert 0 < int(prompts.automatic.sum()) < 6
    prompted = torch.nonzero(~prompts.automatic).flatten()
    with torch.no_grad():
        logits, objects, index = model(torch.randn(6, 1, 96, 96), prompts_for=lambda _: (prompted, prompts[prompted]))
    assert logits.shape == (6, 3, 96, 96) and torch.isfinite(logits).all()
    assert objects.shape == (len(prompted), 1, 96, 96) and torch.isfinite(objects).all()


def test_the_same_generator_seed_gives_the_same_prompts():
    labels = np.stack([two_discs()] * 8)
    a = PromptSampler().sample(labels, np.random.default_rng(7))
    b = PromptSampler().sample(labels, np.random.default_rng(7))
    assert (a.points == b.points).all() and (a.boxes == b.boxes).all() and (a.label == b.label).all()
