"""Throughput of `fusioncli synth`, end to end (files written), against a naive baseline.

    .venv/bin/python benchmarks/bench_synth.py [--per-class 2000] [--workers N] [--dir PATH]

Runs, in the same process and on the same disk:
  ours        write_dataset(): batched ray casting + a process pool (default worker count)
  ours, 1 w.  the same with one process (how much comes from batching alone)
  naive       one sample at a time through the same code (render_batch of one scene, same
              encoders, same files), in one process: the loop you would write first
and checks that all three wrote byte-identical files. Wall time depends on what else the
machine runs, so it also prints CPU seconds per sample (parent + workers, from os.times) and
the load average at the start.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fusioncli.data.projection import default_angles
from fusioncli.data.synth import (
    CLASS_NAMES,
    SceneParams,
    _write,
    encode_npy,
    encode_png,
    render_batch,
    sample_scene,
    stem_width,
    write_dataset,
)


def naive(out: Path, per_class: int, seed: int) -> None:
    """The baseline: sample, render and write one sample at a time."""
    params = SceneParams()
    az, ze = default_angles()
    width = stem_width(per_class)
    for label, name in enumerate(CLASS_NAMES):
        for sub in ("rgb", "lidar"):
            (out / name / sub).mkdir(parents=True)
        np.save(out / name / "azimuth.npy", az)
        np.save(out / name / "zenith.npy", ze)
        rgb_dir = os.open(out / name / "rgb", os.O_RDONLY)
        lidar_dir = os.open(out / name / "lidar", os.O_RDONLY)
        for i in range(per_class):
            rgba, depth = render_batch([sample_scene(label, i, seed, params)], params)
            _write(rgb_dir, f"{i:0{width}d}.png", encode_png(rgba[0]))
            _write(lidar_dir, f"{i:0{width}d}.npy", encode_npy(depth[0]))
        os.close(rgb_dir)
        os.close(lidar_dir)


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its reaped children)."""
    t0, c0 = time.perf_counter(), os.times()
    run()
    t1, c1 = time.perf_counter(), os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user)
    cpu += c1.children_system - c0.children_system
    return t1 - t0, cpu


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=2000, help="samples per class (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes for 'ours' (default: auto)")
    parser.add_argument(
        "--dir", type=Path, default=Path(__file__).parent / "_work", help="scratch folder (default benchmarks/_work)"
    )
    args = parser.parse_args()
    total = 2 * args.per_class
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench_synth.", dir=args.dir))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, {cpus} CPUs usable")
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; scratch: {scratch}")
    print(f"{args.per_class} samples per class ({total} in all), seed {args.seed}\n")
    try:
        # warm-up: imports, the sensor cache, the page cache for the folder
        write_dataset(scratch / "warmup", per_class=8, seed=args.seed)
        rows = []
        summary = None

        def ours() -> None:
            nonlocal summary
            summary = write_dataset(scratch / "ours", per_class=args.per_class, seed=args.seed, workers=args.workers)

        wall, cpu = timed(ours)
        assert summary is not None
        rows.append((f"ours ({summary.workers} workers)", wall, cpu))
        wall, cpu = timed(lambda: write_dataset(scratch / "ours1", per_class=args.per_class, seed=args.seed, workers=1))
        rows.append(("ours (1 worker)", wall, cpu))
        wall, cpu = timed(lambda: naive(scratch / "naive", args.per_class, args.seed))
        rows.append(("naive per-sample loop", wall, cpu))
        identical = same_tree(scratch / "ours", scratch / "naive") and same_tree(scratch / "ours", scratch / "ours1")

        base = total / rows[-1][1]
        print(f"{'variant':<24}{'wall s':>8}{'samples/s':>12}{'CPU ms/sample':>15}{'vs naive':>10}")
        for name, wall, cpu in rows:
            rate = total / wall
            print(f"{name:<24}{wall:>8.2f}{rate:>12,.0f}{1000 * cpu / total:>15.3f}{rate / base:>9.1f}x")
        print(f"\nall variants wrote byte-identical files: {identical}")
        if not identical:
            sys.exit(1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
