"""Training throughput: fusioncli's loop vs a seed-notebook-style loop, same model, same data.

Both run in this process on the same prepared data and the same model class, for the same
number of epochs, and report training samples/s over epochs 2..N (the first epoch is warm-up;
validation is not timed) plus the final validation accuracy. The two loops take turns epoch by
epoch (seed 1, ours 1, seed 2, ...), so a machine shared with other work slows both alike; the
load average before and after is printed so a reader can judge.

* ours: ``fusioncli.train.loop.train_run`` -- data on the device, batches by index from a seeded
  permutation, channels_last, bf16 autocast where native (``--precision auto``), fused Adam, no
  per-step sync.
* seed-style: what the seed notebook did -- a ``torch.utils.data.DataLoader`` (shuffle=True,
  batch 32) over a list of per-sample ``(rgb, xyza, label)`` tensors, fp32, plain Adam,
  ``loss.item()`` every step.

Usage (synthesises and prepares a dataset in a temp folder unless --cache-dir is given)::

    .venv/bin/python benchmarks/bench_train.py --per-class 1000 --epochs 4 --strategy late --repeats 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from fusioncli.data.dataset import PreparedData
from fusioncli.models import create_model
from fusioncli.train.config import RunConfig
from fusioncli.train.device import cpu_model_name, device_name
from fusioncli.train.loop import train_run
from fusioncli.train.probes import clock


def seed_style_epochs(cfg: RunConfig, data: PreparedData) -> Iterator[dict]:
    """The seed notebook's loop on ``data`` (already limited), fp32; yields after every epoch.

    A generator, so the benchmark can interleave its epochs with ours.
    """
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.strategy, cfg.backbone, data.num_classes).to(device)

    def samples(indices: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        # The seed's Dataset held one (rgb, xyza, label) tensor triple per sample.
        return [(data.rgb[i].float() / 255, data.xyza[i], data.labels[i]) for i in indices.tolist()]

    train_set, val_set = samples(data.train_indices), samples(data.val_indices)
    # Its own generator: our run re-seeds the global RNG between the interleaved epochs.
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
        seconds = clock(device) - t0
        scheduler.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for rgb, xyza, target in val_loader:
                correct += (model(rgb.to(device), xyza.to(device)).argmax(1) == target.to(device)).sum().item()
        yield {"epoch": epoch, "train_seconds": seconds, "val_accuracy": correct / len(val_set), "n_train": len(train_set)}


def interleaved_pair(cfg: RunConfig, data: PreparedData) -> tuple[dict, dict]:
    """Run the seed-style loop and ``train_run`` epoch by epoch in turn (seed 1, ours 1, seed 2,
    ours 2, ...), so another process that loads the machine for a while slows both alike.

    Returns ``(seed_style, ours)`` results: samples/s, median-epoch samples/s, final val accuracy.
    """
    seed_epochs = seed_style_epochs(cfg, data)
    seed_rows = [next(seed_epochs)]
    log_epoch("seed-style", seed_rows[-1]["epoch"], seed_rows[-1]["train_seconds"], seed_rows[-1]["val_accuracy"])

    def on_epoch(row: dict) -> None:
        log_epoch(f"ours ({cfg.precision})", row["epoch"], row["seconds"], row["val_accuracy"])
        if len(seed_rows) < cfg.epochs:  # our clock is stopped while the seed-style epoch runs
            seed_rows.append(next(seed_epochs))
            r = seed_rows[-1]
            log_epoch("seed-style", r["epoch"], r["train_seconds"], r["val_accuracy"])

    rec = train_run(cfg, data, on_epoch=on_epoch).record
    seed = _throughput(seed_rows[0]["n_train"], [r["train_seconds"] for r in seed_rows])
    seed["val_accuracy"] = seed_rows[-1]["val_accuracy"]
    ours = _throughput(rec["dataset"]["n_train"], rec["timing"]["train_epoch_seconds"])
    ours["val_accuracy"] = rec["metrics"]["val_accuracy"]
    return seed, ours


def log_epoch(loop: str, epoch: int, seconds: float, accuracy: float) -> None:
    print(f"  {loop:<12} epoch {epoch}: {seconds:6.1f}s  val_acc {accuracy:.4f}", file=sys.stderr)


def _throughput(n_train: int, train_epoch_seconds: list[float]) -> dict[str, float]:
    """samples/s over epochs 2..N: overall (as the run record) and the median epoch's."""
    steady = train_epoch_seconds[1:] if len(train_epoch_seconds) > 1 else train_epoch_seconds
    return {
        "samples_per_s": n_train * len(steady) / sum(steady),
        # the median epoch is robust to another process stealing the CPU for part of the run
        "median_epoch_samples_per_s": n_train / statistics.median(steady),
    }


