"""Layout discovery, pairing by stem, the known quirks, and per-file validation."""

from __future__ import annotations

import io
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # rawfactory, whatever the import mode
import rawfactory as rf  # noqa: E402

from fusioncli.data.layout import (  # noqa: E402
    InvalidFile,
    class_order,
    decode_depth,
    decode_png,
    discover,
    read_angles,
    read_npy,
    stem_key,
)
from fusioncli.errors import BadInputError  # noqa: E402


def test_pairs_by_stem_in_numeric_order_and_labels_classes(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    for stem in ("10", "2", "1"):
        for cls in ("spheres", "cubes", "cones"):
            rf.write_png(root / cls / "rgb" / f"{stem}.png")
            rf.write_npy(root / cls / "lidar" / f"{stem}.npy")
    for cls in ("spheres", "cubes", "cones"):
        rf.write_angles(root / cls)
    layout = discover(root)
    assert layout.class_names == ("cubes", "spheres", "cones")
    assert [c.label for c in layout.classes] == [0, 1, 2]
    assert [s.stem for s in layout.classes[0].samples] == ["1", "2", "10"]
    first = layout.samples[0]
    assert (first.class_name, first.label, first.png, first.npy) == ("cubes", 0, "cubes/rgb/1.png", "cubes/lidar/1.npy")
    assert not layout.orphans and not layout.problems
    # every sample file and both angle files of each class are in the stat list
    assert len(layout.stats) == 3 * (2 * 3 + 2)


def test_stem_key_and_class_order() -> None:
    assert sorted(["b", "10", "a", "9"], key=stem_key) == ["9", "10", "a", "b"]
    assert class_order(["zeta", "spheres", "alpha", "cubes"]) == ["cubes", "spheres", "alpha", "zeta"]
    assert class_order(["spheres", "tori"]) == ["spheres", "tori"]


def test_orphans_are_skipped_and_reported(tmp_path: Path) -> None:
    root = rf.write_raw(tmp_path / "raw", per_class=3)
    rf.write_npy(root / "spheres" / "lidar" / "0100.npy")
    rf.write_npy(root / "spheres" / "lidar" / "0101.npy")
    rf.write_png(root / "cubes" / "rgb" / "0200.png")
    layout = discover(root)
    assert [len(c.samples) for c in layout.classes] == [3, 3]
    assert [str(p) for p in layout.orphans] == [
        "cubes/rgb/0200.png: no lidar partner (skipped)",
        "spheres/lidar/0100.npy: no rgb partner (skipped)",
        "spheres/lidar/0101.npy: no rgb partner (skipped)",
    ]
    assert not layout.problems


def test_lidar_nested_one_level_too_deep_is_used_with_a_fix(tmp_path: Path) -> None:
    root = rf.write_raw(tmp_path / "raw", per_class=3)
    lidar = root / "spheres" / "lidar"
    (lidar / "lidar").mkdir()
    for f in sorted(lidar.glob("*.npy")):
        f.rename(lidar / "lidar" / f.name)
    layout = discover(root)
    spheres = layout.classes[1]
    assert len(spheres.samples) == 3
    assert spheres.lidar_dir == "spheres/lidar/lidar"
    assert spheres.samples[0].npy == "spheres/lidar/lidar/0000.npy"
    (note,) = layout.notes
    assert "one level too deep in spheres/lidar/lidar/" in note and "mv " in note
    assert not layout.problems and not layout.orphans


def test_class_folder_nested_one_level_too_deep(tmp_path: Path) -> None:
    root = rf.write_raw(tmp_path / "raw", per_class=2)
    (root / "spheres").rename(tmp_path / "tmp")
    (root / "spheres").mkdir()
    (tmp_path / "tmp").rename(root / "spheres" / "spheres")
    layout = discover(root)
    assert layout.class_names == ("cubes", "spheres")
    assert layout.classes[1].folder == "spheres/spheres"
    assert any("class folder one level too deep" in n for n in layout.notes)


def test_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "raw" / "docs").mkdir(parents=True)
    (tmp_path / "raw" / "docs" / "readme.txt").write_text("hi")
    with pytest.raises(BadInputError, match="no class folders"):
        discover(tmp_path / "raw")
    with pytest.raises(BadInputError, match="does not exist"):
        discover(tmp_path / "missing")


def test_pointing_at_a_class_folder_suggests_its_parent(tmp_path: Path) -> None:
    root = rf.write_raw(tmp_path / "raw", per_class=1)
    with pytest.raises(BadInputError) as info:
        discover(root / "cubes")
    assert "--data-dir" in (info.value.hint or "")


def test_empty_class_folders_are_problems(tmp_path: Path) -> None:
    root = rf.write_raw(tmp_path / "raw", per_class=2)
    (root / "cones").mkdir()
    (root / "tori" / "rgb").mkdir(parents=True)
    (root / "tori" / "lidar").mkdir()
    (root / "boxes" / "rgb").mkdir(parents=True)
    (root / "boxes" / "rgb" / "0.png").write_bytes(b"")
    layout = discover(root)
    assert layout.class_names == ("cubes", "spheres")
    reasons = {p.path: p.reason for p in layout.problems}
    assert "empty class folder" in reasons["cones/"]
    assert "empty class folder" in reasons["tori/"]
    assert reasons["boxes/"] == "has rgb/ but no lidar/ folder"


