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
from typing import TYPE_CHECKING, Any

import numpy as np

from fusioncli import __version__
from fusioncli.atomic import atomic_directory, atomic_write_json
from fusioncli.data.layout import (
    ANGLE_FILES,
    CHANNELS,
    SIZE,
    InvalidFile,
    Layout,
    Problem,
    Sample,
    decode_depth,
    decode_png,
    discover,
    read_angles,
)
from fusioncli.errors import BadInputError, RunFailedError

if TYPE_CHECKING:  # torch is imported lazily: decoding workers import this module
    import torch

    from fusioncli.data.dataset import PreparedData

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
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


def stat_signature(layout: Layout) -> str:
    """A hash of (path, size, mtime_ns) of every input file: equal means nothing was touched."""
    text = "\n".join([f"{path}\0{size}\0{mtime}" for path, size, mtime in layout.stats])
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


def _decode_chunk(
    root: str, staging: str, offsets: dict[str, int], start: int, pairs: Sequence[tuple[str, str]]
) -> tuple[int, list[tuple[int, str, str]], list[tuple[bytes, bytes]]]:
    """Validate and decode samples ``start ...`` into the staging shards (rows fixed upfront).

    ``offsets`` gives where each shard's data starts (after its .npy header). Returns (start,
    problems as (row, path, reason), per-sample (png, npy) digests). Bad rows are left zero;
    the caller drops them (``--skip-invalid``) or refuses the whole build.
    """
    rgb = np.zeros((len(pairs), CHANNELS, SIZE, SIZE), dtype=np.uint8)
    depth = np.zeros((len(pairs), SIZE, SIZE), dtype=np.float32)
    problems: list[tuple[int, str, str]] = []
    digests: list[tuple[bytes, bytes]] = []
    for i, (png, npy) in enumerate(pairs):
        pair_digest = []
        for rel, decode, out in ((png, decode_png, rgb), (npy, decode_depth, depth)):
            try:
                data = _read_file(os.path.join(root, rel))
            except OSError as exc:
                problems.append((start + i, rel, f"cannot read ({exc.strerror or exc})"))
                pair_digest.append(b"unreadable")
                continue
            pair_digest.append(hashlib.sha256(data).digest())
            try:
                arr = decode(data)
            except InvalidFile as exc:
                problems.append((start + i, rel, str(exc)))
                continue
            out[i] = arr.transpose(2, 0, 1) if arr.ndim == 3 else arr
        digests.append((pair_digest[0], pair_digest[1]))
    # Workers write their rows straight into the shard files (pwrite at the row's offset):
    # no array crosses a pipe, and no memory map needs flushing.
    for name, arr in ((RGB_FILE, rgb), (DEPTH_FILE, depth)):
        row_bytes = arr[0].nbytes if len(arr) else 0
        _pwrite_all(Path(staging) / name, arr, offsets[name] + start * row_bytes)
    return start, problems, digests


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


