"""`report --robustness`: per-configuration accuracy under corruption, AUC, missing modality, plot."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from results_fakes import SEVERITIES, record, robustness

from fusioncli.errors import BadInputError
from fusioncli.results.robustness import (
    build_robustness,
    curves_display,
    has_robustness,
    missing_display,
    render_robustness,
)
from fusioncli.results.stats import mean_ci95
from fusioncli.results.store import runs_frame

pytestmark = pytest.mark.numeric

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Percentages compared with pytest.approx are float64 arithmetic on the fakes' accuracies (<= 1,
# so values <= 100): a fake curve (3 roundings), its trapezoid (19), ratios and means (<= 5),
# the view's scaling and mean (<= 3) -- at most 40 roundings a side on non-negative numbers,
# so values agree to 2 gamma_40 * 100 points, gamma_n = n u / (1 - n u), u = 2^-53. A CI end,
# mean +- t s / sqrt(n), moves at most (1 + t) times as much as its values do (s changes by at
# most sqrt(2) times the largest change for n = 2, and t s / sqrt(2) by t times it), t <= 12.71
# (the 97.5 % t quantile, 1 degree of freedom, the largest any n >= 2 uses).
U64 = 2.0**-53
ABS = 2 * (1 + 12.71) * 40 * U64 / (1 - 40 * U64) * 100


def close(expected: object) -> object:
    return pytest.approx(expected, rel=0, abs=ABS)
CLEAN = {("late", 0): 0.90, ("late", 1): 0.94, ("gmu", 0): 0.86, ("gmu", 1): 0.88}
SLOPES = {"late": {"rgb_noise": 0.5, "lidar_noise": 0.2}, "gmu": {"rgb_noise": 0.1, "lidar_noise": 0.1}}


def _records():
    records = [
        record(s, seed, accuracy=acc, robust=robustness(acc, SLOPES[s])) for (s, seed), acc in CLEAN.items()
    ]
    records.append(record("late", 2, accuracy=0.95))  # finished without robustness: not in the view
    return records


def _cell(view, strategy: str, corruption: str, measure: str, severity: float | None = None) -> pd.Series:
    long = view.long
    rows = long[(long["strategy"] == strategy) & (long["corruption"] == corruption) & (long["measure"] == measure)]
    if severity is not None:
        rows = rows[np.isclose(rows["severity"], severity)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_numbers_per_configuration() -> None:
    view = build_robustness(runs_frame(_records()))
    assert list(view.configs["strategy"]) == ["late", "gmu"]  # report order: accuracy, best first
    assert list(view.configs["n"]) == [2, 2] and view.configs.iloc[0]["seeds"] == "0,1"
    assert view.corruptions == ["rgb_noise", "lidar_noise"]
    # late, rgb_noise at severity 0.5: clean * (1 - 0.5 * 0.5) per seed, in percent
    values = [100 * CLEAN[("late", s)] * 0.75 for s in (0, 1)]
    cell = _cell(view, "late", "rgb_noise", "accuracy", 0.5)
    mean, lo, hi = mean_ci95(values)
    assert cell["n"] == 2
    assert (cell["pct_mean"], cell["pct_ci95_lo"], cell["pct_ci95_hi"]) == close((mean, lo, hi))
    # AUC of a linear fall to clean * (1 - slope) is clean * (1 - slope / 2)
    auc = _cell(view, "gmu", "lidar_noise", "auc")
    assert auc["pct_mean"] == close(100 * np.mean([0.86 * 0.95, 0.88 * 0.95]))
    assert _cell(view, "gmu", "lidar_noise", "relative_auc")["pct_mean"] == close(95.0)
    assert _cell(view, "late", "mean", "relative_auc")["pct_mean"] == close(100 * (0.75 + 0.9) / 2)
    assert _cell(view, "late", "rgb_missing", "accuracy")["pct_mean"] == close(100 * 0.5 * 0.92)
    assert _cell(view, "late", "lidar_missing", "relative")["pct_mean"] == close(70.0)
    assert _cell(view, "late", "clean", "accuracy")["pct_mean"] == close(92.0)


def test_curves_display() -> None:
    view = build_robustness(runs_frame(_records()))
    display = curves_display(view)
    sev = [f"sev {s:g}" for s in SEVERITIES]
    assert display.headers == ["strategy", "corruption", "n", *sev, "AUC (%)", "rel. AUC (%)"]
    assert [row[:2] for row in display.rows] == [
        ["late", "rgb_noise"],
        ["late", "lidar_noise"],
        ["late", "mean (all)"],
        ["gmu", "rgb_noise"],
        ["gmu", "lidar_noise"],
        ["gmu", "mean (all)"],
    ]
    late_rgb = display.rows[0]
    assert late_rgb[display.headers.index("sev 1")] == f"{100 * 0.92 * 0.5:.2f}"  # mean only in the grid
    assert " ± " in late_rgb[display.headers.index("AUC (%)")]  # CI on the summaries (n = 2)
    assert display.rows[2][display.headers.index("sev 0")] == ""
    assert "MultiBench" in display.notes[0]


def test_missing_display_marks_the_best() -> None:
    display = missing_display(build_robustness(runs_frame(_records())))
    assert display is not None
    column = display.headers.index("RGB missing acc. (%)")
    assert [row[column] for row in display.best] == [True, False]
    assert display.rows[0][column].startswith(f"{100 * 0.5 * 0.92:.2f} ± ")


def test_records_without_the_missing_part() -> None:
    records = [record("late", s, accuracy=0.9, robust=robustness(0.9, missing=False)) for s in (0, 1)]
    view = build_robustness(runs_frame(records))
    assert missing_display(view) is None
    text = render_robustness(view, "markdown")
    assert "### Accuracy under corruption" in text and "Missing modality" not in text
    assert len(render_robustness(view, "table")) == 2  # the fault matrix and the curves


def test_one_seed_shows_means_only() -> None:
    view = build_robustness(runs_frame([record("late", 0, accuracy=0.9, robust=robustness(0.9))]))
    display = curves_display(view)
    assert all("±" not in cell for row in display.rows for cell in row)
    assert math.isnan(_cell(view, "late", "rgb_noise", "auc")["pct_ci95_lo"])


def test_no_robustness_results_is_a_clear_error() -> None:
    runs = runs_frame([record("late", s) for s in (0, 1)])
    assert not has_robustness(runs)
    with pytest.raises(BadInputError, match="none of the 2 selected runs has robustness results") as info:
        build_robustness(runs)
    assert "--robustness" in info.value.hint


def test_filters_and_group_by_apply() -> None:
    runs = runs_frame(_records())
    assert has_robustness(runs)
    assert list(build_robustness(runs, filters=["strategy=gmu"]).configs["strategy"]) == ["gmu"]
    merged = build_robustness(runs, group_by=["backbone"])
    assert list(merged.configs["n"]) == [4]
    assert list(build_robustness(runs, sort="robust").configs["strategy"]) == ["gmu", "late"]


def test_machine_formats_are_tidy() -> None:
    view = build_robustness(runs_frame(_records()))
    back = pd.read_csv(io.StringIO(render_robustness(view, "csv")))
    assert {"strategy", "corruption", "measure", "severity", "n", "pct_mean", "pct_ci95_lo"} <= set(back.columns)
    assert "config" not in back.columns
    curve = back[(back["strategy"] == "late") & (back["corruption"] == "rgb_noise") & (back["measure"] == "accuracy")]
    assert list(curve["severity"]) == SEVERITIES
    rows = json.loads(render_robustness(view, "json"))
    assert len(rows) == len(back)
    missing = [r for r in rows if r["corruption"] == "rgb_missing" and r["measure"] == "accuracy"]
    assert len(missing) == 2 and missing[0]["severity"] is None


def test_human_formats() -> None:
    view = build_robustness(runs_frame(_records()))
    md = render_robustness(view, "markdown")
    assert "### Accuracy under corruption" in md and "### Missing modality" in md
    assert "| late | rgb_noise | 2 |" in md
    tex = render_robustness(view, "latex")
    assert tex.count("\\begin{tabular}") == 3
    tables = render_robustness(view, "table")
    assert [t.title for t in tables] == ["Robust accuracy per fault", "Accuracy under corruption", "Missing modality"]


def test_robustness_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from fusioncli.results.plots import ROBUSTNESS_PLOT, write_report_plots, write_robustness_plot

    view = build_robustness(runs_frame(_records()))
    path = write_robustness_plot(view, tmp_path / "plots")
    assert path.name == ROBUSTNESS_PLOT
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    # The report's plot set gains robustness.png and the fault matrix only when runs have
    # robustness results (the four charts and the Pareto view are always there).
    with_rob = write_report_plots(runs_frame(_records()), tmp_path / "a")
    assert [p.name for p in with_rob][-2:] == [ROBUSTNESS_PLOT, "robustness_matrix.png"] and len(with_rob) == 7
    without = write_report_plots(runs_frame([record("late", 0)]), tmp_path / "b")
    assert ROBUSTNESS_PLOT not in [p.name for p in without] and len(without) == 5