def test_hidden_and_foreign_files(tmp_path: Path) -> None:
    root = rf.write_raw(tmp_path / "raw", per_class=2)
    (root / "cubes" / "rgb" / "._0000.png").write_bytes(b"\0\0junk")  # macOS AppleDouble
    (root / "cubes" / "rgb" / "Thumbs.db").write_bytes(b"junk")
    layout = discover(root)
    assert [len(c.samples) for c in layout.classes] == [2, 2]
    assert any("Thumbs.db" in n for n in layout.notes)


# --- file validation --------------------------------------------------------------------------

PNG_CASES = [k for k, v in rf.BAD_FILES.items() if v[1] == "png"]
NPY_CASES = [k for k, v in rf.BAD_FILES.items() if v[1] == "npy"]


@pytest.mark.parametrize("case", PNG_CASES)
def test_bad_png_reasons(tmp_path: Path, case: str) -> None:
    writer, _, reason = rf.BAD_FILES[case]
    path = tmp_path / "x.png"
    writer(path)
    with pytest.raises(InvalidFile, match=reason.replace("(", r"\(").replace(")", r"\)")):
        decode_png(path.read_bytes())


@pytest.mark.parametrize("case", NPY_CASES)
def test_bad_npy_reasons(tmp_path: Path, case: str) -> None:
    writer, _, reason = rf.BAD_FILES[case]
    path = tmp_path / "x.npy"
    writer(path)
    with pytest.raises(InvalidFile) as info:
        decode_depth(path.read_bytes())
    assert reason in str(info.value)


def test_valid_png_decodes_to_its_pixels(tmp_path: Path) -> None:
    img = rf.rgba_image(11)
    out = decode_png(rf.png_bytes(img))
    assert out.shape == (64, 64, 4) and out.dtype == np.uint8
    assert np.array_equal(out, img)


def test_jpeg_named_png_is_refused() -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rf.rgba_image(1)[..., :3]).save(buf, format="JPEG")
    with pytest.raises(InvalidFile, match="no PNG signature"):
        decode_png(buf.getvalue())


def test_truncated_png_is_refused_even_if_pil_is_told_to_accept_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = tmp_path / "x.png"
    rf.truncated_png(path)
    with pytest.raises(InvalidFile, match="truncated"):
        decode_png(path.read_bytes())


def test_npy_is_never_unpickled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("pickle was called")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    for writer, reason in ((rf.npy_pickled, "pickled objects"), (rf.npy_raw_pickle, "pickle")):
        path = tmp_path / "x.npy"
        writer(path)
        with pytest.raises(InvalidFile, match=reason):
            read_npy(path.read_bytes())


def test_depth_accepts_big_endian_and_fortran_order() -> None:
    depth = rf.depth_map(3)
    for arr in (depth.astype(">f4"), np.asfortranarray(depth)):
        buf = io.BytesIO()
        np.save(buf, arr)
        out = decode_depth(buf.getvalue())
        assert out.dtype == np.float32 and out.dtype.isnative
        assert np.array_equal(out, depth)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
    dtype=st.sampled_from(["<f4", ">f8", "<i2", "u1", "?", "<c8"]),
    fortran=st.booleans(),
)
def test_read_npy_matches_numpy(shape: tuple[int, ...], dtype: str, fortran: bool) -> None:
    arr = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape).astype(dtype)
    if fortran:
        arr = np.asfortranarray(arr)
    buf = io.BytesIO()
    np.save(buf, arr)
    out = read_npy(buf.getvalue())
    expected = np.load(io.BytesIO(buf.getvalue()), allow_pickle=False)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    assert np.array_equal(out, expected)


def test_angles_missing_wrong_length_and_disagreeing(tmp_path: Path) -> None:
    root = rf.write_raw(tmp_path / "raw", per_class=1, classes=("cubes", "spheres", "cones"))
    (root / "cubes" / "azimuth.npy").unlink()
    rf.write_npy(root / "spheres" / "zenith.npy", rf.angles()[:63])
    rf.write_npy(root / "cones" / "zenith.npy", rf.angles() + 0.01)
    az, ze, problems = read_angles(discover(root))
    reasons = {p.path: p.reason for p in problems}
    assert "missing" in reasons["cubes/azimuth.npy"]
    assert "shape (63,)" in reasons["spheres/zenith.npy"]
    assert "differs from cubes/zenith.npy" in reasons["cones/zenith.npy"]
    assert not any(p.skippable for p in problems)
    assert az is not None and np.array_equal(az, rf.angles())


def test_angles_must_be_finite_floats(tmp_path: Path) -> None:
    root = rf.write_raw(tmp_path / "raw", per_class=1)
    bad = rf.angles()
    bad[3] = np.nan
    rf.write_npy(root / "cubes" / "azimuth.npy", bad)
    rf.write_npy(root / "cubes" / "zenith.npy", np.arange(64))
    _, _, problems = read_angles(discover(root))
    reasons = {p.path: p.reason for p in problems}
    assert "non-finite" in reasons["cubes/azimuth.npy"]
    assert "dtype int64" in reasons["cubes/zenith.npy"]
