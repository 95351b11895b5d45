"""A whole sweep grid, end to end, the way ``fusioncli sweep`` runs it: wall time and per-run throughput.

Issue 6's target is the seed's full grid — 4 strategies (late, intermediate-concat/add/multiply)
x 3 learning rates (1e-4, 1e-5, 1e-6) x 2 schedulers (cosine, constant), seed 51: 24 runs of 15
epochs, batch 32, on the seed's split of 2 x 9,999 samples (19,358 train / 640 validation) — in
at most 60 s on one H100. This script times exactly that through ``run_sweep`` (the library
call behind ``fusioncli sweep``: results store, per-epoch validation, records and all; only
``--robustness`` is off), with the executor asked for (``--executor``, default ``auto``:
stacked on CUDA, the plain loop on the CPU).

For the side-by-side figure it then trains the first ``--baseline-runs`` runs of the same grid
one at a time (``--executor loop``) in the same process and prints per-run throughput (training
samples of one run per second of wall time, validation included) of both, as a ratio. The grid
wall time of the loop is *extrapolated* from those runs (and said to be). The baseline runs
second, on a warmed-up device, so the ratio leans towards the loop, not the grid.

Data: synthesised (``--per-class``, default 9,999, the real set's size) and prepared with the
seed's split into a temporary folder, unless ``--cache-dir`` points at a prepared cache.

    python benchmarks/bench_grid.py                      # the issue-6 target (GPU machine)
    python benchmarks/bench_grid.py --per-class 400 --epochs 2 --strategies late --lrs 1e-4 \\
        --device cpu --baseline-runs 1                   # a small CPU smoke run

``--json PATH`` also writes every figure (and the per-run records' timing/memory) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fusioncli.config import SCHEDULERS, field_info
from fusioncli.data.cache import SEED_VAL_PER_CLASS
from fusioncli.machine import cpu_model_name, device_name
from fusioncli.results.store import ResultsStore
from fusioncli.sweep.grid import expand_grid, parse_choices, parse_floats, parse_ints, split_list
from fusioncli.sweep.plan import DEFAULT_MAX_GROUP, choose_executor
from fusioncli.sweep.runner import SweepSummary, run_sweep

TARGET_SECONDS = 60.0  # issue 6: the seed's full grid on one H100


def prepare_cache(args: argparse.Namespace, workdir: Path) -> Path:
    """The prepared cache: --cache-dir as is, else synthetic data prepared with the seed's split."""
    if args.cache_dir is not None:
        return args.cache_dir
    from fusioncli.data.cache import prepare
    from fusioncli.data.synth import write_dataset

    raw = workdir / "raw"
    t0 = time.perf_counter()
    write_dataset(raw, per_class=args.per_class, seed=0, workers=args.synth_workers)
    t1 = time.perf_counter()
    cache = workdir / "cache"
    # The seed's split (its last 320 per class are validation) needs more samples than that;
    # smaller smoke runs use a stratified 20 % instead.
    prepare(raw, cache, val_fraction=None if args.per_class > 2 * SEED_VAL_PER_CLASS else 0.2)
    t2 = time.perf_counter()
    print(f"synth {t1 - t0:.1f} s, prepare {t2 - t1:.1f} s ({2 * args.per_class} samples)", file=sys.stderr)
    return cache


def timed_sweep(
    configs: list, data: Any, store_dir: Path, executor: str, max_group: int, compile: bool = False
) -> tuple[SweepSummary, float]:
    """Run ``configs`` into a fresh store at ``store_dir``; the summary and its wall seconds."""

    started = time.perf_counter()

    def progress(outcome: Any) -> None:
        # With the elapsed time, so a run cut off by a time limit still tells how far it got.
        acc = outcome.record.val_accuracy if outcome.record is not None else None
        print(
            f"  {time.perf_counter() - started:7.1f} s [{outcome.index}/{outcome.total}] {outcome.status} "
            f"{outcome.config.strategy} lr {outcome.config.lr:g} {outcome.config.scheduler}: "
            f"val acc {float('nan') if acc is None else acc:.4f}",
            file=sys.stderr,
        )

    summary = run_sweep(
        configs, data, ResultsStore(store_dir), executor=executor, max_group=max_group, keep_best=False,
        on_run_end=progress, compile=compile,
    )  # fmt: skip
    return summary, time.perf_counter() - started


