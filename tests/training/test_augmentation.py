"""Each augmentation changes what it should and nothing else."""
import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import spearmanr

from sabnet.training.augmentation import (BlurAugmentation, BrightnessAugmentation, ContrastAugmentation,
                                          GammaAugmentation, NoiseAugmentation, SeededCompose,
                                          SequenceAugmentation, SpatialAugmentation, default_augmentations)

S = 64
H, W = 40, 48  # real pixels per sample; the rest of the 64 x 64 frame is padding


def make_batch(seed=0, n=4):
    """A batch like the loader's: a bright disc of label 1 and a dim bar of label 2 on a textured
    background, z-scored over the real pixels, padded with zeros."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    seg = np.zeros((n, 1, S, S), np.int16)
    data = np.zeros((n, 1, S, S), np.float32)
    attention = np.zeros((n, 1, S, S), np.float32)
    for b in range(n):
        disc = (yy - 18) ** 2 + (xx - 20) ** 2 <= 8 ** 2
        bar = (yy > 30) & (yy < 35) & (xx > 8) & (xx < 40)
        seg[b, 0, :H, :W] = np.where(disc, 1, np.where(bar, 2, 0))
        image = 1.0 + 2.0 * disc + 0.5 * bar + 0.3 * np.sin(xx / 3.0) + 0.1 * rng.normal(size=(H, W))
        data[b, 0, :H, :W] = (image - image.mean()) / image.std()
        attention[b, 0, :H, :W] = disc * 0.9
    hw = np.tile([H, W], (n, 1))
    return {"data": data, "seg": seg, "attention": attention, "slice_hw": hw, "batch_index": 0}


def run(transform, batch, seed=0):
    return SeededCompose([transform], seed)(**batch)


INTENSITY = [BrightnessAugmentation(p_per_sample=1.0), ContrastAugmentation(p_per_sample=1.0),
             GammaAugmentation(p_per_sample=1.0), NoiseAugmentation(p_per_sample=1.0),
             BlurAugmentation(p_per_sample=1.0), SequenceAugmentation(p_per_sample=1.0)]


@pytest.mark.parametrize("transform", INTENSITY, ids=lambda t: type(t).__name__)
def test_intensity_transforms_change_the_image_only_and_keep_the_padding_zero(transform):
    before = make_batch()
    after = run(transform, make_batch())
    assert not np.allclose(after["data"][:, :, :H, :W], before["data"][:, :, :H, :W])
    np.testing.assert_array_equal(after["seg"], before["seg"])
    np.testing.assert_array_equal(after["attention"], before["attention"])
    assert not after["data"][:, :, H:].any() and not after["data"][:, :, :, W:].any()
    assert "rng" not in after


def test_probability_zero_leaves_the_batch_unchanged():
    before = make_batch()
    for transform in [BrightnessAugmentation(p_per_sample=0.0), SequenceAugmentation(p_per_sample=0.0),
                      SpatialAugmentation(p_rotation=0.0, p_scale=0.0)]:
        after = run(transform, make_batch())
        for key in ("data", "seg", "attention"):
            np.testing.assert_array_equal(after[key], before[key])


def content(batch, b=0):
    return batch["data"][b, 0, :H, :W]


def test_brightness_multiplies_and_contrast_stretches_about_the_mean_within_the_old_range():
    before = make_batch()
    bright = run(BrightnessAugmentation(p_per_sample=1.0, multiplier=(1.2, 1.2)), make_batch())
    np.testing.assert_allclose(content(bright), 1.2 * content(before), rtol=1e-5)
    flat = run(ContrastAugmentation(p_per_sample=1.0, factor=(0.5, 0.5)), make_batch())
    assert content(flat).std() == pytest.approx(0.5 * content(before).std(), rel=1e-3)
    assert content(flat).mean() == pytest.approx(content(before).mean(), abs=1e-5)
    steep = run(ContrastAugmentation(p_per_sample=1.0, factor=(2.0, 2.0)), make_batch())
    assert content(steep).min() >= content(before).min() - 1e-6 and content(steep).max() <= content(before).max() + 1e-6


def test_gamma_keeps_the_order_mean_and_spread_but_bends_the_histogram():
    before = make_batch()
    after = run(GammaAugmentation(p_per_sample=1.0, gamma=(1.5, 1.5)), make_batch())
    assert spearmanr(content(before).ravel(), content(after).ravel())[0] > 0.999
    assert content(after).mean() == pytest.approx(content(before).mean(), abs=1e-4)
    assert content(after).std() == pytest.approx(content(before).std(), rel=1e-4)
    assert not np.allclose(content(after), content(before), atol=0.05)


def test_noise_adds_the_drawn_amount_and_blur_removes_fine_detail():
    before = make_batch()
    noisy = run(NoiseAugmentation(p_per_sample=1.0, sigma=(0.2, 0.2)), make_batch())
    assert (content(noisy) - content(before)).std() == pytest.approx(0.2, rel=0.05)
    blurred = run(BlurAugmentation(p_per_sample=1.0, sigma_px=(1.0, 1.0)), make_batch())
    detail = lambda x: np.abs(ndimage.laplace(x)).mean()  # noqa: E731
    assert detail(content(blurred)) < 0.5 * detail(content(before))


@pytest.mark.parametrize("branch, sign", [("monotonic", 1), ("inversion", -1)])
def test_sequence_remapping_keeps_or_reverses_the_intensity_order(branch, sign):
    weights = {"p_monotonic": float(branch == "monotonic"), "p_fold": 0.0, "p_inversion": float(branch == "inversion")}
    for seed in range(5):
        before = make_batch(seed)
        after = run(SequenceAugmentation(p_per_sample=1.0, **weights), make_batch(seed), seed)
        x, y = content(before).ravel(), content(after).ravel()
        assert sign * spearmanr(x, y)[0] > 0.98  # percentile clipping ties the extremes
        assert y.mean() == pytest.approx(0.0, abs=1e-4) and y.std() == pytest.approx(1.0, rel=1e-3)


def test_sequence_fold_maps_mid_intensities_high_and_the_brightest_low():
    """T1 to STIR-like: the bright disc (marrow) turns dark, the mid-grey background turns bright."""
    for seed in range(5):
        before = make_batch(seed)
        fold = SequenceAugmentation(p_per_sample=1.0, p_monotonic=0, p_fold=1, p_inversion=0)
        after = run(fold, make_batch(seed), seed)
        x, y = content(before).ravel(), content(after).ravel()
        low, high = x < np.percentile(x, 10), x > np.percentile(x, 90)
        assert spearmanr(x[low], y[low])[0] > 0.5  # rising below the fold
        assert spearmanr(x[high], y[high])[0] < -0.5  # falling above it
        disc = make_batch(seed)["seg"][0, 0, :H, :W].ravel() == 1
        assert y[disc].mean() < y[~disc].mean()  # the brightest tissue is now darker than the rest


def test_spatial_transform_moves_image_labels_and_attention_together_and_keeps_label_values():
    before = make_batch()
    after = run(SpatialAugmentation(p_rotation=1.0, p_scale=1.0), make_batch(), seed=3)
    assert not np.array_equal(after["seg"], before["seg"])
    assert set(np.unique(after["seg"])) == {0, 1, 2}
    for b in range(4):
        disc = after["seg"][b, 0] == 1
        bright = after["data"][b, 0] > 1.0  # the disc is the bright structure
        assert (disc & bright).sum() / disc.sum() > 0.9 and (disc & bright).sum() / bright.sum() > 0.9
        attended = after["attention"][b, 0] > 0.45
        assert (disc & attended).sum() / (disc | attended).sum() > 0.85


def test_rotation_turns_the_content_about_its_own_centre():
    batch = make_batch(n=1)
    batch["seg"][:] = 0
    batch["seg"][0, 0, 16:24, 20:28] = 1  # a square at the centre of the 40 x 48 content (19.5, 23.5)
    batch["seg"][0, 0, 2:4, 2:4] = 2      # and a marker near the top-left corner
    after = run(SpatialAugmentation(rotation_deg=(90, 90), p_rotation=1.0, p_scale=0.0), batch)
    square = np.argwhere(after["seg"][0, 0] == 1).mean(axis=0)
    np.testing.assert_allclose(square, [19.5, 23.5], atol=0.6)  # about the frame centre it would move ~11 px
    marker = np.argwhere(after["seg"][0, 0] == 2).mean(axis=0) - [19.5, 23.5]
    np.testing.assert_allclose(marker, [21.0, -17.0], atol=0.6)  # (row, col) offset (-17, -21) turned by 90 deg


def test_the_default_pipeline_keeps_shapes_types_and_label_values():
    before = make_batch(n=8)
    after = SeededCompose(default_augmentations(), seed=0)(**make_batch(n=8))
    for key in ("data", "seg", "attention"):
        assert after[key].shape == before[key].shape and after[key].dtype == before[key].dtype
    assert np.isfinite(after["data"]).all()
    assert set(np.unique(after["seg"])) <= {0, 1, 2}
    assert not np.array_equal(after["data"], before["data"])


def test_a_field_of_view_crop_moves_image_and_labels_together_to_the_top_left():
    from sabnet.training.spatial_augmentation import FieldOfViewCrop

    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[:64, :64]
    data = np.zeros((6, 1, 64, 64), np.float32)
    data[:, 0, :50, :40] = (rows * 100 + cols + 1)[:50, :40]  # each pixel says where it came from
    seg = np.zeros((6, 1, 64, 64), np.int16)
    seg[:, 0, 20:30, 10:20] = 2
    original_seg = seg.copy()
    batch = FieldOfViewCrop(p_per_sample=1.0, min_fraction=0.5, keep_labels=True)(
        data=data, seg=seg, slice_hw=np.array([[50, 40]] * 6), rng=rng)
    for b, (h, w) in enumerate(batch["slice_hw"]):
        assert 25 <= h <= 50 and 20 <= w <= 40
        assert not batch["data"][b, :, h:].any() and not batch["data"][b, :, :, w:].any()  # the rest is 0
        r0, c0 = divmod(int(batch["data"][b, 0, 0, 0]) - 1, 100)  # where the window started
        np.testing.assert_array_equal(batch["data"][b, 0, :h, :w], (rows * 100 + cols + 1)[r0:r0 + h, c0:c0 + w])
        np.testing.assert_array_equal(batch["seg"][b, 0, :h, :w], original_seg[b, 0, r0:r0 + h, c0:c0 + w])
        assert (batch["seg"][b] == 2).any()  # a crop that would lose the label is not taken
    assert len({tuple(x) for x in batch["slice_hw"]}) > 1


def test_the_default_field_of_view_crop_takes_small_windows_that_may_cut_labels_away():
    """Small fields of view (down to 30 % of each side) are what users bring: by default the crop
    takes them even where a label leaves the window, and what is left keeps its values."""
    from sabnet.training.spatial_augmentation import FieldOfViewCrop

    n = 40
    rows, cols = np.mgrid[:64, :64]
    data = np.zeros((n, 1, 64, 64), np.float32)
    data[:, 0, :60, :60] = (rows * 100 + cols + 1)[:60, :60]
    seg = np.zeros((n, 1, 64, 64), np.int16)
    for value, r in enumerate((2, 22, 42), start=1):
        seg[:, 0, r:r + 12, 20:40] = value
    original = seg.copy()
    batch = FieldOfViewCrop(p_per_sample=1.0)(data=data, seg=seg, slice_hw=np.array([[60, 60]] * n),
                                              rng=np.random.default_rng(5))
    sides = batch["slice_hw"]
    assert sides.min() >= 18 and sides.min() < 30  # windows reach below half of a side
    lost = 0
    for b, (h, w) in enumerate(sides):
        r0, c0 = divmod(int(batch["data"][b, 0, 0, 0]) - 1, 100)
        np.testing.assert_array_equal(batch["seg"][b, 0, :h, :w], original[b, 0, r0:r0 + h, c0:c0 + w])
        assert not batch["seg"][b, :, h:].any() and not batch["seg"][b, :, :, w:].any()
        lost += len({1, 2, 3} - set(np.unique(batch["seg"][b])))
    assert lost > 0  # some windows leave a label out entirely


def test_end_cut_moves_what_is_left_and_may_cut_whole_labels_away():
    """A field of view that ends elsewhere: rows cut from the top or from the bottom, the rest moved
    to the top-left unchanged (image, labels and attention alike), 0 elsewhere; a label in the cut
    rows vanishes, the others keep their values."""
    from sabnet.training.spatial_augmentation import EndCut

    rows, cols = np.mgrid[:64, :64]
    n = 24
    data = np.zeros((n, 1, 64, 64), np.float32)
    data[:, 0, :50, :40] = (rows * 100 + cols + 1)[:50, :40]  # each pixel says where it came from
    seg = np.zeros((n, 1, 64, 64), np.int16)
    seg[:, 0, 2:8, 10:20] = 1     # the first vertebra from the top
    seg[:, 0, 24:30, 10:20] = 2   # one in the middle, never cut
    seg[:, 0, 43:48, 10:20] = 3   # the last one at the bottom
    attention = (seg > 0).astype(np.float32)
    original = seg.copy()
    batch = EndCut(p_top=0.5, p_bottom=0.5, max_fraction=0.4)(
        data=data, seg=seg, attention=attention, slice_hw=np.array([[50, 40]] * n), rng=np.random.default_rng(1))
    cut_top, cut_bottom = [], []
    for b, (h, w) in enumerate(batch["slice_hw"]):
        cut = 50 - h
        assert 0 <= cut <= 20 and w == 40
        top = int(batch["data"][b, 0, 0, 0]) - 1 == cut * 100  # the first row kept tells where the cut was
        start = cut if top else 0
        (cut_top if top and cut else cut_bottom if cut else []).append(cut)
        np.testing.assert_array_equal(batch["data"][b, 0, :h, :w], (rows * 100 + cols + 1)[start:start + h, :40])
        np.testing.assert_array_equal(batch["seg"][b, 0, :h, :w], original[b, 0, start:start + h, :40])
        np.testing.assert_array_equal(batch["attention"][b, 0], batch["seg"][b, 0] > 0)
        assert not batch["data"][b, :, h:].any() and not batch["seg"][b, :, h:].any()
        assert (batch["seg"][b] == 2).any()
        if top and cut >= 8:
            assert not (batch["seg"][b] == 1).any() and (batch["seg"][b] == 3).any()
        if not top and cut >= 7:
            assert not (batch["seg"][b] == 3).any() and (batch["seg"][b] == 1).any()
    assert any(c >= 8 for c in cut_top) and any(c >= 7 for c in cut_bottom)  # both ends lose a label somewhere
    with pytest.raises(ValueError):
        EndCut(p_top=0.8, p_bottom=0.5)
