"""Raw dataset layout: find class folders, pair PNG and NPY files by stem, validate every file.

The NVIDIA layout is ``<data>/<class>/rgb/NNNN.png`` (64x64 RGBA uint8),
``<data>/<class>/lidar/NNNN.npy`` ((64, 64) float32 depth, 50.0 = no return) and
``<data>/<class>/azimuth.npy``, ``zenith.npy`` ((64,) float radians). A *class folder* is a
subfolder holding ``rgb/`` and ``lidar/``; ``cubes`` is label 0, ``spheres`` label 1, any other
class folders follow in sorted order.

This module never raises on a bad *file*: it collects a :class:`Problem` per bad file or folder
(path relative to the data folder plus a reason) so the caller can report all of them at once.
It imports neither torch nor pyarrow, because worker processes import it to decode files.

Safety: ``.npy`` files are parsed here without ``np.load``'s pickle fallback (a file that is not
a ``.npy`` would otherwise be handed to pickle); object arrays are refused, never unpickled.
"""

from __future__ import annotations

import io
import os
import shlex
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import PngImagePlugin

from fusioncli.errors import BadInputError

SIZE = 64
CHANNELS = 4
KNOWN_CLASSES = ("cubes", "spheres")  # fixed labels 0 and 1, as in the seed
RGB_DIR = "rgb"
LIDAR_DIR = "lidar"
ANGLE_FILES = ("azimuth.npy", "zenith.npy")

_NPY_MAGIC = b"\x93NUMPY"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class InvalidFile(ValueError):
    """A file's content is unusable; the message is the reason shown to the user."""


@dataclass(frozen=True)
class Problem:
    """One bad file or folder: its path relative to the data folder and why it is bad.

    ``skippable`` is False for problems ``--skip-invalid`` cannot work around (the angle grid
    is needed to project every depth map of a class). ``row`` and ``source`` locate a problem
    of a ``--manifest`` dataset: the manifest's file name and its row (1 = the first sample);
    ``path`` is then the file as the row names it, or empty for a problem of the row itself.
    """

    path: str
    reason: str
    skippable: bool = True
    row: int | None = None
    source: str = ""

    def __str__(self) -> str:
        where = [f"{self.source} row {self.row}"] if self.row is not None else []
        if self.path:
            where.append(self.path)
        return f"{': '.join(where)}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"path": self.path, "reason": self.reason}
        if self.row is not None:  # DLI problems keep their two keys
            record.update(row=self.row, source=self.source)
        return record


@dataclass(frozen=True)
class Sample:
    """One png/npy pair. ``png`` and ``npy`` are relative to the data folder (POSIX form)."""

    class_name: str
    label: int
    stem: str
    png: str
    npy: str


@dataclass(frozen=True)
class ClassFolder:
    """A discovered class: where its files are and its paired files in sample order."""

    name: str
    label: int
    folder: str  # relative to the data folder; holds azimuth.npy and zenith.npy
    rgb_dir: str  # relative to the data folder; may be a nested folder (see notes)
    lidar_dir: str
    stems: tuple[str, ...]
    png_names: tuple[str, ...]  # file names in rgb_dir, aligned with stems
    npy_names: tuple[str, ...]

    @cached_property
    def samples(self) -> tuple[Sample, ...]:
        # Built on demand: the cache-hit path never needs 20,000 Sample objects.
        return tuple(
            Sample(self.name, self.label, stem, f"{self.rgb_dir}/{png}", f"{self.lidar_dir}/{npy}")
            for stem, png, npy in zip(self.stems, self.png_names, self.npy_names)
        )


# A file's cheap identity for the cache's fast path: (path relative to the data folder, size,
# mtime_ns). Plain tuples: 40,000 of them are made on every `prepare`.
FileStat = tuple[str, int, int]


