"""Run a sweep on a Ray cluster: one Ray task per run (or stacked group), records streamed into the local store.

The driver (this process) runs a sweep plan (:mod:`fusioncli.sweep.plan`): it skips finished
runs and submits one task per remaining run, reserving ``num_cpus=cpus_per_run`` and
``num_gpus=gpus_per_run``. A task loads
the prepared cache from ``cache_dir`` -- a path every node must see (shared storage such as
NFS, mounted at the same place) -- trains with :func:`fusioncli.jobs.train_one` and
returns the run record plus, when the driver keeps a best checkpoint, the weights as
safetensors bytes (a model is never pickled across). The driver stores each record the moment
its task completes (``ray.wait``), through the same :class:`~fusioncli.sweep.recorder.OutcomeRecorder`
as the local backend, so skip/resume, failed records, the best checkpoint and trackers behave
the same; a driver killed later loses only the runs still in flight.

Failures: an exception in a run becomes a failed record built on the worker (with its
traceback and the worker's environment); a task that dies with its worker (segfault, killed
for memory, node lost -- Ray retries it :data:`TASK_MAX_RETRIES` time(s) first) becomes a
failed record built on the driver. Either is retried by the next sweep. Ctrl-C cancels the
outstanding tasks and the sweep ends as interrupted (exit code 130).

Where configs run -- the rule for ``auto`` (:func:`fusioncli.sweep.plan.resolve_for_ray`): configs are resolved on
the driver, which may have no GPU while the workers do, so the device follows the resources
asked for, not the driver's hardware: a run that reserves GPU share (``gpus_per_run > 0``)
trains on ``cuda:0`` (Ray makes its reserved GPU the only one the task sees), otherwise on the
CPU. ``--precision auto`` is what the local backend would choose for that device on the driver
(so a local Ray instance gives the local backend's run ids), except that a driver without CUDA
sending runs to GPUs picks ``bf16``, which every GPU since Ampere computes natively. Explicit
precisions are checked on the worker: a worker without native bf16 fails the run with a message.

Time per task beyond training: loading the cache (:func:`fusioncli.data.cache.load_cache`,
once per task) and the weights' trip back to the driver (skipped when neither ``keep_best`` nor
``keep_weights`` wants them).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fusioncli.config import RunConfig
from fusioncli.errors import BadInputError
from fusioncli.jobs import MemberFailure, TrainFn, error_message, train_group, train_one
from fusioncli.machine import free_device_memory
from fusioncli.models.plugins import load_plugin_files, loaded_plugin_files
from fusioncli.record import FAILED, FINISHED, RunRecord
from fusioncli.results.store import ResultsStore
from fusioncli.sweep.plan import (
    DEFAULT_MAX_GROUP,
    LOCAL_ADDRESSES,
    PlannedRun,
    SweepPlan,
    SweepSpec,
    group_runs,
    plan_sweep,
)
from fusioncli.sweep.recorder import (
    TRACEBACK_CHARS,
    OutcomeRecorder,
    RunOutcome,
    SweepSummary,
    describe_exception,
    failure_record,
    group_failure_note,
)
from fusioncli.tracking import Tracker
from fusioncli.train.probes import utc_now

RAY_HINT = "install the ray extra: pip install 'fusioncli[ray]'"
SHARED_CACHE_NOTE = "on Ray the cache folder must be on storage every node sees at the same path"
# Ray re-runs a task whose worker died (node lost, killed for memory) this many times before
# the run counts as failed; exceptions raised by the run itself are never retried here.
TASK_MAX_RETRIES = 1
# ray.wait returns at least this often, so Ctrl-C reaches the driver promptly.
WAIT_SECONDS = 0.5


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`BadInputError` saying which extra to install."""
    try:
        import ray
    except ImportError:
        raise BadInputError("--backend ray needs the 'ray' package, which is not installed", hint=RAY_HINT) from None
    return ray


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to Ray for the duration; yields the ``ray`` module.

    Already connected (a notebook, a test): use that connection and leave it open. Otherwise
    ``None``/``"local"`` starts a Ray instance on this machine (``num_cpus``: default all) and
    ``"auto"`` or ``HOST:PORT`` joins a running cluster; either way the driver disconnects at
    the end, which stops only what was started here (a joined cluster keeps running).
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        if address in LOCAL_ADDRESSES:
            # "local" also ignores $RAY_ADDRESS: None means this machine, not some cluster.
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        if address in LOCAL_ADDRESSES:
            raise BadInputError(f"cannot start Ray on this machine: {error_message(exc)}") from None
        raise BadInputError(
            f"cannot connect to the Ray cluster at {address!r}: {error_message(exc)}",
            hint="start one with `ray start --head` (then --address auto), or leave out --address to run Ray here",
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_cluster(ray: Any, gpus_per_run: float, cpus_per_run: float) -> None:
    """Fail now, not never: Ray would leave a task no node can hold pending forever."""
    total = ray.cluster_resources()
    problems = []
    if gpus_per_run > 0 and total.get("GPU", 0) < gpus_per_run:
        problems.append(f"--gpus-per-run {gpus_per_run:g}: the Ray cluster has {total.get('GPU', 0):g} GPU(s)")
    if total.get("CPU", 0) < cpus_per_run:
        problems.append(f"--cpus-per-run {cpus_per_run:g}: the Ray cluster has {total.get('CPU', 0):g} CPU(s)")
    if problems:
        raise BadInputError(problems, hint="ask for less per run, or add nodes to the cluster")


def run_sweep_ray(
    configs: Sequence[RunConfig],
    cache_dir: Path,
    store: ResultsStore,
    *,
    address: str | None = None,
    gpus_per_run: float = 0.0,
    cpus_per_run: float = 1.0,
    force: bool = False,
    keep_best: bool = True,
    keep_weights: bool = False,
    trackers: Sequence[Tracker] = (),
    on_run_start: Callable[[int, int, str, RunConfig], None] | None = None,
    on_epoch: Callable[[RunConfig, dict[str, Any]], None] | None = None,
    on_run_end: Callable[[RunOutcome], None] | None = None,
    robustness: bool = False,
    train_fn: TrainFn | None = None,
    num_cpus: int | None = None,
    executor: str = "auto",
    max_group: int = DEFAULT_MAX_GROUP,
    compile: bool = False,
) -> SweepSummary:
    """Plan ``configs`` for Ray on the cache at ``cache_dir`` and run the plan (:func:`run_plan_ray`).

    Same run ids, skipping (``force``), failure records, best checkpoint (``keep_best``), kept
    weights (``keep_weights``) and exit codes as :func:`fusioncli.sweep.runner.run_sweep`.
    ``cache_dir`` must be visible at the same path on every node. ``address``:
    ``None``/``"local"`` starts Ray here (with ``num_cpus``, default all), ``"auto"`` or
    ``"HOST:PORT"`` joins a cluster; an existing connection is used as is. Each task reserves
    ``gpus_per_run`` GPUs (0..1; > 0 trains on CUDA) and ``cpus_per_run`` CPUs (also its torch
    threads). ``executor`` as for the local backend, decided by the runs' device (a GPU share ->
    CUDA): ``stacked`` (``auto`` on CUDA) sends each stacked group of at most ``max_group`` runs
    as one task, which reserves the shares for the whole group; ``loop`` one task per run.
    """
    spec = SweepSpec(
        configs=tuple(configs), backend="ray", executor=executor, max_group=max_group, compile=compile,
        force=force, robustness=robustness, keep_weights=keep_weights, address=address,
        gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run,
    )  # fmt: skip
    import_ray()  # before anything else costs time: a missing extra is a usage error
    return run_plan_ray(
        plan_sweep(spec, cache_dir, store), store, keep_best=keep_best, trackers=trackers,
        on_run_start=on_run_start, on_epoch=on_epoch, on_run_end=on_run_end, train_fn=train_fn, num_cpus=num_cpus,
    )  # fmt: skip


def run_plan_ray(
    plan: SweepPlan,
    store: ResultsStore,
    *,
    keep_best: bool = True,
    trackers: Sequence[Tracker] = (),
    on_run_start: Callable[[int, int, str, RunConfig], None] | None = None,
    on_epoch: Callable[[RunConfig, dict[str, Any]], None] | None = None,
    on_run_end: Callable[[RunOutcome], None] | None = None,
    train_fn: TrainFn | None = None,
    num_cpus: int | None = None,
) -> SweepSummary:
    """Run ``plan`` (planned for the Ray backend) as Ray tasks; store each record here as it completes.

    Ray starts only if some run is left to train. Callbacks run on the driver: ``on_run_start``
    as each run is submitted, ``on_epoch`` for each history row and trackers' calls when the
    run's result arrives (replayed, in order), ``on_run_end(outcome)`` for every grid point in
    the order they end. ``train_fn`` runs on the workers (it must be importable there or
    picklable by value; default ``train_run``); a custom one means one task per run.
    ``compile`` (stacked groups) is compiled once per architecture per worker process.
    """
    spec = plan.spec
    import_ray()
    cache_dir = plan.cache_dir
    class_names = cache_manifest_class_names(cache_dir)
    dataset = {"fingerprint": plan.fingerprint, "class_names": class_names}
    use_stacked = plan.executor == "stacked" and train_fn is None

    started = time.perf_counter()
    store.repair()
    recorder = OutcomeRecorder.for_plan(plan, store, keep_best=keep_best, trackers=trackers, on_run_end=on_run_end)
    ended = recorder.ended
    interrupted = False
    try:
        todo: list[PlannedRun] = []
        for run in plan.runs:
            # Claimed here, on the driver, which stores the records (another sweep leaves them be).
            skipped = recorder.planned_skip(run) or recorder.claim(run.index, run.run_id, run.config)
            if skipped is None:
                todo.append(run)
            else:
                ended(skipped)
        if todo:
            with ray_session(spec.address, num_cpus) as ray:
                _check_cluster(ray, spec.gpu_share, spec.cpu_share)
                options = {
                    "num_cpus": spec.cpu_share,
                    "num_gpus": spec.gpu_share,
                    "max_retries": TASK_MAX_RETRIES,
                    "retry_exceptions": False,
                }
                run_remote = ray.remote(run_task).options(**options)
                group_remote = ray.remote(group_task).options(**options)
                send_weights = keep_best or spec.keep_weights
                common = {
                    "cpus_per_run": spec.cpu_share,
                    "send_weights": send_weights,
                    "robustness": spec.robustness,
                    "plugins": loaded_plugin_files(),  # the workers load the driver's plugins
                }
                pending: dict[Any, tuple[list[PlannedRun], str]] = {}
                try:
                    batches = group_runs(todo, spec.max_group) if use_stacked else [[run] for run in todo]
                    for batch in batches:
                        if use_stacked:
                            cfgs = [run.config.to_dict() for run in batch]
                            rids = [run.run_id for run in batch]
                            ref = group_remote.remote(
                                cfgs, rids, str(cache_dir), dataset, compile=spec.compile, **common
                            )
                        else:
                            (one,) = batch
                            ref = run_remote.remote(
                                one.config.to_dict(), one.run_id, str(cache_dir), dataset, train_fn=train_fn, **common
                            )
                        pending[ref] = (batch, utc_now())
                        if on_run_start is not None:
                            for run in batch:
                                on_run_start(run.index, plan.total, run.run_id, run.config)
                    while pending:
                        ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_SECONDS)
                        for ref in ready:
                            batch, submitted_at = pending.pop(ref)
                            for outcome in _collect(ray, ref, recorder, batch, dataset, submitted_at, on_epoch):
                                ended(outcome)
                finally:
                    # Ctrl-C, or a store that cannot be written: stop what is still running.
                    _cancel(ray, pending)
    except KeyboardInterrupt:
        # Finished runs are already stored; only the runs in flight are lost.
        interrupted = True
    finally:
        recorder.release_claims()  # runs claimed but never stored (cancelled, or an error)
    return recorder.summary(interrupted=interrupted, started=started)


