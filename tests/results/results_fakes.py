"""Test doubles for the report: run records with robustness results and chosen config values.

Importable from tests/results directly, and from tests/cli after putting this folder on sys.path.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweep"))
from sweep_fakes import fake_record  # noqa: E402

from fusioncli.config import RunConfig  # noqa: E402
from fusioncli.record import RunRecord  # noqa: E402

SEVERITIES = [0.0, 0.25, 0.5, 0.75, 1.0]


# Row columns added after the first row files were written (null, or the config default, when a
# row file or record predates them).
NEW_COLUMNS = (
    "modality_dropout",
    "train_per_class",
    "trained_val_accuracy",
    "accuracy_change",
    "robust_mean_auc",
    "robust_mean_relative_auc",
    "acc_rgb_missing",
    "acc_lidar_missing",
    "robust_mra",
    "ece",
    "brier",
    "nll",
    "temperature",
    "ece_half_raw",
    "ece_half_scaled",
    "nll_half_raw",
    "nll_half_scaled",
    "val_correct",
    "robustness_json",
)

def trapezoid(y: list[float], x: list[float]) -> float:
    return sum(0.5 * (y[i] + y[i + 1]) * (x[i + 1] - x[i]) for i in range(len(x) - 1))


def robustness(clean: float, slopes: dict[str, float] | None = None, *, missing: bool = True) -> dict[str, Any]:
    """A ``record["robustness"]`` in the evaluator's format: accuracy falls linearly with severity
    (``clean * (1 - slope * severity)`` per corruption); missing modality keeps 50 % / 70 %."""
    slopes = slopes or {"rgb_noise": 0.4, "lidar_noise": 0.2, "lidar_dropout": 0.1}
    curves = {}
    for name, slope in slopes.items():
        acc = [clean * (1 - slope * s) for s in SEVERITIES]
        auc = trapezoid(acc, SEVERITIES)
        curves[name] = {
            "severities": list(SEVERITIES),
            "accuracy": acc,
            "f1_macro": acc,
            "auc": auc,
            "relative_auc": auc / clean if clean else 0.0,
        }
    result: dict[str, Any] = {
        "version": 1,
        "seed": 0,
        "clean_accuracy": clean,
        "curves": curves,
        "mean_auc": sum(c["auc"] for c in curves.values()) / len(curves),
        "mean_relative_auc": sum(c["relative_auc"] for c in curves.values()) / len(curves),
    }
    if missing:
        result["missing"] = {
            "rgb_missing": {"accuracy": 0.5 * clean, "f1_macro": 0.4, "relative": 0.5},
            "lidar_missing": {"accuracy": 0.7 * clean, "f1_macro": 0.6, "relative": 0.7},
        }
    return result


def record(
    strategy: str = "late",
    seed: int = 0,
    *,
    accuracy: float = 0.9,
    lr: float = 1e-4,
    modality_dropout: float | None = None,
    robust: dict[str, Any] | None = None,
    fingerprint: str = "fake-fingerprint-0001",
    **kwargs: Any,
) -> RunRecord:
    """A finished record (``status="failed"`` in ``kwargs``: a failed one); with
    ``modality_dropout`` the run id is a hash of the config and the fingerprint of its own."""
    extra = {} if modality_dropout is None else {"modality_dropout": modality_dropout}
    cfg = RunConfig(strategy=strategy, seed=seed, lr=lr, epochs=1, device="cpu", precision="fp32", **extra)
    rec = fake_record(cfg, fingerprint, accuracy=accuracy, **kwargs)
    if modality_dropout is not None:
        payload = json.dumps({"config": rec.config, "dataset": fingerprint}, sort_keys=True)
        rec = rec.with_run_id(hashlib.sha256(payload.encode()).hexdigest()[:16])
    if robust is not None:
        rec = rec.with_robustness(robust, seconds=1.0)
    return rec
