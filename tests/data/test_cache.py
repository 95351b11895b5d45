"""prepare -> cache -> load_cache: content, bad input, skipping, splits, freshness, atomicity."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # rawfactory, whatever the import mode
import rawfactory as rf  # noqa: E402

from fusioncli.data import cache as cache_mod  # noqa: E402
from fusioncli.data.cache import (  # noqa: E402
    MANIFEST,
    SEED_VAL_PER_CLASS,
    load_cache,
    prepare,
    read_manifest,
    split_mask,
)
from fusioncli.data.projection import project_xyza  # noqa: E402
from fusioncli.errors import BadInputError  # noqa: E402

FRACTION = 0.25


@pytest.fixture()
def raw(tmp_path: Path) -> Path:
    """A fresh, valid 2 x 8 raw set per test (tests modify it)."""
    return rf.write_raw(tmp_path / "raw", per_class=8)


def _prep(raw: Path, cache: Path, **kw: object):
    kw.setdefault("val_fraction", FRACTION)
    return prepare(raw, cache, **kw)  # type: ignore[arg-type]


def _age(root: Path, seconds: float = 3600) -> None:
    """Backdate every file, so a later stat snapshot is outside the racy window."""
    past = int((os.path.getmtime(root) - seconds) * 1e9)
    for p in root.rglob("*"):
        os.utime(p, ns=(past, past))


# --- content ----------------------------------------------------------------------------------


def test_cache_round_trip_matches_the_raw_files(raw: Path, tmp_path: Path) -> None:
    summary = _prep(raw, tmp_path / "cache")
    assert not summary.cache_hit and summary.how == "built"
    assert summary.class_names == ("cubes", "spheres")
    assert summary.counts == {"cubes": {"train": 6, "val": 2}, "spheres": {"train": 6, "val": 2}}
    assert summary.cache_bytes > 16 * 2 * 64 * 64 * 4

    data = load_cache(tmp_path / "cache")
    assert data.rgb.shape == (16, 4, 64, 64) and data.rgb.dtype == torch.uint8
    assert data.depth.shape == (16, 64, 64) and data.depth.dtype == torch.float32
    assert data.xyza is None  # on the CPU XYZA is projected batch by batch
    xyza = data.lidar(slice(None))
    assert xyza.shape == (16, 4, 64, 64) and xyza.dtype == torch.float32
    assert data.labels.tolist() == [0] * 8 + [1] * 8
    assert data.is_val.dtype == torch.bool and int(data.is_val.sum()) == 4
    assert data.class_names == ("cubes", "spheres")
    assert data.fingerprint == summary.fingerprint

    # sample order = class by class, stem order; pixels channels-first; depth unchanged
    for row, (cls, i) in enumerate([(c, i) for c in range(2) for i in range(8)]):
        seed = c_seed = cls * 100_000 + i
        assert np.array_equal(data.rgb[row].permute(1, 2, 0).numpy(), rf.rgba_image(seed))
        assert np.array_equal(data.depth[row].numpy(), rf.depth_map(c_seed))
    assert torch.equal(xyza, project_xyza(data.depth, rf.angles(), rf.angles()))
    # any batch, in any order, projects to the same values
    idx = torch.tensor([5, 0, 11])
    assert torch.equal(data.lidar(idx), project_xyza(data.depth[idx], rf.angles(), rf.angles()))


def test_index_parquet_lists_samples_and_sources(raw: Path, tmp_path: Path) -> None:
    import pandas as pd

    _prep(raw, tmp_path / "cache")
    index = pd.read_parquet(tmp_path / "cache" / "index.parquet")
    data = load_cache(tmp_path / "cache")
    assert list(index["row"]) == list(range(16))
    assert list(index["label"]) == data.labels.tolist()
    assert list(index["split"] == "val") == data.is_val.tolist()
    assert index["png"].iloc[9] == "spheres/rgb/0001.png" and index["npy"].iloc[9] == "spheres/lidar/0001.npy"


def test_project_into_is_bit_identical_to_project_xyza(raw: Path) -> None:
    depth = torch.from_numpy(np.stack([rf.depth_map(i) for i in range(10)]))
    az = rf.angles()
    assert torch.equal(cache_mod.project_into(depth, az, az, chunk=3), project_xyza(depth, az, az))


def test_projection_leaves_torch_threads_as_they_were(raw: Path) -> None:
    before = torch.get_num_threads()
    depth = torch.from_numpy(np.stack([rf.depth_map(i) for i in range(3)]))
    cache_mod.project_into(depth, rf.angles(), rf.angles())
    assert torch.get_num_threads() == before


def test_parallel_decoding_gives_the_same_cache(tmp_path: Path) -> None:
    raw = rf.write_raw(tmp_path / "raw", per_class=70)  # 140 samples: three chunks of <= 64
    rf.break_file(raw, "npy_nan", "spheres", "0050")  # a bad row inside the last chunk
    one = _prep(raw, tmp_path / "c1", workers=1, skip_invalid=True)
    two = _prep(raw, tmp_path / "c2", workers=2, skip_invalid=True)
    assert one.fingerprint == two.fingerprint and one.skipped == two.skipped
    a, b = load_cache(tmp_path / "c1"), load_cache(tmp_path / "c2")
    assert len(a) == 139
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.depth, b.depth) and torch.equal(a.is_val, b.is_val)
    assert np.array_equal(b.depth[-1].numpy(), rf.depth_map(100_069))


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(rf.BAD_FILES))
def test_each_bad_file_fails_with_its_reason_and_writes_nothing(raw: Path, tmp_path: Path, case: str) -> None:
    path = rf.break_file(raw, case, "spheres", "0003")
    cache = tmp_path / "out" / "cache"
    with pytest.raises(BadInputError) as info:
        _prep(raw, cache)
    rel = path.relative_to(raw).as_posix()
    (problem,) = info.value.problems
    assert problem.startswith(f"{rel}: ") and rf.BAD_FILES[case][2] in problem
    assert "--skip-invalid" in (info.value.hint or "")
    assert not (tmp_path / "out").exists()  # not even the parent folder it had to create


def test_all_bad_files_are_listed_at_once(raw: Path, tmp_path: Path) -> None:
    broken = [
        rf.break_file(raw, "truncated_png", "cubes", "0001"),
        rf.break_file(raw, "npy_pickled", "cubes", "0001"),  # both files of one sample
        rf.break_file(raw, "rgb_png", "spheres", "0002"),
        rf.break_file(raw, "npy_nan", "spheres", "0007"),
    ]
    (raw / "spheres" / "azimuth.npy").unlink()
    with pytest.raises(BadInputError) as info:
        _prep(raw, tmp_path / "cache")
    listed = [p.split(": ")[0] for p in info.value.problems]
    expected = [p.relative_to(raw).as_posix() for p in broken] + ["spheres/azimuth.npy"]
    assert sorted(listed) == sorted(expected)
    assert not (tmp_path / "cache").exists()


def test_failed_rebuild_keeps_the_previous_cache(raw: Path, tmp_path: Path) -> None:
    first = _prep(raw, tmp_path / "cache")
    rf.break_file(raw, "corrupt_png")
    with pytest.raises(BadInputError):
        _prep(raw, tmp_path / "cache")
    assert load_cache(tmp_path / "cache").fingerprint == first.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "raw"]  # no staging left


def test_crash_mid_build_leaves_old_cache_and_no_staging(raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _prep(raw, tmp_path / "cache")

    def crash(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "_write_index", crash)
    with pytest.raises(KeyboardInterrupt):
        _prep(raw, tmp_path / "cache", force=True)
    assert load_cache(tmp_path / "cache").fingerprint == first.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "raw"]


def test_missing_or_wrong_angles_cannot_be_skipped(raw: Path, tmp_path: Path) -> None:
    rf.write_npy(raw / "cubes" / "zenith.npy", rf.angles()[:32])
    with pytest.raises(BadInputError) as info:
        _prep(raw, tmp_path / "cache", skip_invalid=True)
    assert info.value.problems == ["cubes/zenith.npy: shape (32,); expected (64,) (one angle per depth-map row/column)"]
    assert "cannot skip" in (info.value.hint or "")


def test_empty_class_folder(raw: Path, tmp_path: Path) -> None:
    (raw / "cones" / "rgb").mkdir(parents=True)
    (raw / "cones" / "lidar").mkdir()
    with pytest.raises(BadInputError, match="cones/: empty class folder"):
        _prep(raw, tmp_path / "cache")
    summary = _prep(raw, tmp_path / "cache", skip_invalid=True)
    assert summary.class_names == ("cubes", "spheres")
    assert [p.path for p in summary.skipped] == ["cones/"]


def test_single_class_is_refused(raw: Path, tmp_path: Path) -> None:
    import shutil

    shutil.rmtree(raw / "spheres")
    with pytest.raises(BadInputError, match="need at least 2"):
        _prep(raw, tmp_path / "cache")


def test_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    with pytest.raises(BadInputError, match="no class folders"):
        _prep(tmp_path / "raw", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_skip_invalid_leaves_bad_samples_out_and_records_them(raw: Path, tmp_path: Path) -> None:
    rf.break_file(raw, "zero_byte_png", "cubes", "0002")
    rf.break_file(raw, "npy_text", "spheres", "0005")
    rf.write_npy(raw / "spheres" / "lidar" / "0042.npy")  # orphan
    summary = _prep(raw, tmp_path / "cache", skip_invalid=True)
    assert summary.counts["cubes"]["train"] + summary.counts["cubes"]["val"] == 7
    assert summary.counts["spheres"]["train"] + summary.counts["spheres"]["val"] == 7
    assert {p.path for p in summary.skipped} == {"cubes/rgb/0002.png", "spheres/lidar/0005.npy", "spheres/lidar/0042.npy"}
    manifest = read_manifest(tmp_path / "cache")
    assert manifest is not None
    assert {p["path"] for p in manifest["invalid"]} == {"cubes/rgb/0002.png", "spheres/lidar/0005.npy"}
    assert [p["path"] for p in manifest["orphans"]] == ["spheres/lidar/0042.npy"]
    data = load_cache(tmp_path / "cache")
    assert len(data) == 14
    # the dropped rows are really gone: row 2 now holds cubes/0003
    assert np.array_equal(data.rgb[2].permute(1, 2, 0).numpy(), rf.rgba_image(3))
    assert torch.equal(data.lidar(slice(None)), project_xyza(data.depth, rf.angles(), rf.angles()))


def test_class_losing_every_sample_is_an_error(tmp_path: Path) -> None:
    raw = rf.write_raw(tmp_path / "raw", per_class=2)
    for stem in ("0000", "0001"):
        rf.break_file(raw, "corrupt_png", "spheres", stem)
    with pytest.raises(BadInputError, match="need at least 2"):
        _prep(raw, tmp_path / "cache", skip_invalid=True)


def test_cache_dir_safety(raw: Path, tmp_path: Path) -> None:
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(BadInputError, match="refusing to replace"):
        _prep(raw, other)
    assert (other / "thesis.tex").read_text() == "precious"
    with pytest.raises(BadInputError, match="contains the data folder"):
        _prep(raw, tmp_path)
    with pytest.raises(BadInputError, match="inside the data folder"):
        _prep(raw, raw / "cache")


# --- splits -----------------------------------------------------------------------------------


def test_seed_split_is_the_last_320_of_each_class() -> None:
    labels = np.repeat([0, 1], [400, 330])
    stems = [f"{i:04d}" for i in range(400)] + [f"{i:04d}" for i in range(330)]
    is_val = split_mask(labels, stems, ["cubes", "spheres"])
    assert is_val[:80].sum() == 0 and is_val[80:400].all()
    assert is_val[400:410].sum() == 0 and is_val[410:].all()
    assert is_val.sum() == 2 * SEED_VAL_PER_CLASS


def test_seed_split_needs_more_than_320_per_class(raw: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as info:
        prepare(raw, tmp_path / "cache")
    assert "has 8 samples" in info.value.problems[0]
    assert "--val-fraction" in (info.value.hint or "")
    assert not (tmp_path / "cache").exists()


def test_split_problem_and_bad_files_are_reported_together(raw: Path, tmp_path: Path) -> None:
    rf.break_file(raw, "corrupt_png", "cubes", "0001")
    with pytest.raises(BadInputError) as info:
        prepare(raw, tmp_path / "cache")
    problems = info.value.problems
    assert len(problems) == 3 and "has 8 samples" in problems[0]
    assert problems[2].startswith("cubes/rgb/0001.png: not a readable PNG")
    assert "--val-fraction" in (info.value.hint or "") and "--skip-invalid" in (info.value.hint or "")


def test_seed_split_through_prepare(tmp_path: Path) -> None:
    # 321 per class is the smallest set the seed split accepts; tiny files keep this fast.
    raw = rf.write_raw(tmp_path / "raw", per_class=321)
    summary = prepare(raw, tmp_path / "cache")
    assert summary.counts == {"cubes": {"train": 1, "val": 320}, "spheres": {"train": 1, "val": 320}}
    data = load_cache(tmp_path / "cache")
    assert not data.is_val[0] and data.is_val[1:321].all() and not data.is_val[321]


def test_stratified_split_proportions_and_seed() -> None:
    labels = np.repeat([0, 1, 2], [100, 40, 7])
    stems = [str(i) for n in (100, 40, 7) for i in range(n)]
    names = ["a", "b", "c"]
    mask = split_mask(labels, stems, names, 0.2, split_seed=1)
    assert [int(mask[labels == c].sum()) for c in range(3)] == [20, 8, 1]
    assert np.array_equal(mask, split_mask(labels, stems, names, 0.2, split_seed=1))
    assert not np.array_equal(mask, split_mask(labels, stems, names, 0.2, split_seed=2))


def test_stratified_split_keeps_one_sample_each_side() -> None:
    labels = np.array([0, 0, 1, 1])
    mask = split_mask(labels, ["1", "2", "1", "2"], ["a", "b"], 0.99)
    assert mask.tolist().count(True) == 2 and mask[:2].sum() == 1
    with pytest.raises(BadInputError, match="at least 2"):
        split_mask(np.array([0, 1, 1]), ["1", "1", "2"], ["a", "b"], 0.5)


def test_bad_val_fraction(raw: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="--val-fraction"):
        prepare(raw, tmp_path / "cache", val_fraction=1.0)


# --- freshness --------------------------------------------------------------------------------


def test_unchanged_stats_hit_without_reading_files(raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _age(raw)
    first = _prep(raw, tmp_path / "cache")

    def no_reading(*a: object, **k: object) -> str:
        raise AssertionError("content was hashed")

    monkeypatch.setattr(cache_mod, "content_fingerprint", no_reading)
    again = _prep(raw, tmp_path / "cache")
    assert again.cache_hit and again.how == "stats unchanged"
    assert again.fingerprint == first.fingerprint and again.counts == first.counts


def test_touch_without_change_is_a_hit(raw: Path, tmp_path: Path) -> None:
    _age(raw)
    first = _prep(raw, tmp_path / "cache")
    os.utime(raw / "cubes" / "rgb" / "0003.png")  # new mtime, same bytes
    again = _prep(raw, tmp_path / "cache")
    assert again.cache_hit and again.how == "content unchanged"
    assert again.fingerprint == first.fingerprint


def test_recently_written_files_are_checked_by_content(raw: Path, tmp_path: Path) -> None:
    # Files written right before the stat snapshot could change again within the same mtime
    # tick; the fast path must not trust them.
    _prep(raw, tmp_path / "cache")
    assert _prep(raw, tmp_path / "cache").how == "content unchanged"


def test_changed_bytes_rebuild(raw: Path, tmp_path: Path) -> None:
    _age(raw)
    first = _prep(raw, tmp_path / "cache")
    path = raw / "spheres" / "lidar" / "0004.npy"
    stat = path.stat()
    rf.write_npy(path, seed=999)  # same size, different values
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime restored...
    assert path.stat().st_size == stat.st_size
    os.utime(raw / "spheres" / "lidar" / "0005.npy")  # ...some other stat change triggers hashing
    again = _prep(raw, tmp_path / "cache")
    assert not again.cache_hit and again.fingerprint != first.fingerprint
    assert np.array_equal(load_cache(tmp_path / "cache").depth[12].numpy(), rf.depth_map(999))


def test_added_or_removed_files_are_noticed(raw: Path, tmp_path: Path) -> None:
    _age(raw)
    first = _prep(raw, tmp_path / "cache")
    rf.write_png(raw / "cubes" / "rgb" / "0008.png", seed=5)
    rf.write_npy(raw / "cubes" / "lidar" / "0008.npy", seed=5)
    bigger = _prep(raw, tmp_path / "cache")
    assert not bigger.cache_hit and bigger.counts["cubes"]["train"] + bigger.counts["cubes"]["val"] == 9
    (raw / "cubes" / "rgb" / "0008.png").unlink()
    orphan = _prep(raw, tmp_path / "cache")  # the first content again, plus one orphan
    assert not orphan.cache_hit and orphan.fingerprint == first.fingerprint  # orphans don't count
    assert [p.path for p in orphan.skipped] == ["cubes/lidar/0008.npy"]


def test_changed_options_or_force_rebuild(raw: Path, tmp_path: Path) -> None:
    _age(raw)
    first = _prep(raw, tmp_path / "cache")
    other_seed = _prep(raw, tmp_path / "cache", split_seed=7)
    assert not other_seed.cache_hit and other_seed.fingerprint != first.fingerprint
    other_fraction = _prep(raw, tmp_path / "cache", split_seed=7, val_fraction=0.5)
    assert not other_fraction.cache_hit and other_fraction.counts["cubes"]["val"] == 4
    assert _prep(raw, tmp_path / "cache", split_seed=7, val_fraction=0.5).cache_hit
    forced = _prep(raw, tmp_path / "cache", split_seed=7, val_fraction=0.5, force=True)
    assert not forced.cache_hit and forced.fingerprint == other_fraction.fingerprint


def test_fingerprint_is_content_based(raw: Path, tmp_path: Path) -> None:
    import shutil

    first = _prep(raw, tmp_path / "c1")
    copy = tmp_path / "copy"
    shutil.copytree(raw, copy)
    lidar = copy / "spheres" / "lidar"  # and reproduce the nested-folder quirk in the copy
    (lidar / "lidar").mkdir()
    for f in sorted(lidar.glob("*.npy")):
        f.rename(lidar / "lidar" / f.name)
    second = _prep(copy, tmp_path / "c2")
    assert second.fingerprint == first.fingerprint
    assert any("one level too deep" in n for n in second.notes)


# --- loading ----------------------------------------------------------------------------------


def test_load_cache_without_a_cache(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as info:
        load_cache(tmp_path / "nothing")
    assert "fusioncli prepare" in (info.value.hint or "")


def test_load_cache_refuses_other_versions_and_damaged_shards(raw: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _prep(raw, cache)
    manifest = json.loads((cache / MANIFEST).read_text())
    (cache / MANIFEST).write_text(json.dumps({**manifest, "version": 999}))
    with pytest.raises(BadInputError, match="another cache format"):
        load_cache(cache)
    (cache / MANIFEST).write_text(json.dumps(manifest))
    with open(cache / "depth.npy", "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(BadInputError, match="depth.npy: 1000 bytes"):
        load_cache(cache)
    rebuilt = _prep(raw, cache)  # a damaged cache is never a hit
    assert not rebuilt.cache_hit
    assert len(load_cache(cache)) == 16


def test_load_cache_reports_timings(raw: Path, tmp_path: Path) -> None:
    _prep(raw, tmp_path / "cache")
    timings: dict[str, float] = {}
    load_cache(tmp_path / "cache", timings=timings)
    assert set(timings) == {"read_s", "project_s", "total_s"}
    assert timings["total_s"] >= timings["project_s"] >= 0


def test_loaded_tensors_are_private_copies_on_write(raw: Path, tmp_path: Path) -> None:
    _prep(raw, tmp_path / "cache")
    data = load_cache(tmp_path / "cache")
    data.rgb.zero_()
    data.depth.fill_(1.0)
    again = load_cache(tmp_path / "cache")  # the cache files are untouched
    assert int(again.rgb.sum()) > 0 and float(again.depth.min()) > 1.0


@pytest.mark.gpu
def test_load_cache_on_cuda(raw: Path, tmp_path: Path) -> None:
    _prep(raw, tmp_path / "cache")
    data = load_cache(tmp_path / "cache", device="cuda")
    assert data.xyza.is_cuda and data.rgb.is_cuda  # projected whole, once, on the GPU
    cpu = load_cache(tmp_path / "cache")
    assert torch.allclose(data.xyza.cpu(), cpu.lidar(slice(None)), atol=1e-6)
    # the lazy path on the GPU (a CPU-loaded dataset moved there) gives the same values
    moved = cpu.to("cuda")
    assert moved.xyza is None and torch.allclose(moved.lidar(slice(None)).cpu(), cpu.lidar(slice(None)), atol=1e-6)
