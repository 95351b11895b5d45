"""Classification metrics: confusion matrix, accuracy, per-class precision/recall/F1, macro F1.

The seed notebook logged sklearn's *weighted precision* under the name "F1"; here F1 is the
real thing. ``f1_macro`` is the unweighted mean of the per-class F1 scores, so a class the
model ignores pulls it down even when that class is rare.

Zero division: a class that is never predicted has precision 0, a class with no true samples
has recall 0, and F1 is 0 when precision + recall is 0 (sklearn's ``zero_division=0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> torch.Tensor:
    """``(C, C)`` int64 counts; row = true class, column = predicted class."""
    t = torch.as_tensor(y_true).flatten().to("cpu", torch.int64)
    p = torch.as_tensor(y_pred).flatten().to("cpu", torch.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.numel()} labels, y_pred {p.numel()}")
    for name, values in (("y_true", t), ("y_pred", p)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    nonzero = den > 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), torch.zeros_like(num))


def classification_metrics(y_true: Any, y_pred: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro F1 and per-class precision/recall/F1/support as plain Python numbers.

    Returns ``{"accuracy", "f1_macro", "per_class": {name: {"precision", "recall", "f1",
    "support"}}}``; the layout of the run record's ``metrics``.
    """
    num_classes = len(class_names)
    cm = confusion_matrix(y_true, y_pred, num_classes).to(torch.float64)
    tp = cm.diagonal()
    predicted = cm.sum(dim=0)
    support = cm.sum(dim=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    total = cm.sum()
    accuracy = float(tp.sum() / total) if total > 0 else 0.0
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {"accuracy": accuracy, "f1_macro": float(f1.mean()) if num_classes else 0.0, "per_class": per_class}
