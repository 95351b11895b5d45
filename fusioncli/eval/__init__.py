"""Evaluation beyond clean validation accuracy: corrupted inputs and robustness summaries.

:mod:`fusioncli.eval.corruptions` holds the corruptions (a registry by name);
:mod:`fusioncli.eval.robustness` evaluates a trained model on them and builds the run record's
``robustness`` dict.
"""

from fusioncli.eval.corruptions import CORRUPTIONS, Corruption, corruption_names, get_corruption
from fusioncli.eval.robustness import (
    CURVES,
    MISSING,
    SEVERITIES,
    add_robustness,
    evaluate_robustness,
    summary_rows,
    trapezoid_auc,
)

__all__ = [
    "CORRUPTIONS",
    "CURVES",
    "MISSING",
    "SEVERITIES",
    "Corruption",
    "add_robustness",
    "corruption_names",
    "evaluate_robustness",
    "get_corruption",
    "summary_rows",
    "trapezoid_auc",
]
