"""``fusioncli report --robustness``: accuracy under corruption per configuration, over seeds.

Reads each run's ``record["robustness"]`` (stored flat as ``robustness_json``; the format is
produced by :func:`fusioncli.eval.robustness.evaluate_robustness`) and aggregates over the
seeds of each configuration, in the order and grouping of the main report (``--group-by``,
``--sort``, ``--filter`` apply). Per configuration it shows, for each corruption, the accuracy
at each severity (0 = clean), the area under accuracy vs severity on [0, 1] (AUC; MultiBench's
relative robustness uses this area) and AUC / clean accuracy (relative AUC), then the accuracy
with one modality replaced by zeros.

The machine form (csv / json) is one tidy row per (configuration, corruption, measure,
severity) with ``pct_mean``, ``pct_std``, ``pct_ci95_lo``, ``pct_ci95_hi`` in percent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

from fusioncli.errors import BadInputError
from fusioncli.results.aggregate import Report, build_report
from fusioncli.results.render import (
    DisplayTable,
    field_columns,
    format_stat,
    is_missing,
    machine_columns,
    split_fields,
    to_csv,
    to_json,
    to_latex,
    to_markdown,
    to_rich,
)
from fusioncli.results.stats import mean_ci95

# Display order of the corruptions the evaluator produces; others follow alphabetically.
CORRUPTION_ORDER = ("rgb_noise", "lidar_noise", "lidar_dropout")
MISSING_KINDS = ("rgb_missing", "lidar_missing")
MEAN = "mean"  # the row of mean AUC / mean relative AUC over corruptions
CLEAN = "clean"
HINT = "evaluate robustness while training: `fusioncli sweep --robustness ...` (or `fusioncli train --robustness`)"
_DIGITS = 2


@dataclass
class RobustnessView:
    """The robustness detail of the configurations in a report.

    ``configs``: one row per configuration with robustness results (group fields, n, seeds,
    run_ids), in report order. ``long``: the tidy table, its ``config`` column indexing
    ``configs``. ``report``: the main report the view was built from (filters, failures).
    """

    fields: list[str]
    configs: pd.DataFrame
    long: pd.DataFrame
    report: Report

    @property
    def corruptions(self) -> list[str]:
        curves = self.long[self.long["measure"] == "accuracy"]["corruption"]
        return [c for c in dict.fromkeys(curves) if c not in (CLEAN, *MISSING_KINDS)]


def has_robustness(runs: pd.DataFrame) -> bool:
    """True when some finished run in ``runs`` carries robustness results."""
    return "robustness_json" in runs.columns and bool(
        (runs["robustness_json"].notna() & (runs["status"] == "finished")).any()
    )


def _parse(text: object) -> dict[str, Any] | None:
    if is_missing(text):
        return None
    try:
        value = json.loads(str(text))
    except ValueError:
        return None  # a hand-edited row must not stop the report
    return value if isinstance(value, dict) else None


def _number(value: object) -> float:
    """A stored value as a float; None, strings and non-finite values become NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def _sort_corruptions(names: Collection[str]) -> list[str]:
    known = [c for c in CORRUPTION_ORDER if c in names]
    return known + sorted(c for c in names if c not in CORRUPTION_ORDER)


def _as_dict(value: object) -> dict[str, Any]:
    """``value`` if it is a dict, else an empty one (a record's parts may be missing or malformed)."""
    return value if isinstance(value, dict) else {}


def _collect(records: list[dict[str, Any]]) -> dict[tuple[str, str, float], list[float]]:
    """(corruption, measure, severity) -> one value (fraction) per run that has it."""
    cells: dict[tuple[str, str, float], list[float]] = {}

    def put(corruption: str, measure: str, severity: float, value: object) -> None:
        cells.setdefault((corruption, measure, severity), []).append(_number(value))

    for rob in records:
        put(CLEAN, "accuracy", math.nan, rob.get("clean_accuracy"))
        curves = _as_dict(rob.get("curves"))
        for name, curve in curves.items():
            if not isinstance(curve, dict):
                continue
            severities = curve.get("severities") or []
            accuracies = curve.get("accuracy") or []
            for severity, acc in zip(severities, accuracies):
                # Rounded: 0.25 read back from JSON must land in the same cell on every run.
                put(name, "accuracy", round(_number(severity), 6), acc)
            put(name, "auc", math.nan, curve.get("auc"))
            put(name, "relative_auc", math.nan, curve.get("relative_auc"))
        put(MEAN, "auc", math.nan, rob.get("mean_auc"))
        put(MEAN, "relative_auc", math.nan, rob.get("mean_relative_auc"))
        missing = _as_dict(rob.get("missing"))
        for kind in MISSING_KINDS:
            entry = _as_dict(missing.get(kind))
            put(kind, "accuracy", math.nan, entry.get("accuracy"))
            put(kind, "relative", math.nan, entry.get("relative"))
    return cells


