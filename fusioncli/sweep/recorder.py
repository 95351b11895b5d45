"""What a sweep stores for each grid point, whichever executor ran it: one recorder.

:class:`OutcomeRecorder` is the one place that decides a skip at run time (after claiming the
run: another sweep may have finished it since the plan was made), writes finished and failed
records, keeps the best checkpoint of the run's dataset (and every run's weights with
``keep_weights``), calls the trackers, and builds the :class:`SweepSummary`. The local
executors (:mod:`fusioncli.sweep.runner`) and the Ray executor
(:mod:`fusioncli.sweep.ray_backend`) both store their outcomes through it, and neither imports
the other.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusioncli.config import RunConfig
from fusioncli.data.dataset import PreparedData
from fusioncli.jobs import error_message
from fusioncli.record import FAILED, FINISHED, DatasetInfo, RunRecord
from fusioncli.results.store import Claim, ResultsStore, record_fingerprint
from fusioncli.sweep.plan import PlannedRun, SweepPlan, needs_training
from fusioncli.tracking import EXIT_TRACKER_MISSED, Artifact, Ledger, RunTracking, Tracker
from fusioncli.train.loop import failed_record
from fusioncli.train.probes import utc_now

SKIPPED = "skipped"
CLAIMED = "claimed"  # another live sweep is training the run: left to it, not finished here
TRACEBACK_CHARS = 4000


@dataclass
class RunOutcome:
    """What happened to one grid point."""

    index: int  # 1-based position in the sweep
    total: int
    run_id: str
    config: RunConfig  # resolved
    status: str  # "finished" | "failed" | "skipped" | "claimed"
    record: RunRecord | None  # the stored record (None: claimed by another sweep, or none stored)
    error: str | None = None
    new_best: bool = False
    warnings: list[str] = field(default_factory=list)
    tracker_problems: list[str] = field(default_factory=list)  # what the trackers missed of this run
    tracker_runs: dict[str, str] = field(default_factory=dict)  # tracker name -> its run id


@dataclass
class SweepSummary:
    """The outcome of a sweep: one entry per grid point that was reached, in grid order."""

    outcomes: list[RunOutcome]
    total: int
    interrupted: bool
    seconds: float
    best: RunRecord | None  # the best record of the sweep's dataset after the sweep
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
    def tracker_problems(self) -> list[str]:
        """Every tracker problem of the sweep's runs, in grid order."""
        return [p for o in self.outcomes for p in o.tracker_problems]

    @property
    def exit_code(self) -> int:
        """130 when interrupted, 1 when any run failed, 3 (:data:`~fusioncli.tracking.EXIT_TRACKER_MISSED`)
        when every run is stored but a tracker missed some of it, else 0."""
        if self.interrupted:
            return 130
        if self.failed:
            return 1
        return EXIT_TRACKER_MISSED if self.tracker_problems else 0


def describe_exception(exc: BaseException) -> tuple[str, str]:
    """(message, traceback text) of a run's exception: text only, for its failed record.

    Text rather than the exception itself: its frames hold the failed run's tensors, and a
    remote worker's exception has to travel back as something plain.
    """
    return error_message(exc), "".join(traceback.format_exception(exc))[-TRACEBACK_CHARS:]


def _is_better(record: RunRecord, best: RunRecord | None) -> bool:
    """Higher val accuracy wins; on a tie the lower val loss; a NaN never wins."""
    acc, loss = record.val_accuracy, record.val_loss
    if acc is None or not math.isfinite(acc):
        return False
    if best is None:
        return True
    if best.run_id == record.run_id:
        return True  # the best run recomputed (--force): its checkpoint must be the new weights
    best_acc, best_loss = best.val_accuracy, best.val_loss
    if best_acc is None or not math.isfinite(best_acc) or acc > best_acc:
        return True
    if acc < best_acc:
        return False
    if loss is None or not math.isfinite(loss):
        return False
    return best_loss is None or not math.isfinite(best_loss) or loss < best_loss


def _dataset_stub(data: PreparedData | None, dataset: dict[str, Any] | None) -> DatasetInfo | None:
    """What a failed record says about data it never trained on (sizes unknown)."""
    if data is not None:
        return DatasetInfo(data.fingerprint, tuple(data.class_names))
    if dataset is not None:
        return DatasetInfo(dataset.get("fingerprint"), tuple(dataset.get("class_names") or ()))
    return None


