"""``fusioncli report --compare A B``: a paired t-test of two configurations over shared seeds.

A and B are selectors: a strategy name (``late``) or a comma list of KEY=VALUE on config fields
(``strategy=late,lr=1e-4``). The fields named by either selector are what the comparison is
about; every other config field and the dataset must be equal for two runs to pair, and runs
pair by seed. So ``--compare late gmu`` over a store with two learning rates gives one test per
learning rate, and ``--compare "strategy=late,lr=1e-4" "strategy=late,lr=1e-5"`` compares the
two learning rates of late fusion.

With several rows (pairs of configurations) each row is one test, so the p-values are also
Holm-Bonferroni adjusted over the rows, and significance -- the verdicts and the machine
views' ``significant`` -- goes by the adjusted p: k rows do not give k chances of a false
positive.

Pairing by seed removes the seed-to-seed variation both runs share (same data order, same
initialisation draws where the architectures agree), which makes a paired test far more
sensitive than comparing two means. With the usual 3-5 seeds, read the CI and the effect size
as well as the p-value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from rich.table import Table

from fusioncli.errors import BadInputError
from fusioncli.results.aggregate import (
    GROUP_FIELDS,
    METRICS,
    METRICS_BY_KEY,
    SORT_ALIASES,
    Metric,
    filter_runs,
    finished_runs,
    format_value,
    parse_filters,
    run_metrics,
)
from fusioncli.results.render import (
    DisplayTable,
    field_columns,
    format_field,
    is_missing,
    split_fields,
    to_csv,
    to_json,
    to_latex,
    to_markdown,
    to_rich,
)
from fusioncli.results.stats import PairedTest, holm_adjust, paired_test

# Keys a selector may name: config fields and the dataset, but not the seed -- runs pair by it.
SELECTOR_KEYS = tuple(f for f in GROUP_FIELDS if f != "seed")
SEEDS_HINT = (
    "train both with the same 2+ seeds, e.g. `fusioncli sweep --strategies late,gmu --seeds 51,52,53` "
    "(finished runs are not retrained)"
)


@dataclass(frozen=True)
class Selector:
    """One side of a comparison: the text given and the filters it stands for."""

    text: str
    filters: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def keys(self) -> list[str]:
        return [key for key, _ in self.filters]


def parse_selector(text: str, side: str = "A") -> Selector:
    """``"late"`` -> strategy=late; ``"strategy=late,lr=1e-4"`` -> two filters (AND).

    ``side`` ("A" or "B") names the selector in error messages.
    """
    pieces = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in pieces):
        raise BadInputError(f"--compare: selector {side} {text!r} is empty or has an empty comma piece")
    if len(pieces) == 1 and "=" not in pieces[0]:
        pieces = [f"strategy={pieces[0]}"]
    problems = []
    filters: list[tuple[str, tuple[str, ...]]] = []
    for piece in pieces:
        key, sep, value = piece.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            problems.append(
                f"--compare: {piece!r} in selector {side} is not KEY=VALUE "
                "(give a strategy name, or KEY=VALUE pieces joined by commas)"
            )
        elif key == "seed":
            problems.append("--compare: runs are paired by seed, so a selector cannot name the seed")
        elif key not in SELECTOR_KEYS:
            known = ", ".join(SELECTOR_KEYS)
            problems.append(f"--compare: unknown key {key!r} in selector {side}; known keys: {known}")
        elif key in (k for k, _ in filters):
            problems.append(f"--compare: selector {side} names {key!r} twice")
        else:
            filters.append((key, (value,)))
    if problems:
        raise BadInputError(problems)
    return Selector(text=text, filters=tuple(filters))


def resolve_metric(text: str | None) -> Metric:
    """``--metric`` text (a key, label or alias such as ``accuracy``, ``f1``, ``time``) -> Metric."""
    raw = (text or "accuracy").strip()
    by_label = {m.label: m.key for m in METRICS}
    key = SORT_ALIASES.get(raw, by_label.get(raw, raw))
    if key.endswith("_mean"):
        key = key[: -len("_mean")]
    metric = METRICS_BY_KEY.get(key)
    if metric is None or metric.per_config:
        known = sorted({*(a for a, k in SORT_ALIASES.items() if not METRICS_BY_KEY[k].per_config)})
        raise BadInputError(f"--metric: unknown or per-configuration metric {raw!r}; use one of {', '.join(known)}")
    return metric


def _norm(value: Any) -> Any:
    """A cell as a hashable, comparable key part: missing values are None, numbers floats."""
    if is_missing(value):
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value


def _key(row: pd.Series, fields: Sequence[str]) -> tuple[Any, ...]:
    return tuple(_norm(row[f]) for f in fields)


def _describe(fields: Sequence[str], values: Sequence[Any]) -> str:
    """``late lr=1e-4``: strategy (and other names) bare, the rest as field=value."""
    parts = []
    for name, value in zip(fields, values):
        text = format_field(name, value)
        parts.append(text if name in ("strategy", "backbone", "scheduler") else f"{name}={text}")
    return " ".join(parts)


@dataclass
class ComparisonRow:
    """One pair of configurations (A side, B side) that share every other field, and its test."""

    context: dict[str, Any]  # values of the paired-on fields (everything not named, but seed)
    a_label: str
    b_label: str
    seeds: list[int]
    run_ids_a: list[str]
    run_ids_b: list[str]
    test: PairedTest
    verdict: str = ""
    # Holm-adjusted over the comparison's tested rows (= test.p when there is one); what
    # `significant` and the verdict go by, so k rows do not give k chances of a false positive.
    p_adjusted: float = math.nan

    @property
    def significant(self) -> bool:
        return not math.isnan(self.p_adjusted) and self.p_adjusted < self.test.alpha


@dataclass
class Comparison:
    """What ``report --compare`` shows: one row per matched pair of configurations."""

    a: Selector
    b: Selector
    metric: Metric
    named: list[str]  # fields named by the selectors (what differs between A and B)
    context_fields: list[str]  # fields every pair agrees on, besides the seed
    rows: list[ComparisonRow] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        """The machine view (csv / json): one row per pair of configurations, plain numbers."""
        records = []
        for row in self.rows:
            t = row.test
            records.append(
                {
                    **row.context,
                    "a": row.a_label,
                    "b": row.b_label,
                    "metric": self.metric.key,
                    "n": t.n,
                    "seeds": ",".join(str(s) for s in row.seeds),
                    "mean_a": t.mean_a,
                    "mean_b": t.mean_b,
                    "mean_diff": t.mean_diff,
                    "diff_ci95_lo": t.ci95[0],
                    "diff_ci95_hi": t.ci95[1],
                    "sd_diff": t.sd_diff,
                    "t": t.t,
                    "df": t.df,
                    "p": t.p,
                    "p_holm": row.p_adjusted,
                    "cohen_dz": t.cohen_dz,
                    "effect": t.effect,
                    "significant": row.significant,
                    "verdict": row.verdict,
                    "note": t.note,
                    "run_ids_a": ",".join(row.run_ids_a),
                    "run_ids_b": ",".join(row.run_ids_b),
                }
            )
        columns = [*self.context_fields, "a", "b", "metric", "n", "seeds", "mean_a", "mean_b", "mean_diff"]
        columns += [
            "diff_ci95_lo",
            "diff_ci95_hi",
            "sd_diff",
            "t",
            "df",
            "p",
            "p_holm",
            "cohen_dz",
            "effect",
            "significant",
        ]
        columns += ["verdict", "note", "run_ids_a", "run_ids_b"]
        return pd.DataFrame(records, columns=columns)


def format_p(p: float) -> str:
    """A p-value with two significant digits (``0.0031``, ``0.41``, ``2.3e-05``)."""
    if math.isnan(p):
        return "-"
    if p == 0:
        return "0"
    return f"{p:.2g}"


def _unit(metric: Metric) -> tuple[str, str]:
    """``(name, unit)`` of a metric's label: ("accuracy", "points"), ("train time", "s"), ("val loss", "")."""
    name, _, unit = metric.label.partition(" (")
    unit = unit.rstrip(")")
    return name, "points" if unit == "%" else unit


