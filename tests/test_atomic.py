"""Atomic writes leave either the old content or the new, never a partial file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusioncli.atomic import atomic_directory, atomic_path, atomic_write_json


def test_atomic_write_json_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "rec.json"
    atomic_write_json(target, {"b": 1, "a": [1.5]})
    assert json.loads(target.read_text()) == {"a": [1.5], "b": 1}
    assert [p.name for p in target.parent.iterdir()] == ["rec.json"]  # no temp files left


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "rec.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["rec.json"]


def test_atomic_directory_replaces_whole_folder_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "cache"
    with atomic_directory(target) as staging:
        (staging / "a").write_text("1")
    assert (target / "a").read_text() == "1"

    with pytest.raises(ValueError):
        with atomic_directory(target) as staging:
            (staging / "b").write_text("2")
            raise ValueError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]

    with atomic_directory(target) as staging:
        (staging / "c").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c"]


def test_stale_staging_leftovers_are_removed_fresh_ones_kept(tmp_path: Path) -> None:
    import os

    stale = tmp_path / ".cache.abc.staging"
    fresh = tmp_path / ".cache.def.staging"
    stale.mkdir()
    fresh.mkdir()
    os.utime(stale, (0, 0))
    with atomic_directory(tmp_path / "cache") as staging:
        (staging / "x").write_text("1")
    assert not stale.exists()
    assert fresh.exists()


def test_atomic_files_get_the_usual_permissions(tmp_path: Path) -> None:
    import os
    import stat

    target = tmp_path / "rec.json"
    atomic_write_json(target, {})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
