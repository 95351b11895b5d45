"""The prepared cache: build it from a raw folder (:func:`prepare`), load it (:func:`load_cache`).

Cache folder contents (format version :data:`FORMAT_VERSION`)::

    manifest.json   written last; a folder without a valid manifest is not a cache
    rgb.npy         (N, 4, 64, 64) uint8, RGBA channels first (models take rgb.float() / 255)
    depth.npy       (N, 64, 64) float32 raw depth, 50.0 = no return
    labels.npy      (N,) int64 class index
    is_val.npy      (N,) bool, True for validation samples
    index.parquet   one row per sample: row, class_name, label, stem, split, png, npy (source
                    paths relative to the data folder) -- for people and pandas, not for loading

Samples are ordered class by class, each class in stem order (numeric where stems are numbers).
XYZA is not stored: float32 XYZA would be 4x the depth bytes (1.3 GB more on disk for the full
set). On a GPU :func:`load_cache` projects the raw depth once, in milliseconds; on the CPU each
batch projects its own samples (:meth:`~fusioncli.data.dataset.PreparedData.lidar`, ~0.7 ms per
32), which keeps a reload to milliseconds and saves the 1.3 GB in memory
(``benchmarks/bench_prepare.py`` reports both).
Plain ``.npy`` tensors were chosen over Parquet binary columns by measurement (``--formats`` in
that benchmark): the decoding workers write them in place, and :func:`load_cache` memory-maps
them (copy-on-write) instead of reading them.

A ``--manifest`` dataset (:func:`prepare_manifest`; :mod:`fusioncli.data.manifest`,
:mod:`fusioncli.data.geometry`) gives the same files at its own size (N, 4, H, W) / (N, H, W),
with manifest version :data:`MANIFEST_FORMAT_VERSION`: ``image_size``, a ``geometry`` record
(camera slopes, or the lidar grids at the top level as here), classes in name order, samples in
manifest row order, and an index with the columns row, class_name, label, manifest_row, split,
rgb, depth. :func:`load_cache` reads both kinds.

Freshness: the manifest holds a content fingerprint (SHA-256 over every used file's logical
path and bytes, the angle grids, folder problems and the options that change the output) and a
stat signature (path, size, mtime_ns of every input file). Same stats -> hit without reading
any file; different stats -> hash the contents; same content -> hit (stats refreshed);
different -> rebuild. A rebuild happens in a staging folder that replaces the cache as a whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing import get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fusioncli import __version__
from fusioncli.atomic import atomic_directory, atomic_write_json
from fusioncli.data.geometry import GEOMETRY_FILE, Geometry, read_geometry, reference_size, size_text
from fusioncli.data.layout import (
    ANGLE_FILES,
    CHANNELS,
    SIZE,
    FileStat,
    InvalidFile,
    Layout,
    Problem,
    Sample,
    decode_depth,
    decode_png,
    discover,
    read_angles,
)
from fusioncli.data.manifest import (
    DEFAULT_VAL_FRACTION,
    Row,
    SampleCodec,
    SampleTable,
    empty_split_problem,
    image_sizes,
    read_table,
    rows_text,
)
from fusioncli.errors import BadInputError, RunFailedError

if TYPE_CHECKING:  # torch is imported lazily: decoding workers import this module
    import torch

    from fusioncli.data.dataset import PreparedData

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Caches built from a --manifest dataset: any (H, W), a `geometry` record (camera or lidar).
# Their own version, so an older fusioncli refuses them cleanly; DLI caches stay version 1.
MANIFEST_FORMAT_VERSION = 2
FORMAT_NAME = "fusioncli-cache"
MANIFEST = "manifest.json"
RGB_FILE = "rgb.npy"
DEPTH_FILE = "depth.npy"
LABELS_FILE = "labels.npy"
IS_VAL_FILE = "is_val.npy"
INDEX_FILE = "index.parquet"
CACHE_FILES = frozenset({MANIFEST, RGB_FILE, DEPTH_FILE, LABELS_FILE, IS_VAL_FILE, INDEX_FILE})

SEED_VAL_PER_CLASS = 320  # the seed: last 10 batches of 32 per class are validation
PARALLEL_MIN_SAMPLES = 2048  # below this, starting worker processes costs more than it saves
MAX_WORKERS = 8
# A file changed within this window of the stat snapshot could keep its mtime (coarse
# timestamps, e.g. FAT's 2 s), so such a snapshot is not trusted on its own ("racy git").
RACY_WINDOW_NS = 2_000_000_000
STALE_STAGING_S = 3600

Progress = Callable[..., None]
PREPARE_HINT = "run `fusioncli prepare` (add --data-dir if the raw data is not in data/assessment)"


def _no_progress(n: int = 1, total: int | None = None) -> None:
    return None


@dataclass(frozen=True)
class PrepareSummary:
    """What :func:`prepare` did: where the cache is, whether it was a hit, counts, skips."""

    cache_dir: Path
    data_dir: Path
    fingerprint: str
    cache_hit: bool
    how: str  # "stats unchanged" / "content unchanged" (hits) or "built"
    class_names: tuple[str, ...]
    counts: dict[str, dict[str, int]]  # class -> {"train": n, "val": n}
    split: str
    skipped: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = ()
    cache_bytes: int = 0
    seconds: float = 0.0
    manifest: Path | None = None  # --manifest datasets: the manifest file
    image_size: tuple[int, int] = (SIZE, SIZE)  # (H, W) of the cached samples
    geometry: str = "lidar"  # "lidar" or "camera"

    @property
    def n_train(self) -> int:
        return sum(c["train"] for c in self.counts.values())

    @property
    def n_val(self) -> int:
        return sum(c["val"] for c in self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (what ``fusioncli prepare --format json`` prints)."""
        return {
            "cache_dir": str(self.cache_dir),
            "data_dir": str(self.data_dir),
            "fingerprint": self.fingerprint,
            "cache_hit": self.cache_hit,
            "how": self.how,
            "class_names": list(self.class_names),
            "counts": self.counts,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "split": self.split,
            "skipped": [p.to_dict() for p in self.skipped],
            "notes": list(self.notes),
            "cache_bytes": self.cache_bytes,
            "seconds": round(self.seconds, 4),
            # --manifest datasets only, so the DLI form stays as it was
            **(
                {"manifest": str(self.manifest), "image_size": list(self.image_size), "geometry": self.geometry}
                if self.manifest is not None
                else {}
            ),
        }


# --- options and split -------------------------------------------------------------------------


def _options(val_fraction: float | None, split_seed: int, skip_invalid: bool) -> dict[str, Any]:
    """The prepare options that change the cache's content (part of the fingerprint)."""
    if val_fraction is not None and not (0.0 < float(val_fraction) < 1.0):
        raise BadInputError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    return {
        "split": "seed" if val_fraction is None else "fraction",
        "val_fraction": None if val_fraction is None else float(val_fraction),
        "split_seed": int(split_seed),
        "skip_invalid": bool(skip_invalid),
    }


