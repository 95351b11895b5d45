"""Render an aggregate (or per-run) table as a rich table, markdown, csv, json or LaTeX.

csv and json are for machines: one row per group (or run), separate numeric mean / std /
ci95_lo / ci95_hi columns, units in the column names, no formatting. table / markdown / latex
are for people: ``mean ± h`` where h is the half-width of the 95 % confidence interval of the
mean over seeds (Student t, n - 1 df; just the mean when n = 1), the best value per column
highlighted, and config fields that are the same in every row moved into a caption.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from rich.table import Table

from fusioncli.config import CONFIG_FIELDS, DATA_LIMIT_FIELDS, HASH_NEUTRAL, NUMERIC_CONFIG_FIELDS
from fusioncli.results.aggregate import METRICS, Metric
from fusioncli.results.gain import gain_cell

FORMATS = ("table", "markdown", "csv", "json", "latex")
CI_NOTE = "mean ± 95% CI half-width over seeds (Student t, n-1 df; mean only when n = 1); n = runs averaged"
SINGLE_NOTE = "one run per configuration: mean only (several seeds, e.g. --seeds 0,1,2, give a 95% CI)"


@dataclass
class DisplayTable:
    """A table as strings, with a best-value flag per cell; shared by the human formats."""

    headers: list[str]
    rows: list[list[str]]
    best: list[list[bool]]
    numeric: list[bool]
    caption: str = ""
    notes: list[str] = field(default_factory=list)


def _label(name: str) -> str:
    return "dataset" if name == "dataset_fingerprint" else name


def is_missing(value: Any) -> bool:
    """True for None, pd.NA and NaN (any cell pandas would call missing)."""
    if value is None or value is pd.NA:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def format_lr(value: float) -> str:
    """Learning rates as people write them: 1e-4, 3e-4, 2.5e-4, 0.01 -> 1e-2."""
    if value == 0 or not math.isfinite(value):
        return str(value)
    text = f"{value:.0e}"
    if float(text) != value:
        text = f"{value:.3e}"  # up to 4 significant digits, trailing zeros dropped below
    mantissa, _, exponent = text.partition("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def format_field(name: str, value: Any) -> str:
    """A config value for display (a null data limit reads as 'all')."""
    if is_missing(value):
        return "all" if name in DATA_LIMIT_FIELDS else "-"
    if name == "lr":
        return format_lr(float(value))
    if name == "dataset_fingerprint":
        return str(value)[:12]
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def format_stat(mean: float, std: float | None, digits: int) -> str:
    """``mean ± std`` (or ``± half-width``) with ``digits`` decimals; just the mean when it is missing."""
    if is_missing(mean):
        return "-"
    if std is None or is_missing(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def ci_half_widths(table: pd.DataFrame, key: str) -> list[float]:
    """Per row, half the width of ``<key>``'s 95 % CI (NaN where n < 2 or no CI columns)."""
    lo, hi = f"{key}_ci95_lo", f"{key}_ci95_hi"
    if lo not in table.columns or hi not in table.columns:
        return [math.nan] * len(table)
    los = pd.to_numeric(table[lo], errors="coerce").astype("float64")
    his = pd.to_numeric(table[hi], errors="coerce").astype("float64")
    return list(0.5 * (his - los))


def _best_mask(values: pd.Series, better: str) -> list[bool]:
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    if numbers.notna().sum() < 2:  # one row (or none) has nothing to beat
        return [False] * len(values)
    if math.isclose(numbers.max(), numbers.min(), rel_tol=1e-12, abs_tol=0.0):
        return [False] * len(values)  # all equal: no row stands out
    target = numbers.max() if better == "max" else numbers.min()
    return [bool(not math.isnan(v) and math.isclose(v, target, rel_tol=1e-12, abs_tol=0.0)) for v in numbers]


def _visible_metrics(table: pd.DataFrame, per_run: bool) -> list[Metric]:
    # Drop a metric that no row has (GPU memory on a CPU-only store) instead of a column of "-".
    shown = []
    for metric in METRICS:
        column = metric.key if (per_run or metric.per_config) else f"{metric.key}_mean"
        if column in table.columns and pd.to_numeric(table[column], errors="coerce").notna().any():
            shown.append(metric)
    return shown