def cache_manifest_class_names(cache_dir: Path) -> list[str]:
    """The class names of the prepared cache (what a failed record of a task that never ran says)."""
    from fusioncli.sweep.plan import cache_manifest

    return list(cache_manifest(cache_dir)["class_names"])


def _cancel(ray: Any, pending: dict[Any, Any]) -> None:
    for ref in pending:
        with contextlib.suppress(Exception):  # already finished, or the cluster is gone
            ray.cancel(ref, force=True)


def _collect(
    ray: Any,
    ref: Any,
    recorder: OutcomeRecorder,
    batch: Sequence[PlannedRun],
    dataset: dict[str, Any],
    submitted_at: str,
    on_epoch: Callable[[RunConfig, dict[str, Any]], None] | None,
) -> list[RunOutcome]:
    """Store the outcome of each run of one completed task (finished, failed in the run, or died)."""
    try:
        payload = ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - the worker died, the node was lost, the task never ran
        # A RayTaskError carries the exception raised on the worker as .cause; its str() has
        # the remote traceback.
        cause = getattr(exc, "cause", None)
        message = error_message(cause if isinstance(cause, BaseException) else exc)
        error = (message, str(exc)[-TRACEBACK_CHARS:])
        outcomes = []
        for planned in batch:
            cfg, rid = planned.config, planned.run_id
            # The worker's machine is unknown here; the driver's would mislead.
            record = failure_record(cfg, rid, error, dataset=dataset, started_at=submitted_at).without_env()
            outcomes.append(recorder.begin(planned.index, rid, cfg).failed(record))
        return outcomes

    payloads = payload if isinstance(payload, list) else [payload]
    outcomes = []
    for planned, member in zip(batch, payloads):
        index, rid, cfg = planned.index, planned.run_id, planned.config
        for note in member.get("warnings", ()):
            if note not in recorder.warnings:
                recorder.warnings.append(note)
        record = RunRecord.from_json(member["record"])  # it crossed the process boundary as JSON
        run = recorder.begin(index, rid, cfg)
        for row in record.history:
            run.epoch(row)
            if on_epoch is not None:
                on_epoch(cfg, dict(row))
        if member["status"] == FINISHED:
            weights = member.get("weights")
            # A payload without input_size comes from a worker that predates sizes: 64 x 64.
            rebuild = partial(model_from_weights, record, weights, input_size=member.get("input_size"))
            outcomes.append(run.finished(record, rebuild))
        else:
            outcomes.append(run.failed(record))
    return outcomes