def prepared_data(args: argparse.Namespace, workdir: Path) -> PreparedData:
    from fusioncli.data.cache import load_cache, prepare

    if args.cache_dir is not None:
        return load_cache(args.cache_dir)
    data_dir = args.data_dir
    if data_dir is None:
        from fusioncli.data.synth import write_dataset

        data_dir = workdir / "raw"
        print(f"synthesising {args.per_class} samples per class into {data_dir} ...", file=sys.stderr)
        write_dataset(data_dir, per_class=args.per_class, seed=0)
    cache = workdir / "cache"
    print(f"preparing {data_dir} -> {cache} ...", file=sys.stderr)
    prepare(data_dir, cache, val_fraction=args.val_fraction, split_seed=0)
    return load_cache(cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=1000, help="synth samples per class (no --data-dir/--cache-dir)")
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
    parser.add_argument("--repeats", type=int, default=1, help="run this many seed-style/ours pairs; median ratio reported")
    parser.add_argument("--also-fp32", action="store_true", help="also run our loop in fp32 (where the gain comes from)")
    args = parser.parse_args()

    ours_cfg = RunConfig(
        strategy=args.strategy, backbone=args.backbone, lr=args.lr, epochs=args.epochs, device=args.device,
        limit_per_class=args.limit_per_class,
    ).resolve()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fusioncli-bench-") as tmp:
        data = prepared_data(args, Path(tmp)).limit_per_class(args.limit_per_class).to(ours_cfg.device)
        run_both(args, ours_cfg, data)


def run_both(args: argparse.Namespace, ours_cfg: RunConfig, data: PreparedData) -> None:
    """Run the seed-style loop and ours on ``data`` and print the side-by-side table."""

    print("machine:")
    print(f"  device      {ours_cfg.device} ({device_name(ours_cfg.device)})")
    print(f"  cpu         {cpu_model_name()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}")
    print(f"  software    torch {torch.__version__}, python {platform.python_version()}")
    print(f"  bf16        {'on' if ours_cfg.precision == 'bf16' else 'off'} (our loop, --precision auto)")
    n_train, n_val = int((~data.is_val).sum()), int(data.is_val.sum())
    print(
        f"workload: {args.strategy}/{args.backbone}, {n_train} train / {n_val} val samples, {args.epochs} epochs, "
        f"batch {ours_cfg.batch_size}, lr {args.lr:g}, cosine"
    )

    # One pair per repeat (and per precision of ours); each pair is interleaved by epoch.
    pairs: list[tuple[str, RunConfig]] = []
    for _ in range(args.repeats):
        pairs.append((ours_cfg.precision, ours_cfg))
        if args.also_fp32 and ours_cfg.precision != "fp32":
            pairs.append(("fp32", replace(ours_cfg, precision="fp32")))
    load_before = os.getloadavg()
    results: list[tuple[str, dict, dict]] = []
    for i, (precision, cfg) in enumerate(pairs, 1):
        print(f"pair {i}/{len(pairs)}: seed-style vs ours ({precision}), interleaved by epoch ...", file=sys.stderr)
        seed, ours = interleaved_pair(cfg, data)
        results.append((precision, seed, ours))
    load_after = os.getloadavg()

    seed_label = "seed-style (DataLoader, fp32, .item()/step)"
    print()
    print(f"{'pair':<5} {'loop':<44} {'samples/s':>10} {'ratio':>7} {'median ep':>10} {'ratio':>7} {'val acc':>8}")
    for i, (precision, seed, ours) in enumerate(results, 1):
        for label, res in ((seed_label, seed), (f"fusioncli train_run ({precision})", ours)):
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
    print(f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} "
          f"on {os.cpu_count()} CPUs (other processes share the machine when > 0)")  # fmt: skip


if __name__ == "__main__":
    main()