def describe_split(options: dict[str, Any]) -> str:
    """Human form of the split options."""
    if options["split"] == "seed":
        return f"seed split: last {SEED_VAL_PER_CLASS} samples of each class are validation"
    if options["split"] == "column":
        return "the manifest's split column"
    if options["split"] == "column+fraction":
        return (
            f"the manifest's split column; rows without one: stratified {options['val_fraction']:.0%} validation"
            f" per class (split seed {options['split_seed']})"
        )
    return f"stratified {options['val_fraction']:.0%} validation per class (split seed {options['split_seed']})"


def _split_key(seed: int, class_name: str, stem: str) -> int:
    digest = hashlib.sha256(f"{seed}\0{class_name}\0{stem}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def split_mask(
    labels: np.ndarray,
    stems: Sequence[str],
    class_names: Sequence[str],
    val_fraction: float | None = None,
    split_seed: int = 0,
) -> np.ndarray:
    """Which samples are validation: a bool array aligned with ``labels``.

    ``val_fraction=None`` is the seed's split: the last 320 samples (highest stems) of each
    class. Otherwise each class contributes ``round(fraction * n)`` samples (at least one, and
    at least one left for training), chosen by ranking a hash of (seed, class, stem): the choice
    is reproducible, and adding samples to a class does not reshuffle the existing ones.
    Samples must be ordered by stem within each class.
    """
    labels = np.asarray(labels)
    is_val = np.zeros(labels.shape[0], dtype=bool)
    problems = []
    for c, name in enumerate(class_names):
        rows = np.flatnonzero(labels == c)
        n = rows.size
        if val_fraction is None:
            if n <= SEED_VAL_PER_CLASS:
                problems.append(
                    f"class {name} has {n} samples; the seed split needs more than {SEED_VAL_PER_CLASS}"
                    " (its last 320 are validation)"
                )
                continue
            is_val[rows[-SEED_VAL_PER_CLASS:]] = True
        else:
            if n < 2:
                problems.append(f"class {name} has {n} sample(s); a train/validation split needs at least 2")
                continue
            n_val = min(max(int(round(val_fraction * n)), 1), n - 1)  # noqa: RUF046 - numpy < 2 rounds a numpy float to a float
            keys = np.array([_split_key(split_seed, name, stems[r]) for r in rows.tolist()], dtype=np.uint64)
            is_val[rows[np.argsort(keys, kind="stable")[:n_val]]] = True
    if problems:
        hint = "use a stratified split instead, e.g. --val-fraction 0.2" if val_fraction is None else None
        raise BadInputError(problems, hint=hint)
    return is_val


# --- fingerprints ------------------------------------------------------------------------------


def _file_digest(path: Path) -> bytes:
    # SHA-256 rather than BLAKE2: with the CPU's SHA extensions it hashes ~2x faster here.
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).digest()


def stat_signature(layout: Layout | Sequence[FileStat]) -> str:
    """A hash of (path, size, mtime_ns) of every input file: equal means nothing was touched."""
    stats = layout.stats if isinstance(layout, Layout) else layout
    text = "\n".join([f"{path}\0{size}\0{mtime}" for path, size, mtime in stats])
    return hashlib.sha256(text.encode()).hexdigest()


def _logical(sample: Sample) -> tuple[str, str]:
    # Logical names, so moving nested files up (lidar/lidar/ -> lidar/) keeps the fingerprint.
    return f"{sample.class_name}/rgb/{sample.stem}.png", f"{sample.class_name}/lidar/{sample.stem}.npy"


def _fingerprint(layout: Layout, options: dict[str, Any], sample_digests: Sequence[tuple[bytes, bytes]]) -> str:
    """The content fingerprint: what the cache's tensors depend on, and nothing else."""
    items: list[tuple[str, bytes]] = []
    for sample, (png_d, npy_d) in zip(layout.samples, sample_digests, strict=True):
        png_name, npy_name = _logical(sample)
        items += [(png_name, png_d), (npy_name, npy_d)]
    for cls in layout.classes:
        for fname in ANGLE_FILES:
            path = layout.data_dir / cls.folder / fname
            items.append((f"{cls.name}/{fname}", _file_digest(path) if path.is_file() else b"missing"))
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, **options}, sort_keys=True).encode())
    for problem in layout.problems:
        h.update(f"problem\0{problem}\n".encode())
    for name, digest in sorted(items):
        h.update(name.encode() + b"\0" + digest + b"\n")
    return h.hexdigest()[:32]


def _safe_digest(path: Path) -> bytes:
    try:
        return _file_digest(path)
    except OSError:
        return b"unreadable"  # as the build records it; the build reports the reason


def _hash_chunk(root: Path, pairs: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(_safe_digest(root / png), _safe_digest(root / npy)) for png, npy in pairs]


def content_fingerprint(layout: Layout, options: dict[str, Any]) -> str:
    """Hash every used file's bytes (threads: hashlib and file reads release the GIL)."""
    pairs = [(s.png, s.npy) for s in layout.samples]
    chunks = [pairs[i : i + 512] for i in range(0, len(pairs), 512)]
    digests: list[tuple[bytes, bytes]] = []
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(chunks)))) as pool:
        for part in pool.map(lambda c: _hash_chunk(layout.data_dir, c), chunks):
            digests += part
    return _fingerprint(layout, options, digests)


# --- decoding (runs in worker processes) -----------------------------------------------------


def _read_file(path: str) -> bytes:
    # os.open/os.read: a third less overhead than open().read() on 40,000 small files.
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 1 << 16)
        if len(data) == 1 << 16:  # larger than any valid sample file; read the rest anyway
            rest = []
            while chunk := os.read(fd, 1 << 20):
                rest.append(chunk)
            data += b"".join(rest)
        return data
    finally:
        os.close(fd)