def failure_record(
    cfg: RunConfig,
    rid: str,
    error: tuple[str, str],
    *,
    data: PreparedData | None = None,
    dataset: dict[str, Any] | None = None,
    history: Sequence[dict[str, Any]] = (),
    started_at: str,
) -> RunRecord:
    """A failed run's record, the same shape wherever the run failed; never raises.

    ``error`` is ``(message, traceback)`` (:func:`describe_exception`). ``data`` is the full
    dataset when the run had it loaded; otherwise ``dataset`` (``fingerprint``,
    ``class_names``: the plan's description of the data) says what is known without it.
    ``history`` holds the epochs that did finish (e.g. up to a NaN). A second failure while
    describing the first (out of memory again) still gives a record, with ``record_error`` set.
    """
    message, trace = error
    try:
        known = failed_record(cfg, data, message, started_at=started_at)
        config, found, env, record_error = known.config, known.dataset, known.env, None
        started, finished = known.started_at, known.finished_at or utc_now()
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory again while describing the data
        config, found, env, record_error = cfg.to_dict(), None, None, error_message(exc)
        started, finished = started_at, utc_now()
    return RunRecord.failed(
        config,
        rid,
        message,
        started_at=started,
        finished_at=finished,
        dataset=found if found is not None else _dataset_stub(data, dataset),
        history=[dict(row) for row in history],
        env=env,
        traceback=trace,
        record_error=record_error,
    )


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
        run = recorder.begin(index, rid, cfg)              # opens the run's own tracker runs
        run.epoch(row)                                     # each tracker run: this epoch
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
        self.ledger = Ledger(store.root) if self.trackers else None  # which tracker runs hold which run
        self.warnings: list[str] = []  # every run's warnings, in the order runs ended
        self.outcomes: list[RunOutcome] = []  # in the order runs ended
        self.on_run_end = on_run_end

    @classmethod
    def for_plan(
        cls,
        plan: SweepPlan,
        store: ResultsStore,
        *,
        keep_best: bool = True,
        trackers: Sequence[Tracker] = (),
        on_run_end: Callable[[RunOutcome], None] | None = None,
    ) -> OutcomeRecorder:
        """The recorder of ``plan``'s sweep: its size, dataset and spec's force / weights / robustness."""
        spec = plan.spec
        return cls(
            store, plan.total, force=spec.force, keep_best=keep_best, keep_weights=spec.keep_weights,
            trackers=trackers, robustness=spec.robustness, on_run_end=on_run_end, fingerprint=plan.fingerprint,
        )  # fmt: skip

    def skipped(self, index: int, rid: str, cfg: RunConfig) -> RunOutcome | None:
        """The ``skipped`` outcome when ``rid`` need not train (:func:`~fusioncli.sweep.plan.needs_training`:
        a finished record is stored, and neither ``force``, ``robustness`` nor ``keep_weights``
        asks for it again); None when it must train."""
        if needs_training(
            self.store, rid, force=self.force, robustness=self.robustness, keep_weights=self.keep_weights
        ):
            return None
        return RunOutcome(index, self.total, rid, cfg, SKIPPED, self.store.get(rid))

    def planned_skip(self, run: PlannedRun) -> RunOutcome | None:
        """The ``skipped`` outcome of a run the plan skips (with its stored record), else None."""
        if run.trains:
            return None
        return RunOutcome(run.index, self.total, run.run_id, run.config, SKIPPED, self.store.get(run.run_id))

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
        # This run's own tracker runs (one per tracker), never shared with another run.
        self.tracking = (
            RunTracking(sweep.trackers, rid, cfg.to_dict(), fingerprint=sweep.fingerprint, ledger=sweep.ledger)
            if sweep.trackers
            else None
        )

    def epoch(self, row: dict[str, Any]) -> None:
        """One finished epoch (a history row)."""
        self.history.append(dict(row))
        if self.tracking is not None:
            self.tracking.epoch(dict(row))

    def restart(self, reason: str) -> None:
        """The run starts over (its stacked group failed as a whole): forget its epochs and close
        its tracker runs as failed (``reason``); the retry gets new ones."""
        self.history.clear()
        if self.tracking is not None:
            self.tracking.restart(reason)

    def finished(self, record: RunRecord, get_model: Callable[[], Any]) -> RunOutcome:
        """Store a finished run's record; ``get_model()`` is called (once) only when weights are saved."""
        store = self.sweep.store
        if not record.is_finished:
            raise ValueError(f"run {self.run_id}: a {record.status} record is not a finished run")
        # The key the store and the skip check use; train_run computes the same one.
        record = record.with_run_id(self.run_id)
        model = _Once(get_model)
        # Weights before the record: if we die in between, the run is redone (and compared for
        # best again), rather than a finished record lacking the weights it should have.
        if self.sweep.keep_weights:
            from fusioncli.train.checkpoint import save_checkpoint

            try:
                save_checkpoint(store.weights_path(self.run_id), model(), record)
            except Exception as exc:  # noqa: BLE001 - a full disk must not lose the record
                self.warnings.append(f"weights not kept: {error_message(exc)}")
        artifacts: list[Artifact] = []
        if self.sweep.keep_weights and store.has_weights(self.run_id):
            artifacts.append(Artifact(store.weights_path(self.run_id), "model"))
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
        if new_best and not artifacts and record.fingerprint is not None:
            artifacts.append(Artifact(store.best_checkpoint_for(record.fingerprint), "model"))
        return self._end(FINISHED, record, new_best=new_best, artifacts=artifacts)

    def failed(self, record: RunRecord) -> RunOutcome:
        """Store a failed run's record (built by :func:`failure_record`)."""
        if record.is_finished:
            raise ValueError(f"run {self.run_id}: a finished record is not a failed run")
        record = record.with_run_id(self.run_id)
        self.sweep.store.write(record)
        return self._end(FAILED, record, error=record.error)

    def interrupted(self) -> None:
        """The run was stopped (Ctrl-C): trackers close it; nothing is stored."""
        self.sweep.release(self.run_id)
        if self.tracking is not None:
            self.tracking.interrupted()

    def _end(
        self,
        status: str,
        record: RunRecord,
        *,
        new_best: bool = False,
        error: str | None = None,
        artifacts: Sequence[Artifact] = (),
    ) -> RunOutcome:
        self.sweep.release(self.run_id)  # the record is stored: the run is no longer in flight
        problems: list[str] = []
        if self.tracking is not None:
            # The stored record, its JSON attached; a tracker's failure stays this run's problem.
            self.tracking.finish(record.to_json(), artifacts)
            problems = list(self.tracking.problems)
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
            tracker_problems=problems,
            tracker_runs=self.tracking.ids if self.tracking is not None else {},
        )


def group_failure_note(group: Sequence[RunConfig], exc: BaseException) -> str:
    """The sweep warning when a stacked group fails as a whole and is re-run one at a time."""
    return f"stacked group of {len(group)} failed ({error_message(exc)}); re-run one at a time"
