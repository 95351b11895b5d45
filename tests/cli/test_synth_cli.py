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


# -- difficulty ---------------------------------------------------------------------------------


def test_difficulty_preset_and_knob_flags_reach_the_renderer(tmp_path: Path) -> None:
    from fusioncli.data.synth import SYNTH_RECORD, difficulty_params

    out = tmp_path / "hard"
    result = runner.invoke(
        app, ["synth", str(out), "-n", "2", "--difficulty", "hard", "--clutter", "0", "--exposure", "0.8",
              "--size-range", "0.6", "0.9", "--format", "json"]
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    expected = difficulty_params("hard", clutter=0, exposure=0.8, size_range=(0.6, 0.9)).to_dict()
    assert summary["difficulty"] == "hard" and summary["params"] == expected
    assert summary["overrides"] == {"clutter": 0, "exposure": 0.8, "size_range": [0.6, 0.9]}
    record = json.loads((out / SYNTH_RECORD).read_text())
    assert record["params"] == expected and record["difficulty"] == "hard"
    # the knobs change the files: the same seed at easy writes other bytes
    easy = tmp_path / "easy"
    assert runner.invoke(app, ["synth", str(easy), "-n", "2"]).exit_code == 0
    assert not (easy / SYNTH_RECORD).exists()
    name = "cubes/lidar/0000.npy"
    assert (out / name).read_bytes() != (easy / name).read_bytes()


def test_table_summary_names_the_difficulty_and_overrides(tmp_path: Path) -> None:
    result = runner.invoke(app, ["synth", str(tmp_path / "d"), "-n", "1", "-d", "medium", "--corruption", "0"])
    assert result.exit_code == 0, result.stderr
    assert "difficulty medium with corruption=0.0" in result.stderr and "synth.json" in result.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--depth-noise", "-1"], "--depth-noise"),
        (["--beam-dropout", "1"], "--beam-dropout"),
        (["--exposure", "0"], "--exposure"),
        (["--rgb-noise", "2"], "--rgb-noise"),
        (["--clutter", "9"], "--clutter"),
        (["--corruption", "1.5"], "--corruption"),
        (["--size-range", "2", "1"], "--size-range"),
        (["--distance-range", "1", "2"], "--distance-range"),
        (["--difficulty", "extreme"], "--difficulty"),
        (["--corruption", "lots"], "--corruption"),
    ],
)
def test_bad_knob_values_exit_2_naming_the_flag(tmp_path: Path, args: list[str], flag: str) -> None:
    result = runner.invoke(app, ["synth", str(tmp_path / "d"), "-n", "1", *args])
    assert result.exit_code == 2
    assert flag in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()


def test_help_lists_the_difficulty_knobs() -> None:
    result = runner.invoke(app, ["synth", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in ("--difficulty", "--depth-noise", "--beam-dropout", "--exposure", "--rgb-noise", "--size-range",
                 "--distance-range", "--clutter", "--corruption"):
        assert flag in result.stdout, flag
    assert "--difficulty hard" in result.stdout
