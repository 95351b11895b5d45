"""Fusion gain: does a fusion strategy beat the best single sensor trained the same way?

For each fusion configuration of a report whose unimodal baselines (``rgb-only``,
``lidar-only``) were trained on the same data with every other grouped setting equal, the
baseline is the unimodal configuration with the higher mean accuracy, and the gain is the
paired accuracy difference (percentage points) over the seeds both have:

* when both runs of every shared seed recorded which validation samples they got right
  (``val_correct``, records from this version on): the mean over seeds x samples of
  ``correct(fusion) - correct(baseline)``, with a 95 % percentile CI and a two-sided p-value
  from a two-way bootstrap (seeds and validation samples resampled independently, both with
  replacement, :data:`BOOTSTRAP_REPS` resamples, fixed seed) -- so the CI carries the
  seed-to-seed and the sample-to-sample variation;
* otherwise a paired t-test of the accuracies over the shared seeds (needs 2 seeds).

The p-values are Holm-adjusted across the fusion configurations of the report, and a gain is
significant when the adjusted p is below 0.05; others are flagged "no significant gain".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from fusioncli.record import unpack_correct
from fusioncli.results.stats import ALPHA, holm_adjust, paired_test

UNIMODAL = ("rgb-only", "lidar-only")
BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0
BOOTSTRAP_METHOD = f"two-way bootstrap over seeds x validation samples ({BOOTSTRAP_REPS} resamples)"
TTEST_METHOD = "paired t-test over seeds"
GAIN_COLUMNS = (
    "gain_vs", "gain_pts", "gain_ci95_lo", "gain_ci95_hi", "gain_p", "gain_p_holm", "gain_significant",
    "gain_n_seeds", "gain_method",
)  # fmt: skip


def is_missing(value: Any) -> bool:
    """None, NaN or pandas' NA (a cell a run does not have)."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or an array is a value
        return False