def weights_to_bytes(model: Any) -> bytes:
    """The model's state dict as safetensors bytes (CPU, contiguous, unshared)."""
    from safetensors.torch import save

    state = {name: t.detach().to("cpu").contiguous().clone() for name, t in model.state_dict().items()}
    return save(state)


def model_from_weights(record: RunRecord, weights: bytes | None, *, input_size: Sequence[int] | None = None) -> Any:
    """Rebuild the model of a finished ``record`` from :func:`weights_to_bytes` output, for
    ``input_size`` (H, W) images (the payload's ``input_size``; None: 64 x 64)."""
    from safetensors.torch import load

    from fusioncli.models import DEFAULT_INPUT_SIZE, create_model

    if weights is None:
        raise ValueError("the task sent no weights")
    class_names = record.dataset.class_names if record.dataset is not None else None
    if not class_names:
        raise ValueError("the record does not name its classes")
    model = create_model(
        record.config["strategy"], record.config["backbone"], len(class_names),
        input_size=DEFAULT_INPUT_SIZE if input_size is None else tuple(input_size), **record.input_norms,
    )  # fmt: skip
    model.load_state_dict(load(weights), strict=True)
    model.eval()
    return model


def run_task(
    config: dict[str, Any],
    rid: str,
    cache_dir: str,
    dataset: dict[str, Any],
    *,
    cpus_per_run: float = 1.0,
    send_weights: bool = True,
    robustness: bool = False,
    train_fn: TrainFn | None = None,
    plugins: Sequence[str] = (),
) -> dict[str, Any]:
    """One run on a Ray worker: load the cache, train, return ``{"status", "record"[, "weights", "input_size"]}``.

    Plain data in and out (the config dict, the record as :meth:`RunRecord.to_json`, weights as
    safetensors bytes). An exception in the run comes back as a failed record built here, where
    the data and the traceback are.
    """
    import torch

    # Ray sets OMP_NUM_THREADS for a task, but a reused worker keeps torch's earlier setting.
    torch.set_num_threads(max(1, int(cpus_per_run)))
    load_plugin_files(plugins)  # before the config names a plugin strategy
    cfg = RunConfig.from_dict(config)
    try:
        data, failed = _load_or_fail([cfg], [rid], Path(cache_dir), dataset)
        if failed:
            return failed[0]
        return _train_loaded(cfg, rid, data, dataset, send_weights, robustness, train_fn)
    finally:
        # The run's data and model are released by now; runs sharing this GPU (a fractional
        # --gpus-per-run) get the memory back instead of it staying cached in an idle worker.
        free_device_memory(cfg.device)