def split_fields(table: pd.DataFrame, fields: Sequence[str], *, keep_one: bool = True) -> tuple[list[str], str]:
    """``(varying, caption)``: the fields whose value differs between rows, and the others as
    ``"name=value, ..."`` text -- so a table shows what varies and says the rest once.

    With ``keep_one``, a table where nothing varies keeps its first field as a column, so a
    single-row table still names its configuration.
    """
    fields = [f for f in fields if f in table.columns]
    varying = [f for f in fields if table[f].astype("string").fillna("<NA>").nunique() > 1]
    # An option added later that no row uses (every row at its neutral value) says nothing.
    constant = [f for f in fields if f not in varying and not _all_neutral(table, f)]
    if keep_one and len(table) and not varying and fields:
        varying, constant = [fields[0]], fields[1:]
    caption = ", ".join(f"{_label(f)}={format_field(f, table[f].iloc[0])}" for f in constant) if len(table) else ""
    return varying, caption


def _all_neutral(table: pd.DataFrame, name: str) -> bool:
    """Whether every row holds the neutral value of ``name``, a run option added later
    (:data:`fusioncli.config.HASH_NEUTRAL`; False for other fields).
    """
    if name not in HASH_NEUTRAL or not len(table):
        return False
    neutral = HASH_NEUTRAL[name]
    values = table[name]
    return bool(values.isna().all()) if neutral is None else bool((values == neutral).all())


def field_columns(table: pd.DataFrame, fields: Sequence[str]) -> tuple[list[str], list[bool], list[list[str]]]:
    """Headers, numeric flags and formatted cells of config ``fields`` (columns of a display)."""
    headers = [_label(f) for f in fields]
    numeric = [f in NUMERIC_CONFIG_FIELDS for f in fields]
    cells = [[format_field(f, v) for v in table[f]] for f in fields]
    return headers, numeric, cells


def build_display(table: pd.DataFrame, fields: Sequence[str], *, per_run: bool = False) -> DisplayTable:
    """Strings for a human table from an aggregate (or, with ``per_run``, a run_metrics) frame.

    Fields with one value across all rows go to the caption, so the table shows what varies.
    """
    varying, caption = split_fields(table, fields)
    metrics = _visible_metrics(table, per_run)

    headers = [_label(f) for f in varying]
    numeric = [f in NUMERIC_CONFIG_FIELDS for f in varying]
    columns: list[list[str]] = [[format_field(f, v) for v in table[f]] for f in varying]
    best: list[list[bool]] = [[False] * len(table) for _ in varying]
    if per_run:
        headers = ["run id", *headers, "status"]
        numeric = [False, *numeric, False]
        columns = [list(table["run_id"]), *columns, list(table["status"])]
        best = [[False] * len(table), *best, [False] * len(table)]
    else:
        headers.append("n")
        numeric.append(True)
        columns.append([str(int(n)) for n in table["n"]])
        best.append([False] * len(table))
    for metric in metrics:
        if per_run or metric.per_config:
            column = metric.key
            cells = [format_stat(v, None, metric.digits) for v in table[column]]
        else:
            column = f"{metric.key}_mean"
            cells = [format_stat(m, h, metric.digits) for m, h in zip(table[column], ci_half_widths(table, metric.key))]
        headers.append(metric.label)
        numeric.append(True)
        columns.append(cells)
        best.append(_best_mask(table[column], metric.better) if metric.highlight else [False] * len(table))
    if not per_run and "gain_pts" in table.columns:
        gains = [gain_cell(row) for _, row in table.iterrows()]
        headers += ["gain vs best unimodal (pts, 95% CI)", "gain test (Holm)"]
        numeric += [True, False]
        columns += [[g[0] for g in gains], [g[1] for g in gains]]
        best += [[False] * len(table), [False] * len(table)]
    if per_run and "error" in table.columns and table["error"].notna().any():
        headers.append("error")
        numeric.append(False)
        columns.append(["" if is_missing(e) else _short(str(e)) for e in table["error"]])
        best.append([False] * len(table))

    rows = [list(r) for r in zip(*columns)] if len(table) else []
    best_rows = [list(r) for r in zip(*best)] if len(table) else []
    if per_run:
        notes = []
    else:
        notes = [CI_NOTE if len(table) and int(pd.to_numeric(table["n"]).max()) >= 2 else SINGLE_NOTE]
        if "gain_method" in table.columns:
            methods = sorted({str(m) for m in table["gain_method"] if not is_missing(m)})
            notes.append(
                "gain = accuracy minus the better unimodal baseline's (same data and settings), paired by seed; "
                f"CI and p from {' / '.join(methods)}; p Holm-adjusted over the fusion rows"
            )
    return DisplayTable(headers=headers, rows=rows, best=best_rows, numeric=numeric, caption=caption, notes=notes)