@dataclass(frozen=True)
class Layout:
    """What :func:`discover` found: classes with paired samples, plus everything to report.

    ``orphans`` are files without a partner (always skipped, reported); ``problems`` are bad
    folders (an empty class folder); ``stats`` cover every sample and angle file considered,
    orphans included, so adding or removing a file changes the stat signature.
    """

    data_dir: Path
    classes: tuple[ClassFolder, ...]
    orphans: tuple[Problem, ...] = ()
    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = ()
    stats: tuple[FileStat, ...] = field(default=(), repr=False)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @cached_property
    def samples(self) -> list[Sample]:
        """All samples, class by class, each class in stem order."""
        return [s for c in self.classes for s in c.samples]

    @property
    def n_samples(self) -> int:
        return sum(len(c.stems) for c in self.classes)


def stem_key(stem: str) -> tuple[int, int, str]:
    """Sort key: numeric stems in numeric order ("2" before "10"), then the others by name."""
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


def class_order(names: Iterable[str]) -> list[str]:
    """``cubes`` = 0, ``spheres`` = 1 (where present), then any other classes in sorted order."""
    names = set(names)
    return [n for n in KNOWN_CLASSES if n in names] + sorted(names - set(KNOWN_CLASSES))


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _scan(folder: Path, suffix: str) -> tuple[dict[str, os.DirEntry[str]], list[str], list[str]]:
    """Files with ``suffix`` (by stem), other file names, and subfolder names of ``folder``.

    Hidden entries are ignored: macOS copies leave ``._0001.png`` AppleDouble files and
    ``.DS_Store`` next to the data.
    """
    files: dict[str, os.DirEntry[str]] = {}
    others: list[str] = []
    subdirs: list[str] = []
    dot_suffix = "." + suffix
    with os.scandir(folder) as it:
        for entry in it:
            name = entry.name
            if name[0] == ".":
                continue
            if name.endswith(dot_suffix) and entry.is_file():  # the common case, first
                files[name[: -len(dot_suffix)]] = entry
            elif entry.is_dir():
                subdirs.append(name)
            elif entry.is_file():
                stem, dot, ext = name.rpartition(".")
                if dot and stem and ext.lower() == suffix:
                    files[stem] = entry
                else:
                    others.append(name)
    return files, others, sorted(subdirs)


def _move_up_command(folder: Path) -> str:
    """Shell commands that move ``folder/<same name>/`` up one level (safe for 10,000 files)."""
    tmp = folder.with_name(folder.name + ".tmp")
    q = shlex.quote
    return (
        f"mv {q(str(folder))} {q(str(tmp))} && mv {q(str(tmp / folder.name))} {q(str(folder))} && rmdir {q(str(tmp))}"
    )


def _modality_files(
    root: Path, folder: Path, suffix: str, notes: list[str], problems: list[Problem]
) -> tuple[Path, dict[str, os.DirEntry[str]]]:
    """The files of one modality folder, following the known one-level-too-deep quirk."""
    files, others, subdirs = _scan(folder, suffix)
    if not files and subdirs == [folder.name]:
        # Real copies have spheres/lidar/lidar/: use it, and say how to fix the copy.
        nested = folder / folder.name
        files, others, subdirs = _scan(nested, suffix)
        if files:
            notes.append(
                f"found {folder.name} files one level too deep in {_rel(nested, root)}/ (used them);"
                f" move them up with: {_move_up_command(folder)}"
            )
            folder = nested
    if others:
        examples = ", ".join(sorted(others)[:3])
        notes.append(f"ignored {len(others)} file(s) in {_rel(folder, root)}/ that are not .{suffix} ({examples})")
    if not files:
        hint = f" (it holds only the folders {', '.join(subdirs)})" if subdirs else ""
        problems.append(Problem(_rel(folder, root) + "/", f"holds no .{suffix} files{hint}"))
    return folder, files


def _class_dir(entry: Path) -> tuple[Path | None, str | None]:
    """``entry`` itself if it holds rgb/ and lidar/, or a same-named child that does."""
    if (entry / RGB_DIR).is_dir() and (entry / LIDAR_DIR).is_dir():
        return entry, None
    nested = entry / entry.name
    if (nested / RGB_DIR).is_dir() and (nested / LIDAR_DIR).is_dir():
        return nested, entry.name
    return None, None


