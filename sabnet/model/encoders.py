"""The image encoders sabnet builds, one builder per family, as segment_anything's build_sam does.

Contract shared by every encoder, which the rest of sabnet relies on without asking which one it
holds: slices (B, 3, S, S) in, image embedding (B, E, g, g) out (E = prompt_embed_dim, g = S / p),
adapters (parameters named `*.adapter_*`) already in place where `config.adapter_blocks` says, and
pretrained parameter names equal to those of the family's published checkpoints.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

from segment_anything.modeling import ImageEncoderViT
from torch import nn

from sabnet.model.adapters import add_encoder_adapters
from sabnet.model.config import ModelConfig
from sabnet.model.tiny_vit import TinyViT


def build_vit(config: ModelConfig) -> nn.Module:
    """SAM's ImageEncoderViT with adapters in `config.adapter_blocks`."""
    encoder = ImageEncoderViT(
        img_size=config.image_size, patch_size=config.patch_size, in_chans=3,
        embed_dim=config.encoder_embed_dim, depth=config.encoder_depth,
        num_heads=config.encoder_num_heads, mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
        global_attn_indexes=tuple(config.encoder_global_attn_indexes),
        window_size=config.window_size, out_chans=config.prompt_embed_dim,
    )
    add_encoder_adapters(encoder, config.adapter_block_indices(), config.adapter_ratio, config.adapter_scale)
    return encoder


def build_tiny_vit(config: ModelConfig) -> nn.Module:
    """MobileSAM's TinyViT with SegmentAnyBone's adapters in `config.adapter_blocks`."""
    return TinyViT(config.patch_size, config.encoder_stage_dims, config.encoder_stage_depths,
                   config.encoder_stage_heads, config.encoder_stage_windows, config.adapter_block_indices(),
                   config.adapter_ratio, config.adapter_scale, out_chans=config.prompt_embed_dim)


ENCODER_BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {"vit": build_vit, "tiny_vit": build_tiny_vit}


def build_image_encoder(config: ModelConfig) -> nn.Module:
    """The image encoder of `config.encoder`'s family (see the module docstring for its contract)."""
    return ENCODER_BUILDERS[config.encoder](config)
