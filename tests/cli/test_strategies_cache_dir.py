"""`fusioncli strategies --cache-dir`: figures for the cache's image size and class count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fusioncli.cli import app
from fusioncli.data.cache import MANIFEST
from fusioncli.models import describe_strategies, strategy_names

runner = CliRunner()


def sized_cache(cache_dir: Path, folder: Path, size: tuple[int, int], classes: list[str]) -> Path:
    """A copy of the session cache's manifest naming ``classes`` and ``size`` images: all that
    `strategies` reads of a cache (it never loads the samples)."""
    folder.mkdir()
    manifest = json.loads((cache_dir / MANIFEST).read_text())
    manifest["class_names"] = classes
    manifest["image_size"] = list(size)  # what load_cache holds the shards to
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_default_says_64_by_64_and_2_classes() -> None:
    result = runner.invoke(app, ["strategies", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {(tuple(r["input_size"]), r["num_classes"]) for r in rows} == {((64, 64), 2)}
    table = runner.invoke(app, ["strategies"])
    assert table.exit_code == 0, table.stderr
    assert "64x64 inputs and 2 classes" in table.stdout and "13,147,202" in table.stdout


def test_a_cache_of_another_size_and_class_count(cache_dir: Path, tmp_path: Path) -> None:
    cache = sized_cache(cache_dir, tmp_path / "cache", (48, 80), ["box", "ball", "cone"])
    result = runner.invoke(app, ["strategies", "--backbone", "all", "--cache-dir", str(cache), "-f", "json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 2 * len(strategy_names())
    assert {(tuple(r["input_size"]), r["num_classes"]) for r in rows} == {((48, 80), 3)}
    expected = {(r["name"], r["backbone"]): r["params"] for r in describe_strategies("all", 3, (48, 80))}
    assert {(r["name"], r["backbone"]): r["params"] for r in rows} == expected
    late = next(r for r in rows if (r["name"], r["backbone"]) == ("late", "seed"))
    assert late["params"] == 13_147_202 - 2 * 400 * 1000 + 51  # 6000-long flatten, a third class
    table = runner.invoke(app, ["strategies", "--cache-dir", str(cache)])
    assert table.exit_code == 0, table.stderr
    assert "48x80 inputs and 3 classes" in table.stdout and f"{late['params']:,}" in table.stdout


def test_check_uses_the_cache_size(cache_dir: Path, tmp_path: Path) -> None:
    cache = sized_cache(cache_dir, tmp_path / "cache", (48, 80), ["box", "ball", "cone", "torus"])
    result = runner.invoke(app, ["strategies", "--check", "cross-attention", "--cache-dir", str(cache), "-f", "json"])
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["ok"] and row["input_size"] == [48, 80] and row["size"] is None and row["num_classes"] == 4
    text = runner.invoke(app, ["strategies", "--check", "late", "--cache-dir", str(cache)])
    assert text.exit_code == 0, text.stderr
    assert "48x80, 4 classes" in text.stdout


@pytest.mark.parametrize("args", [[], ["--check", "late"]])
def test_a_cache_too_small_for_the_backbone_is_bad_input(cache_dir: Path, tmp_path: Path, args: list[str]) -> None:
    cache = sized_cache(cache_dir, tmp_path / "cache", (12, 12), ["a", "b"])
    result = runner.invoke(app, ["strategies", "--backbone", "lab", "--cache-dir", str(cache), *args])
    assert result.exit_code == 2
    assert "input size 12x12 is too small for backbone 'lab'" in result.stderr and "16x16" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_folder_without_a_cache_says_to_prepare(tmp_path: Path) -> None:
    result = runner.invoke(app, ["strategies", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no prepared cache" in result.stderr


def test_a_cache_without_an_image_size_is_64_by_64(cache_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    manifest = json.loads((cache_dir / MANIFEST).read_text())
    manifest.pop("image_size", None)  # a DLI-layout cache, or one written before sizes varied
    (cache / MANIFEST).write_text(json.dumps(manifest))
    result = runner.invoke(app, ["strategies", "--cache-dir", str(cache), "-f", "json"])
    assert result.exit_code == 0, result.stderr
    assert {(tuple(r["input_size"]), r["num_classes"]) for r in json.loads(result.stdout)} == {((64, 64), 2)}


def test_a_bad_image_size_in_the_manifest_says_to_rebuild(cache_dir: Path, tmp_path: Path) -> None:
    cache = sized_cache(cache_dir, tmp_path / "cache", (48, 80), ["a", "b"])
    manifest = json.loads((cache / MANIFEST).read_text())
    manifest["image_size"] = [48]
    (cache / MANIFEST).write_text(json.dumps(manifest))
    result = runner.invoke(app, ["strategies", "--cache-dir", str(cache)])
    assert result.exit_code == 2 and "image_size" in result.stderr and "--force" in result.stderr