def discover(data_dir: Path) -> Layout:
    """Find class folders under ``data_dir``, pair their files by stem and stat them.

    Raises :class:`~fusioncli.errors.BadInputError` only when there is nothing to work with
    (no folder, no class folders); every other defect is collected in the returned layout.
    """
    root = Path(data_dir)
    if not root.exists():
        raise BadInputError(
            f"data folder {root} does not exist",
            hint="pass --data-dir, or write a synthetic set with `fusioncli synth`",
        )
    if not root.is_dir():
        raise BadInputError(f"data folder {root} is not a folder")

    notes: list[str] = []
    problems: list[Problem] = []
    found: dict[str, Path] = {}
    for entry in sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name)):
        class_dir, nested_name = _class_dir(entry)
        if class_dir is not None:
            if nested_name:
                notes.append(
                    f"found class folder one level too deep in {_rel(class_dir, root)}/ (used it);"
                    f" move it up with: {_move_up_command(entry)}"
                )
            found[entry.name] = class_dir
            continue
        contents = [p.name for p in entry.iterdir() if not _is_hidden(p.name)]
        has = [d for d in (RGB_DIR, LIDAR_DIR) if (entry / d).is_dir()]
        if not contents:
            problems.append(Problem(entry.name + "/", "empty class folder (expected rgb/*.png and lidar/*.npy)"))
        elif has:
            missing = LIDAR_DIR if has == [RGB_DIR] else RGB_DIR
            problems.append(Problem(entry.name + "/", f"has {has[0]}/ but no {missing}/ folder"))
        else:
            notes.append(f"ignored folder {entry.name}/ (no rgb/ and lidar/ inside)")

    if not found and not problems:
        hint = "expected <data>/<class>/rgb/*.png and <data>/<class>/lidar/*.npy (e.g. cubes/, spheres/)"
        if (root / RGB_DIR).is_dir() and (root / LIDAR_DIR).is_dir():
            hint = f"{root} looks like a single class folder; pass its parent: --data-dir {root.parent}"
        raise BadInputError(f"no class folders in {root}", hint=hint)

    classes: list[ClassFolder] = []
    orphans: list[Problem] = []
    stats: list[FileStat] = []
    for name in class_order(found):
        class_dir = found[name]
        folder_problems: list[Problem] = []
        rgb_dir, pngs = _modality_files(root, class_dir / RGB_DIR, "png", notes, folder_problems)
        lidar_dir, npys = _modality_files(root, class_dir / LIDAR_DIR, "npy", notes, folder_problems)
        if not pngs and not npys:
            problems.append(Problem(_rel(class_dir, root) + "/", "empty class folder (rgb/ and lidar/ hold no files)"))
            continue
        problems.extend(folder_problems)
        # Relative paths by string concatenation: Path.relative_to costs ~5 us, x 40,000 files.
        rgb_rel, lidar_rel, class_rel = _rel(rgb_dir, root), _rel(lidar_dir, root), _rel(class_dir, root)
        for stem in sorted(pngs.keys() - npys.keys(), key=stem_key):
            orphans.append(Problem(f"{rgb_rel}/{pngs[stem].name}", "no lidar partner (skipped)"))
        for stem in sorted(npys.keys() - pngs.keys(), key=stem_key):
            orphans.append(Problem(f"{lidar_rel}/{npys[stem].name}", "no rgb partner (skipped)"))
        for rel_dir, entries in ((rgb_rel, pngs), (lidar_rel, npys)):
            for file_entry in entries.values():
                st = file_entry.stat()  # one syscall per file: most of the cache-hit time
                stats.append((f"{rel_dir}/{file_entry.name}", st.st_size, st.st_mtime_ns))
        for angle in ANGLE_FILES:
            path = class_dir / angle
            if path.is_file():
                st = path.stat()
                stats.append((f"{class_rel}/{angle}", st.st_size, st.st_mtime_ns))
        stems = sorted(pngs.keys() & npys.keys(), key=stem_key)
        if not stems:
            if not folder_problems:
                problems.append(Problem(class_rel + "/", "no png/npy pairs (every file lacks its partner)"))
            continue
        classes.append(
            ClassFolder(
                name,
                len(classes),
                class_rel,
                rgb_rel,
                lidar_rel,
                tuple(stems),
                tuple(pngs[s].name for s in stems),
                tuple(npys[s].name for s in stems),
            )
        )

    stats.sort()
    return Layout(root, tuple(classes), tuple(orphans), tuple(problems), tuple(notes), tuple(stats))


