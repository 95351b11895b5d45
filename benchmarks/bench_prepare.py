"""`prepare` vs a seed-style loader on the same synthetic files, plus cache hit and reload times.

* seed-style: what the seed's ``CubesAndShperesDataset`` did, per sample: ``Image.open`` +
  convert to a float tensor (torchvision ``ToTensor`` semantics), ``np.load``, the XYZA
  projection of that one depth map, appended to Python lists. Single process, as in the seed.
* ours: ``fusioncli.data.cache.prepare(force=True)`` -- validates every file, decodes in worker
  processes straight into the shard files, hashes contents, writes the cache.

Both read the same files from the page cache (they were just written or read). Then: the
cache-hit paths (stats unchanged; one file touched), ``load_cache`` (read + projection split
out), and with ``--formats`` the shard-format comparison behind the cache's design (raw ``.npy``
tensors vs Parquet fixed-size binary columns, uncompressed / lz4 / zstd).

Usage::

    .venv/bin/python benchmarks/bench_prepare.py                    # 2 x 9,999, the full size
    .venv/bin/python benchmarks/bench_prepare.py --per-class 2000 --formats
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f} s"
    return (
        f"min {min(values):.3f} s, median {statistics.median(values):.3f}, mean {statistics.mean(values):.3f}"
        f" ± {statistics.stdev(values):.3f} (n={len(values)})"
    )


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the decode workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def ensure_raw(raw: Path, per_class: int) -> Path:
    """Synthetic raw set of ``per_class`` samples per class (reused when already there)."""
    from fusioncli.data.synth import write_dataset

    rgb = raw / "cubes" / "rgb"
    if rgb.is_dir() and sum(1 for _ in rgb.iterdir()) == per_class:
        print(f"reusing {raw} ({per_class} per class)")
        return raw
    print(f"writing {per_class} per class to {raw} with fusioncli.data.synth ...", flush=True)
    summary = write_dataset(raw, per_class=per_class, seed=0, force=True)
    print(f"  synth: {summary.seconds:.1f} s ({summary.samples_per_s:,.0f} samples/s, {summary.workers} workers)")
    return raw


def seed_style_load(raw: Path, limit: int | None) -> tuple[int, float]:
    """The seed's per-sample loader; returns (samples, seconds)."""
    import torch
    from PIL import Image

    from fusioncli.data.projection import project_xyza

    az = torch.from_numpy(np.load(raw / "cubes" / "azimuth.npy"))
    ze = torch.from_numpy(np.load(raw / "cubes" / "zenith.npy"))
    rgb_list, lidar_list, labels = [], [], []
    t0 = time.perf_counter()
    for label, cls in enumerate(("cubes", "spheres")):
        stems = sorted(p.stem for p in (raw / cls / "rgb").iterdir())[:limit]
        for stem in stems:
            img = Image.open(raw / cls / "rgb" / f"{stem}.png")
            # torchvision.transforms.ToTensor: HWC uint8 -> CHW float in [0, 1]
            x = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).contiguous().float().div(255)
            rgb_list.append(x)
            depth = torch.from_numpy(np.load(raw / cls / "lidar" / f"{stem}.npy")).to(torch.float32)
            lidar_list.append(project_xyza(depth, az, ze))
            labels.append(label)
    return len(labels), time.perf_counter() - t0


