"""SABModel: SAM's image encoder, prompt encoder and mask decoder with adapters, hybrid prompting,
multi-class outputs and the depth-attention branch.

SAM's parts keep SAM's attribute names (`image_encoder`, `prompt_encoder`, `mask_decoder`), so their
state-dict keys equal SAM's; new parts live under other names (`no_prompt_embed`, `label_embed`,
`depth_net`, `depth_fusion`, `channel_mixer`, and `adapter_*` inside blocks).

Input: slices (B, C_in, S, S), intensity-normalised by preprocessing (no pixel mean/std is applied
here), each slice at the top-left and zero-padded bottom/right to S x S.

Split use, as prediction does it:
    emb = model.encode(images)                             # ImageEmbeddings: (B, E, g, g), g = S / p
    prob = model.depth_probabilities(low_res_volume)       # once per case: (1, 1, D, H, W)
    att = model.slice_attention(prob, positions, (h, w))   # (B, 1, h, w) for slices of h x w pixels
    logits = model.decode(emb, prompts, pad_to_input(att, S))  # (B, n_outputs, 4g, 4g)
    logits = model.upsample_logits(logits, (h, w))         # (B, n_outputs, h, w)
`attention=None` is 2D mode: no fusion and no 3D compute.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import Tensor, nn

from sabnet.model.adapters import add_adapters, is_adapter_parameter
from sabnet.model.channel_norm import use_fused_channel_norms
from sabnet.model.checkpoint import CheckpointReport, load_sam_checkpoint
from sabnet.model.config import ModelConfig
from sabnet.model.detail_branch import DetailBranch, ImageEmbeddings
from sabnet.model.depth_branch import DepthFusion, DepthNet, attention_to_grid, slice_attention_map
from sabnet.model.prompts import Prompts

STAGES = ("2d", "3d")
DEPTH_PARTS = ("depth_net.", "depth_fusion.")


class SABModel(nn.Module):
    """The SegmentAnyBone network. See the module docstring for shapes and the split API."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        dim, grid = config.prompt_embed_dim, config.grid_size
        self.image_encoder = ImageEncoderViT(
            img_size=config.image_size, patch_size=config.patch_size, in_chans=3,
            embed_dim=config.encoder_embed_dim, depth=config.encoder_depth,
            num_heads=config.encoder_num_heads, mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=tuple(config.encoder_global_attn_indexes),
            window_size=config.window_size, out_chans=dim,
        )
        self.prompt_encoder = PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid),
            input_image_size=(config.image_size, config.image_size), mask_in_chans=16,
        )
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=config.n_outputs - 1,  # its n_outputs mask tokens are our channels
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=config.decoder_mlp_dim,
                                          num_heads=config.decoder_num_heads),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=dim,
        )
        add_adapters(self.image_encoder, self.mask_decoder, config.adapter_block_indices(),
                     config.adapter_ratio, config.adapter_scale, config.decoder_adapters)
        if config.in_channels not in (1, 3):
            self.channel_mixer = nn.Conv2d(config.in_channels, 3, kernel_size=1)
            nn.init.constant_(self.channel_mixer.weight, 1.0 / config.in_channels)
            nn.init.zeros_(self.channel_mixer.bias)
        self.no_prompt_embed = nn.Embedding(1, dim)
        self.label_embed = nn.Embedding(config.n_labels + 1, dim)
        nn.init.zeros_(self.label_embed.weight)  # a fresh label changes nothing until trained
        self.depth_net = DepthNet(config.depth_channels, config.depth_volume_shape, grid)
        self.depth_fusion = DepthFusion(dim)
        if config.detail_channels:
            self.detail_branch = DetailBranch(config.patch_size, config.detail_channels, dim // 8)
        use_fused_channel_norms(self)  # SAM's neck and decoder upscaling: the same norm, one kernel
        self.checkpoint_report: CheckpointReport | None = None  # set by build_model

    # ---- the split API ---------------------------------------------------------------------
    def encode(self, images: Tensor) -> ImageEmbeddings:
        """Slices (B, C_in, S, S) -> image embeddings (B, E, g, g) and detail features (B, E/8, 4g, 4g)."""
        c, s = self.config.in_channels, self.config.image_size
        if images.dim() != 4 or images.shape[1] != c or tuple(images.shape[2:]) != (s, s):
            raise ValueError(f"images must be (B, {c}, {s}, {s}), got {tuple(images.shape)}; pad slices with pad_to_input")
        if c == 1:
            images = images.expand(-1, 3, -1, -1)
        elif c != 3:
            images = self.channel_mixer(images)
        detail = self.detail_branch(images) if self.config.detail_channels else None
        return ImageEmbeddings(self.image_encoder(images), detail)

    def depth_probabilities(self, volume: Tensor) -> Tensor:
        """Low-resolution volume(s) (N, 1, D, H, W) -> bone probabilities, same shape. Once per case."""
        return torch.sigmoid(self.depth_net(volume))

    def slice_attention(self, prob_volume: Tensor, slice_positions: Tensor, out_hw: tuple[int, int]) -> Tensor:
        """(1 or B, 1, D, H, W) probabilities, (B,) low-res slice coordinates -> maps (B, 1, h, w) in [0, 1].
        Pad the result with `pad_to_input` like the image before passing it to `decode`."""
        return slice_attention_map(prob_volume, slice_positions, out_hw, self.config.depth_threshold,
                                   self.config.depth_neighbourhood_slices)

    def decode(self, embeddings: ImageEmbeddings | Tensor, prompts: Prompts | None = None,
               attention: Tensor | None = None, label: Tensor | None = None) -> Tensor:
        """Embeddings (from `encode`; a bare (B, E, g, g) tensor means no detail features) -> logits
        (B, n_outputs, 4g, 4g).

        prompts: None for automatic mode; `label` (B,) then says which label is asked for (default 0,
            all). With prompts, their own `label` is used.
        attention: padded depth-attention maps (B, 1, S, S) (or already on the grid, (B, 1, g, g));
            None is 2D mode.
        """
        if isinstance(embeddings, Tensor):
            embeddings = ImageEmbeddings(embeddings)
        detail, embeddings = embeddings.detail, embeddings.embedding
        batch = embeddings.shape[0]
        if prompts is None:
            label = torch.zeros(batch, dtype=torch.long) if label is None else label
            prompts = Prompts(label=label.to(embeddings.device))
        elif label is not None:
            raise ValueError("give the label inside prompts (Prompts.label), not both")
        if prompts.batch_size != batch:
            raise ValueError(f"{prompts.batch_size} prompts for {batch} embeddings")
        if attention is not None:
            embeddings = self.depth_fusion(embeddings, attention_to_grid(attention, self.config.grid_size))
        sparse, dense = self._embed_prompts(prompts, embeddings.dtype)
        return self._predict_masks(embeddings, sparse, dense, detail)

    def forward(self, images: Tensor, prompts: Prompts | None = None, attention: Tensor | None = None,
                output_size: tuple[int, int] | None = None) -> Tensor:
        """encode + decode + `upsample_logits`: (B, C_in, S, S) -> logits (B, n_outputs, h, w)."""
        return self.upsample_logits(self.decode(self.encode(images), prompts, attention), output_size)

    def upsample_logits(self, logits: Tensor, output_size: tuple[int, int] | None = None) -> Tensor:
        """Logits (B, n, 4g, 4g) -> (B, n, S, S) bilinearly, then cropped to the top-left (h, w), the
        slice's own pixels, when `output_size` = (h, w) is given."""
        s = self.config.image_size
        if output_size is not None and max(output_size) > s:
            raise ValueError(f"output_size {tuple(output_size)} exceeds the model input {s} x {s}")
        logits = F.interpolate(logits, size=(s, s), mode="bilinear", align_corners=False)
        if output_size is not None:
            logits = logits[..., : output_size[0], : output_size[1]]
        return logits

    # ---- prompts and decoder ---------------------------------------------------------------
    def _embed_prompts(self, prompts: Prompts, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Sparse tokens (B, 1 + max_prompt_points + 2, E) and dense embeddings (B, E, g, g).

        Token 0 is the learned no-prompt token for automatic samples (SAM's padding token
        otherwise); then points padded to max_prompt_points; then two box corners (padding tokens
        when a sample has no box). The label embedding is added to token 0 and to every real point
        and box token. A fixed token count keeps each sample's output independent of its batch.
        """
        enc, cfg = self.prompt_encoder, self.config
        batch, n_points = prompts.batch_size, prompts.points.shape[1]
        if n_points > cfg.max_prompt_points:
            raise ValueError(f"{n_points} prompt points; the model takes at most max_prompt_points={cfg.max_prompt_points}")
        padding = enc.not_a_point_embed.weight  # (1, E)
        label = self.label_embed(prompts.label)[:, None]  # (B, 1, E)
        first = torch.where(prompts.automatic[:, None, None], self.no_prompt_embed.weight, padding) + label
        points = F.pad(prompts.points.to(dtype), (0, 0, 0, cfg.max_prompt_points - n_points))
        point_labels = F.pad(prompts.point_labels, (0, cfg.max_prompt_points - n_points), value=-1)
        point_tokens = self._embed_points(points, point_labels, label)
        box_tokens = torch.where(prompts.box_valid[:, None, None], enc._embed_boxes(prompts.boxes.to(dtype)) + label, padding)
        sparse = torch.cat([first, point_tokens, box_tokens], dim=1)

        grid = cfg.grid_size
        dense = enc.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, grid, grid)
        if prompts.mask is not None and bool(prompts.mask_valid.any()):
            if tuple(prompts.mask.shape[1:]) != (1, cfg.mask_size, cfg.mask_size):
                raise ValueError(f"mask prompt must be (B, 1, {cfg.mask_size}, {cfg.mask_size}), got {tuple(prompts.mask.shape)}")
            dense = torch.where(prompts.mask_valid[:, None, None, None], enc._embed_masks(prompts.mask.to(dtype)), dense)
        return sparse, dense

    def _embed_points(self, points: Tensor, point_labels: Tensor, label: Tensor) -> Tensor:
        """SAM's point tokens (B, N, E): position code of the pixel centre plus the positive or negative
        point embedding, plus the label embedding; padding (-1) gives SAM's padding token. Written
        with `where` rather than SAM's boolean indexing, so it also runs on meta tensors."""
        enc = self.prompt_encoder
        code = enc.pe_layer.forward_with_coords(points + 0.5, enc.input_image_size)
        kind = point_labels[..., None]
        real = code + label + torch.where(kind == 1, enc.point_embeddings[1].weight, enc.point_embeddings[0].weight)
        return torch.where(kind >= 0, real, enc.not_a_point_embed.weight)

    def _predict_masks(self, embeddings: Tensor, sparse: Tensor, dense: Tensor, detail: Tensor | None = None) -> Tensor:
        """SAM's mask prediction, batched over images (SAM's own repeats one image per prompt):
        all mask tokens are used, one per output channel."""
        dec = self.mask_decoder
        batch, dim, grid, _ = embeddings.shape
        out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.expand(batch, -1, -1), sparse], dim=1)
        image_pe = self.prompt_encoder.get_dense_pe().expand(batch, -1, -1, -1)
        hs, src = dec.transformer(embeddings + dense, image_pe, tokens)
        mask_tokens = hs[:, 1: 1 + dec.num_mask_tokens]
        upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(batch, dim, grid, grid))
        if detail is not None:
            upscaled = upscaled + detail
        weights = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1)
        return torch.einsum("bnc,bchw->bnhw", weights, upscaled)

    # ---- training set-up -------------------------------------------------------------------
    def configure_trainable(self, pretrained: bool, stage: str = "2d") -> None:
        """Choose which parameters train.

        stage '2d': the depth branch is frozen (unused); with a pretrained checkpoint SAM's image
            and prompt encoders are frozen too, so adapters, the mask decoder and the new prompt
            parts train; without one everything else trains.
        stage '3d': the image encoder (adapters included) is frozen; the depth net, fusion, gate,
            mask decoder and new prompt parts train (and the prompt encoder, when not pretrained).
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        for name, param in self.named_parameters():
            if name.startswith(DEPTH_PARTS):
                trainable = stage == "3d"
            elif name.startswith("image_encoder."):
                trainable = stage == "2d" and (not pretrained or is_adapter_parameter(name))
            elif name.startswith("prompt_encoder."):
                trainable = not pretrained
            else:  # mask decoder, no-prompt and label embeddings, channel mixer
                trainable = True
            param.requires_grad_(trainable)

    def parameter_counts(self) -> dict[str, int]:
        """{'trainable': n, 'frozen': n} parameter elements."""
        counts = {"trainable": 0, "frozen": 0}
        for p in self.parameters():
            counts["trainable" if p.requires_grad else "frozen"] += p.numel()
        return counts


def build_model(config: ModelConfig, checkpoint: Path | str | None = None, stage: str = "2d") -> SABModel:
    """A SABModel for `config`, with a SAM-format checkpoint loaded when given (its report in
    `model.checkpoint_report`) and trainable parameters set for `stage`."""
    model = SABModel(config)
    if checkpoint is not None:
        model.checkpoint_report = load_sam_checkpoint(model, checkpoint)
    model.configure_trainable(pretrained=checkpoint is not None, stage=stage)
    return model
