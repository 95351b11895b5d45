"""Every report format: csv/json round-trip through pandas, markdown shape, LaTeX, rich."""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweep"))
from sweep_fakes import fake_record, stored_as  # noqa: E402

from fusioncli.results.aggregate import build_report  # noqa: E402
from fusioncli.results.render import (  # noqa: E402
    FORMATS,
    build_display,
    format_lr,
    format_stat,
    latex_escape,
    render,
)
from fusioncli.config import CONFIG_FIELDS  # noqa: E402
from fusioncli.results.store import runs_frame  # noqa: E402
from fusioncli.config import RunConfig  # noqa: E402


def _cfg(**kw) -> RunConfig:
    return RunConfig(**{"epochs": 1, "device": "cpu", "precision": "fp32", **kw})


@pytest.fixture
def report():
    records = []
    for strategy, accs, secs in [("late", (0.90, 0.94), (10.0, 12.0)), ("intermediate-add", (0.80, 0.82), (4.0, 6.0))]:
        for seed, (acc, s) in enumerate(zip(accs, secs)):
            records.append(fake_record(_cfg(strategy=strategy, seed=seed), accuracy=acc, train_seconds=s))
    records.append(fake_record(_cfg(strategy="intermediate-multiply"), accuracy=0.6, train_seconds=3.0))
    return build_report(runs_frame(records))


def test_csv_round_trips_through_pandas(report) -> None:
    text = render(report, "csv")
    back = pd.read_csv(io.StringIO(text))
    assert len(back) == 3  # one row per group
    assert list(back["strategy"]) == ["late", "intermediate-add", "intermediate-multiply"]
    assert back.loc[0, "accuracy_pct_mean"] == pytest.approx(92.0)
    assert back.loc[0, "accuracy_pct_std"] == pytest.approx(math.sqrt(8.0))
    assert math.isnan(back.loc[2, "accuracy_pct_std"])  # n = 1
    assert list(back["n"]) == [2, 2, 1]
    assert set(CONFIG_FIELDS) - {"seed"} <= set(back.columns)
    assert not any("±" in str(v) for v in back.to_numpy().ravel())


def test_json_round_trips_through_pandas(report) -> None:
    text = render(report, "json")
    rows = json.loads(text)
    assert len(rows) == 3 and rows[2]["accuracy_pct_std"] is None
    back = pd.read_json(io.StringIO(text))
    assert back.loc[1, "train_time_s_mean"] == pytest.approx(5.0)
    assert back.loc[1, "train_time_s_std"] == pytest.approx(math.sqrt(2.0))
    assert rows[0]["lr"] == 1e-4


def test_per_run_machine_formats(report) -> None:
    per_run = build_report(report_runs(), per_run=True)
    back = pd.read_csv(io.StringIO(render(per_run, "csv")))
    assert len(back) == 5 and {"run_id", "status", "seed", "accuracy_pct", "error"} <= set(back.columns)


def report_runs():
    return runs_frame(
        [fake_record(_cfg(strategy=s, seed=i)) for s in ("late", "intermediate-add") for i in range(2)]
        + [fake_record(_cfg(strategy="late", seed=9), status="failed", error="OutOfMemoryError: x")]
    )


def test_markdown_table_shape(report) -> None:
    text = render(report, "markdown")
    lines = text.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 3  # header, separator, one line per group
    widths = {line.count("|") - line.count("\\|") for line in table}
    assert len(widths) == 1  # every row has as many cells as the header
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:2] == ["strategy", "n"]
    assert "accuracy (%)" in header and "train time (s)" in header and "params (M)" in header
    assert set(table[1].strip("|").split("|")) <= {"---", "---:"}
    late = [c.strip() for c in table[2].strip("|").split("|")]
    assert late[0] == "late"
    # best accuracy in bold; ± is the 95% CI half-width: t_{0.975,1} * 2.83 / sqrt(2) = 25.41
    assert late[header.index("accuracy (%)")] == "**92.00 ± 25.41**"
    single = [c.strip() for c in table[4].strip("|").split("|")]
    assert single[header.index("accuracy (%)")] == "60.00"  # n = 1: mean only
    assert single[header.index("train time (s)")] == "**3.0**"  # fastest is best
    assert "Mean ± 95% CI half-width over seeds" in text and "Common: backbone=seed" in text


def test_latex(report) -> None:
    text = render(report, "latex")
    assert "\\begin{tabular}{lr" in text and "\\end{tabular}" in text
    assert "accuracy (\\%)" in text
    assert "\\textbf{92.00 $\\pm$ 25.41}" in text
    body = [line for line in text.splitlines() if line.endswith("\\\\")]
    assert len(body) == 1 + 3
    assert all(line.count("&") == body[0].count("&") for line in body)


def test_latex_escape() -> None:
    assert latex_escape("a_b & 50% #1") == "a\\_b \\& 50\\% \\#1"
    assert latex_escape("1 ± 2") == "1 $\\pm$ 2"


def test_rich_table_renders_all_rows(report) -> None:
    table = render(report, "table")
    console = Console(file=io.StringIO(), width=300, color_system=None)
    console.print(table)
    text = console.file.getvalue()
    for strategy in ("late", "intermediate-add", "intermediate-multiply"):
        assert strategy in text
    assert "92.00 ± 25.41" in text and "accuracy (%)" in text and "95% CI" in text


