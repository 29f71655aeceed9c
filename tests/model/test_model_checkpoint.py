"""Checkpoints: an official-format SAM vit_b file loads (at 1024 and, resampled, at 256), a file that
does not fit fails with a message naming the tensors, and anything but a plain state dict is refused."""
import math
import pickle
import re

import pytest
import torch

from sabnet.errors import SabnetError
from sabnet.model.checkpoint import config_from_checkpoint, detect_variant, load_pretrained, read_state_dict
from sabnet.model.config import ModelConfig
from sabnet.model.sab_model import SABModel, build_model


class NotAStateDict:
    """A custom object: weights_only loading must refuse to unpickle it."""

    def __init__(self):
        self.weights = torch.zeros(3)


@pytest.fixture(scope="module")
def sam_vit_b(tmp_path_factory):
    """An official-format vit_b checkpoint: segment_anything's own model, state dict saved as Meta
    does. pos_embed and the rel_pos tables get smooth known values so that resampling can be checked."""
    from segment_anything import build_sam_vit_b

    torch.manual_seed(0)
    sam = build_sam_vit_b()
    state = sam.state_dict()
    rows = (torch.arange(64) + 0.5) / 64
    state["image_encoder.pos_embed"][0, :, :, 0] = rows[:, None]  # channel 0 follows y (rows)
    state["image_encoder.pos_embed"][0, :, :, 1] = rows[None, :]  # channel 1 follows x (columns)
    for name, tensor in state.items():
        if ".rel_pos_" in name:  # a ramp over relative distance
            tensor.copy_(torch.linspace(-1, 1, tensor.shape[0])[:, None].expand_as(tensor))
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_test.pth"
    torch.save(state, path)
    return path, state


def test_official_checkpoint_loads_unchanged_at_1024(sam_vit_b):
    path, state = sam_vit_b
    model = SABModel(ModelConfig.for_variant("vit_b", 1024, n_outputs=4))
    report = load_pretrained(model, path)
    loaded = model.state_dict()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name
    assert not report.interpolated
    assert all(n.startswith("class_") for n in report.reinitialised)  # class heads from SAM's mask heads
    assert any(".adapter_" in n for n in report.fresh)
    assert report.loaded == len(state)


def test_official_checkpoint_loads_at_256_with_resampled_positions_and_new_output_heads(sam_vit_b):
    path, state = sam_vit_b
    model = build_model(ModelConfig.for_variant("vit_b", 256, n_outputs=3), path)
    report, loaded = model.checkpoint_report, model.state_dict()
    for name, tensor in state.items():
        if name.startswith("image_encoder.") and "pos" not in name:
            assert torch.equal(loaded[name], tensor), name
    # pos_embed: 64 x 64 -> 16 x 16, still y along rows and x along columns
    pos = loaded["image_encoder.pos_embed"]
    assert pos.shape == (1, 16, 16, 768)
    centres = (torch.arange(16) + 0.5) / 16
    torch.testing.assert_close(pos[0, 2:-2, 5, 0], centres[2:-2], atol=2e-3, rtol=0)
    torch.testing.assert_close(pos[0, 5, 2:-2, 1], centres[2:-2], atol=2e-3, rtol=0)
    # rel_pos: windowed blocks 27 -> 31 rows (window 16), global blocks 127 -> 31 rows (grid 16)
    for block in (0, 2):
        table = loaded[f"image_encoder.blocks.{block}.attn.rel_pos_h"]
        assert table.shape == (31, 64)
        assert table[15].abs().max() < 1e-6  # relative distance 0 stays at the centre
        assert (table[1:, 0] >= table[:-1, 0]).all()
    assert "image_encoder.pos_embed" in report.interpolated
    # SAM's 4 mask tokens load as they are; the 3 class channels start from tokens 1, 2, 3
    assert torch.equal(loaded["mask_decoder.mask_tokens.weight"], state["mask_decoder.mask_tokens.weight"])
    assert torch.equal(loaded["class_tokens.weight"], state["mask_decoder.mask_tokens.weight"][1:4])
    assert torch.equal(loaded["class_heads.2.layers.0.weight"],
                       state["mask_decoder.output_hypernetworks_mlps.3.layers.0.weight"])
    assert "class_tokens.weight" in report.reinitialised
    assert "mask_decoder.mask_tokens.weight" not in report.reinitialised
    assert "reinitialised" not in report.summary() and "initialised" in report.summary()


