"""Sensor geometry of a ``--manifest`` dataset: ``dataset.toml``, resizing, ray directions.

A manifest dataset names its geometry in ``dataset.toml`` beside the manifest (or
``--geometry FILE``), one of two sections::

    [lidar]                      # the DLI projection (fusioncli.data.projection)
    azimuth = "azimuth.npy"      # (H,) radians, one angle per depth-map row
    zenith = "zenith.npy"        # (W,) radians, one angle per depth-map column
    no_return = 50.0             # the depth value meaning "no return" (default 50.0)

    [camera]                     # a pinhole depth camera (z-depth along the optical axis)
    fx = 525.0                   # focal lengths and principal point, in pixels
    fy = 525.0
    cx = 319.5                   # OpenCV convention: pixel centres at integer coordinates
    cy = 239.5
    depth_scale = 0.001          # metres per stored unit of a 16-bit PNG depth image
    no_return = 0.0              # the depth meaning "no measurement" (default 0)
    width = 640                  # optional: the image size the intrinsics are for
    height = 480                 #   (default: the size of most images)

File names are relative to the toml's folder. ``depth_scale`` (either section) applies to
16-bit PNG depth only; ``.npy`` depth is in metres already. ``no_return`` is compared in metres.

Both geometries end in one code path: the cache stores a depth map (metres; ``no_return``
written as :data:`~fusioncli.data.projection.MAX_RANGE`, 50.0) and a direction grid (3, H, W)
that :func:`~fusioncli.data.projection.xyza_from_directions` multiplies it by, so XYZA is
``depth * a / 50 * direction`` with ``a = depth < 50`` whichever the sensor:

* ``lidar``: unit ray directions from the angle grids (bit-identical to the DLI layout), and
  the depth is the range along the ray.
* ``camera``: the depth is z-depth and the direction of pixel (u, v) is the non-unit
  ``((u - cx) / fx, (v - cy) / fy, 1)`` in camera axes, so ``z * direction`` is the
  back-projected point with one multiplication per coordinate (no range conversion, no sqrt:
  the values are the pinhole formula's, bit for bit, on every device). Camera axes map to the
  DLI frame (x right, y forward, z up) as x = X, y = Z, z = -Y. The 50 m limit therefore
  applies to z-depth for cameras (a wide-angle point at z < 50 m counts as a return even if
  its range is a little over 50 m).

Resizing (``--size``) keeps the geometry consistent with the resized depth: depth is resampled
by nearest neighbour (:func:`nearest_index`), the lidar angle grids with the same indices (each
resized pixel keeps its own ray exactly), and the camera intrinsics are scaled
(``fx * s``, ``(cx + 0.5) * s - 0.5``: pixel centres stay pixel centres).

numpy only at module level: decoding worker processes and ``--help`` import it.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fusioncli.data.layout import InvalidFile, Problem, read_npy
from fusioncli.data.projection import MAX_RANGE

if TYPE_CHECKING:
    import torch

# tomllib is 3.11's; 3.10 has the same parser as the tomli package (a dependency there).
tomllib: Any = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")

GEOMETRY_FILE = "dataset.toml"
KINDS = ("lidar", "camera")
_KEYS = {
    "lidar": {"azimuth", "zenith", "no_return", "depth_scale"},
    "camera": {"fx", "fy", "cx", "cy", "depth_scale", "no_return", "width", "height"},
}
_REQUIRED = {"lidar": ("azimuth", "zenith"), "camera": ("fx", "fy", "cx", "cy")}
_DEFAULT_NO_RETURN = {"lidar": MAX_RANGE, "camera": 0.0}


def size_text(h: int, w: int) -> str:
    """A size as problems print it: rows x columns, like a numpy shape."""
    return f"{h}x{w} (HxW)"


@dataclass(frozen=True)
class Geometry:
    """A parsed, checked ``dataset.toml``: what turns depth maps into model input."""

    kind: str  # "lidar" or "camera"
    path: Path
    no_return: float  # metres
    depth_scale: float | None = None  # metres per unit of 16-bit PNG depth; None: no PNG depth allowed
    azimuth: np.ndarray | None = None  # lidar: (H,) float32 radians
    zenith: np.ndarray | None = None  # lidar: (W,) float32 radians
    grid_digests: tuple[str, str] = ("", "")  # lidar: sha256 of the two grid files
    fx: float = 0.0
    fy: float = 0.0
    cx: float = 0.0
    cy: float = 0.0
    width: int | None = None  # camera: the image size the intrinsics are for, if given
    height: int | None = None
    files: tuple[Path, ...] = ()  # the toml and the grid files it names (for the cache's stat check)

    @property
    def native_size(self) -> tuple[int, int] | None:
        """(H, W) every depth map must have before resizing, when the geometry fixes it."""
        if self.kind == "lidar":
            assert self.azimuth is not None and self.zenith is not None
            return len(self.azimuth), len(self.zenith)
        if self.width is not None and self.height is not None:
            return self.height, self.width
        return None

    def canonical(self) -> dict[str, Any]:
        """Everything the cache depends on, JSON-able (for the fingerprint)."""
        record: dict[str, Any] = {"kind": self.kind, "no_return": self.no_return, "depth_scale": self.depth_scale}
        if self.kind == "lidar":
            record.update(azimuth=self.grid_digests[0], zenith=self.grid_digests[1])
        else:
            record.update(fx=self.fx, fy=self.fy, cx=self.cx, cy=self.cy, width=self.width, height=self.height)
        return record

    def grids(self, native: tuple[int, int], target: tuple[int, int]) -> dict[str, Any]:
        """The cache manifest's ``geometry`` record for depth maps resized ``native`` -> ``target``.

        lidar: the angle grids picked with the depth's nearest-neighbour indices (``azimuth``,
        ``zenith``: the cache keeps them at the manifest's top level, as the DLI layout does);
        camera: the scaled intrinsics and the per-column/per-row slopes ``(u - cx) / fx``,
        ``(v - cy) / fy`` (float64, exact in JSON). :func:`directions` makes the direction grid.
        """
        (h, w), (th, tw) = native, target
        record: dict[str, Any] = {"kind": self.kind, "no_return": self.no_return, "depth_scale": self.depth_scale}
        if self.kind == "lidar":
            assert self.azimuth is not None and self.zenith is not None
            record["azimuth"] = [float(x) for x in self.azimuth[nearest_index(h, th)]]
            record["zenith"] = [float(x) for x in self.zenith[nearest_index(w, tw)]]
            return record
        fx, fy, cx, cy = self.fx, self.fy, self.cx, self.cy
        if (th, tw) != (h, w):
            sx, sy = tw / w, th / h
            fx, fy, cx, cy = fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5
        record.update(fx=fx, fy=fy, cx=cx, cy=cy)
        record["x_slopes"] = [float(x) for x in (np.arange(tw, dtype=np.float64) - cx) / fx]
        record["y_slopes"] = [float(y) for y in (np.arange(th, dtype=np.float64) - cy) / fy]
        return record


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each of ``n_out`` samples resampled by nearest neighbour from ``n_in``.

    Centre-aligned (output pixel ``i`` covers source ``[(i) * s, (i + 1) * s)``, ``s = n_in /
    n_out``, and takes the pixel under its centre); identity when the sizes are equal.
    """
    if n_in == n_out:
        return np.arange(n_in)
    idx = np.floor((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def _number(section: str, key: str, value: object, problems: list[str], *, positive: bool = False) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problems.append(f"[{section}] {key} = {value!r}: expected a finite number")
        return None
    if positive and value <= 0:
        problems.append(f"[{section}] {key} = {value!r}: must be > 0")
        return None
    return float(value)


def _grid(folder: Path, section: str, key: str, value: object, problems: list[str]) -> tuple[np.ndarray, str] | None:
    if not isinstance(value, str) or not value:
        problems.append(f"[{section}] {key} = {value!r}: expected a file name (a .npy of angles in radians)")
        return None
    path = folder / value
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.append(f"[{section}] {key}: cannot read {value} ({exc.strerror or exc})")
        return None
    try:
        arr = read_npy(data)
    except InvalidFile as exc:
        problems.append(f"[{section}] {key}: {value}: {exc}")
        return None
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind != "f":
        problems.append(f"[{section}] {key}: {value} holds {arr.dtype.name} {arr.shape}; expected a 1-D float array")
        return None
    if not np.isfinite(arr).all():
        problems.append(f"[{section}] {key}: {value} holds non-finite angles (NaN or inf)")
        return None
    return arr.astype(np.float32), hashlib.sha256(data).hexdigest()


def read_geometry(
    path: Path, *, display: str | None = None, beside: str | None = None
) -> tuple[Geometry | None, list[Problem]]:
    """Parse and check a ``dataset.toml``; returns the geometry, or None and every problem.

    Problems name the file (as ``display``, default its name) and are not skippable: without
    the geometry no depth map can be turned into model input. ``beside`` names the manifest
    the file was looked for next to, for the missing-file message.
    """
    path = Path(path)
    name = display or path.name

    def fail(*reasons: str) -> tuple[None, list[Problem]]:
        return None, [Problem(name, r, skippable=False) for r in reasons]

    if not path.is_file():
        where = f" beside {beside}" if beside else ""
        return fail(
            f"missing{where}: it names the sensor geometry, a [lidar] section (azimuth, zenith angle"
            " grids) or a [camera] section (fx, fy, cx, cy); or pass --geometry FILE"
        )
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return fail(f"unreadable ({exc})")
    except tomllib.TOMLDecodeError as exc:
        return fail(f"not valid TOML ({exc})")
    sections = [k for k in KINDS if k in values]
    others = sorted(set(values) - set(KINDS))
    problems: list[str] = []
    if others:
        problems.append(f"unknown section(s) or key(s) {', '.join(others)}; expected one [lidar] or [camera] section")
    if len(sections) != 1:
        found = " and ".join(f"[{s}]" for s in sections) or "neither"
        return fail(*problems, f"has {found}; expected exactly one of [lidar] or [camera]")
    kind = sections[0]
    table = values[kind]
    if not isinstance(table, dict):
        return fail(*problems, f"{kind} must be a [{kind}] section")
    unknown = sorted(set(table) - _KEYS[kind])
    if unknown:
        problems.append(f"[{kind}] unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS[kind]))}")
    missing = [k for k in _REQUIRED[kind] if k not in table]
    if missing:
        problems.append(f"[{kind}] missing {', '.join(missing)}")
    no_return = _number(kind, "no_return", table.get("no_return", _DEFAULT_NO_RETURN[kind]), problems)
    depth_scale = None
    if "depth_scale" in table:
        depth_scale = _number(kind, "depth_scale", table["depth_scale"], problems, positive=True)
    fields: dict[str, Any] = {}
    if kind == "lidar":
        grids = {k: _grid(path.parent, kind, k, table[k], problems) for k in ("azimuth", "zenith") if k in table}
        if grids.get("azimuth") and grids.get("zenith"):
            (az, az_digest), (ze, ze_digest) = grids["azimuth"], grids["zenith"]  # type: ignore[misc]
            fields.update(azimuth=az, zenith=ze, grid_digests=(az_digest, ze_digest))
            fields["files"] = (path, path.parent / table["azimuth"], path.parent / table["zenith"])
    else:
        for key in ("fx", "fy", "cx", "cy"):
            if key in table:
                fields[key] = _number(kind, key, table[key], problems, positive=key in ("fx", "fy"))
        for key in ("width", "height"):
            if key in table:
                value = table[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    problems.append(f"[camera] {key} = {value!r}: expected a positive whole number of pixels")
                else:
                    fields[key] = value
        if ("width" in fields) != ("height" in fields):
            problems.append("[camera] give both width and height, or neither")
    if problems:
        return fail(*problems)
    assert no_return is not None
    fields.setdefault("files", (path,))
    return Geometry(kind, path, no_return, depth_scale, **fields), []


def reference_size(geometry: Geometry, sizes: list[tuple[int, int] | None]) -> tuple[int, int] | None:
    """The native (H, W) the geometry applies to: fixed by it, or the size of most images."""
    fixed = geometry.native_size
    if fixed is not None:
        return fixed
    counts = Counter(s for s in sizes if s is not None)
    if not counts:
        return None
    # Most common; ties go to the size met first, so the choice does not depend on hashing.
    best = max(counts.values())
    return next(s for s in sizes if s is not None and counts[s] == best)


def directions(manifest: dict[str, Any], *, device: torch.device | str = "cpu") -> torch.Tensor:
    """The (3, H, W) float32 direction grid of a cache manifest (DLI or ``--manifest`` built).

    lidar (and DLI caches, which have no ``geometry``):
    :func:`fusioncli.data.projection.unit_directions` of the angle grids. camera:
    ``(x_slope[u], 1, -y_slope[v])`` (non-unit: times z-depth it is the point, see the module
    docstring), float32 copies of the float64 slopes, so they are the same on every device.
    """
    import torch

    from fusioncli.data.projection import unit_directions

    record = manifest.get("geometry") or {"kind": "lidar"}
    if record["kind"] == "lidar":
        az = np.asarray(manifest["azimuth"], dtype=np.float32)
        ze = np.asarray(manifest["zenith"], dtype=np.float32)
        return unit_directions(az, ze, device=device)
    xs = torch.as_tensor(np.asarray(record["x_slopes"], dtype=np.float32))
    ys = torch.as_tensor(np.asarray(record["y_slopes"], dtype=np.float32))
    h, w = len(ys), len(xs)
    out = torch.empty((3, h, w), dtype=torch.float32)
    out[0] = xs[None, :]
    out[1] = 1.0
    out[2] = -ys[:, None]
    return out.to(device)
