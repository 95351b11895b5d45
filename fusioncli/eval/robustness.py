"""Robustness of a trained model: accuracy on faulty copies of the validation split.

:func:`evaluate_robustness` returns the run record's ``robustness`` dict:

```
{"version": 2, "seed": 0, "clean_accuracy": float,
 "curves":  {name: {"modality": "rgb" | "lidar" | "both",
                    "severities": [0.0, 0.25, 0.5, 0.75, 1.0], "accuracy": [...],
                    "f1_macro": [...], "auc": float, "relative_auc": float,
                    "mean_accuracy": float}},          # every curve fault of the suite
 "missing": {name: {"accuracy": float, "f1_macro": float, "relative": float}},  # rgb_missing, lidar_missing
 "mean_auc": float, "mean_relative_auc": float,
 "mra": float, "mean_relative_accuracy": float}
```

``auc`` is the trapezoid area under accuracy vs severity over [0, 1] -- the area MultiBench's
relative robustness is built on -- and ``relative_auc = auc / clean_accuracy`` (``relative``
likewise for a missing modality; 0 when clean accuracy is 0). A model that ignores a
corruption has relative AUC 1. ``mean_accuracy`` is the accuracy averaged over the severities
above 0 (the fault's robust accuracy); ``mra`` (mean robust accuracy) averages it over the
faults, i.e. the accuracy over every (fault, severity > 0), and ``mean_relative_accuracy`` is
``mra / clean_accuracy`` (MultiCorrupt's mean resistance ability). The relative robust accuracy
against a baseline (``rra``) needs two runs: :mod:`fusioncli.results.robustness` computes it.

Version 1 records (before the fault suite) hold three curves (rgb_noise, lidar_noise,
lidar_dropout) and no ``mra``; their ``mean_auc`` is over those three, so compare mean AUCs of
records of one version only (the report shows each fault separately).

Cost: one inference pass over the validation split per (fault, severity > 0) plus one per
missing modality and one clean pass -- 14 faults x 4 severities + 2 + 1 = 59 passes with the
default suite -- with the whole split on the device, as in training. Severity 0 is the
identity, so every curve reuses the clean pass. (Measured in benchmarks/RESULTS.md.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from fusioncli.config import RunConfig
from fusioncli.data.dataset import PreparedData
from fusioncli.errors import BadInputError
from fusioncli.eval.corruptions import Corruption, get_corruption
from fusioncli.eval.faults import fault_names
from fusioncli.record import RunRecord
from fusioncli.train.engine import channels_last, cudnn_mode, eval_batch_size, predict
from fusioncli.train.loop import RunResult, derived_seed, run_data
from fusioncli.train.metrics import classification_metrics
from fusioncli.train.probes import clock

ROBUSTNESS_VERSION = 2
SEVERITIES = (0.0, 0.25, 0.5, 0.75, 1.0)
CURVES = fault_names()  # the registry's curve faults at import (plugins registered later count too)
MISSING = ("rgb_missing", "lidar_missing")


def trapezoid_auc(severities: Sequence[float], values: Sequence[float]) -> float:
    """Area under ``values`` vs ``severities`` by the trapezoid rule (severities ascending)."""
    if len(severities) != len(values) or len(severities) < 2:
        raise ValueError("need at least two (severity, value) points, as many severities as values")
    area = 0.0
    for (s0, v0), (s1, v1) in zip(zip(severities, values), zip(severities[1:], values[1:])):
        if s1 < s0:
            raise ValueError(f"severities must be ascending (got {list(severities)})")
        area += (s1 - s0) * (v0 + v1) / 2
    return area


def _ratio(value: float, clean: float) -> float:
    return value / clean if clean > 0 else 0.0


def _generator(device: torch.device, seed: int, name: str) -> torch.Generator:
    # One fresh generator per (corruption, severity), seeded by the corruption's name only:
    # every severity of a curve sees the same draws (scaled), and corruptions do not share them.
    return torch.Generator(device=device).manual_seed(derived_seed(seed, f"robustness:{name}"))


def _corrupted(
    corruption: Corruption, severity: float, generator: torch.Generator, rgb: torch.Tensor, xyza: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return corruption.apply(rgb, xyza, severity, generator)


def evaluate_robustness(
    model: nn.Module,
    data: PreparedData,
    cfg: RunConfig,
    *,
    seed: int = 0,
    batch_size: int | None = None,
    faults: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy and macro F1 of ``model`` on faulty copies of ``data``'s validation split.

    ``faults``: the curve faults to evaluate (default: every registered one, registry order).
    ``data`` is the data as trained on (already limited); ``cfg`` the run's config, whose
    device, precision and batch size are used (resolved here if it is not yet); ``batch_size``
    fixes the inference batch instead (default: :func:`~fusioncli.train.engine.eval_batch_size`).
    Inference runs in eval mode without gradients; the model's train/eval mode is restored
    afterwards. Same model, data, seed and device: same numbers.
    """
    cfg = cfg if cfg.is_resolved else cfg.resolve()
    device = torch.device(cfg.device)
    precision = cfg.precision
    # Only the validation split travels, once; batches are slices of it.
    val = channels_last(data.subset(data.val_indices).to(device))
    n = len(val)
    if n == 0:
        raise BadInputError(
            "the dataset has no validation samples", hint="robustness is measured on the validation split"
        )
    step = batch_size if batch_size is not None else eval_batch_size(device, cfg.batch_size)
    names = tuple(faults) if faults is not None else fault_names()
    for name in names:
        if get_corruption(name).kind != "curve":
            raise BadInputError(f"{name!r} is not a fault evaluated over severities (it is a missing modality)")

    def classes(corruption: Corruption | None, severity: float) -> torch.Tensor:
        corrupt = None
        if corruption is not None:
            generator = _generator(device, seed, corruption.name)  # advanced batch by batch, in order
            corrupt = partial(_corrupted, corruption, severity, generator)
        return predict(
            model, val, device=device, precision=precision, batch_size=step, loss=False, inputs=corrupt
        ).classes

    was_training = model.training
    model.eval()
    # Predictions stay on the device until every pass is queued: no sync between passes.
    try:
        with torch.inference_mode(), cudnn_mode(device, precision):
            clean_preds = classes(None, 0.0)
            missing_preds = {name: classes(get_corruption(name), 1.0) for name in MISSING}
            curve_preds = {name: [classes(get_corruption(name), s) for s in SEVERITIES if s > 0] for name in names}
    finally:
        model.train(was_training)

    labels = val.labels.cpu()

    def scores(preds: torch.Tensor) -> tuple[float, float]:
        m = classification_metrics(labels, preds.cpu(), val.class_names)
        return m["accuracy"], m["f1_macro"]

    clean_acc, clean_f1 = scores(clean_preds)
    missing = {}
    for name, preds in missing_preds.items():
        acc, f1 = scores(preds)
        missing[name] = {"accuracy": acc, "f1_macro": f1, "relative": _ratio(acc, clean_acc)}
    curves: dict[str, dict[str, Any]] = {}
    for name, per_severity in curve_preds.items():
        accs, f1s = [clean_acc], [clean_f1]  # severity 0 is the identity: the clean pass
        for preds in per_severity:
            acc, f1 = scores(preds)
            accs.append(acc)
            f1s.append(f1)
        auc = trapezoid_auc(SEVERITIES, accs)
        curves[name] = {
            "modality": get_corruption(name).modality,
            "severities": list(SEVERITIES),
            "accuracy": accs,
            "f1_macro": f1s,
            "auc": auc,
            "relative_auc": _ratio(auc, clean_acc),
            "mean_accuracy": sum(accs[1:]) / len(accs[1:]),
        }
    n = len(curves)
    mra = sum(c["mean_accuracy"] for c in curves.values()) / n if n else math.nan
    return {
        "version": ROBUSTNESS_VERSION,
        "seed": seed,
        "clean_accuracy": clean_acc,
        "curves": curves,
        "missing": missing,
        "mean_auc": sum(c["auc"] for c in curves.values()) / n if n else math.nan,
        "mean_relative_auc": sum(c["relative_auc"] for c in curves.values()) / n if n else math.nan,
        "mra": mra,
        "mean_relative_accuracy": _ratio(mra, clean_acc) if n else math.nan,
    }


