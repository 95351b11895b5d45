"""`fusioncli evaluate` through the CLI runner: checkpoints from train, the store's best, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fusioncli.cli import app

runner = CliRunner()
CPU = ["--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def checkpoint(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`fusioncli train --checkpoint`: (weights path, the run record printed with --format json)."""
    path = tmp_path_factory.mktemp("cli-ckpt") / "late.safetensors"
    result = runner.invoke(
        app,
        ["train", "--strategy", "early", "--epochs", "1", *CPU, "--cache-dir", str(cache_dir),
         "--checkpoint", str(path), "--format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return path, json.loads(result.stdout)


def test_json_is_one_record_per_checkpoint(checkpoint, cache_dir: Path) -> None:
    path, record = checkpoint
    result = runner.invoke(app, ["evaluate", str(path), str(path), "--cache-dir", str(cache_dir), *CPU, "-f", "json"])
    assert result.exit_code == 0, result.stderr
    evaluations = json.loads(result.stdout)
    assert len(evaluations) == 2
    e = evaluations[0]
    assert e["checkpoint"] == str(path) and e["run_id"] == record["run_id"]
    assert e["dataset"]["split"] == "val" and e["dataset"]["same_as_training"] is True
    assert e["metrics"]["accuracy"] == pytest.approx(record["metrics"]["val_accuracy"], abs=1e-12)
    assert "auto: val split of the dataset it was trained on" in result.stderr


def test_table_names_the_checkpoint_and_the_split(checkpoint, cache_dir: Path) -> None:
    path, _ = checkpoint
    result = runner.invoke(app, ["evaluate", str(path), "--cache-dir", str(cache_dir), *CPU, "--split", "train"])
    assert result.exit_code == 0, result.stderr
    for text in ("evaluation on", "early", "train", "own acc", "→ cubes", "→ spheres"):
        assert text in result.stdout
    assert "optimistic" in result.stderr


def test_default_is_the_results_stores_best_model(checkpoint, cache_dir: Path, tmp_path: Path) -> None:
    from fusioncli.results.store import ResultsStore

    path, record = checkpoint
    store = ResultsStore(tmp_path / "results")
    store.best_dir.mkdir(parents=True)
    for suffix in (".safetensors", ".json"):
        (store.best_dir / f"model{suffix}").write_bytes(path.with_suffix(suffix).read_bytes())
    args = ["--results-dir", str(store.root), "--cache-dir", str(cache_dir), *CPU, "-f", "json"]
    result = runner.invoke(app, ["evaluate", *args])
    assert result.exit_code == 0, result.stderr
    [e] = json.loads(result.stdout)
    assert e["checkpoint"] == str(store.best_checkpoint_path) and e["run_id"] == record["run_id"]
    # A folder argument means the model.safetensors inside it.
    result = runner.invoke(app, ["evaluate", str(store.best_dir), *args])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)[0]["checkpoint"] == str(store.best_checkpoint_path)


def test_bad_input_is_one_line_and_exit_2(checkpoint, cache_dir: Path, tmp_path: Path) -> None:
    path, _ = checkpoint
    cases = [
        (["evaluate", str(tmp_path / "nope.safetensors"), "--cache-dir", str(cache_dir)], "nope.safetensors does not exist"),
        (["evaluate", "--results-dir", str(tmp_path / "empty"), "--cache-dir", str(cache_dir)], "no best model"),
        (["evaluate", str(path), "--cache-dir", str(tmp_path / "nocache")], "no prepared cache"),
        (["evaluate", str(path), "--cache-dir", str(cache_dir), "--split", "test"], "test"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    broken.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
    result = runner.invoke(app, ["evaluate", str(broken), "--cache-dir", str(cache_dir), *CPU])
    assert result.exit_code == 2 and "is not a valid safetensors file" in result.stderr


def test_runs_of_a_sweep_with_kept_weights_then_report_on_them(cache_dir: Path, tmp_path: Path) -> None:
    results, into = tmp_path / "results", tmp_path / "results-other"
    sweep = ["sweep", "--strategies", "early", "--lrs", "1e-3", "--schedulers", "constant", "--epochs", "1",
             "--limit-per-class", "12", *CPU, "--cache-dir", str(cache_dir), "--results-dir", str(results)]  # fmt: skip
    assert runner.invoke(app, [*sweep, "--seeds", "1"]).exit_code == 0  # no weights kept
    result = runner.invoke(app, ["evaluate", "--runs", "--results-dir", str(results), "--cache-dir", str(cache_dir)])
    assert result.exit_code == 2 and "no run in" in result.stderr and "--keep-weights" in result.stderr
    kept = runner.invoke(app, [*sweep, "--seeds", "1,2", "--keep-weights"])
    assert kept.exit_code == 0, kept.stderr
    assert "weights: 2 run(s) in" in kept.stderr and "fusioncli evaluate --runs" in kept.stderr

    args = ["evaluate", "--runs", "--results-dir", str(results), "--cache-dir", str(cache_dir), *CPU]
    result = runner.invoke(app, [*args, "--into", str(into), "--split", "all", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    [row] = json.loads(result.stdout)  # the report: one configuration over seeds 1 and 2
    assert row["strategy"] == "early" and row["n"] == 2 and row["seeds"] == "1,2"
    assert "[2/2]" in result.stderr and "includes samples the model was trained on" in result.stderr
    report = runner.invoke(app, ["report", "--results-dir", str(into), "-f", "json"])
    assert report.exit_code == 0, report.stderr
    assert json.loads(report.stdout)[0]["accuracy_pct_mean"] == pytest.approx(row["accuracy_pct_mean"])
    table = runner.invoke(app, [*args, "--filter", "seed=2"])
    assert table.exit_code == 0, table.stderr
    assert "1 configurations, evaluated on" in table.stdout and "[1/1]" in table.stderr


def test_flags_that_need_runs(checkpoint, cache_dir: Path, tmp_path: Path) -> None:
    path, _ = checkpoint
    for extra, message in (
        (["--into", str(tmp_path / "x")], "--into goes with --runs"),
        (["--filter", "seed=1"], "--filter goes with --runs"),
        (["--force"], "--force goes with --runs"),
        (["--runs"], "give checkpoint files or --runs, not both"),
    ):
        result = runner.invoke(app, ["evaluate", str(path), "--cache-dir", str(cache_dir), *extra])
        assert result.exit_code == 2 and message in result.stderr, (extra, result.stderr)
