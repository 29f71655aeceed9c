"""ModelConfig: variants, window choice, JSON round trip, and clear errors for bad settings."""
import json

import pytest

from sabnet.errors import SabnetError
from sabnet.model.config import VARIANTS, ModelConfig, choose_window_size


def test_sam_variants_match_segment_anything_builders():
    assert VARIANTS["vit_b"]["encoder_global_attn_indexes"] == [2, 5, 8, 11]
    assert (VARIANTS["vit_l"]["encoder_embed_dim"], VARIANTS["vit_l"]["encoder_depth"]) == (1024, 24)
    assert (VARIANTS["vit_h"]["encoder_embed_dim"], VARIANTS["vit_h"]["encoder_num_heads"]) == (1280, 16)


def test_window_keeps_sam_at_1024_and_divides_the_grid_elsewhere():
    assert ModelConfig.for_variant("vit_b", 1024).window_size == 14
    assert ModelConfig.for_variant("vit_b", 256).window_size == 16  # 16 x 16 grid: one window
    assert ModelConfig.for_variant("sab_tiny", 512).grid_size == 32
    for grid in (16, 24, 32, 48, 64):
        assert grid % choose_window_size(grid, 0, sam_variant=False) == 0
    assert choose_window_size(24, 384, sam_variant=True) == 12


def test_config_round_trips_through_json():
    config = ModelConfig.for_variant("sab_small", 512, n_outputs=4, n_labels=3, adapter_blocks=[0, 2])
    restored = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert restored.mask_size == 4 * 512 // 16


@pytest.mark.parametrize("settings, words", [
    (dict(output_mode="sigmoid", n_outputs=3), "n_outputs to 1"),
    (dict(image_size=250), "multiple of patch_size"),
    (dict(adapter_blocks=[0, 99]), "adapter_blocks"),
    (dict(output_mode="logits"), "output_mode"),
])
def test_bad_settings_raise_a_message_naming_the_setting(settings, words):
    with pytest.raises(SabnetError, match=words):
        ModelConfig.for_variant("sab_tiny", **settings)


def test_unknown_keys_and_variants_are_refused():
    with pytest.raises(SabnetError, match="unknown key.*depth_chanels"):
        ModelConfig.from_dict({"depth_chanels": [4, 8]})
    with pytest.raises(SabnetError, match="vit_b"):
        ModelConfig.for_variant("vit_x")
