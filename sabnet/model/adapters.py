"""Bottleneck adapters, and SAM blocks that carry them without renaming SAM's parameters.

An adapter is D -> ratio*D -> D with GELU. Its up-projection starts at zero, so a block with
adapters computes exactly what the plain SAM block computes until training moves the adapters:
a pretrained checkpoint keeps its behaviour at the start of fine-tuning.

`AdapterBlock` and `AdapterTwoWayAttentionBlock` take over the submodules of an existing SAM
`Block` / `TwoWayAttentionBlock` under the same attribute names (`attn`, `mlp`, `norm1`, ...), so
`image_encoder.blocks.0.attn.qkv.weight` keeps its name; the adapters add `adapter_attn.*` and
`adapter_mlp.*`. (TinyViT's blocks carry their adapters themselves: sabnet.model.tiny_vit.)

Decoder adapters come in two placements (`ModelConfig.decoder_adapter_style`):
- 'sabnet': `adapter_attn` after the tokens' self-attention, `adapter_mlp` parallel to their MLP;
- 'segmentanybone': as SegmentAnyBone's released weights place them: one residual adapter
  (`adapter_attn`) after the tokens' cross-attention to the image and again, the same adapter, after
  the image's cross-attention to the tokens; `adapter_mlp` parallel to the MLP.
"""
from __future__ import annotations

from segment_anything.modeling.image_encoder import Block, window_partition, window_unpartition
from segment_anything.modeling.transformer import TwoWayAttentionBlock
from torch import Tensor, nn

from sabnet.model.config import is_adapter_parameter

__all__ = ["Adapter", "AdapterBlock", "AdapterTwoWayAttentionBlock", "SegmentAnyBoneTwoWayAttentionBlock",
           "add_encoder_adapters", "add_decoder_adapters", "is_adapter_parameter"]


class Adapter(nn.Module):
    """x (..., D) -> x + up(gelu(down(x))) when `residual`, else up(gelu(down(x)))."""

    def __init__(self, dim: int, ratio: float = 0.25, residual: bool = True) -> None:
        super().__init__()
        hidden = max(1, round(dim * ratio))
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        self.residual = residual
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = self.up(self.act(self.down(x)))
        return x + y if self.residual else y


class AdapterBlock(Block):
    """A SAM encoder block with an adapter after attention (on the residual branch) and a scaled
    adapter parallel to the MLP. Tokens (B, H, W, D) in and out."""

    def __init__(self, block: Block, ratio: float, scale: float) -> None:
        nn.Module.__init__(self)  # adopt `block`'s submodules instead of building new ones
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
        self.window_size = block.window_size
        dim = block.norm1.normalized_shape[0]
        self.adapter_attn = Adapter(dim, ratio, residual=True)
        self.adapter_mlp = Adapter(dim, ratio, residual=False)
        self.adapter_scale = scale

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            height, width = x.shape[1], x.shape[2]
            x, padded_hw = window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, padded_hw, (height, width))
        x = shortcut + self.adapter_attn(x)
        normed = self.norm2(x)
        return x + self.mlp(normed) + self.adapter_scale * self.adapter_mlp(normed)


class AdapterTwoWayAttentionBlock(TwoWayAttentionBlock):
    """A SAM two-way decoder block with an adapter after the tokens' self-attention and a scaled
    adapter parallel to the tokens' MLP. Same inputs and outputs as `TwoWayAttentionBlock`."""

    def __init__(self, block: TwoWayAttentionBlock, ratio: float, scale: float) -> None:
        nn.Module.__init__(self)
        for name in ("self_attn", "norm1", "cross_attn_token_to_image", "norm2", "mlp", "norm3",
                     "norm4", "cross_attn_image_to_token"):
            setattr(self, name, getattr(block, name))
        self.skip_first_layer_pe = block.skip_first_layer_pe
        dim = block.norm1.normalized_shape[0]
        self.adapter_attn = Adapter(dim, ratio, residual=True)
        self.adapter_mlp = Adapter(dim, ratio, residual=False)
        self.adapter_scale = scale

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            queries = self.adapter_attn(self.self_attn(q=queries, k=queries, v=queries))
        else:
            q = queries + query_pe
            queries = queries + self.adapter_attn(self.self_attn(q=q, k=q, v=queries))
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))

        queries = self.norm3(queries + self.mlp(queries) + self.adapter_scale * self.adapter_mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys


class SegmentAnyBoneTwoWayAttentionBlock(AdapterTwoWayAttentionBlock):
    """A SAM two-way decoder block with SegmentAnyBone's adapters: one residual adapter applied to
    the tokens after their cross-attention to the image and to the image after its cross-attention to
    the tokens, and a scaled adapter parallel to the tokens' MLP."""

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(self.adapter_attn(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys)))

        queries = self.norm3(queries + self.mlp(queries) + self.adapter_scale * self.adapter_mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(self.adapter_attn(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries)))
        return queries, keys


DECODER_ADAPTER_BLOCKS = {"sabnet": AdapterTwoWayAttentionBlock, "segmentanybone": SegmentAnyBoneTwoWayAttentionBlock}


def add_encoder_adapters(image_encoder: nn.Module, block_indices: list[int], ratio: float, scale: float) -> None:
    """Replace, in place, the chosen blocks of SAM's ImageEncoderViT by adapter-carrying versions.
    SAM's parameters keep their objects and names."""
    for i in block_indices:
        image_encoder.blocks[i] = AdapterBlock(image_encoder.blocks[i], ratio, scale)


def add_decoder_adapters(mask_decoder: nn.Module, ratio: float, scale: float, style: str = "sabnet") -> None:
    """Give every two-way block of SAM's mask decoder adapters, placed as `style` says (see above)."""
    layers = mask_decoder.transformer.layers
    for i in range(len(layers)):
        layers[i] = DECODER_ADAPTER_BLOCKS[style](layers[i], ratio, scale)

