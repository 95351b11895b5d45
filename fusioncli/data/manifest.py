"""Generic datasets: a manifest table of samples, read, checked and decoded.

A manifest is a CSV or Parquet file with one row per sample and the columns

* ``rgb``   -- a PNG or JPEG image, RGB or RGBA (alpha = 255 where the file has none);
* ``depth`` -- a ``.npy`` float (H, W) depth map in metres, or a 16-bit PNG scaled by
  ``depth_scale`` (see :mod:`fusioncli.data.geometry`);
* ``label`` -- any string; classes are ordered by name (label 0 = the first name);
* ``split`` -- optional, ``train`` or ``val`` (case and surrounding spaces ignored).

Paths are relative to the manifest's folder (absolute paths are allowed). Rows are numbered
from 1 (the first sample, under the CSV's header) in every message. Other columns are ignored.

:func:`read_table` finds what is wrong with the table itself (columns, empty cells, duplicate
rows, split values, classes) and stats the files; :class:`SampleCodec` decodes and checks one
sample's files in a decoding worker (this module imports neither torch nor pandas). Nothing is
unpickled: ``.npy`` files go through :func:`fusioncli.data.layout.read_npy`.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fusioncli.data.geometry import nearest_index, size_text
from fusioncli.data.layout import FileStat, InvalidFile, Problem, read_npy
from fusioncli.data.projection import MAX_RANGE

COLUMNS = ("rgb", "depth", "label")
SPLIT_COLUMN = "split"
SPLITS = ("train", "val")
DEFAULT_VAL_FRACTION = 0.2  # without a split column or --val-fraction
MAX_LISTED_ROWS = 10

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PARQUET_MAGIC = b"PAR1"
_DEPTH_PNG_MODES = ("I;16", "I;16B", "I;16L")


@dataclass(frozen=True)
class Row:
    """One sample as the manifest names it (paths as written)."""

    row: int  # 1 = the first sample
    rgb: str
    depth: str
    label: str
    split: str | None  # "train", "val"; "" for an empty cell; None without a split column


@dataclass(frozen=True)
class SampleTable:
    """A manifest read and checked: its rows, the problems found in them, the files' stats.

    ``problems`` are not skippable (they are about the table, not a sample's files); the
    caller reports them together with the files' problems. ``stats`` (path as written, size,
    mtime_ns; size -1 for a missing file) cover the manifest and every sample file.
    """

    path: Path
    rows: tuple[Row, ...]
    has_split: bool
    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = ()
    stats: tuple[FileStat, ...] = ()

    @property
    def root(self) -> Path:
        """The folder relative paths start from."""
        return self.path.parent

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def class_names(self) -> tuple[str, ...]:
        """Every label, in name order."""
        return tuple(sorted({r.label for r in self.rows if r.label}))

    def rows_without_split(self) -> list[Row]:
        """Rows whose split cell is empty (none without a split column)."""
        return [r for r in self.rows if r.split == ""]


def rows_text(rows: Sequence[int]) -> str:
    listed = ", ".join(str(r) for r in rows[:MAX_LISTED_ROWS])
    more = f" and {len(rows) - MAX_LISTED_ROWS} more" if len(rows) > MAX_LISTED_ROWS else ""
    return f"row{'s' if len(rows) > 1 else ''} {listed}{more}"


def _read_columns(path: Path) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, cells (as text) and problems of a CSV or Parquet manifest."""
    with open(path, "rb") as raw:
        magic = raw.read(4)
    if magic == _PARQUET_MAGIC:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... on a bad file
            raise InvalidFile(f"not a readable Parquet file ({exc})") from None
        header = [str(n) for n in table.column_names]
        columns = table.to_pydict()
        n = table.num_rows

        def text(value: Any) -> str:
            return "" if value is None else str(value)

        cells = [[text(columns[h][i]) for h in header] for i in range(n)]
        return header, cells, []
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:  # -sig: spreadsheets write a BOM
            records = [r for r in csv.reader(fh) if r]  # blank lines are not rows
    except UnicodeDecodeError as exc:
        raise InvalidFile(f"not UTF-8 text: neither CSV nor Parquet ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise InvalidFile(f"not a readable CSV file ({exc})") from None
    if not records:
        return [], [], []
    header, *body = records
    problems = []
    for i, record in enumerate(body, start=1):
        if len(record) != len(header):
            problems.append(f"row {i} has {len(record)} fields, the header {len(header)}")
    return [h.strip() for h in header], body, problems


def read_table(path: Path) -> tuple[SampleTable | None, list[Problem]]:
    """Read a manifest and check its table; stat every file it names.

    Returns (None, problems) when there is no usable table (no file, unreadable, a missing
    column, no rows); otherwise the table, whose ``problems`` list what is wrong with rows.
    """
    path = Path(path)
    name = path.name

    def fail(*reasons: str) -> tuple[None, list[Problem]]:
        return None, [Problem(name, r, skippable=False) for r in reasons]

    if not path.is_file():
        return fail("no such manifest file" if not path.exists() else "is not a file")
    try:
        header, cells, shape_problems = _read_columns(path)
    except OSError as exc:
        return fail(f"cannot read ({exc.strerror or exc})")
    except InvalidFile as exc:
        return fail(str(exc))
    if shape_problems:
        return fail(*shape_problems)
    if not header:
        return fail("empty manifest (no header, no rows); expected the columns rgb, depth, label[, split]")
    duplicated = sorted({h for h in header if header.count(h) > 1})
    missing = [c for c in COLUMNS if c not in header]
    problems = [f"no column {c!r}" for c in missing]
    if duplicated:
        problems.append(f"column(s) {', '.join(map(repr, duplicated))} appear more than once")
    if problems:
        return fail(*problems, f"(found: {', '.join(header) or 'no columns'}; expected rgb, depth, label[, split])")
    if not cells:
        return fail("empty manifest (a header but no rows)")
    where = {h: header.index(h) for h in (*COLUMNS, SPLIT_COLUMN) if h in header}
    has_split = SPLIT_COLUMN in where
    notes = []
    ignored = [h for h in header if h not in where]
    if ignored:
        notes.append(f"{name}: ignored column(s) {', '.join(ignored)}")

    row_problems: list[Problem] = []

    def bad(row: int, reason: str) -> None:
        row_problems.append(Problem("", reason, skippable=False, row=row, source=name))

    rows = []
    bad_splits: list[tuple[int, str]] = []
    for i, record in enumerate(cells, start=1):
        rgb, depth, label = (record[where[c]].strip() for c in COLUMNS)
        for column, value in (("rgb", rgb), ("depth", depth), ("label", label)):
            if not value:
                bad(i, f"empty {column} cell")
        split = None
        if has_split:
            value = record[where[SPLIT_COLUMN]].strip()
            split = value.lower()
            if value and split not in SPLITS:
                bad_splits.append((i, value))
        rows.append(Row(i, rgb, depth, label, split))
    for i, value in bad_splits:
        bad(i, f"split {value!r} is neither train nor val")

    # Duplicates: a sample listed twice would count twice, or sit in both splits.
    first_rgb: dict[str, int] = {}
    first_depth: dict[str, int] = {}
    resolved: dict[str, str] = {}
    root = path.parent
    for r in rows:
        rgb_key = os.path.normpath(os.path.join(root, r.rgb)) if r.rgb else ""
        depth_key = os.path.normpath(os.path.join(root, r.depth)) if r.depth else ""
        resolved[r.rgb], resolved[r.depth] = rgb_key, depth_key
        same_rgb = first_rgb.get(rgb_key) if rgb_key else None
        same_depth = first_depth.get(depth_key) if depth_key else None
        if same_rgb is not None and same_rgb == same_depth:
            bad(r.row, f"duplicate of row {same_rgb} (same rgb and depth files)")
        elif same_rgb is not None:
            bad(r.row, f"rgb file {r.rgb} is also row {same_rgb}'s")
        elif same_depth is not None:
            bad(r.row, f"depth file {r.depth} is also row {same_depth}'s")
        first_rgb.setdefault(rgb_key, r.row)
        first_depth.setdefault(depth_key, r.row)

    labels = sorted({r.label for r in rows if r.label})
    if len(labels) < 2:
        found = ", ".join(repr(x) for x in labels) or "none"
        row_problems.append(
            Problem(name, f"{len(labels)} class(es) ({found}); a classifier needs at least 2 labels", skippable=False)
        )

    st = path.stat()
    stats: list[FileStat] = [(f"manifest:{name}", st.st_size, st.st_mtime_ns)]
    for written, full in sorted(resolved.items()):
        if not written:
            continue
        try:
            fst = os.stat(full)
            stats.append((written, fst.st_size, fst.st_mtime_ns))
        except OSError:
            stats.append((written, -1, -1))  # missing: the build reports it; appearing changes the signature
    table = SampleTable(path, tuple(rows), has_split, tuple(row_problems), tuple(notes), tuple(stats))
    return table, []


def empty_split_problem(table: SampleTable) -> Problem | None:
    """With a split column and no --val-fraction, rows with an empty split cell are an error."""
    empty = [r.row for r in table.rows_without_split()]
    if not empty:
        return None
    return Problem(
        table.name,
        f"{rows_text(empty)}: empty split cell; fill in train or val, or pass --val-fraction to split"
        " the rows without one",
        skippable=False,
    )


# --- decoding (runs in worker processes) --------------------------------------------------------


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def open_image(data: bytes) -> Image.Image:
    """Validate an RGB image's bytes (PNG or JPEG, RGB or RGBA) and decode it."""
    if not data:
        raise InvalidFile("empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))
    except Exception as exc:  # noqa: BLE001 - PIL raises UnidentifiedImageError, SyntaxError, OSError, ... on garbage
        raise InvalidFile(f"not a readable PNG or JPEG image ({_short(exc)})") from None
    if im.mode not in ("RGB", "RGBA"):
        raise InvalidFile(f"mode {im.mode}; expected RGB or RGBA (convert it, e.g. with Pillow's .convert('RGB'))")
    try:
        im.load()
    except Exception as exc:  # noqa: BLE001 - as above: any decoder error means corrupt data
        raise InvalidFile(f"truncated or corrupt image data ({_short(exc)})") from None
    return im


def image_size(path: str) -> tuple[int, int] | None:
    """(H, W) of an image from its header only, or None when it cannot be read."""
    try:
        with Image.open(path, formats=("PNG", "JPEG")) as im:
            w, h = im.size
            return h, w
    except Exception:  # noqa: BLE001 - any failure: the build reports the file with its reason
        return None


def image_sizes(root: Path, names: Sequence[str]) -> list[tuple[int, int] | None]:
    """:func:`image_size` of many files (threads: opening a file releases the GIL)."""
    paths = [os.path.join(root, n) for n in names]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(image_size, paths, chunksize=64))


def decode_depth_image(data: bytes, depth_scale: float | None, no_return: float) -> np.ndarray:
    """Validate a depth file's bytes; return (H, W) float32 metres with no return = 50.0.

    ``.npy`` float arrays are metres; 16-bit PNGs are multiplied by ``depth_scale`` (in float64,
    then rounded to float32). Non-finite and negative depths are refused; ``no_return`` (in
    metres) becomes :data:`~fusioncli.data.projection.MAX_RANGE`, the cache's "no return".
    """
    if not data:
        raise InvalidFile("empty file (0 bytes)")
    if data.startswith(_PNG_SIGNATURE):
        if depth_scale is None:
            raise InvalidFile("a PNG depth image needs depth_scale (metres per unit) in dataset.toml")
        try:
            im = Image.open(io.BytesIO(data), formats=("PNG",))
            mode = im.mode
            if mode in _DEPTH_PNG_MODES:
                im.load()
        except Exception as exc:  # noqa: BLE001 - any decoder error means corrupt data
            raise InvalidFile(f"not a readable PNG ({_short(exc)})") from None
        if mode not in _DEPTH_PNG_MODES:
            raise InvalidFile(f"PNG mode {mode}; expected a 16-bit single-channel depth image")
        metres = (np.asarray(im).astype(np.float64) * depth_scale).astype(np.float32)
    else:
        arr = read_npy(data)
        if arr.ndim != 2:
            raise InvalidFile(f"shape {arr.shape}; expected a 2-D (H, W) depth map")
        if arr.dtype.kind != "f":
            raise InvalidFile(f"dtype {arr.dtype.name}; expected float metres (or a 16-bit PNG with depth_scale)")
        metres = arr.astype(np.float32)  # a native-order copy: the input buffer is read-only
    bad = metres.size - int(np.count_nonzero(np.isfinite(metres)))
    if bad:
        raise InvalidFile(f"depth has {bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf)")
    metres = np.where(metres == np.float32(no_return), np.float32(MAX_RANGE), metres)
    negative = int(np.count_nonzero(metres < 0))
    if negative:
        raise InvalidFile(f"depth has {negative} negative value{'s' if negative > 1 else ''}")
    return metres


@dataclass(frozen=True)
class SampleCodec:
    """Decodes one sample's files into the cache's form, checking sizes (picklable, for workers).

    ``required``: the (H, W) every depth map must have before resizing (the lidar grids' size,
    or the camera's reference size without ``--size``), with ``required_why`` saying where it
    comes from. ``target``: the cache's (H, W); RGB is resized bilinearly (Pillow, antialiased
    when shrinking), depth by nearest neighbour (:func:`~fusioncli.data.geometry.nearest_index`).
    """

    target: tuple[int, int]
    required: tuple[int, int] | None
    required_why: str
    depth_scale: float | None
    no_return: float

    def mismatch(self, size: tuple[int, int]) -> str:
        """The reason given for a depth map of ``size`` when ``required`` differs."""
        return f"depth map is {size_text(*size)} but {self.required_why}"

    def decode(
        self, rgb: bytes | None, depth: bytes | None
    ) -> tuple[np.ndarray | None, np.ndarray | None, list[tuple[int, str]], tuple[int, int] | None]:
        """(rgb (H, W, 4) uint8, depth (H, W) float32, problems as (0 rgb / 1 depth, reason), the
        depth's size before resizing). Arrays are None where the sample is bad."""
        problems: list[tuple[int, str]] = []
        im = dep = None
        if rgb is not None:
            try:
                im = open_image(rgb)
            except InvalidFile as exc:
                problems.append((0, str(exc)))
        if depth is not None:
            try:
                dep = decode_depth_image(depth, self.depth_scale, self.no_return)
            except InvalidFile as exc:
                problems.append((1, str(exc)))
        native = (int(dep.shape[0]), int(dep.shape[1])) if dep is not None else None
        if im is not None and dep is not None and (im.height, im.width) != native:
            problems.append(
                (1, f"depth map is {size_text(*dep.shape)} but the rgb image is {size_text(im.height, im.width)}")
            )
        elif self.required is not None and dep is not None and native != self.required:
            problems.append((1, self.mismatch(dep.shape)))
        elif self.required is not None and im is not None and dep is None and (im.height, im.width) != self.required:
            problems.append((0, f"image is {size_text(im.height, im.width)} but {self.required_why}"))
        if problems or im is None or dep is None:
            return None, None, problems, native
        th, tw = self.target
        if (im.height, im.width) != self.target:
            im = im.resize((tw, th), Image.Resampling.BILINEAR)
            dep = dep[np.ix_(nearest_index(dep.shape[0], th), nearest_index(dep.shape[1], tw))]
        if im.mode != "RGBA":
            im = im.convert("RGBA")  # alpha 255
        pixels = np.frombuffer(im.tobytes(), dtype=np.uint8).reshape(th, tw, 4)
        return pixels, dep, problems, native
