"""Registration between MRI sequences of one exam, and label transfer across them.

`register` (rigid then affine, Mattes mutual information) in `rigid_affine.py`;
`super_resolve_labels` (thick-slice labels on a finer grid, taught by their own image) in
`slice_super_resolution.py`; `carry_labels` in `label_carrying.py`; refinement on the fixed image in `label_refinement.py`; `alignment_quality`
and `transfer_labels` (one pair) in `label_transfer.py`; pairing and transfer over a raw cohort in
`cohort.py`.
"""
from sabnet.registration.cohort import TransferPair, pairs_by_sequence, read_pairs, transfer_cohort
from sabnet.registration.label_carrying import carry_labels
from sabnet.registration.label_transfer import (DEFAULT_MIN_QUALITY, Quality, TransferResult, alignment_quality,
                                                transfer_labels)
from sabnet.registration.rigid_affine import Registration, body_mask, register
from sabnet.registration.slice_super_resolution import super_resolve_labels

__all__ = ["DEFAULT_MIN_QUALITY", "Quality", "Registration", "TransferPair", "TransferResult", "alignment_quality",
           "body_mask", "carry_labels", "pairs_by_sequence", "read_pairs", "register", "super_resolve_labels",
           "transfer_cohort", "transfer_labels"]