def _amount(metric: Metric, value: float) -> str:
    """``2.10 points of accuracy`` / ``3.2 s of train time`` / ``0.0120 of val loss``."""
    name, unit = _unit(metric)
    number = f"{abs(value):.{metric.digits}f}"
    return f"{number} {unit} of {name}" if unit else f"{number} of {name}"


def verdict(a: str, b: str, test: PairedTest, metric: Metric, p: float | None = None) -> str:
    """One sentence: who is better by how much, or that no difference can be told apart.

    ``p`` is the p-value to judge by (the Holm-adjusted one when the comparison has several
    rows); default: the test's own.
    """
    if test.n < 2:
        return f"no test: {test.n} shared seed(s), a paired test needs at least 2"
    if test.mean_diff == 0 and test.sd_diff == 0:
        return f"{a} and {b} are identical on every seed (no difference in {metric.label})"
    judged = test.p if p is None else p
    adjusted = "" if p is None or p == test.p else " Holm-adjusted"
    if judged < test.alpha:
        a_better = test.mean_diff > 0 if metric.better == "max" else test.mean_diff < 0
        winner, loser = (a, b) if a_better else (b, a)
        how = "same difference on every seed" if math.isinf(test.t) else f"{test.effect} effect"
        amount = _amount(metric, test.mean_diff)
        return f"{winner} is better than {loser} by {amount} (p ={adjusted} {format_p(judged)}, {how})"
    unit = _unit(metric)[1]
    diff = f"{test.mean_diff:+.{metric.digits}f}" + (f" {unit}" if unit else "")
    return (
        f"no significant difference between {a} and {b} "
        f"(p ={adjusted} {format_p(judged)}, {a} - {b} = {diff}, {test.effect} effect)"
    )


