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
from fusioncli.config import RunConfig  # noqa: E402

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
    # mean ± 95% CI half-width of 90 and 92: t_{0.975,1} * 1.414 / sqrt(2) = 12.71
    assert "91.00 ± 12.71" in result.stdout and "95% CI" in result.stdout
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
    assert "**91.00 ± 12.71**" in md.stdout
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
        "pareto.png",
        "train_time.png",
    ]


def test_plot_without_matplotlib(results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = _report(results, "--plot", str(tmp_path / "plots"))
    assert result.exit_code == 2
    assert "matplotlib" in result.stderr and "install the plot extra" in result.stderr
    assert result.stdout == ""  # fails before printing a table


# -- --compare and --robustness (session 2) ------------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "results"))
from results_fakes import record, robustness  # noqa: E402


@pytest.fixture
def robust_results(tmp_path: Path) -> Path:
    """late beats gmu on clean accuracy by ~2 points on each of 3 seeds; gmu is more robust."""
    store = ResultsStore(tmp_path / "robust")
    for seed, (late, gmu) in enumerate(((0.90, 0.881), (0.93, 0.912), (0.88, 0.858))):
        for strategy, acc, slopes in (("late", late, (0.6, 0.3)), ("gmu", gmu, (0.2, 0.1))):
            rob = robustness(acc, {"rgb_noise": slopes[0], "lidar_noise": slopes[1]})
            store.write(record(strategy, seed, accuracy=acc, robust=rob))
    return store.root


def test_compare_says_who_wins(robust_results: Path) -> None:
    result = _report(robust_results, "--compare", "late", "gmu")
    assert result.exit_code == 0, result.stderr
    assert "late is better than gmu by 1.97 points of accuracy" in result.stdout
    assert "Cohen's dz" in result.stdout and "0,1,2" in result.stdout
    robust = _report(robust_results, "--compare", "late", "gmu", "--metric", "robust", "--format", "json")
    assert robust.exit_code == 0, robust.stderr
    row = json.loads(robust.stdout)[0]
    assert row["metric"] == "robust_auc_pct" and row["mean_diff"] < 0 and row["n"] == 3
    assert row["verdict"].startswith("gmu is better than late")


def test_compare_not_significant_with_two_seeds(results: Path) -> None:
    # diffs 10 and 8 points: t = 9, df = 1, p = 0.07 -- a big gap that two seeds cannot confirm
    result = _report(results, "--compare", "late", "intermediate-add", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    row = pd.read_csv(io.StringIO(result.stdout)).iloc[0]
    assert row["n"] == 2 and row["t"] == pytest.approx(9.0) and row["p"] == pytest.approx(0.0704, abs=1e-4)
    assert not row["significant"] and row["verdict"].startswith("no significant difference")


def test_compare_with_key_value_selectors(robust_results: Path) -> None:
    result = _report(robust_results, "--compare", "strategy=gmu", "strategy=late", "--format", "markdown")
    assert result.exit_code == 0, result.stderr
    assert "Verdict: late is better than gmu" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--compare", "late", "early"], "no finished runs with accuracy (%) match B (early)"),
        (["--compare", "late", "intermediate-multiply"], "match B (intermediate-multiply)"),
        (["--compare", "late", "seed=3"], "runs are paired by seed"),
        (["--compare", "late", "intermediate-add", "--runs"], "--compare cannot be combined with --runs"),
        (["--metric", "f1"], "--metric chooses what --compare tests"),
        (["--compare", "late", "intermediate-add", "--group-by", "strategy"], "--group-by does not apply"),
        (["--robustness"], "none of the 5 selected runs has robustness results"),
    ],
)
def test_compare_and_robustness_errors(results: Path, args: list[str], message: str) -> None:
    result = _report(results, *args)
    assert result.exit_code == 2
    assert message in result.stderr and result.stdout == ""


def test_compare_needs_two_shared_seeds(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "one")
    for strategy in ("late", "gmu"):
        store.write(record(strategy, 51))
    result = _report(store.root, "--compare", "late", "gmu")
    assert result.exit_code == 2
    assert "a paired test needs at least 2 seeds shared by A and B; found only 1 (seed 51)" in result.stderr
    assert "--seeds" in result.stderr


