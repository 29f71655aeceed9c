"""Depth branch: the 3D net's shapes, slice attention maps on hand-made probabilities, the padding
helpers, and one depth-net run per volume in a per-case flow."""
import numpy as np
import pytest
import torch

from sabnet.model.config import ModelConfig
from sabnet.model.depth_branch import attention_to_grid, pad_to_input
from sabnet.model.sab_model import SABModel
from sabnet.io.slice_frame import depth_positions
from sabnet.model.depth_branch import (DepthNet, in_plane_reduction, pooling_strides,
                                      slice_attention_map)


def test_depth_net_keeps_the_volume_shape_and_does_not_pool_thin_axes():
    assert pooling_strides((6, 64, 64), 3) == [[1, 2, 2], [1, 2, 2]]
    assert pooling_strides((32, 64, 64), 3) == [[2, 2, 2], [2, 2, 2]]
    net = DepthNet([16, 32, 64], (6, 64, 64), grid_size=16)
    assert net(torch.randn(2, 1, 6, 40, 52)).shape == (2, 1, 6, 40, 52)


def test_depth_net_works_near_the_embedding_grid_resolution():
    assert in_plane_reduction((32, 64, 64), grid_size=16) == 4  # 64 -> 16 voxels across
    assert in_plane_reduction((32, 64, 64), grid_size=32) == 2
    assert in_plane_reduction((32, 64, 64), grid_size=64) == 1
    assert in_plane_reduction((32, 50, 70), grid_size=16) == 2  # 50 / 4 would give 13 < 16


def test_attention_sums_thresholded_probabilities_over_the_neighbourhood():
    # slices 0..9; bone (p = 0.9) in slices 2 and 3 at pixel (1, 1); p = 0.3 everywhere else
    prob = torch.full((1, 1, 10, 4, 4), 0.3)
    prob[0, 0, 2:4, 1, 1] = 0.9
    maps = slice_attention_map(prob, torch.tensor([2.0, 5.0, 0.0, 2.5]), (4, 4), threshold=0.5, half_width=1)
    assert maps.shape == (4, 1, 4, 4)
    assert maps.min() >= 0 and maps.max() <= 1
    assert maps[:, 0, 0, 0].abs().max() == 0  # 0.3 is below the threshold everywhere
    # slice 2: neighbours 1, 2, 3 -> (0 + 0.9 + 0.9) / 3;  slice 5: 4, 5, 6 -> 0
    assert maps[0, 0, 1, 1] == pytest.approx(0.6)
    assert maps[1, 0, 1, 1] == 0
    # slice 0: neighbour -1 lies outside the volume, so (0 + 0) / 2 over slices 0 and 1
    assert maps[2, 0, 1, 1] == 0
    # slice 2.5: positions 1.5, 2.5, 3.5 -> (0.45 + 0.9 + 0.45) / 3, linear between slices
    assert maps[3, 0, 1, 1] == pytest.approx(0.6)


def test_attention_is_resampled_edge_to_edge_and_padded_like_the_image():
    prob = torch.zeros(1, 1, 3, 8, 8)
    prob[..., :, :4] = 1.0  # left half of the field of view
    maps = slice_attention_map(prob, torch.tensor([1.0]), (32, 48), threshold=0.5, half_width=1)
    assert maps.shape == (1, 1, 32, 48)
    # columns 0..3 of 8 cover pixels 0..23 of 48; bilinear blending only near the edge at 24
    assert maps[0, 0, :, :20].min() == 1 and maps[0, 0, :, 28:].max() == 0
    assert 0 < maps[0, 0, 0, 23] < 1
    padded = pad_to_input(maps, 64)
    assert padded.shape == (1, 1, 64, 64) and padded[..., 32:, :].abs().max() == 0
    assert torch.equal(padded[..., :32, :48], maps)
    grid = attention_to_grid(padded, 8)  # 8 x 8 patches of 8 x 8 pixels
    assert grid.shape == (1, 1, 8, 8)
    assert grid[0, 0, 0, 0] == 1 and grid[0, 0, 0, 7] == 0 and grid[0, 0, 5, 0] == 0
    with pytest.raises(ValueError, match="pad_to_input"):
        attention_to_grid(maps, 8)


def test_depth_positions_match_the_extents_of_both_volumes():
    # 40 full slices over 10 low-res slices: full slices 0..3 share low-res slice 0, centred on it
    positions = depth_positions([0, 1, 2, 3, 39], 40, 10)
    assert positions == pytest.approx([-0.375, -0.125, 0.125, 0.375, 9.375])
    assert depth_positions(np.arange(7), 7, 7) == pytest.approx(np.arange(7))


def test_per_slice_volumes_are_accepted_for_mixed_batches():
    prob = torch.zeros(2, 1, 5, 4, 4)
    prob[1] = 1.0
    maps = slice_attention_map(prob, torch.tensor([2.0, 2.0]), (4, 4), threshold=0.5, half_width=2)
    assert maps[0].max() == 0 and maps[1].min() == 1


def test_a_case_runs_the_depth_net_once_whatever_its_number_of_slices(monkeypatch):
    torch.manual_seed(0)
    model = SABModel(ModelConfig.for_variant("sab_tiny", 64, depth_volume_shape=[8, 16, 16])).eval()
    calls = []
    original = model.depth_net.forward
    monkeypatch.setattr(model.depth_net, "forward", lambda v: calls.append(v.shape) or original(v))
    volume, slices = torch.randn(1, 1, 8, 16, 16), torch.randn(20, 1, 64, 64)
    with torch.no_grad():
        prob = model.depth_probabilities(volume)  # once per case
        outputs = []
        for start in range(0, 20, 8):  # slices in batches
            batch = slices[start:start + 8]
            positions = torch.as_tensor(depth_positions(range(start, start + len(batch)), 20, 8))
            attention = pad_to_input(model.slice_attention(prob, positions, (64, 64)), 64)
            outputs.append(model(batch, attention=attention))
    assert len(calls) == 1
    assert torch.cat(outputs).shape == (20, 2, 64, 64)
