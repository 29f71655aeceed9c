"""ChannelLayerNorm: SAM's LayerNorm2d in one fused kernel, a drop-in with the same parameters."""
import torch
from segment_anything.modeling.common import LayerNorm2d

from sabnet.model.channel_norm import ChannelLayerNorm, replace_channel_norms, use_fused_channel_norms
from sabnet.model.config import ModelConfig
from sabnet.model.sab_model import SABModel


def test_it_computes_sams_layernorm2d_and_its_gradients():
    torch.manual_seed(0)
    sam, fused = LayerNorm2d(6), ChannelLayerNorm(6)
    with torch.no_grad():
        sam.weight.normal_(), sam.bias.normal_()
    fused.load_state_dict(sam.state_dict())
    x = (torch.randn(2, 6, 9, 7) * 3 + 1).requires_grad_()
    y = x.detach().clone().requires_grad_()
    torch.testing.assert_close(fused(x), sam(y), atol=1e-5, rtol=1e-5)
    fused(x).square().sum().backward(), sam(y).square().sum().backward()
    torch.testing.assert_close(x.grad, y.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fused.weight.grad, sam.weight.grad, atol=1e-3, rtol=1e-4)


def test_the_model_uses_it_everywhere_and_keeps_sams_parameter_names():
    model = SABModel(ModelConfig.for_variant("sab_tiny", 64))
    norms = [m for m in model.modules() if isinstance(m, LayerNorm2d)]
    assert norms and all(type(m) is ChannelLayerNorm for m in norms)
    assert "image_encoder.neck.1.weight" in model.state_dict()
    assert "mask_decoder.output_upscaling.1.bias" in model.state_dict()
    # replacing keeps the very parameter tensors (an optimizer or a loaded checkpoint still holds them)
    holder = torch.nn.Sequential(LayerNorm2d(4))
    weight = holder[0].weight
    assert use_fused_channel_norms(holder)[0].weight is weight and type(holder[0]) is ChannelLayerNorm
    # and back to segment_anything's own (benchmarks/training_step.py compares the two)
    assert replace_channel_norms(holder, LayerNorm2d)[0].weight is weight and type(holder[0]) is LayerNorm2d