def _load_or_fail(
    cfgs: Sequence[RunConfig], rids: Sequence[str], cache_dir: Path, dataset: dict[str, Any]
) -> tuple[Any, list[dict[str, Any]]]:
    """``(data, [])`` with the cache loaded on this worker, or ``(None, failed payloads)`` --
    one per run, every run of the task fails with the load's error."""
    started_at = utc_now()
    try:
        return _load_on_worker(cache_dir, cfgs[0].device, dataset["fingerprint"]), []
    except Exception as exc:  # noqa: BLE001 - recorded as the runs' failure, like the local backend
        error = describe_exception(exc)
        return None, [_failed_payload(cfg, rid, error, dataset, started_at=started_at) for cfg, rid in zip(cfgs, rids)]


def _train_loaded(
    cfg: RunConfig,
    rid: str,
    data: Any,
    dataset: dict[str, Any],
    send_weights: bool,
    robustness: bool,
    train_fn: TrainFn | None,
) -> dict[str, Any]:
    """Train one run on data already loaded on this worker; its payload, finished or failed."""
    started_at = utc_now()
    history: list[dict[str, Any]] = []
    try:
        result = train_one(cfg, data, train_fn=train_fn, robustness=robustness, on_epoch=history.append)
    except Exception as exc:  # noqa: BLE001 - recorded as the run's failure, like the local backend
        return _failed_payload(
            cfg, rid, describe_exception(exc), dataset, data=data, history=history, started_at=started_at
        )
    return _finished_payload(result, send_weights)


