"""`fusioncli demo`: the whole pipeline in a work folder, reused on a second run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweep"))
from sweep_fakes import FakeTrainer

from fusioncli.cli import app
from fusioncli.demo import DemoPlan, demo_configs, next_commands, run_demo
from fusioncli.results.store import ResultsStore

runner = CliRunner()


def test_demo_grid_and_next_commands() -> None:
    configs = demo_configs(DemoPlan())
    assert {c.strategy for c in configs} == {"late", "early"}
    assert len(configs) == 4
    # every configuration has two seeds, so the report shows a mean with a 95% CI
    for strategy in ("late", "early"):
        assert sorted(c.seed for c in configs if c.strategy == strategy) == [51, 52]
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
    assert "2 configurations" in first.stdout and "late" in first.stdout and "early" in first.stdout
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
    assert "2 configurations" in bigger.stdout  # this grid only, not the 8 stored runs (4 configurations)


def test_demo_data_follows_the_sphere_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fusioncli.sweep.runner.train_run", FakeTrainer())
    work = tmp_path / "demo"
    sphere = work / "raw" / "spheres" / "lidar" / "0000.npy"
    first = run_demo(work, DemoPlan(per_class=4, epochs=1))
    assert not first.synth_reused
    big = np.load(sphere)
    assert run_demo(work, DemoPlan(per_class=4, epochs=1)).synth_reused
    equal_area = run_demo(work, DemoPlan(per_class=4, epochs=1, sphere_scale=1.38))
    assert not equal_area.synth_reused  # other scenes: rewritten, not reused
    assert (np.load(sphere) < 50).sum() < (big < 50).sum()  # a smaller sphere: fewer LiDAR returns


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
