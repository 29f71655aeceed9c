"""SliceDataLoader and make_augmenter on a small hand-made preprocessed store."""
import numpy as np
import pytest

from sabnet.model.config import ModelConfig
from sabnet.planning.plans import (DepthVolumePlan, NormalizationScheme, Plan, PreprocessingPlan,
                                   TrainingPlan)
from sabnet.preprocessing.case_preprocessing import PreprocessedCase, foreground_locations
from sabnet.preprocessing.resampling import resample_volume
from sabnet.preprocessing.store import PreprocessedStore
from sabnet.training.augmentation import SeededCompose, SpatialAugmentation
from sabnet.training.data_loader import SliceDataLoader, make_augmenter, sampler_from_plan

S = 64  # model input side in these tests


def small_plan(prompt_probability=0.5):
    model = ModelConfig.for_variant("sab_tiny", S, n_outputs=3, n_labels=2, depth_neighbourhood_slices=1)
    return Plan(dataset="Dataset900_Loader", fingerprint_hash="test", labels={"background": 0, "a": 1, "b": 2},
                label_mapping={"1": 1, "2": 2}, channel_names={"0": "MRI"},
                preprocessing=PreprocessingPlan(1.0, "axial", {"default": NormalizationScheme()},
                                                DepthVolumePlan([4.0, 4.0, 4.0], [4, 25, 23], 4.0), {}),
                model=model.to_dict(),
                training=TrainingPlan(batch_size=4, epochs=1, iterations_per_epoch=2, initial_lr=1e-3,
                                      prompt_probability=prompt_probability),
                memory_target_gb=1.0)


def coded_image(n_slices, rows, cols):
    """Each voxel's value encodes where it is: slice * 10000 + row * 100 + col."""
    s, r, c = np.meshgrid(np.arange(n_slices), np.arange(rows), np.arange(cols), indexing="ij")
    return (s * 10000 + r * 100 + c).astype(np.float32)[:, None]


