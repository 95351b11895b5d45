"""The machine: turn ``auto`` device and precision into what this machine can actually do.

``--device auto`` means the first CUDA device when there is one, else the CPU. ``--precision
auto`` means bf16 autocast where the hardware computes bf16 natively (CUDA devices that report
it; CPUs with AVX512_BF16 or AMX), fp32 otherwise. Asking for something the machine cannot do
is a :class:`~fusioncli.errors.BadInputError`, not a silent fallback.

A leaf module, torch-free at import (the run config resolves through it, and ``sweep
--dry-run`` plans without torch): a CPU-only machine is recognised without importing torch (no
GPU driver on Linux; bf16 from /proc/cpuinfo), and torch is asked only where it must be.
"""

from __future__ import annotations

import functools
import gc
import platform
import re
import sys
from pathlib import Path

from fusioncli.errors import BadInputError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
PRECISIONS = ("auto", "fp32", "bf16")
# Device nodes of the GPU drivers torch's "cuda" device runs on (NVIDIA; ROCm; CUDA on WSL2).
# Without any of them on Linux, CUDA cannot be available, and torch need not be imported to say so.
_GPU_DRIVER_NODES = ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/kfd", "/dev/dxg")

# /proc/cpuinfo flags of x86 CPUs with native bf16 dot products. Without them oneDNN emulates
# bf16 through fp32 conversions, which is slower than plain fp32, so "auto" must not pick it.
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# torch.backends.cpu.get_cpu_capability() names that imply native bf16 (newer torch builds).
_CPU_BF16_CAPABILITIES = ("AVX512_BF16", "AMX", "AMX_BF16")


@functools.lru_cache(maxsize=1)
def _cpuinfo_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_bf16_supported() -> bool:
    """True when the CPU computes bf16 natively (AVX512_BF16 or AMX), so autocast pays off.

    Where /proc/cpuinfo lists the CPU's flags (Linux) they decide; elsewhere torch's CPU
    capability probe does.
    """
    flags = _cpuinfo_flags()
    if flags:
        return any(flag in flags for flag in _CPU_BF16_FLAGS)
    import torch

    try:
        capability = torch.backends.cpu.get_cpu_capability().upper()
    except Exception:  # noqa: BLE001 - builds without the probe fail in build-specific ways
        capability = ""
    return any(name in capability for name in _CPU_BF16_CAPABILITIES)


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """Whether torch can use a CUDA (or ROCm) device here; torch is imported only when a GPU
    driver is present (or on systems other than Linux, where we cannot tell without it)."""
    if sys.platform.startswith("linux") and not any(Path(node).exists() for node in _GPU_DRIVER_NODES):
        return False
    import torch

    return torch.cuda.is_available()


def bf16_supported(device: str) -> bool:
    """Whether bf16 autocast is native on ``device`` (a resolved device string)."""
    if device.startswith("cuda"):
        import torch

        return cuda_available() and torch.cuda.is_bf16_supported()
    return cpu_bf16_supported()


def validate_device_spec(spec: str) -> None:
    """Raise :class:`BadInputError` unless ``spec`` is auto, cpu, cuda or cuda:N."""
    if not DEVICE_PATTERN.match(spec):
        raise BadInputError(f"--device must be auto, cpu, cuda or cuda:N (got {spec!r})")


def resolve_device(spec: str) -> str:
    """``auto`` -> ``cuda:0`` or ``cpu``; ``cuda`` -> ``cuda:0``; checks the device exists."""
    validate_device_spec(spec)
    if spec == "auto":
        return "cuda:0" if cuda_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if not cuda_available():
        raise BadInputError(f"--device {spec}: CUDA is not available", hint="use --device cpu or --device auto")
    import torch

    index = int(spec.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise BadInputError(f"--device {spec}: only {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})")
    return f"cuda:{index}"


def resolve_precision(spec: str, device: str) -> str:
    """``auto`` -> ``bf16`` where native on ``device`` else ``fp32``; bf16 without support fails."""
    if spec not in PRECISIONS:
        raise BadInputError(f"--precision must be one of {', '.join(PRECISIONS)} (got {spec!r})")
    if spec == "fp32":
        return "fp32"
    supported = bf16_supported(device)
    if spec == "bf16" and not supported:
        if device.startswith("cuda"):
            why = f"{device} does not support bf16"
        else:  # PyTorch would emulate it through fp32 conversions: slower than fp32 itself
            why = "this CPU has no native bf16 (AVX512_BF16 or AMX), and emulated bf16 is slower than fp32"
        raise BadInputError(
            f"--precision bf16: {why}",
            hint="use --precision fp32, or --precision auto (bf16 only where the hardware has it)",
        )
    return "bf16" if supported else "fp32"


@functools.lru_cache(maxsize=1)
def cpu_model_name() -> str:
    """The CPU's marketing name (``model name`` in /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: str) -> str:
    """A human name for a resolved device: the GPU's name on CUDA, the CPU model otherwise."""
    if device.startswith("cuda") and cuda_available():
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model_name()


def free_device_memory(device: str) -> None:
    """Give a failed (or finished) run's memory back, so the next run on the device has it."""
    # After an out-of-memory error the allocator still holds the failed run's blocks.
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
