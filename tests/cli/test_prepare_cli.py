"""`fusioncli prepare` through the CLI: summaries, json, exit codes, error lines, no tracebacks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))  # tests/data/rawfactory.py
import rawfactory as rf  # noqa: E402

from fusioncli.cli import app  # noqa: E402

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, ["prepare", *args])


@pytest.fixture()
def raw(tmp_path: Path) -> Path:
    return rf.write_raw(tmp_path / "raw", per_class=6)


def test_builds_then_hits_with_a_summary_on_stderr(raw: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = _run("--data-dir", str(raw), "--cache-dir", str(cache), "--val-fraction", "0.5")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # table mode: everything is for humans
    assert "cache built" in result.stderr
    assert "cubes" in result.stderr and "spheres" in result.stderr
    assert "stratified 50%" in result.stderr and "cache size" in result.stderr
    assert (cache / "manifest.json").is_file()
    again = _run("--data-dir", str(raw), "--cache-dir", str(cache), "--val-fraction", "0.5")
    assert again.exit_code == 0 and "cache hit" in again.stderr


def test_json_summary_on_stdout(raw: Path, tmp_path: Path) -> None:
    rf.write_npy(raw / "spheres" / "lidar" / "0099.npy")  # an orphan
    result = _run("--data-dir", str(raw), "--cache-dir", str(tmp_path / "c"), "--val-fraction", "0.5", "--format", "json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"] == {"cubes": {"train": 3, "val": 3}, "spheres": {"train": 3, "val": 3}}
    assert summary["cache_hit"] is False and len(summary["fingerprint"]) == 32
    assert summary["skipped"] == [{"path": "spheres/lidar/0099.npy", "reason": "no rgb partner (skipped)"}]


def test_defaults_come_from_the_environment(raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSIONCLI_DATA_DIR", str(raw))
    monkeypatch.setenv("FUSIONCLI_CACHE_DIR", str(tmp_path / "envcache"))
    result = _run("--val-fraction", "0.5")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "envcache" / "manifest.json").is_file()


def test_bad_files_exit_2_with_one_line_each_and_no_cache(raw: Path, tmp_path: Path) -> None:
    bad = [
        rf.break_file(raw, "truncated_png", "cubes", "0001"),
        rf.break_file(raw, "small_png", "cubes", "0004"),
        rf.break_file(raw, "npy_pickled", "spheres", "0002"),
        rf.break_file(raw, "npy_text", "spheres", "0003"),
    ]
    cache = tmp_path / "out" / "cache"
    result = _run("--data-dir", str(raw), "--cache-dir", str(cache), "--val-fraction", "0.5")
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(bad)
    for path in bad:
        assert any(path.relative_to(raw).as_posix() in line for line in errors)
    assert "pickled objects" in result.stderr and "not a .npy file" in result.stderr
    assert "--skip-invalid" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "out").exists()


def test_skip_invalid_exits_0_and_lists_skipped(raw: Path, tmp_path: Path) -> None:
    rf.break_file(raw, "npy_nan", "cubes", "0002")
    cache = tmp_path / "cache"
    result = _run("--data-dir", str(raw), "--cache-dir", str(cache), "--val-fraction", "0.5", "--skip-invalid")
    assert result.exit_code == 0, result.stderr
    assert "skipped 1 file" in result.stderr and "cubes/lidar/0002.npy" in result.stderr
    manifest = json.loads((cache / "manifest.json").read_text())
    assert [p["path"] for p in manifest["invalid"]] == ["cubes/lidar/0002.npy"]


def test_nested_quirk_is_reported_with_the_fix(raw: Path, tmp_path: Path) -> None:
    lidar = raw / "spheres" / "lidar"
    (lidar / "lidar").mkdir()
    for f in sorted(lidar.glob("*.npy")):
        f.rename(lidar / "lidar" / f.name)
    result = _run("--data-dir", str(raw), "--cache-dir", str(tmp_path / "c"), "--val-fraction", "0.5")
    assert result.exit_code == 0, result.stderr
    flat = " ".join(result.stderr.split())
    assert "one level too deep" in flat and "mv " in flat


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
        ([], "the seed split needs more than 320"),  # 6 per class, default split
    ],
)
def test_bad_options_exit_2(raw: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = _run("--data-dir", str(raw), "--cache-dir", str(tmp_path / "c"), *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_missing_data_and_no_class_folders(tmp_path: Path) -> None:
    result = _run("--data-dir", str(tmp_path / "nope"), "--cache-dir", str(tmp_path / "c"))
    assert result.exit_code == 2 and "does not exist" in result.stderr
    (tmp_path / "empty").mkdir()
    result = _run("--data-dir", str(tmp_path / "empty"), "--cache-dir", str(tmp_path / "c"))
    assert result.exit_code == 2 and "no class folders" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_shows_an_example() -> None:
    result = runner.invoke(app, ["prepare", "--help"])
    assert result.exit_code == 0
    assert "--skip-invalid" in result.stdout and "Example" in result.stdout
    assert "FUSIONCLI_DATA_DIR" in result.stdout  # the default is named, not swallowed as markup
