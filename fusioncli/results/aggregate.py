"""Aggregate runs over seeds: per configuration, n and mean / std / 95 % CI of each metric.

The machine-readable column names carry their unit (``accuracy_pct_mean``,
``train_time_s_std``); renderers map them to display labels (``accuracy (%)``). The std is the
sample standard deviation (ddof = 1), so it is NaN (shown as blank) for a group of one run.
``<metric>_ci95_lo`` / ``<metric>_ci95_hi`` bound the two-sided 95 % confidence interval of the
mean (Student t with n - 1 degrees of freedom, :func:`fusioncli.results.stats.mean_ci95`); they
are NaN for a group of one run, where no interval exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fusioncli.config import CONFIG_FIELDS, DATA_LIMIT_FIELDS, NUMERIC_CONFIG_FIELDS
from fusioncli.errors import BadInputError
from fusioncli.record import FINISHED
from fusioncli.results.gain import add_gain
from fusioncli.results.stats import mean_ci95

MIB = 2**20


@dataclass(frozen=True)
class Metric:
    """One reported quantity: its key, display label, how to compute it per run, which is best."""

    key: str  # machine-readable column prefix, unit included
    label: str  # display label, unit included
    source: str  # column of the runs table
    scale: float  # multiply the source by this
    better: str  # "max" or "min"
    digits: int  # decimals in tables
    per_config: bool = False  # constant for a configuration (params): no mean/std split
    highlight: bool = True  # mark the best value in tables
    # Added after stores were first written: a column only when some selected run has the
    # figure, so reports of older stores keep their exact columns (tests/test_compat.py).
    optional: bool = False


METRICS: tuple[Metric, ...] = (
    Metric("accuracy_pct", "accuracy (%)", "val_accuracy", 100.0, "max", 2),
    Metric("f1_macro_pct", "F1 macro (%)", "f1_macro", 100.0, "max", 2),
    # Runs evaluated on another dataset (evaluate --runs --into): accuracy on their own
    # validation split, and the change to the accuracy here (per run, then averaged).
    Metric("own_accuracy_pct", "own val. acc. (%)", "trained_val_accuracy", 100.0, "max", 2),
    Metric("accuracy_change_pts", "Δ acc. (points)", "accuracy_change", 100.0, "max", 2),
    Metric("val_loss", "val loss", "val_loss", 1.0, "min", 4),
    Metric("train_time_s", "train time (s)", "train_seconds", 1.0, "min", 1),
    Metric("peak_gpu_mem_mib", "peak GPU mem (MiB)", "peak_gpu_allocated_bytes", 1.0 / MIB, "min", 0),
    # Host RSS is the training process's lifetime peak, not reset per run (a sweep's later
    # runs inherit earlier peaks), so no "best" is marked for it.
    Metric("peak_host_rss_mib", "peak host RSS (MiB)", "peak_host_rss_bytes", 1.0 / MIB, "min", 0, highlight=False),
    Metric("params_m", "params (M)", "params_total", 1e-6, "min", 3, per_config=True),
    Metric("throughput_samples_per_s", "throughput (samples/s)", "samples_per_s", 1.0, "max", 0),
    # Robustness (runs trained or swept with --robustness; blank columns are hidden in tables).
    # robust AUC: mean over corruptions of the area under accuracy vs severity on [0, 1].
    Metric("robust_auc_pct", "robust AUC (%)", "robust_mean_auc", 100.0, "max", 2),
    Metric("acc_rgb_missing_pct", "acc. RGB missing (%)", "acc_rgb_missing", 100.0, "max", 2),
    Metric("acc_lidar_missing_pct", "acc. LiDAR missing (%)", "acc_lidar_missing", 100.0, "max", 2),
    # mRA: accuracy over every (fault, severity > 0) of the sensor-fault suite.
    Metric("mra_pct", "mRA (%)", "robust_mra", 100.0, "max", 2, optional=True),
    # Calibration on validation (from the last epoch's logits): ECE over 15 equal-width bins,
    # Brier score, NLL; ECE after temperature scaling, scored on the half it was not fitted on.
    Metric("ece_pct", "ECE (%)", "ece", 100.0, "min", 2, optional=True),
    Metric("brier", "Brier", "brier", 1.0, "min", 4, optional=True),
    Metric("nll", "NLL", "nll", 1.0, "min", 4, optional=True),
    Metric("ece_scaled_pct", "ECE after T (%)", "ece_half_scaled", 100.0, "min", 2, optional=True),
    Metric("temperature", "T", "temperature", 1.0, "min", 3, optional=True, highlight=False),
)
METRICS_BY_KEY = {m.key: m for m in METRICS}

# Short names accepted by --sort, besides the full keys and labels.
SORT_ALIASES = {
    "accuracy": "accuracy_pct",
    "acc": "accuracy_pct",
    "f1": "f1_macro_pct",
    "loss": "val_loss",
    "time": "train_time_s",
    "memory": "peak_gpu_mem_mib",
    "gpu_mem": "peak_gpu_mem_mib",
    "rss": "peak_host_rss_mib",
    "params": "params_m",
    "throughput": "throughput_samples_per_s",
    "robust": "robust_auc_pct",
    "robustness": "robust_auc_pct",
    "auc": "robust_auc_pct",
    "rgb_missing": "acc_rgb_missing_pct",
    "lidar_missing": "acc_lidar_missing_pct",
    "mra": "mra_pct",
    "ece": "ece_pct",
    "own": "own_accuracy_pct",
    "change": "accuracy_change_pts",
    "delta": "accuracy_change_pts",
}

# The columns aggregate() writes per (non-constant) metric, after the "<metric>_" prefix.
STAT_SUFFIXES = ("mean", "std", "ci95_lo", "ci95_hi")

# The dataset is part of what a run measured: runs on different data are never averaged
# together unless asked (--group-by without it).
GROUP_FIELDS = (*CONFIG_FIELDS, "dataset_fingerprint")
DEFAULT_GROUP_BY = tuple(f for f in GROUP_FIELDS if f != "seed")


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Only the finished runs (failed ones have no metrics to average)."""
    return runs[runs["status"] == FINISHED].copy()