def bench_formats(cache: Path, repeats: int) -> None:
    """Write/read times of the candidate shard formats, on the prepared arrays."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from fusioncli.data.cache import _map_tensor

    rgb = np.load(cache / "rgb.npy")
    depth = np.load(cache / "depth.npy")
    n = rgb.shape[0]
    out = cache.parent / "formats"
    out.mkdir(exist_ok=True)
    print(f"\nshard formats ({n} samples, rgb {rgb.nbytes / 1e6:.0f} MB + depth {depth.nbytes / 1e6:.0f} MB raw):")
    print(f"  {'format':<22} {'write s':>8} {'read->tensor s':>15} {'size MB':>8}   (read times exclude the check)")

    def row(name: str, write, read) -> None:  # type: ignore[no-untyped-def]
        w, r = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            paths = write()
            w.append(time.perf_counter() - t)
            t = time.perf_counter()
            tensors = read()
            r.append(time.perf_counter() - t)
            assert torch.equal(tensors[0], torch.from_numpy(rgb)) and torch.equal(tensors[1], torch.from_numpy(depth))
            del tensors
        size = sum(p.stat().st_size for p in paths) / 1e6
        print(f"  {name:<22} {min(w):>8.3f} {min(r):>15.3f} {size:>8.0f}   (min of {repeats})")

    def write_npy():  # type: ignore[no-untyped-def]
        np.save(out / "rgb.npy", rgb)
        np.save(out / "depth.npy", depth)
        return [out / "rgb.npy", out / "depth.npy"]

    def readinto(path: Path, like: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.empty_like(like))
        view = memoryview(t.numpy()).cast("B")
        with open(path, "rb", buffering=0) as fh:
            fh.seek(fh.seek(0, 2) - like.nbytes)
            done = 0
            while done < len(view):
                done += fh.readinto(view[done:])
        return t

    def read_npy():  # type: ignore[no-untyped-def]
        return readinto(out / "rgb.npy", rgb), readinto(out / "depth.npy", depth)

    def map_npy():  # type: ignore[no-untyped-def]
        # what load_cache does; the pages are faulted in later, when used (here: by the check)
        return _map_tensor(out / "rgb.npy", rgb.dtype, rgb.shape), _map_tensor(
            out / "depth.npy", depth.dtype, depth.shape
        )

    def map_touch_npy():  # type: ignore[no-untyped-def]
        tensors = map_npy()
        for t in tensors:  # fault every page in, as the first training epoch will
            t.view(torch.uint8).view(-1)[::4096].sum()
        return tensors

    row("npy readinto", write_npy, read_npy)
    row("npy mmap (lazy)", write_npy, map_npy)
    row("npy mmap + fault all", write_npy, map_touch_npy)

    def parquet(compression: str):  # type: ignore[no-untyped-def]
        path = out / f"shard-{compression}.parquet"

        def write():  # type: ignore[no-untyped-def]
            table = pa.table(
                {
                    "rgb": pa.FixedSizeBinaryArray.from_buffers(pa.binary(rgb[0].nbytes), n, [None, pa.py_buffer(rgb)]),
                    "depth": pa.FixedSizeBinaryArray.from_buffers(
                        pa.binary(depth[0].nbytes), n, [None, pa.py_buffer(depth)]
                    ),
                }
            )
            pq.write_table(table, path, compression=compression, row_group_size=4096)
            return [path]

        def read():  # type: ignore[no-untyped-def]
            table = pq.read_table(path)
            result = []
            for name, arr in (("rgb", rgb), ("depth", depth)):
                col = table.column(name)
                t = torch.empty(arr.shape, dtype=torch.from_numpy(arr[:1]).dtype)
                flat = t.numpy().reshape(-1).view(np.uint8)
                pos = 0
                for chunk in col.chunks:
                    buf = np.frombuffer(chunk.buffers()[1], dtype=np.uint8)[
                        chunk.offset * arr[0].nbytes : (chunk.offset + len(chunk)) * arr[0].nbytes
                    ]
                    flat[pos : pos + buf.size] = buf
                    pos += buf.size
                result.append(t)
            return result

        return write, read

    for compression in ("none", "lz4", "zstd"):
        write, read = parquet(compression)
        row(f"parquet fsb {compression}", write, read)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=9999)
    parser.add_argument("--work-dir", type=Path, default=Path("benchmarks/_work/prepare"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-limit", type=int, default=None, help="seed-style loader: samples per class")
    parser.add_argument("--workers", type=int, default=None, help="prepare's decoding processes (default: auto)")
    parser.add_argument("--formats", action="store_true", help="also compare shard formats")
    args = parser.parse_args()

    import PIL
    import torch

    from fusioncli.data.cache import load_cache, prepare

    raw = ensure_raw(args.work_dir / f"raw-{args.per_class}", args.per_class)
    cache = args.work_dir / f"cache-{args.per_class}"
    n_total = 2 * args.per_class

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"\n{platform.processor() or platform.machine()}, {cpus} CPUs usable, torch {torch.__version__}"
        f" ({torch.get_num_threads()} threads), numpy {np.__version__}, Pillow {PIL.__version__},"
        f" Python {sys.version.split()[0]}"
    )
    if hasattr(os, "getloadavg"):
        print(f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")

    # warm the page cache for both contenders
    for p in raw.rglob("*"):
        if p.is_file():
            p.read_bytes()

    ours, ours_cpu = [], []
    for _ in range(args.repeats):
        c0 = cpu_seconds()
        summary = prepare(raw, cache, force=True, workers=args.workers)
        ours.append(summary.seconds)
        ours_cpu.append(cpu_seconds() - c0)
    c0 = cpu_seconds()
    n_base, t_base = seed_style_load(raw, args.baseline_limit)
    base_cpu = cpu_seconds() - c0

    hits = []
    for _ in range(args.repeats):
        s = prepare(raw, cache)
        assert s.cache_hit
        hits.append(s.seconds)
    touched = []
    probe = raw / "cubes" / "rgb" / sorted(os.listdir(raw / "cubes" / "rgb"))[0]
    for _ in range(args.repeats):
        os.utime(probe)
        s = prepare(raw, cache)
        assert s.cache_hit and s.how == "content unchanged", s.how
        touched.append(s.seconds)
    loads, reads, projs = [], [], []
    for _ in range(args.repeats):
        timings: dict[str, float] = {}
        data = load_cache(cache, timings=timings)
        loads.append(timings["total_s"])
        reads.append(timings["read_s"])
        projs.append(timings["project_s"])
        del data
    # On the CPU, XYZA is projected per batch instead of at load: what one batch pays for it.
    data = load_cache(cache)
    batch = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:32]
    per_batch = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(100):
            data.lidar(batch)
        per_batch.append((time.perf_counter() - t0) / 100)
    del data

    ours_rate = n_total / min(ours)
    base_rate = n_base / t_base
    print(f"\nprepare, {n_total:,} samples ({args.per_class:,} per class), cache {summary.cache_bytes / 1e6:.0f} MB:")
    print(f"  seed-style loader : {t_base:8.2f} s for {n_base:,} samples  -> {base_rate:9,.0f} samples/s")
    print(f"  fusioncli prepare : {_fmt(ours)}  -> {ours_rate:9,.0f} samples/s (best run)")
    print(f"  ratio (wall)      : {ours_rate / base_rate:.1f}x  (target >= 20x)")
    base_cpu_per = base_cpu / n_base * 1e6
    ours_cpu_per = min(ours_cpu) / n_total * 1e6
    print(
        f"  CPU per sample    : seed-style {base_cpu_per:.0f} us, prepare {ours_cpu_per:.0f} us (all processes)"
        f" -> {base_cpu_per / ours_cpu_per:.1f}x less CPU"
    )
    print(
        f"  full build        : {min(ours):.2f} s best, {statistics.mean(ours):.2f} s mean  (target <= 10 s on 2 cores)"
    )
    print("\ncache hit (prepare again):")
    print(f"  stats unchanged   : {_fmt(hits)}")
    print(f"  one file touched  : {_fmt(touched)}  (content hashed)")
    print("\nload_cache (target <= 1 s):")
    print(f"  total             : {_fmt(loads)}")
    print(f"  read shards       : {_fmt(reads)}")
    print(f"  project XYZA      : {_fmt(projs)}  (CPU: only the direction grid; each batch projects its own)")
    print(
        f"  XYZA of a batch of 32, projected when drawn: {min(per_batch) * 1e6:.0f} us best, "
        f"{statistics.median(per_batch) * 1e6:.0f} us median"
    )
    if hasattr(os, "getloadavg"):
        print(f"\nload average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")

    if args.formats:
        bench_formats(cache, args.repeats)


if __name__ == "__main__":
    main()
