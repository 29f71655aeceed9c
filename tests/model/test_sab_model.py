"""SABModel: shapes per variant and size, the split API, prompts, the gated depth fusion, freezing."""
import pytest
import torch

from sabnet.model.config import ModelConfig
from sabnet.model.depth_branch import pad_to_input
from sabnet.model.prompts import Prompts
from sabnet.model.sab_model import SABModel, build_model


def small_model(seed=0, **settings):
    torch.manual_seed(seed)
    config = ModelConfig.for_variant("sab_tiny", settings.pop("image_size", 128), **settings)
    return SABModel(config).eval()


def randomise_new_parts(model):
    """Stand-in for training: zero-initialised parts (adapters' up-projections, label embeddings,
    the gate) get non-zero values so that their effect can be seen."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adapter_" in name or "label_embed" in name:
                p.normal_(0, 0.2)


@pytest.mark.parametrize("variant, size", [("sab_tiny", 256), ("sab_tiny", 512), ("sab_small", 256),
                                           ("sab_small", 512), ("vit_b", 256)])
def test_forward_shapes_on_cpu(variant, size):
    torch.manual_seed(0)
    config = ModelConfig.for_variant(variant, size, n_outputs=3, n_labels=2)
    model = SABModel(config).eval()
    grid = size // config.patch_size
    with torch.no_grad():
        embeddings = model.encode(torch.randn(1, 1, size, size))
        logits = model.decode(embeddings)
        full = model.upsample_logits(logits, (size - 30, size - 7))
    assert embeddings.embedding.shape == (1, config.prompt_embed_dim, grid, grid)
    assert embeddings.detail.shape == (1, config.prompt_embed_dim // 8, 4 * grid, 4 * grid)
    assert logits.shape == (1, 3, 4 * grid, 4 * grid)
    assert full.shape == (1, 3, size - 30, size - 7)
    assert torch.isfinite(full).all()


@pytest.mark.parametrize("variant, forward_sizes", [("vit_b", (512, 1024)), ("vit_l", (1024,)), ("vit_h", (1024,))])
def test_sam_variant_shapes_at_256_512_1024_on_meta_tensors(variant, forward_sizes):
    """The large variants are built on the meta device (shapes only, no memory or compute). A meta
    forward costs ~2 s for vit_h, so vit_l/vit_h run it at 1024 only; their parameter shapes are
    checked at every size."""
    for size in (256, 512, 1024):
        config = ModelConfig.for_variant(variant, size)
        grid, window = size // 16, config.window_size
        with torch.device("meta"):
            model = SABModel(config)
        blocks = model.image_encoder.blocks
        assert model.image_encoder.pos_embed.shape == (1, grid, grid, config.encoder_embed_dim)
        global_block, windowed_block = config.encoder_global_attn_indexes[0], 0
        assert blocks[global_block].attn.rel_pos_h.shape[0] == 2 * grid - 1
        assert blocks[windowed_block].attn.rel_pos_w.shape[0] == 2 * window - 1
        if size in forward_sizes:
            with torch.device("meta"):
                embeddings = model.encode(torch.empty(2, 1, size, size))
                logits = model.decode(embeddings)
            assert embeddings.embedding.shape == (2, 256, grid, grid)
            assert embeddings.detail.shape == (2, 32, 4 * grid, 4 * grid)
            assert logits.shape == (2, 2, 4 * grid, 4 * grid)


def test_state_dict_keeps_sam_names_and_adds_new_parts_under_their_own():
    from segment_anything.modeling import ImageEncoderViT  # noqa: F401  (the class SAM's names come from)

    model = small_model()
    keys = set(model.state_dict())
    assert "image_encoder.blocks.0.attn.qkv.weight" in keys
    assert "image_encoder.blocks.0.adapter_attn.down.weight" in keys
    assert "mask_decoder.transformer.layers.1.adapter_mlp.up.weight" in keys
    assert "mask_decoder.transformer.layers.1.mlp.lin1.weight" in keys
    assert {"depth_fusion.gate", "no_prompt_embed.weight", "label_embed.weight"} <= keys


def test_multichannel_input_is_mixed_onto_three_channels():
    model = small_model(in_channels=2)
    with torch.no_grad():
        out = model(torch.randn(1, 2, 128, 128))
    assert out.shape == (1, 2, 128, 128)
    with pytest.raises(ValueError, match=r"\(B, 2, 128, 128\)"):
        model.encode(torch.randn(1, 1, 128, 128))


def test_a_new_fusion_block_makes_3d_mode_equal_2d_mode_and_a_trained_one_changes_it():
    model = small_model()
    images = torch.randn(2, 1, 128, 128)
    probabilities = torch.rand(1, 1, 12, 32, 32)
    with torch.no_grad():
        embeddings = model.encode(images)
        attention = pad_to_input(model.slice_attention(probabilities, torch.tensor([3.0, 7.5]), (100, 120)), 128)
        two_d = model.decode(embeddings)
        three_d = model.decode(embeddings, attention=attention)
        assert torch.equal(two_d, three_d)  # the block's last convolution starts at zero
        model.depth_fusion.block[-1].weight.normal_(0, 0.2)
        assert not torch.allclose(model.decode(embeddings, attention=attention), two_d, atol=1e-4)
        model.depth_fusion.gate.fill_(0.0)  # the gate scales the block's whole contribution
        assert torch.equal(model.decode(embeddings, attention=attention), two_d)


def test_a_fusion_block_of_older_sabnet_is_restarted_and_a_trained_one_kept():
    model = small_model()
    fusion = model.depth_fusion
    assert not fusion.restart_if_stuck()  # a new block
    with torch.no_grad():
        fusion.gate.fill_(0.0)  # older sabnet's start: gate 0 in front of a random block
        fusion.block[-1].weight.normal_(0, 0.2)
    assert fusion.restart_if_stuck()
    assert fusion.gate.item() == 1.0 and not fusion.block[-1].weight.any()
    with torch.no_grad():
        fusion.block[-1].weight.normal_(0, 0.2)  # trained: kept
        fusion.gate.fill_(0.7)
    assert not fusion.restart_if_stuck() and fusion.gate.item() == pytest.approx(0.7)


def test_each_kind_of_prompt_changes_the_object_and_the_label_the_automatic_output():
    model = small_model(n_outputs=3, n_labels=2)
    randomise_new_parts(model)
    with torch.no_grad():
        embeddings = model.encode(torch.randn(1, 1, 128, 128))
        automatic = model.decode(embeddings)
        auto_label_2 = model.decode(embeddings, label=torch.tensor([2]))
        point = Prompts(label=torch.tensor([1]), points=torch.tensor([[[40.0, 60.0]]]), point_labels=torch.tensor([[1]]))
        moved = Prompts(label=torch.tensor([1]), points=torch.tensor([[[90.0, 20.0]]]), point_labels=torch.tensor([[1]]))
        negative = Prompts(label=torch.tensor([1]), points=torch.tensor([[[40.0, 60.0]]]), point_labels=torch.tensor([[0]]))
        other_label = Prompts(label=torch.tensor([2]), points=point.points, point_labels=point.point_labels)
        box = Prompts(label=torch.tensor([1]), boxes=torch.tensor([[10.0, 20.0, 70.0, 90.0]]))
        mask = point.with_mask(torch.randn(1, 1, model.config.mask_size, model.config.mask_size) * 5)
        objects = [model.decode_object(embeddings, p) for p in (point, moved, negative, other_label, box, mask)]
    assert automatic.shape == (1, 3, 32, 32) and objects[0].shape == (1, 1, 32, 32)
    assert not torch.allclose(automatic, auto_label_2, atol=1e-4)
    for i, out in enumerate(objects):
        for other in objects[i + 1:]:
            assert not torch.allclose(out, other, atol=1e-4)
    with pytest.raises(ValueError, match="decode for automatic samples"):
        model.decode_object(embeddings, Prompts(label=torch.tensor([1])))


def test_a_sample_gives_the_same_output_whatever_else_is_in_its_batch():
    model = small_model()
    randomise_new_parts(model)
    grid = model.config.grid_size
    embeddings = torch.randn(3, 64, grid, grid)
    mixed = Prompts(label=torch.tensor([1, 1, 1]),
                    points=torch.tensor([[[7.0, 8.0], [0.0, 0.0]], [[30.0, 40.0], [5.0, 9.0]], [[3.0, 4.0], [0.0, 0.0]]]),
                    point_labels=torch.tensor([[1, -1], [1, 0], [1, -1]]),
                    boxes=torch.tensor([[0.0, 0, 0, 0], [1.0, 2, 80, 90], [0.0, 0, 0, 0]]),
                    box_valid=torch.tensor([False, True, False]))
    with torch.no_grad():
        together = model.decode_object(embeddings, mixed)
        alone = [model.decode_object(embeddings[i:i + 1], mixed[[i]]) for i in range(3)]
        automatic = model.decode(embeddings)
        automatic_alone = model.decode(embeddings[1:2])
    for i in range(3):
        torch.testing.assert_close(together[i:i + 1], alone[i], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(automatic[1:2], automatic_alone, rtol=1e-4, atol=1e-5)


def test_too_many_points_or_a_wrong_mask_size_are_refused():
    model = small_model()
    embeddings = torch.zeros(1, 64, model.config.grid_size, model.config.grid_size)
    many = Prompts(label=torch.tensor([1]), points=torch.zeros(1, 7, 2), point_labels=torch.ones(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="max_prompt_points"):
        model.decode_object(embeddings, many)
    with pytest.raises(ValueError, match="32, 32"):
        model.decode_object(embeddings, Prompts(label=torch.tensor([1]), mask=torch.zeros(1, 1, 64, 64)))


def test_without_checkpoint_everything_but_the_unused_depth_branch_trains():
    model = build_model(ModelConfig.for_variant("sab_tiny", 128))
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("depth_net.", "depth_fusion.")) for n in frozen)
    counts = model.parameter_counts()
    assert counts["frozen"] == sum(p.numel() for n, p in model.named_parameters() if n in frozen)
    assert counts["trainable"] + counts["frozen"] == sum(p.numel() for p in model.parameters())


def test_stage_3d_trains_the_depth_branch_and_decoder_with_the_encoder_frozen():
    model = small_model(depth_threshold=0.0)  # keep every probability, whatever the random depth net says
    model.configure_trainable(pretrained=True, stage="3d")
    images, volume = torch.randn(2, 1, 128, 128), torch.randn(1, 1, 12, 32, 32)
    with torch.no_grad():
        model.depth_fusion.block[-1].weight.normal_(0, 0.1)  # as after some training: gradients reach the block's input
    probabilities = model.depth_probabilities(volume)
    attention = pad_to_input(model.slice_attention(probabilities, torch.tensor([2.0, 9.0]), (128, 128)), 128)
    model(images, attention=attention).logsumexp(1).mean().backward()
    for name, p in model.named_parameters():
        if name.startswith("image_encoder.") or name.startswith("prompt_encoder."):
            assert p.grad is None, name
    assert model.depth_fusion.gate.grad is not None
    assert model.depth_fusion.block[0].weight.grad.abs().sum() > 0
    assert model.depth_net.head.weight.grad.abs().sum() > 0  # kept probabilities pass gradients back
    assert model.class_tokens.weight.grad is not None
