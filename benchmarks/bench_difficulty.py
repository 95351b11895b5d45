"""The difficulty ladder of `fusioncli synth`: does fusion beat the best single modality?

    .venv/bin/python benchmarks/bench_difficulty.py [--per-class 600] [--epochs 6] [--seeds 51]
        [--difficulties easy,medium,hard] [--strategies rgb-only,lidar-only,late,...]

For each difficulty it renders a dataset (write_dataset with that preset), prepares it
(fusioncli.data.cache.prepare, a stratified validation split), loads it (load_cache) and trains
every strategy with the library (RunConfig + train_run) on the same data, budget and seeds. It
prints the final validation accuracy per strategy and difficulty, the best fusion strategy, the
best unimodal baseline (rgb-only, lidar-only) and the gap between them in accuracy points --
the target on `hard` is a gap >= 10 points -- plus, for the difficulties with complementary
corruption, each unimodal model's accuracy on the samples whose modality is intact / failed
(the ceiling argument: a unimodal model can only be right on its intact samples, plus chance).

The default budget (600 per class, 6 epochs, `seed` backbone, lr 1e-3 cosine, batch 32, one
seed) runs in a few minutes on 2 CPU cores. Figures are the last epoch's, never a best epoch.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fusioncli.data.cache import load_cache, prepare
from fusioncli.data.synth import DIFFICULTIES, LIDAR, RGB, difficulty_params, sample_scene, write_dataset
from fusioncli.train.config import RunConfig
from fusioncli.train.loop import train_run

UNIMODAL = ("rgb-only", "lidar-only")
DEFAULT_STRATEGIES = ("rgb-only", "lidar-only", "late", "intermediate-concat", "gmu", "decision")


def corruption_of_rows(cache_dir: Path, raw_seed: int, difficulty: str) -> np.ndarray:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=600, help="samples per class (default 600)")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="validation share (default 0.25)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="seed", choices=("seed", "lab"))
    parser.add_argument("--seeds", default="51", help="training seeds, comma-separated (default 51)")
    parser.add_argument("--data-seed", type=int, default=0, help="synth seed (default 0)")
    parser.add_argument("--difficulties", default=",".join(DIFFICULTIES))
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--dir", type=Path, default=Path(__file__).parent / "_work", help="scratch folder (default benchmarks/_work)"
    )
    args = parser.parse_args()
    difficulties = [d for d in args.difficulties.split(",") if d]
    strategies = [s for s in args.strategies.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    torch.set_num_threads(args.threads)

    print("command: .venv/bin/python benchmarks/bench_difficulty.py " + shlex.join(sys.argv[1:]))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}, {cpus} CPUs usable, "
        f"{args.threads} torch threads; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"budget: {args.per_class} per class, val fraction {args.val_fraction}, {args.epochs} epochs, "
        f"backbone {args.backbone}, lr {args.lr:g} cosine, batch {args.batch_size}, seeds {seeds}, "
        f"synth seed {args.data_seed}\n"
    )
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench_difficulty.", dir=args.dir))
    started = time.perf_counter()
    acc: dict[tuple[str, str], list[float]] = {}
    split: dict[tuple[str, str], dict[str, list[float]]] = {}
    try:
        for difficulty in difficulties:
            raw, cache = scratch / f"raw-{difficulty}", scratch / f"cache-{difficulty}"
            t0 = time.perf_counter()
            summary = write_dataset(raw, per_class=args.per_class, seed=args.data_seed, difficulty=difficulty)
            prepare(raw, cache, val_fraction=args.val_fraction, split_seed=0)
            data = load_cache(cache)
            is_val = data.is_val.numpy()
            val_failed = corruption_of_rows(cache, args.data_seed, difficulty)[is_val]
            print(
                f"[{difficulty}] rendered {summary.total} samples in {summary.seconds:.1f} s, prepared and loaded "
                f"in {time.perf_counter() - t0 - summary.seconds:.1f} s; validation: {int(is_val.sum())} samples, "
                f"RGB failed in {(val_failed == RGB).mean():.0%}, LiDAR failed in {(val_failed == LIDAR).mean():.0%}",
                flush=True,
            )
            labels = data.labels[data.is_val].numpy()
            for strategy in strategies:
                for seed in seeds:
                    t1 = time.perf_counter()
                    cfg = RunConfig(
                        strategy=strategy,
                        backbone=args.backbone,
                        lr=args.lr,
                        scheduler="cosine",
                        epochs=args.epochs,
                        batch_size=args.batch_size,
                        seed=seed,
                        device="cpu",
                    )
                    result = train_run(cfg, data)
                    accuracy = result.record["metrics"]["val_accuracy"]
                    acc.setdefault((difficulty, strategy), []).append(accuracy)
                    # accuracy on the validation samples whose own modality failed / is intact
                    preds = predict(result.model, data, result.record["config"]["precision"])
                    right = preds == labels
                    own = {"rgb-only": RGB, "lidar-only": LIDAR}.get(strategy)
                    parts = split.setdefault((difficulty, strategy), {"intact": [], "failed": []})
                    mask = val_failed == own if own else val_failed != ""
                    if mask.any():
                        parts["failed"].append(float(right[mask].mean()))
                    parts["intact"].append(float(right[~mask].mean()))
                    print(
                        f"  {strategy:<22} seed {seed}: val acc {accuracy:.4f}"
                        f" ({time.perf_counter() - t1:.0f} s)",
                        flush=True,
                    )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\ntotal {time.perf_counter() - started:.0f} s\n")
    print_table(difficulties, strategies, acc, split)


def predict(model: torch.nn.Module, data, precision: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The model's class for every validation sample (as the training loop evaluates: same precision)."""
    idx = data.val_indices
    out = []
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for start in range(0, idx.numel(), 256):
            b = idx[start : start + 256]
            out.append(model(data.rgb[b].float() / 255, data.xyza[b]).argmax(dim=1))
    return torch.cat(out).numpy()


