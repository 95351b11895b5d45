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

# Display order of the faults the evaluator produces (fusioncli.eval's registry order; results
# stay torch-free, so the names are written out); others follow alphabetically.
CORRUPTION_ORDER = (
    "rgb_noise", "lidar_noise", "lidar_dropout", "beam_loss", "fov_loss", "fog", "crosstalk",
    "occlusion", "brightness", "darkness", "motion_blur", "misalignment", "desync", "stuck_sensor",
)  # fmt: skip
UNIMODAL = ("rgb-only", "lidar-only")  # what --baseline unimodal picks from
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
    baseline: str | None = None  # set by with_baseline: the long table holds rRA rows

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
            if "mean_accuracy" in curve:  # the fault suite's records (version 2) only
                put(name, "mean_accuracy", math.nan, curve.get("mean_accuracy"))
        put(MEAN, "auc", math.nan, rob.get("mean_auc"))
        put(MEAN, "relative_auc", math.nan, rob.get("mean_relative_auc"))
        if "mra" in rob:
            put(MEAN, "mra", math.nan, rob.get("mra"))
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
    measures = ("accuracy", "auc", "relative_auc", "relative", "mean_accuracy", "mra", "rra")
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


def _config_columns(
    view: RobustnessView,
) -> tuple[str, list[str], list[bool], list[list[str]], list[list[bool]]]:
    """A one-row-per-configuration table's leading columns (the varying fields and n), none
    highlighted: caption, headers, which are numeric, the columns and their best-cell flags."""
    varying, caption = split_fields(view.configs, view.fields)
    headers, numeric, columns = field_columns(view.configs, varying)
    headers.append("n")
    numeric.append(True)
    columns.append([str(int(n)) for n in view.configs["n"]])
    best = [[False] * len(view.configs) for _ in columns]
    return caption, headers, numeric, columns, best


def missing_display(view: RobustnessView) -> DisplayTable | None:
    """Accuracy (%) with one modality replaced by zeros, per configuration; None without data."""
    long = view.long
    if not long["corruption"].isin(MISSING_KINDS).any():
        return None
    caption, headers, numeric, columns, best = _config_columns(view)
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


def fault_means(view: RobustnessView) -> pd.DataFrame:
    """Per configuration (rows, ``view.configs`` order) and fault (columns): accuracy (%) averaged
    over the severities above 0 -- the fault's robust accuracy -- and ``mra``, its mean over the
    faults (the accuracy over every (fault, severity > 0) cell). NaN where a configuration has no
    figure. Computed from the per-severity means, so it works for every record version."""
    long = view.long
    points = long[(long["measure"] == "accuracy") & long["corruption"].isin(view.corruptions)]
    points = points[points["severity"].to_numpy(dtype="float64") > 0]
    table = points.groupby(["config", "corruption"])["pct_mean"].mean().unstack("corruption")
    table = table.reindex(index=range(len(view.configs)), columns=view.corruptions)
    table["mra"] = table[view.corruptions].mean(axis=1, skipna=False)
    return table


def _same_except_strategy(view: RobustnessView, i: int, j: int) -> bool:
    others = [f for f in view.fields if f != "strategy"]
    a, b = view.configs.iloc[i], view.configs.iloc[j]
    return all(format_value_or_none(a[f]) == format_value_or_none(b[f]) for f in others)


def format_value_or_none(value: object) -> str:
    return "<none>" if is_missing(value) else str(value)


def baseline_configs(view: RobustnessView, baseline: str) -> list[int | None]:
    """For each configuration, the index of its baseline configuration, or None.

    ``baseline`` is a strategy name, or ``unimodal``: of ``rgb-only`` / ``lidar-only``, the one
    with the higher mRA. The baseline of a configuration agrees with it on every other grouped
    field (same data, settings and training); a baseline is its own baseline (rRA 0).
    """
    if "strategy" not in view.fields:
        raise BadInputError("--baseline names a strategy: group by strategy (drop --group-by or include strategy)")
    names = UNIMODAL if baseline == "unimodal" else (baseline,)
    strategies = view.configs["strategy"].astype(str).tolist()
    if not any(s in names for s in strategies):
        raise BadInputError(
            f"--baseline {baseline}: no selected configuration with robustness results has "
            + ("strategy rgb-only or lidar-only" if baseline == "unimodal" else f"strategy {baseline}"),
            hint=f"strategies with robustness results: {', '.join(sorted(set(strategies)))}",
        )
    mra = fault_means(view)["mra"].to_numpy(dtype="float64")
    found: list[int | None] = []
    for i in range(len(view.configs)):
        candidates = [
            j
            for j, s in enumerate(strategies)
            if s in names and _same_except_strategy(view, i, j) and np.isfinite(mra[j])
        ]
        found.append(max(candidates, key=lambda j: mra[j]) if candidates else None)
    return found


