"""The local executors: run a sweep plan in this process, on data loaded once.

What a sweep guarantees, whichever executor runs it (here, or Ray in
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

The plan (:mod:`fusioncli.sweep.plan`) says what runs, in which order and with which executor;
outcomes are stored through :class:`~fusioncli.sweep.recorder.OutcomeRecorder`; what a run or a
stacked group does (train + optional robustness evaluation) is :mod:`fusioncli.jobs`'
:func:`~fusioncli.jobs.train_one` / :func:`~fusioncli.jobs.train_group`. :func:`run_plan_local`
executes a plan; :func:`run_sweep` plans a list of configs and executes it (the library's short
form). The train function is injectable (``train_fn``), so tests can drive it with a fake.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from fusioncli.config import RunConfig
from fusioncli.data.dataset import PreparedData
from fusioncli.jobs import MemberFailure, TrainFn, train_group, train_one
from fusioncli.machine import free_device_memory
from fusioncli.results.store import ResultsStore
from fusioncli.sweep.plan import DEFAULT_MAX_GROUP, PlannedRun, SweepPlan, SweepSpec, group_runs, plan_grid
from fusioncli.sweep.recorder import (
    OutcomeRecorder,
    RunOutcome,
    RunRecorder,
    SweepSummary,
    describe_exception,
    failure_record,
    group_failure_note,
)
from fusioncli.tracking import Tracker
from fusioncli.train.loop import train_run  # the sweep's default trainer (tests patch it here)
from fusioncli.train.probes import utc_now

RunStart = Callable[[int, int, str, RunConfig], None]
EpochDone = Callable[[RunConfig, dict[str, Any]], None]


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
    on_run_start: RunStart | None = None,
    on_epoch: EpochDone | None = None,
    on_run_end: Callable[[RunOutcome], None] | None = None,
    robustness: bool = False,
    executor: str = "auto",
    max_group: int = DEFAULT_MAX_GROUP,
    compile: bool = False,
) -> SweepSummary:
    """Plan ``configs`` on ``data`` (loaded once, shared by all runs) and run the plan into ``store``.

    Finished runs already in the store are skipped unless ``force``; failed ones are retried.
    ``robustness`` adds the robustness evaluation to each finished run (and retrains finished
    runs stored without it); ``keep_best`` keeps the best run's weights in
    ``best/<fingerprint>/``; ``keep_weights`` every finished run's in
    ``weights/<run_id>.safetensors`` (for ``fusioncli evaluate --runs``). ``executor``:
    ``loop`` trains one run after another; ``stacked`` trains runs that differ only in lr,
    scheduler and seed together as one vmapped model, at most ``max_group`` at a time
    (:mod:`fusioncli.train.stacked`); ``auto`` picks by device (stacked on CUDA, the loop on
    the CPU). ``compile`` (stacked groups only) runs each group's forward through
    ``torch.compile``, once per architecture. Callbacks and ``train_fn``: :func:`run_plan_local`.
    """
    spec = SweepSpec(
        configs=tuple(configs), executor=executor, max_group=max_group, compile=compile, force=force,
        robustness=robustness, keep_weights=keep_weights,
    )  # fmt: skip
    return run_plan_local(
        plan_grid(spec, data.fingerprint, store), data, store, train_fn=train_fn, keep_best=keep_best,
        trackers=trackers, on_run_start=on_run_start, on_epoch=on_epoch, on_run_end=on_run_end,
    )  # fmt: skip


def run_plan_local(
    plan: SweepPlan,
    data: PreparedData,
    store: ResultsStore,
    *,
    train_fn: TrainFn | None = None,
    keep_best: bool = True,
    trackers: Sequence[Tracker] = (),
    on_run_start: RunStart | None = None,
    on_epoch: EpochDone | None = None,
    on_run_end: Callable[[RunOutcome], None] | None = None,
) -> SweepSummary:
    """Run ``plan`` in this process on ``data`` (its dataset) into ``store``.

    Each record is stored the moment its run ends. Each run to train is claimed first (after
    the claim, the skip rule is checked again: another sweep may have finished it since the
    plan was made). A KeyboardInterrupt stops the sweep after discarding only the run(s) in
    flight; the summary says ``interrupted`` (exit code 130). Callbacks:
    ``on_run_start(index, total, run_id, config)`` before a run is trained,
    ``on_epoch(config, history_row)`` after each epoch, ``on_run_end(outcome)`` for every grid
    point (finished, failed, skipped or claimed). ``train_fn`` defaults to
    :func:`fusioncli.train.loop.train_run`; a custom one always uses the loop executor.
    """
    spec = plan.spec
    started = time.perf_counter()
    store.repair()
    recorder = OutcomeRecorder.for_plan(plan, store, keep_best=keep_best, trackers=trackers, on_run_end=on_run_end)
    use_stacked = plan.executor == "stacked" and train_fn is None
    ended = recorder.ended
    interrupted = False
    try:
        todo: list[PlannedRun] = []
        for run in plan.runs:
            outcome = recorder.planned_skip(run) or recorder.claim(run.index, run.run_id, run.config)
            if outcome is not None:
                ended(outcome)
            elif use_stacked:
                todo.append(run)
            else:
                if on_run_start is not None:
                    on_run_start(run.index, plan.total, run.run_id, run.config)
                one = recorder.begin(run.index, run.run_id, run.config)
                ended(_run_one(one, data, train_fn=train_fn, robustness=spec.robustness, on_epoch=on_epoch))
        if todo:
            _run_stacked(
                todo, recorder, data, robustness=spec.robustness, max_group=spec.max_group, compile=spec.compile,
                on_run_start=on_run_start, on_epoch=on_epoch, ended=ended,
            )  # fmt: skip
    except KeyboardInterrupt:
        # Finished runs are already stored; only the run(s) in flight are lost.
        interrupted = True
    finally:
        recorder.release_claims()  # runs claimed but never trained
    return recorder.summary(interrupted=interrupted, started=started)


def _run_stacked(
    todo: Sequence[PlannedRun],
    recorder: OutcomeRecorder,
    data: PreparedData,
    *,
    robustness: bool,
    max_group: int,
    compile: bool,
    on_run_start: RunStart | None,
    on_epoch: EpochDone | None,
    ended: Callable[[RunOutcome], None],
) -> None:
    """Train the pending grid points in stacked groups and store each member's outcome.

    A group that fails as a whole (one member's loss turned NaN, out of memory) is re-run one
    member at a time with the loop, so each run gets its own finished or failed record.
    """
    total = recorder.total
    for planned in group_runs(todo, max_group):
        group = [p.config for p in planned]
        runs: dict[int, RunRecorder] = {}
        for p in planned:
            if on_run_start is not None:
                on_run_start(p.index, total, p.run_id, p.config)
            runs[id(p.config)] = recorder.begin(p.index, p.run_id, p.config)

        def epoch_done(cfg: RunConfig, row: dict[str, Any], runs: dict[int, RunRecorder] = runs) -> None:
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
            note = group_failure_note(group, exc)
            recorder.warnings.append(note)
            free_device_memory(group[0].device)
            for cfg in group:
                run = runs[id(cfg)]
                run.restart(note)  # its epochs so far (and tracker runs) are dropped
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
                ended(run.finished(member.record, functools.partial(_same, member.model)))


def _same(model: Any) -> Any:
    """The model itself: a finished member's model, handed over as a zero-argument getter."""
    return model


def _run_one(
    run: RunRecorder,
    data: PreparedData,
    *,
    train_fn: TrainFn | None,
    robustness: bool,
    on_epoch: EpochDone | None,
) -> RunOutcome:
    """Train one grid point in this process and store its record (finished or failed)."""
    cfg = run.config

    def epoch_done(row: dict[str, Any]) -> None:
        run.epoch(row)
        if on_epoch is not None:
            on_epoch(cfg, dict(row))

    started_at = utc_now()
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


def load_plan_data(plan: SweepPlan) -> PreparedData:
    """Load the plan's prepared cache once, onto the device its runs train on."""
    from fusioncli.data.cache import load_cache

    return load_cache(plan.cache_dir, plan.device)
