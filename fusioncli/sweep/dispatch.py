"""Which backend runs a sweep: the public entry point above the local and the Ray backend.

It sits above both backends so that neither imports the other's module back: the Ray backend
builds on :mod:`fusioncli.sweep.runner` (its recorder, grid and failure records), and the local
runner need not know that Ray exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusioncli.config import RunConfig
from fusioncli.errors import BadInputError
from fusioncli.results.store import ResultsStore
from fusioncli.sweep.runner import SweepSummary, load_sweep_data, run_sweep

BACKENDS = ("local", "ray")


def sweep_from_cache(
    configs: Sequence[RunConfig], cache_dir: Path, results_dir: Path, *, backend: str = "local", **kwargs: Any
) -> SweepSummary:
    """Sweep ``configs`` on the cache at ``cache_dir`` into the store at ``results_dir``.

    ``backend="local"``: load the cache here and :func:`~fusioncli.sweep.runner.run_sweep`;
    ``backend="ray"``: :func:`fusioncli.sweep.ray_backend.run_sweep_ray` (which takes
    ``address``, ``gpus_per_run``, ``cpus_per_run`` too). Other keyword arguments go to the backend.
    """
    store = ResultsStore(results_dir)
    if backend == "ray":
        # Imported here: a local sweep does not load the Ray backend.
        from fusioncli.sweep.ray_backend import run_sweep_ray

        return run_sweep_ray(configs, cache_dir, store, **kwargs)
    if backend != "local":
        raise BadInputError(f"--backend must be one of {', '.join(BACKENDS)} (got {backend!r})")
    data = load_sweep_data(configs, cache_dir)
    return run_sweep(configs, data, store, **kwargs)
