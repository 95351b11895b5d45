"""Run a list of configurations into a results store: the local backend, and what every backend shares.

What a sweep guarantees, whichever backend runs it (local here, Ray in
:mod:`fusioncli.sweep.ray_backend`):

* **skip / resume** -- a run whose *finished* record is already stored is skipped (``force``
  recomputes it); failed runs are retried. Re-running a killed sweep therefore does only what
  is missing.
* **nothing finished is lost** -- each record is written atomically as soon as its run ends;
  a kill (Ctrl-C, SIGKILL) loses at most the runs in flight and never leaves a record that counts.
* **failures do not stop the sweep** -- an exception in a run (out of memory, NaN loss, ...) is
  stored as a ``failed`` record with the error and a short traceback; the sweep goes on.
* **best checkpoint** -- when a finished run beats the best of its dataset (higher val accuracy;
  ties: lower val loss), its weights replace ``<results>/best/<fingerprint>/`` as a whole; each
  dataset has its own best, and a damaged best counts as none.
* **one trainer per run** -- a run is claimed in the store before it trains
  (:meth:`~fusioncli.results.store.ResultsStore.claim_run`); a second sweep on the same store
  leaves a run another live sweep is training to it (outcome ``claimed``, with a warning).

Backends share one way to store an outcome: :class:`OutcomeRecorder` (skip check, finished and
failed records, best checkpoint, trackers, the summary) and :func:`failure_record`; what a run
or a stacked group does (train + optional robustness evaluation) is :mod:`fusioncli.jobs`'
:func:`~fusioncli.jobs.train_one` / :func:`~fusioncli.jobs.train_group`. A backend only
decides *where* runs train; :func:`fusioncli.sweep.dispatch.sweep_from_cache` picks the backend.

The local backend (:func:`run_sweep`) trains one run after another in this process on data
loaded once. The train function is injectable (``train_fn``), so tests can drive it with a fake.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusioncli.data.dataset import PreparedData
from fusioncli.errors import BadInputError
from fusioncli.jobs import MemberFailure, TrainFn, error_message, train_group, train_one
from fusioncli.results.store import FAILED, FINISHED, Claim, ResultsStore, record_fingerprint
from fusioncli.sweep.tracking import Tracker
from fusioncli.config import RunConfig, run_id
from fusioncli.machine import free_device_memory
from fusioncli.train.loop import failed_record, train_run  # train_run: the sweep's default (tests patch it)

SKIPPED = "skipped"
CLAIMED = "claimed"  # another live sweep is training the run: left to it, not finished here
TRACEBACK_CHARS = 4000
# Runs trained together by the stacked executor: bounds the memory of one group (params, grads
# and Adam state of each member) while keeping the GPU busy; the seed's grid is groups of 6.
DEFAULT_MAX_GROUP = 16

Resolver = Callable[[RunConfig], RunConfig]  # "auto" device/precision -> what the run will use


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
    """The outcome of a sweep: one entry per grid point that was reached, in grid order."""

    outcomes: list[RunOutcome]
    total: int
    interrupted: bool
    seconds: float
    best: dict[str, Any] | None  # the best record of the sweep's dataset after the sweep
    warnings: list[str] = field(default_factory=list)
    best_checkpoint: Path | None = None  # its weights (best/<fingerprint>/model.safetensors)

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
    def claimed(self) -> list[RunOutcome]:
        """Grid points another live sweep was training: left to it, not finished by this one."""
        return self._with(CLAIMED)

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


def describe_exception(exc: BaseException) -> tuple[str, str]:
    """(message, traceback text) of a run's exception: text only, for its failed record.

    Text rather than the exception itself: its frames hold the failed run's tensors, and a
    remote worker's exception has to travel back as something plain.
    """
    return error_message(exc), "".join(traceback.format_exception(exc))[-TRACEBACK_CHARS:]


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
    """Replace the best of ``record``'s dataset (``<results>/best/<fingerprint>/``: weights + JSON
    info) with this run's, as one atomic swap (:meth:`ResultsStore.update_best`).

    Writing the two files into a staging folder first means the weights and their info always
    describe the same run, even if the process dies halfway.
    """
    from fusioncli.train.checkpoint import save_checkpoint

    store.update_best(record, lambda path: save_checkpoint(path, model, record))


def _call_trackers(trackers: Sequence[Tracker], method: str, *args: Any, warnings: list[str]) -> None:
    # A tracker's hiccup (network, quota) must not cost a finished run: warn and go on.
    for tracker in trackers:
        try:
            getattr(tracker, method)(*args)
        except Exception as exc:  # noqa: BLE001 - any tracker error is only a warning
            warnings.append(f"{tracker.name}: {method} failed: {error_message(exc)}")


def resolve_grid(
    configs: Sequence[RunConfig], fingerprint: str, resolve: Resolver | None = None
) -> list[tuple[str, RunConfig]]:
    """(run id, resolved config) per grid point, duplicates (same run id) dropped, order kept.

    ``resolve`` turns a config into the one that will run (default :meth:`RunConfig.resolve`:
    this machine's answer to ``auto``); a backend training elsewhere passes its own rule.
    """
    resolver = resolve if resolve is not None else RunConfig.resolve
    seen: set[str] = set()
    resolved = []
    for config in configs:
        cfg = resolver(config)
        rid = run_id(cfg, fingerprint)
        if rid not in seen:
            seen.add(rid)
            resolved.append((rid, cfg))
    return resolved


def _dataset_stub(data: PreparedData | None, dataset: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a failed record says about data it never trained on (sizes unknown)."""
    if data is not None:
        fingerprint, class_names = data.fingerprint, data.class_names
    elif dataset is not None:
        fingerprint, class_names = dataset.get("fingerprint"), dataset.get("class_names") or ()
    else:
        return None
    return {"fingerprint": fingerprint, "n_train": None, "n_val": None, "class_names": list(class_names)}


def failure_record(
    cfg: RunConfig,
    rid: str,
    error: tuple[str, str],
    *,
    data: PreparedData | None = None,
    dataset: dict[str, Any] | None = None,
    history: Sequence[dict[str, Any]] = (),
    started_at: str,
) -> dict[str, Any]:
    """A failed run's record, the same shape wherever the run failed; never raises.

    ``error`` is ``(message, traceback)`` (:func:`describe_exception`). ``data`` is the full
    dataset when the run had it loaded; otherwise ``dataset`` (``fingerprint``,
    ``class_names``) says what is known without it. ``history`` holds the epochs that did
    finish (e.g. up to a NaN). A second failure while describing the first (out of memory
    again) still gives a record, with ``record_error`` set.
    """
    message, trace = error
    try:
        record = failed_record(cfg, data, message, started_at=started_at)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory again while describing the data
        record = {
            "schema": 1,
            "status": FAILED,
            "error": message,
            "config": cfg.to_dict(),
            "dataset": None,
            "env": None,
            "started_at": started_at,
            "finished_at": _utc_now(),
            "record_error": error_message(exc),
        }
    if record.get("dataset") is None:
        record["dataset"] = _dataset_stub(data, dataset)
    record["run_id"] = rid
    record["history"] = [dict(row) for row in history]
    record["traceback"] = trace
    return record


class _Once:
    """Call ``make`` on the first call only, then return the same value (a model rebuilt once)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make: Callable[[], Any] | None = make
        self._value: Any = None

    def __call__(self) -> Any:
        if self._make is not None:
            self._value, self._make = self._make(), None
        return self._value


class OutcomeRecorder:
    """Stores what happened to each grid point of one sweep; shared by every backend.

    The one place that decides a skip, writes finished and failed records, keeps the best
    checkpoint (and every run's weights), calls the trackers, collects the outcomes and builds
    the :class:`SweepSummary`::

        recorder = OutcomeRecorder(store, total, force=..., keep_best=..., on_run_end=..., fingerprint=...)
        outcome = recorder.skipped(index, rid, cfg)        # None: the run must train
        outcome = recorder.claim(index, rid, cfg)          # None: claimed for us (else skipped/claimed)
        run = recorder.begin(index, rid, cfg)              # trackers: start
        run.epoch(row)                                     # trackers: log_epoch
        outcome = run.finished(record, lambda: model)      # or run.failed(record)
        recorder.ended(outcome)                            # collected; on_run_end(outcome)
        summary = recorder.summary(interrupted=..., started=...)
    """

    def __init__(
        self,
        store: ResultsStore,
        total: int,
        *,
        force: bool = False,
        keep_best: bool = True,
        keep_weights: bool = False,
        trackers: Sequence[Tracker] = (),
        robustness: bool = False,
        on_run_end: Callable[[RunOutcome], None] | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self.store = store
        self.fingerprint = fingerprint  # the sweep's dataset: whose best the summary shows
        self._claims: dict[str, Claim] = {}  # runs this sweep has claimed and not yet released
        self.total = total
        self.force = force
        self.robustness = robustness
        self.keep_best = keep_best
        self.keep_weights = keep_weights
        self.trackers = tuple(trackers)
        self.warnings: list[str] = []  # every run's warnings, in the order runs ended
        self.outcomes: list[RunOutcome] = []  # in the order runs ended
        self.on_run_end = on_run_end

    def skipped(self, index: int, rid: str, cfg: RunConfig) -> RunOutcome | None:
        """The ``skipped`` outcome when a finished record of ``rid`` is stored (and not ``force``).

        A sweep that asks for robustness re-trains a finished run stored without it: the
        evaluation needs the trained model, and only the best run's weights are kept (training
        is deterministic, so the re-run reproduces the run and adds its robustness). Likewise
        ``keep_weights`` re-trains a finished run whose weights were not kept.
        """
        if self.force or not self.store.is_finished(rid):
            return None
        record = self.store.get(rid)
        if self.robustness and not (record or {}).get("robustness"):
            return None
        if self.keep_weights and not self.store.has_weights(rid):
            return None
        return RunOutcome(index, self.total, rid, cfg, SKIPPED, record)

    def claim(self, index: int, rid: str, cfg: RunConfig) -> RunOutcome | None:
        """Claim ``rid`` before training it (after :meth:`skipped` said it must train).

        None: the run is ours to train (released once its record is written, or it failed or was
        interrupted). A ``claimed`` outcome (plus a warning): another live sweep is training it.
        The ``skipped`` outcome: another sweep finished it between the skip check and the claim.
        """
        claim = self.store.claim_run(rid)
        if not claim.held_by_us:
            note = (
                f"run {rid} ({cfg.strategy} lr={cfg.lr:g} seed={cfg.seed}) is being trained by another sweep "
                f"({claim.describe()}): left to it, not trained here"
            )
            self.warnings.append(note)
            return RunOutcome(index, self.total, rid, cfg, CLAIMED, None, warnings=[note])
        self._claims[rid] = claim
        outcome = self.skipped(index, rid, cfg)
        if outcome is not None:
            self.release(rid)
        return outcome

    def release(self, rid: str) -> None:
        """Give back the claim on ``rid`` (if this sweep holds it)."""
        claim = self._claims.pop(rid, None)
        if claim is not None:
            self.store.release_claim(claim)

    def release_claims(self) -> None:
        """Give back every claim still held: runs never trained (interrupted, or an error)."""
        for rid in list(self._claims):
            self.release(rid)

    def begin(self, index: int, rid: str, cfg: RunConfig) -> RunRecorder:
        """Start recording one run (its trackers' ``start``)."""
        return RunRecorder(self, index, rid, cfg)

    def ended(self, outcome: RunOutcome) -> None:
        """One grid point is done (finished, failed or skipped): keep it and tell ``on_run_end``."""
        self.outcomes.append(outcome)
        if self.on_run_end is not None:
            self.on_run_end(outcome)

    def summary(self, *, interrupted: bool, started: float) -> SweepSummary:
        """The sweep's summary: the ended outcomes in grid order, the store's best, all warnings.

        ``started`` is the sweep's :func:`time.perf_counter` at its start.
        """
        fingerprint = self.fingerprint
        if fingerprint is None:  # a sweep is on one dataset: the one its records name
            seen = {record_fingerprint(o.record) for o in self.outcomes if o.record}
            fingerprint = seen.pop() if len(seen) == 1 else None
        best = self.store.best_for(fingerprint) if fingerprint is not None else self.store.default_best()
        return SweepSummary(
            outcomes=sorted(self.outcomes, key=lambda o: o.index),
            total=self.total,
            interrupted=interrupted,
            seconds=time.perf_counter() - started,
            best=best.record if best is not None else None,
            warnings=list(self.warnings),
            best_checkpoint=best.path if best is not None else None,
        )


class RunRecorder:
    """One run from its start to its stored outcome (made by :meth:`OutcomeRecorder.begin`)."""

    def __init__(self, sweep: OutcomeRecorder, index: int, rid: str, cfg: RunConfig) -> None:
        self.sweep = sweep
        self.index = index
        self.run_id = rid
        self.config = cfg
        self.history: list[dict[str, Any]] = []  # the epochs seen so far
        self.warnings: list[str] = []
        _call_trackers(sweep.trackers, "start", rid, cfg.to_dict(), warnings=self.warnings)

    def epoch(self, row: dict[str, Any]) -> None:
        """One finished epoch (a history row)."""
        self.history.append(dict(row))
        _call_trackers(self.sweep.trackers, "log_epoch", dict(row), warnings=self.warnings)

    def finished(self, record: dict[str, Any], get_model: Callable[[], Any]) -> RunOutcome:
        """Store a finished run's record; ``get_model()`` is called (once) only when weights are saved."""
        store = self.sweep.store
        record = dict(record)
        # The key the store and the skip check use; train_run computes the same one.
        record["run_id"] = self.run_id
        record["status"] = FINISHED
        model = _Once(get_model)
        # Weights before the record: if we die in between, the run is redone (and compared for
        # best again), rather than a finished record lacking the weights it should have.
        if self.sweep.keep_weights:
            from fusioncli.train.checkpoint import save_checkpoint

            try:
                save_checkpoint(store.weights_path(self.run_id), model(), record)
            except Exception as exc:  # noqa: BLE001 - a full disk must not lose the record
                self.warnings.append(f"weights not kept: {error_message(exc)}")
        new_best = False
        if self.sweep.keep_best:
            from fusioncli.train.checkpoint import save_checkpoint

            try:
                # Compared and replaced under the store's lock: another sweep may finish a run too.
                new_best = store.update_best(
                    record, lambda path: save_checkpoint(path, model(), record), better=_is_better
                )
            except Exception as exc:  # noqa: BLE001 - a full disk must not lose the record
                self.warnings.append(f"best checkpoint not saved: {error_message(exc)}")
        store.write(record)
        return self._end(FINISHED, record, new_best=new_best)

    def failed(self, record: dict[str, Any]) -> RunOutcome:
        """Store a failed run's record (built by :func:`failure_record`)."""
        record = dict(record)
        record["run_id"] = self.run_id
        record["status"] = FAILED
        self.sweep.store.write(record)
        return self._end(FAILED, record, error=record.get("error"))

    def interrupted(self) -> None:
        """The run was stopped (Ctrl-C): trackers close it; nothing is stored."""
        self.sweep.release(self.run_id)
        _call_trackers(
            self.sweep.trackers,
            "finish",
            {"run_id": self.run_id, "status": "interrupted", "error": "interrupted"},
            warnings=[],
        )

    def _end(
        self, status: str, record: dict[str, Any], *, new_best: bool = False, error: str | None = None
    ) -> RunOutcome:
        self.sweep.release(self.run_id)  # the record is stored: the run is no longer in flight
        _call_trackers(self.sweep.trackers, "finish", record, warnings=self.warnings)
        self.sweep.warnings.extend(self.warnings)
        return RunOutcome(
            self.index,
            self.sweep.total,
            self.run_id,
            self.config,
            status,
            record,
            error=error,
            new_best=new_best,
            warnings=list(self.warnings),
        )


def run_sweep(
    configs: Sequence[RunConfig],
    data: PreparedData,
    store: ResultsStore,
    *,
    train_fn: TrainFn | None = None,
    force: bool = False,
    keep_best: bool = True,
    keep_weights: bool = False,
    trackers: Sequence[Tracker] = (),
    on_run_start: Callable[[int, int, str, RunConfig], None] | None = None,
    on_epoch: Callable[[RunConfig, dict[str, Any]], None] | None = None,
    on_run_end: Callable[[RunOutcome], None] | None = None,
    robustness: bool = False,
    executor: str = "auto",
    max_group: int | None = DEFAULT_MAX_GROUP,
    compile: bool = False,
) -> SweepSummary:
    """Run every config on ``data`` (loaded once, shared by all runs) into ``store``.

    Finished runs already in the store are skipped unless ``force``; failed ones are retried.
    Each run's record is stored the moment it ends. A KeyboardInterrupt stops the sweep after
    discarding only the run(s) in flight; the summary says ``interrupted`` (exit code 130).
    Callbacks: ``on_run_start(index, total, run_id, config)`` before a run is trained,
    ``on_epoch(config, history_row)`` after each epoch, ``on_run_end(outcome)`` for every
    grid point (finished, failed or skipped). ``train_fn`` defaults to
    :func:`fusioncli.train.loop.train_run` (looked up at call time, so it can be patched).
    ``robustness`` adds ``record["robustness"]`` to each finished run (see :func:`fusioncli.jobs.train_one`).
    ``keep_best`` keeps the best run's weights in ``best/<fingerprint>/``; ``keep_weights`` every
    finished run's in ``weights/<run_id>.safetensors`` (for ``fusioncli evaluate --runs``).
    Each run is claimed in the store before it trains; runs another live sweep is training are
    left to it (``claimed`` outcomes).

    ``executor``: ``loop`` trains one run after another; ``stacked`` trains runs that differ
    only in lr, scheduler and seed together as one vmapped model, at most ``max_group`` at a
    time (:mod:`fusioncli.train.stacked`); ``auto`` picks by device (stacked on CUDA, the loop
    on the CPU). A custom ``train_fn`` always uses the loop. ``compile`` (stacked groups only)
    runs each group's forward through ``torch.compile``, compiled once per architecture.
    """
    from fusioncli.train.stacked import check_max_group, choose_executor

    started = time.perf_counter()
    check_max_group(max_group)
    store.repair()
    grid = resolve_grid(configs, data.fingerprint)
    recorder = OutcomeRecorder(
        store, len(grid), force=force, keep_best=keep_best, keep_weights=keep_weights, trackers=trackers,
        robustness=robustness, on_run_end=on_run_end, fingerprint=data.fingerprint,
    )  # fmt: skip
    device = grid[0][1].device if grid else "cpu"
    use_stacked = choose_executor(device, executor) == "stacked" and train_fn is None
    ended = recorder.ended
    interrupted = False
    try:
        todo = []
        for index, (rid, cfg) in enumerate(grid, start=1):
            outcome = recorder.skipped(index, rid, cfg) or recorder.claim(index, rid, cfg)
            if outcome is not None:
                ended(outcome)
            elif use_stacked:
                todo.append((index, rid, cfg))
            else:
                if on_run_start is not None:
                    on_run_start(index, len(grid), rid, cfg)
                ended(_run_one(recorder.begin(index, rid, cfg), data, train_fn=train_fn, robustness=robustness, on_epoch=on_epoch))
        if todo:
            _run_stacked(
                todo, recorder, data, robustness=robustness, max_group=max_group, compile=compile,
                on_run_start=on_run_start, on_epoch=on_epoch, ended=ended,
            )  # fmt: skip
    except KeyboardInterrupt:
        # Finished runs are already stored; only the run(s) in flight are lost.
        interrupted = True
    finally:
        recorder.release_claims()  # runs claimed but never trained
    return recorder.summary(interrupted=interrupted, started=started)


def _run_stacked(
    todo: Sequence[tuple[int, str, RunConfig]],
    recorder: OutcomeRecorder,
    data: PreparedData,
    *,
    robustness: bool,
    max_group: int | None,
    compile: bool,
    on_run_start: Callable[[int, int, str, RunConfig], None] | None,
    on_epoch: Callable[[RunConfig, dict[str, Any]], None] | None,
    ended: Callable[[RunOutcome], None],
) -> None:
    """Train the pending grid points in stacked groups and store each member's outcome.

    A group that fails as a whole (one member's loss turned NaN, out of memory) is re-run one
    member at a time with the loop, so each run gets its own finished or failed record.
    """
    from fusioncli.train.stacked import group_configs

    by_config = {id(cfg): (index, rid) for index, rid, cfg in todo}
    total = recorder.total
    for group in group_configs([cfg for _, _, cfg in todo], max_group):
        runs: dict[int, RunRecorder] = {}
        for cfg in group:
            index, rid = by_config[id(cfg)]
            if on_run_start is not None:
                on_run_start(index, total, rid, cfg)
            runs[id(cfg)] = recorder.begin(index, rid, cfg)

        def epoch_done(cfg: RunConfig, row: dict[str, Any]) -> None:
            runs[id(cfg)].epoch(row)
            if on_epoch is not None:
                on_epoch(cfg, dict(row))

        try:
            members = train_group(group, data, robustness=robustness, on_epoch=epoch_done, compile=compile)
        except KeyboardInterrupt:
            for run in runs.values():
                run.interrupted()
            raise
        except Exception as exc:  # noqa: BLE001 - retried run by run below, which records it
            recorder.warnings.append(group_failure_note(group, exc))
            free_device_memory(group[0].device)
            for cfg in group:
                run = runs[id(cfg)]
                run.history.clear()
                ended(_run_one(run, data, train_fn=None, robustness=robustness, on_epoch=on_epoch))
            continue
        for cfg, member in zip(group, members):
            run = runs[id(cfg)]
            if isinstance(member, MemberFailure):
                failure = failure_record(
                    cfg, run.run_id, member.error, data=data, history=run.history, started_at=member.started_at
                )
                ended(run.failed(failure))
            else:
                ended(run.finished(member.record, lambda model=member.model: model))


def group_failure_note(group: Sequence[RunConfig], exc: BaseException) -> str:
    """The sweep warning when a stacked group fails as a whole and is re-run one at a time."""
    return f"stacked group of {len(group)} failed ({error_message(exc)}); re-run one at a time"


def _run_one(
    run: RunRecorder,
    data: PreparedData,
    *,
    train_fn: TrainFn | None,
    robustness: bool,
    on_epoch: Callable[[RunConfig, dict[str, Any]], None] | None,
) -> RunOutcome:
    """Train one grid point in this process and store its record (finished or failed)."""
    cfg = run.config

    def epoch_done(row: dict[str, Any]) -> None:
        run.epoch(row)
        if on_epoch is not None:
            on_epoch(cfg, dict(row))

    started_at = _utc_now()
    error: tuple[str, str] | None = None
    try:
        trainer = train_fn if train_fn is not None else train_run  # looked up now: tests patch it
        result = train_one(cfg, data, train_fn=trainer, robustness=robustness, on_epoch=epoch_done)
    except KeyboardInterrupt:
        run.interrupted()
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, the sweep goes on
        error = describe_exception(exc)
    else:
        return run.finished(result.record, lambda: result.model)

    # Outside the except block: the exception (and the tensors its frames hold) is gone now.
    free_device_memory(cfg.device)
    return run.failed(failure_record(cfg, run.run_id, error, data=data, history=run.history, started_at=started_at))


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


def plan_sweep(
    configs: Sequence[RunConfig], fingerprint: str, store: ResultsStore, resolve: Resolver | None = None
) -> list[PlannedRun]:
    """What a sweep would do, without training: each grid point with its stored status.

    ``resolve`` as in :func:`resolve_grid` (the backend's rule for ``auto``).
    """
    plan = []
    for index, (rid, cfg) in enumerate(resolve_grid(configs, fingerprint, resolve), start=1):
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

