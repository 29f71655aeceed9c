"""Loading official SAM checkpoints (and any state dict in SAM's naming) into a SABModel.

Official files (`sam_vit_b_01ec64.pth`, `sam_vit_l_0b3195.pth`, `sam_vit_h_4b8939.pth`) are given
by path; nothing is downloaded. Every file is read with `torch.load(..., weights_only=True)` and must
hold a plain dict of tensors. Tensors whose size follows from the input size are resampled:
- `image_encoder.pos_embed` (1, G, G, E): bicubic, as a 2D grid, to the new token grid;
- `...attn.rel_pos_h/w` (2L-1, C): linearly along their first axis, to the new window (windowed
  blocks) or the new grid (global blocks).
When the decoder's number of mask tokens differs from the checkpoint's (SAM has 4; sabnet has one
per output channel), the output heads (mask tokens, hypernetwork MLPs, IoU head's last layer) are
initialised from the checkpoint's heads, output i from checkpoint head i mod 4. Every other tensor
must fit exactly, or loading fails with a message listing the tensors.
"""
from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sabnet.errors import SabnetError
from sabnet.model.adapters import is_adapter_parameter
from sabnet.model.config import SAM_VARIANTS, VARIANTS, ModelConfig, choose_window_size

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
IGNORED_KEYS = ("pixel_mean", "pixel_std")  # SAM buffers that some exports include
HEAD_KEY = re.compile(r"^mask_decoder\.(mask_tokens\.weight|output_hypernetworks_mlps\.(\d+)\..+|"
                      r"iou_prediction_head\.layers\.(\d+)\.(weight|bias))$")
MAX_LISTED = 8


@dataclass
class CheckpointReport:
    """What loading did. Names are state-dict keys."""

    path: Path
    loaded: int = 0
    interpolated: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # model tensors the checkpoint does not hold

    def summary(self) -> str:
        parts = [f"{self.path.name}: loaded {self.loaded} tensors"]
        if self.interpolated:
            parts.append(f"resampled {len(self.interpolated)} to the input size (pos_embed, rel_pos)")
        if self.reinitialised:
            parts.append(f"initialised {len(self.reinitialised)} decoder output-head tensors from the "
                         "checkpoint's heads (different number of outputs)")
        if self.fresh:
            parts.append(f"{len(self.fresh)} new tensors (adapters, depth branch, label embeddings) start fresh")
        return "; ".join(parts)


def read_state_dict(path: Path | str) -> dict[str, Tensor]:
    """Read a plain state dict {name: tensor} with weights_only=True; anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise SabnetError(f"{path}: checkpoint not found; give the path of a SAM .pth file")
    try:
        with warnings.catch_warnings():  # legacy pickles: torch warns about their protocol, we judge them below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = _torch_load(path)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f"it holds a pickled {found.group(1)} object" if found else "it holds pickled objects"
        raise SabnetError(f"{path}: refused: not a plain state dict of tensors ({what}, which safe loading "
                          "with weights_only=True does not run); save model.state_dict() instead") from None
    except Exception as e:  # truncated or not a torch file at all
        raise SabnetError(f"{path}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise SabnetError(f"{path}: refused: holds a {type(obj).__name__}, not a state dict; "
                          "save model.state_dict() instead")
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        nested = [k for k in bad if isinstance(obj[k], dict)]
        hint = (f"; it looks like a training checkpoint: save its {nested[0]!r} entry alone" if nested
                else "; save model.state_dict() alone")
        raise SabnetError(f"{path}: refused: not a plain state dict: entries {', '.join(map(repr, bad[:MAX_LISTED]))} "
                          f"are not tensors{hint}")
    return obj


def _torch_load(path: Path) -> Any:
    """torch.load with weights_only=True, memory-mapped when the file's format allows it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format


