"""Evaluation: Dice, IoU, HD95 and ASD per case and label, with means per label, location and sequence."""
from sabnet.evaluation.evaluate import (EvaluationResult, evaluate_case, evaluate_folder, list_cases, read_summary,
                                        write)
from sabnet.evaluation.metrics import label_metrics, mask_metrics, missing_distance_mm

__all__ = ["EvaluationResult", "evaluate_case", "evaluate_folder", "list_cases", "read_summary", "write",
           "label_metrics", "mask_metrics", "missing_distance_mm"]
