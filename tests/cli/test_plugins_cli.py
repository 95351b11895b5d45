"""Strategy plugins through the CLI: --plugin, FUSIONCLI_PLUGINS, train/sweep/report, --check."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from plugin_sources import BROKEN_IMPORT, PLAIN_LIST, write_plugin  # noqa: E402

from fusioncli.cli import app  # noqa: E402
from fusioncli.models.plugins import ENV_VAR, unload_plugins  # noqa: E402

runner = CliRunner()
QUICK = ["--epochs", "1", "--device", "cpu", "--precision", "fp32", "--limit-per-class", "6"]


@pytest.fixture(autouse=True)
def _clean_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(ENV_VAR, raising=False)
    unload_plugins()
    yield
    unload_plugins()


def test_strategies_lists_a_plugin_with_its_size(tmp_path: Path) -> None:
    path = write_plugin(tmp_path)
    result = runner.invoke(app, ["--plugin", str(path), "strategies", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["tiny-plugin"]["params"] > 0 and rows["tiny-plugin"]["flops_per_sample"] > 0


def test_environment_variable_plugins_reach_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(write_plugin(tmp_path, name="from-env")))
    result = runner.invoke(app, ["strategies", "--check", "from-env"])
    assert result.exit_code == 0, result.stderr
    assert "from-env from plugin" in result.stdout and ": ok" in result.stdout


def test_train_a_plugin_then_edit_it_retrains(cache_dir: Path, tmp_path: Path) -> None:
    path = write_plugin(tmp_path)
    args = ["--plugin", str(path), "train", "--strategy", "tiny-plugin", *QUICK, "--cache-dir", str(cache_dir), "-f"]
    first = runner.invoke(app, [*args, "json"])
    assert first.exit_code == 0, first.stderr
    record = json.loads(first.stdout)
    assert record["status"] == "finished"
    assert record["plugin"]["file"] == str(path.resolve()) and len(record["plugin"]["sha256"]) == 64
    path.write_text(path.read_text() + "\n# edited\n")
    second = runner.invoke(app, [*args, "json"])
    assert second.exit_code == 0, second.stderr
    edited = json.loads(second.stdout)
    assert edited["run_id"] != record["run_id"]
    assert edited["plugin"]["sha256"] != record["plugin"]["sha256"]


def test_sweep_and_report_a_plugin_strategy(cache_dir: Path, tmp_path: Path) -> None:
    path = write_plugin(tmp_path)
    results = tmp_path / "results"
    sweep = ["sweep", "--strategies", "late,tiny-plugin", "--lrs", "1e-3", "--schedulers", "constant", *QUICK]
    result = runner.invoke(
        app, ["--plugin", str(path), *sweep, "--cache-dir", str(cache_dir), "--results-dir", str(results)]
    )
    assert result.exit_code == 0, result.stderr
    unload_plugins()  # report reads the records: it needs no plugin
    report = runner.invoke(app, ["report", "--results-dir", str(results), "--format", "csv"])
    assert report.exit_code == 0, report.stderr
    assert "tiny-plugin" in report.stdout and "late" in report.stdout


def test_check_fails_with_one_line_per_problem(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, PLAIN_LIST, file="lowrank.py")
    result = runner.invoke(app, ["--plugin", str(path), "strategies", "--check", "lowrank-list"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 4  # two list factors, an unused weight and its bias
    assert "Traceback" not in result.stderr and str(path.resolve()) in result.stderr


def test_check_uses_the_cache_shape(cache_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["strategies", "--check", "late", "--cache-dir", str(cache_dir), "-f", "json"])
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["ok"] and row["num_classes"] == 2 and row["size"] == 64


def test_a_broken_plugin_exits_2_naming_the_file(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, BROKEN_IMPORT, file="broken.py")
    result = runner.invoke(app, ["--plugin", str(path), "strategies"])
    assert result.exit_code == 2
    assert f"plugin {path.resolve()} failed to load (line 4): RuntimeError: this plugin is broken" in result.stderr
    assert "Traceback" not in result.stderr
    missing = runner.invoke(app, ["--plugin", str(tmp_path / "nope.py"), "strategies"])
    assert missing.exit_code == 2 and "nope.py: cannot read it" in missing.stderr


def test_unknown_strategy_without_its_plugin_is_bad_usage(tmp_path: Path) -> None:
    result = runner.invoke(app, ["strategies", "--check", "tiny-plugin"])
    assert result.exit_code == 2 and "unknown strategy 'tiny-plugin'" in result.stderr


def test_listing_sizes_the_models_for_the_cache(cache_dir: Path) -> None:
    result = runner.invoke(app, ["strategies", "--cache-dir", str(cache_dir), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    assert {row["name"]: row for row in json.loads(result.stdout)}["late"]["params"] == 13_147_202  # 2 classes