def _order(key: tuple[str, str, float], curves: list[str]) -> tuple[int, int, float]:
    corruption, measure, severity = key
    groups = [CLEAN, *curves, MEAN, *MISSING_KINDS]
    rank = groups.index(corruption) if corruption in groups else len(groups)
    measures = ("accuracy", "auc", "relative_auc", "relative")
    return (rank, measures.index(measure) if measure in measures else 9, -1.0 if math.isnan(severity) else severity)


def build_robustness(
    runs: pd.DataFrame,
    *,
    group_by: Sequence[str] | None = None,
    sort: str | None = None,
    filters: Sequence[str] = (),
) -> RobustnessView:
    """Aggregate the robustness results of the runs a report would show, per configuration.

    Raises :class:`BadInputError` when none of the selected finished runs has robustness results.
    """
    report = build_report(runs, group_by=group_by, sort=sort, filters=filters)
    fields = report.fields
    by_id = runs.set_index("run_id")
    config_rows: list[dict[str, Any]] = []
    long_rows: list[dict[str, Any]] = []
    for _, group in report.table.iterrows():
        run_ids = [r for r in str(group["run_ids"]).split(",") if r in by_id.index]
        stored = [(rid, _parse(by_id.at[rid, "robustness_json"])) for rid in run_ids]
        parsed = [(rid, rob) for rid, rob in stored if rob is not None]
        if not parsed:
            continue
        index = len(config_rows)
        seeds = sorted({int(by_id.at[rid, "seed"]) for rid, _ in parsed if not is_missing(by_id.at[rid, "seed"])})
        config_rows.append(
            {
                **{f: group[f] for f in fields},
                "n": len(parsed),
                "seeds": ",".join(str(s) for s in seeds),
                "run_ids": ",".join(rid for rid, _ in parsed),
            }
        )
        cells = _collect([rob for _, rob in parsed])
        curves = _sort_corruptions({c for c, m, _ in cells if m == "auc" and c != MEAN})
        for key in sorted(cells, key=lambda k: _order(k, curves)):
            values = 100.0 * np.asarray(cells[key], dtype="float64")
            values = values[np.isfinite(values)]
            if not len(values):
                continue  # e.g. an older record without the missing-modality part
            mean, lo, hi = mean_ci95(values)
            corruption, measure, severity = key
            long_rows.append(
                {
                    "config": index,
                    **{f: group[f] for f in fields},
                    "n": len(values),
                    "corruption": corruption,
                    "measure": measure,
                    "severity": severity,
                    "pct_mean": mean,
                    "pct_std": float(values.std(ddof=1)) if len(values) >= 2 else math.nan,
                    "pct_ci95_lo": lo,
                    "pct_ci95_hi": hi,
                }
            )
    if not config_rows:
        raise BadInputError(f"none of the {report.n_selected} selected runs has robustness results", hint=HINT)
    columns = ["config", *fields, "n", "corruption", "measure", "severity", "pct_mean", "pct_std"]
    columns += ["pct_ci95_lo", "pct_ci95_hi"]
    return RobustnessView(
        fields=list(fields),
        configs=pd.DataFrame(config_rows, columns=[*fields, "n", "seeds", "run_ids"]),
        long=pd.DataFrame(long_rows, columns=columns),
        report=report,
    )


def _cell(
    long: pd.DataFrame, config: int, corruption: str, measure: str, severity: float | None = None
) -> pd.Series | None:
    rows = long[(long["config"] == config) & (long["corruption"] == corruption) & (long["measure"] == measure)]
    if severity is not None:
        rows = rows[np.isclose(rows["severity"].to_numpy(dtype="float64"), severity)]
    return rows.iloc[0] if len(rows) else None


def _stat(row: pd.Series | None, *, spread: bool = True) -> str:
    """``mean ± CI half-width`` of a long-table row (mean only for n = 1 or ``spread=False``)."""
    if row is None:
        return "-"
    half = 0.5 * (row["pct_ci95_hi"] - row["pct_ci95_lo"]) if spread else None
    return format_stat(row["pct_mean"], half, _DIGITS)


def _severity_label(severity: float) -> str:
    return f"{severity:g}"