def _pwrite_all(path: Path, arr: np.ndarray, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(np.ascontiguousarray(arr)).cast("B")  # type: ignore[arg-type]  # numpy's stubs: a buffer on Python >= 3.12 only
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    finally:
        os.close(fd)


class Codec(Protocol):
    """Turns one sample's file contents into the cache's arrays (see :class:`DliCodec`)."""

    @property
    def target(self) -> tuple[int, int]: ...

    def decode(
        self, rgb: bytes | None, depth: bytes | None
    ) -> tuple[np.ndarray | None, np.ndarray | None, list[tuple[int, str]], tuple[int, int] | None]: ...


class DliCodec:
    """Decodes one DLI sample: a 64x64 RGBA PNG and a (64, 64) float32 ``.npy``, each on its own.

    The decoding workers take a codec, so the DLI folders and ``--manifest`` datasets
    (:class:`fusioncli.data.manifest.SampleCodec`) share them.
    """

    target = (SIZE, SIZE)

    def decode(
        self, rgb: bytes | None, depth: bytes | None
    ) -> tuple[np.ndarray | None, np.ndarray | None, list[tuple[int, str]], tuple[int, int] | None]:
        problems: list[tuple[int, str]] = []
        arrays: list[np.ndarray | None] = []
        for which, (data, decode) in enumerate(((rgb, decode_png), (depth, decode_depth))):
            arr = None
            if data is not None:
                try:
                    arr = decode(data)
                except InvalidFile as exc:
                    problems.append((which, str(exc)))
            arrays.append(arr)
        return arrays[0], arrays[1], problems, self.target


def _decode_chunk(
    root: str,
    staging: str,
    offsets: dict[str, int],
    start: int,
    pairs: Sequence[tuple[str, str]],
    codec: Codec | None = None,
) -> tuple[int, list[tuple[int, str, str]], list[tuple[bytes, bytes]], list[tuple[int, int] | None]]:
    """Validate and decode samples ``start ...`` into the staging shards (rows fixed upfront).

    ``offsets`` gives where each shard's data starts (after its .npy header). Returns (start,
    problems as (row, path, reason), per-sample (png, npy) digests, each depth map's size
    before resizing). Bad rows are left zero; the caller drops them (``--skip-invalid``) or
    refuses the whole build. ``codec`` decodes a sample (default: :class:`DliCodec`).
    """
    codec = codec or DliCodec()
    h, w = codec.target
    rgb = np.zeros((len(pairs), CHANNELS, h, w), dtype=np.uint8)
    depth = np.zeros((len(pairs), h, w), dtype=np.float32)
    problems: list[tuple[int, str, str]] = []
    digests: list[tuple[bytes, bytes]] = []
    sizes: list[tuple[int, int] | None] = []
    for i, files in enumerate(pairs):
        contents: list[bytes | None] = []
        pair_digest = []
        read_problems = []
        for which, rel in enumerate(files):
            try:
                data = _read_file(os.path.join(root, rel))
            except OSError as exc:
                read_problems.append((which, f"cannot read ({exc.strerror or exc})"))
                pair_digest.append(b"unreadable")
                contents.append(None)
                continue
            pair_digest.append(hashlib.sha256(data).digest())
            contents.append(data)
        digests.append((pair_digest[0], pair_digest[1]))
        image, dmap, sample_problems, size = codec.decode(contents[0], contents[1])
        sizes.append(size)
        # The rgb file's problems first, then the depth file's (sorted is stable).
        for which, reason in sorted(read_problems + sample_problems, key=lambda p: p[0]):
            problems.append((start + i, files[which], reason))
        if image is not None:
            rgb[i] = image.transpose(2, 0, 1)
        if dmap is not None:
            depth[i] = dmap
    # Workers write their rows straight into the shard files (pwrite at the row's offset):
    # no array crosses a pipe, and no memory map needs flushing.
    for name, arr in ((RGB_FILE, rgb), (DEPTH_FILE, depth)):
        row_bytes = arr[0].nbytes if len(arr) else 0
        _pwrite_all(Path(staging) / name, arr, offsets[name] + start * row_bytes)
    return start, problems, digests, sizes


def _worker_count(n_samples: int, workers: int | None) -> int:
    if workers is not None:
        return max(1, workers)
    if n_samples < PARALLEL_MIN_SAMPLES:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


def _mp_context() -> BaseContext:
    """fork on Linux, spawn elsewhere.

    spawn re-runs the caller's ``__main__`` in every worker: it breaks scripts without an
    ``if __name__ == "__main__"`` guard and code fed through stdin, and costs ~0.3 s of imports.
    The workers only run numpy, PIL and hashlib, none of which touch the locks or thread pools
    (torch's OpenMP, a progress bar's refresh thread) a forked child inherits. macOS keeps
    spawn: forking there is unsafe once system frameworks are loaded.
    """
    if sys.platform.startswith("linux"):
        return get_context("fork")
    return get_context("spawn")


def _decode_rows(
    root: Path,
    pairs: Sequence[tuple[str, str]],
    staging: Path,
    progress: Progress,
    workers: int | None,
    codec: Codec | None = None,
) -> tuple[list[tuple[int, str, str]], list[tuple[bytes, bytes]], list[tuple[int, int] | None]]:
    """Decode every (rgb, depth) pair into the staging shards (created with ``n`` rows).

    Returns the problems as (row, path, reason), the per-sample digests and depth sizes.
    """
    n = len(pairs)
    h, w = (codec or DliCodec()).target
    n_workers = _worker_count(n, workers)
    # Chunks small enough to balance the workers and move the progress bar, large enough that
    # per-task overhead (opening the shard files, pickling paths) stays negligible.
    size = max(64, min(1024, -(-n // (n_workers * 8))))
    offsets = {}
    for name, row_bytes in ((RGB_FILE, CHANNELS * h * w), (DEPTH_FILE, h * w * 4)):
        offsets[name] = (staging / name).stat().st_size - n * row_bytes  # data follows the header
    tasks = [(str(root), str(staging), offsets, i, pairs[i : i + size], codec) for i in range(0, n, size)]
    results = []
    progress(0, total=n)
    if n_workers == 1:
        for task in tasks:
            results.append(_decode_chunk(*task))
            progress(len(task[4]))
    else:
        try:
            with ProcessPoolExecutor(n_workers, mp_context=_mp_context()) as pool:
                futures = {pool.submit(_decode_chunk, *task): len(task[4]) for task in tasks}
                for fut in as_completed(futures):
                    results.append(fut.result())
                    progress(futures[fut])
        except BrokenProcessPool as exc:
            raise RunFailedError(f"a decoding worker process died ({exc}); was it killed, or out of memory?") from None
    results.sort(key=lambda r: r[0])
    problems: list[tuple[int, str, str]] = []
    digests: list[tuple[bytes, bytes]] = []
    sizes: list[tuple[int, int] | None] = []
    for _, chunk_problems, chunk_digests, chunk_sizes in results:
        problems += chunk_problems
        digests += chunk_digests
        sizes += chunk_sizes
    return problems, digests, sizes


def _decode_all(
    layout: Layout, staging: Path, progress: Progress, workers: int | None
) -> tuple[list[Problem], list[int], list[tuple[bytes, bytes]]]:
    """Decode every sample into the staging shards; returns problems, bad rows, digests."""
    pairs = [(s.png, s.npy) for s in layout.samples]
    raw_problems, digests, _ = _decode_rows(layout.data_dir, pairs, staging, progress, workers)
    problems = [Problem(path, reason) for _, path, reason in raw_problems]
    bad_rows = sorted({row for row, _, _ in raw_problems})
    return problems, bad_rows, digests


# --- the cache folder --------------------------------------------------------------------------


def _check_target(data_dir: Path, cache_dir: Path) -> None:
    """Refuse cache folders whose replacement would destroy something that is not a cache."""
    data = data_dir.resolve()
    cache = cache_dir.resolve()
    if cache == data or cache in data.parents:
        raise BadInputError(f"--cache-dir {cache_dir} contains the data folder {data_dir}; choose another folder")
    if data in cache.parents:
        raise BadInputError(f"--cache-dir {cache_dir} is inside the data folder {data_dir}; choose another folder")
    _check_cache_folder(cache_dir)


def _check_cache_folder(cache_dir: Path) -> None:
    """Refuse an existing ``cache_dir`` that holds anything but a cache's files."""
    cache = cache_dir.resolve()
    if cache.exists():
        if not cache.is_dir():
            raise BadInputError(f"--cache-dir {cache_dir} exists and is not a folder")
        foreign = sorted(p.name for p in cache.iterdir() if p.name not in CACHE_FILES)
        if foreign:
            raise BadInputError(
                f"refusing to replace {cache_dir}: it holds files that are not part of a fusioncli cache"
                f" ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})",
                hint="choose an empty or new --cache-dir",
            )


def _remove_stale_staging(cache_dir: Path) -> None:
    """Remove staging folders that a killed build left next to the cache (older than 1 h)."""
    parent = cache_dir.parent
    if not parent.is_dir():
        return
    cutoff = time.time() - STALE_STAGING_S
    for p in parent.glob(f".{cache_dir.name}.*.staging"):
        try:
            if p.is_dir() and p.stat().st_mtime < cutoff:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


@contextmanager
def _staging(cache_dir: Path) -> Iterator[Path]:
    """``atomic_directory``, plus: folders it had to create are removed again on failure."""
    missing = []
    p = cache_dir.parent.absolute()
    while not p.exists():
        missing.append(p)
        p = p.parent
    try:
        with atomic_directory(cache_dir) as staging:
            yield staging
    except BaseException:
        for folder in missing:  # deepest first; rmdir only removes empty folders
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def read_manifest(cache_dir: Path) -> dict[str, Any] | None:
    """The cache's manifest, or None if it is missing, unreadable or of another format version."""
    try:
        manifest = json.loads((Path(cache_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        return None
    if manifest.get("version") not in (FORMAT_VERSION, MANIFEST_FORMAT_VERSION):
        return None
    return manifest


def _shard_problems(cache_dir: Path, manifest: dict[str, Any]) -> list[str]:
    problems = []
    for name, info in manifest.get("files", {}).items():
        path = Path(cache_dir) / name
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{path}: missing")
            continue
        if size != info.get("bytes"):
            problems.append(f"{path}: {size} bytes, the manifest says {info.get('bytes')}")
    if set(manifest.get("files", {})) != CACHE_FILES - {MANIFEST}:
        problems.append(f"{cache_dir}/{MANIFEST}: lists {sorted(manifest.get('files', {}))}")
    return problems


def _cache_bytes(cache_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(cache_dir).iterdir() if p.is_file())


def _summary_from_manifest(
    manifest: dict[str, Any], cache_dir: Path, data_dir: Path, how: str, seconds: float
) -> PrepareSummary:
    skipped = tuple(
        Problem(p["path"], p["reason"], row=p.get("row"), source=p.get("source", ""))
        for p in manifest["orphans"] + manifest["invalid"]
    )
    extra: dict[str, Any] = {}
    if manifest.get("source") == "manifest":
        extra = {
            "manifest": Path(manifest["manifest"]),
            "image_size": tuple(manifest["image_size"]),
            "geometry": manifest["geometry"]["kind"],
        }
    return PrepareSummary(
        cache_dir=cache_dir,
        data_dir=data_dir,
        fingerprint=manifest["fingerprint"],
        cache_hit=how != "built",
        how=how,
        class_names=tuple(manifest["class_names"]),
        counts=manifest["counts"],
        split=describe_split(manifest["options"]),
        skipped=skipped,
        notes=tuple(manifest["notes"]),
        cache_bytes=_cache_bytes(cache_dir),
        seconds=seconds,
        **extra,
    )


def _inputs_record(layout: Layout, stats_taken_ns: int) -> dict[str, Any]:
    return {
        "files": len(layout.stats),
        "stat_signature": stat_signature(layout),
        "stats_taken_ns": stats_taken_ns,
    }


def _try_hit(
    layout: Layout, cache_dir: Path, options: dict[str, Any], stats_taken_ns: int
) -> tuple[dict[str, Any], str] | None:
    """The manifest and how it was validated, if the cache is current; None otherwise."""
    manifest = read_manifest(cache_dir)
    if manifest is None or manifest.get("options") != options or _shard_problems(cache_dir, manifest):
        return None
    inputs = manifest["inputs"]
    newest = max((mtime for _, _, mtime in layout.stats), default=0)
    if inputs["stat_signature"] == stat_signature(layout) and newest < inputs["stats_taken_ns"] - RACY_WINDOW_NS:
        return manifest, "stats unchanged"
    if content_fingerprint(layout, options) != manifest["fingerprint"]:
        return None
    # Same content (touched, copied, or moved up from a nested folder): refresh what is
    # cheap to recompute, so the next run takes the fast path.
    manifest["inputs"] = _inputs_record(layout, stats_taken_ns)
    manifest["orphans"] = [p.to_dict() for p in layout.orphans]
    manifest["notes"] = list(layout.notes)
    manifest["data_dir"] = str(layout.data_dir.absolute())
    atomic_write_json(cache_dir / MANIFEST, manifest)
    os.chmod(cache_dir / MANIFEST, 0o666 & ~_umask())
    return manifest, "content unchanged"


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _usual_permissions(folder: Path) -> None:
    """mkdtemp/mkstemp create 0700/0600; give the cache the modes a plain mkdir/open would."""
    umask = _umask()
    os.chmod(folder, 0o777 & ~umask)
    for p in folder.iterdir():
        os.chmod(p, 0o666 & ~umask)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(arr), allow_pickle=False)


def _compact(staging: Path, keep: np.ndarray) -> None:
    """Drop rows (``--skip-invalid``) from the staging shards."""
    for name in (RGB_FILE, DEPTH_FILE):
        src = np.load(staging / name, mmap_mode="r")
        tmp = staging / f"{name}.compact"
        dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=src.dtype, shape=(int(keep.sum()), *src.shape[1:]))
        dst[:] = src[keep]
        dst.flush()
        del src, dst
        os.replace(tmp, staging / name)


def _write_parquet(path: Path, columns: dict[str, np.ndarray | Sequence[str]], categorical: Sequence[str]) -> None:
    """A Parquet table of int64 (numpy) and string columns; ``categorical`` ones dictionary-encoded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Arrays from buffers, not pa.array(): pa.array imports pandas (~0.5 s) to check its input.
    def ints(values: np.ndarray) -> pa.Array:
        values = np.ascontiguousarray(values, dtype=np.int64)
        return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])

    def strings(values: Sequence[str]) -> pa.Array:
        encoded = [v.encode() for v in values]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
        return pa.Array.from_buffers(pa.string(), len(encoded), buffers)

    arrays = []
    for name, values in columns.items():
        arr = ints(values) if isinstance(values, np.ndarray) else strings(values)
        arrays.append(arr.dictionary_encode() if name in categorical else arr)
    pq.write_table(pa.Table.from_arrays(arrays, names=list(columns)), path)


def _save_labels(
    staging: Path, labels: np.ndarray, is_val: np.ndarray, names: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Write the label and split shards; returns the manifest's per-class train/val counts."""
    _save_npy(staging / LABELS_FILE, labels)
    _save_npy(staging / IS_VAL_FILE, is_val)
    return {
        name: {"train": int(((labels == c) & ~is_val).sum()), "val": int(((labels == c) & is_val).sum())}
        for c, name in enumerate(names)
    }


def _write_index(path: Path, samples: Sequence[Sample], labels: np.ndarray, is_val: np.ndarray) -> None:
    """The human-readable Parquet index of the cache (one row per sample)."""
    columns: dict[str, np.ndarray | Sequence[str]] = {
        "row": np.arange(len(samples)),
        "class_name": [s.class_name for s in samples],
        "label": labels,
        "stem": [s.stem for s in samples],
        "split": ["val" if v else "train" for v in is_val],
        "png": [s.png for s in samples],
        "npy": [s.npy for s in samples],
    }
    _write_parquet(path, columns, categorical=("class_name", "split"))


def _class_problems(layout: Layout) -> list[str]:
    if len(layout.classes) < 2:
        found = ", ".join(layout.class_names) or "none with samples"
        return [f"found {len(layout.classes)} usable class folder(s) in {layout.data_dir} ({found}); need at least 2"]
    return []


def prepare(
    data_dir: Path,
    cache_dir: Path,
    *,
    val_fraction: float | None = None,
    split_seed: int = 0,
    skip_invalid: bool = False,
    force: bool = False,
    progress: Progress | None = None,
    workers: int | None = None,
) -> PrepareSummary:
    """Turn a raw folder (NVIDIA layout) into a validated, fingerprinted cache.

    Reuses the cache when its inputs and options are unchanged (unless ``force``). Every bad
    file is reported at once in a :class:`BadInputError` (nothing written), unless
    ``skip_invalid``: then bad samples are left out, listed in the summary and the manifest.
    Files without a partner are always skipped and reported. ``workers`` overrides the number
    of decoding processes (default: one per CPU, up to 8, for large sets; 1 for small ones).
    """
    t0 = time.perf_counter()
    progress = progress or _no_progress
    options = _options(val_fraction, split_seed, skip_invalid)
    data_dir = Path(data_dir)
    cache_dir = Path(cache_dir)
    _check_target(data_dir, cache_dir)
    stats_taken_ns = time.time_ns()
    layout = discover(data_dir)

    if not force:
        hit = _try_hit(layout, cache_dir, options, stats_taken_ns)
        if hit is not None:
            manifest, how = hit
            return _summary_from_manifest(manifest, cache_dir, data_dir, how, time.perf_counter() - t0)

    _remove_stale_staging(cache_dir)
    summary_manifest = _build(layout, cache_dir, options, stats_taken_ns, progress, workers)
    return _summary_from_manifest(summary_manifest, cache_dir, data_dir, "built", time.perf_counter() - t0)


def _build(
    layout: Layout,
    cache_dir: Path,
    options: dict[str, Any],
    stats_taken_ns: int,
    progress: Progress,
    workers: int | None,
) -> dict[str, Any]:
    """Validate, decode and write a new cache; returns its manifest. Raises on bad input."""
    t0 = time.perf_counter()
    skip = options["skip_invalid"]
    # Problems that no amount of decoding changes come first; they are reported together with
    # every bad file, unless the dataset is unusable as a whole.
    upfront = _class_problems(layout) if not layout.problems or skip else []
    if upfront:
        raise BadInputError(upfront)
    split_problems: list[str] = []
    split_hint = None
    if options["split"] == "seed":
        # Counts before skipping bound those after, so a failure here is final; it is reported
        # together with the bad files, so one run shows everything to fix.
        try:
            split_mask(
                np.array([s.label for s in layout.samples]), [s.stem for s in layout.samples], layout.class_names
            )
        except BadInputError as exc:
            split_problems, split_hint = exc.problems, exc.hint
    azimuth, zenith, angle_problems = read_angles(layout)
    samples = layout.samples
    n = len(samples)

    with _staging(cache_dir) as staging:
        for name, dtype, shape in (
            (RGB_FILE, np.uint8, (n, CHANNELS, SIZE, SIZE)),
            (DEPTH_FILE, np.float32, (n, SIZE, SIZE)),
        ):
            mm = np.lib.format.open_memmap(staging / name, mode="w+", dtype=dtype, shape=shape)
            del mm
        file_problems, bad_rows, digests = _decode_all(layout, staging, progress, workers)

        problems = [*layout.problems, *angle_problems, *file_problems]
        fatal = [p for p in problems if not p.skippable] if skip else problems
        if fatal or split_problems:
            hints = [split_hint] if split_hint else []
            if fatal and skip:
                hints.append("--skip-invalid cannot skip angle files: without them the depth cannot be projected")
            elif fatal:
                hints.append("fix or remove the files above, or pass --skip-invalid to leave the bad samples out")
            raise BadInputError([*split_problems, *(str(p) for p in fatal)], hint="; ".join(hints))

        keep = np.ones(n, dtype=bool)
        keep[bad_rows] = False
        kept = [s for s, k in zip(samples, keep) if k]
        if bad_rows:
            _compact(staging, keep)
        names = [c.name for c in layout.classes if any(s.class_name == c.name for s in kept)]
        if len(names) < 2:
            raise BadInputError(
                f"after skipping invalid files, {len(names)} class(es) with samples remain; need at least 2"
            )
        # Labels stay contiguous if a class lost every sample.
        label_of = {name: i for i, name in enumerate(names)}
        labels = np.array([label_of[s.class_name] for s in kept], dtype=np.int64)
        is_val = split_mask(labels, [s.stem for s in kept], names, options["val_fraction"], options["split_seed"])
        counts = _save_labels(staging, labels, is_val, names)
        _write_index(staging / INDEX_FILE, kept, labels, is_val)

        assert azimuth is not None and zenith is not None  # else read_angles reported a problem
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "fingerprint": _fingerprint(layout, options, digests),
            "fusioncli_version": __version__,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "data_dir": str(layout.data_dir.absolute()),
            "options": options,
            "class_names": names,
            "n_samples": len(kept),
            "counts": counts,
            "azimuth": [float(x) for x in azimuth],
            "zenith": [float(x) for x in zenith],
            "layout": {
                RGB_FILE: "(N, 4, 64, 64) uint8 RGBA, channels first",
                DEPTH_FILE: "(N, 64, 64) float32 raw depth, 50.0 = no return",
                LABELS_FILE: "(N,) int64",
                IS_VAL_FILE: "(N,) bool",
                INDEX_FILE: "row, class_name, label, stem, split, png, npy",
            },
            "files": {name: {"bytes": (staging / name).stat().st_size} for name in sorted(CACHE_FILES - {MANIFEST})},
            "orphans": [p.to_dict() for p in layout.orphans],
            "invalid": [p.to_dict() for p in problems],
            "notes": list(layout.notes),
            "inputs": _inputs_record(layout, stats_taken_ns),
            "build_seconds": round(time.perf_counter() - t0, 3),
        }
        atomic_write_json(staging / MANIFEST, manifest)  # last: only now is the folder a cache
        _usual_permissions(staging)
    return manifest


# --- --manifest datasets ------------------------------------------------------------------------

MAX_IMAGE_SIZE = 4096  # --size: a typo guard (a 4096x4096 sample is 80 MB in the cache)


def _manifest_options(
    split: str, val_fraction: float | None, split_seed: int, skip_invalid: bool, size: int | None
) -> dict[str, Any]:
    """The prepare options of a --manifest build (part of its fingerprint; never a DLI key set)."""
    return {
        "source": "manifest",
        "split": split,
        "val_fraction": None if val_fraction is None else float(val_fraction),
        "split_seed": int(split_seed),
        "skip_invalid": bool(skip_invalid),
        "size": size,
    }


def _manifest_fingerprint(
    table: SampleTable, geometry: Geometry, options: dict[str, Any], digests: Sequence[tuple[bytes, bytes]]
) -> str:
    """Options, geometry, every row as written and every file's bytes, in row order."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": MANIFEST_FORMAT_VERSION, **options}, sort_keys=True).encode() + b"\n")
    h.update(json.dumps(geometry.canonical(), sort_keys=True).encode() + b"\n")
    for row, (rgb_d, depth_d) in zip(table.rows, digests, strict=True):
        h.update(json.dumps([row.rgb, row.depth, row.label, row.split]).encode() + b"\0" + rgb_d + depth_d + b"\n")
    return h.hexdigest()[:32]


def _manifest_stats(table: SampleTable, geometry: Geometry) -> list[FileStat]:
    stats = list(table.stats)
    for path in geometry.files:
        try:
            st = path.stat()
            stats.append((f"geometry:{path}", st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((f"geometry:{path}", -1, -1))
    return sorted(stats)


def _check_manifest_target(table: SampleTable, cache_dir: Path) -> None:
    """Refuse a cache folder whose replacement would destroy the manifest or a sample file."""
    cache = cache_dir.resolve()
    root = table.root.resolve()
    if cache == root or cache in root.parents:
        raise BadInputError(
            f"--cache-dir {cache_dir} contains the manifest's folder {table.root}; choose another folder"
        )
    prefix = str(cache) + os.sep
    inside = [r.row for r in table.rows if os.path.normpath(os.path.join(root, r.rgb)).startswith(prefix)]
    inside += [r.row for r in table.rows if os.path.normpath(os.path.join(root, r.depth)).startswith(prefix)]
    if inside:
        raise BadInputError(
            f"--cache-dir {cache_dir} holds files that {table.name} names (row {min(inside)});"
            " a rebuild would delete them: choose another folder"
        )
    _check_cache_folder(cache_dir)


def _codec_for(
    table: SampleTable, geometry: Geometry, size: int | None, geometry_name: str
) -> tuple[SampleCodec, tuple[int, int] | None]:
    """The decoding codec, and the native (H, W) the geometry applies to (None: unknown)."""
    reference = geometry.native_size
    required, why = reference, ""
    if geometry.kind == "lidar":
        assert reference is not None
        why = f"{geometry_name}'s grids have {reference[0]} azimuth x {reference[1]} zenith angles"
    elif reference is not None:
        why = f"{geometry_name} gives the camera's images as {reference[1]} wide x {reference[0]} high"
    else:
        # No size in the toml: the intrinsics are for the size of most images (headers only).
        reference = reference_size(geometry, image_sizes(table.root, [r.rgb for r in table.rows]))
        required = reference
        if reference is not None:
            why = f"most rows are {size_text(*reference)}; pass --size N to resize every sample to NxN"
    if geometry.kind == "camera" and size is not None:
        required = None  # each image is a scaled copy of the reference camera
    target = (size, size) if size is not None else (reference or (1, 1))
    codec = SampleCodec(target, required, why, geometry.depth_scale, geometry.no_return)
    return codec, reference


def _manifest_split(
    rows: Sequence[Row], labels: np.ndarray, names: Sequence[str], options: dict[str, Any]
) -> np.ndarray:
    """Validation mask of the kept rows: the split column, and/or the seeded stratified split."""
    is_val = np.array([r.split == "val" for r in rows], dtype=bool)
    if options["split"] != "column":
        free = np.flatnonzero([not r.split for r in rows])  # no split column, or an empty cell
        free_rows = [rows[i] for i in free.tolist()]
        present = sorted(set(labels[free].tolist()))
        remap = {c: i for i, c in enumerate(present)}
        sub = np.array([remap[c] for c in labels[free].tolist()], dtype=np.int64)
        mask = split_mask(
            sub,
            [r.rgb for r in free_rows],
            [names[c] for c in present],
            options["val_fraction"],
            options["split_seed"],
        )
        is_val[free] = mask
    problems = [
        f"class {name!r} has no training sample" for c, name in enumerate(names) if not (~is_val & (labels == c)).any()
    ]
    if not is_val.any():
        problems.append("no validation sample: mark some rows val in the split column")
    if problems:
        raise BadInputError(problems, hint="change the split column, or pass --val-fraction for rows without a split")
    return is_val


def prepare_manifest(
    manifest: Path,
    cache_dir: Path,
    *,
    geometry: Path | None = None,
    size: int | None = None,
    val_fraction: float | None = None,
    split_seed: int = 0,
    skip_invalid: bool = False,
    force: bool = False,
    progress: Progress | None = None,
    workers: int | None = None,
) -> PrepareSummary:
    """Turn a ``--manifest`` dataset (:mod:`fusioncli.data.manifest`) into a fingerprinted cache.

    ``geometry`` defaults to ``dataset.toml`` beside the manifest (:mod:`fusioncli.data.geometry`).
    ``size`` resizes every sample to size x size (RGB bilinear, depth nearest neighbour, the
    geometry to match); without it every sample must have the same size, which the cache keeps.
    Split: a ``split`` column decides where it has a value; ``val_fraction`` splits the rows
    without one (every row has one: refused); without a ``split`` column, ``val_fraction``
    (default 0.2) splits every class, stratified and seeded as :func:`split_mask` does.

    As :func:`prepare`: every problem is reported at once in one :class:`BadInputError`
    (nothing written) unless ``skip_invalid`` leaves out the rows with bad files; an unchanged
    input (manifest content, every file's bytes, geometry and options) is a cache hit.
    """
    t0 = time.perf_counter()
    progress = progress or _no_progress
    manifest = Path(manifest)
    cache_dir = Path(cache_dir)
    option_problems = []
    if val_fraction is not None and not (0.0 < float(val_fraction) < 1.0):
        option_problems.append(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE):
        option_problems.append(f"--size must be a whole number of pixels from 1 to {MAX_IMAGE_SIZE}, got {size}")
    if option_problems:
        raise BadInputError(option_problems)
    stats_taken_ns = time.time_ns()
    table, problems = read_table(manifest)
    geometry_path = Path(geometry) if geometry is not None else manifest.parent / GEOMETRY_FILE
    geometry_name = str(geometry) if geometry is not None else GEOMETRY_FILE
    geo, geometry_problems = read_geometry(geometry_path, display=geometry_name, beside=manifest.name)
    problems += geometry_problems
    if table is not None:
        problems += table.problems
    if table is None or geo is None:
        raise BadInputError([str(p) for p in problems], hint=MANIFEST_HINT)

    png_depth = [r.row for r in table.rows if r.depth.lower().endswith(".png")]
    if png_depth and geo.depth_scale is None:
        # Said once, before decoding: every one of those rows would fail for this one reason.
        problems.append(
            Problem(
                geometry_name,
                f"[{geo.kind}] has no depth_scale (metres per stored unit), but {table.name}"
                f" {rows_text(png_depth)} name PNG depth images",
                skippable=False,
            )
        )
        raise BadInputError([str(p) for p in problems], hint=MANIFEST_HINT)
    if table.has_split and val_fraction is None:
        split = "column"
        empty = empty_split_problem(table)
        if empty is not None:
            problems.append(empty)
    elif table.has_split:
        split = "column+fraction"
        if not table.rows_without_split():
            problems.append(
                Problem(
                    table.name,
                    "every row has a split value, so --val-fraction has nothing to split; drop --val-fraction"
                    " (it splits only rows whose split cell is empty)",
                    skippable=False,
                )
            )
    else:
        split = "fraction"
        val_fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    options = _manifest_options(split, val_fraction, split_seed, skip_invalid, size)
    _check_manifest_target(table, cache_dir)
    stats = _manifest_stats(table, geo)

    if not force and not problems:
        hit = _try_manifest_hit(table, geo, cache_dir, options, stats, stats_taken_ns)
        if hit is not None:
            cached, how = hit
            return _summary_from_manifest(cached, cache_dir, table.root, how, time.perf_counter() - t0)

    codec, reference = _codec_for(table, geo, size, geometry_name)
    _remove_stale_staging(cache_dir)
    built = _build_manifest(
        table,
        geo,
        geometry_name,
        codec,
        reference,
        options,
        problems,
        stats,
        stats_taken_ns,
        cache_dir,
        progress,
        workers,
    )
    return _summary_from_manifest(built, cache_dir, table.root, "built", time.perf_counter() - t0)


MANIFEST_HINT = (
    "see README.md, 'Your own data': a manifest needs the columns rgb, depth, label[, split] and a dataset.toml"
)


def _try_manifest_hit(
    table: SampleTable,
    geometry: Geometry,
    cache_dir: Path,
    options: dict[str, Any],
    stats: Sequence[FileStat],
    stats_taken_ns: int,
) -> tuple[dict[str, Any], str] | None:
    """The manifest and how it was validated, if the cache is current; None otherwise."""
    cached = read_manifest(cache_dir)
    if cached is None or cached.get("options") != options or _shard_problems(cache_dir, cached):
        return None
    inputs = cached["inputs"]
    newest = max((mtime for _, _, mtime in stats), default=0)
    if inputs["stat_signature"] == stat_signature(stats) and newest < inputs["stats_taken_ns"] - RACY_WINDOW_NS:
        return cached, "stats unchanged"
    pairs = [(r.rgb, r.depth) for r in table.rows]
    chunks = [pairs[i : i + 512] for i in range(0, len(pairs), 512)]
    digests: list[tuple[bytes, bytes]] = []
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(chunks)))) as pool:
        for part in pool.map(lambda c: _hash_chunk(table.root, c), chunks):
            digests += part
    if _manifest_fingerprint(table, geometry, options, digests) != cached["fingerprint"]:
        return None
    cached["inputs"] = {"files": len(stats), "stat_signature": stat_signature(stats), "stats_taken_ns": stats_taken_ns}
    cached["notes"] = list(table.notes)
    cached["data_dir"] = str(table.root.absolute())
    cached["manifest"] = str(table.path.absolute())
    atomic_write_json(cache_dir / MANIFEST, cached)
    os.chmod(cache_dir / MANIFEST, 0o666 & ~_umask())
    return cached, "content unchanged"


def _geometry_mismatch(
    problems: list[Problem], sizes: Sequence[tuple[int, int] | None], codec: SampleCodec, geometry_name: str
) -> list[Problem]:
    """One line for a geometry that fits no depth map, instead of one per row."""
    known = [sz for sz in sizes if sz is not None]
    if codec.required is None or not known or any(sz == codec.required for sz in known):
        return problems
    reasons = {codec.mismatch(sz) for sz in known}
    seen = sorted(set(known))
    found = ", ".join(size_text(*sz) for sz in seen)
    line = Problem(
        geometry_name,
        f"does not fit the data: {codec.required_why}, but the depth maps are {found}",
        skippable=False,
    )
    return [line, *(p for p in problems if p.reason not in reasons)]


def _build_manifest(
    table: SampleTable,
    geo: Geometry,
    geometry_name: str,
    codec: SampleCodec,
    reference: tuple[int, int] | None,
    options: dict[str, Any],
    upfront: list[Problem],
    stats: Sequence[FileStat],
    stats_taken_ns: int,
    cache_dir: Path,
    progress: Progress,
    workers: int | None,
) -> dict[str, Any]:
    """Decode, validate and write a --manifest cache; returns its manifest. Raises on bad input."""
    t0 = time.perf_counter()
    skip = options["skip_invalid"]
    n = len(table.rows)
    h, w = codec.target
    with _staging(cache_dir) as staging:
        for name, dtype, shape in (
            (RGB_FILE, np.uint8, (n, CHANNELS, h, w)),
            (DEPTH_FILE, np.float32, (n, h, w)),
        ):
            mm = np.lib.format.open_memmap(staging / name, mode="w+", dtype=dtype, shape=shape)
            del mm
        pairs = [(r.rgb, r.depth) for r in table.rows]
        raw, digests, sizes = _decode_rows(table.root, pairs, staging, progress, workers, codec)
        file_problems = [Problem(path, reason, row=table.rows[i].row, source=table.name) for i, path, reason in raw]
        if geo.kind == "lidar":
            file_problems = _geometry_mismatch(file_problems, sizes, codec, geometry_name)
        problems = [*upfront, *file_problems]
        fatal = [p for p in problems if not p.skippable] if skip else problems
        if fatal:
            hint = "fix the rows above" + ("" if skip else ", or pass --skip-invalid to leave out rows with bad files")
            raise BadInputError([str(p) for p in fatal], hint=hint)

        keep = np.ones(n, dtype=bool)
        keep[[i for i, _, _ in raw]] = False
        if not keep.all():
            _compact(staging, keep)
        rows = [r for r, k in zip(table.rows, keep) if k]
        names = sorted({r.label for r in rows})
        if len(names) < 2:
            raise BadInputError(f"after skipping invalid rows, {len(names)} class(es) remain; need at least 2")
        label_of = {name: i for i, name in enumerate(names)}
        labels = np.array([label_of[r.label] for r in rows], dtype=np.int64)
        is_val = _manifest_split(rows, labels, names, options)
        counts = _save_labels(staging, labels, is_val, names)
        index: dict[str, np.ndarray | Sequence[str]] = {
            "row": np.arange(len(rows)),
            "class_name": [r.label for r in rows],
            "label": labels,
            "manifest_row": np.array([r.row for r in rows], dtype=np.int64),
            "split": ["val" if v else "train" for v in is_val],
            "rgb": [r.rgb for r in rows],
            "depth": [r.depth for r in rows],
        }
        _write_parquet(staging / INDEX_FILE, index, categorical=("class_name", "split"))

        assert reference is not None  # else every image was unreadable, reported above
        record = geo.grids(reference, codec.target)
        lidar_grids: dict[str, Any] = {k: record.pop(k) for k in ("azimuth", "zenith") if k in record}  # as DLI
        manifest: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": MANIFEST_FORMAT_VERSION,
            "fingerprint": _manifest_fingerprint(table, geo, options, digests),
            "fusioncli_version": __version__,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": "manifest",
            "data_dir": str(table.root.absolute()),
            "manifest": str(table.path.absolute()),
            "geometry_file": str(geo.path.absolute()),
            "options": options,
            "class_names": names,
            "n_samples": len(rows),
            "counts": counts,
            "image_size": [h, w],
            "native_size": list(reference),
            **lidar_grids,
            "geometry": record,
            "layout": {
                RGB_FILE: f"(N, 4, {h}, {w}) uint8 RGBA, channels first",
                DEPTH_FILE: f"(N, {h}, {w}) float32 depth in metres"
                + (" (z-depth)" if geo.kind == "camera" else " (range)")
                + ", 50.0 = no return",
                LABELS_FILE: "(N,) int64, classes in name order",
                IS_VAL_FILE: "(N,) bool",
                INDEX_FILE: "row, class_name, label, manifest_row, split, rgb, depth",
            },
            "files": {name: {"bytes": (staging / name).stat().st_size} for name in sorted(CACHE_FILES - {MANIFEST})},
            "orphans": [],
            "invalid": [p.to_dict() for p in problems],
            "notes": list(table.notes),
            "inputs": {"files": len(stats), "stat_signature": stat_signature(stats), "stats_taken_ns": stats_taken_ns},
            "build_seconds": round(time.perf_counter() - t0, 3),
        }
        atomic_write_json(staging / MANIFEST, manifest)  # last: only now is the folder a cache
        _usual_permissions(staging)
    return manifest


# --- loading -----------------------------------------------------------------------------------


def _map_tensor(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """One of our ``.npy`` shards as a copy-on-write memory-mapped tensor (never unpickles).

    Mapping instead of reading saves copying 655 MB and faulting in as much fresh memory (most
    of a read's time on a VM); pages come from the page cache as they are used. Copy-on-write:
    in-place changes stay in this process. A rebuild replaces the cache folder as a whole, so
    the mapped files are never changed underneath (unlinked files stay readable).
    """
    import torch

    try:
        arr = np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path}: unreadable ({exc})", hint=f"rebuild the cache: {PREPARE_HINT} --force") from None
    if arr.dtype != dtype or arr.shape != shape or not arr.flags.c_contiguous:
        raise BadInputError(
            f"{path}: holds {arr.dtype} {arr.shape}, expected {np.dtype(dtype)} {shape}",
            hint=f"rebuild the cache: {PREPARE_HINT} --force",
        )
    return torch.from_numpy(arr)


@contextmanager
def _one_torch_thread(device: torch.device) -> Iterator[None]:
    """Run CPU tensor ops on one intra-op thread for the duration.

    The projection is ~200 small elementwise ops; with several OpenMP threads each op ends in
    a barrier, and on a busy or shared machine (a VM whose vCPUs other work also wants) one
    descheduled thread stalls every barrier: measured 1.9 s with 2 threads vs 0.3 s with 1 on
    the 2-core dev VM under load. One thread is never far from the best and never that bad.
    """
    import torch

    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def project_into(depth: torch.Tensor, azimuth: np.ndarray, zenith: np.ndarray, chunk: int = 512) -> torch.Tensor:
    """``project_xyza(depth, azimuth, zenith)`` for (N, H, W), written chunk by chunk.

    Bit-identical to :func:`fusioncli.data.projection.project_xyza` (same operations, see
    :func:`~fusioncli.data.projection.xyza_from_directions`), but chunks that fit in cache and
    one preallocated output make it several times faster and avoid three 1.3 GB temporaries.
    """
    from fusioncli.data.projection import unit_directions

    dirs = unit_directions(azimuth, zenith, dtype=depth.dtype, device=depth.device)
    return project_with(depth, dirs, chunk)


def project_with(depth: torch.Tensor, directions: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """XYZA (N, 4, H, W) of depth maps (N, H, W) and a (3, H, W) direction grid, chunk by chunk.

    :func:`~fusioncli.data.projection.xyza_from_directions` per chunk: the values
    :meth:`PreparedData.lidar` computes per batch, bit for bit.
    """
    import torch

    from fusioncli.data.projection import xyza_from_directions

    dirs = directions.to(dtype=depth.dtype, device=depth.device)
    out = torch.empty((depth.shape[0], 4, *depth.shape[-2:]), dtype=depth.dtype, device=depth.device)
    with _one_torch_thread(depth.device):
        for i in range(0, depth.shape[0], chunk):
            xyza_from_directions(depth[i : i + chunk], dirs, out=out[i : i + chunk])
    return out


def load_cache(
    cache_dir: Path, device: str | torch.device = "cpu", *, timings: dict[str, float] | None = None
) -> PreparedData:
    """Load a prepared cache as :class:`PreparedData` on ``device``.

    XYZA is projected on the device: all at once on CUDA, batch by batch on the CPU
    (``PreparedData.xyza`` is then None and :meth:`PreparedData.lidar` projects).

    Checks the manifest's format version and every shard's size first; a missing or invalid
    cache raises :class:`BadInputError` that says to run ``fusioncli prepare``. On the CPU,
    ``rgb`` and ``depth`` are memory-mapped (copy-on-write) rather than read. Pass a dict as
    ``timings`` to get the seconds spent opening/reading and projecting.
    """
    import torch

    from fusioncli.data.dataset import PreparedData
    from fusioncli.data.geometry import directions as geometry_directions

    t0 = time.perf_counter()
    cache_dir = Path(cache_dir)
    manifest_path = cache_dir / MANIFEST
    if not manifest_path.is_file():
        raise BadInputError(f"no prepared cache in {cache_dir} (no {MANIFEST})", hint=PREPARE_HINT)
    manifest = read_manifest(cache_dir)
    if manifest is None:
        raise BadInputError(
            f"{manifest_path} is unreadable or from another cache format"
            f" (this fusioncli reads version {FORMAT_VERSION})",
            hint=f"{PREPARE_HINT} --force",
        )
    problems = _shard_problems(cache_dir, manifest)
    if problems:
        raise BadInputError(problems, hint=f"the cache is damaged; {PREPARE_HINT} --force")
    n = int(manifest["n_samples"])
    h, w = (int(x) for x in manifest.get("image_size", [SIZE, SIZE]))  # DLI caches: 64x64
    device = torch.device(device)
    rgb = _map_tensor(cache_dir / RGB_FILE, np.dtype(np.uint8), (n, CHANNELS, h, w)).to(device)
    depth = _map_tensor(cache_dir / DEPTH_FILE, np.dtype(np.float32), (n, h, w)).to(device)
    labels = _map_tensor(cache_dir / LABELS_FILE, np.dtype(np.int64), (n,)).clone().to(device)
    is_val = _map_tensor(cache_dir / IS_VAL_FILE, np.dtype(np.bool_), (n,)).clone().to(device)
    t_read = time.perf_counter()
    # The DLI angle grids, or a --manifest dataset's lidar grids or camera slopes.
    directions = geometry_directions(manifest, device=device)
    xyza = None
    if device.type == "cuda":
        # On a GPU projecting everything takes milliseconds and keeps the training step (and
        # its CUDA graph) to one gather. On the CPU it would cost ~1 s and 1.3 GB (most of it
        # first-touch page faults) for what each batch projects in microseconds.
        xyza = project_with(depth, directions)
        torch.cuda.synchronize(xyza.device)
    t_proj = time.perf_counter()
    data = PreparedData(
        rgb=rgb,
        xyza=xyza,
        depth=depth,
        labels=labels,
        is_val=is_val,
        class_names=tuple(manifest["class_names"]),
        fingerprint=manifest["fingerprint"],
        directions=directions,
    )
    log.debug("load_cache: open %.3fs, project %.3fs", t_read - t0, t_proj - t_read)
    if timings is not None:
        timings.update(read_s=t_read - t0, project_s=t_proj - t_read, total_s=time.perf_counter() - t0)
    return data