def with_baseline(view: RobustnessView, baseline: str) -> RobustnessView:
    """``view`` with relative robust accuracy against ``baseline`` added to its long table.

    MultiCorrupt's convention: per fault, ``rRA = sum_s acc(model, s) / sum_s acc(baseline, s) - 1``
    over the severities above 0 (rows ``measure = rra``, one per fault, in %), and their mean over
    faults (``corruption = mean``). Means over seeds are compared (the baseline's runs need not
    share seeds); rows without a matching baseline get none.
    """
    means = fault_means(view)
    partner = baseline_configs(view, baseline)
    rows: list[dict[str, Any]] = []
    for i, j in enumerate(partner):
        if j is None:
            continue
        ratios = []
        for fault in view.corruptions:
            own, base = float(means.at[i, fault]), float(means.at[j, fault])
            if not (math.isfinite(own) and math.isfinite(base)) or base <= 0:
                continue
            ratios.append((fault, 100.0 * (own / base - 1.0)))
        if not ratios:
            continue
        fields = {f: view.configs.iloc[i][f] for f in view.fields}
        for fault, value in [*ratios, (MEAN, float(np.mean([v for _, v in ratios])))]:
            rows.append(
                {"config": i, **fields, "n": int(view.configs.iloc[i]["n"]), "corruption": fault, "measure": "rra",
                 "severity": math.nan, "pct_mean": value, "pct_std": math.nan, "pct_ci95_lo": math.nan,
                 "pct_ci95_hi": math.nan}
            )  # fmt: skip
    long = pd.concat([view.long, pd.DataFrame(rows, columns=view.long.columns)], ignore_index=True)
    return RobustnessView(fields=view.fields, configs=view.configs, long=long, report=view.report, baseline=baseline)


def matrix_display(view: RobustnessView) -> DisplayTable:
    """The configuration x fault matrix: robust accuracy (%) per fault (mean over severities > 0),
    clean accuracy, mRA and, with a baseline, mean rRA; the best per column highlighted."""
    means = fault_means(view)
    caption, headers, numeric, columns, best = _config_columns(view)

    def add(header: str, values: list[float]) -> None:
        headers.append(header)
        numeric.append(True)
        columns.append(["-" if math.isnan(v) else format_stat(v, None, 1) for v in values])
        best.append(_best(values))

    clean = [_cell(view.long, i, CLEAN, "accuracy") for i in range(len(view.configs))]
    add("clean", [math.nan if r is None else float(r["pct_mean"]) for r in clean])
    for fault in view.corruptions:
        add(fault, [float(v) for v in means[fault]])
    add("mRA", [float(v) for v in means["mra"]])
    if view.baseline is not None:
        rra = [_cell(view.long, i, MEAN, "rra") for i in range(len(view.configs))]
        add(f"rRA vs {view.baseline}", [math.nan if r is None else float(r["pct_mean"]) for r in rra])
    rows = [list(r) for r in zip(*columns)]
    notes = [
        "accuracy (%) under each fault, mean over severities 0.25-1 and over seeds; mRA = mean over faults "
        "(`fusioncli faults` lists them)"
        + (
            f"; rRA = mean over faults of (accuracy / {view.baseline}'s accuracy - 1), in % (MultiCorrupt)"
            if view.baseline is not None
            else ""
        )
    ]
    return DisplayTable(
        headers=headers, rows=rows, best=[list(r) for r in zip(*best)], numeric=numeric, caption=caption, notes=notes
    )


def machine_frame(view: RobustnessView) -> pd.DataFrame:
    """The csv / json rows: the tidy table with config fields first, without the internal index."""
    return machine_columns(view.long.drop(columns=["config"]), per_run=False)


CURVES_TITLE = "Accuracy under corruption"
MISSING_TITLE = "Missing modality"
MATRIX_TITLE = "Robust accuracy per fault"


def render_robustness(view: RobustnessView, fmt: str) -> str | list[Table]:
    """The view in ``fmt``: rich Tables for ``table`` (one or two), text for the other formats."""
    if fmt == "csv":
        return to_csv(machine_frame(view))
    if fmt == "json":
        return to_json(machine_frame(view))
    shown = [
        (MATRIX_TITLE, matrix_display(view)),
        (CURVES_TITLE, curves_display(view)),
        (MISSING_TITLE, missing_display(view)),
    ]
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