def curves_display(view: RobustnessView) -> DisplayTable:
    """Accuracy (%) per corruption and severity, AUC and relative AUC, one row per config x corruption."""
    long = view.long
    curves = view.corruptions
    severities = sorted(
        {float(s) for s in long[(long["measure"] == "accuracy") & long["corruption"].isin(curves)]["severity"]}
    )
    varying, caption = split_fields(view.configs, view.fields)
    rows_meta = [(i, c) for i in range(len(view.configs)) for c in [*curves, MEAN]]
    expanded = view.configs.iloc[[i for i, _ in rows_meta]].reset_index(drop=True)
    headers, numeric, columns = field_columns(expanded, varying)
    headers += ["corruption", "n"]
    numeric += [False, True]
    columns.append([c if c != MEAN else "mean (all)" for _, c in rows_meta])
    columns.append([str(int(view.configs.iloc[i]["n"])) for i, _ in rows_meta])
    for severity in severities:
        headers.append(f"sev {_severity_label(severity)}")
        numeric.append(True)
        columns.append(
            ["" if c == MEAN else _stat(_cell(long, i, c, "accuracy", severity), spread=False) for i, c in rows_meta]
        )
    headers += ["AUC (%)", "rel. AUC (%)"]
    numeric += [True, True]
    columns.append([_stat(_cell(long, i, c, "auc")) for i, c in rows_meta])
    columns.append([_stat(_cell(long, i, c, "relative_auc")) for i, c in rows_meta])
    rows = [list(r) for r in zip(*columns)]
    multi = int(view.configs["n"].max()) >= 2
    notes = [
        "accuracy (%) at each corruption severity (sev 0 = clean), mean over seeds; AUC = area under accuracy vs "
        "severity on [0, 1] (MultiBench's relative robustness); rel. AUC = AUC / clean accuracy"
        + ("; ± = 95% CI half-width over seeds (Student t)" if multi else "")
    ]
    return DisplayTable(
        headers=headers,
        rows=rows,
        best=[[False] * len(headers) for _ in rows],
        numeric=numeric,
        caption=caption,
        notes=notes,
    )


def missing_display(view: RobustnessView) -> DisplayTable | None:
    """Accuracy (%) with one modality replaced by zeros, per configuration; None without data."""
    long = view.long
    if not long["corruption"].isin(MISSING_KINDS).any():
        return None
    varying, caption = split_fields(view.configs, view.fields)
    headers, numeric, columns = field_columns(view.configs, varying)
    best: list[list[bool]] = [[False] * len(view.configs) for _ in varying]
    headers.append("n")
    numeric.append(True)
    columns.append([str(int(n)) for n in view.configs["n"]])
    best.append([False] * len(view.configs))
    specs = [
        ("clean acc. (%)", CLEAN, "accuracy"),
        ("RGB missing acc. (%)", "rgb_missing", "accuracy"),
        ("RGB missing rel. (%)", "rgb_missing", "relative"),
        ("LiDAR missing acc. (%)", "lidar_missing", "accuracy"),
        ("LiDAR missing rel. (%)", "lidar_missing", "relative"),
    ]
    for header, corruption, measure in specs:
        found = [_cell(long, i, corruption, measure) for i in range(len(view.configs))]
        means = [math.nan if r is None else float(r["pct_mean"]) for r in found]
        headers.append(header)
        numeric.append(True)
        columns.append([_stat(r) for r in found])
        best.append(_best(means))
    rows = [list(r) for r in zip(*columns)]
    notes = ["one modality replaced by zeros at evaluation; rel. = accuracy / clean accuracy"]
    if int(view.configs["n"].max()) >= 2:
        notes[0] += "; ± = 95% CI half-width over seeds (Student t)"
    return DisplayTable(
        headers=headers,
        rows=rows,
        best=[list(r) for r in zip(*best)],
        numeric=numeric,
        caption=caption,
        notes=notes,
    )


def _best(values: list[float]) -> list[bool]:
    finite = [v for v in values if not math.isnan(v)]
    if len(finite) < 2 or math.isclose(max(finite), min(finite), rel_tol=1e-12, abs_tol=0.0):
        return [False] * len(values)
    top = max(finite)
    return [not math.isnan(v) and math.isclose(v, top, rel_tol=1e-12, abs_tol=0.0) for v in values]


def machine_frame(view: RobustnessView) -> pd.DataFrame:
    """The csv / json rows: the tidy table with config fields first, without the internal index."""
    return machine_columns(view.long.drop(columns=["config"]), per_run=False)


CURVES_TITLE = "Accuracy under corruption"
MISSING_TITLE = "Missing modality"


def render_robustness(view: RobustnessView, fmt: str) -> str | list[Table]:
    """The view in ``fmt``: rich Tables for ``table`` (one or two), text for the other formats."""
    if fmt == "csv":
        return to_csv(machine_frame(view))
    if fmt == "json":
        return to_json(machine_frame(view))
    shown = [(CURVES_TITLE, curves_display(view)), (MISSING_TITLE, missing_display(view))]
    displays = [(title, d) for title, d in shown if d is not None]
    if fmt == "markdown":
        return "\n".join(f"### {title}\n\n{to_markdown(d)}" for title, d in displays)
    if fmt == "latex":
        return "\n".join(f"% {title}\n{to_latex(d)}" for title, d in displays)
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")
    tables = []
    for title, display in displays:
        table = to_rich(display, title=title)
        table.caption = "; ".join(filter(None, [display.caption, *display.notes]))
        table.caption_justify = "left"
        tables.append(table)
    return tables
