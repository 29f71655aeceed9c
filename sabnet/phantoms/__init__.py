"""Synthetic MRI phantoms with per-bone labels: anatomy, contrast, acquisition and cohort writing."""
