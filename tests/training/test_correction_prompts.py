"""Correction prompts: clicks move into the model's own errors."""
import numpy as np
import torch

from sabnet.model.prompts import Prompts, PromptSampler
from sabnet.training.correction_prompts import correction_prompts, correction_samples, predicted_labels

S = 64


def _disk(centre, radius):
    rows, cols = np.mgrid[:S, :S]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def _batch():
    found_bone, missed_bone, false_bone = _disk((16, 16), 7), _disk((45, 45), 8), _disk((15, 48), 5)
    target = np.zeros((2, S, S), np.int64)
    target[:, found_bone | missed_bone] = 1
    predicted = np.zeros_like(target)
    predicted[:, found_bone | false_bone] = 1  # one bone found, one missed, one false positive
    prompts = Prompts(label=torch.tensor([1, 0]), points=torch.tensor([[[16.0, 16.0], [0, 0]], [[0, 0], [0, 0]]]),
                      point_labels=torch.tensor([[1, -1], [-1, -1]]))  # sample 0 prompted, sample 1 automatic
    return prompts, target, predicted, missed_bone, false_bone


def test_positive_clicks_land_in_the_missed_bone_and_negative_ones_in_false_positives():
    prompts, target, predicted, missed, false = _batch()
    sampler = PromptSampler(max_positive_points=1, max_negative_points=1)
    seen_mask = False
    for seed in range(12):
        rng = np.random.default_rng(seed)
        samples = correction_samples(prompts, rng, share=1.0)
        assert samples == [0], "the prompted sample, never the automatic one"
        out = correction_prompts(prompts, samples, target, predicted[samples], 16, sampler, rng)
        kinds = out.point_labels[0].tolist()
        assert kinds[0] == 1
        x, y = out.points[0, 0].round().long().tolist()
        assert missed[y, x], "the positive click is in the bone the model missed"
        if kinds[1] == 0:
            x, y = out.points[0, 1].round().long().tolist()
            assert false[y, x], "the negative click is in the model's false positive"
        assert out.point_labels[1].tolist() == [-1, -1] and not out.mask_valid[1]  # automatic stays automatic
        if out.mask_valid[0]:
            seen_mask = True
            assert out.mask.shape == (2, 1, 16, 16)
            assert out.mask[0, 0, 4, 4] > 0 > out.mask[0, 0, 11, 11]  # found bone +, missed bone - (as predicted)
    assert seen_mask


def test_share_zero_keeps_the_prompts_and_a_perfect_prediction_keeps_the_positive_clicks():
    prompts, target, predicted, _, _ = _batch()
    sampler = PromptSampler(max_positive_points=1, max_negative_points=1)
    rng = np.random.default_rng(0)
    assert correction_samples(prompts, rng, share=0.0) == []
    assert 70 < sum(correction_samples(prompts, rng, share=0.5) == [0] for _ in range(200)) < 130
    kept = correction_prompts(prompts, [], target, predicted[[]], 16, sampler, rng)
    assert torch.equal(kept.points, prompts.points) and torch.equal(kept.point_labels, prompts.point_labels)
    perfect = correction_prompts(prompts, [0], target, target[[0]].copy(), 16, sampler, rng)
    assert perfect.point_labels[0, 0] == 1 and perfect.points[0, 0].tolist() == [16.0, 16.0]


def test_predicted_labels_for_softmax_and_sigmoid_outputs():
    softmax = torch.tensor([[[[2.0]], [[1.0]], [[3.0]]]])  # background, label 1, label 2
    assert predicted_labels(softmax, "softmax").tolist() == [[[2]]]
    sigmoid = torch.tensor([[[[-1.0, 2.0]], [[0.5, 1.0]]]])  # channel c is label c + 1
    assert predicted_labels(sigmoid, "sigmoid").tolist() == [[[2, 1]]]