def add_robustness(result: RunResult, data: PreparedData, *, seed: int = 0) -> RunRecord:
    """A finished run's record with its robustness evaluated: a new record, ``result`` is left as is.

    ``data`` is the dataset as passed to :func:`fusioncli.train.loop.train_run` (the run's
    ``limit_per_class`` is applied here). The new record's ``robustness`` holds
    :func:`evaluate_robustness`'s dict and its ``timing`` gains ``robustness_seconds`` (wall time
    of the evaluation) -- :meth:`~fusioncli.record.RunRecord.with_robustness`.
    """
    record = result.record
    if not record.is_finished:
        raise ValueError("robustness is measured on finished runs only")
    cfg = record.run_config()
    device = torch.device(cfg.device) if cfg.is_resolved else torch.device(cfg.resolve().device)
    t0 = clock(device)
    robustness = evaluate_robustness(result.model, run_data(cfg, data), cfg, seed=seed)
    return record.with_robustness(robustness, clock(device) - t0)


def summary_rows(robustness: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per condition for a table: ``{"condition", "accuracy", "relative", "auc", "relative_auc"}``.

    Clean first, then each missing modality (accuracy and relative accuracy), then each curve
    (its accuracy at the worst severity, AUC and relative AUC), then the mean over faults
    (mra and mra / clean accuracy as accuracy and relative; mean AUC and mean relative AUC).
    Values that do not apply are None.
    """
    clean = robustness["clean_accuracy"]
    rows: list[dict[str, Any]] = [
        {"condition": "clean", "accuracy": clean, "relative": _ratio(clean, clean), "auc": None, "relative_auc": None}
    ]
    for name, m in robustness["missing"].items():
        rows.append(
            {"condition": name, "accuracy": m["accuracy"], "relative": m["relative"], "auc": None, "relative_auc": None}
        )
    for name, c in robustness["curves"].items():
        rows.append(
            {
                "condition": f"{name} (severity {c['severities'][-1]:g})",
                "accuracy": c["accuracy"][-1],
                "relative": _ratio(c["accuracy"][-1], clean),
                "auc": c["auc"],
                "relative_auc": c["relative_auc"],
            }
        )
    rows.append(
        {
            "condition": "mean over faults",
            "accuracy": robustness.get("mra"),  # version 1 records have no mra
            "relative": robustness.get("mean_relative_accuracy"),
            "auc": robustness["mean_auc"],
            "relative_auc": robustness["mean_relative_auc"],
        }
    )
    return rows


__all__ = [
    "CURVES",
    "MISSING",
    "ROBUSTNESS_VERSION",
    "SEVERITIES",
    "add_robustness",
    "evaluate_robustness",
    "summary_rows",
    "trapezoid_auc",
]
