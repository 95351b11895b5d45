"""Inference cost of a strategy: latency percentiles, throughput, size, FLOPs and peak memory.

The protocol (``fusioncli profile``), stated once and recorded with every figure:

* the model is built with random weights (latency does not depend on their values: no strategy
  has data-dependent control flow), put in eval mode, channels_last, on the device;
* inputs are one random RGBA batch and one XYZA batch of the asked batch size and image size
  (``input_size``; 64 x 64 and 2 classes unless ``profile --cache-dir`` sizes the model for a
  cache), made on the device before timing (no data loading, no host-to-device copy inside the timer);
* ``warmup`` forward passes first (allocator, oneDNN / cuDNN kernel choice, lazy init), then
  ``iters`` timed ones, each its own sample;
* inside the timer: exactly one ``model(rgb, xyza)`` under ``torch.inference_mode`` (and bf16
  autocast for ``bf16``), nothing else -- no softmax, argmax or copy back to the host; on CUDA
  the device is synchronised before the start and before the end clock is read;
* ``p50_ms`` / ``p95_ms``: percentiles of the per-pass wall times (linear interpolation);
  ``samples_per_s = batch_size / p50``;
* ``threads``: ``torch.get_num_threads()`` during the measurement (intra-op threads);
* ``checkpoint_bytes``: the size of the weights written as a safetensors file (the format
  ``train --checkpoint`` writes, without its JSON sidecar);
* ``peak_mem_bytes``: on CUDA, ``torch.cuda.max_memory_allocated`` over the timed passes
  (weights + activations); on the CPU, the process's peak RSS (lifetime, so an upper bound).

On a shared machine latency moves with the load; say so when quoting the figures.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fusioncli.errors import BadInputError
from fusioncli.train.engine import autocast
from fusioncli.train.probes import peak_host_rss_bytes, synchronize

PROFILE_SCHEMA = 1
DEFAULT_WARMUP = 10
DEFAULT_ITERS = 50


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linear interpolation between order statistics
    (numpy's default): position ``(n - 1) q / 100`` in the sorted values."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """Bytes of ``model``'s weights as a safetensors file (what ``train --checkpoint`` writes)."""
    from safetensors.torch import save_file

    state = {name: t.detach().to("cpu").contiguous().clone() for name, t in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file(state, str(path), metadata={"format": "pt", "producer": "fusioncli"})
        return os.path.getsize(path)


def profile_one(
    strategy: str,
    batch_size: int,
    *,
    backbone: str = "seed",
    device: str = "cpu",
    precision: str = "fp32",
    warmup: int = DEFAULT_WARMUP,
    iters: int = DEFAULT_ITERS,
    num_classes: int = 2,
    input_size: int | Sequence[int] = (64, 64),
    seed: int = 0,
) -> dict[str, Any]:
    """Latency and cost of one strategy at one batch size under the module's protocol, sized
    for ``input_size`` images (one side or (H, W)) and ``num_classes`` classes."""
    from fusioncli import models
    from fusioncli.models.backbones import as_input_size

    if batch_size < 1 or iters < 1 or warmup < 0:
        raise BadInputError("batch size and iterations must be at least 1, warm-up at least 0")
    dev = torch.device(device)
    torch.manual_seed(seed)
    h, w = as_input_size(input_size)
    model = models.create_model(strategy, backbone, num_classes, input_size=(h, w))
    params = models.parameter_counts(model)
    flops = models.flops_per_sample(model)
    size = checkpoint_bytes(model)
    model = model.to(device=dev, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]  # torch's stubs omit memory_format
    g = torch.Generator(device="cpu").manual_seed(seed)
    shape = (batch_size, 4, h, w)
    rgb = torch.rand(shape, generator=g).to(dev).contiguous(memory_format=torch.channels_last)
    xyza = (torch.rand(shape, generator=g) * 0.4 - 0.2).to(dev).contiguous(memory_format=torch.channels_last)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            with autocast(dev, precision):
                model(rgb, xyza)
        synchronize(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        for _ in range(iters):
            synchronize(dev)
            start = time.perf_counter()
            with autocast(dev, precision):
                model(rgb, xyza)
            synchronize(dev)
            times.append(time.perf_counter() - start)
    peak = int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else peak_host_rss_bytes()
    p50 = percentile(times, 50)
    return {
        "strategy": strategy,
        "backbone": backbone,
        "batch_size": batch_size,
        "input_size": [h, w],
        "num_classes": num_classes,
        "device": str(dev),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "warmup": warmup,
        "iters": iters,
        "p50_ms": 1e3 * p50,
        "p95_ms": 1e3 * percentile(times, 95),
        "mean_ms": 1e3 * statistics.fmean(times),
        "samples_per_s": batch_size / p50 if p50 > 0 else float("nan"),
        "params": params["total"],
        "flops_per_sample": int(flops),
        "checkpoint_bytes": size,
        "peak_mem_bytes": peak,
        "peak_mem_kind": "cuda_max_allocated" if dev.type == "cuda" else "host_peak_rss_lifetime",
    }


def profile_strategies(
    strategies: Sequence[str],
    batch_sizes: Sequence[int],
    *,
    backbone: str = "seed",
    device: str = "cpu",
    precision: str = "fp32",
    warmup: int = DEFAULT_WARMUP,
    iters: int = DEFAULT_ITERS,
    threads: int | None = None,
    num_classes: int = 2,
    input_size: int | Sequence[int] = (64, 64),
) -> list[dict[str, Any]]:
    """:func:`profile_one` for every (strategy, batch size), strategies outermost.

    ``device`` and ``precision`` are specs as the run config takes them (``auto`` resolves);
    ``threads`` sets torch's intra-op threads for the measurement (restored afterwards).
    Unknown strategies fail before anything is measured, with the known names.
    """
    from fusioncli.machine import resolve_device, resolve_precision
    from fusioncli.models import get_strategy

    for name in strategies:
        get_strategy(name)  # raises with the list of known names
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return [
            profile_one(
                s,
                b,
                backbone=backbone,
                device=dev,
                precision=prec,
                warmup=warmup,
                iters=iters,
                num_classes=num_classes,
                input_size=input_size,
            )
            for s in strategies
            for b in batch_sizes
        ]
    finally:
        torch.set_num_threads(previous)


__all__ = ["DEFAULT_ITERS", "DEFAULT_WARMUP", "checkpoint_bytes", "percentile", "profile_one", "profile_strategies"]
