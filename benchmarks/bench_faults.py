"""What the sensor-fault suite costs per run: one clean validation pass vs each fault's passes.

Builds a model (random weights: inference cost does not depend on them), takes the validation
split of a prepared cache, and times (alternating, ``--repeat`` times, median):

* one clean validation pass (:func:`fusioncli.train.engine.predict`, as training's validation);
* the whole :func:`fusioncli.eval.robustness.evaluate_robustness` (59 passes by default);
* per fault, its 4 passes (severities 0.25 ... 1), so the cost of generating each fault shows.

Usage::

    .venv/bin/python benchmarks/bench_faults.py --cache-dir .fusioncli/cache [--strategy late] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def main() -> None:
    import torch

    from fusioncli.config import RunConfig
    from fusioncli.data.cache import load_cache
    from fusioncli.eval.faults import fault_names
    from fusioncli.eval.robustness import evaluate_robustness
    from fusioncli.models import create_model
    from fusioncli.train.engine import channels_last, eval_batch_size, predict

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=Path(".fusioncli/cache"))
    parser.add_argument("--strategy", default="late")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    cfg = RunConfig(strategy=args.strategy, device="cpu", precision=args.precision).resolve()
    data = load_cache(args.cache_dir)
    val = channels_last(data.subset(data.val_indices))
    torch.manual_seed(0)
    model = create_model(args.strategy, "seed", data.num_classes).to(memory_format=torch.channels_last).eval()
    step = eval_batch_size("cpu", cfg.batch_size)

    def clean() -> None:
        predict(model, val, device=torch.device("cpu"), precision=cfg.precision, batch_size=step)

    def suite(faults: tuple[str, ...] | None = None) -> None:
        evaluate_robustness(model, data, cfg, faults=faults)

    timings: dict[str, list[float]] = {"clean pass": [], "whole suite": []}
    faults = fault_names()
    for name in faults:
        timings[name] = []
    suite(faults[:1])  # warm-up: allocator, oneDNN kernel choice
    for _ in range(args.repeat):
        for label, fn in (("clean pass", clean), ("whole suite", suite)):
            t0 = time.perf_counter()
            fn()
            timings[label].append(time.perf_counter() - t0)
    # per fault: its 4 passes = (suite with only that fault) - (clean pass + 2 missing passes)
    base = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        suite(())
        base.append(time.perf_counter() - t0)
        for name in faults:
            t0 = time.perf_counter()
            suite((name,))
            timings[name].append(time.perf_counter() - t0)
    base_s = statistics.median(base)
    clean_s = statistics.median(timings["clean pass"])
    rows = {
        "n_val": len(val),
        "strategy": args.strategy,
        "precision": cfg.precision,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
        "clean_pass_s": clean_s,
        "whole_suite_s": statistics.median(timings["whole suite"]),
        "suite_over_clean": statistics.median(timings["whole suite"]) / clean_s,
        "per_fault_4_passes_s": {n: statistics.median(timings[n]) - base_s for n in faults},
    }
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{rows['n_val']} validation samples, {args.strategy}, {cfg.precision}, {rows['threads']} threads, "
          f"load {rows['load_average'][0]:.1f}")  # fmt: skip
    print(f"one clean validation pass: {clean_s:.2f} s; whole suite: {rows['whole_suite_s']:.1f} s "
          f"({rows['suite_over_clean']:.1f}x one pass)")  # fmt: skip
    for name, seconds in rows["per_fault_4_passes_s"].items():
        print(f"  {name:14s} 4 passes {seconds:6.2f} s  ({seconds / (4 * clean_s):.2f}x a clean pass each)")


if __name__ == "__main__":
    main()
