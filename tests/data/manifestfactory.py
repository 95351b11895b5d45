"""Hand-made ``--manifest`` datasets: a folder per class, a ``samples.csv`` and a ``dataset.toml``.

Tiny and cheap (a coloured square on black, a nearer depth patch on a far background), so a test
can break exactly one thing and say which reason it expects for which row. Imported as
``import manifestfactory`` after putting ``tests/data`` on ``sys.path`` (as ``rawfactory``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("dog", "cat")  # not in name order on purpose: the cache orders them
FX, FY, CX, CY = 20.0, 22.0, 7.5, 5.5


def rgb_image(seed: int, h: int, w: int, channels: int = 3) -> np.ndarray:
    """(h, w, channels) uint8: a coloured square on black, placed by ``seed``."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, channels), dtype=np.uint8)
    if channels == 4:
        img[..., 3] = 255
    y, x = rng.integers(0, max(1, h // 2)), rng.integers(0, max(1, w // 2))
    img[y : y + h // 3 + 1, x : x + w // 3 + 1, :3] = rng.integers(60, 255, size=3, dtype=np.uint8)
    return img


def depth_map(seed: int, h: int, w: int, background: float = 50.0) -> np.ndarray:
    """(h, w) float32 metres: ``background`` with a nearer square patch."""
    rng = np.random.default_rng(seed + 7919)
    depth = np.full((h, w), background, dtype=np.float32)
    y, x = rng.integers(0, max(1, h // 2)), rng.integers(0, max(1, w // 2))
    depth[y : y + h // 2, x : x + w // 2] = rng.uniform(2.0, 20.0)
    return depth


def write_csv(path: Path, rows: Sequence[Sequence[object]], header: Sequence[str] = ("rgb", "depth", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        header, *rows = list(csv.reader(fh))
    return header, rows


def camera_toml(root: Path, **extra: object) -> Path:
    values = {"fx": FX, "fy": FY, "cx": CX, "cy": CY, **extra}
    body = "\n".join(f"{k} = {v!r}" for k, v in values.items() if v is not None)
    path = Path(root) / "dataset.toml"
    path.write_text(f"[camera]\n{body}\n", encoding="utf-8")
    return path


def lidar_toml(root: Path, h: int, w: int, **extra: object) -> Path:
    """Angle grids of h azimuths and w zeniths (0.5 degree steps from -16), and the toml naming them."""
    root = Path(root)
    np.save(root / "az.npy", np.deg2rad(-16.0 + 0.5 * np.arange(h)).astype(np.float32))
    np.save(root / "ze.npy", np.deg2rad(-16.0 + 0.5 * np.arange(w)).astype(np.float32))
    lines = ['azimuth = "az.npy"', 'zenith = "ze.npy"', *(f"{k} = {v!r}" for k, v in extra.items())]
    path = root / "dataset.toml"
    path.write_text("[lidar]\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_dataset(
    root: Path,
    per_class: int = 4,
    classes: Sequence[str] = CLASSES,
    *,
    size: tuple[int, int] = (12, 16),
    geometry: str = "camera",
    split: Sequence[str] | None = None,
    channels: int = 3,
) -> Path:
    """Write ``<root>/<class>/<i>.png`` + ``<i>.npy`` and ``samples.csv``; returns the manifest path.

    Rows go class by class; ``split`` (one value per row) adds a split column.
    """
    root = Path(root)
    h, w = size
    rows: list[list[object]] = []
    seed = 0
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rgb_image(seed, h, w, channels)).save(root / cls / f"{i}.png")
            np.save(root / cls / f"{i}.npy", depth_map(seed, h, w))
            rows.append([f"{cls}/{i}.png", f"{cls}/{i}.npy", cls])
            seed += 1
    header = ["rgb", "depth", "label"]
    if split is not None:
        header.append("split")
        rows = [[*r, s] for r, s in zip(rows, split, strict=True)]
    if geometry == "camera":
        camera_toml(root)
    else:
        lidar_toml(root, h, w)
    return write_csv(root / "samples.csv", rows, header)