def _store_values(runs: pd.DataFrame, keys: Sequence[str]) -> str:
    parts = []
    for key in dict.fromkeys(keys):
        known = sorted({format_value(v) for v in runs[key].dropna().unique()})
        parts.append(f"{key}: {', '.join(known) or '(none)'}")
    return "values in the store -- " + "; ".join(parts)


def build_comparison(
    runs: pd.DataFrame, a: str, b: str, *, metric: str | None = None, filters: Sequence[str] = ()
) -> Comparison:
    """Pair the finished runs selected by ``a`` and ``b`` and test each pair of configurations.

    Raises :class:`BadInputError` (exit 2) when nothing matches a side, when no run of A shares
    its other config fields with a run of B, when A and B share no seed, and when no pair of
    configurations has the 2 shared seeds a test needs.
    """
    if runs.empty:
        raise BadInputError("the results store has no runs yet", hint="run `fusioncli sweep` or `fusioncli demo` first")
    sel_a, sel_b = parse_selector(a, "A"), parse_selector(b, "B")
    chosen = resolve_metric(metric)
    selected = filter_runs(runs, parse_filters(filters))
    per_run = run_metrics(finished_runs(selected))
    per_run = per_run[per_run[chosen.key].notna()]
    named = list(dict.fromkeys([*sel_a.keys, *sel_b.keys]))
    context_fields = [f for f in SELECTOR_KEYS if f not in named]

    sides = {}
    for side, sel in (("A", sel_a), ("B", sel_b)):
        matched = filter_runs(per_run, [(k, list(v)) for k, v in sel.filters])
        if matched.empty:
            raise BadInputError(
                f"--compare: no finished runs with {chosen.label} match {side} ({sel.text})",
                hint=_store_values(runs, sel.keys),
            )
        sides[side] = matched

    def by_config(frame: pd.DataFrame) -> dict[tuple[Any, ...], dict[tuple[Any, ...], dict[int, pd.Series]]]:
        groups: dict[tuple[Any, ...], dict[tuple[Any, ...], dict[int, pd.Series]]] = {}
        for _, row in frame.sort_values("run_id").iterrows():
            seeds = groups.setdefault(_key(row, context_fields), {}).setdefault(_key(row, named), {})
            seeds.setdefault(int(row["seed"]), row)  # one run per config and seed (the run id is their hash)
        return groups

    groups_a, groups_b = by_config(sides["A"]), by_config(sides["B"])
    shared = sorted(set(groups_a) & set(groups_b), key=lambda k: tuple(("" if v is None else str(v)) for v in k))
    if not shared:
        differ = []
        for f in context_fields:
            va = {_norm(v) for v in sides["A"][f]}
            vb = {_norm(v) for v in sides["B"][f]}
            if va != vb:
                show_a, show_b = (", ".join(sorted(format_field(f, v) for v in vals)) for vals in (va, vb))
                differ.append(f"{f}: A has {show_a}; B has {show_b}")
        raise BadInputError(
            [
                f"--compare: no run of A ({sel_a.text}) matches a run of B ({sel_b.text}) in every other config field",
                *differ,
            ],
            hint="runs pair only when everything but the selectors' fields and the seed is equal: name a differing "
            "field in both selectors (e.g. --compare 'strategy=late,lr=1e-4' 'strategy=gmu,lr=1e-3') or "
            "narrow the runs with --filter",
        )

    comparison = Comparison(a=sel_a, b=sel_b, metric=chosen, named=named, context_fields=context_fields)
    seeds_seen: dict[str, set[int]] = {"A": set(), "B": set()}
    for context in shared:
        for a_cfg, a_runs in sorted(groups_a[context].items(), key=lambda kv: str(kv[0])):
            for b_cfg, b_runs in sorted(groups_b[context].items(), key=lambda kv: str(kv[0])):
                if a_cfg == b_cfg:
                    continue  # both selectors match this configuration: nothing to compare
                seeds_seen["A"] |= set(a_runs)
                seeds_seen["B"] |= set(b_runs)
                seeds = sorted(set(a_runs) & set(b_runs))
                if not seeds:
                    continue
                values_a = [float(a_runs[s][chosen.key]) for s in seeds]
                values_b = [float(b_runs[s][chosen.key]) for s in seeds]
                test = paired_test(values_a, values_b)
                a_label, b_label = _describe(named, a_cfg), _describe(named, b_cfg)
                comparison.rows.append(
                    ComparisonRow(
                        # raw values (not the normalised key) so ints print and serialise as ints
                        context={f: a_runs[seeds[0]][f] for f in context_fields},
                        a_label=a_label,
                        b_label=b_label,
                        seeds=seeds,
                        run_ids_a=[str(a_runs[s]["run_id"]) for s in seeds],
                        run_ids_b=[str(b_runs[s]["run_id"]) for s in seeds],
                        test=test,
                    )
                )
    if not comparison.rows:
        if not seeds_seen["A"]:
            raise BadInputError(f"--compare: A ({sel_a.text}) and B ({sel_b.text}) select the same runs")
        raise BadInputError(
            f"--compare: A and B share no seed (A has seeds {_seeds(seeds_seen['A'])}; "
            f"B has seeds {_seeds(seeds_seen['B'])}); runs pair by seed",
            hint=SEEDS_HINT,
        )
    for row, p in zip(comparison.rows, holm_adjust([row.test.p for row in comparison.rows])):
        row.p_adjusted = p
        row.verdict = verdict(row.a_label, row.b_label, row.test, chosen, p=p)
    if all(row.test.n < 2 for row in comparison.rows):
        found = sorted({s for row in comparison.rows for s in row.seeds})
        raise BadInputError(
            f"--compare: a paired test needs at least 2 seeds shared by A and B; found only 1 (seed {_seeds(found)})",
            hint=SEEDS_HINT,
        )
    return comparison


