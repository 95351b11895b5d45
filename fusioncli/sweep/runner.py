"""Run a list of configurations on one device, one after another, into a results store.

What the runner guarantees:

* **skip / resume** -- a run whose *finished* record is already stored is skipped (``force``
  recomputes it); failed runs are retried. Re-running a killed sweep therefore does only what
  is missing.
* **nothing finished is lost** -- each record is written atomically as soon as its run ends;
  a kill (Ctrl-C, SIGKILL) loses at most the run in flight and never leaves a record that counts.
* **failures do not stop the sweep** -- an exception in a run (out of memory, NaN loss, ...) is
  stored as a ``failed`` record with the error and a short traceback; the sweep goes on.
* **best checkpoint** -- when a finished run beats the store's best (higher val accuracy; ties:
  lower val loss), its weights replace ``<results>/best/`` as a whole.

The train function is injectable (``train_fn``), so tests can drive the runner with a fake.
"""

from __future__ import annotations

import gc
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusioncli.atomic import atomic_directory
from fusioncli.data.dataset import PreparedData
from fusioncli.errors import BadInputError, FusionError
from fusioncli.results.store import FAILED, FINISHED, ResultsStore
from fusioncli.sweep.tracking import Tracker
from fusioncli.train.config import RunConfig, run_id
from fusioncli.train.loop import failed_record, train_run

SKIPPED = "skipped"
TRACEBACK_CHARS = 4000
ERROR_CHARS = 2000

TrainFn = Callable[..., Any]  # (config, data, *, on_epoch) -> object with .record and .model


@dataclass
class RunOutcome:
    """What happened to one grid point."""

    index: int  # 1-based position in the sweep
    total: int
    run_id: str
    config: RunConfig  # resolved
    status: str  # "finished" | "failed" | "skipped"
    record: dict[str, Any] | None
    error: str | None = None
    new_best: bool = False
    warnings: list[str] = field(default_factory=list)


@dataclass
class SweepSummary:
    """The outcome of :func:`run_sweep`: one entry per grid point that was reached."""

    outcomes: list[RunOutcome]
    total: int
    interrupted: bool
    seconds: float
    best: dict[str, Any] | None  # the store's best record after the sweep
    warnings: list[str] = field(default_factory=list)

    def _with(self, status: str) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def finished(self) -> list[RunOutcome]:
        return self._with(FINISHED)

    @property
    def failed(self) -> list[RunOutcome]:
        return self._with(FAILED)

    @property
    def skipped(self) -> list[RunOutcome]:
        return self._with(SKIPPED)

    @property
    def not_run(self) -> int:
        """Grid points never reached (the sweep was interrupted before them)."""
        return self.total - len(self.outcomes)

    @property
    def exit_code(self) -> int:
        """130 when interrupted, 1 when any run failed, else 0."""
        if self.interrupted:
            return 130
        return 1 if self.failed else 0


def error_message(exc: BaseException) -> str:
    """One readable line (or a few) for a run's exception, bounded in length."""
    if isinstance(exc, FusionError):
        text = "; ".join(exc.problems)
    else:
        detail = str(exc).strip()
        text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return text[:ERROR_CHARS]


