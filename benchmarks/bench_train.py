"""Training throughput: fusioncli's loop vs a seed-notebook-style loop, same model, same data.

One run of this script trains the same model class on the same prepared data with both loops
for the same number of epochs, and prints training samples/s over epochs 2..N (the first epoch
is warm-up; validation is not timed), the ratio, and the final validation accuracy of both.

* ours: ``fusioncli.train.loop.train_run`` -- data on the device, batches by index from a seeded
  permutation, channels_last, bf16 autocast where native (``--precision auto``), fused Adam, no
  per-step sync.
* seed-style: what the seed notebook did -- a ``torch.utils.data.DataLoader`` (shuffle=True,
  batch 32) over a list of per-sample ``(rgb, xyza, label)`` tensors, fp32, plain Adam,
  ``loss.item()`` every step.

Fairness on a shared machine: the loops take turns epoch by epoch (seed 1, ours 1, seed 2, ...),
so another job that loads the machine for a while slows both alike, and the load average before
and after is printed. By default each loop runs in its own worker process, as each would in real
use: in one process the two loops share the C allocator's state (glibc's adaptive mmap/trim
thresholds decide how many fresh pages each step faults in -- the seed-style loop faults in over a
million pages per epoch in a fresh process), so running them side by side changes the speed of
both. ``--same-process`` runs them in this process instead, for comparison.

Usage (synthesises and prepares a dataset in a temp folder unless --cache-dir is given)::

    .venv/bin/python benchmarks/bench_train.py --per-class 1000 --epochs 4 --strategy late --repeats 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from fusioncli.config import RunConfig
from fusioncli.data.dataset import PreparedData
from fusioncli.machine import cpu_model_name, device_name
from fusioncli.models import create_model
from fusioncli.train.loop import train_run
from fusioncli.train.probes import clock

SEED_LABEL = "seed-style (DataLoader, fp32, .item()/step)"


def seed_style_epochs(cfg: RunConfig, data: PreparedData) -> Iterator[dict]:
    """The seed notebook's loop on ``data`` (already limited), fp32; yields after every epoch."""
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.strategy, cfg.backbone, data.num_classes).to(device)

    def samples(indices: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        # The seed's Dataset held one (rgb, xyza, label) tensor triple per sample.
        xyza = data.lidar(indices).contiguous()  # plain NCHW, as the seed had it
        return [(data.rgb[i].float() / 255, xyza[j], data.labels[i]) for j, i in enumerate(indices.tolist())]

    train_set, val_set = samples(data.train_indices), samples(data.val_indices)
    # Its own generator, so nothing else drawing random numbers changes the batch order.
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=shuffle_gen)
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    loss_fn = torch.nn.CrossEntropyLoss()

    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = clock(device)
        train_loss = 0.0
        for rgb, xyza, target in train_loader:
            optimizer.zero_grad()
            loss = loss_fn(model(rgb.to(device), xyza.to(device)), target.to(device))
            loss.backward()
            optimizer.step()
            train_loss += loss.item()  # a host-device sync every step, as the seed did
        t_train = clock(device)
        scheduler.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for rgb, xyza, target in val_loader:
                correct += (model(rgb.to(device), xyza.to(device)).argmax(1) == target.to(device)).sum().item()
        yield {
            "epoch": epoch,
            "seconds": clock(device) - t0,
            "train_seconds": t_train - t0,
            "val_accuracy": correct / len(val_set),
            "n_train": len(train_set),
        }


def _throughput(n_train: int, train_epoch_seconds: list[float]) -> dict[str, float]:
    """samples/s over epochs 2..N: overall (as the run record) and the median epoch's."""
    steady = train_epoch_seconds[1:] if len(train_epoch_seconds) > 1 else train_epoch_seconds
    return {
        "samples_per_s": n_train * len(steady) / sum(steady),
        # the median epoch is robust to another job stealing the CPU for part of the run
        "median_epoch_samples_per_s": n_train / statistics.median(steady),
    }


def run_loop(role: str, cfg: RunConfig, data: PreparedData, after_epoch: Callable[[dict], None]) -> dict:
    """Run one loop (``seed`` or ``ours``), calling ``after_epoch(row)`` after every epoch.

    ``after_epoch`` is where the other loop gets its turn; the loop's clocks are stopped then.
    Returns its throughput figures and final validation accuracy.
    """
    if role == "seed":
        rows = []
        for row in seed_style_epochs(cfg, data):
            rows.append(row)
            after_epoch(row)
        result = _throughput(rows[0]["n_train"], [r["train_seconds"] for r in rows])
        return result | {"val_accuracy": rows[-1]["val_accuracy"]}
    rec = train_run(cfg, data, on_epoch=after_epoch).record.to_json()
    result = _throughput(rec["dataset"]["n_train"], rec["timing"]["train_epoch_seconds"])
    return result | {"val_accuracy": rec["metrics"]["val_accuracy"]}


