"""Inference: predicting cases with an ensemble of folds, prompts, and mapping back to the input grid."""