def bootstrap_gain(diffs: np.ndarray, *, reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED) -> dict[str, float]:
    """Mean of a (seeds, samples) matrix of paired differences, its 95 % percentile CI and a
    two-sided p-value, by resampling seeds and samples independently with replacement.

    p = min(1, 2 min(1 + #{mean* <= 0}, 1 + #{mean* >= 0}) / (reps + 1)): how rarely the resampled
    means fall on the other side of 0 (with the usual +1 so that p is never 0).
    """
    d = np.asarray(diffs, dtype="float64")
    s, n = d.shape
    rng = np.random.default_rng(seed)
    means = np.empty(reps)
    chunk = max(1, 2_000_000 // max(s * n, 1))
    for start in range(0, reps, chunk):
        k = min(chunk, reps - start)
        si = rng.integers(0, s, size=(k, s))
        ni = rng.integers(0, n, size=(k, n))
        # mean over the resampled seeds of the mean over the resampled samples
        picked = d[si[:, :, None], ni[:, None, :]]  # (k, s, n)
        means[start : start + k] = picked.mean(axis=(1, 2))
    lo, hi = np.percentile(means, [2.5, 97.5])
    below, above = int((means <= 0).sum()), int((means >= 0).sum())
    p = min(1.0, 2 * min(1 + below, 1 + above) / (reps + 1))
    return {"gain": float(d.mean()), "lo": float(lo), "hi": float(hi), "p": p}


def _same(a: Any, b: Any) -> bool:
    if is_missing(a) and is_missing(b):
        return True
    if is_missing(a) or is_missing(b):
        return False
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return str(a) == str(b)


def _pair(runs: pd.DataFrame, fusion_ids: list[str], base_ids: list[str]) -> list[tuple[pd.Series, pd.Series]]:
    """(fusion run, baseline run) per seed both have, seeds ascending (the first run of a seed)."""
    by_seed_a = {int(r["seed"]): r for _, r in runs.loc[fusion_ids].iterrows() if not is_missing(r["seed"])}
    by_seed_b = {int(r["seed"]): r for _, r in runs.loc[base_ids].iterrows() if not is_missing(r["seed"])}
    return [(by_seed_a[s], by_seed_b[s]) for s in sorted(set(by_seed_a) & set(by_seed_b))]


def _per_sample(pairs: list[tuple[pd.Series, pd.Series]]) -> np.ndarray | None:
    """(seeds, samples) matrix of correct(fusion) - correct(baseline), or None when a run lacks it."""
    if "val_correct" not in pairs[0][0].index:
        return None
    rows = []
    for a, b in pairs:
        n_a, n_b = a.get("n_val"), b.get("n_val")
        if is_missing(a["val_correct"]) or is_missing(b["val_correct"]) or is_missing(n_a) or n_a != n_b:
            return None
        n = int(n_a)
        rows.append(
            unpack_correct(str(a["val_correct"]), n).astype("float64") - unpack_correct(str(b["val_correct"]), n)
        )
    return np.stack(rows)


def add_gain(table: pd.DataFrame, runs: pd.DataFrame, fields: Sequence[str]) -> pd.DataFrame:
    """``table`` (an aggregate, one row per configuration) with the :data:`GAIN_COLUMNS` filled for
    fusion rows that have a unimodal baseline among its rows; ``table`` unchanged (no columns added)
    when none has. ``runs`` holds the runs the table aggregates (their ``run_ids``)."""
    if "strategy" not in fields or table.empty:
        return table
    others = [f for f in fields if f != "strategy"]
    strategies = table["strategy"].astype(str).tolist()
    uni = [i for i, s in enumerate(strategies) if s in UNIMODAL]
    if not uni:
        return table
    indexed = runs.set_index("run_id")
    found: dict[int, dict[str, Any]] = {}
    for i, strategy in enumerate(strategies):
        if strategy in UNIMODAL:
            continue
        row = table.iloc[i]
        candidates = [j for j in uni if all(_same(row[f], table.iloc[j][f]) for f in others)]
        if not candidates:
            continue
        j = max(candidates, key=lambda k: float(table.iloc[k]["accuracy_pct_mean"]))
        ids_a = [r for r in str(row["run_ids"]).split(",") if r in indexed.index]
        ids_b = [r for r in str(table.iloc[j]["run_ids"]).split(",") if r in indexed.index]
        pairs = _pair(indexed, ids_a, ids_b)
        if not pairs:
            continue
        diffs = _per_sample(pairs)
        if diffs is not None:
            b = bootstrap_gain(diffs)
            result = {"gain_pts": 100 * b["gain"], "gain_ci95_lo": 100 * b["lo"], "gain_ci95_hi": 100 * b["hi"],
                      "gain_p": b["p"], "gain_method": BOOTSTRAP_METHOD}  # fmt: skip
        else:
            test = paired_test(
                [100 * float(a["val_accuracy"]) for a, _ in pairs], [100 * float(c["val_accuracy"]) for _, c in pairs]
            )
            result = {"gain_pts": test.mean_diff, "gain_ci95_lo": test.ci95[0], "gain_ci95_hi": test.ci95[1],
                      "gain_p": test.p, "gain_method": TTEST_METHOD}  # fmt: skip
        found[i] = {"gain_vs": strategies[j], "gain_n_seeds": len(pairs), **result}
    if not found:
        return table
    order = sorted(found)
    adjusted = holm_adjust([found[i]["gain_p"] for i in order])
    out = table.copy()
    for column in GAIN_COLUMNS:
        out[column] = pd.Series([None] * len(out), dtype="object")
    for i, p_holm in zip(order, adjusted):
        values = {
            **found[i],
            "gain_p_holm": p_holm,
            "gain_significant": bool(not math.isnan(p_holm) and p_holm < ALPHA),
        }
        for column in GAIN_COLUMNS:
            out.at[out.index[i], column] = values[column]
    for column in ("gain_pts", "gain_ci95_lo", "gain_ci95_hi", "gain_p", "gain_p_holm"):
        out[column] = pd.to_numeric(out[column], errors="coerce").astype("float64")
    return out


def gain_cell(row: pd.Series) -> tuple[str, str]:
    """``("+1.23 [-0.50, 2.96] vs rgb-only", "p 0.012" or "no significant gain")`` for a table."""
    if "gain_pts" not in row.index or is_missing(row["gain_pts"]) or math.isnan(float(row["gain_pts"])):
        return "", ""
    lo, hi = float(row["gain_ci95_lo"]), float(row["gain_ci95_hi"])
    interval = "" if math.isnan(lo) else f" [{lo:+.2f}, {hi:+.2f}]"
    text = f"{float(row['gain_pts']):+.2f}{interval} vs {row['gain_vs']}"
    p = float(row["gain_p_holm"])
    if math.isnan(p):
        return text, "no test"
    return text, (f"p {p:.3g}" if bool(row["gain_significant"]) else f"no significant gain (p {p:.2g})")


__all__ = ["BOOTSTRAP_REPS", "GAIN_COLUMNS", "UNIMODAL", "add_gain", "bootstrap_gain", "gain_cell"]
