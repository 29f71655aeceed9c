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


def sample_memory_gb(config: ModelConfig, mixed_precision: bool = False) -> float:
    """Estimated training memory per slice (GB) for `config`."""
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


def model_memory_gb(n_parameters: int) -> float:
    """Weights, gradients and AdamW's two moments, float32."""
    return n_parameters * 4 * BYTES / 1e9
