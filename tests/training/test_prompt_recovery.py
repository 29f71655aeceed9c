"""A click inside a structure the automatic mode misses brings it back.

Each image holds one ring, always 'bone', and three identical plain disks of which only some are
bone (chosen at random), so no model can tell from the image alone which disks are: the automatic
mode finds the ring and leaves the disks out (each is bone less often than not). A positive click
is what tells. A tiny model is trained for a few hundred steps as `SlicePhase` trains it (every
sample trains the automatic pass, the prompted ones also the prompted pass against the clicked
label's mask, their prompts turned into corrections of the automatic prediction: all of them here,
half in `SlicePhase`, to learn quickly), and then, its object merged into the automatic labels as
prediction merges it, must segment a clicked disk it missed, and only that one.
"""
import numpy as np
import pytest
import torch

from sabnet.model.case_predictor import merge_object
from sabnet.model.config import ModelConfig
from sabnet.model.prompts import Prompts, PromptSampler
from sabnet.model.sab_model import SABModel
from sabnet.training.correction_prompts import correction_prompts, correction_samples, predicted_labels
from sabnet.training.losses import object_loss, segmentation_loss

S, RADIUS = 64, 7
CENTRES = np.array([(16, 16), (16, 48), (48, 16), (48, 48)])


def _batch(rng: np.random.Generator, n: int, bone_probability: float = 0.25):
    """Images (n, 1, S, S), labels (n, S, S), and per image its three plain disks as (mask, is_bone)."""
    rows, cols = np.mgrid[:S, :S]
    images = rng.normal(0, 0.1, (n, 1, S, S)).astype(np.float32)
    target = np.zeros((n, S, S), np.int64)
    disks = []
    for b in range(n):
        sample = []
        for i, centre in enumerate(CENTRES[rng.permutation(len(CENTRES))]):
            jitter = rng.integers(-3, 4, 2)
            radius = np.hypot(rows - centre[0] - jitter[0], cols - centre[1] - jitter[1])
            disk = radius <= RADIUS
            images[b, 0][disk] += 1.0
            if i == 0:  # the ring: always bone
                images[b, 0][radius <= RADIUS - 3] -= 1.0
                target[b][disk] = 1
                continue
            is_bone = rng.random() < bone_probability
            target[b][disk & is_bone] = 1
            sample.append((disk, is_bone))
        disks.append(sample)
    return torch.from_numpy(images), target, disks


@pytest.fixture
def two_threads():
    """The same arithmetic whatever thread count earlier tests left behind."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_click_inside_a_missed_bone_recovers_it(two_threads):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = SABModel(ModelConfig.for_variant("sab_tiny", S, n_outputs=1, output_mode="sigmoid", encoder_depth=2,
                                             encoder_global_attn_indexes=[1]))
    sampler = PromptSampler(prompt_probability=0.5, max_positive_points=2, max_negative_points=1, box_probability=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(400):
        images, target, _ = _batch(rng, 16)
        prompts = sampler.sample(target, rng)
        samples = correction_samples(prompts, rng, share=1.0)
        prompted = torch.nonzero(~prompts.automatic).flatten()

        def prompts_for(automatic):
            corrected = correction_prompts(prompts, samples, target, predicted_labels(automatic[samples], "sigmoid"),
                                           model.config.mask_size, sampler, rng)
            return prompted, corrected[prompted]

        logits, objects, index = model(images, prompts_for=prompts_for)
        loss = segmentation_loss(logits, torch.from_numpy(target), "sigmoid")
        if objects is not None:
            loss = loss + object_loss(objects, torch.from_numpy(target[index.numpy()] == 1)[:, None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    images, target, disks = _batch(np.random.default_rng(99), 24)
    recovered, kept_out = [], []
    with torch.no_grad():
        embeddings = model.encode(images)
        automatic = model.upsample_logits(model.decode(embeddings))[:, 0] > 0
        for b, sample in enumerate(disks):
            bones = [disk for disk, is_bone in sample if is_bone]
            if not bones:
                continue
            clicked = bones[0]
            missed = (automatic[b].numpy() & clicked).sum() < 0.5 * clicked.sum()
            row, col = np.argwhere(clicked).mean(axis=0)
            click = Prompts(label=torch.tensor([1]), points=torch.tensor([[[col, row]]], dtype=torch.float32),
                            point_labels=torch.tensor([[1]]))
            found = torch.sigmoid(model.upsample_logits(model.decode_object(embeddings[b:b + 1], click))[0, 0])
            bone = torch.sigmoid(model.upsample_logits(model.decode(embeddings[b:b + 1]))[0])
            mask = merge_object(bone, found, 1, "sigmoid")[0].numpy() > 0.5
            if missed:
                recovered.append(2 * (mask & clicked).sum() / (mask.sum() + clicked.sum()))
            others = [disk for disk, _ in sample if disk is not clicked and not (automatic[b].numpy() & disk).any()]
            kept_out += [(mask & disk).sum() / disk.sum() for disk in others]
    assert len(recovered) >= 5, "the automatic mode should miss most disk bones here"
    assert np.median(recovered) > 0.5  # each of these disks was less than half found before the click
    assert np.mean(kept_out) < 0.3  # the click brings back its own disk, not every disk
