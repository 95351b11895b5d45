"""Measurement probes: clocks that respect CUDA's asynchrony, peak memory, and provenance.

CUDA kernels run asynchronously, so a clock read without ``torch.cuda.synchronize`` measures
how fast work was *queued*, not done. :func:`clock` synchronizes first.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import fusioncli
from fusioncli.machine import bf16_supported, device_name

HOST_RSS_NOTE = "process-lifetime peak resident set size (getrusage ru_maxrss), not reset per run"


def _is_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def synchronize(device: str | torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU)."""
    if _is_cuda(device):
        torch.cuda.synchronize(torch.device(device))


def clock(device: str | torch.device) -> float:
    """``time.perf_counter()`` after the device finished its queued work."""
    synchronize(device)
    return time.perf_counter()


def utc_now() -> str:
    """The current time as an ISO-8601 string in UTC."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def reset_peak_memory(device: str | torch.device) -> None:
    """Start a fresh GPU peak-memory window on ``device`` (host RSS peaks cannot be reset)."""
    if _is_cuda(device):
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_host_rss_bytes() -> int:
    """Peak resident set size of this process over its lifetime, in bytes."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports KiB, macOS bytes
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except ImportError:  # Windows: psutil knows the peak working set
        import psutil

        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))


def peak_memory(device: str | torch.device) -> dict[str, Any]:
    """The run record's ``memory``: GPU peaks since :func:`reset_peak_memory`, host RSS peak."""
    allocated = reserved = None
    if _is_cuda(device):
        dev = torch.device(device)
        allocated = int(torch.cuda.max_memory_allocated(dev))
        reserved = int(torch.cuda.max_memory_reserved(dev))
    return {
        "peak_gpu_allocated_bytes": allocated,
        "peak_gpu_reserved_bytes": reserved,
        "peak_host_rss_bytes": peak_host_rss_bytes(),
        "peak_host_rss_note": HOST_RSS_NOTE,
    }


def git_info(path: Path | None = None) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout holding ``path`` (default: this package).

    ``(None, None)`` when it is not in a git work tree or git is missing, e.g. an installed
    wheel. ``dirty`` counts changes to tracked files only.
    """
    where = Path(path) if path is not None else Path(fusioncli.__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), (bool(status.strip()) if status is not None else None)


def environment_info(device: str) -> dict[str, Any]:
    """The run record's ``env``: versions, hardware and code provenance for a resolved device."""
    commit, dirty = git_info()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "fusioncli_version": fusioncli.__version__,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": cudnn,
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        "git_dirty": dirty,
        "bf16": bf16_supported(device),
    }
