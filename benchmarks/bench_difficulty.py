"""The difficulty ladder of `fusioncli synth`: does fusion beat the best single modality, reliably?

    .venv/bin/python benchmarks/bench_difficulty.py [--difficulties hard] [--per-class 1000]
        [--strategies rgb-only,lidar-only,late,decision,intermediate-concat] [--epochs 6]
        [--seeds 51,52,53] [--lidar-norms seed,nearest] [--rgb-norms seed,standard] [--train-sizes 400,800,2000]
        [--report-epochs 3,6] [--threads 2] [--json out.json]

For each difficulty it renders a dataset (`write_dataset` with that preset), prepares it
(`fusioncli.data.cache.prepare`, a stratified 20 % validation split), loads it (`load_cache`)
and trains every strategy x LiDAR input (`--lidar-norms`) x camera input (`--rgb-norms`) x
training-set size (`--train-sizes`, training samples per class; validation is never cut, so
every size is scored on the same samples) x seed with the library (`RunConfig` + `train_run`),
on the same data and budget.

It prints, per difficulty, LiDAR input, training size and reported epoch, each strategy's
validation accuracy as mean and 95 % CI over seeds (Student t), the best fusion strategy
against the best unimodal baseline (rgb-only, lidar-only) -- the gap, and whether their CIs are
disjoint -- and the order of the fusion strategies, with the pairs whose difference is within
noise (paired t-test over seeds, p >= 0.05) marked `~`. Then accuracy by sensor failure (the
samples whose camera / LiDAR failed: a unimodal model's ceiling on `hard` is 75 %).

`--report-epochs` reads the accuracy after those epochs from each run's history: with the
constant learning rate, training for k epochs is exactly the first k epochs of a longer run,
so one run gives the gap at several budgets (refused with `--scheduler cosine`).

Why `--lidar-norms`: with the seed's LiDAR input (x, y, z / 50) the LiDAR models sit at chance
for a long, seed- and thread-dependent stretch; `nearest` (RunConfig.lidar_norm, see
fusioncli/models/inputs.py) learns the depth shape within a few epochs. Likewise `--rgb-norms`:
with the seed's pixel / 255 the dim camera of `hard` leaves the models at chance for up to 6 of
8 epochs on some seeds; `standard` (each image at mean 0, std 1) learns it in 1-3. benchmarks/RESULTS.md
has the measurements and the budget table this script reproduces.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusioncli.config import LIDAR_NORMS, RGB_NORMS, RunConfig
from fusioncli.data.cache import load_cache, prepare
from fusioncli.data.dataset import PreparedData
from fusioncli.data.synth import LIDAR, RGB, difficulty_params, sample_scene, write_dataset
from fusioncli.results.stats import mean_ci95, paired_test
from fusioncli.train import engine
from fusioncli.train.loop import train_run

UNIMODAL = ("rgb-only", "lidar-only")
DEFAULT_STRATEGIES = ("rgb-only", "lidar-only", "late", "decision", "intermediate-concat")
GROUPS = (("no failure", ""), ("RGB failed", RGB), ("LiDAR failed", LIDAR))

# (difficulty, lidar_norm, rgb_norm, train size or None, epoch) -> strategy -> accuracy per seed
Cell = tuple[str, str, str, int | None, int]


def failures_of_rows(cache_dir: Path, raw_seed: int, difficulty: str) -> np.ndarray:
    """Which sensor failed in each cache row: "rgb", "lidar" or "" (from the cache's index).

    A sample's scene is a function of (seed, class, index), so the sampler says which sensor
    the renderer took out, without looking at the pixels.
    """
    import pyarrow.parquet as pq

    index = pq.read_table(cache_dir / "index.parquet", columns=["row", "label", "stem"]).to_pydict()
    order = np.argsort(index["row"])
    params = difficulty_params(difficulty)
    return np.array(
        [sample_scene(index["label"][i], int(index["stem"][i]), raw_seed, params).corrupt or "" for i in order]
    )


def val_predictions(model: torch.nn.Module, data: PreparedData, precision: str) -> np.ndarray:
    """The model's class for every validation sample, as the loop evaluated it (engine.predict)."""
    model.eval()
    device = torch.device("cpu")
    out = engine.predict(
        model, data, device=device, precision=precision, batch_size=engine.eval_batch_size(device, 16),
        indices=data.val_indices, loss=False,
    )  # fmt: skip
    return out.classes.numpy()


def _ci(values: Sequence[float]) -> str:
    mean, lo, hi = mean_ci95([100 * v for v in values])
    if not values:
        return "-"
    return f"{mean:.1f}" if len(values) < 2 else f"{mean:.1f} ±{(hi - lo) / 2:.1f}"


def fusion_order(accs: dict[str, list[float]], fusion: Sequence[str]) -> str:
    """Fusion strategies best first; ``~`` joins neighbours whose paired difference is within noise."""
    ranked = sorted(fusion, key=lambda s: -float(np.mean(accs[s])))
    text = ranked[0]
    for better, worse in itertools.pairwise(ranked):
        text += f" {'>' if paired_test(accs[better], accs[worse]).significant else '~'} {worse}"
    return text


def gap_line(accs: dict[str, list[float]]) -> tuple[str, dict[str, Any]]:
    fused = {s: v for s, v in accs.items() if s not in UNIMODAL}
    single = {s: v for s, v in accs.items() if s in UNIMODAL}
    if not fused or not single:
        return "(need a fusion and a unimodal strategy for the gap)", {}
    best_f = max(fused, key=lambda s: float(np.mean(fused[s])))
    best_u = max(single, key=lambda s: float(np.mean(single[s])))
    f_mean, f_lo, _ = mean_ci95(fused[best_f])
    u_mean, _, u_hi = mean_ci95(single[best_u])
    gap = 100 * (f_mean - u_mean)
    disjoint = bool(f_lo > u_hi)  # NaN (one seed) compares False: not shown to be separate
    text = (
        f"best fusion {best_f} {_ci(fused[best_f])} vs best unimodal {best_u} {_ci(single[best_u])}: "
        f"gap {gap:+.1f} points, CIs {'disjoint' if disjoint else 'overlap'}"
    )
    if len(fused) > 1:
        text += f"; fusion order: {fusion_order(fused, list(fused))}"
    return text, {"best_fusion": best_f, "best_unimodal": best_u, "gap_points": gap, "cis_disjoint": disjoint}


def print_tables(
    runs: Sequence[dict[str, Any]], strategies: Sequence[str], epochs: Sequence[int]
) -> list[dict[str, Any]]:
    """Accuracy (mean ± 95 % CI over seeds) per cell, the gap and the fusion order."""
    cells: dict[Cell, dict[str, list[float]]] = {}
    shares: dict[str, dict[str, float]] = {}
    for run in sorted(runs, key=lambda r: r["seed"]):
        shares[run["difficulty"]] = run["failure_shares"]
        rgb_norm = run.get("rgb_norm", "seed")  # JSON written before --rgb-norms: the seed's camera input
        for epoch in epochs:
            cell = cells.setdefault((run["difficulty"], run["lidar_norm"], rgb_norm, run["train_per_class"], epoch), {})
            cell.setdefault(run["strategy"], []).append(run["val_accuracy_by_epoch"][epoch - 1])
    width = max(len(s) for s in strategies) + 2
    summary = []
    print("validation accuracy, % (mean ± 95 % CI half-width over seeds)")
    for (difficulty, norm, rgb_norm, size, epoch), accs in cells.items():
        failed = shares[difficulty][RGB] + shares[difficulty][LIDAR]
        ceiling = f"unimodal ceiling {100 * (1 - failed / 4):.1f}" if failed else "no sensor failures"
        size_text = "all" if size is None else str(size)
        print(
            f"\n[{difficulty}] lidar input {norm}, camera input {rgb_norm}, train {size_text}/class, "
            f"epoch {epoch} ({ceiling})"
        )
        for strategy in strategies:
            if strategy in accs:
                seeds_text = " ".join(f"{100 * v:.1f}" for v in accs[strategy])
                print(f"  {strategy:<{width}}{_ci(accs[strategy]):>12}   seeds: {seeds_text}")
        text, facts = gap_line(accs)
        print(f"  {text}")
        summary.append({
            "difficulty": difficulty, "lidar_norm": norm, "rgb_norm": rgb_norm, "train_per_class": size,
            "epoch": epoch, **facts,
        })  # fmt: skip
    by_group: dict[tuple[str, str, str, int | None, str], dict[str, list[float]]] = {}
    for run in runs:
        key = (run["difficulty"], run["lidar_norm"], run.get("rgb_norm", "seed"), run["train_per_class"])
        groups = by_group.setdefault((*key, run["strategy"]), {})
        for key, value in run["accuracy_by_failure"].items():
            groups.setdefault(key, []).append(value)
    print("\naccuracy by sensor failure at the last epoch, % of each group's validation samples (mean over seeds)")
    print(
        f"  {'difficulty, lidar/camera input, train size':<44}{'strategy':<{width}}"
        + "".join(f"{n:>14}" for n, _ in GROUPS)
    )
    for (difficulty, norm, rgb_norm, size, strategy), groups in by_group.items():
        label = f"{difficulty}, {norm}/{rgb_norm}, {'all' if size is None else size}"
        cells_text = [f"{100 * np.mean(groups[key]):.1f}" if groups.get(key) else "-" for _, key in GROUPS]
        print(f"  {label:<44}{strategy:<{width}}" + "".join(f"{c:>14}" for c in cells_text))
    for difficulty, share in shares.items():
        print(f"  {difficulty}: groups hold " + ", ".join(f"{name} {100 * share[key]:.0f}%" for name, key in GROUPS))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--difficulties", default="hard")
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES))
    parser.add_argument("--per-class", type=int, default=1000, help="samples per class rendered (default 1000)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="validation share (default 0.2)")
    parser.add_argument(
        "--train-sizes", default="all", help="comma list of training samples per class, or all (default all)"
    )
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--report-epochs", default="", help="comma list of epochs to report (default: the last)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--scheduler", default="constant", choices=("constant", "cosine"))
    parser.add_argument("--backbone", default="seed", choices=("seed", "lab"))
    parser.add_argument("--lidar-norms", default="nearest", help=f"comma list of {', '.join(LIDAR_NORMS)}")
    parser.add_argument("--rgb-norms", default="standard", help=f"comma list of {', '.join(RGB_NORMS)}")
    parser.add_argument("--seeds", default="51,52,53", help="training seeds, comma-separated (default 51,52,53)")
    parser.add_argument("--data-seed", type=int, default=0, help="synth seed (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--json", type=Path, help="also write every run's accuracy curve and the summary here")
    parser.add_argument(
        "--merge", type=Path, nargs="+", help="print the tables of saved --json files together; trains nothing"
    )
    parser.add_argument(
        "--dir", type=Path, default=Path(__file__).parent / "_work", help="scratch folder (default benchmarks/_work)"
    )
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, [int(e) for e in args.report_epochs.split(",") if e])
        return
    difficulties = [d for d in args.difficulties.split(",") if d]
    strategies = [s for s in args.strategies.split(",") if s]
    norms = [n for n in args.lidar_norms.split(",") if n]
    rgb_norms = [n for n in args.rgb_norms.split(",") if n]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    sizes: list[int | None] = [None if s == "all" else int(s) for s in args.train_sizes.split(",") if s]
    report_epochs = [int(e) for e in args.report_epochs.split(",") if e] or [args.epochs]
    if args.scheduler != "constant" and report_epochs != [args.epochs]:
        parser.error("--report-epochs needs --scheduler constant (a cosine run's epoch k is not a k-epoch run)")
    if any(not 1 <= e <= args.epochs for e in report_epochs):
        parser.error(f"--report-epochs must lie in 1..{args.epochs}")
    torch.set_num_threads(args.threads)

    print("command: .venv/bin/python benchmarks/bench_difficulty.py " + shlex.join(sys.argv[1:]))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}, {cpus} CPUs usable, "
        f"{args.threads} torch threads; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"budget: {args.per_class} per class rendered, val fraction {args.val_fraction}, training sizes "
        f"{args.train_sizes} per class, {args.epochs} epochs of batch {args.batch_size}, backbone {args.backbone}, "
        f"lr {args.lr:g} {args.scheduler}, lidar inputs {norms}, camera inputs {rgb_norms}, seeds {seeds}, "
        f"synth seed {args.data_seed}\n"
    )
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench_difficulty.", dir=args.dir))
    started = time.perf_counter()
    shares: dict[str, dict[str, float]] = {}
    runs: list[dict[str, Any]] = []
    try:
        for difficulty in difficulties:
            raw, cache = scratch / f"raw-{difficulty}", scratch / f"cache-{difficulty}"
            t0 = time.perf_counter()
            summary = write_dataset(raw, per_class=args.per_class, seed=args.data_seed, difficulty=difficulty)
            prepare(raw, cache, val_fraction=args.val_fraction, split_seed=0)
            data = load_cache(cache)
            val_failed = failures_of_rows(cache, args.data_seed, difficulty)[data.is_val.numpy()]
            shares[difficulty] = {key: float((val_failed == key).mean()) for _, key in GROUPS}
            labels = data.labels[data.is_val].numpy()
            print(
                f"[{difficulty}] rendered {summary.total} samples in {summary.seconds:.1f} s, prepared and loaded "
                f"in {time.perf_counter() - t0 - summary.seconds:.1f} s; {len(labels)} validation samples, "
                f"camera failed in {shares[difficulty][RGB]:.0%}, LiDAR in {shares[difficulty][LIDAR]:.0%}",
                flush=True,
            )
            for norm, rgb_norm in itertools.product(norms, rgb_norms):
                for size in sizes:
                    for strategy in strategies:
                        for seed in seeds:
                            t1 = time.perf_counter()
                            cfg = RunConfig(
                                strategy=strategy, backbone=args.backbone, lr=args.lr, scheduler=args.scheduler,
                                epochs=args.epochs, batch_size=args.batch_size, seed=seed, device="cpu",
                                precision=args.precision, train_per_class=size, lidar_norm=norm,
                                rgb_norm=rgb_norm,
                            )  # fmt: skip
                            result = train_run(cfg, data)
                            record = result.record.to_json()
                            curve = [row["val_accuracy"] for row in record["history"]]
                            right = val_predictions(result.model, data, record["config"]["precision"]) == labels
                            groups = {
                                key: float(right[val_failed == key].mean())
                                for _, key in GROUPS
                                if (val_failed == key).any()
                            }
                            seconds = time.perf_counter() - t1
                            runs.append({
                                "difficulty": difficulty, "lidar_norm": norm, "rgb_norm": rgb_norm,
                                "train_per_class": size,
                                "strategy": strategy, "seed": seed, "val_accuracy_by_epoch": curve,
                                "accuracy_by_failure": groups, "failure_shares": shares[difficulty],
                                "seconds": seconds, "precision": record["config"]["precision"],
                                "threads": args.threads,
                            })  # fmt: skip
                            if args.json:  # after every run: a run cut short keeps what it finished
                                save_json(args.json, sys.argv, time.perf_counter() - started, runs, [])
                            print(
                                f"  {norm}/{rgb_norm:<9} train {'all' if size is None else size:>5} "
                                f"{strategy:<22} seed {seed}: "
                                f"val acc {curve[-1]:.4f} ({seconds:.0f} s; by epoch "
                                + " ".join(f"{100 * v:.0f}" for v in curve) + ")",
                                flush=True,
                            )  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s ({total / 60:.1f} min)\n")
    summary_rows = print_tables(runs, strategies, report_epochs)
    if args.json:
        save_json(args.json, sys.argv, total, runs, summary_rows)


def save_json(
    path: Path, command: list[str], seconds: float, runs: list[dict[str, Any]], summary: list[dict[str, Any]]
) -> None:
    """Every run's accuracy curve (and the summary) as JSON, replaced atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"command": command, "seconds": seconds, "runs": runs, "summary": summary}, indent=1))
    tmp.replace(path)


def merge(paths: Sequence[Path], report_epochs: Sequence[int]) -> None:
    """Print the tables of several runs of this script together (e.g. one process per seed)."""
    runs: list[dict[str, Any]] = []
    for path in paths:
        saved = json.loads(path.read_text())
        print(f"{path}: {shlex.join(saved['command'])} ({saved['seconds']:.0f} s)")
        runs.extend(saved["runs"])
    strategies = list(dict.fromkeys(run["strategy"] for run in runs))
    epochs = list(report_epochs) or [len(runs[0]["val_accuracy_by_epoch"])]
    print()
    print_tables(runs, strategies, epochs)


if __name__ == "__main__":
    main()