def test_best_cells_are_marked(report) -> None:
    display = build_display(report.table, report.fields)
    acc = display.headers.index("accuracy (%)")
    time = display.headers.index("train time (s)")
    assert [row[acc] for row in display.best] == [True, False, False]
    assert [row[time] for row in display.best] == [False, False, True]


def test_no_best_when_all_values_tie() -> None:
    runs = runs_frame([fake_record(_cfg(strategy=s), accuracy=0.9) for s in ("late", "intermediate-add")])
    display = build_display(build_report(runs).table, list(CONFIG_FIELDS))
    acc = display.headers.index("accuracy (%)")
    assert not any(row[acc] for row in display.best)


def test_constant_fields_move_to_the_caption(report) -> None:
    display = build_display(report.table, report.fields)
    assert "lr" not in display.headers and "backbone" not in display.headers
    assert "lr=1e-4" in display.caption and "limit_per_class=all" in display.caption


def test_gpu_memory_column_only_when_measured(report) -> None:
    assert "peak GPU mem (MiB)" not in build_display(report.table, report.fields).headers
    runs = runs_frame([fake_record(_cfg(), gpu_bytes=512 * 2**20)])
    assert "peak GPU mem (MiB)" in build_display(build_report(runs).table, list(CONFIG_FIELDS)).headers


@pytest.mark.parametrize(
    "value, text", [(1e-4, "1e-4"), (3e-4, "3e-4"), (1e-3, "1e-3"), (0.01, "1e-2"), (2.5e-4, "2.5e-4"), (1.0, "1e0")]
)
def test_format_lr(value: float, text: str) -> None:
    assert format_lr(value) == text


def test_format_stat() -> None:
    assert format_stat(92.0, 2.828, 2) == "92.00 ± 2.83"
    assert format_stat(92.0, float("nan"), 2) == "92.00"
    assert format_stat(float("nan"), float("nan"), 2) == "-"


def test_every_format_renders(report) -> None:
    for fmt in FORMATS:
        assert render(report, fmt)
    with pytest.raises(ValueError):
        render(report, "html")


def test_host_rss_is_never_marked_best() -> None:
    records = []
    for strategy, rss in (("late", 100), ("intermediate-add", 900)):
        record = fake_record(_cfg(strategy=strategy))
        records.append(stored_as(record, memory={**(record.memory or {}), "peak_host_rss_bytes": rss * 2**20}))
    display = build_display(build_report(runs_frame(records)).table, list(CONFIG_FIELDS))
    rss = display.headers.index("peak host RSS (MiB)")
    assert not any(row[rss] for row in display.best)
    assert sorted(row[rss] for row in display.rows) == ["100", "900"]


def test_dataset_shown_short_in_caption(report) -> None:
    display = build_display(report.table, report.fields)
    assert "dataset=fake-fingerp" in display.caption and "dataset" not in display.headers


# -- 95 % CI display and robustness columns (session 2) -----------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_fakes import record as _record  # noqa: E402
from results_fakes import robustness as _robustness  # noqa: E402


def test_machine_formats_keep_std_and_ci(report) -> None:
    back = pd.read_csv(io.StringIO(render(report, "csv")))
    for column in ("accuracy_pct_std", "accuracy_pct_ci95_lo", "accuracy_pct_ci95_hi", "robust_auc_pct_mean"):
        assert column in back.columns
    assert back.loc[0, "accuracy_pct_ci95_hi"] - back.loc[0, "accuracy_pct_mean"] == pytest.approx(25.4124, abs=1e-4)
    assert math.isnan(back.loc[2, "accuracy_pct_ci95_lo"])  # n = 1
    rows = json.loads(render(report, "json"))
    assert rows[2]["accuracy_pct_ci95_lo"] is None and rows[0]["accuracy_pct_ci95_lo"] < 92.0


def test_single_seed_tables_show_means_and_say_why() -> None:
    runs = runs_frame([fake_record(_cfg(strategy=s), accuracy=0.9) for s in ("late", "intermediate-add")])
    display = build_display(build_report(runs).table, list(CONFIG_FIELDS))
    assert "±" not in " ".join(cell for row in display.rows for cell in row)
    assert "half-width" not in display.notes[0] and "one run per configuration" in display.notes[0]


def test_robust_columns_appear_only_with_robustness_results() -> None:
    plain = build_report(runs_frame([_record(seed=s) for s in (0, 1)]))
    assert "robust AUC (%)" not in build_display(plain.table, plain.fields).headers
    records = [_record(seed=s, accuracy=a, robust=_robustness(a)) for s, a in ((0, 0.8), (1, 0.9))]
    records.append(_record("early", accuracy=0.7))
    report = build_report(runs_frame(records))
    display = build_display(report.table, report.fields)
    for header in ("robust AUC (%)", "acc. RGB missing (%)", "acc. LiDAR missing (%)"):
        assert header in display.headers
    cells = {row[0]: row for row in display.rows}
    auc = display.headers.index("robust AUC (%)")
    expected = 100 * (_robustness(0.8)["mean_auc"] + _robustness(0.9)["mean_auc"]) / 2
    assert cells["late"][auc].startswith(f"{expected:.2f} ± ")
    assert cells["early"][auc] == "-"
