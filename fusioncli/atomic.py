"""Atomic writes: a temp file in the same folder, then ``os.replace``.

A reader therefore sees either the old file or the complete new one, never a half-written one,
even if the writer is killed with SIGKILL mid-write.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STALE_STAGING_SECONDS = 600.0


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path next to ``target``; on success move it over ``target`` atomically.

    The caller writes the temp path however it likes (pyarrow, safetensors, ...). On an
    exception the temp file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # flush to disk before the rename makes it visible
            os.fsync(fh.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would (umask applies)
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``target`` atomically."""
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh staging folder; on success it replaces ``target`` as a whole.

    Used for caches: the old cache stays valid until the new one is complete. A crash leaves
    only a hidden ``.staging`` folder, which never counts as the target; the next call removes
    such leftovers once they are older than :data:`STALE_STAGING_SECONDS` (younger ones may
    belong to a writer that is still running).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staging", dir=target.parent))
    try:
        yield staging
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            if old.is_symlink():  # the user's link was replaced; drop the link, not its target
                old.unlink()
            else:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_staging(target: Path) -> None:
    now = time.time()
    for leftover in target.parent.glob(f".{target.name}.*.staging"):
        try:
            if now - leftover.stat().st_mtime > STALE_STAGING_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except FileNotFoundError:  # removed by someone else meanwhile
            pass


def _current_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it and set it back
    os.umask(mask)
    return mask