def write_case(store, case_id, labels, image=None, depth_shape=None):
    n_slices, rows, cols = labels.shape
    image = coded_image(n_slices, rows, cols) if image is None else image
    depth_shape = depth_shape or (max(1, n_slices // 4), max(1, rows // 4), max(1, cols // 4))
    depth_labels = resample_volume((labels > 0).astype(np.float32), depth_shape).astype(np.float16)
    properties = {"shape": [n_slices, rows, cols], "depth_shape": list(depth_shape), "sequence": "T1",
                  "location": "knee", "subject": case_id,
                  "slices_with_label": {str(v): np.flatnonzero((labels == v).any(axis=(1, 2))).tolist()
                                        for v in (1, 2)}}
    case = PreprocessedCase(image, labels.astype(np.uint8), resample_volume(image[:, 0] * 0, depth_shape)[None],
                            depth_labels, properties)
    store.write(case_id, case, "stamp", foreground_locations(labels, np.random.default_rng(0)))
    return depth_labels


@pytest.fixture
def store(tmp_path):
    """Three cases:
    small: 40 slices of 40 x 48 px (padded to 64); label 1 on slices 1-3, label 2 on slice 30 only.
    big:   12 slices of 100 x 90 px (cropped to 64); label 2 only, a 6 x 5 px spot in the far corner.
    bone:  16 slices of 100 x 90 px; label 1 a large block on slices 4-11 (for attention maps).
    """
    store = PreprocessedStore(tmp_path / "pp")
    small = np.zeros((40, 40, 48), np.uint8)
    small[1:4, 10:20, 10:30] = 1
    small[30, 25:35, 30:40] = 2
    write_case(store, "small", small)
    big = np.zeros((12, 100, 90), np.uint8)
    big[5:8, 92:98, 84:89] = 2
    write_case(store, "big", big)
    bone = np.zeros((16, 100, 90), np.uint8)
    bone[4:12, 40:90, 30:80] = 1
    write_case(store, "bone", bone, depth_shape=(8, 25, 23))
    return store


def test_small_slices_sit_top_left_and_are_padded_with_zeros(store):
    loader = SliceDataLoader(store, ["small"], small_plan(), 8, foreground_fraction=0.5, seed=0)
    batch = loader.generate_train_batch()
    assert batch["data"].shape == (8, 1, S, S) and batch["data"].dtype == np.float32
    assert batch["seg"].shape == (8, 1, S, S) and batch["seg"].dtype == np.int16
    labels = store.labels("small")
    for b, k in enumerate(batch["slice_index"]):
        assert batch["keys"][b] == "small" and tuple(batch["slice_hw"][b]) == (40, 48)
        np.testing.assert_array_equal(batch["data"][b, 0, :40, :48], coded_image(40, 40, 48)[k, 0])
        np.testing.assert_array_equal(batch["seg"][b, 0, :40, :48], labels[k])
        assert not batch["data"][b, :, 40:].any() and not batch["data"][b, :, :, 48:].any()
        assert not batch["seg"][b, :, 40:].any() and not batch["seg"][b, :, :, 48:].any()


class ReadRecorder:
    """Stands in for a memory map; records every index used and refuses whole-array reads."""

    def __init__(self, array, log):
        self.array, self.log, self.shape = array, log, array.shape

    def __getitem__(self, key):
        self.log.append(key)
        return self.array[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole volume was read")


def test_only_the_sampled_slices_are_read_from_the_memory_maps(store):
    assert isinstance(store.image("big"), np.memmap) and isinstance(store.labels("big"), np.memmap)
    reads = []

    class RecordingStore(PreprocessedStore):
        def image(self, case_id):
            return ReadRecorder(super().image(case_id), reads)

        def labels(self, case_id):
            return ReadRecorder(super().labels(case_id), reads)

    loader = SliceDataLoader(RecordingStore(store.folder), ["small", "big"], small_plan(), 6,
                             foreground_fraction=0.5, seed=1)
    for _ in range(3):
        batch = loader.generate_train_batch()
    assert len(reads) == 2 * 6 * 3  # one image read and one label read per sample
    for key in reads:
        assert isinstance(key[0], int)  # a single slice
    # The last batch's reads are its own slices, each at most S x S pixels.
    for key, k in zip(reads[-12::2], batch["slice_index"]):
        assert key[0] == k and all((s.stop - s.start) <= S for s in key[-2:])


def test_crops_of_large_slices_hold_the_drawn_labels_foreground(store):
    loader = SliceDataLoader(store, ["big"], small_plan(), 8, foreground_fraction=1.0, seed=2)
    for _ in range(10):
        batch = loader.generate_train_batch()
        for b in range(8):
            assert tuple(batch["slice_hw"][b]) == (S, S)
            assert (batch["seg"][b] == 2).any()  # the 6 x 5 px spot in the far corner, every time
            # the crop is a true window of the slice: values continue row by row and column by column
            code = batch["data"][b, 0]
            assert code[0, 0] // 10000 == batch["slice_index"][b]
            np.testing.assert_array_equal(np.diff(code, axis=0), 100)
            np.testing.assert_array_equal(np.diff(code, axis=1), 1)
    # Without forcing, a random crop rarely reaches the corner.
    loader = SliceDataLoader(store, ["big"], small_plan(), 8, foreground_fraction=0.0, seed=2)
    hits = np.mean([(loader.generate_train_batch()["seg"] == 2).any(axis=(1, 2, 3)).mean() for _ in range(10)])
    assert hits < 0.1


def test_the_foreground_share_is_respected_per_batch_and_per_label(store):
    # "small" has foreground on 4 of 40 slices: label 1 on 3 slices, label 2 on one.
    loader = SliceDataLoader(store, ["small"], small_plan(), 4, foreground_fraction=0.5, seed=3)
    has = {1: [], 2: []}
    for _ in range(300):
        seg = loader.generate_train_batch()["seg"]
        present = {v: (seg == v).any(axis=(1, 2, 3)) for v in (1, 2)}
        assert (present[1] | present[2]).sum() >= 2  # floor(4 * 0.5) forced samples in every batch
        for v in (1, 2):
            has[v].extend(present[v])
    # forced half split evenly over the two labels, plus what random slices hit (3/40 and 1/40)
    assert np.mean(has[1]) == pytest.approx(0.25 + 0.5 * 3 / 40, abs=0.04)
    assert np.mean(has[2]) == pytest.approx(0.25 + 0.5 * 1 / 40, abs=0.04)


def test_attention_maps_stay_aligned_with_the_image_through_crops_and_rotation(store, tmp_path):
    attention_dir = tmp_path / "attention"
    attention_dir.mkdir()
    # The depth net's output, here the true share of bone per low-resolution voxel.
    np.save(attention_dir / "bone.npy", store.depth_labels("bone").astype(np.float32))
    loader = SliceDataLoader(store, ["bone"], small_plan(), 8, foreground_fraction=1.0, seed=4,
                             attention_dir=attention_dir)
    spatial = SeededCompose([SpatialAugmentation(p_rotation=1.0, p_scale=1.0)], seed=4)
    dices = []
    for _ in range(4):
        batch = spatial(**loader.generate_train_batch())
        assert batch["attention"].shape == (8, 1, S, S) and batch["attention"].dtype == np.float32
        for b in range(8):
            bone, attended = batch["seg"][b, 0] > 0, batch["attention"][b, 0] > 0.5
            dices.append(2 * (bone & attended).sum() / max(1, bone.sum() + attended.sum()))
    assert min(dices) > 0.6 and np.mean(dices) > 0.8


def test_a_missing_attention_volume_names_the_file(store, tmp_path):
    from sabnet.errors import SabnetError

    loader = SliceDataLoader(store, ["bone"], small_plan(), 2, foreground_fraction=1.0, seed=0,
                             attention_dir=tmp_path / "nowhere")
    with pytest.raises(SabnetError, match="nowhere/bone.npy"):
        loader.generate_train_batch()


def test_augmented_batches_carry_prompts_drawn_from_the_augmented_labels(store):
    plan = small_plan(prompt_probability=1.0)
    loader = SliceDataLoader(store, ["small", "big"], plan, 8, foreground_fraction=1.0, seed=5)
    batch = next(make_augmenter(loader, plan, n_workers=0, seed=5))
    assert batch["seg"].shape == (8, S, S) and batch["seg"].dtype == np.int64
    n_points = sampler_from_plan(plan).n_points
    assert batch["points"].shape == (8, n_points, 2) and batch["point_labels"].shape == (8, n_points)
    assert batch["boxes"].shape == (8, 4) and batch["box_valid"].shape == (8,)
    for b in range(8):  # every forced sample holds foreground, so every sample is prompted
        label = batch["prompt_label"][b]
        assert label in np.unique(batch["seg"][b]) and label > 0
        for (x, y), kind in zip(batch["points"][b].astype(int), batch["point_labels"][b]):
            if kind == 1:
                assert batch["seg"][b, y, x] == label


def test_validation_batches_are_not_augmented(store):
    plan = small_plan()
    loader = SliceDataLoader(store, ["small"], plan, 4, foreground_fraction=0.5, seed=6)
    batch = next(make_augmenter(loader, plan, n_workers=0, seed=6, training=False))
    for b, k in enumerate(batch["slice_index"]):
        np.testing.assert_array_equal(batch["data"][b, 0, :40, :48], coded_image(40, 40, 48)[k, 0])
        np.testing.assert_array_equal(batch["seg"][b, :40, :48], store.labels("small")[k])


def batches(loader, plan, n_workers, seed, n=3):
    augmenter = make_augmenter(loader, plan, n_workers, seed)
    out = [next(augmenter) for _ in range(n)]
    if n_workers:
        augmenter._finish()
    return out


def test_batches_depend_only_on_the_seed_in_process_and_in_a_worker(store):
    plan = small_plan()
    loader = SliceDataLoader(store, ["small", "big", "bone"], plan, 4, foreground_fraction=0.5, seed=0)
    in_process = batches(loader, plan, 0, seed=11)
    again = batches(loader, plan, 0, seed=11)  # a resumed run recreates the augmenter with the same seed
    worker = batches(loader, plan, 1, seed=11)
    other = batches(loader, plan, 0, seed=12)
    for a, b, c in zip(in_process, again, worker):
        assert a["keys"] == b["keys"] == c["keys"]
        for key in ("data", "seg", "points", "point_labels", "boxes", "box_valid", "prompt_label"):
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], c[key])
    assert not all(np.array_equal(a["data"], o["data"]) for a, o in zip(in_process, other))
    assert not np.array_equal(in_process[0]["data"], in_process[1]["data"])
