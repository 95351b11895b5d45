"""What the trackers cost per run, training aside: open, N epochs, close with the record JSON.

Each fusioncli run gets its own tracker run (``fusioncli.tracking.RunTracking``); this times
that life cycle for MLflow (a SQLite store; the experiment resolved before timing, as the sweep
does before training) and W&B (``WANDB_MODE=offline``), alone and together, on a record taken
from ``tests/fixtures/store_v0_1``. Everything stays on this machine (temp folders).

Usage::

    .venv/bin/python benchmarks/bench_tracking.py [--runs 12] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "store_v0_1" / "records"


def _record(epochs: int) -> dict:
    record = json.loads(sorted(FIXTURE.glob("*.json"))[0].read_text())
    row = dict(record["history"][0]) if record.get("history") else {"train_loss": 0.5, "val_loss": 0.5, "lr": 1e-4}
    record["history"] = [{**row, "epoch": e} for e in range(1, epochs + 1)]
    return record


def _time(which: str, runs: int, epochs: int) -> list[float]:
    from fusioncli.tracking import RunTracking, make_trackers

    folder = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    os.environ["WANDB_DIR"] = str(folder)
    trackers = make_trackers(
        mlflow=which in ("mlflow", "both"), wandb=which in ("wandb", "both"), mlflow_uri=f"sqlite:///{folder}/m.db"
    )
    for tracker in trackers:
        tracker.probe(create=True)
    record = _record(epochs)
    seconds = []
    for i in range(runs):
        config = {**record["config"], "seed": i}
        started = time.perf_counter()
        tracking = RunTracking(trackers, f"bench{i:012d}", config, fingerprint="bench")
        for row in record["history"]:
            tracking.epoch(row)
        tracking.finish({**record, "run_id": f"bench{i:012d}", "config": config})
        seconds.append(time.perf_counter() - started)
        assert not tracking.problems, tracking.problems
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    os.environ["WANDB_MODE"] = "offline"
    import mlflow
    import wandb

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"mlflow {mlflow.__version__}, wandb {wandb.__version__}; {args.runs} runs x {args.epochs} epochs")
    for which in ("mlflow", "wandb", "both"):
        seconds = _time(which, args.runs, args.epochs)
        print(
            f"{which:7s} per run: median {statistics.median(seconds) * 1000:.0f} ms, "
            f"min {min(seconds) * 1000:.0f} ms, max {max(seconds) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
