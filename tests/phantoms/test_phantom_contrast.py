"""Contrast rules a radiologist expects, measured on generated volumes with the tissue map."""
import numpy as np
import pytest
from scipy import ndimage

from sabnet.phantoms.anatomy import Tissue
from sabnet.phantoms.cohort import SEQUENCES, make_phantom
from sabnet.phantoms.contrast import signal_table


def _medians(sequence, seed):
    """Median intensity of each tissue over voxels whose six neighbours share it (no partial volume)."""
    # a hip: femoral shaft with a thick cortex, marrow, bladder (fluid), fat, muscle
    phantom = make_phantom("hip", sequence, seed, plane="coronal", in_plane_spacing_mm=(1.4, 1.4),
                           slice_spacing_mm=(2.0, 2.0), in_plane_size=128, n_slices=24)
    out = {}
    for tissue in (Tissue.FAT, Tissue.MUSCLE, Tissue.FLUID, Tissue.CORTEX, Tissue.MARROW):
        pure = ndimage.binary_erosion(phantom.tissue == tissue)
        assert pure.sum() > 50, (sequence, tissue.name)
        out[tissue] = float(np.median(phantom.image[pure]))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_contrast_rules_hold_on_every_sequence(seed):
    m = {sequence: _medians(sequence, seed) for sequence in SEQUENCES}
    for sequence, t in m.items():
        assert t[Tissue.CORTEX] < 0.5 * t[Tissue.MUSCLE], f"cortex dark on {sequence}"
    t1, t2, pd, stir, gre = (m[s] for s in ("T1", "T2", "PD", "STIR", "GRE"))
    assert t1[Tissue.MARROW] > 1.5 * t1[Tissue.MUSCLE]         # marrow bright on T1
    assert t1[Tissue.FAT] > 1.5 * t1[Tissue.MUSCLE]            # fat bright on T1
    assert t1[Tissue.FLUID] < t1[Tissue.MUSCLE]                # fluid dark on T1
    # fluid bright, marrow intermediate on T2 (margins leave room for the bias field between far-apart tissues)
    assert t2[Tissue.FLUID] > 1.2 * t2[Tissue.MARROW] and t2[Tissue.MARROW] > 1.3 * t2[Tissue.MUSCLE]
    assert pd[Tissue.MARROW] > pd[Tissue.MUSCLE] and pd[Tissue.FLUID] > pd[Tissue.MUSCLE]
    assert stir[Tissue.FLUID] > 2 * stir[Tissue.MUSCLE]        # fluid bright on STIR
    assert stir[Tissue.MARROW] < 0.6 * stir[Tissue.MUSCLE]     # marrow suppressed on STIR
    assert stir[Tissue.FAT] < 0.6 * stir[Tissue.MUSCLE]        # fat suppressed on STIR
    assert gre[Tissue.FLUID] > 2 * gre[Tissue.MUSCLE]


def test_signal_table_jitter_keeps_the_order_of_tissues():
    rng = np.random.default_rng(0)
    for sequence in SEQUENCES:
        plain = signal_table(sequence)
        for _ in range(20):
            jittered = signal_table(sequence, rng)
            assert jittered[Tissue.AIR] == 0
            assert np.all(np.abs(jittered / np.maximum(plain, 1e-9) - 1)[1:] <= 0.08 + 1e-6)
    with pytest.raises(ValueError, match="unknown sequence"):
        signal_table("FLAIR")


def test_intensities_are_scanner_like_integers_with_noise_and_bias():
    phantom = make_phantom("knee", "T1", 2, in_plane_size=64, n_slices=12, in_plane_spacing_mm=(2.0, 2.0))
    image = phantom.image
    assert image.dtype == np.int16 and image.min() >= 0 and 200 < image.max() < 32767
    air = image[phantom.tissue == Tissue.AIR]
    muscle = image[phantom.tissue == Tissue.MUSCLE].astype(float)
    assert 0 < air.mean() < 0.3 * muscle.mean()                # air dark, with a Rician noise floor
    assert muscle.std() > 0.02 * muscle.mean()                 # noise, texture and bias vary a tissue
