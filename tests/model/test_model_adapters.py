"""Adapters: SAM's parameter names are unchanged, a fresh adapter computes exactly what the plain
SAM block computes, and a trained one changes it."""
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, TwoWayTransformer
from torch import nn

from sabnet.model.config import ModelConfig
from sabnet.model.sab_model import SABModel
from sabnet.model.adapters import Adapter, is_adapter_parameter


def test_adapter_is_a_bottleneck_of_a_quarter_width():
    adapter = Adapter(64, ratio=0.25)
    assert adapter.down.weight.shape == (16, 64) and adapter.up.weight.shape == (64, 16)
    x = torch.randn(2, 5, 64)
    assert torch.equal(adapter(x), x)  # residual adapter starts as the identity
    assert torch.equal(Adapter(64, residual=False)(x), torch.zeros_like(x))


def test_encoder_with_fresh_adapters_equals_segment_anythings_encoder():
    torch.manual_seed(0)
    config = ModelConfig.for_variant("sab_tiny", 128, adapter_blocks=[0, 2])
    model = SABModel(config).eval()
    plain = ImageEncoderViT(img_size=128, patch_size=16, embed_dim=128, depth=4, num_heads=4, mlp_ratio=4,
                            norm_layer=partial(nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
                            global_attn_indexes=(1, 3), window_size=config.window_size, out_chans=64).eval()
    sam_weights = {k: v for k, v in model.image_encoder.state_dict().items() if not is_adapter_parameter(k)}
    plain.load_state_dict(sam_weights, strict=True)  # same names, nothing missing or extra
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        # to float rounding: the neck's channel LayerNorm is one fused kernel here (ChannelLayerNorm)
        torch.testing.assert_close(model.image_encoder(images), plain(images), rtol=0, atol=1e-5)
        model.image_encoder.blocks[2].adapter_mlp.up.weight.normal_()
        assert not torch.allclose(model.image_encoder(images), plain(images), atol=1e-3)
    assert not any(is_adapter_parameter(k) for k in model.image_encoder.blocks[1].state_dict())


def test_decoder_blocks_with_fresh_adapters_equal_sams_two_way_transformer():
    torch.manual_seed(0)
    model = SABModel(ModelConfig.for_variant("sab_tiny", 128)).eval()
    plain = TwoWayTransformer(depth=2, embedding_dim=64, mlp_dim=256, num_heads=4).eval()
    weights = {k: v for k, v in model.mask_decoder.transformer.state_dict().items() if not is_adapter_parameter(k)}
    plain.load_state_dict(weights, strict=True)
    image, pe, tokens = torch.randn(2, 64, 8, 8), torch.randn(2, 64, 8, 8), torch.randn(2, 9, 64)
    with torch.no_grad():
        for ours, theirs in zip(model.mask_decoder.transformer(image, pe, tokens), plain(image, pe, tokens)):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        model.mask_decoder.transformer.layers[0].adapter_attn.up.weight.normal_()
        assert not torch.allclose(model.mask_decoder.transformer(image, pe, tokens)[0], plain(image, pe, tokens)[0], atol=1e-3)


def test_no_adapters_when_the_plan_says_none():
    model = SABModel(ModelConfig.for_variant("sab_tiny", 128, adapter_blocks="none", decoder_adapters=False))
    assert not any(is_adapter_parameter(name) for name, _ in model.named_parameters())
