"""Hand-made raw datasets in the NVIDIA layout, for discovery and bad-input tests.

Independent of :mod:`fusioncli.data.synth` on purpose: these files are tiny and cheap (a coloured
square on black, a flat depth patch on the 50 m background), and each bad-input writer below
produces exactly one defect, so a test can say which reason it expects for which file.

Tests import it as ``import rawfactory`` after putting ``tests/data`` on ``sys.path`` (done at
the top of each test module, so it works whatever pytest's import mode and from ``tests/cli``).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64
NO_RETURN = 50.0


def rgba_image(seed: int) -> np.ndarray:
    """A (64, 64, 4) uint8 RGBA image: an opaque coloured square on black, placed by ``seed``."""
    rng = np.random.default_rng(seed)
    img = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    img[..., 3] = 255
    x, y = rng.integers(8, 40, size=2)
    img[y : y + 16, x : x + 16, :3] = rng.integers(60, 255, size=3, dtype=np.uint8)
    return img


def depth_map(seed: int) -> np.ndarray:
    """A (64, 64) float32 depth map: 50.0 (no return) with one nearer square patch."""
    rng = np.random.default_rng(seed + 1_000_003)
    depth = np.full((SIZE, SIZE), NO_RETURN, dtype=np.float32)
    x, y = rng.integers(8, 40, size=2)
    depth[y : y + 20, x : x + 20] = rng.uniform(5.0, 30.0)
    return depth


def write_png(path: Path, array: np.ndarray | None = None, *, seed: int = 0) -> Path:
    """Write ``array`` (or :func:`rgba_image`) as a PNG; the mode follows the channel count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba_image(seed) if array is None else array).save(path, format="PNG")
    return path


def write_npy(path: Path, array: np.ndarray | None = None, *, seed: int = 0) -> Path:
    """Write ``array`` (or :func:`depth_map`) with ``np.save``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, depth_map(seed) if array is None else array)
    return path


def angles() -> np.ndarray:
    """The real grid: (64,) float32 radians, -16 ... +15.5 degrees in 0.5 degree steps."""
    return np.deg2rad(-16.0 + 0.5 * np.arange(SIZE)).astype(np.float32)


def write_angles(class_dir: Path, azimuth: np.ndarray | None = None, zenith: np.ndarray | None = None) -> None:
    """Write ``azimuth.npy`` and ``zenith.npy`` into ``class_dir``."""
    write_npy(Path(class_dir) / "azimuth.npy", angles() if azimuth is None else azimuth)
    write_npy(Path(class_dir) / "zenith.npy", angles() if zenith is None else zenith)


def write_raw(
    root: Path,
    per_class: int = 3,
    classes: Sequence[str] = ("cubes", "spheres"),
    *,
    seed: int = 0,
    width: int = 4,
) -> Path:
    """Write a valid raw dataset: ``<root>/<cls>/rgb/NNNN.png``, ``lidar/NNNN.npy``, angles.

    Every sample gets distinct pixels (seeded by class and index), so a test can tell samples
    apart after they went through the cache.
    """
    root = Path(root)
    for c, name in enumerate(classes):
        class_dir = root / name
        for i in range(per_class):
            s = seed * 1_000_000 + c * 100_000 + i
            write_png(class_dir / "rgb" / f"{i:0{width}d}.png", seed=s)
            write_npy(class_dir / "lidar" / f"{i:0{width}d}.npy", seed=s)
        write_angles(class_dir)
    return root


# --- writers of single defects: each takes the target path and writes one bad file there ------


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def truncated_png(path: Path) -> None:
    """A PNG cut off in the middle of its pixel data."""
    data = png_bytes(rgba_image(7))
    path.write_bytes(data[: len(data) // 2])


def corrupt_png(path: Path) -> None:
    """A PNG signature followed by garbage."""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)


def zero_byte(path: Path) -> None:
    """An empty file."""
    path.write_bytes(b"")


def rgb_png(path: Path) -> None:
    """A 3-channel RGB PNG (the real set is RGBA)."""
    path.write_bytes(png_bytes(rgba_image(3)[..., :3]))


def gray_png(path: Path) -> None:
    """A single-channel (mode L) PNG."""
    path.write_bytes(png_bytes(rgba_image(3)[..., 0]))


def small_png(path: Path) -> None:
    """A 32 x 32 RGBA PNG."""
    path.write_bytes(png_bytes(rgba_image(3)[:32, :32]))


def npy_wrong_shape(path: Path) -> None:
    np.save(path, np.full((32, 32), NO_RETURN, dtype=np.float32))


def npy_wrong_dtype(path: Path) -> None:
    np.save(path, depth_map(5).astype(np.float64))


def npy_nan(path: Path) -> None:
    depth = depth_map(5)
    depth[3, 4] = np.nan
    depth[5, 6] = np.inf
    np.save(path, depth)


def npy_pickled(path: Path) -> None:
    """An object array: loading it would run pickle (a code-execution risk)."""
    arr = np.empty((64, 64), dtype=object)
    arr[...] = 1.0
    np.save(path, arr, allow_pickle=True)


def npy_raw_pickle(path: Path) -> None:
    """A bare pickle named .npy (``np.load(allow_pickle=True)`` would execute it)."""
    path.write_bytes(pickle.dumps({"depth": [1, 2, 3]}))


def npy_text(path: Path) -> None:
    """A text file with a .npy name."""
    path.write_text("this is not an array\n1 2 3\n")


def npy_truncated(path: Path) -> None:
    """A valid header whose data stops half-way."""
    buf = io.BytesIO()
    np.save(buf, depth_map(5))
    data = buf.getvalue()
    path.write_bytes(data[: len(data) - 1000])


# name -> (writer, file kind it replaces, a substring the reported reason must contain)
BAD_FILES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "truncated_png": (truncated_png, "png", "truncated or corrupt"),
    "corrupt_png": (corrupt_png, "png", "not a readable PNG"),
    "zero_byte_png": (zero_byte, "png", "empty file"),
    "rgb_png": (rgb_png, "png", "3 channels"),
    "gray_png": (gray_png, "png", "1 channel"),
    "small_png": (small_png, "png", "32x32"),
    "npy_wrong_shape": (npy_wrong_shape, "npy", "shape (32, 32)"),
    "npy_wrong_dtype": (npy_wrong_dtype, "npy", "dtype float64"),
    "npy_nan": (npy_nan, "npy", "2 non-finite"),
    "npy_pickled": (npy_pickled, "npy", "pickled objects"),
    "npy_raw_pickle": (npy_raw_pickle, "npy", "not a .npy file"),
    "npy_text": (npy_text, "npy", "not a .npy file"),
    "npy_truncated": (npy_truncated, "npy", "truncated"),
    "zero_byte_npy": (zero_byte, "npy", "empty file"),
}


def break_file(root: Path, case: str, class_name: str = "cubes", stem: str = "0001") -> Path:
    """Overwrite one sample file of ``root`` with the defect ``case`` (a key of BAD_FILES)."""
    writer, kind, _ = BAD_FILES[case]
    sub = "rgb" if kind == "png" else "lidar"
    path = Path(root) / class_name / sub / f"{stem}.{kind}"
    writer(path)
    return path
