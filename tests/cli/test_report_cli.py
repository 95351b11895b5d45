"""`fusioncli report` through the CLI: every format on stdout, filters, --runs, plots, errors."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweep"))
from sweep_fakes import fake_record  # noqa: E402

from fusioncli.cli import app  # noqa: E402
from fusioncli.results.store import ResultsStore  # noqa: E402
from fusioncli.train.config import RunConfig  # noqa: E402

runner = CliRunner()


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A store with 2 strategies x 2 seeds finished and one failed run."""
    store = ResultsStore(tmp_path / "results")
    for strategy, accs in (("late", (0.90, 0.92)), ("intermediate-add", (0.80, 0.84))):
        for seed, acc in zip((51, 52), accs):
            cfg = RunConfig(strategy=strategy, seed=seed, epochs=1, device="cpu", precision="fp32")
            store.write(fake_record(cfg, accuracy=acc, train_seconds=5.0 + seed - 51))
    bad = RunConfig(strategy="intermediate-multiply", epochs=1, device="cpu", precision="fp32")
    store.write(fake_record(bad, status="failed", error="RunFailedError: loss became non-finite"))
    return store.root


def _report(results: Path, *args: str):
    return runner.invoke(app, ["report", "--results-dir", str(results), *args])


def test_table(results: Path) -> None:
    result = _report(results)
    assert result.exit_code == 0, result.stderr
    assert "late" in result.stdout and "intermediate-add" in result.stdout
    assert "91.00 ± 1.41" in result.stdout  # mean ± std (ddof=1) of 90 and 92
    assert "accuracy (%)" in result.stdout and "train time (s)" in result.stdout
    assert "1 failed run(s) left out of the aggregates" in result.stderr


def test_csv_is_machine_readable(results: Path) -> None:
    result = _report(results, "--format", "csv")
    assert result.exit_code == 0
    table = pd.read_csv(io.StringIO(result.stdout))
    assert list(table["strategy"]) == ["late", "intermediate-add"]
    assert table.loc[0, "accuracy_pct_mean"] == pytest.approx(91.0)
    assert list(table["n"]) == [2, 2]


def test_json_and_runs(results: Path) -> None:
    result = _report(results, "--format", "json", "--runs")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert len(rows) == 5
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed[0]["error"] == "RunFailedError: loss became non-finite" and failed[0]["accuracy_pct"] is None
    assert "left out" not in result.stderr


def test_markdown_and_latex(results: Path) -> None:
    md = _report(results, "--format", "markdown")
    assert md.exit_code == 0
    assert md.stdout.splitlines()[1].startswith("|---")
    assert "**91.00 ± 1.41**" in md.stdout
    tex = _report(results, "--format", "latex")
    assert tex.exit_code == 0 and "\\begin{tabular}" in tex.stdout and "accuracy (\\%)" in tex.stdout


def test_filter_group_by_sort(results: Path) -> None:
    result = _report(results, "--format", "csv", "--filter", "strategy=intermediate-add")
    assert list(pd.read_csv(io.StringIO(result.stdout))["strategy"]) == ["intermediate-add"]
    assert "2 of 5 runs match the filters" in result.stderr
    result = _report(results, "--format", "csv", "--group-by", "backbone")
    table = pd.read_csv(io.StringIO(result.stdout))
    assert len(table) == 1 and table.loc[0, "n"] == 4
    result = _report(results, "--format", "csv", "--sort", "accuracy:asc")
    assert list(pd.read_csv(io.StringIO(result.stdout))["strategy"]) == ["intermediate-add", "late"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--filter", "strategy=early"], "no runs match --filter strategy=early"),
        (["--filter", "colour=red"], "unknown key 'colour'"),
        (["--group-by", "colour"], "--group-by: unknown field 'colour'"),
        (["--sort", "speed"], "--sort: unknown column 'speed'"),
    ],
)
def test_bad_options_exit_2(results: Path, args: list[str], message: str) -> None:
    result = _report(results, *args)
    assert result.exit_code == 2
    assert message in result.stderr and result.stdout == ""


def test_empty_store_gives_a_hint(tmp_path: Path) -> None:
    for where in (tmp_path / "missing", tmp_path):
        result = runner.invoke(app, ["report", "--results-dir", str(where)])
        assert result.exit_code == 2
        assert "fusioncli sweep" in result.stderr and "fusioncli demo" in result.stderr


def test_plot(results: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = _report(results, "--plot", str(tmp_path / "plots"))
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == [
        "accuracy.png",
        "accuracy_vs_params.png",
        "accuracy_vs_time.png",
        "train_time.png",
    ]


def test_plot_without_matplotlib(results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = _report(results, "--plot", str(tmp_path / "plots"))
    assert result.exit_code == 2
    assert "matplotlib" in result.stderr and "install the plot extra" in result.stderr
    assert result.stdout == ""  # fails before printing a table
