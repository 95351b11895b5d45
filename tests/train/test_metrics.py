"""Metrics against a straightforward python-loop reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusioncli.train.metrics import classification_metrics, confusion_matrix

pytestmark = pytest.mark.numeric

# Every metric is a few float64 operations on integer counts: one division (accuracy,
# precision, recall), 2pr / (p + r) on those (F1: 4 more), a mean over at most 5 classes
# (macro F1: 5 more), all on non-negative numbers, so no cancellation. The reference does the
# same operations, possibly summing in another order: each side is within gamma_n =
# n u / (1 - n u) of exact with n <= 10 roundings (u = 2^-53), so they differ by at most
# 2 gamma_10 (4.4e-15). abs=0: a metric that is exactly 0 on one side is 0 on the other.
U64 = 2.0**-53
REL = 2 * 10 * U64 / (1 - 10 * U64)


def close(x: float) -> object:
    return pytest.approx(x, rel=REL, abs=0)


def reference(y_true: list[int], y_pred: list[int], num_classes: int) -> dict:
    """Textbook definitions, one class at a time, zero division -> 0."""
    per_class = []
    for c in range(num_classes):
        tp = sum(1 for t, p in zip(y_true, y_pred) if t == c and p == c)
        fp = sum(1 for t, p in zip(y_true, y_pred) if t != c and p == c)
        fn = sum(1 for t, p in zip(y_true, y_pred) if t == c and p != c)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append((precision, recall, f1, tp + fn))
    accuracy = sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)
    return {"accuracy": accuracy, "f1_macro": sum(c[2] for c in per_class) / num_classes, "per_class": per_class}


def check(y_true: list[int], y_pred: list[int], num_classes: int) -> None:
    names = [f"c{i}" for i in range(num_classes)]
    got = classification_metrics(torch.tensor(y_true), torch.tensor(y_pred), names)
    want = reference(y_true, y_pred, num_classes)
    assert got["accuracy"] == close(want["accuracy"])
    assert got["f1_macro"] == close(want["f1_macro"])
    for name, (precision, recall, f1, support) in zip(names, want["per_class"]):
        row = got["per_class"][name]
        assert row["precision"] == close(precision)
        assert row["recall"] == close(recall)
        assert row["f1"] == close(f1)
        assert row["support"] == support


@st.composite
def labelled(draw: st.DrawFn) -> tuple[list[int], list[int], int]:
    num_classes = draw(st.integers(2, 5))
    n = draw(st.integers(1, 60))
    labels = st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)
    return draw(labels), draw(labels), num_classes


@settings(max_examples=200, deadline=None)
@given(labelled())
def test_matches_reference_on_random_predictions(case: tuple[list[int], list[int], int]) -> None:
    check(*case)


def test_class_never_predicted_scores_zero_not_nan() -> None:
    y_true = [0, 0, 1, 1, 1]
    y_pred = [0, 0, 0, 0, 0]  # class 1 never predicted
    check(y_true, y_pred, 2)
    got = classification_metrics(torch.tensor(y_true), torch.tensor(y_pred), ["cubes", "spheres"])
    assert got["per_class"]["spheres"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    assert got["f1_macro"] == close((2 * 0.4 / 1.4) / 2)  # cubes: p=0.4, r=1


def test_class_absent_from_the_truth() -> None:
    check([0, 0, 0], [0, 1, 0], 2)


def test_macro_f1_is_not_the_seeds_weighted_precision() -> None:
    # The seed logged sklearn's weighted precision as "F1"; on this case they differ clearly.
    y_true = [0] * 8 + [1] * 2
    y_pred = [0] * 10
    got = classification_metrics(torch.tensor(y_true), torch.tensor(y_pred), ["a", "b"])
    weighted_precision = 0.8 * 0.8 + 0.2 * 0.0
    assert weighted_precision == close(0.64)
    assert got["f1_macro"] == close((2 * 0.8 / 1.8) / 2)  # 0.444...
    assert got["f1_macro"] != close(weighted_precision)


def test_confusion_matrix_layout() -> None:
    cm = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 2, 1, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]  # rows = truth, columns = prediction


def test_confusion_matrix_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="labels"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 2)


# -- calibration ----------------------------------------------------------------------------------

from fusioncli.train.metrics import calibration_metrics, calibration_scores, fit_temperature  # noqa: E402


def logits_for(p1: list[float]) -> torch.Tensor:
    """Two-class logits whose softmax gives class 1 probability ``p1`` (float64)."""
    p = torch.tensor(p1, dtype=torch.float64)
    return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)


def test_ece_brier_nll_by_hand() -> None:
    # confidences 0.9 (right), 0.9 (wrong), 0.7, 0.7 (both right): bins 13 and 10 of 15
    logits = logits_for([0.9, 0.9, 0.3, 0.3])
    labels = torch.tensor([1, 0, 0, 0])
    s = calibration_scores(logits, labels)
    # ECE = 2/4 |0.5 - 0.9| + 2/4 |1 - 0.7| = 0.35; Brier (0.02 + 1.62 + 0.18 + 0.18) / 4 = 0.5.
    # Softmax of log-probabilities returns them to a few u64 (log, exp, a sum of 2, a division:
    # < 10 roundings, each relative u64): all within 1e-14 of the exact values.
    assert s["ece"] == pytest.approx(0.35, rel=1e-14, abs=0)
    assert s["brier"] == pytest.approx(0.5, rel=1e-14, abs=0)
    nll = -(math.log(0.9) + math.log(0.1) + 2 * math.log(0.7)) / 4
    assert s["nll"] == pytest.approx(nll, rel=1e-14, abs=0)


def test_a_perfectly_confident_right_model_is_perfectly_calibrated() -> None:
    s = calibration_scores(torch.tensor([[0.0, 50.0], [50.0, 0.0]]), torch.tensor([1, 0]))
    # exp(-50) = 2e-22: below u64 relative to 1, so the top probability rounds to exactly 1; the
    # other is 2e-22, whose square (twice) is the Brier score
    assert s["ece"] == 0.0
    assert s["brier"] == pytest.approx(2 * math.exp(-50) ** 2, rel=1e-12)
    assert s["nll"] == pytest.approx(0.0, abs=1e-21)


def test_temperature_scaling_undoes_overconfidence() -> None:
    # Labels drawn from softmax(z); the model reports 3 z: overconfident by a temperature of 3.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(z, dim=1), 1, generator=g).flatten()
    t = fit_temperature(3 * z, labels)
    # the maximum-likelihood temperature on 20,000 draws: its SE here is about 0.03; 0.15 = 5 SE
    assert t == pytest.approx(3.0, abs=0.15)

    def nll(temp: float) -> float:
        return calibration_scores(3 * z, labels, temperature=temp)["nll"]

    assert nll(t) <= nll(t * 1.01) and nll(t) <= nll(t / 1.01)  # a minimum
    full = calibration_metrics(3 * z, labels)
    assert full["fit_n"] == full["score_n"] == 10_000
    assert full["scaled_half"]["nll"] < full["raw_half"]["nll"]
    assert full["scaled_half"]["ece"] < full["raw_half"]["ece"]
    assert full["nll"] == pytest.approx(nll(1.0), rel=1e-14)


def test_calibration_input_checks() -> None:
    with pytest.raises(ValueError, match="logits must be"):
        calibration_scores(torch.zeros(3, 2), torch.tensor([0, 1]))
    empty = calibration_scores(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    assert all(math.isnan(v) for v in empty.values())
