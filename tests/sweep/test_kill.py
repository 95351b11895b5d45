"""A sweep killed with SIGKILL (between runs, during a run) loses nothing finished and resumes.

The sweep runs in a real child process (tests/sweep/sweep_worker.py, fake training with
sleeps); the parent waits for marker files, kills it with SIGKILL, then checks the store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from sweep_fakes import FakeTrainer, grid, tiny_data

from fusioncli.results.store import ResultsStore
from fusioncli.sweep.runner import run_sweep

WORKER = Path(__file__).with_name("sweep_worker.py")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


def _start(results: Path, markers: Path, slow_run: int, pause_after: int) -> subprocess.Popen:
    markers.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(results), str(markers), str(slow_run), str(pause_after)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early ({proc.returncode}): {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {path.name}")
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _check_resume(store: ResultsStore, n_finished: int) -> None:
    """Exactly ``n_finished`` complete runs; a re-run trains only the others."""
    runs = pd.read_parquet(store.runs_dir)
    assert len(runs) == n_finished and (runs["status"] == "finished").all()
    assert len(store.load_runs()) == n_finished
    assert len(store.records()) == n_finished
    done = set(runs["run_id"])
    trainer = FakeTrainer()
    summary = run_sweep(grid(), tiny_data(), store, train_fn=trainer)
    assert len(trainer.calls) == 4 - n_finished
    assert {o.run_id for o in summary.outcomes if o.status == "skipped"} == done
    assert summary.exit_code == 0
    assert len(pd.read_parquet(store.runs_dir)) == 4


def test_sigkill_between_runs(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results")
    proc = _start(store.root, tmp_path / "markers", slow_run=0, pause_after=2)
    _wait_for(tmp_path / "markers" / "ended-2", proc)
    _kill(proc)
    _check_resume(store, n_finished=2)


def test_sigkill_during_a_run(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results")
    proc = _start(store.root, tmp_path / "markers", slow_run=3, pause_after=0)
    _wait_for(tmp_path / "markers" / "started-3", proc)
    _kill(proc)
    assert not (tmp_path / "markers" / "ended-3").exists()
    _check_resume(store, n_finished=2)


def test_leftover_temp_files_never_count(tmp_path: Path) -> None:
    """What a writer killed mid-write leaves: dot-prefixed temp files, ignored by every reader."""
    store = ResultsStore(tmp_path / "results")
    run_sweep(grid(strategies=["late"]), tiny_data(), store, train_fn=FakeTrainer())
    (store.runs_dir / ".deadbeef.parquet.abc123.tmp").write_bytes(b"PAR1 half a file")
    (store.records_dir / ".deadbeef.json.abc123.tmp").write_text('{"run_id": "deadbeef", "status": "fini')
    assert len(pd.read_parquet(store.runs_dir)) == 2
    assert len(store.load_runs()) == 2
    assert not store.is_finished("deadbeef")
    trainer = FakeTrainer()
    run_sweep(grid(strategies=["late"]), tiny_data(), store, train_fn=trainer)
    assert trainer.calls == []