def active_metrics(runs: pd.DataFrame) -> list[Metric]:
    """The metrics a report of ``runs`` has columns for: every standing one, and each optional
    one that some run has a value of."""
    return [
        m
        for m in METRICS
        if not m.optional or (m.source in runs.columns and pd.to_numeric(runs[m.source], errors="coerce").notna().any())
    ]


def run_metrics(runs: pd.DataFrame, *, faults: bool = False) -> pd.DataFrame:
    """Per run: id, status, config fields, each metric in display units, error and provenance.

    ``faults`` adds, for runs evaluated with the sensor-fault suite, one column per fault and
    severity (``<fault>_sev<s>_acc_pct``) and per fault its mean over severities and its AUC
    (``<fault>_acc_pct``, ``<fault>_auc_pct``): :func:`fault_columns`.
    """
    table = runs[["run_id", "status", *CONFIG_FIELDS]].copy()
    for metric in active_metrics(runs):
        table[metric.key] = pd.to_numeric(runs[metric.source], errors="coerce").astype("float64") * metric.scale
    for extra in ("error", "dataset_fingerprint", "device_name", "finished_at"):
        table[extra] = runs[extra]
    table = table.reset_index(drop=True)
    if faults and "robustness_json" in runs.columns:
        per_fault = fault_columns(runs["robustness_json"].tolist())
        if not per_fault.empty:
            table = pd.concat([table, per_fault], axis=1)
    return table


def fault_columns(robustness: Sequence[object]) -> pd.DataFrame:
    """One row per stored ``robustness_json`` text: accuracy (%) per fault and severity, mean and AUC.

    Only records of the sensor-fault suite (robustness version >= 2) give values; older
    records (three noise curves, before the suite) and runs without robustness give nulls, and
    a list with no suite record at all gives an empty frame (no columns).
    """
    import json
    import math

    rows: list[dict[str, float]] = []
    order: dict[str, None] = {}
    for text in robustness:
        row: dict[str, float] = {}
        try:
            rob = json.loads(str(text)) if isinstance(text, str) else None
        except ValueError:
            rob = None
        if isinstance(rob, dict) and isinstance(rob.get("version"), int) and rob["version"] >= 2:
            for name, curve in (rob.get("curves") or {}).items():
                if not isinstance(curve, dict):
                    continue
                for severity, acc in zip(curve.get("severities") or [], curve.get("accuracy") or []):
                    if isinstance(severity, (int, float)) and severity > 0 and isinstance(acc, (int, float)):
                        row[f"{name}_sev{severity:g}_acc_pct"] = 100.0 * acc
                for key, column in (("mean_accuracy", "acc_pct"), ("auc", "auc_pct")):
                    value = curve.get(key)
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        row[f"{name}_{column}"] = 100.0 * value
        order.update(dict.fromkeys(row))
        rows.append(row)
    if not order:
        return pd.DataFrame(index=range(len(rows)))
    return pd.DataFrame(rows, columns=list(order), dtype="float64")


