"""Preprocessing: raw case -> slice-frame arrays at the planned spacing, normalized, stored for training."""
