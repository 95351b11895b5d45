"""`fusioncli demo`: the whole pipeline in a work folder, reused on a second run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweep"))
from sweep_fakes import FakeTrainer  # noqa: E402

from fusioncli.cli import app  # noqa: E402
from fusioncli.demo import DemoPlan, demo_configs, next_commands  # noqa: E402
from fusioncli.results.store import ResultsStore  # noqa: E402

runner = CliRunner()


def test_demo_grid_and_next_commands() -> None:
    configs = demo_configs(DemoPlan())
    assert {c.strategy for c in configs} == {"late", "intermediate-add"}
    assert len(configs) == 4
    text = "\n".join(next_commands())
    for command in (
        "fusioncli synth --per-class 9999",
        "fusioncli prepare",
        "fusioncli sweep",
        "fusioncli report --format markdown",
    ):
        assert command in text


def test_demo_pipeline_then_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = FakeTrainer()
    monkeypatch.setattr("fusioncli.sweep.runner.train_run", trainer)
    args = ["demo", "--workdir", str(tmp_path / "demo"), "--per-class", "12", "--epochs", "1"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.stderr
    assert "1/3 synth" in first.stderr and "2/3 prepare" in first.stderr and "3/3 sweep: 4 runs" in first.stderr
    assert "4 finished, 0 skipped, 0 failed" in first.stderr
    assert "4 configurations" in first.stdout and "late" in first.stdout
    assert "fusioncli synth --per-class 9999" in first.stderr
    assert first.stderr.rstrip().splitlines()[-1].strip().startswith("fusioncli evaluate --cache-dir")  # last hint
    assert ResultsStore(tmp_path / "demo" / "results").best_checkpoint_path.is_file()
    assert len(trainer.calls) == 4

    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.stderr
    assert "(synthetic data reused, cache hit)" in second.stderr
    assert "0 finished, 4 skipped" in second.stderr
    assert len(trainer.calls) == 4  # nothing retrained

    bigger = runner.invoke(app, ["demo", "--workdir", str(tmp_path / "demo"), "--per-class", "14", "--epochs", "1"])
    assert bigger.exit_code == 0, bigger.stderr
    assert "synthetic data reused" not in bigger.stderr  # other size: data rewritten, new fingerprint
    assert "4 finished" in bigger.stderr
    assert "4 configurations" in bigger.stdout  # the report shows this grid only, not the 8 stored runs


def test_demo_refuses_foreign_data(tmp_path: Path) -> None:
    raw = tmp_path / "demo" / "raw"
    raw.mkdir(parents=True)
    (raw / "mine.txt").write_text("not the demo's")
    result = runner.invoke(app, ["demo", "--workdir", str(tmp_path / "demo")])
    assert result.exit_code == 2
    assert "was not written by the demo" in result.stderr
    assert (raw / "mine.txt").exists()


@pytest.mark.slow
def test_demo_with_real_training(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["demo", "--workdir", str(tmp_path / "demo"), "--per-class", "16", "--epochs", "1", "--precision", "fp32"]
    )
    assert result.exit_code == 0, result.stderr
    assert "4 finished" in result.stderr
    assert "accuracy (%)" in result.stdout
