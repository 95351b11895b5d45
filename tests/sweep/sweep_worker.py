"""A sweep in a child process, for the kill tests (not a test module itself).

usage: python sweep_worker.py RESULTS_DIR MARKER_DIR SLOW_RUN PAUSE_AFTER

Runs the 4-point fake grid of sweep_fakes. Run number SLOW_RUN (1-based) sleeps for a minute
inside training; after run PAUSE_AFTER ends the worker sleeps for a minute between runs.
Marker files ``started-<n>`` / ``ended-<n>`` tell the parent where it is (0 = never).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from sweep_fakes import FakeTrainer, grid, tiny_data

from fusioncli.results.store import ResultsStore
from fusioncli.sweep.runner import run_sweep


class SlowOnce(FakeTrainer):
    def __init__(self, slow_run: int, marker_dir: Path) -> None:
        super().__init__(marker_dir=marker_dir)
        self.slow_run = slow_run

    def __call__(self, config, data, *, on_epoch=None):
        self.sleep = 60.0 if len(self.calls) + 1 == self.slow_run else 0.0
        return super().__call__(config, data, on_epoch=on_epoch)


def main() -> None:
    results, markers, slow_run, pause_after = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

    def on_run_end(outcome) -> None:
        (markers / f"ended-{outcome.index}").write_text(outcome.status)
        if outcome.index == pause_after:
            time.sleep(60.0)

    run_sweep(grid(), tiny_data(), ResultsStore(results), train_fn=SlowOnce(slow_run, markers), on_run_end=on_run_end)


if __name__ == "__main__":
    main()