def _is_better(record: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Higher val accuracy wins; on a tie the lower val loss; a NaN never wins."""
    metrics = record.get("metrics") or {}
    acc, loss = metrics.get("val_accuracy"), metrics.get("val_loss")
    if acc is None or not math.isfinite(acc):
        return False
    if best is None:
        return True
    if best.get("run_id") == record.get("run_id"):
        return True  # the best run recomputed (--force): its checkpoint must be the new weights
    best_metrics = best.get("metrics") or {}
    best_acc, best_loss = best_metrics.get("val_accuracy"), best_metrics.get("val_loss")
    if best_acc is None or not math.isfinite(best_acc) or acc > best_acc:
        return True
    if acc < best_acc:
        return False
    if loss is None or not math.isfinite(loss):
        return False
    return best_loss is None or not math.isfinite(best_loss) or loss < best_loss


def save_best(store: ResultsStore, model: Any, record: dict[str, Any]) -> None:
    """Replace ``<results>/best/`` (weights + JSON info) with this run's, as one atomic swap.

    Writing the two files into a staging folder first means the weights and their info always
    describe the same run, even if the process dies halfway.
    """
    from fusioncli.train.checkpoint import save_checkpoint

    with atomic_directory(store.best_dir) as staging:
        save_checkpoint(staging / store.best_checkpoint_path.name, model, record)


def _call_trackers(trackers: Sequence[Tracker], method: str, *args: Any, warnings: list[str]) -> None:
    # A tracker's hiccup (network, quota) must not cost a finished run: warn and go on.
    for tracker in trackers:
        try:
            getattr(tracker, method)(*args)
        except Exception as exc:  # noqa: BLE001 - any tracker error is only a warning
            warnings.append(f"{tracker.name}: {method} failed: {error_message(exc)}")


def _free_memory(device: str) -> None:
    # After an out-of-memory error the allocator still holds the failed run's blocks.
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def resolve_grid(configs: Sequence[RunConfig], fingerprint: str) -> list[tuple[str, RunConfig]]:
    """(run id, resolved config) per grid point, duplicates (same run id) dropped, order kept."""
    seen: set[str] = set()
    resolved = []
    for config in configs:
        cfg = config.resolve()
        rid = run_id(cfg, fingerprint)
        if rid not in seen:
            seen.add(rid)
            resolved.append((rid, cfg))
    return resolved


def run_sweep(
    configs: Sequence[RunConfig],
    data: PreparedData,
    store: ResultsStore,
    *,
    train_fn: TrainFn | None = None,
    force: bool = False,
    keep_best: bool = True,
    trackers: Sequence[Tracker] = (),
    on_run_start: Callable[[int, int, str, RunConfig], None] | None = None,
    on_epoch: Callable[[RunConfig, dict[str, Any]], None] | None = None,
    on_run_end: Callable[[RunOutcome], None] | None = None,
) -> SweepSummary:
    """Run every config on ``data`` (loaded once, shared by all runs) into ``store``.

    Finished runs already in the store are skipped unless ``force``; failed ones are retried.
    Each run's record is stored the moment it ends. A KeyboardInterrupt stops the sweep after
    discarding only the run in flight; the summary says ``interrupted`` (exit code 130).
    Callbacks: ``on_run_start(index, total, run_id, config)`` before a run is trained,
    ``on_epoch(config, history_row)`` after each epoch, ``on_run_end(outcome)`` for every
    grid point (finished, failed or skipped). ``train_fn`` defaults to
    :func:`fusioncli.train.loop.train_run` (looked up at call time, so it can be patched).
    """
    if train_fn is None:
        train_fn = train_run
    started = time.perf_counter()
    store.repair()
    grid = resolve_grid(configs, data.fingerprint)
    total = len(grid)
    outcomes: list[RunOutcome] = []
    sweep_warnings: list[str] = []
    interrupted = False
    try:
        for index, (rid, cfg) in enumerate(grid, start=1):
            if not force and store.is_finished(rid):
                outcome = RunOutcome(index, total, rid, cfg, SKIPPED, store.get(rid))
            else:
                if on_run_start is not None:
                    on_run_start(index, total, rid, cfg)
                outcome = _run_one(
                    index,
                    total,
                    rid,
                    cfg,
                    data,
                    store,
                    train_fn=train_fn,
                    keep_best=keep_best,
                    trackers=trackers,
                    on_epoch=on_epoch,
                )
                sweep_warnings.extend(outcome.warnings)
            outcomes.append(outcome)
            if on_run_end is not None:
                on_run_end(outcome)
    except KeyboardInterrupt:
        # Finished runs are already stored; only the run in flight (if any) is lost.
        interrupted = True

    return SweepSummary(
        outcomes=outcomes,
        total=total,
        interrupted=interrupted,
        seconds=time.perf_counter() - started,
        best=store.best_record(),
        warnings=sweep_warnings,
    )


def _run_one(
    index: int,
    total: int,
    rid: str,
    cfg: RunConfig,
    data: PreparedData,
    store: ResultsStore,
    *,
    train_fn: TrainFn,
    keep_best: bool,
    trackers: Sequence[Tracker],
    on_epoch: Callable[[RunConfig, dict[str, Any]], None] | None,
) -> RunOutcome:
    """Train one grid point and store its record (finished or failed)."""
    run_warnings: list[str] = []
    history: list[dict[str, Any]] = []
    _call_trackers(trackers, "start", rid, cfg.to_dict(), warnings=run_warnings)

    def epoch_done(row: dict[str, Any]) -> None:
        history.append(dict(row))
        _call_trackers(trackers, "log_epoch", dict(row), warnings=run_warnings)
        if on_epoch is not None:
            on_epoch(cfg, dict(row))

    started_at = _utc_now()
    result = None
    error: tuple[str, str] | None = None
    try:
        result = train_fn(cfg, data, on_epoch=epoch_done)
    except KeyboardInterrupt:
        _call_trackers(
            trackers, "finish", {"run_id": rid, "status": "interrupted", "error": "interrupted"}, warnings=[]
        )
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, the sweep goes on
        # Keep text only: the exception's frames hold the failed run's tensors.
        error = (error_message(exc), "".join(traceback.format_exception(exc))[-TRACEBACK_CHARS:])

    if error is not None:
        _free_memory(cfg.device)
        failure = _failure_record(cfg, data, rid, error, history, started_at)
        store.write(failure)
        _call_trackers(trackers, "finish", failure, warnings=run_warnings)
        return RunOutcome(index, total, rid, cfg, FAILED, failure, error=failure["error"], warnings=run_warnings)

    record = dict(result.record)
    # The key the store and the skip check use; train_run computes the same one.
    record["run_id"] = rid
    record["status"] = FINISHED
    new_best = False
    if keep_best and _is_better(record, store.best_record()):
        # Checkpoint before record: if we die in between, the run is redone and compared
        # again, rather than a finished run never having been considered for best.
        try:
            save_best(store, result.model, record)
            new_best = True
        except Exception as exc:  # noqa: BLE001 - a full disk must not lose the record
            run_warnings.append(f"best checkpoint not saved: {error_message(exc)}")
    store.write(record)
    _call_trackers(trackers, "finish", record, warnings=run_warnings)
    return RunOutcome(index, total, rid, cfg, FINISHED, record, new_best=new_best, warnings=run_warnings)


def _failure_record(
    cfg: RunConfig,
    data: PreparedData,
    rid: str,
    error: tuple[str, str],
    history: list[dict[str, Any]],
    started_at: str,
) -> dict[str, Any]:
    """The failed run's record; never raises (a second failure here must not stop the sweep)."""
    message, trace = error
    try:
        record = failed_record(cfg, data, message, started_at=started_at)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory again while describing the data
        record = {
            "schema": 1,
            "status": FAILED,
            "error": message,
            "config": cfg.to_dict(),
            "dataset": {
                "fingerprint": data.fingerprint,
                "n_train": None,
                "n_val": None,
                "class_names": list(data.class_names),
            },
            "env": None,
            "started_at": started_at,
            "finished_at": _utc_now(),
            "record_error": error_message(exc),
        }
    record["run_id"] = rid
    record["history"] = history  # the epochs that did finish, e.g. up to a NaN
    record["traceback"] = trace
    return record


def _utc_now() -> str:
    from fusioncli.train.probes import utc_now

    return utc_now()


@dataclass(frozen=True)
class PlannedRun:
    """One grid point of a plan: its run id, resolved config and stored status (or None)."""

    index: int
    run_id: str
    config: RunConfig
    stored_status: str | None


def plan_sweep(configs: Sequence[RunConfig], fingerprint: str, store: ResultsStore) -> list[PlannedRun]:
    """What a sweep would do, without training: each grid point with its stored status."""
    plan = []
    for index, (rid, cfg) in enumerate(resolve_grid(configs, fingerprint), start=1):
        record = store.get(rid)
        plan.append(PlannedRun(index, rid, cfg, record.get("status") if record else None))
    return plan


def load_sweep_data(configs: Sequence[RunConfig], cache_dir: Path) -> PreparedData:
    """Load the prepared cache once, onto the device the grid runs on."""
    from fusioncli.data.cache import load_cache

    if not configs:
        raise BadInputError("the sweep grid is empty")
    devices = {c.resolve().device for c in configs}
    if len(devices) > 1:
        raise BadInputError(f"a sweep runs on one device; the grid asks for {', '.join(sorted(devices))}")
    return load_cache(Path(cache_dir), devices.pop())


def sweep_from_cache(configs: Sequence[RunConfig], cache_dir: Path, results_dir: Path, **kwargs: Any) -> SweepSummary:
    """Load the cache at ``cache_dir`` and :func:`run_sweep` into the store at ``results_dir``."""
    data = load_sweep_data(configs, cache_dir)
    return run_sweep(configs, data, ResultsStore(results_dir), **kwargs)
