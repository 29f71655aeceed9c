"""What a pretrained state dict is, read from its names and shapes, and its names in sabnet's terms.

Layouts recognised:
- SAM (`image_encoder.blocks.N...`): official vit_b / vit_l / vit_h, or a sabnet model of those;
- TinyViT (`image_encoder.layers.N...`): LiteMedSAM (1x1 stem, 256 px, 64 x 64 embedding),
  MobileSAM's `mobile_sam.pt` (3x3 stride-2 stem, 1024 px), SegmentAnyBone's `bone_sam.pth`
  (MobileSAM's TinyViT with `Space_Adapter` / `MLP_Adapter` in its blocks, `Adapter` /
  `MLP_Adapter` in the decoder's two-way blocks and an `attention_fusion` block), or a sabnet
  model of those.
`sabnet_names` renames SegmentAnyBone's parts to sabnet's (`adapter_attn`, `adapter_mlp`,
`depth_fusion`) and drops MobileSAM's unused image classifier (`image_encoder.head`, `norm_head`).
"""
from __future__ import annotations

import math
import re
from typing import Any

from torch import Tensor

from sabnet.errors import SabnetError
from sabnet.model.config import VARIANTS

RENAMES = (  # SegmentAnyBone's names -> sabnet's
    (".Space_Adapter.D_fc1.", ".adapter_attn.down."), (".Space_Adapter.D_fc2.", ".adapter_attn.up."),
    (".MLP_Adapter.D_fc1.", ".adapter_mlp.down."), (".MLP_Adapter.D_fc2.", ".adapter_mlp.up."),
    (".Adapter.D_fc1.", ".adapter_attn.down."), (".Adapter.D_fc2.", ".adapter_attn.up."),
)
UNUSED_PREFIXES = ("image_encoder.head.", "image_encoder.norm_head.")  # MobileSAM's ImageNet classifier
ARCHITECTURE_KEYS = ("encoder", "patch_size", "encoder_embed_dim", "encoder_depth", "encoder_num_heads",
                     "encoder_stage_dims", "encoder_stage_depths", "encoder_stage_heads", "encoder_stage_windows",
                     "prompt_embed_dim", "decoder_mlp_dim")