def _worker(role: str, config: dict, cache_dir: str, limit: int | None, conn: Connection) -> None:
    """A worker process: load the cache, then run one epoch each time the parent says so."""
    cfg = RunConfig.from_dict(config)
    data = _load(Path(cache_dir), limit, cfg.device)
    conn.send(("ready", None))

    def after_epoch(row: dict) -> None:
        conn.send(("epoch", {"epoch": row["epoch"], "seconds": row["seconds"], "val_accuracy": row["val_accuracy"]}))
        if row["epoch"] < cfg.epochs:
            conn.recv()  # wait for our next turn

    conn.recv()  # first turn
    conn.send(("done", run_loop(role, cfg, data, after_epoch)))


def _load(cache_dir: Path, limit: int | None, device: str) -> PreparedData:
    from fusioncli.data.cache import load_cache

    return load_cache(cache_dir).limit_per_class(limit).to(device)


def _log(loop: str, row: dict) -> None:
    print(
        f"  {loop:<12} epoch {row['epoch']}: {row['seconds']:6.1f}s (incl. validation)  "
        f"val_acc {row['val_accuracy']:.4f}",
        file=sys.stderr,
    )


def pair_in_processes(cfg: RunConfig, cache_dir: Path, limit: int | None) -> tuple[dict, dict]:
    """Seed-style and ours, each in a fresh worker process, taking turns epoch by epoch."""
    ctx = mp.get_context("spawn")  # fork after torch has started OpenMP threads is unsafe
    workers = {}
    for role in ("seed", "ours"):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(role, cfg.to_dict(), str(cache_dir), limit, child), daemon=True)
        proc.start()
        workers[role] = (parent, proc)
    try:
        for parent, _ in workers.values():
            if parent.recv()[0] != "ready":
                raise RuntimeError("worker failed to start")
        for _ in range(cfg.epochs):
            for role, (parent, _) in workers.items():
                parent.send("go")
                _, row = parent.recv()
                _log("seed-style" if role == "seed" else f"ours ({cfg.precision})", row)
        results = {role: parent.recv()[1] for role, (parent, _) in workers.items()}
    finally:
        for _, proc in workers.values():
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
    return results["seed"], results["ours"]


def pair_in_this_process(cfg: RunConfig, data: PreparedData) -> tuple[dict, dict]:
    """Seed-style and ours in this process, taking turns epoch by epoch (seed runs inside our
    ``on_epoch`` callback, whose time ``train_run`` does not count)."""
    seed_rows = seed_style_epochs(cfg, data)
    seed_done: list[dict] = []

    def seed_turn() -> None:
        row = next(seed_rows)
        seed_done.append(row)
        _log("seed-style", row)

    def after_ours_epoch(row: dict) -> None:
        _log(f"ours ({cfg.precision})", row)
        if row["epoch"] < cfg.epochs:
            seed_turn()

    seed_turn()
    ours = run_loop("ours", cfg, data, after_ours_epoch)
    seed = _throughput(seed_done[0]["n_train"], [r["train_seconds"] for r in seed_done])
    return seed | {"val_accuracy": seed_done[-1]["val_accuracy"]}, ours