def _short(text: str, limit: int = 100) -> str:
    """First line of an error, cut to ``limit`` characters (the record keeps all of it)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def to_rich(display: DisplayTable, *, title: str | None = None) -> Table:
    """A rich Table; best values per column in bold green."""
    table = Table(title=title, caption=display.caption or None, header_style="bold")
    for header, numeric in zip(display.headers, display.numeric):
        # fold, never ellipsize: a cut-off strategy name or number would be wrong, not short
        table.add_column(header, justify="right" if numeric else "left", overflow="fold")
    for cells, flags in zip(display.rows, display.best):
        table.add_row(*[f"[bold green]{c}[/]" if b else _rich_escape(c) for c, b in zip(cells, flags)])
    return table


def _rich_escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def to_markdown(display: DisplayTable) -> str:
    """A GitHub pipe table; best values in **bold**; caption and notes as lines below it."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in display.headers) + " |"]
    lines.append("|" + "|".join("---:" if n else "---" for n in display.numeric) + "|")
    for cells, flags in zip(display.rows, display.best):
        lines.append("| " + " | ".join(f"**{cell(c)}**" if b else cell(c) for c, b in zip(cells, flags)) + " |")
    text = "\n".join(lines) + "\n"
    extra = ([f"Common: {display.caption}."] if display.caption else []) + [
        f"{n[0].upper()}{n[1:]}." for n in display.notes
    ]
    if extra:
        text += "\n" + "\n".join(extra) + "\n"
    return text


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters; ``±`` becomes ``$\\pm$``."""
    escaped = "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)
    return escaped.replace("±", r"$\pm$")


def to_latex(display: DisplayTable) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``); best values in \\textbf."""
    spec = "".join("r" if n else "l" for n in display.numeric)
    lines = [
        "% generated by fusioncli report; needs \\usepackage{booktabs}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(latex_escape(h) for h in display.headers) + r" \\",
        "\\midrule",
    ]
    for cells, flags in zip(display.rows, display.best):
        parts = [f"\\textbf{{{latex_escape(c)}}}" if b else latex_escape(c) for c, b in zip(cells, flags)]
        lines.append(" & ".join(parts) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    for note in ([f"common: {display.caption}"] if display.caption else []) + display.notes:
        lines.append(f"% {note}")
    return "\n".join(lines) + "\n"


def to_csv(table: pd.DataFrame) -> str:
    """Plain csv, one row per group (or run), numeric columns unformatted."""
    return table.to_csv(index=False)


def to_json(table: pd.DataFrame) -> str:
    """A JSON list of row objects; missing values are null."""
    rows = []
    for record in table.to_dict(orient="records"):
        rows.append({str(k): _json_value(v) for k, v in record.items()})
    return json.dumps(rows, indent=2) + "\n"


def _json_value(value: Any) -> Any:
    if is_missing(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def machine_columns(table: pd.DataFrame, *, per_run: bool) -> pd.DataFrame:
    """The csv/json view: every config field (not only the varying ones), in a stable order."""
    if per_run:
        return table.reset_index(drop=True)
    leading = [c for c in table.columns if c in (*CONFIG_FIELDS, "dataset_fingerprint")]
    rest = [c for c in table.columns if c not in leading]
    return table[leading + rest].reset_index(drop=True)


def render(report: Any, fmt: str) -> str | Table:
    """A :class:`~fusioncli.results.aggregate.Report` in ``fmt`` (one of :data:`FORMATS`).

    ``table`` gives a rich Table to print; every other format gives text for stdout.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt == "csv":
        return to_csv(machine_columns(report.table, per_run=report.per_run))
    if fmt == "json":
        return to_json(machine_columns(report.table, per_run=report.per_run))
    display = build_display(report.table, report.fields, per_run=report.per_run)
    if fmt == "markdown":
        return to_markdown(display)
    if fmt == "latex":
        return to_latex(display)
    title = f"{len(report.table)} runs" if report.per_run else f"{len(report.table)} configurations"
    rich_table = to_rich(display, title=title)
    if display.notes:
        rich_table.caption = "; ".join(filter(None, [display.caption, *display.notes]))
    return rich_table