def per_run_figures(summary: SweepSummary, wall: float) -> dict[str, Any]:
    """Per-run throughput of a finished sweep: one run's training samples per second of grid wall time."""
    records = [o.record.to_json() for o in summary.finished]
    if not records:
        return {"runs": 0}
    n_train = records[0]["dataset"]["n_train"]
    epochs = records[0]["config"]["epochs"]
    groups = {}
    for r in records:
        t = r["timing"]
        key = tuple(t.get("stacked_run_ids") or [r["run_id"]])
        groups[key] = {
            "runs": len(key),
            "train_seconds": t["train_seconds"],
            "cuda_graph": t.get("cuda_graph", "-"),
            "compile": t.get("compile", "-"),
            "peak_gpu_allocated_bytes": (r.get("memory") or {}).get("peak_gpu_allocated_bytes"),
        }
    return {
        "runs": len(records),
        "failed": len(summary.failed),
        "wall_seconds": wall,
        "per_run_wall_seconds": wall / len(records),
        "per_run_samples_per_s": n_train * epochs * len(records) / wall,
        "n_train": n_train,
        "epochs": epochs,
        "mean_val_accuracy": sum(r["metrics"]["val_accuracy"] for r in records) / len(records),
        "groups": list(groups.values()),
    }


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=9999, help="synth samples per class (no --cache-dir)")
    parser.add_argument("--synth-workers", type=int, default=None, help="synth worker processes (default: all CPUs)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="prepared cache to use as is")
    # The seed notebook's grid: the sweep's own defaults.
    for name, flag in (
        ("strategy", "--strategies"),
        ("lr", "--lrs"),
        ("scheduler", "--schedulers"),
        ("seed", "--seeds"),
    ):
        parser.add_argument(flag, default=field_info(name).grid_default)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="seed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--executor", default="auto", choices=("auto", "loop", "stacked"))
    parser.add_argument("--max-group", type=int, default=16)
    parser.add_argument("--compile", action="store_true", help="torch.compile each stacked group's forward")
    parser.add_argument(
        "--baseline-runs", type=int, default=2, help="runs of the grid trained one at a time for the ratio (0: none)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    configs = expand_grid(
        strategies=split_list(args.strategies, "--strategies"),
        lrs=parse_floats(args.lrs, "--lrs"),
        schedulers=parse_choices(args.schedulers, "--schedulers", SCHEDULERS),
        seeds=parse_ints(args.seeds, "--seeds"),
        epochs=args.epochs, batch_size=args.batch_size, backbone=args.backbone, device=args.device,
        precision=args.precision,
    )  # fmt: skip
    first = configs[0].resolve()
    results: dict[str, Any] = {"command": "python " + shlex.join(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="fusioncli-bench-grid-") as tmp:
        from fusioncli.data.cache import load_cache

        t0 = time.perf_counter()
        data = load_cache(prepare_cache(args, Path(tmp)), first.device)
        results["load_seconds"] = time.perf_counter() - t0
        print(f"grid: {len(configs)} runs on {first.device}, executor {args.executor}", file=sys.stderr)
        grid_summary, grid_wall = timed_sweep(
            configs, data, Path(tmp) / "grid", args.executor, args.max_group, args.compile
        )
        results["grid"] = {"executor": args.executor, **per_run_figures(grid_summary, grid_wall)}
        if args.baseline_runs > 0:
            base = configs[: args.baseline_runs]
            print(f"baseline: the first {len(base)} run(s), one at a time (loop)", file=sys.stderr)
            base_summary, base_wall = timed_sweep(base, data, Path(tmp) / "baseline", "loop", DEFAULT_MAX_GROUP)
            results["baseline"] = {"executor": "loop", **per_run_figures(base_summary, base_wall)}

    grid = results["grid"]
    print(f"command: {results['command']}")
    print(
        f"device: {first.device} ({device_name(first.device)}); cpu {cpu_model_name()}, {os.cpu_count()} logical CPUs; "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )
    print(
        f"workload: {len(configs)} runs ({args.strategies} x lr {args.lrs} x {args.schedulers} x seeds {args.seeds}), "
        f"{grid.get('n_train')} train samples, {args.epochs} epochs, batch {args.batch_size}, precision "
        f"{first.precision}; cache load {results['load_seconds']:.1f} s (not in the grid's time)"
    )
    print()
    print(f"{'executor':<26} {'runs':>5} {'wall s':>9} {'per run s':>10} {'per-run samples/s':>18} {'ratio':>7}")
    compiled = ", compiled" if args.compile else ""
    rows = [(f"grid ({choose_executor(first.device, args.executor)}{compiled})", grid)]
    if "baseline" in results:
        rows.append(("one at a time (loop)", results["baseline"]))
    base_rate = results["baseline"].get("per_run_samples_per_s") if "baseline" in results else None
    for label, fig in rows:
        if not fig.get("runs"):
            print(f"{label:<26} no run finished")
            continue
        ratio = f"{fig['per_run_samples_per_s'] / base_rate:.2f}x" if base_rate else "-"
        print(
            f"{label:<26} {fig['runs']:>5} {fig['wall_seconds']:>9.1f} {fig['per_run_wall_seconds']:>10.2f} "
            f"{fig['per_run_samples_per_s']:>18.1f} {ratio:>7}"
        )
    print()
    if grid.get("runs"):
        print(
            f"grid wall: {grid['wall_seconds']:.1f} s for {grid['runs']} runs (target for the seed grid on one H100: "
            f"<= {TARGET_SECONDS:.0f} s); failed runs: {grid['failed']}; "
            f"mean val accuracy {grid['mean_val_accuracy']:.4f}"
        )
        if base_rate:
            loop_grid = len(configs) * results["baseline"]["per_run_wall_seconds"]
            print(
                f"one at a time, extrapolated from {results['baseline']['runs']} run(s): "
                f"~{loop_grid:.0f} s for the grid"
            )
        for g in grid["groups"][:8]:
            print(
                f"  group of {g['runs']}: train {g['train_seconds']:.1f} s, peak GPU allocated "
                f"{gib(g['peak_gpu_allocated_bytes'])}, CUDA graph: {g['cuda_graph']}, compile: {g['compile']}"
            )
    print("per-run samples/s: (train samples x epochs x runs) / wall; wall includes validation and the store's writes")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0 if grid.get("runs") and not grid.get("failed") else 1


if __name__ == "__main__":
    sys.exit(main())