def prepare_cache(args: argparse.Namespace, workdir: Path) -> Path:
    """The prepared cache to benchmark on: --cache-dir as is, else --data-dir or synth, prepared."""
    if args.cache_dir is not None:
        return args.cache_dir
    from fusioncli.data.cache import prepare

    data_dir = args.data_dir
    if data_dir is None:
        from fusioncli.data.synth import write_dataset

        data_dir = workdir / "raw"
        print(f"synthesising {args.per_class} samples per class into {data_dir} ...", file=sys.stderr)
        write_dataset(data_dir, per_class=args.per_class, seed=0)
    cache = workdir / "cache"
    print(f"preparing {data_dir} -> {cache} ...", file=sys.stderr)
    prepare(data_dir, cache, val_fraction=args.val_fraction, split_seed=0)
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--per-class", type=int, default=1000, help="synth samples per class (no --data-dir/--cache-dir)"
    )
    parser.add_argument("--epochs", type=int, default=4, help="epochs for both loops (>= 2 to exclude warm-up)")
    parser.add_argument("--strategy", default="late")
    parser.add_argument("--backbone", default="seed")
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="1e-3: on synthetic data both loops learn within a few epochs"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="validation share when preparing")
    parser.add_argument("--limit-per-class", type=int, default=None, help="subsample a big cache")
    parser.add_argument("--data-dir", type=Path, default=None, help="raw dataset to prepare (else synthesised)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="prepared cache to use as is")
    parser.add_argument(
        "--repeats", type=int, default=1, help="run this many seed-style/ours pairs; median ratio reported"
    )
    parser.add_argument("--also-fp32", action="store_true", help="also pair the seed-style loop with ours in fp32")
    parser.add_argument("--same-process", action="store_true", help="run both loops in this process (shared allocator)")
    args = parser.parse_args()

    ours_cfg = RunConfig(
        strategy=args.strategy, backbone=args.backbone, lr=args.lr, epochs=args.epochs, device=args.device,
    ).resolve()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fusioncli-bench-") as tmp:
        cache_dir = prepare_cache(args, Path(tmp))
        data = _load(cache_dir, args.limit_per_class, ours_cfg.device)
        print("machine:")
        print(f"  device      {ours_cfg.device} ({device_name(ours_cfg.device)})")
        print(
            f"  cpu         {cpu_model_name()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}"
        )
        print(f"  software    torch {torch.__version__}, python {platform.python_version()}")
        print(f"  bf16        {'on' if ours_cfg.precision == 'bf16' else 'off'} (our loop, --precision auto)")
        n_train, n_val = int((~data.is_val).sum()), int(data.is_val.sum())
        print(
            f"workload: {args.strategy}/{args.backbone}, {n_train} train / {n_val} val samples, {args.epochs} epochs, "
            f"batch {ours_cfg.batch_size}, lr {args.lr:g}, cosine; "
            f"{'one process' if args.same_process else 'one worker process per loop'}, loops alternate by epoch"
        )
        if not args.same_process:
            del data  # the workers load their own copy

        pairs: list[RunConfig] = []
        for _ in range(args.repeats):
            pairs.append(ours_cfg)
            if args.also_fp32 and ours_cfg.precision != "fp32":
                pairs.append(replace(ours_cfg, precision="fp32"))
        load_before = os.getloadavg()
        results: list[tuple[str, dict, dict]] = []
        for i, cfg in enumerate(pairs, 1):
            print(f"pair {i}/{len(pairs)}: seed-style vs ours ({cfg.precision}) ...", file=sys.stderr)
            if args.same_process:
                seed, ours = pair_in_this_process(cfg, data)
            else:
                seed, ours = pair_in_processes(cfg, cache_dir, args.limit_per_class)
            results.append((cfg.precision, seed, ours))
        load_after = os.getloadavg()
    report(results, load_before, load_after)


def report(results: list[tuple[str, dict, Any]], load_before: tuple, load_after: tuple) -> None:
    """Print every pair side by side, then the median ratio per precision of ours."""
    print()
    print(f"{'pair':<5} {'loop':<44} {'samples/s':>10} {'ratio':>7} {'median ep':>10} {'ratio':>7} {'val acc':>8}")
    for i, (precision, seed, ours) in enumerate(results, 1):
        for label, res in ((SEED_LABEL, seed), (f"fusioncli train_run ({precision})", ours)):
            print(
                f"#{i:<4} {label:<44} {res['samples_per_s']:>10.1f} "
                f"{res['samples_per_s'] / seed['samples_per_s']:>6.2f}x {res['median_epoch_samples_per_s']:>10.1f} "
                f"{res['median_epoch_samples_per_s'] / seed['median_epoch_samples_per_s']:>6.2f}x "
                f"{res['val_accuracy']:>8.4f}"
            )
    print()
    for precision in dict.fromkeys(p for p, _, _ in results):
        ratios = [o["samples_per_s"] / s["samples_per_s"] for p, s, o in results if p == precision]
        print(
            f"ours ({precision}) / seed-style: median ratio {statistics.median(ratios):.2f}x "
            f"over {len(ratios)} pair(s) ({', '.join(f'{r:.2f}' for r in ratios)})"
        )
    print(
        "samples/s: training samples per second over epochs 2..N (first epoch = warm-up, excluded; validation "
        "untimed); median ep: the same from the median epoch of 2..N"
    )
    print(
        f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} on {os.cpu_count()} CPUs "
        "(above ~0.2, other jobs were sharing the machine)"
    )


if __name__ == "__main__":
    main()
