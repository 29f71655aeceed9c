"""How much memory one training sample of a model configuration needs, to size batches.

An estimate from the architecture, not a measurement: activations kept for the backward pass
per encoder block (token features through attention, MLP, norms and adapters) plus attention
score matrices (windowed or global), plus the decoder, in float32 (halved under mixed precision).
"""
from __future__ import annotations

from sabnet.model.config import ModelConfig

BYTES = 4
# Token-feature tensors of width D kept per block for backward: qkv (3), attention output, two
# norms, residuals (2), MLP hidden (4 * 2 for the activation and its input), adapters (~1).
FEATURES_PER_BLOCK = 17
ATTENTION_COPIES = 3  # scores, softmax output, and its gradient buffer


def sample_memory_gb(config: ModelConfig, mixed_precision: bool = False, pretrained: bool = False) -> float:
    """Estimated training memory per slice (GB) for `config`. A pretrained encoder keeps no
    activations for the backward pass before its first adapter (none at all without adapters)."""
    if config.encoder == "tiny_vit":
        return _tiny_vit_sample_memory_gb(config, mixed_precision, pretrained)
    grid = config.grid_size
    tokens = grid * grid
    dim = config.encoder_embed_dim
    features = config.encoder_depth * tokens * dim * FEATURES_PER_BLOCK
    attention = 0
    for block in range(config.encoder_depth):
        if block in config.encoder_global_attn_indexes or config.window_size == 0:
            attention += config.encoder_num_heads * tokens * tokens
        else:
            window = config.window_size
            padded = -(-grid // window) * window
            attention += config.encoder_num_heads * (padded // window) ** 2 * window ** 4
    attention *= ATTENTION_COPIES
    decoder = 12 * tokens * config.prompt_embed_dim + 8 * (config.mask_size ** 2) * max(config.n_outputs, 2)
    scale = 0.5 if mixed_precision else 1.0
    return (features + attention + decoder) * BYTES * scale / 1e9


def _tiny_vit_sample_memory_gb(config: ModelConfig, mixed_precision: bool, pretrained: bool) -> float:
    """TinyViT: per stage, its token features (about FEATURES_PER_BLOCK maps per block; the
    convolutional stage's four-fold expansion counted alike) and window attention scores, at the
    stage's resolution (S/s, S/2s, S/4s, S/4s with s = patch_size / 4), plus the decoder."""
    side = config.image_size // (config.patch_size // 4)
    sides = [side, side // 2, side // 4, side // 4]
    adapted = config.adapter_block_indices()
    first_stage = 0  # the first stage whose activations backward needs
    if pretrained:
        starts = [sum(config.encoder_stage_depths[1:s]) for s in range(1, 4)]
        first_stage = next((s for s in (1, 2, 3) if adapted and adapted[0] < starts[s - 1] + config.encoder_stage_depths[s]), 4)
    elements = 0
    for stage, (dim, depth, heads, window, n) in enumerate(zip(
            config.encoder_stage_dims, config.encoder_stage_depths, config.encoder_stage_heads,
            config.encoder_stage_windows, sides)):
        if stage < first_stage:
            continue
        elements += depth * n * n * dim * FEATURES_PER_BLOCK
        if heads:
            padded = -(-n // window) * window
            elements += ATTENTION_COPIES * depth * heads * (padded // window) ** 2 * window ** 4
    tokens = config.grid_size ** 2
    elements += 12 * tokens * config.prompt_embed_dim + 8 * (config.mask_size ** 2) * max(config.n_outputs, 2)
    return elements * BYTES * (0.5 if mixed_precision else 1.0) / 1e9


def parameter_count(config: ModelConfig) -> int:
    """The model's number of parameters, counted from the architecture (no model is built, so that
    planning imports no network code). Within about 10 %: small norms and biases are left out."""
    dim, e = config.encoder_embed_dim, config.prompt_embed_dim
    adapter = 2 * 2 * config.adapter_ratio * (dim if config.encoder == "vit" else 1) ** 2
    n_adapted = len(config.adapter_block_indices())
    if config.encoder == "vit":
        encoder = 3 * config.patch_size ** 2 * dim + config.grid_size ** 2 * dim + config.encoder_depth * 12 * dim ** 2
        encoder += n_adapted * adapter + dim * e + 9 * e * e
    else:
        dims, depths = config.encoder_stage_dims, config.encoder_stage_depths
        encoder = depths[0] * 8 * dims[0] ** 2 + 9 * e * e + dims[3] * e
        attention_blocks = [(dims[s], depths[s]) for s in range(1, 4)]
        encoder += sum(n * 12 * d * d for d, n in attention_blocks)
        encoder += sum(dims[s] * dims[s + 1] + dims[s + 1] ** 2 for s in range(3))  # patch mergings
        widths = [d for d, n in attention_blocks for _ in range(n)]
        encoder += sum(4 * config.adapter_ratio * widths[i] ** 2 for i in config.adapter_block_indices())
    decoder = 2 * (4 * e * e + 4 * e * e / 2 + 2 * e * config.decoder_mlp_dim) + 2 * e * e  # two-way blocks, final attn
    decoder += (4 + config.n_outputs) * (2 * e * e + e * e // 8) + e * e // 4 * 4  # heads, upscaling
    if config.decoder_adapters:
        decoder += 2 * 2 * 2 * config.adapter_ratio * e * e
    depth = sum(27 * 2 * c * c for c in config.depth_channels) + 9 * e * (e // 4 + 1)
    return int(encoder + decoder + depth + (config.n_labels + 2) * e)


def model_memory_gb(n_parameters: int) -> float:
    """Weights, gradients and AdamW's two moments, float32."""
    return n_parameters * 4 * BYTES / 1e9