# --- file validation --------------------------------------------------------------------------

_header_cache: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}


def _npy_header(data: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """dtype, shape, fortran order and data offset of a ``.npy`` held in ``data``."""
    major = data[6] if len(data) > 7 else 0
    if major == 1:
        if len(data) < 10:
            raise InvalidFile("truncated .npy header")
        (hlen,) = struct.unpack("<H", data[8:10])
        start = 10
    elif major in (2, 3):
        if len(data) < 12:
            raise InvalidFile("truncated .npy header")
        (hlen,) = struct.unpack("<I", data[8:12])
        start = 12
    else:
        raise InvalidFile(f"unsupported .npy format version {major}")
    raw = data[: start + hlen]
    if len(raw) < start + hlen:
        raise InvalidFile("truncated .npy header")
    cached = _header_cache.get(raw)
    if cached is None:
        # numpy parses the header dict with ast.literal_eval (no code runs); memoised because
        # 20,000 files share a handful of distinct headers and the parse costs ~30 us.
        fp = io.BytesIO(raw)
        np.lib.format.read_magic(fp)
        try:
            if major == 1:
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        except (ValueError, SyntaxError, TypeError) as exc:
            raise InvalidFile(f"corrupt .npy header ({exc})") from None
        cached = (dtype, tuple(shape), bool(fortran))
        if len(_header_cache) < 256:
            _header_cache[raw] = cached
    return (*cached, start + hlen)


def read_npy(data: bytes) -> np.ndarray:
    """Parse ``.npy`` bytes into an array without ever unpickling.

    ``np.load(allow_pickle=False)`` would report a text file as "pickled data"; checking the
    magic first gives the real reason. Object arrays are refused before their data is touched.
    """
    if not data:
        raise InvalidFile("empty file (0 bytes)")
    if not data.startswith(_NPY_MAGIC):
        if data.startswith(b"PK"):
            raise InvalidFile("not a .npy file (a zip/.npz archive)")
        if data[:1] == b"\x80":
            raise InvalidFile("not a .npy file (a Python pickle; refused, never unpickled)")
        raise InvalidFile("not a .npy file (no NumPy header)")
    dtype, shape, fortran, offset = _npy_header(data)
    if dtype.hasobject:
        raise InvalidFile("holds pickled objects (refused, never unpickled)")
    count = int(np.prod(shape, dtype=np.int64))
    need = count * dtype.itemsize
    have = len(data) - offset
    if have < need:
        raise InvalidFile(f"truncated .npy data ({have} of {need} bytes)")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def decode_depth(data: bytes) -> np.ndarray:
    """Validate a depth map's bytes; return it as a native (64, 64) float32 array."""
    arr = read_npy(data)
    wrong = []
    if arr.shape != (SIZE, SIZE):
        wrong.append(f"shape {arr.shape}")
    if arr.dtype.kind != "f" or arr.dtype.itemsize != 4:
        wrong.append(f"dtype {arr.dtype.name}")
    if wrong:
        raise InvalidFile(f"{' and '.join(wrong)}; expected shape ({SIZE}, {SIZE}) float32")
    if not arr.dtype.isnative:
        arr = arr.astype(np.float32)
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise InvalidFile(f"depth has {bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf)")
    return arr


def decode_angles(data: bytes) -> np.ndarray:
    """Validate an azimuth/zenith file's bytes; return it as (64,) float32."""
    arr = read_npy(data)
    if arr.shape != (SIZE,):
        raise InvalidFile(f"shape {arr.shape}; expected ({SIZE},) (one angle per depth-map row/column)")
    if arr.dtype.kind != "f":
        raise InvalidFile(f"dtype {arr.dtype.name}; expected float radians")
    if not np.isfinite(arr).all():
        raise InvalidFile("holds non-finite angles (NaN or inf)")
    return arr.astype(np.float32)


def decode_png(data: bytes) -> np.ndarray:
    """Validate a PNG's bytes; return its pixels as a (64, 64, 4) uint8 RGBA array.

    Size and mode are checked from the header, before any pixel is decompressed, so a huge or
    odd image costs nothing. 3-channel RGB PNGs are refused: the real set is RGBA and the
    models take 4 channels, so silently adding alpha would hide a wrong copy of the data.
    """
    if not data:
        raise InvalidFile("empty file (0 bytes)")
    if not data.startswith(_PNG_SIGNATURE):
        raise InvalidFile("not a readable PNG (no PNG signature)")
    try:
        # The PNG plugin directly: skips format sniffing, and a JPEG named .png is refused.
        im = PngImagePlugin.PngImageFile(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - PIL raises SyntaxError, OSError, struct.error, ... on garbage
        raise InvalidFile(f"not a readable PNG ({_short(exc)})") from None
    w, h = im.size
    if (w, h) != (SIZE, SIZE):
        raise InvalidFile(f"size {w}x{h}; expected {SIZE}x{SIZE}")
    if im.mode != "RGBA":
        n = len(im.getbands())
        raise InvalidFile(f"{n} channel{'s' if n > 1 else ''} (mode {im.mode}); expected 4 (RGBA) as in the real set")
    try:
        pixels = im.tobytes()
    except Exception as exc:  # noqa: BLE001 - as above: any decoder error means corrupt data
        raise InvalidFile(f"truncated or corrupt PNG data ({_short(exc)})") from None
    # Defence in depth: if some library set ImageFile.LOAD_TRUNCATED_IMAGES, PIL pads a cut-off
    # file with zeros instead of failing; a complete PNG always ends with an IEND chunk.
    if data.rfind(b"IEND") < 0:
        raise InvalidFile("truncated or corrupt PNG data (no IEND chunk)")
    return np.frombuffer(pixels, dtype=np.uint8).reshape(SIZE, SIZE, CHANNELS)


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def read_angles(layout: Layout) -> tuple[np.ndarray | None, np.ndarray | None, list[Problem]]:
    """Each class's azimuth and zenith grids, checked for shape, finiteness and agreement.

    Returns the shared grids (None where no class had a valid one) and the problems found;
    angle problems are not skippable, since without the grid a class's depth cannot be projected.
    """
    problems: list[Problem] = []
    grids: dict[str, tuple[str, np.ndarray]] = {}
    for cls in layout.classes:
        for fname in ANGLE_FILES:
            rel = f"{cls.folder}/{fname}"
            path = layout.data_dir / rel
            if not path.is_file():
                problems.append(Problem(rel, "missing (needed to project the depth maps)", skippable=False))
                continue
            try:
                arr = decode_angles(path.read_bytes())
            except InvalidFile as exc:
                problems.append(Problem(rel, str(exc), skippable=False))
                continue
            key = fname.removesuffix(".npy")
            if key not in grids:
                grids[key] = (rel, arr)
            elif not np.allclose(arr, grids[key][1], rtol=0.0, atol=1e-6):
                diff = float(np.max(np.abs(arr - grids[key][1])))
                problems.append(
                    Problem(
                        rel,
                        f"differs from {grids[key][0]} (max difference {diff:.3g} rad);"
                        " all classes must share one angle grid",
                        skippable=False,
                    )
                )
    az = grids.get("azimuth", (None, None))[1]
    ze = grids.get("zenith", (None, None))[1]
    return az, ze, problems