def _finished_payload(result: Any, send_weights: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {"status": FINISHED, "record": result.record.to_json()}
    if send_weights:
        from fusioncli.models import model_input_size

        payload["weights"] = weights_to_bytes(result.model)
        payload["input_size"] = list(model_input_size(result.model))  # what the driver rebuilds it for
    return payload


def _failed_payload(
    cfg: RunConfig,
    rid: str,
    error: tuple[str, str],
    dataset: dict[str, Any],
    *,
    data: Any = None,
    history: list[dict[str, Any]] | None = None,
    started_at: str,
) -> dict[str, Any]:
    record = failure_record(cfg, rid, error, data=data, dataset=dataset, history=history or [], started_at=started_at)
    return {"status": FAILED, "record": record.to_json()}


def group_task(
    configs: list[dict[str, Any]],
    rids: list[str],
    cache_dir: str,
    dataset: dict[str, Any],
    *,
    cpus_per_run: float = 1.0,
    send_weights: bool = True,
    robustness: bool = False,
    compile: bool = False,
    plugins: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One stacked group on a Ray worker: load the cache once, train the runs together
    (:func:`fusioncli.jobs.train_group`), return one :func:`run_task` payload per run.

    A group that fails as a whole is re-run here one run at a time, as the local backend does;
    the first payload then carries the note in ``"warnings"``.
    """
    import torch

    torch.set_num_threads(max(1, int(cpus_per_run)))
    load_plugin_files(plugins)
    cfgs = [RunConfig.from_dict(c) for c in configs]
    try:
        return _train_group_on_worker(cfgs, rids, Path(cache_dir), dataset, send_weights, robustness, compile)
    finally:
        free_device_memory(cfgs[0].device)


def _train_group_on_worker(
    cfgs: list[RunConfig],
    rids: list[str],
    cache_dir: Path,
    dataset: dict[str, Any],
    send_weights: bool,
    robustness: bool,
    compile: bool = False,
) -> list[dict[str, Any]]:
    data, failed = _load_or_fail(cfgs, rids, cache_dir, dataset)
    if failed:
        return failed
    histories: dict[int, list[dict[str, Any]]] = {id(cfg): [] for cfg in cfgs}
    try:
        members = train_group(
            cfgs, data, robustness=robustness, on_epoch=lambda cfg, row: histories[id(cfg)].append(row), compile=compile
        )
    except Exception as exc:  # noqa: BLE001 - re-run one at a time, each with its own record
        note = group_failure_note(cfgs, exc)
        free_device_memory(cfgs[0].device)
        payloads = [
            _train_loaded(cfg, rid, data, dataset, send_weights, robustness, None) for cfg, rid in zip(cfgs, rids)
        ]
        payloads[0]["warnings"] = [note]
        return payloads
    payloads = []
    for cfg, rid, member in zip(cfgs, rids, members):
        if isinstance(member, MemberFailure):
            payloads.append(
                _failed_payload(
                    cfg, rid, member.error, dataset, data=data, history=histories[id(cfg)], started_at=member.started_at
                )
            )
        else:
            payloads.append(_finished_payload(member, send_weights))
    return payloads


def _load_on_worker(cache_dir: Path, device: str, fingerprint: str) -> Any:
    """The cache on this worker's device; a cache this node cannot see (or sees different) fails."""
    from fusioncli.data.cache import load_cache

    node = socket.gethostname()
    try:
        data = load_cache(cache_dir, device)
    except BadInputError as exc:
        raise BadInputError([f"Ray node {node}: {p}" for p in exc.problems] + [SHARED_CACHE_NOTE]) from None
    if data.fingerprint != fingerprint:
        raise BadInputError(
            f"Ray node {node}: the cache at {cache_dir} holds other data than the driver's "
            f"(fingerprint {data.fingerprint[:12]}, driver {fingerprint[:12]}); {SHARED_CACHE_NOTE}"
        )
    return data