def test_default_table_gains_robustness_columns(robust_results: Path) -> None:
    result = _report(robust_results)
    assert result.exit_code == 0, result.stderr
    assert "robust AUC (%)" in result.stdout and "acc. LiDAR missing (%)" in result.stdout


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json", "latex"])
def test_robustness_view_in_every_format(robust_results: Path, fmt: str) -> None:
    result = _report(robust_results, "--robustness", "--format", fmt)
    assert result.exit_code == 0, result.stderr
    assert ("rgb\\_noise" if fmt == "latex" else "rgb_noise") in result.stdout
    assert ("lidar_missing" if fmt in ("csv", "json") else "LiDAR missing") in result.stdout
    if fmt == "csv":
        table = pd.read_csv(io.StringIO(result.stdout))
        auc = table[(table["strategy"] == "gmu") & (table["corruption"] == "rgb_noise") & (table["measure"] == "auc")]
        expected = 100 * (0.881 + 0.912 + 0.858) / 3 * 0.9  # linear fall with slope 0.2: AUC = clean * 0.9
        assert auc["pct_mean"].iloc[0] == pytest.approx(expected)
    if fmt in ("table", "markdown"):
        assert "Accuracy under corruption" in result.stdout and "Missing modality" in result.stdout


def test_plot_with_robustness(robust_results: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = _report(robust_results, "--robustness", "--plot", str(tmp_path / "plots"))
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert {"robustness.png", "robustness_matrix.png", "pareto.png"} <= set(names) and len(names) == 7
    assert "robustness.png" in result.stderr


# -- a damaged store (issue 12 part 6) -------------------------------------------------------------


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _run_ids(results: Path, strategy: str) -> list[str]:
    store = ResultsStore(results)
    return sorted(r.run_id for r in store.records() if r.config["strategy"] == strategy)


def test_a_truncated_row_is_reported_from_its_record(results: Path) -> None:
    rid = _run_ids(results, "late")[0]
    row = ResultsStore(results).row_path(rid)
    _cut(row)
    result = _report(results, "--format", "csv")
    assert result.exit_code == 0, result.stderr
    table = pd.read_csv(io.StringIO(result.stdout))
    assert list(table["strategy"]) == ["late", "intermediate-add"] and list(table["n"]) == [2, 2]
    assert table.loc[0, "accuracy_pct_mean"] == pytest.approx(91.0)
    assert f"note: run {rid}: {row}: " in result.stderr and "read from its record instead" in result.stderr
    assert "Traceback" not in result.output


def test_a_run_with_a_broken_record_is_skipped_and_named(results: Path) -> None:
    store = ResultsStore(results)
    rid = _run_ids(results, "late")[0]
    _cut(store.record_path(rid))
    _cut(store.row_path(rid))
    result = _report(results, "--format", "json", "--runs")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 4 and rid not in {r["run_id"] for r in rows}
    [line] = [line for line in result.stderr.splitlines() if "damaged" in line]
    assert f"skipped damaged run {rid}: {store.record_path(rid)}: not valid JSON" in line
    assert "Traceback" not in result.output
    # The table view still aggregates everything else.
    table = _report(results, "--format", "csv")
    assert table.exit_code == 0 and list(pd.read_csv(io.StringIO(table.stdout))["n"]) == [1, 2]
    assert "skipped damaged run" in table.stderr


def test_garbage_in_every_file_of_a_run_is_one_line_each(results: Path) -> None:
    store = ResultsStore(results)
    late, add = _run_ids(results, "late"), _run_ids(results, "intermediate-add")
    store.record_path(late[1]).write_text("[]")
    store.row_path(add[0]).write_bytes(b"PAR1 not really")
    store.record_path(add[0]).unlink()
    result = _report(results, "--runs", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    assert len(pd.read_csv(io.StringIO(result.stdout))) == 3
    damaged = [line for line in result.stderr.splitlines() if line.startswith("skipped damaged run")]
    assert len(damaged) == 2
    assert str(store.record_path(late[1])) in result.stderr and str(store.row_path(add[0])) in result.stderr


def test_nothing_readable_is_an_error_naming_each_damaged_file(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results")
    cfg = RunConfig(strategy="late", epochs=1, device="cpu", precision="fp32")
    record = fake_record(cfg)
    store.write(record)
    _cut(store.record_path(record.run_id))
    result = _report(store.root)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert f"error: damaged run {record.run_id}: {store.record_path(record.run_id)}" in result.stderr
    assert "no readable run" in result.stderr and "Traceback" not in result.output
