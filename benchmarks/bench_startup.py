"""Start-up of commands that train nothing, as a ratio to a bare ``python -c pass``.

Goal (issue 12): ``fusioncli --help`` and ``fusioncli report`` on a 100-run store in <= 0.5 s
on 2 cores, without importing torch. Each command runs ``--repeat`` times as a fresh process
(after one warm-up run, so the page cache is warm); we print min / median wall time, the ratio
of the median to ``python -c pass``, and whether torch was imported (``-X importtime``).

The 100-run store is made from the records of tests/fixtures/store_v0_1 (configs varied, ids
recomputed), so no training is needed; ``sweep --dry-run`` and a cache-hit ``prepare`` use a
tiny synthetic dataset.

Usage::

    .venv/bin/python benchmarks/bench_startup.py [--repeat 9]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "store_v0_1" / "records"


def make_store(root: Path, runs: int) -> None:
    """``runs`` finished records (4 strategies x lrs x seeds) built from the fixture's."""
    from fusioncli.config import RunConfig, run_id
    from fusioncli.record import RunRecord
    from fusioncli.results.store import ResultsStore

    template = json.loads(sorted(FIXTURE.glob("*.json"))[0].read_text())
    store = ResultsStore(root)
    strategies = ("late", "intermediate-add", "intermediate-concat", "gmu")
    for i in range(runs):
        config = RunConfig.from_dict(
            {**template["config"], "strategy": strategies[i % 4], "lr": 10 ** -(3 + (i // 4) % 5), "seed": i // 20}
        )
        record = json.loads(json.dumps(template))
        record["config"] = config.to_dict()
        record["run_id"] = run_id(config, record["dataset"]["fingerprint"])
        record["metrics"]["val_accuracy"] = 0.5 + 0.004 * i
        store.write(RunRecord.from_json(record))


def timed(cmd: list[str], repeat: int, env: dict[str, str]) -> tuple[list[float], bool]:
    subprocess.run(cmd, env=env, capture_output=True, check=True)  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    probe = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], env=env, capture_output=True, text=True)
    torch_loaded = any(line.rstrip().endswith("| torch") for line in probe.stderr.splitlines())
    return times, torch_loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    try:
        from fusioncli.data.cache import prepare
        from fusioncli.data.synth import write_dataset

        make_store(work / "results", args.runs)
        write_dataset(work / "raw", per_class=16, seed=0)
        prepare(work / "raw", work / "cache", val_fraction=0.25)
        env = {**os.environ, "FUSIONCLI_NO_PROGRESS": "1", "COLUMNS": "160"}
        py = sys.executable
        cli = [py, "-m", "fusioncli"]
        cases = {
            "python -c pass": [py, "-c", "pass"],
            "fusioncli --help": [*cli, "--help"],
            f"report ({args.runs} runs, table)": [*cli, "report", "--results-dir", str(work / "results")],
            f"report ({args.runs} runs, csv)": [*cli, "report", "--results-dir", str(work / "results"), "-f", "csv"],
            "sweep --dry-run (24 runs)": [
                *cli, "sweep", "--cache-dir", str(work / "cache"), "--results-dir", str(work / "results"),
                "--device", "cpu", "--dry-run",
            ],
            "prepare (cache hit)": [
                *cli, "prepare", "--data-dir", str(work / "raw"), "--cache-dir", str(work / "cache"),
                "--val-fraction", "0.25",
            ],
        }  # fmt: skip
        print(
            f"# start-up, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"load {os.getloadavg()[0]:.1f}, python {platform.python_version()}, repeat {args.repeat}"
        )
        print(f"{'command':<30} {'min s':>7} {'median s':>9} {'x bare python':>14}  torch imported")
        base = None
        for name, cmd in cases.items():
            times, torch_loaded = timed(cmd, args.repeat, env)
            median = statistics.median(times)
            base = base or median
            print(
                f"{name:<30} {min(times):>7.3f} {median:>9.3f} {median / base:>14.1f}  "
                f"{'yes' if torch_loaded else 'no'}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
