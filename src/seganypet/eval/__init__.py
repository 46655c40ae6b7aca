"""Evaluation: simulated clicks, Dice/NSD and PET-volume metrics, every method under the same prompts."""

from seganypet.eval.metrics import area_under_curve, dice, equivalent_diameter_mm, false_volumes, nsd, quantity_errors
from seganypet.eval.runner import EvalConfig, run_evaluation, summarise
from seganypet.eval.segmenters import ClassicalSegmenter, ModelSegmenter, make_segmenter

__all__ = ["ClassicalSegmenter", "EvalConfig", "ModelSegmenter", "area_under_curve", "dice", "equivalent_diameter_mm",
           "false_volumes", "make_segmenter", "nsd", "quantity_errors", "run_evaluation", "summarise"]