def _seeds(seeds: Sequence[int] | set[int]) -> str:
    return ",".join(str(s) for s in sorted(seeds))


def _num(value: float, digits: int) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _diff(test: PairedTest, digits: int) -> str:
    """``+2.10 [0.85, 3.35]``: the mean difference and its 95 % CI."""
    if math.isnan(test.mean_diff):
        return "-"
    return f"{test.mean_diff:+.{digits}f} [{_num(test.ci95[0], digits)}, {_num(test.ci95[1], digits)}]"


def comparison_display(comparison: Comparison) -> DisplayTable:
    """The human table: shared fields that vary, A, B, n, seeds, means, difference with CI, t, p, dz."""
    frame = comparison.frame()
    varying, caption = split_fields(frame, comparison.context_fields, keep_one=False)
    headers, numeric, columns = field_columns(frame, varying)
    digits = comparison.metric.digits
    tests = [row.test for row in comparison.rows]

    def add(header: str, is_numeric: bool, cells: list[str]) -> None:
        headers.append(header)
        numeric.append(is_numeric)
        columns.append(cells)

    add("A", False, [row.a_label for row in comparison.rows])
    add("B", False, [row.b_label for row in comparison.rows])
    add("n", True, [str(t.n) for t in tests])
    add("seeds", False, [_seeds(row.seeds) for row in comparison.rows])
    add("mean A", True, [_num(t.mean_a, digits) for t in tests])
    add("mean B", True, [_num(t.mean_b, digits) for t in tests])
    add("A - B [95% CI]", True, [_diff(t, digits) for t in tests])
    add("t", True, [_num(t.t, 2) for t in tests])
    add("df", True, [str(t.df) for t in tests])
    add("p", True, [format_p(t.p) for t in tests])
    tested = sum(not math.isnan(t.p) for t in tests)
    if tested > 1:
        add("p (Holm)", True, [format_p(row.p_adjusted) for row in comparison.rows])
    add("Cohen's dz", True, ["-" if math.isnan(t.cohen_dz) else f"{_num(t.cohen_dz, 2)} ({t.effect})" for t in tests])

    rows = [list(r) for r in zip(*columns)]
    best = [[False] * len(headers) for _ in rows]
    metric_note = f"metric: {comparison.metric.label}; paired two-sided t-test over shared seeds, alpha 0.05"
    if tested > 1:
        metric_note += f" per row; p (Holm) adjusts for the {tested} tests (Holm-Bonferroni) and decides significance"
    caption = "; ".join(filter(None, [caption, metric_note]))
    notes = []
    for row in comparison.rows:
        where = _describe(varying, [row.context[f] for f in varying])
        # The verdict covers the degenerate cases too; their longer note is in csv / json.
        notes.append(f"verdict{' (' + where + ')' if where else ''}: {row.verdict}")
    return DisplayTable(headers=headers, rows=rows, best=best, numeric=numeric, caption=caption, notes=notes)


def render_comparison(comparison: Comparison, fmt: str) -> str | Table:
    """The comparison in ``fmt``: a rich Table for ``table``, text for the other formats."""
    if fmt == "csv":
        return to_csv(comparison.frame())
    if fmt == "json":
        return to_json(comparison.frame())
    display = comparison_display(comparison)
    if fmt == "markdown":
        return to_markdown(display)
    if fmt == "latex":
        return to_latex(display)
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")
    table = to_rich(display, title=f"{comparison.a.text} vs {comparison.b.text}")
    table.caption = "\n".join([display.caption, *display.notes])
    table.caption_justify = "left"
    return table