def check_group_by(group_by: Sequence[str]) -> list[str]:
    """Validate ``--group-by`` fields (config fields, dataset_fingerprint); errors list the known ones."""
    fields = list(dict.fromkeys(group_by))  # keep order, drop repeats
    bad = [f for f in fields if f not in GROUP_FIELDS]
    if bad:
        known = ", ".join(GROUP_FIELDS)
        raise BadInputError([f"--group-by: unknown field {f!r}; known fields: {known}" for f in bad])
    if not fields:
        raise BadInputError("--group-by: give at least one config field")
    return fields


def aggregate(runs: pd.DataFrame, group_by: Sequence[str] = DEFAULT_GROUP_BY) -> pd.DataFrame:
    """One row per configuration (``group_by`` values) over its finished runs.

    Columns: the group fields, ``n`` (runs averaged), ``seeds`` (comma list), ``run_ids``, then
    per metric ``<metric>_mean``, ``<metric>_std`` (ddof = 1) and ``<metric>_ci95_lo`` /
    ``<metric>_ci95_hi`` (95 % t interval of the mean); std and CI are NaN below 2 values.
    Per-configuration constants such as ``params_m`` get a single column.
    """
    fields = check_group_by(group_by)
    per_run = run_metrics(finished_runs(runs))
    metrics = [m for m in METRICS if m.key in per_run.columns]
    columns = [*fields, "n", "seeds", "run_ids"]
    for metric in metrics:
        columns += [metric.key] if metric.per_config else [f"{metric.key}_{s}" for s in STAT_SUFFIXES]
    if per_run.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    # dropna=False: a null field (a data limit = no limit) is a group of its own, not dropped.
    for keys, group in per_run.groupby(fields, dropna=False, sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        row: dict[str, object] = dict(zip(fields, keys))
        row["n"] = len(group)
        row["seeds"] = ",".join(str(s) for s in sorted(group["seed"].dropna().unique()))
        row["run_ids"] = ",".join(sorted(group["run_id"]))
        for metric in metrics:
            values = group[metric.key].to_numpy(dtype="float64")
            values = values[~np.isnan(values)]
            mean, lo, hi = mean_ci95(values)
            if metric.per_config:
                row[metric.key] = mean
                continue
            row[f"{metric.key}_mean"] = mean
            row[f"{metric.key}_std"] = float(values.std(ddof=1)) if len(values) >= 2 else float("nan")
            row[f"{metric.key}_ci95_lo"] = lo
            row[f"{metric.key}_ci95_hi"] = hi
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def value_column(key: str) -> str:
    """The column holding a metric's central value in an aggregate table."""
    metric = METRICS_BY_KEY[key]
    return metric.key if metric.per_config else f"{metric.key}_mean"


def resolve_sort(sort: str | None, *, per_run: bool = False) -> tuple[str, bool]:
    """``--sort`` text -> (column, ascending). Metrics sort best first, config fields ascending.

    Accepts a metric key (``accuracy_pct``), its label (``accuracy (%)``), a short alias
    (``accuracy``, ``time``, ``loss`` ...) or a config field, optionally suffixed ``:asc`` /
    ``:desc`` to force the direction. Default: accuracy, best first.
    """
    text = (sort or "accuracy").strip()
    direction = None
    if ":" in text:
        text, _, direction = text.rpartition(":")
        direction = direction.strip().lower()
        if direction not in ("asc", "desc"):
            raise BadInputError(f"--sort: direction must be 'asc' or 'desc', got {direction!r}")
    by_label = {m.label: m.key for m in METRICS}
    key = SORT_ALIASES.get(text, by_label.get(text, text))
    if key.endswith("_mean") and key[: -len("_mean")] in METRICS_BY_KEY:
        key = key[: -len("_mean")]
    if key in METRICS_BY_KEY:
        column = key if per_run else value_column(key)
        ascending = METRICS_BY_KEY[key].better == "min"
    elif key in (*CONFIG_FIELDS, "n"):
        column, ascending = key, True
    else:
        known = sorted({*SORT_ALIASES, *METRICS_BY_KEY, *CONFIG_FIELDS})
        raise BadInputError(f"--sort: unknown column {text!r}; known: {', '.join(known)}")
    if direction is not None:
        ascending = direction == "asc"
    return column, ascending


def sort_table(table: pd.DataFrame, column: str, ascending: bool) -> pd.DataFrame:
    """Sort by ``column`` with missing values last; ties keep the previous order."""
    if column not in table.columns:
        return table
    return table.sort_values(column, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)


FILTER_KEYS = (*CONFIG_FIELDS, "status", "run_id", "dataset_fingerprint")
_NULL_WORDS = ("none", "null", "")


def parse_filters(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["strategy=late", "lr=1e-4,1e-5"]`` -> [(key, values)]; a comma list means any of them."""
    filters = []
    problems = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"--filter: {item!r} is not KEY=VALUE (e.g. strategy=late)")
        elif key not in FILTER_KEYS:
            problems.append(f"--filter: unknown key {key!r}; known keys: {', '.join(FILTER_KEYS)}")
        else:
            filters.append((key, [v.strip() for v in value.split(",")]))
    if problems:
        raise BadInputError(problems)
    return filters


def _matches(column: pd.Series, key: str, values: Sequence[str]) -> pd.Series:
    mask = pd.Series(False, index=column.index)
    for value in values:
        if value.lower() in _NULL_WORDS or (key in DATA_LIMIT_FIELDS and value.lower() == "all"):
            mask |= column.isna()  # "all" is how reports show an unset data limit
        elif key in NUMERIC_CONFIG_FIELDS:
            try:
                target = float(value)
            except ValueError:
                raise BadInputError(f"--filter: {key} takes a number, got {value!r}") from None
            numbers = pd.to_numeric(column, errors="coerce").astype("float64").to_numpy()
            # lr=1e-4 must match 0.0001 stored as a float: compare with a relative tolerance.
            close = np.isclose(numbers, target, rtol=1e-9, atol=0.0)
            mask |= pd.Series(close & ~np.isnan(numbers), index=column.index)
        else:
            mask |= column.astype("string").eq(value).fillna(False).astype(bool)
    return mask


def filter_runs(runs: pd.DataFrame, filters: Sequence[tuple[str, Sequence[str]]]) -> pd.DataFrame:
    """The runs matching every filter (AND over keys, OR over a key's comma-listed values)."""
    selected = runs
    for key, values in filters:
        selected = selected[_matches(selected[key], key, values)]
    return selected.copy()


@dataclass
class Report:
    """What ``fusioncli report`` shows: the table plus what was left out of it and why."""

    table: pd.DataFrame  # aggregate (one row per group) or run_metrics (one row per run)
    fields: list[str]  # the group-by fields (or all config fields for per-run tables)
    per_run: bool
    n_runs: int  # runs in the store
    n_selected: int  # runs matching the filters
    n_failed: int  # failed runs among the selected (left out of aggregates)
    sort_column: str
    ascending: bool


def build_report(
    runs: pd.DataFrame,
    *,
    group_by: Sequence[str] | None = None,
    sort: str | None = None,
    filters: Sequence[str] = (),
    per_run: bool = False,
) -> Report:
    """Filter, aggregate over seeds (or list runs), and sort: the data behind every format.

    An empty store or a filter matching nothing raises :class:`BadInputError` with a hint.
    """
    if runs.empty:
        raise BadInputError("the results store has no runs yet", hint="run `fusioncli sweep` or `fusioncli demo` first")
    parsed = parse_filters(filters)
    fields = check_group_by(group_by) if group_by else list(DEFAULT_GROUP_BY)
    column, ascending = resolve_sort(sort, per_run=per_run)
    selected = filter_runs(runs, parsed)
    if selected.empty:
        hints = []
        for key, _ in parsed:
            known = sorted({format_value(v) for v in runs[key].dropna().unique()})
            hints.append(f"{key}: {', '.join(known) or '(none)'}")
        raise BadInputError(
            f"no runs match --filter {' '.join(filters)}", hint="values in the store -- " + "; ".join(hints)
        )
    n_failed = int((selected["status"] != FINISHED).sum())
    if per_run:
        table = run_metrics(selected, faults=True)
        fields = list(CONFIG_FIELDS)
    else:
        table = aggregate(selected, fields)
        if table.empty:
            raise BadInputError(
                f"none of the {len(selected)} selected runs finished ({n_failed} failed)",
                hint="see their errors with `fusioncli report --runs`",
            )
        table = add_gain(table, finished_runs(selected), fields)
    table = sort_table(table, column, ascending)
    return Report(
        table=table,
        fields=fields,
        per_run=per_run,
        n_runs=len(runs),
        n_selected=len(selected),
        n_failed=n_failed,
        sort_column=column,
        ascending=ascending,
    )


def format_value(value: object) -> str:
    """A stored value as text for hints (floats without trailing noise)."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
