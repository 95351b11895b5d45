"""`prepare --manifest` vs the DLI folder path on the same files: build samples/s and cache hits.

Renders a small synthetic set with :func:`fusioncli.data.synth.write_dataset` (the DLI layout),
writes ``samples.csv`` pointing at the very same PNG/NPY files and a ``dataset.toml`` naming the
set's angle grids, then times, alternating the two paths so load drift hits both alike:

* build: ``prepare(force=True)`` and ``prepare_manifest(force=True)`` (validate, decode, hash,
  write the cache; the same decoding workers, so the difference is the manifest's own work:
  reading and checking the table, Pillow's generic image decoder instead of the PNG plugin,
  the depth checks, stat-ing the files by path);
* hit: a second call with nothing changed (stats unchanged, no file read).

Both read from the page cache (a warm-up build of each comes first). Prints, never asserts.
The default size runs in well under a minute on a 2-core machine; the machine is named with
its load average, since shared machines make the times indicative only.

Usage::

    .venv/bin/python benchmarks/bench_prepare_manifest.py                  # 2 x 1,000 samples
    .venv/bin/python benchmarks/bench_prepare_manifest.py --per-class 5000 --repeats 5
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _stats(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.median(values):.3f} (± {statistics.stdev(values):.3f})"


def write_manifest(raw: Path) -> Path:
    """``samples.csv`` + ``dataset.toml`` for a DLI-layout folder, naming the same files."""
    with open(raw / "samples.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["rgb", "depth", "label"])
        for cls in ("cubes", "spheres"):
            for png in sorted((raw / cls / "rgb").iterdir()):
                writer.writerow([f"{cls}/rgb/{png.name}", f"{cls}/lidar/{png.stem}.npy", cls])
    (raw / "dataset.toml").write_text(
        '[lidar]\nazimuth = "cubes/azimuth.npy"\nzenith = "cubes/zenith.npy"\nno_return = 50.0\n'
    )
    return raw / "samples.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=1000, help="samples per class (default 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed builds per path (default 3)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: prepare's choice)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where to render (default: a temp folder)")
    args = parser.parse_args()

    import numpy as np
    import PIL

    from fusioncli.data.cache import prepare, prepare_manifest
    from fusioncli.data.synth import write_dataset

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, pillow {PIL.__version__}")
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        write_dataset(work / "raw", per_class=args.per_class, seed=0)
        print(f"rendered 2 x {args.per_class} samples in {time.perf_counter() - t0:.1f} s")
        manifest = write_manifest(work / "raw")
        n = 2 * args.per_class
        opts = {"val_fraction": 0.2, "workers": args.workers}

        paths: dict[str, Callable[..., object]] = {
            "DLI folders (prepare)": lambda **kw: prepare(work / "raw", work / "dli", **opts, **kw),
            "manifest (prepare --manifest)": lambda **kw: prepare_manifest(manifest, work / "man", **opts, **kw),
        }
        builds: dict[str, list[float]] = {name: [] for name in paths}
        hits: dict[str, list[float]] = {name: [] for name in paths}
        for run in paths.values():
            run(force=True)  # warm-up: imports, page cache
        for _ in range(args.repeats):
            for name, run in paths.items():  # alternate, so drift in the machine's load hits both
                t = time.perf_counter()
                run(force=True)
                builds[name].append(time.perf_counter() - t)
        time.sleep(2.1)  # past the racy-timestamp window, so a hit can trust the stats
        for _ in range(args.repeats):
            for name, run in paths.items():
                t = time.perf_counter()
                summary = run()
                hits[name].append(time.perf_counter() - t)
                assert getattr(summary, "cache_hit", False), name  # a benchmark of hits must time hits

        print(f"\n{n:,} samples (64x64), {args.repeats} timed builds each, median (± sd)")
        print(f"{'path':<32}{'build s':>18}{'samples/s':>12}{'hit s':>18}")
        rates = {}
        for name in paths:
            rates[name] = n / statistics.median(builds[name])
            print(f"{name:<32}{_stats(builds[name]):>18}{rates[name]:>12,.0f}{_stats(hits[name]):>18}")
        dli, man = rates.values()
        print(f"\nmanifest / DLI build rate: {man / dli:.2f}x")
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