def detect_variant(state_dict: dict[str, Tensor]) -> dict[str, Any]:
    """The architecture a SAM-named state dict was built with, read from tensor shapes.

    Returns ModelConfig field values (variant: a VARIANTS name, or 'custom'; patch_size,
    encoder_embed_dim, encoder_depth, encoder_num_heads, encoder_global_attn_indexes,
    prompt_embed_dim, decoder_mlp_dim, adapter_blocks) plus checkpoint_image_size,
    checkpoint_window_size and n_mask_tokens.
    """
    try:
        proj = state_dict["image_encoder.patch_embed.proj.weight"]
        embed_dim, _, patch, _ = proj.shape
        depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k)))
        rel = [state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
        grid = state_dict["image_encoder.pos_embed"].shape[1]
        info: dict[str, Any] = dict(
            patch_size=int(patch), encoder_embed_dim=int(embed_dim), encoder_depth=depth,
            encoder_num_heads=int(embed_dim // rel[0].shape[1]),
            encoder_global_attn_indexes=[i for i, r in enumerate(rel) if r.shape[0] == 2 * grid - 1],
            prompt_embed_dim=int(state_dict["image_encoder.neck.0.weight"].shape[0]),
            decoder_mlp_dim=int(state_dict["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
            adapter_blocks=sorted({int(m.group(1)) for k in state_dict
                                   if (m := re.match(r"image_encoder\.blocks\.(\d+)\.adapter_", k))}),
            checkpoint_image_size=int(grid * patch),
            n_mask_tokens=int(state_dict["mask_decoder.mask_tokens.weight"].shape[0]),
        )
    except (KeyError, ValueError, IndexError) as e:
        raise SabnetError(f"not a SAM-format checkpoint: cannot read its architecture ({type(e).__name__}: {e}); "
                          "give an official SAM checkpoint or a sabnet model state dict") from None
    windowed = [r.shape[0] for i, r in enumerate(rel) if i not in info["encoder_global_attn_indexes"]]
    info["checkpoint_window_size"] = (windowed[0] + 1) // 2 if windowed else grid
    # When the window equals the grid, windowed and global blocks look alike (and compute alike):
    # the global blocks cannot be told apart, so they are not compared.
    indistinct = not windowed
    keys = ("patch_size", "encoder_embed_dim", "encoder_depth", "encoder_num_heads", "prompt_embed_dim",
            "decoder_mlp_dim") + (() if indistinct else ("encoder_global_attn_indexes",))
    info["variant"] = next((name for name, arch in VARIANTS.items()
                            if all(arch[k] == info[k] for k in keys)), "custom")
    if indistinct and info["variant"] != "custom":
        info["encoder_global_attn_indexes"] = list(VARIANTS[info["variant"]]["encoder_global_attn_indexes"])
    return info


def config_from_checkpoint(path: Path | str, image_size: int, **settings: Any) -> ModelConfig:
    """A ModelConfig whose architecture matches the checkpoint at `path`, for inputs of `image_size`."""
    info = detect_variant(read_state_dict(path))
    if info["variant"] != "custom":
        return ModelConfig.for_variant(info["variant"], image_size, **settings)
    arch = {k: info[k] for k in ("patch_size", "encoder_embed_dim", "encoder_depth", "encoder_num_heads",
                                 "encoder_global_attn_indexes", "prompt_embed_dim", "decoder_mlp_dim")}
    grid = image_size // arch["patch_size"]
    arch["window_size"] = choose_window_size(grid, image_size, sam_variant=False)
    return ModelConfig.from_dict(dict(arch, variant="custom", image_size=image_size, **settings))


def load_sam_checkpoint(model: torch.nn.Module, path: Path | str) -> CheckpointReport:
    """Load a SAM-named state dict (official SAM or sabnet) into `model` (a SABModel).

    SAM's tensors must all be present and fit (after resampling to the input size); sabnet's new
    parts are loaded when present and otherwise keep their fresh initialisation. Raises SabnetError
    listing every tensor that does not fit, with what to do.
    """
    path = Path(path)
    source = {k: v for k, v in read_state_dict(path).items() if k not in IGNORED_KEYS}
    target = model.state_dict()
    report = CheckpointReport(path)
    heads_differ = _n_tokens(source) != _n_tokens(target)
    out: dict[str, Tensor] = {}
    misfits, missing = [], []
    for name, want in target.items():
        head = HEAD_KEY.match(name) if heads_differ else None
        if name in source and source[name].shape == want.shape:
            out[name] = source[name]
        elif head and (built := _head_tensor(source, name, head, want, _n_tokens(source))) is not None:
            out[name] = built
            report.reinitialised.append(name)
        elif name not in source:
            (missing if _is_sam_tensor(name) else report.fresh).append(name)
        elif (resampled := _resample(name, source[name], tuple(want.shape))) is not None:
            out[name] = resampled
            report.interpolated.append(name)
        else:
            misfits.append(f"{name} checkpoint {tuple(source[name].shape)} vs model {tuple(want.shape)}")
    unexpected = [k for k in source if k not in target and not (heads_differ and HEAD_KEY.match(k))]
    if misfits or missing or unexpected:
        raise SabnetError(_misfit_message(path, model.config, source, misfits, missing, unexpected))
    model.load_state_dict(out, strict=False)
    report.loaded = len(out) - len(report.reinitialised) - len(report.interpolated)
    return report


def _is_sam_tensor(name: str) -> bool:
    return name.startswith(SAM_PREFIXES) and not is_adapter_parameter(name)


def _n_tokens(state_dict: dict[str, Tensor]) -> int:
    return state_dict["mask_decoder.mask_tokens.weight"].shape[0] if "mask_decoder.mask_tokens.weight" in state_dict else -1


def _head_tensor(source: dict[str, Tensor], name: str, head: re.Match, want: Tensor, n_source: int) -> Tensor | None:
    """A decoder output-head tensor for the model's number of outputs, taken from the checkpoint's
    head i mod n_source; None when the checkpoint has nothing of the right width."""
    rows = torch.arange(want.shape[0]) % max(n_source, 1)
    if head.group(2) is not None:  # hypernetwork MLP of output i
        i = int(head.group(2))
        name = name.replace(f"output_hypernetworks_mlps.{i}.", f"output_hypernetworks_mlps.{i % n_source}.", 1)
        return source[name] if name in source and source[name].shape == want.shape else None
    # the mask-token table, or the IoU head's last layer: one row per output
    tensor = source.get(name)
    if tensor is None or tensor.shape[0] != n_source or tensor.shape[1:] != want.shape[1:]:
        return None
    return tensor[rows]


def _resample(name: str, tensor: Tensor, shape: tuple[int, ...]) -> Tensor | None:
    """pos_embed (1, G, G, E) bicubically, rel_pos (L, C) linearly, to `shape`; None if not resamplable."""
    if name == "image_encoder.pos_embed" and tensor.dim() == 4 and tensor.shape[::3] == shape[::3]:
        grid = tensor.permute(0, 3, 1, 2).float()
        shrinking = shape[1] < tensor.shape[1]
        grid = F.interpolate(grid, size=shape[1:3], mode="bicubic", align_corners=False, antialias=shrinking)
        return grid.permute(0, 2, 3, 1).to(tensor.dtype).contiguous()
    if re.search(r"\.attn\.rel_pos_[hw]$", name) and tensor.dim() == 2 and tensor.shape[1] == shape[1]:
        table = tensor.t()[None].float()  # (1, C, L)
        table = F.interpolate(table, size=shape[0], mode="linear", align_corners=False)  # as SAM resizes them
        return table[0].t().to(tensor.dtype).contiguous()
    return None


def _misfit_message(path: Path, config: ModelConfig, source: dict[str, Tensor], misfits: list[str],
                    missing: list[str], unexpected: list[str]) -> str:
    problems = []
    for title, items in (("tensors of another shape", misfits), ("missing from the checkpoint", missing),
                         ("not in the model", unexpected)):
        if items:
            more = f", and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
            problems.append(f"{len(items)} {title}: {', '.join(items[:MAX_LISTED])}{more}")
    try:
        guess = detect_variant(source)["variant"]
    except SabnetError:
        guess = None
    if guess and guess != config.variant:
        advice = (f"the checkpoint is a {guess} model: set the model variant to {guess} "
                  f"(or give a {config.variant} checkpoint)")
    elif config.variant in SAM_VARIANTS:
        advice = f"give an unmodified official {config.variant} checkpoint (sam_{config.variant}_*.pth)"
    else:
        advice = "give a checkpoint made for this model configuration"
    return (f"{path}: checkpoint does not fit the model (variant {config.variant}, image_size "
            f"{config.image_size}, patch_size {config.patch_size}): {'; '.join(problems)}. Fix: {advice}")
