"""The network: adapter-SAM with hybrid prompting and a depth-attention branch (see sab_model.py)."""
from sabnet.model.checkpoint import (CheckpointReport, config_from_checkpoint, detect_variant, load_sam_checkpoint,
                                     read_state_dict)
from sabnet.model.config import VARIANTS, ModelConfig, choose_window_size
from sabnet.model.depth_branch import attention_to_grid, depth_positions, pad_to_input
from sabnet.model.prompts import Prompts, PromptSampler
from sabnet.model.sab_model import SABModel, build_model

__all__ = [
    "CheckpointReport", "ModelConfig", "PromptSampler", "Prompts", "SABModel", "VARIANTS", "attention_to_grid",
    "build_model", "choose_window_size", "config_from_checkpoint", "depth_positions", "detect_variant", "load_sam_checkpoint",
    "pad_to_input", "read_state_dict",
]