def _decode_all(
    layout: Layout, staging: Path, progress: Progress, workers: int | None
) -> tuple[list[Problem], list[int], list[tuple[bytes, bytes]]]:
    """Decode every sample into the staging shards; returns problems, bad rows, digests."""
    samples = layout.samples
    n = len(samples)
    n_workers = _worker_count(n, workers)
    # Chunks small enough to balance the workers and move the progress bar, large enough that
    # per-task overhead (opening the shard files, pickling paths) stays negligible.
    size = max(64, min(1024, -(-n // (n_workers * 8))))
    pairs = [(s.png, s.npy) for s in samples]
    offsets = {}
    for name, row_bytes in ((RGB_FILE, CHANNELS * SIZE * SIZE), (DEPTH_FILE, SIZE * SIZE * 4)):
        offsets[name] = (staging / name).stat().st_size - n * row_bytes  # data follows the header
    tasks = [(str(layout.data_dir), str(staging), offsets, i, pairs[i : i + size]) for i in range(0, n, size)]
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
    problems: list[Problem] = []
    bad_rows: set[int] = set()
    digests: list[tuple[bytes, bytes]] = []
    for _, chunk_problems, chunk_digests in results:
        for row, path, reason in chunk_problems:
            problems.append(Problem(path, reason))
            bad_rows.add(row)
        digests += chunk_digests
    return problems, sorted(bad_rows), digests


# --- the cache folder --------------------------------------------------------------------------


def _check_target(data_dir: Path, cache_dir: Path) -> None:
    """Refuse cache folders whose replacement would destroy something that is not a cache."""
    data = data_dir.resolve()
    cache = cache_dir.resolve()
    if cache == data or cache in data.parents:
        raise BadInputError(f"--cache-dir {cache_dir} contains the data folder {data_dir}; choose another folder")
    if data in cache.parents:
        raise BadInputError(f"--cache-dir {cache_dir} is inside the data folder {data_dir}; choose another folder")
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
    if manifest.get("version") != FORMAT_VERSION:
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
    skipped = tuple(Problem(p["path"], p["reason"]) for p in manifest["orphans"] + manifest["invalid"])
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


def _write_index(path: Path, samples: Sequence[Sample], labels: np.ndarray, is_val: np.ndarray) -> None:
    """The human-readable Parquet index of the cache (one row per sample)."""
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

    columns = {
        "row": ints(np.arange(len(samples))),
        "class_name": strings([s.class_name for s in samples]).dictionary_encode(),
        "label": ints(labels),
        "stem": strings([s.stem for s in samples]),
        "split": strings(["val" if v else "train" for v in is_val]).dictionary_encode(),
        "png": strings([s.png for s in samples]),
        "npy": strings([s.npy for s in samples]),
    }
    pq.write_table(pa.Table.from_arrays(list(columns.values()), names=list(columns)), path)


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
        _save_npy(staging / LABELS_FILE, labels)
        _save_npy(staging / IS_VAL_FILE, is_val)
        _write_index(staging / INDEX_FILE, kept, labels, is_val)

        counts = {
            name: {"train": int(((labels == c) & ~is_val).sum()), "val": int(((labels == c) & is_val).sum())}
            for c, name in enumerate(names)
        }
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
    """``project_xyza(depth, azimuth, zenith)`` for (N, 64, 64), written chunk by chunk.

    Bit-identical to :func:`fusioncli.data.projection.project_xyza` (same operations, see
    :func:`~fusioncli.data.projection.xyza_from_directions`), but chunks that fit in cache and
    one preallocated output make it several times faster and avoid three 1.3 GB temporaries.
    """
    import torch

    from fusioncli.data.projection import unit_directions, xyza_from_directions

    dirs = unit_directions(azimuth, zenith, dtype=depth.dtype, device=depth.device)
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
    from fusioncli.data.projection import unit_directions

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
    device = torch.device(device)
    rgb = _map_tensor(cache_dir / RGB_FILE, np.dtype(np.uint8), (n, CHANNELS, SIZE, SIZE)).to(device)
    depth = _map_tensor(cache_dir / DEPTH_FILE, np.dtype(np.float32), (n, SIZE, SIZE)).to(device)
    labels = _map_tensor(cache_dir / LABELS_FILE, np.dtype(np.int64), (n,)).clone().to(device)
    is_val = _map_tensor(cache_dir / IS_VAL_FILE, np.dtype(np.bool_), (n,)).clone().to(device)
    t_read = time.perf_counter()
    azimuth = np.asarray(manifest["azimuth"], dtype=np.float32)
    zenith = np.asarray(manifest["zenith"], dtype=np.float32)
    directions = unit_directions(azimuth, zenith, device=device)
    xyza = None
    if device.type == "cuda":
        # On a GPU projecting everything takes milliseconds and keeps the training step (and
        # its CUDA graph) to one gather. On the CPU it would cost ~1 s and 1.3 GB (most of it
        # first-touch page faults) for what each batch projects in microseconds.
        xyza = project_into(depth, azimuth, zenith)
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
