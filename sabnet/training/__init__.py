"""Training: splits, data pipeline, the two-stage trainer, checkpoints, fine-tuning."""