def sabnet_names(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The state dict under sabnet's parameter names (see the module docstring)."""
    out = {}
    for name, tensor in state_dict.items():
        if name.startswith(UNUSED_PREFIXES):
            continue
        if name.startswith("attention_fusion."):
            name = "depth_fusion." + name[len("attention_fusion."):]
        for old, new in RENAMES:
            name = name.replace(old, new)
        out[name] = tensor
    return out


def detect_variant(state_dict: dict[str, Tensor]) -> dict[str, Any]:
    """The architecture a state dict (as published, or as sabnet saves it) was built with.

    Returns ModelConfig field values (variant: a VARIANTS name, or 'custom'; encoder, patch_size,
    the encoder's sizes, prompt_embed_dim, decoder_mlp_dim, adapter_blocks, decoder_adapters,
    decoder_adapter_style, depth_fusion_style) plus checkpoint_image_size, checkpoint_window_size
    (ViT) and n_mask_tokens.
    """
    released_decoder_adapters = any(".transformer.layers.0.Adapter." in k for k in state_dict)
    state_dict = sabnet_names(state_dict)
    try:
        if "image_encoder.patch_embed.proj.weight" in state_dict:
            info = _vit_architecture(state_dict)
        elif "image_encoder.patch_embed.seq.0.c.weight" in state_dict:
            info = _tiny_vit_architecture(state_dict)
        else:
            raise KeyError("image_encoder.patch_embed")
        info.update(
            prompt_embed_dim=int(state_dict["mask_decoder.iou_token.weight"].shape[1]),
            decoder_mlp_dim=int(state_dict["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
            n_mask_tokens=int(state_dict["mask_decoder.mask_tokens.weight"].shape[0]),
            decoder_adapters=any(".transformer.layers.0.adapter_" in k for k in state_dict),
            # sabnet's own state dicts do not say where their decoder adapters sit: their plan does
            decoder_adapter_style="segmentanybone" if released_decoder_adapters else "sabnet",
            depth_fusion_style="segmentanybone" if "depth_fusion.fuse_emb.0.weight" in state_dict else "sabnet",
        )
    except (KeyError, ValueError, IndexError) as e:
        raise SabnetError(f"not a SAM, MobileSAM, LiteMedSAM or SegmentAnyBone checkpoint: cannot read its "
                          f"architecture ({type(e).__name__}: {e}); give one of those or a sabnet model state dict") from None
    info["variant"] = _variant_name(info)
    return info


def _vit_architecture(sd: dict[str, Tensor]) -> dict[str, Any]:
    proj = sd["image_encoder.patch_embed.proj.weight"]
    embed_dim, _, patch, _ = proj.shape
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k)))
    rel = [sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
    grid = sd["image_encoder.pos_embed"].shape[1]
    info: dict[str, Any] = dict(
        encoder="vit", patch_size=int(patch), encoder_embed_dim=int(embed_dim), encoder_depth=depth,
        encoder_num_heads=int(embed_dim // rel[0].shape[1]),
        encoder_global_attn_indexes=[i for i, r in enumerate(rel) if r.shape[0] == 2 * grid - 1],
        adapter_blocks=sorted({int(m.group(1)) for k in sd if (m := re.match(r"image_encoder\.blocks\.(\d+)\.adapter_", k))}),
        checkpoint_image_size=int(grid * patch),
    )
    windowed = [r.shape[0] for i, r in enumerate(rel) if i not in info["encoder_global_attn_indexes"]]
    info["checkpoint_window_size"] = (windowed[0] + 1) // 2 if windowed else grid
    return info


def _tiny_vit_architecture(sd: dict[str, Tensor]) -> dict[str, Any]:
    stem = sd["image_encoder.patch_embed.seq.0.c.weight"]
    patch = 4 if stem.shape[-1] == 1 else 16
    dims = [int(sd["image_encoder.patch_embed.seq.2.c.weight"].shape[0])]
    depths = [1 + max(int(m.group(1)) for k in sd if (m := re.match(r"image_encoder\.layers\.0\.blocks\.(\d+)\.", k)))]
    heads, windows, adapters, first = [1], [1], [], 0  # stage 0 (convolutional) has neither
    for stage in range(1, 4):
        n = 1 + max(int(m.group(1)) for k in sd if (m := re.match(rf"image_encoder\.layers\.{stage}\.blocks\.(\d+)\.", k)))
        biases = sd[f"image_encoder.layers.{stage}.blocks.0.attn.attention_biases"]
        dims.append(int(sd[f"image_encoder.layers.{stage}.blocks.0.attn.qkv.weight"].shape[1]))
        depths.append(n)
        heads.append(int(biases.shape[0]))
        windows.append(int(round(math.sqrt(biases.shape[1]))))
        adapters += [first + i for i in range(n)
                     if f"image_encoder.layers.{stage}.blocks.{i}.adapter_attn.down.weight" in sd]
        first += n
    return dict(encoder="tiny_vit", patch_size=patch, encoder_stage_dims=dims, encoder_stage_depths=depths,
                encoder_stage_heads=heads, encoder_stage_windows=windows, encoder_embed_dim=dims[-1],
                encoder_depth=sum(depths[1:]), encoder_num_heads=heads[-1], encoder_global_attn_indexes=[],
                adapter_blocks=adapters, checkpoint_image_size=256 if patch == 4 else 1024)


def _variant_name(info: dict[str, Any]) -> str:
    """The VARIANTS entry with this architecture ('custom' if none). TinyViT variants differ only
    in their adapters: a checkpoint without encoder adapters is `lite_medsam`'s pretrained network
    as much as `lite_medsam_frozen`'s, and is named by its stem (the first match)."""
    if info["encoder"] == "vit":
        grid = info["checkpoint_image_size"] // info["patch_size"]
        # when the window equals the grid, windowed and global blocks look alike (and compute alike)
        indistinct = info["checkpoint_window_size"] == grid
        keys = [k for k in ("patch_size", "encoder_embed_dim", "encoder_depth", "encoder_num_heads")]
        keys += [] if indistinct else ["encoder_global_attn_indexes"]
        for name, arch in VARIANTS.items():
            if arch.get("encoder", "vit") == "vit" and all(arch[k] == info[k] for k in keys):
                if indistinct:
                    info["encoder_global_attn_indexes"] = list(arch["encoder_global_attn_indexes"])
                return name
        return "custom"
    for name, arch in VARIANTS.items():  # stage 0 is convolutional: its heads and window mean nothing
        if arch.get("encoder") == "tiny_vit" and all(
                (arch[k][1:] == info[k][1:]) if k in ("encoder_stage_heads", "encoder_stage_windows") else arch[k] == info[k]
                for k in ARCHITECTURE_KEYS if k not in ("prompt_embed_dim", "decoder_mlp_dim")):
            info["encoder_stage_heads"], info["encoder_stage_windows"] = arch["encoder_stage_heads"], arch["encoder_stage_windows"]
            return name
    return "custom"