def _mean(values: list[float]) -> str:
    return f"{100 * np.mean(values):5.1f}" if values else "   - "


def print_table(difficulties, strategies, acc, split) -> None:  # type: ignore[no-untyped-def]
    """Accuracy (%) per strategy and difficulty, then best fusion vs best unimodal."""
    width = max(len(s) for s in strategies) + 2
    print("validation accuracy, % (mean over seeds; last epoch)")
    print(f"{'strategy':<{width}}" + "".join(f"{d:>10}" for d in difficulties))
    for strategy in strategies:
        print(f"{strategy:<{width}}" + "".join(f"{_mean(acc.get((d, strategy), [])):>10}" for d in difficulties))
    print()
    for d in difficulties:
        fused = {s: np.mean(acc[(d, s)]) for s in strategies if s not in UNIMODAL and (d, s) in acc}
        single = {s: np.mean(acc[(d, s)]) for s in strategies if s in UNIMODAL and (d, s) in acc}
        if not fused or not single:
            continue
        best_f = max(fused, key=fused.__getitem__)
        best_u = max(single, key=single.__getitem__)
        gap = 100 * (fused[best_f] - single[best_u])
        print(
            f"{d:<7} best fusion {best_f} {100 * fused[best_f]:.1f} - best unimodal {best_u} "
            f"{100 * single[best_u]:.1f} = gap {gap:+.1f} points"
        )
    print(
        "\naccuracy on validation samples by sensor failure, % (unimodal: own sensor intact | failed;"
        " fusion: no failure | one failed)"
    )
    for d in difficulties:
        for strategy in strategies:
            parts = split.get((d, strategy))
            if parts and parts["failed"]:
                print(f"  {d:<7} {strategy:<{width}} {_mean(parts['intact'])} | {_mean(parts['failed'])}")


if __name__ == "__main__":
    main()
