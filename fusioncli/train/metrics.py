"""Classification metrics: confusion matrix, accuracy, per-class precision/recall/F1, macro F1;
calibration (ECE, Brier score, NLL, temperature scaling).

The seed notebook logged sklearn's *weighted precision* under the name "F1"; here F1 is the
real thing. ``f1_macro`` is the unweighted mean of the per-class F1 scores, so a class the
model ignores pulls it down even when that class is rare.

Zero division: a class that is never predicted has precision 0, a class with no true samples
has recall 0, and F1 is 0 when precision + recall is 0 (sklearn's ``zero_division=0``).
"""

from __future__ import annotations

import math
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


# -- calibration ---------------------------------------------------------------------------------

ECE_BINS = 15


def _as_float64(logits: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.as_tensor(logits).detach().to("cpu", torch.float64)
    y = torch.as_tensor(labels).detach().flatten().to("cpu", torch.int64)
    if z.dim() != 2 or z.shape[0] != y.numel():
        raise ValueError(f"logits must be (n, classes) for n = {y.numel()} labels, got {tuple(z.shape)}")
    return z, y


def calibration_scores(logits: Any, labels: Any, *, temperature: float = 1.0, bins: int = ECE_BINS) -> dict[str, float]:
    """``ece``, ``brier`` and ``nll`` of softmax(``logits`` / ``temperature``) against ``labels``.

    * ``ece``: expected calibration error over ``bins`` equal-width bins of the top-class
      confidence, ``sum_b |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|`` (Guo et al. 2017);
      bin ``b`` holds confidences in ``(b / bins, (b + 1) / bins]`` (the first also holds 0);
    * ``brier``: mean over samples of ``sum_c (p_c - [y = c])^2`` (0 best, 2 worst);
    * ``nll``: mean cross-entropy in nats (the validation loss, for temperature 1).

    Computed in float64 on the CPU; an empty set gives NaN.
    """
    z, y = _as_float64(logits, labels)
    n = y.numel()
    if n == 0:
        return {"ece": math.nan, "brier": math.nan, "nll": math.nan}
    z = z / temperature
    log_p = torch.log_softmax(z, dim=1)
    p = log_p.exp()
    nll = float(-log_p.gather(1, y.view(-1, 1)).mean())
    onehot = torch.zeros_like(p).scatter_(1, y.view(-1, 1), 1.0)
    brier = float(((p - onehot) ** 2).sum(dim=1).mean())
    conf, pred = p.max(dim=1)
    correct = (pred == y).to(torch.float64)
    index = (torch.ceil(conf * bins).to(torch.int64) - 1).clamp_(0, bins - 1)
    gap = torch.bincount(index, weights=correct - conf, minlength=bins)  # sum of (correct - conf) per bin
    ece = float(gap.abs().sum() / n)  # sum_b |B_b|/n * |mean gap_b| = sum_b |sum gap_b| / n
    return {"ece": ece, "brier": brier, "nll": nll}


def fit_temperature(logits: Any, labels: Any) -> float:
    """The temperature ``T`` minimising the NLL of softmax(logits / T) (Guo et al.'s temperature scaling).

    Golden-section search over ``log T`` in [log 0.05, log 20] (the NLL is convex in 1 / T),
    to a relative precision of about 1e-6; float64 on the CPU. An empty set gives 1.
    """
    z, y = _as_float64(logits, labels)
    if y.numel() == 0:
        return 1.0

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / math.exp(log_t), y))

    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    while hi - lo > 1e-6:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)


def calibration_metrics(logits: Any, labels: Any, *, bins: int = ECE_BINS) -> dict[str, Any]:
    """A run's calibration: raw figures on the whole split, and temperature scaling checked honestly.

    Returns ``{"bins", "ece", "brier", "nll", "temperature", "fit_n", "score_n", "raw_half":
    {ece, brier, nll}, "scaled_half": {ece, brier, nll}}``. The temperature is fitted on the
    even-indexed samples of the split and both the raw and the scaled figures are scored on the
    odd-indexed ones (the same samples, so they compare); the split's order is the data's, so
    both halves hold every class when the split does.
    """
    z, y = _as_float64(logits, labels)
    whole = calibration_scores(z, y, bins=bins)
    fit, score = slice(0, None, 2), slice(1, None, 2)
    temperature = fit_temperature(z[fit], y[fit])
    return {
        "bins": bins,
        **whole,
        "temperature": temperature,
        "fit_n": int(y[fit].numel()),
        "score_n": int(y[score].numel()),
        "raw_half": calibration_scores(z[score], y[score], bins=bins),
        "scaled_half": calibration_scores(z[score], y[score], temperature=temperature, bins=bins),
    }
