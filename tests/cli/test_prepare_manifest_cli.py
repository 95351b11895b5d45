"""`fusioncli prepare --manifest` through the CLI: bad manifests (exit 2, one line per problem,
nothing written), summaries, option conflicts, and a manifest dataset that trains."""

from __future__ import annotations

import json
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))  # tests/data/manifestfactory.py
import manifestfactory as mf

from fusioncli.cli import app

runner = CliRunner()


def _prepare(manifest: Path, cache: Path, *args: str):
    return runner.invoke(app, ["prepare", "--manifest", str(manifest), "--cache-dir", str(cache), *args])


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    """A valid camera dataset: rows 1-3 dog, 4-6 cat, 12x16 (HxW)."""
    return mf.write_dataset(tmp_path / "d", per_class=3)


def _rewrite(manifest: Path, edit: Callable[[list[str], list[list[str]]], tuple[list[str], list[list[str]]]]) -> None:
    header, rows = mf.read_rows(manifest)
    mf.write_csv(manifest, *reversed(edit(header, rows)))


def _pickled(root: Path) -> None:
    np.save(root / "cat" / "2.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)


def _png_depth(manifest: Path) -> None:
    header, rows = mf.read_rows(manifest)
    for r in rows:
        name = r[1].replace(".npy", "_d.png")
        Image.fromarray((np.load(manifest.parent / r[1]) * 1000).astype(np.uint16)).save(manifest.parent / name)
        r[1] = name
    mf.write_csv(manifest, rows, header)


def _nan(root: Path) -> None:
    depth = mf.depth_map(4, 12, 16)
    depth[0, 0] = np.nan
    np.save(root / "cat" / "1.npy", depth)


def _add_split(manifest: Path) -> None:
    _rewrite(
        manifest, lambda h, rows: ([*h, "split"], [[*r, "test" if i == 1 else "train"] for i, r in enumerate(rows)])
    )


def _mixed_sizes(manifest: Path) -> None:
    Image.fromarray(mf.rgb_image(0, 24, 32)).save(manifest.parent / "dog" / "0.png")
    np.save(manifest.parent / "dog" / "0.npy", mf.depth_map(0, 24, 32))


def _short_grid(manifest: Path) -> None:
    mf.lidar_toml(manifest.parent, 12, 16)
    np.save(manifest.parent / "az.npy", np.zeros(10, np.float32))


def _several(manifest: Path) -> None:
    _nan(manifest.parent)
    _pickled(manifest.parent)
    _rewrite(manifest, lambda h, rows: (h, [*rows, rows[2]]))


# Each case breaks the valid dataset one way; the lines that must appear (after "error: ").
CASES: dict[str, tuple[Callable[[Path], object], list[str]]] = {
    "missing column": (
        lambda m: _rewrite(m, lambda h, rows: (["rgb", "label"], [[r[0], r[2]] for r in rows])),
        ["samples.csv: no column 'depth'"],
    ),
    "missing file": (
        lambda m: (m.parent / "dog" / "1.npy").unlink(),
        ["samples.csv row 2: dog/1.npy: cannot read (No such file or directory)"],
    ),
    "duplicate rows": (
        lambda m: _rewrite(m, lambda h, rows: (h, [*rows, rows[0]])),
        ["samples.csv row 7: duplicate of row 1 (same rgb and depth files)"],
    ),
    "unknown split": (_add_split, ["samples.csv row 2: split 'test' is neither train nor val"]),
    "single class": (
        lambda m: _rewrite(m, lambda h, rows: (h, [[r[0], r[1], "dog"] for r in rows])),
        ["samples.csv: 1 class(es) ('dog'); a classifier needs at least 2 labels"],
    ),
    "empty manifest": (
        lambda m: _rewrite(m, lambda h, rows: (h, [])),
        ["samples.csv: empty manifest (a header but no rows)"],
    ),
    "empty file": (lambda m: m.write_bytes(b""), ["samples.csv: empty manifest (no header, no rows)"]),
    "mixed sizes": (
        _mixed_sizes,
        ["samples.csv row 1: dog/0.npy: depth map is 24x32 (HxW) but most rows are 12x16 (HxW); pass --size N"],
    ),
    "depth size differs from rgb": (
        lambda m: np.save(m.parent / "dog" / "1.npy", mf.depth_map(1, 12, 15)),
        ["samples.csv row 2: dog/1.npy: depth map is 12x15 (HxW) but the rgb image is 12x16 (HxW)"],
    ),
    "missing geometry": (
        lambda m: (m.parent / "dataset.toml").unlink(),
        ["dataset.toml: missing beside samples.csv"],
    ),
    "inconsistent geometry": (
        _short_grid,
        [
            "dataset.toml: does not fit the data: dataset.toml's grids have 10 azimuth x 16 zenith angles,"
            " but the depth maps are 12x16 (HxW)"
        ],
    ),
    "bad geometry values": (
        lambda m: mf.camera_toml(m.parent, fx=-1.0, fy=None, zoom=2),
        [
            "dataset.toml: [camera] unknown key(s) zoom",
            "dataset.toml: [camera] missing fy",
            "dataset.toml: [camera] fx = -1.0: must be > 0",
        ],
    ),
    "unreadable image": (
        lambda m: (m.parent / "cat" / "0.png").write_bytes(b"GIF89a not really"),
        ["samples.csv row 4: cat/0.png: not a readable PNG or JPEG image"],
    ),
    "nan depth": (
        lambda m: _nan(m.parent),
        ["samples.csv row 5: cat/1.npy: depth has 1 non-finite value (NaN or inf)"],
    ),
    "pickled npy": (
        lambda m: _pickled(m.parent),
        ["samples.csv row 6: cat/2.npy: holds pickled objects (refused, never unpickled)"],
    ),
    "png depth without depth_scale": (
        _png_depth,
        [
            "dataset.toml: [camera] has no depth_scale (metres per stored unit), but samples.csv"
            " rows 1, 2, 3, 4, 5, 6 name PNG depth images"
        ],
    ),
    "several at once": (
        _several,
        [
            "samples.csv row 7: duplicate of row 3 (same rgb and depth files)",
            "samples.csv row 5: cat/1.npy: depth has 1 non-finite value (NaN or inf)",
            "samples.csv row 6: cat/2.npy: holds pickled objects (refused, never unpickled)",
        ],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_manifest_exits_2_with_one_line_per_problem(data: Path, tmp_path: Path, case: str) -> None:
    breaker, expected = CASES[case]
    breaker(data)
    out = tmp_path / "out" / "cache"
    result = _prepare(data, out)
    assert result.exit_code == 2, result.stderr
    errors = [" ".join(line.split()) for line in result.stderr.splitlines() if line.startswith("error:")]
    flat = " ".join(result.stderr.split())
    for line in expected:
        assert f"error: {line}" in flat, flat
    if case != "missing column":  # that one adds a line listing the columns found
        assert len(errors) == len(expected), errors
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""
    assert not (tmp_path / "out").exists()  # nothing written, not even the parent folder


def test_skip_invalid_builds_without_the_bad_rows(data: Path, tmp_path: Path) -> None:
    _nan(data.parent)
    result = _prepare(data, tmp_path / "cache", "--skip-invalid", "--format", "json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n_train"] + summary["n_val"] == 5
    assert summary["skipped"][0]["row"] == 5 and summary["skipped"][0]["path"] == "cat/1.npy"


def test_summary_table_and_json(data: Path, tmp_path: Path) -> None:
    result = _prepare(data, tmp_path / "cache", "--size", "8")
    assert result.exit_code == 0, result.stderr
    flat = " ".join(result.stderr.split())
    assert "cache built" in flat and "camera geometry, 8x8 (HxW)" in flat and "stratified 20%" in flat
    again = _prepare(data, tmp_path / "cache", "--size", "8", "--format", "json")
    summary = json.loads(again.stdout)
    assert summary["cache_hit"] is True and summary["image_size"] == [8, 8]
    assert summary["class_names"] == ["cat", "dog"] and summary["manifest"].endswith("samples.csv")


def test_geometry_option_names_another_file(data: Path, tmp_path: Path) -> None:
    (data.parent / "dataset.toml").rename(tmp_path / "camera.toml")
    result = _prepare(data, tmp_path / "cache", "--geometry", str(tmp_path / "camera.toml"))
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data-dir", "x"], "--manifest and --data-dir name two datasets"),
        (["--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
    ],
)
def test_bad_options_with_manifest(data: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = _prepare(data, tmp_path / "cache", *args)
    assert result.exit_code == 2 and message in " ".join(result.stderr.split())


def test_geometry_and_size_need_a_manifest(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", "--size", "32", "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert "--size: only for --manifest datasets" in " ".join(result.stderr.split())


def test_cache_inside_a_listed_folder_is_refused(data: Path) -> None:
    result = _prepare(data, data.parent / "dog")
    assert result.exit_code == 2 and "holds files that samples.csv names" in " ".join(result.stderr.split())


def test_help_says_how_resizing_works() -> None:
    result = runner.invoke(app, ["prepare", "--help"], env={"COLUMNS": "200"})
    flat = " ".join(result.stdout.split())
    assert "--manifest" in flat and "--geometry" in flat
    assert "RGB bilinear, depth by nearest neighbour" in flat


@pytest.mark.slow  # a model trains (one epoch of 12 samples); torch and the models load first
def test_a_manifest_dataset_trains(tmp_path: Path) -> None:
    """64x64, two classes, one epoch: prepare --manifest, then train on its cache."""
    manifest = mf.write_dataset(tmp_path / "d", per_class=6, size=(64, 64))
    cache = tmp_path / "cache"
    assert _prepare(manifest, cache).exit_code == 0
    result = runner.invoke(
        app,
        [
            "train", "--strategy", "early", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
            "--precision", "fp32", "--cache-dir", str(cache), "--results-dir", str(tmp_path / "results"),
            "--format", "json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["status"] == "finished" and len(record["history"]) == 1


def test_pickle_is_never_loaded(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (data.parent / "dog" / "2.npy").write_bytes(pickle.dumps(np.zeros((12, 16), np.float32)))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: (_ for _ in ()).throw(AssertionError("unpickled")))
    result = _prepare(data, tmp_path / "cache")
    assert result.exit_code == 2
    assert "dog/2.npy: not a .npy file (a Python pickle; refused, never unpickled)" in " ".join(result.stderr.split())
