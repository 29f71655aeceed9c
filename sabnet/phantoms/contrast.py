"""Tissue -> relative signal per MRI sequence, as a radiologist expects them.

Signals are relative (fat on T1 = 1.0). What the table encodes:
- cortical bone, tendons and fibrocartilage are dark on every sequence;
- marrow (fatty) is bright on T1, intermediate on T2 and PD, suppressed on STIR;
- fluid is dark on T1 and bright on T2, STIR and the T2*-weighted gradient echo (GRE);
- fat is bright on T1 (and on fast-spin-echo T2/PD), suppressed on STIR;
- muscle is intermediate-dark everywhere; hyaline cartilage is intermediate, bright on GRE.
"""
from __future__ import annotations

import numpy as np

from sabnet.phantoms.anatomy import Tissue

SEQUENCES = ("T1", "T2", "PD", "STIR", "GRE")

# Relative signal per tissue, columns in SEQUENCES order.
_SIGNAL = {
    Tissue.AIR:       (0.00, 0.00, 0.00, 0.00, 0.00),
    Tissue.SKIN:      (0.55, 0.40, 0.60, 0.35, 0.45),
    Tissue.FAT:       (1.00, 0.75, 0.90, 0.05, 0.60),
    Tissue.MUSCLE:    (0.33, 0.22, 0.40, 0.22, 0.30),
    Tissue.TENDON:    (0.06, 0.05, 0.07, 0.05, 0.07),
    Tissue.FLUID:     (0.12, 1.00, 0.80, 1.00, 0.90),
    Tissue.CARTILAGE: (0.40, 0.32, 0.58, 0.38, 0.70),
    Tissue.CORTEX:    (0.03, 0.02, 0.03, 0.02, 0.03),
    Tissue.MARROW:    (0.88, 0.45, 0.70, 0.08, 0.35),
    Tissue.DISC:      (0.30, 0.85, 0.62, 0.75, 0.60),
    Tissue.NERVE:     (0.42, 0.48, 0.52, 0.42, 0.40),
    Tissue.VISCERA:   (0.30, 0.50, 0.50, 0.45, 0.40),
}


def signal_table(sequence: str, rng: np.random.Generator | None = None, jitter: float = 0.08) -> np.ndarray:
    """(n_tissues,) float32 relative signal of each `Tissue` on `sequence`.

    With `rng`, each non-air tissue is scaled by a random factor in [1 - jitter, 1 + jitter] so
    cases differ as scanners and protocols do (jitter small enough to keep every rule above).
    """
    if sequence not in SEQUENCES:
        raise ValueError(f"unknown sequence {sequence!r}; use one of {', '.join(SEQUENCES)}")
    column = SEQUENCES.index(sequence)
    table = np.zeros(len(Tissue), dtype=np.float32)
    for tissue, values in _SIGNAL.items():
        table[tissue] = values[column]
    if rng is not None:
        table *= rng.uniform(1 - jitter, 1 + jitter, size=table.shape).astype(np.float32)
    return table
