"""Which executor runs a sweep plan: the public entry points above the local and the Ray backend.

It sits above both so that neither imports the other: the Ray backend and the local runner
each build on :mod:`fusioncli.sweep.plan` and :mod:`fusioncli.sweep.recorder` only.

    spec = SweepSpec(configs=expand_grid(lrs=[1e-4, 1e-5], epochs=3))
    plan = plan_sweep(spec, cache_dir, ResultsStore(results_dir))   # what would run (a dry run)
    summary = run_plan(plan, ResultsStore(results_dir))             # run it
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusioncli.config import RunConfig
from fusioncli.results.store import ResultsStore
from fusioncli.sweep.plan import BACKENDS, SweepPlan, SweepSpec, plan_sweep
from fusioncli.sweep.recorder import SweepSummary

__all__ = ["BACKENDS", "run_plan", "sweep_from_cache"]

# run_plan's keyword arguments that are about running (the rest make the spec).
_RUN_OPTIONS = ("keep_best", "trackers", "on_run_start", "on_epoch", "on_run_end", "train_fn", "num_cpus")


def run_plan(plan: SweepPlan, store: ResultsStore, **options: Any) -> SweepSummary:
    """Run ``plan`` into ``store`` with its backend's executor.

    ``options``: ``keep_best``, ``trackers``, ``on_run_start``, ``on_epoch``, ``on_run_end``,
    ``train_fn`` (and ``num_cpus`` for a Ray instance started here). The local backend loads the
    plan's cache once, onto the plan's device.
    """
    if plan.spec.backend == "ray":
        # Imported here: a local sweep does not load the Ray backend.
        from fusioncli.sweep.ray_backend import run_plan_ray

        return run_plan_ray(plan, store, **options)
    from fusioncli.sweep.runner import load_plan_data, run_plan_local

    options.pop("num_cpus", None)
    return run_plan_local(plan, load_plan_data(plan), store, **options)


def sweep_from_cache(
    configs: Sequence[RunConfig], cache_dir: Path, results_dir: Path, *, backend: str = "local", **kwargs: Any
) -> SweepSummary:
    """Sweep ``configs`` on the cache at ``cache_dir`` into the store at ``results_dir``.

    The short form of spec -> plan -> run: ``kwargs`` are :class:`~fusioncli.sweep.plan.SweepSpec`
    fields (``force``, ``robustness``, ``keep_weights``, ``executor``, ``max_group``,
    ``compile``, and Ray's ``address``, ``gpus_per_run``, ``cpus_per_run``) and :func:`run_plan`
    options.
    """
    run_options = {key: kwargs.pop(key) for key in _RUN_OPTIONS if key in kwargs}
    spec = SweepSpec(configs=tuple(configs), backend=backend, **kwargs)
    if backend == "ray":
        from fusioncli.sweep.ray_backend import import_ray

        import_ray()  # a missing extra is a usage error, before anything costs time
    store = ResultsStore(results_dir)
    return run_plan(plan_sweep(spec, cache_dir, store), store, **run_options)
