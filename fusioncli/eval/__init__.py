"""Evaluation beyond clean validation accuracy: sensor faults and robustness summaries.

:mod:`fusioncli.eval.corruptions` holds the fault registry (``register_corruption``, the public
extension point) and the first five faults; :mod:`fusioncli.eval.faults` registers the rest of
the sensor-fault suite; :mod:`fusioncli.eval.robustness` evaluates a trained model on them and
builds the run record's ``robustness`` dict.
"""

from fusioncli.eval.corruptions import (
    CORRUPTIONS,
    Corruption,
    corruption_names,
    get_corruption,
    register_corruption,
)
from fusioncli.eval.faults import fault_names, fault_table
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
    "fault_names",
    "fault_table",
    "get_corruption",
    "register_corruption",
    "summary_rows",
    "trapezoid_auc",
]
