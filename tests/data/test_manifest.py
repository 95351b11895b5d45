"""prepare_manifest -> cache -> load_cache: geometry, sizes, splits, freshness, skipping."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the factories, whatever the import mode
import manifestfactory as mf
import rawfactory as rf

from fusioncli.data.cache import (
    load_cache,
    prepare,
    prepare_manifest,
    project_with,
    read_manifest,
)
from fusioncli.data.geometry import nearest_index
from fusioncli.data.manifest import read_table
from fusioncli.data.projection import MAX_RANGE
from fusioncli.errors import BadInputError


def _age(root: Path, seconds: float = 3600) -> None:
    """Backdate every file, so a later stat snapshot is outside the racy window."""
    past = int((os.path.getmtime(root) - seconds) * 1e9)
    for p in root.rglob("*"):
        os.utime(p, ns=(past, past))


def _problems(excinfo: pytest.ExceptionInfo[BadInputError]) -> str:
    return "\n".join(excinfo.value.problems)


# --- content and geometry ---------------------------------------------------------------------


def test_lidar_manifest_over_dli_files_gives_the_dli_tensors(tmp_path: Path) -> None:
    """Same files through both paths: RGB, depth, directions and XYZA bit for bit."""
    raw = rf.write_raw(tmp_path / "raw", per_class=4)
    rows = []
    for cls in ("cubes", "spheres"):
        rows += [[f"{cls}/rgb/{i:04d}.png", f"{cls}/lidar/{i:04d}.npy", cls] for i in range(4)]
    manifest = mf.write_csv(raw / "samples.csv", rows)
    (raw / "dataset.toml").write_text('[lidar]\nazimuth = "cubes/azimuth.npy"\nzenith = "cubes/zenith.npy"\n')
    prepare(raw, tmp_path / "dli", val_fraction=0.25)
    summary = prepare_manifest(manifest, tmp_path / "man", val_fraction=0.25)
    assert summary.geometry == "lidar" and summary.image_size == (64, 64)
    dli, man = load_cache(tmp_path / "dli"), load_cache(tmp_path / "man")
    assert man.class_names == dli.class_names == ("cubes", "spheres")
    assert torch.equal(man.rgb, dli.rgb) and torch.equal(man.depth, dli.depth)
    assert torch.equal(man.labels, dli.labels)
    assert man.directions is not None and dli.directions is not None
    assert torch.equal(man.directions, dli.directions)
    assert torch.equal(man.lidar(slice(None)), dli.lidar(slice(None)))


def test_camera_cache_any_size_classes_in_name_order(tmp_path: Path) -> None:
    manifest = mf.write_dataset(tmp_path / "d", per_class=3, classes=("zebra", "ant", "moth"), size=(12, 16))
    summary = prepare_manifest(manifest, tmp_path / "cache")
    assert summary.class_names == ("ant", "moth", "zebra")
    assert summary.image_size == (12, 16) and summary.manifest == manifest
    data = load_cache(tmp_path / "cache")
    assert data.rgb.shape == (9, 4, 12, 16) and data.depth.shape == (9, 12, 16)
    assert data.class_names == ("ant", "moth", "zebra")
    _, rows = mf.read_rows(manifest)
    # Cache rows follow the manifest's rows; labels index the name-ordered classes.
    assert data.labels.tolist() == [data.class_names.index(r[2]) for r in rows]
    first = np.array(Image.open(tmp_path / "d" / rows[0][0]))
    assert torch.equal(data.rgb[0, :3], torch.from_numpy(first).permute(2, 0, 1))
    assert bool((data.rgb[:, 3] == 255).all())  # RGB files get an opaque alpha
    manifest_json = read_manifest(tmp_path / "cache")
    assert manifest_json is not None and manifest_json["version"] == 2
    assert manifest_json["class_names"] == ["ant", "moth", "zebra"]


def test_camera_xyza_is_the_pinhole_back_projection(tmp_path: Path) -> None:
    root = tmp_path / "d"
    manifest = mf.write_dataset(root, per_class=2, size=(12, 16))
    depth = mf.depth_map(0, 12, 16)
    depth[0, 0], depth[0, 1], depth[1, 0] = 0.0, 60.0, 49.0  # no return (camera default 0), too far, near the edge
    np.save(root / "dog" / "0.npy", depth)
    prepare_manifest(manifest, tmp_path / "cache")
    data = load_cache(tmp_path / "cache")
    xyza = data.lidar(slice(0, 1))[0]
    v, u = np.mgrid[0:12, 0:16].astype(np.float64)
    z = depth.astype(np.float64)
    a = (z > 0) & (z < MAX_RANGE)
    expect = np.stack([(u - mf.CX) / mf.FX * z, z, -(v - mf.CY) / mf.FY * z]) * a / MAX_RANGE
    np.testing.assert_allclose(xyza[:3].numpy(), expect, rtol=1e-6, atol=1e-7)
    assert xyza[3].numpy().tolist() == a.astype(np.float32).tolist()
    assert data.depth[0, 0, 0] == MAX_RANGE  # stored as the cache's "no return"
    # The GPU path (everything at load) and the CPU path (per batch) give the same bits.
    assert data.directions is not None
    assert torch.equal(project_with(data.depth, data.directions), data.lidar(slice(None)))


def test_png_depth_scaled_jpeg_and_rgba_images(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    raw_depth = (np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 37) % 30000
    rows = []
    for i, cls in enumerate(("a", "a", "b", "b")):
        Image.fromarray(raw_depth).save(root / f"{i}_d.png")
        image = mf.rgb_image(i, 12, 16, channels=4 if i % 2 else 3)
        name = f"{i}.png" if i % 2 else f"{i}.jpg"
        Image.fromarray(image).save(root / name, **({} if i % 2 else {"format": "JPEG", "quality": 95}))
        rows.append([name, f"{i}_d.png", cls])
    manifest = mf.write_csv(root / "samples.csv", rows)
    mf.camera_toml(root, depth_scale=0.001)
    prepare_manifest(manifest, tmp_path / "cache", val_fraction=0.5)
    data = load_cache(tmp_path / "cache")
    metres = (raw_depth.astype(np.float64) * 0.001).astype(np.float32)
    metres[raw_depth == 0] = MAX_RANGE
    assert np.array_equal(data.depth[0].numpy(), metres)
    rgba = mf.rgb_image(1, 12, 16, channels=4)
    assert np.array_equal(data.rgb[1].permute(1, 2, 0).numpy(), rgba)  # RGBA PNG kept as is
    assert bool((data.rgb[0, 3] == 255).all())  # JPEG: opaque


def test_size_resizes_depth_nearest_and_the_lidar_grids_with_it(tmp_path: Path) -> None:
    root = tmp_path / "d"
    manifest = mf.write_dataset(root, per_class=2, size=(12, 20), geometry="lidar")
    prepare_manifest(manifest, tmp_path / "cache", size=8)
    data = load_cache(tmp_path / "cache")
    assert data.rgb.shape == (4, 4, 8, 8) and data.depth.shape == (4, 8, 8)
    rows, cols = nearest_index(12, 8), nearest_index(20, 8)
    src = np.load(root / "dog" / "0.npy")
    assert np.array_equal(data.depth[0].numpy(), src[np.ix_(rows, cols)])
    manifest_json = read_manifest(tmp_path / "cache")
    assert manifest_json is not None
    az, ze = np.load(root / "az.npy"), np.load(root / "ze.npy")
    assert manifest_json["azimuth"] == [float(x) for x in az[rows]]
    assert manifest_json["zenith"] == [float(x) for x in ze[cols]]
    assert manifest_json["image_size"] == [8, 8] and manifest_json["native_size"] == [12, 20]


def test_size_scales_the_camera_intrinsics(tmp_path: Path) -> None:
    manifest = mf.write_dataset(tmp_path / "d", per_class=2, size=(12, 16))
    prepare_manifest(manifest, tmp_path / "cache", size=8)
    record = (read_manifest(tmp_path / "cache") or {})["geometry"]
    sx, sy = 8 / 16, 8 / 12
    assert record["fx"] == mf.FX * sx and record["cx"] == (mf.CX + 0.5) * sx - 0.5
    assert record["fy"] == mf.FY * sy and record["cy"] == (mf.CY + 0.5) * sy - 0.5
    assert record["x_slopes"] == [(u - record["cx"]) / record["fx"] for u in range(8)]
    assert load_cache(tmp_path / "cache").directions.shape == (3, 8, 8)  # type: ignore[union-attr]


def test_mixed_sizes_are_fine_with_size(tmp_path: Path) -> None:
    root = tmp_path / "d"
    manifest = mf.write_dataset(root, per_class=3, size=(12, 16))
    Image.fromarray(mf.rgb_image(0, 24, 32)).save(root / "dog" / "0.png")
    np.save(root / "dog" / "0.npy", mf.depth_map(0, 24, 32))
    with pytest.raises(BadInputError) as excinfo:
        prepare_manifest(manifest, tmp_path / "cache")
    assert "samples.csv row 1: dog/0.npy: depth map is 24x32 (HxW) but most rows are 12x16 (HxW)" in _problems(excinfo)
    assert prepare_manifest(manifest, tmp_path / "cache", size=8).image_size == (8, 8)


# --- splits -----------------------------------------------------------------------------------


def test_split_column_decides(tmp_path: Path) -> None:
    split = ["train", "val", "TRAIN ", "train", "val", "train"]
    manifest = mf.write_dataset(tmp_path / "d", per_class=3, split=split)
    summary = prepare_manifest(manifest, tmp_path / "cache")
    assert summary.split == "the manifest's split column"
    assert load_cache(tmp_path / "cache").is_val.tolist() == [s.strip() == "val" for s in split]


def test_val_fraction_splits_only_rows_without_a_split(tmp_path: Path) -> None:
    split = ["val", "", "", "", "train", "", "", ""]
    manifest = mf.write_dataset(tmp_path / "d", per_class=4, split=split)
    with pytest.raises(BadInputError) as excinfo:
        prepare_manifest(manifest, tmp_path / "cache")
    assert "rows 2, 3, 4, 6, 7, 8: empty split cell" in _problems(excinfo)
    summary = prepare_manifest(manifest, tmp_path / "cache", val_fraction=0.5)
    assert "rows without one: stratified 50%" in summary.split
    is_val = load_cache(tmp_path / "cache").is_val.tolist()
    assert is_val[0] is True and is_val[4] is False
    assert sum(is_val[1:4]) == 2 and sum(is_val[5:]) == 2  # round(0.5 * 3) per class


def test_val_fraction_with_a_full_split_column_is_refused(tmp_path: Path) -> None:
    manifest = mf.write_dataset(tmp_path / "d", per_class=2, split=["train", "val"] * 2)
    with pytest.raises(BadInputError) as excinfo:
        prepare_manifest(manifest, tmp_path / "cache", val_fraction=0.2)
    assert "--val-fraction has nothing to split" in _problems(excinfo)
    assert not (tmp_path / "cache").exists()


def test_default_split_without_a_column_is_a_fifth(tmp_path: Path) -> None:
    manifest = mf.write_dataset(tmp_path / "d", per_class=5)
    summary = prepare_manifest(manifest, tmp_path / "cache")
    assert summary.counts == {"cat": {"train": 4, "val": 1}, "dog": {"train": 4, "val": 1}}


def test_a_class_without_training_samples_is_refused(tmp_path: Path) -> None:
    manifest = mf.write_dataset(tmp_path / "d", per_class=2, split=["train", "train", "val", "val"])
    with pytest.raises(BadInputError) as excinfo:
        prepare_manifest(manifest, tmp_path / "cache")
    assert "class 'cat' has no training sample" in _problems(excinfo)


# --- freshness --------------------------------------------------------------------------------


def test_cache_hits_and_what_changes_the_fingerprint(tmp_path: Path) -> None:
    root = tmp_path / "d"
    manifest = mf.write_dataset(root, per_class=3)
    cache = tmp_path / "cache"
    first = prepare_manifest(manifest, cache)
    _age(root)
    _age(cache)
    assert prepare_manifest(manifest, cache).how == "content unchanged"
    assert prepare_manifest(manifest, cache).how == "stats unchanged"

    fingerprints = {first.fingerprint}

    def rebuilt(**kw: object) -> str:
        summary = prepare_manifest(manifest, cache, **kw)  # type: ignore[arg-type]
        assert not summary.cache_hit
        fingerprints.add(summary.fingerprint)
        return summary.fingerprint

    rebuilt(size=8)
    rebuilt(val_fraction=0.5)
    rebuilt(val_fraction=0.5, split_seed=1)
    rebuilt(val_fraction=0.5, split_seed=1, skip_invalid=True)
    mf.camera_toml(root, fx=21.0)  # geometry
    rebuilt()
    np.save(root / "cat" / "1.npy", mf.depth_map(99, 12, 16))  # a file's content
    rebuilt()
    header, rows = mf.read_rows(manifest)
    rows[0][2] = "cat"  # the manifest's content (a relabelled row)
    mf.write_csv(manifest, rows, header)
    rebuilt()
    assert len(fingerprints) == 8


def test_csv_and_parquet_manifests_are_the_same_dataset(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "d"
    manifest = mf.write_dataset(root, per_class=2)
    header, rows = mf.read_rows(manifest)
    table = pa.table({h: [r[i] for r in rows] for i, h in enumerate(header)})
    pq.write_table(table, root / "samples.parquet")
    from_csv = prepare_manifest(manifest, tmp_path / "c1")
    from_parquet = prepare_manifest(root / "samples.parquet", tmp_path / "c2")
    assert from_csv.fingerprint == from_parquet.fingerprint


def test_absolute_paths_are_allowed(tmp_path: Path) -> None:
    root = tmp_path / "d"
    manifest = mf.write_dataset(root, per_class=2)
    header, rows = mf.read_rows(manifest)
    rows = [[str(root / r[0]), str(root / r[1]), r[2]] for r in rows]
    elsewhere = tmp_path / "lists"
    elsewhere.mkdir()
    mf.camera_toml(elsewhere)
    summary = prepare_manifest(mf.write_csv(elsewhere / "abs.csv", rows, header), tmp_path / "cache")
    assert summary.n_train + summary.n_val == 4


def test_skip_invalid_leaves_bad_rows_out_and_records_them(tmp_path: Path) -> None:
    root = tmp_path / "d"
    manifest = mf.write_dataset(root, per_class=3)
    depth = mf.depth_map(1, 12, 16)
    depth[2, 3] = np.nan
    np.save(root / "dog" / "1.npy", depth)
    (root / "cat" / "2.png").write_bytes(b"not an image")
    summary = prepare_manifest(manifest, tmp_path / "cache", skip_invalid=True)
    assert [(p.row, p.path) for p in summary.skipped] == [(2, "dog/1.npy"), (6, "cat/2.png")]
    assert len(load_cache(tmp_path / "cache")) == 4
    index_rows = __import__("pyarrow.parquet", fromlist=["x"]).read_table(tmp_path / "cache" / "index.parquet")
    assert index_rows.column("manifest_row").to_pylist() == [1, 3, 4, 5]
    stored = (read_manifest(tmp_path / "cache") or {})["invalid"]
    assert stored[0] == {
        "path": "dog/1.npy",
        "reason": "depth has 1 non-finite value (NaN or inf)",
        "row": 2,
        "source": "samples.csv",
    }


def test_nothing_is_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    root = tmp_path / "d"
    manifest = mf.write_dataset(root, per_class=2)
    np.save(root / "dog" / "0.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (root / "cat" / "1.npy").write_bytes(pickle.dumps(np.zeros((12, 16))))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    with pytest.raises(BadInputError) as excinfo:
        prepare_manifest(manifest, tmp_path / "cache")
    text = _problems(excinfo)
    assert "row 1: dog/0.npy: holds pickled objects (refused, never unpickled)" in text
    assert "row 4: cat/1.npy: not a .npy file (a Python pickle; refused, never unpickled)" in text


def test_read_table_reports_rows_and_stats_files(tmp_path: Path) -> None:
    root = tmp_path / "d"
    manifest = mf.write_dataset(root, per_class=2)
    header, rows = mf.read_rows(manifest)
    rows.append(["", "x.npy", " "])
    mf.write_csv(manifest, rows, header)
    table, fatal = read_table(manifest)
    assert not fatal and table is not None
    assert [str(p) for p in table.problems] == [
        "samples.csv row 5: empty rgb cell",
        "samples.csv row 5: empty label cell",
    ]
    assert ("x.npy", -1, -1) in table.stats  # missing: the signature changes when it appears
    assert table.class_names == ("cat", "dog")


def test_corrupt_png_and_truncated_jpeg(tmp_path: Path) -> None:
    root = tmp_path / "d"
    manifest = mf.write_dataset(root, per_class=2)
    buf = io.BytesIO()
    Image.fromarray(mf.rgb_image(0, 12, 16)).save(buf, format="JPEG")
    (root / "dog" / "0.png").write_bytes(buf.getvalue()[:-20])  # a JPEG named .png, cut short
    good = (root / "cat" / "0.png").read_bytes()
    (root / "cat" / "0.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(BadInputError) as excinfo:
        prepare_manifest(manifest, tmp_path / "cache")
    text = _problems(excinfo)
    assert "row 1: dog/0.png: truncated or corrupt image data" in text
    assert "row 3: cat/0.png: truncated or corrupt image data" in text


def test_dli_manifests_load_as_before(cache_dir: Path) -> None:
    """A DLI cache has no image_size or geometry: 64x64, angle grids."""
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert "image_size" not in manifest and "geometry" not in manifest and manifest["version"] == 1
    assert load_cache(cache_dir).rgb.shape[-2:] == (64, 64)


def test_worker_processes_give_the_same_cache(tmp_path: Path) -> None:
    manifest = mf.write_dataset(tmp_path / "d", per_class=4)
    one = prepare_manifest(manifest, tmp_path / "c1", workers=1)
    two = prepare_manifest(manifest, tmp_path / "c2", workers=2, size=8)
    again = prepare_manifest(manifest, tmp_path / "c3", workers=1, size=8)
    assert one.fingerprint != two.fingerprint == again.fingerprint
    a, b = load_cache(tmp_path / "c2"), load_cache(tmp_path / "c3")
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.depth, b.depth)


def test_the_fingerprint_of_a_manifest_dataset_is_pinned(tmp_path: Path) -> None:
    """Run ids hash the dataset fingerprint: an unchanged dataset must keep it across versions."""
    manifest = mf.write_dataset(tmp_path / "d", per_class=3, geometry="lidar")
    assert prepare_manifest(manifest, tmp_path / "cache").fingerprint == PINNED_FINGERPRINT


PINNED_FINGERPRINT = "de18f51a14ff548cd2e5e603ce2cef33"  # written by the version that added --manifest


@pytest.mark.gpu
def test_load_camera_cache_on_cuda(tmp_path: Path) -> None:
    manifest = mf.write_dataset(tmp_path / "d", per_class=3, size=(12, 16))
    prepare_manifest(manifest, tmp_path / "cache")
    data = load_cache(tmp_path / "cache", device="cuda")
    assert data.xyza is not None and data.xyza.is_cuda and data.xyza.shape == (6, 4, 12, 16)
    cpu = load_cache(tmp_path / "cache")
    # The whole set projected at load and the per-batch path on the GPU, against the CPU's
    # (to 1e-6, as test_cache checks DLI caches).
    assert torch.allclose(data.xyza.cpu(), cpu.lidar(slice(None)), atol=1e-6)
    assert torch.allclose(cpu.to("cuda").lidar(slice(None)).cpu(), cpu.lidar(slice(None)), atol=1e-6)
