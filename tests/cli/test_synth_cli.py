"""`fusioncli synth` through the CLI: files, summaries, refusal, defaults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fusioncli.cli import app

runner = CliRunner()


def test_writes_the_layout_and_a_summary_on_stderr(tmp_path: Path) -> None:
    out = tmp_path / "assessment"
    result = runner.invoke(app, ["synth", str(out), "--per-class", "3", "--seed", "1"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "wrote 6 samples" in result.stderr and "seed 1" in result.stderr
    for name in ("cubes", "spheres"):
        assert sorted(p.name for p in (out / name / "rgb").iterdir()) == ["0000.png", "0001.png", "0002.png"]
        depth = np.load(out / name / "lidar" / "0002.npy", allow_pickle=False)
        assert depth.shape == (64, 64) and depth.dtype == np.float32


def test_json_format_prints_the_summary_on_stdout(tmp_path: Path) -> None:
    out = tmp_path / "d"
    result = runner.invoke(app, ["synth", str(out), "-n", "2", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"] == {"cubes": 2, "spheres": 2} and summary["total"] == 4
    assert summary["per_class"] == 2 and summary["seed"] == 0 and summary["out_dir"] == str(out)
    assert summary["samples_per_s"] > 0 and summary["params"]["supersample"] == 2


def test_refuses_a_non_empty_folder_until_forced(tmp_path: Path) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["synth", str(out), "-n", "1"])
    assert result.exit_code == 2
    assert "error:" in result.stderr and str(out) in result.stderr and "--force" in result.stderr
    assert "Traceback" not in result.stderr
    assert (out / "notes.txt").read_text() == "mine"
    result = runner.invoke(app, ["synth", str(out), "-n", "1", "--force"])
    assert result.exit_code == 0, result.stderr
    assert not (out / "notes.txt").exists() and (out / "cubes" / "rgb" / "0000.png").exists()


def test_same_seed_same_files_through_the_cli(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert runner.invoke(app, ["synth", str(tmp_path / name), "-n", "2", "--seed", "9"]).exit_code == 0
    for file in (tmp_path / "a").rglob("*.*"):
        assert file.read_bytes() == (tmp_path / "b" / file.relative_to(tmp_path / "a")).read_bytes()


@pytest.mark.parametrize(("args", "fragment"), [(["-n", "0"], "--per-class"), (["-n", "1", "--seed", "-3"], "--seed")])
def test_bad_values_exit_2_with_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    result = runner.invoke(app, ["synth", str(tmp_path / "d"), *args])
    assert result.exit_code == 2
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()


def test_default_output_folder_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSIONCLI_DATA_DIR", str(tmp_path / "env-data"))
    result = runner.invoke(app, ["synth", "-n", "1"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "env-data" / "spheres" / "lidar" / "0000.npy").exists()


def test_help_documents_the_default_size_and_an_example() -> None:
    result = runner.invoke(app, ["synth", "--help"])
    assert result.exit_code == 0
    assert "1000" in result.stdout and "data/assessment" in result.stdout
    assert "fusioncli synth data/assessment" in result.stdout