def test_with_a_checkpoint_only_adapters_decoder_and_new_parts_get_gradients(sam_vit_b):
    path, _ = sam_vit_b
    torch.manual_seed(0)
    model = build_model(ModelConfig.for_variant("vit_b", 64, n_outputs=2), path)  # 64: quick
    assert model.checkpoint_report.loaded > 0
    counts = model.parameter_counts()
    assert counts["frozen"] > 5 * counts["trainable"]  # the encoder dominates vit_b
    model(torch.randn(1, 1, 64, 64)).logsumexp(1).mean().backward()
    for name, p in model.named_parameters():
        sam_frozen = name.startswith(("image_encoder.", "prompt_encoder.")) and ".adapter_" not in name
        if sam_frozen or name.startswith(("depth_net.", "depth_fusion.")):
            assert not p.requires_grad and p.grad is None, name
        elif name.startswith(("mask_decoder.iou_", "mask_decoder.mask_tokens", "mask_decoder.output_hyper")):
            continue  # the IoU head and the object token are the prompted pass's; this is the automatic one
        else:
            assert p.requires_grad and p.grad is not None, name
    up = model.image_encoder.blocks[3].adapter_mlp.up.weight.grad
    assert up is not None and up.abs().sum() > 0


def test_a_checkpoint_of_another_variant_fails_naming_the_tensors(sam_vit_b):
    model = SABModel(ModelConfig.for_variant("sab_small", 256))
    with pytest.raises(SabnetError) as error:
        load_pretrained(model, sam_vit_b[0])
    message = str(error.value)
    assert "image_encoder.patch_embed.proj.weight checkpoint (768, 3, 16, 16) vs model (256, 3, 16, 16)" in message
    assert re.search(r"and \d+ more", message)  # long lists are cut
    assert "the checkpoint is a vit_b model: set the model variant to vit_b" in message
    assert "sam_vit_b_test.pth" in message


def test_a_truncated_tensor_fails_naming_it(tmp_path):
    model = SABModel(ModelConfig.for_variant("sab_tiny", 128))
    state = model.state_dict()
    state["mask_decoder.transformer.layers.0.mlp.lin1.weight"] = state["mask_decoder.transformer.layers.0.mlp.lin1.weight"][:100]
    del state["prompt_encoder.no_mask_embed.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(SabnetError, match=r"1 tensors of another shape: mask_decoder\.transformer\.layers\.0\.mlp\.lin1\.weight "
                                          r"checkpoint \(100, 64\) vs model \(256, 64\); "
                                          r"1 missing from the checkpoint: prompt_encoder\.no_mask_embed\.weight"):
        load_pretrained(model, tmp_path / "broken.pth")


def test_detect_variant_reads_the_architecture_from_shapes(sam_vit_b):
    path, state = sam_vit_b
    info = detect_variant(state)
    assert info["variant"] == "vit_b"
    assert info["encoder_global_attn_indexes"] == [2, 5, 8, 11]
    assert (info["checkpoint_image_size"], info["checkpoint_window_size"], info["encoder_num_heads"]) == (1024, 14, 12)
    config = config_from_checkpoint(path, 512, n_outputs=3)
    assert (config.variant, config.image_size, config.window_size, config.n_outputs) == ("vit_b", 512, 16, 3)


def test_a_custom_small_state_dict_round_trips_through_detection(tmp_path):
    config = ModelConfig.for_variant("sab_tiny", 128, adapter_blocks=[1])
    torch.save(SABModel(config).state_dict(), tmp_path / "tiny.pth")
    info = detect_variant(read_state_dict(tmp_path / "tiny.pth"))
    assert (info["variant"], info["patch_size"], info["adapter_blocks"]) == ("sab_tiny", 16, [1])
    model = SABModel(ModelConfig.for_variant("sab_tiny", 256))  # a sabnet model, also resampled
    report = load_pretrained(model, tmp_path / "tiny.pth")
    assert "image_encoder.pos_embed" in report.interpolated
    assert any("blocks.0.adapter_" in n for n in report.fresh)  # block 0 had no adapters saved


@pytest.mark.parametrize("content, words", [
    (NotAStateDict(), "weights_only=True"),
    ({"a": torch.zeros(1), "b": NotAStateDict()}, "weights_only=True"),
    ({"model": {"w": torch.zeros(1)}, "epoch": 3}, "save its 'model' entry alone"),
    ([torch.zeros(1)], "holds a list"),
])
def test_anything_but_a_plain_state_dict_is_refused(tmp_path, content, words):
    path = tmp_path / "bad.pth"
    torch.save(content, path)
    with pytest.raises(SabnetError, match=words) as error:
        read_state_dict(path)
    assert str(path) in str(error.value)


def test_a_plain_pickle_or_missing_file_is_refused_with_the_file_named(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"w": math.pi}))
    with pytest.raises(SabnetError, match="plain.pkl"):
        read_state_dict(path)
    with pytest.raises(SabnetError, match="not found"):
        read_state_dict(tmp_path / "absent.pth")
