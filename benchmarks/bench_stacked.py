"""Stacked vs one-at-a-time training: per-run throughput of the same grid in the same process.

One run of this script trains the same K configs (one strategy, K learning rates, the same
data and epochs) twice: one at a time with ``fusioncli.train.loop.train_run`` (what the sweep's
``loop`` executor does) and together with ``fusioncli.train.stacked.train_stacked`` (the
``stacked`` executor). It prints, side by side with the ratio:

* wall seconds for all K runs (training + validation of every epoch; the loop's is the sum of
  its runs' ``train_seconds``, the stack's the group's ``train_seconds``);
* training samples/s summed over the K runs, over epochs 2..N (first epoch = warm-up; the
  validation part of each epoch is not timed);
* how far the two executors' results are apart (they train the same models: in fp32 the gap is
  float rounding; under bf16 autocast a little more).

Both executors run once untimed on a tiny slice first (lazy imports, oneDNN/cuDNN set-up), and
with ``--repeats`` the order alternates, so neither side always runs on a warmer machine.

Usage (synthesises and prepares a dataset in a temp folder unless --cache-dir is given)::

    .venv/bin/python benchmarks/bench_stacked.py --per-class 150 --epochs 2 --lrs 1e-3,3e-4,1e-4,3e-5
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from fusioncli.config import RunConfig
from fusioncli.data.dataset import PreparedData
from fusioncli.machine import cpu_model_name, device_name
from fusioncli.train.loop import train_run
from fusioncli.train.stacked import train_stacked


def prepare_cache(args: argparse.Namespace, workdir: Path) -> Path:
    """The prepared cache: --cache-dir as is, else a synthetic dataset prepared in ``workdir``."""
    if args.cache_dir is not None:
        return args.cache_dir
    from fusioncli.data.cache import prepare
    from fusioncli.data.synth import write_dataset

    raw = workdir / "raw"
    print(f"synthesising {args.per_class} samples per class into {raw} ...", file=sys.stderr)
    write_dataset(raw, per_class=args.per_class, seed=0)
    cache = workdir / "cache"
    prepare(raw, cache, val_fraction=args.val_fraction, split_seed=0)
    return cache


def summarise(records: list[dict]) -> dict[str, float]:
    """Wall seconds and training samples/s (epochs 2..N) of K runs, however they were trained."""
    if records[0]["timing"].get("executor") == "stacked":
        # one group: its clock covers every run at once
        wall = records[0]["timing"]["train_seconds"]
        steady = records[0]["timing"]["train_epoch_seconds"][1:] or records[0]["timing"]["train_epoch_seconds"]
        steady_seconds = sum(steady)
    else:
        wall = sum(r["timing"]["train_seconds"] for r in records)
        steady_seconds = 0.0
        for r in records:
            s = r["timing"]["train_epoch_seconds"]
            steady = s[1:] or s
            steady_seconds += sum(steady)
    n_train = records[0]["dataset"]["n_train"]
    samples = n_train * len(steady) * len(records)
    return {"wall": wall, "samples_per_s": samples / steady_seconds, "per_run_wall": wall / len(records)}


def run_pair(configs: list[RunConfig], data: PreparedData, stacked_first: bool) -> dict[str, list[dict]]:
    """Train ``configs`` one at a time and stacked (in the order asked); the records of both."""
    out: dict[str, list[dict]] = {}
    order = ("stacked", "loop") if stacked_first else ("loop", "stacked")
    for name in order:
        print(f"  {name} ...", file=sys.stderr)
        if name == "loop":
            out[name] = [train_run(c, data).record.to_json() for c in configs]
        else:
            out[name] = [r.record.to_json() for r in train_stacked(configs, data)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=150, help="synth samples per class (no --cache-dir)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="validation share when preparing")
    parser.add_argument("--cache-dir", type=Path, default=None, help="prepared cache to use as is")
    parser.add_argument("--limit-per-class", type=int, default=None, help="subsample a big cache")
    parser.add_argument("--epochs", type=int, default=2, help=">= 2, so epoch 1 (warm-up) can be excluded")
    parser.add_argument("--strategy", default="late")
    parser.add_argument("--backbone", default="seed")
    parser.add_argument("--lrs", default="1e-3,3e-4,1e-4,3e-5", help="comma-separated: one run per learning rate")
    parser.add_argument(
        "--seeds",
        choices=("same", "distinct"),
        default="same",
        help="same: one seed (one shared batch order); distinct: seed 51+i per run (own orders)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=1, help="pairs to run; the order alternates")
    args = parser.parse_args()

    lrs = [float(x) for x in args.lrs.split(",")]
    configs = [
        RunConfig(
            strategy=args.strategy, backbone=args.backbone, lr=lr, epochs=args.epochs, batch_size=args.batch_size,
            seed=51 if args.seeds == "same" else 51 + i, device=args.device, precision=args.precision,
            limit_per_class=args.limit_per_class,
        ).resolve()
        for i, lr in enumerate(lrs)
    ]  # fmt: skip
    first = configs[0]
    with tempfile.TemporaryDirectory(prefix="fusioncli-bench-") as tmp:
        from fusioncli.data.cache import load_cache

        data = load_cache(prepare_cache(args, Path(tmp)), first.device)
        print("untimed warm-up of both executors ...", file=sys.stderr)
        tiny = [replace(c, epochs=1, limit_per_class=2) for c in configs[:2]]
        run_pair(tiny, data, stacked_first=False)

        load_before = os.getloadavg()
        pairs = []
        for i in range(args.repeats):
            print(f"pair {i + 1}/{args.repeats}:", file=sys.stderr)
            pairs.append(run_pair(configs, data, stacked_first=i % 2 == 1))
        load_after = os.getloadavg()

    limited = data.limit_per_class(args.limit_per_class)
    n_val = int(limited.is_val.sum())
    n_train = len(limited) - n_val
    print(f"command: .venv/bin/python {shlex.join(sys.argv)}")
    print(
        f"device: {first.device} ({device_name(first.device)}); cpu {cpu_model_name()}, {os.cpu_count()} logical "
        f"CPUs, torch threads {torch.get_num_threads()}; torch {torch.__version__}, python {platform.python_version()}"
    )
    print(
        f"workload: {len(configs)} runs of {first.strategy}/{first.backbone} (lr {', '.join(f'{x:g}' for x in lrs)}; "
        f"seeds {args.seeds}), {n_train} train / {n_val} val samples, {first.epochs} epochs, batch {first.batch_size}, "
        f"precision {first.precision}"
    )
    print()
    print(
        f"{'pair':<5} {'executor':<28} {'wall s (all runs)':>18} {'per run s':>10} "
        f"{'samples/s (all runs)':>21} {'ratio':>7}"
    )
    ratios = []
    for i, pair in enumerate(pairs, 1):
        loop_sum, stack_sum = summarise(pair["loop"]), summarise(pair["stacked"])
        ratio = stack_sum["samples_per_s"] / loop_sum["samples_per_s"]
        ratios.append(ratio)
        sides = (("one at a time (train_run)", loop_sum, 1.0), (f"stacked (group of {len(configs)})", stack_sum, ratio))
        for label, s, r in sides:
            print(
                f"#{i:<4} {label:<28} {s['wall']:>18.2f} {s['per_run_wall']:>10.2f} "
                f"{s['samples_per_s']:>21.1f} {r:>6.2f}x"
            )
        loss_gap = max(
            abs(a["metrics"]["val_loss"] - b["metrics"]["val_loss"]) for a, b in zip(pair["loop"], pair["stacked"])
        )
        acc_gap = max(
            abs(a["metrics"]["val_accuracy"] - b["metrics"]["val_accuracy"])
            for a, b in zip(pair["loop"], pair["stacked"])
        )
        print(f"      same results? max |val_loss gap| {loss_gap:.2e}, max |val_accuracy gap| {acc_gap:.4f}")
    print()
    print(
        f"stacked / one at a time, training samples/s: median {statistics.median(ratios):.2f}x over "
        f"{len(ratios)} pair(s) ({', '.join(f'{r:.2f}' for r in ratios)})"
    )
    print(
        "wall s: training + validation of all runs; samples/s: training samples of all runs per second over "
        "epochs 2..N (validation untimed)"
    )
    print(
        f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
