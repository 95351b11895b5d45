"""`fusioncli sweep`: train the Cartesian product of strategies x lrs x schedulers x seeds."""

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fusioncli.cli._config_options import run_config_options
from fusioncli.cli._options import CacheDirOption, ResultsDirOption, RobustnessOption
from fusioncli.cli._common import OutputFormat, err, out, progress_bar, progress_enabled, report_errors
from fusioncli.cli._sweep_view import execute_sweep, format_lr, outcomes_json, print_summary
from fusioncli.cli._tables import print_table
from fusioncli.errors import BadInputError
from fusioncli.paths import default_cache_dir, default_results_dir


class Executor(str, Enum):
    """How a local sweep trains its runs."""

    auto = "auto"
    loop = "loop"
    stacked = "stacked"


class Backend(str, Enum):
    """Where the runs of a sweep train."""

    local = "local"
    ray = "ray"


def backend_options(
    backend: Backend, address: Optional[str], gpus_per_run: Optional[float], cpus_per_run: Optional[float]
) -> dict[str, Any]:
    """The backend's own keyword arguments for the library; Ray options need --backend ray."""
    ray_only = {"--address": address, "--gpus-per-run": gpus_per_run, "--cpus-per-run": cpus_per_run}
    if backend is Backend.local:
        given = [flag for flag, value in ray_only.items() if value is not None]
        if given:
            raise BadInputError(f"{', '.join(given)}: only with --backend ray", hint="add --backend ray")
        return {}
    from fusioncli.sweep.ray_backend import check_resources

    options = {
        "address": address,
        "gpus_per_run": 0.0 if gpus_per_run is None else gpus_per_run,
        "cpus_per_run": 1.0 if cpus_per_run is None else cpus_per_run,
    }
    check_resources(options["gpus_per_run"], options["cpus_per_run"])
    return options


def executor_options(executor: Executor, max_group: int, compile: bool = False) -> dict[str, Any]:
    """The executor's keyword arguments (both backends: on Ray a stacked group is one task)."""
    from fusioncli.train.stacked import check_max_group

    check_max_group(max_group)
    if compile and executor is Executor.loop:
        raise BadInputError("--compile applies to stacked groups; --executor loop trains without it")
    return {"executor": executor.value, "max_group": max_group, "compile": compile}


def placement(configs: list, backend: Backend, options: dict[str, Any]) -> str:
    """Where the runs train, for the sweep's first line.

    ``cpu`` (local) or e.g. ``cuda:0 on the Ray cluster at auto, 1 CPU + 0.25 GPU per run``.
    """
    if backend is Backend.local:
        from fusioncli.train.stacked import choose_executor

        device = configs[0].resolve().device
        executor = choose_executor(device, options.get("executor", "auto"))
        if executor == "loop":
            unused = " (--compile unused: runs train one at a time)" if options.get("compile") else ""
            return f"{device}, {executor} executor{unused}"
        compiled = ", compiled" if options.get("compile") else ""
        return f"{device}, stacked groups of <= {options['max_group']}{compiled}"
    from fusioncli.sweep.ray_backend import LOCAL_ADDRESSES, resolve_for_ray

    from fusioncli.train.stacked import choose_executor

    device = resolve_for_ray(configs[0], options["gpus_per_run"]).device
    address = options["address"]
    cluster = "a Ray instance started here" if address in LOCAL_ADDRESSES else f"the Ray cluster at {address}"
    share = f"{options['cpus_per_run']:g} CPU"
    if options["gpus_per_run"] > 0:
        share += f" + {options['gpus_per_run']:g} GPU"
    if choose_executor(device, options.get("executor", "auto")) == "stacked":
        return f"{device} on {cluster}, stacked groups of <= {options['max_group']}, {share} per group"
    return f"{device} on {cluster}, {share} per run"


@report_errors
@run_config_options(grid=True)
def sweep(
    run_options: dict[str, Any],
    equal_steps: Annotated[
        bool,
        typer.Option(
            "--equal-steps",
            help="With --train-per-class: give every size about the optimiser steps the largest gets in "
            "--epochs (smaller sets train more epochs), so sizes differ in data, not in training time.",
        ),
    ] = False,
    robustness: RobustnessOption = False,
    cache_dir: CacheDirOption = None,
    results_dir: ResultsDirOption = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute runs that are already finished.")] = False,
    keep_weights: Annotated[
        bool,
        typer.Option(
            "--keep-weights",
            help="Keep every finished run's weights in <results>/weights/ (for `fusioncli evaluate --runs`); "
            "a finished run without them is retrained.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the runs (and which are already done) without training.")
    ] = False,
    wandb: Annotated[
        bool,
        typer.Option("--wandb", help="Log each run to Weights & Biases (extra: pip install 'fusioncli\\[wandb]')."),
    ] = False,
    wandb_project: Annotated[str, typer.Option("--wandb-project", help="W&B project name.")] = "fusioncli",
    mlflow: Annotated[
        bool, typer.Option("--mlflow", help="Log each run to MLflow (extra: pip install 'fusioncli\\[mlflow]').")
    ] = False,
    mlflow_uri: Annotated[
        Optional[str],
        typer.Option(
            "--mlflow-uri",
            help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite in the results folder).",
            show_default=False,
        ),
    ] = None,
    backend: Annotated[
        Backend,
        typer.Option(
            "--backend",
            help="local: one run after another on this machine; ray: each run as a task on a Ray cluster "
            "(extra: pip install 'fusioncli\\[ray]').",
        ),
    ] = Backend.local,
    address: Annotated[
        Optional[str],
        typer.Option(
            "--address",
            help="Ray: 'auto' (the cluster this machine belongs to) or HOST:PORT; default: start Ray on this machine.",
            show_default=False,
        ),
    ] = None,
    gpus_per_run: Annotated[
        Optional[float],
        typer.Option(
            "--gpus-per-run",
            help="Ray: GPU share each run reserves, 0 to 1 (0.25: four runs per GPU); > 0 trains on CUDA (default 0).",
            show_default=False,
        ),
    ] = None,
    cpus_per_run: Annotated[
        Optional[float],
        typer.Option(
            "--cpus-per-run",
            help="Ray: CPU cores each run (or stacked group) reserves (also its torch threads; default 1).",
            show_default=False,
        ),
    ] = None,
    executor: Annotated[
        Executor,
        typer.Option(
            "--executor",
            help="loop: one run at a time; stacked: runs differing only in lr, scheduler and seed train "
            "together as one vmapped model (same results); auto: stacked on CUDA, loop on the CPU.",
        ),
    ] = Executor.auto,
    max_group: Annotated[
        int, typer.Option("--max-group", help="Stacked executor: at most this many runs per group (memory bound).")
    ] = 16,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Stacked executor: torch.compile each group's forward, once per architecture "
            "(off by default: slower on CPUs, not yet measured on GPUs).",
        ),
    ] = False,
    format: Annotated[
        OutputFormat,
        typer.Option("--format", "-f", help="table: lines on stderr only; json: run ids and status on stdout."),
    ] = OutputFormat.table,
) -> None:
    """Train the grid strategies x lrs x schedulers x seeds, here or on a Ray cluster.

    Finished runs are stored one file each in the results folder and skipped
    when the sweep is run again (--force recomputes them); failed runs are
    recorded with their error and retried next time. Killing a sweep loses at
    most the runs in flight: run the same command to resume. The best run's
    weights are kept in <results>/best/. Exit code 1 if any run failed.

    With --backend ray each run (or, with the stacked executor, each stacked
    group) is a Ray task; the cache folder must be on storage every node sees
    at the same path, and records come back into the results folder on this
    machine as runs finish.

    Example:  fusioncli sweep --lrs 1e-4,1e-5 --seeds 51,52,53 --epochs 5

    Robustness:  fusioncli sweep --strategies late,gmu --seeds 1,2,3 --robustness

    On a cluster:  fusioncli sweep --backend ray --address auto --gpus-per-run 0.25
    """
    from fusioncli.config import GRID_AXES
    from fusioncli.sweep.grid import expand_grid, parse_axes
    from fusioncli.sweep.tracking import make_trackers

    # Every axis parsed before failing, so one invocation reports all bad values.
    parsed: dict[str, Any] = parse_axes({name: run_options.pop(name) for name in GRID_AXES})
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    if equal_steps:
        parsed["epochs_by_size"] = _equal_step_epochs(
            cache, run_options["epochs"], run_options["batch_size"], parsed["train_sizes"],
            run_options["limit_per_class"],
        )  # fmt: skip
    configs = expand_grid(**parsed, **run_options)
    results = results_dir if results_dir is not None else default_results_dir()
    options = backend_options(backend, address, gpus_per_run, cpus_per_run)
    options.update(executor_options(executor, max_group, compile))

    if dry_run:
        retrain = {"force": force, "robustness": robustness, "keep_weights": keep_weights}
        _dry_run(configs, cache, results, format, backend, options, retrain)
        return

    trackers = make_trackers(
        wandb=wandb, mlflow=mlflow, results_dir=results, mlflow_uri=mlflow_uri, wandb_project=wandb_project
    )
    err.print(
        f"sweep: {len(configs)} runs ({placement(configs, backend, options)}), results in {results}",
        highlight=False,
        soft_wrap=True,
    )
    summary = execute_sweep(
        configs,
        cache,
        results,
        show_bar=progress_enabled() and format is OutputFormat.table,
        backend=backend.value,
        force=force,
        keep_weights=keep_weights,
        trackers=trackers,
        robustness=robustness,
        **options,
    )
    if format is OutputFormat.json:
        out.print(outcomes_json(summary), markup=False, highlight=False, emoji=False, soft_wrap=True)
    print_summary(summary, results, kept_weights=keep_weights)
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)


def _equal_step_epochs(
    cache: Path, epochs: int, batch_size: int, sizes: list, limit_per_class: Optional[int]
) -> dict:
    """``--equal-steps``: epochs per training size, from the cache's training counts."""
    from fusioncli.data.cache import PREPARE_HINT, read_manifest
    from fusioncli.sweep.grid import equal_step_epochs

    if epochs < 1 or batch_size < 1:
        return {size: epochs for size in sizes}  # RunConfig reports the bad value
    manifest = read_manifest(cache)
    if manifest is None:
        raise BadInputError(f"--equal-steps needs the prepared cache: none in {cache}", hint=PREPARE_HINT)
    counts = [manifest["counts"][name]["train"] for name in manifest["class_names"]]
    by_size = equal_step_epochs(epochs, batch_size, counts, sizes, limit_per_class)
    err.print(
        "equal steps: " + ", ".join(f"{f'{size}/class' if size else 'all'} -> {e} epochs" for size, e in by_size.items()),
        highlight=False,
        soft_wrap=True,
    )
    return by_size


def _dry_run(
    configs: list,
    cache: Path,
    results: Path,
    format: OutputFormat,
    backend: Backend,
    options: dict[str, Any],
    retrain: dict[str, bool],
) -> None:
    """List the grid with each run's stored status and whether the sweep would train it.

    ``retrain`` holds the options that make a sweep train a stored finished run again
    (``force``, ``robustness``, ``keep_weights``): the same rule the sweep applies.
    """
    from rich.table import Table

    from fusioncli.results.store import ResultsStore
    from fusioncli.sweep.runner import OutcomeRecorder

    store = ResultsStore(results)
    if backend is Backend.ray:
        # Ray's rule for "auto" (see fusioncli.sweep.ray_backend); needs neither Ray nor the data.
        from fusioncli.sweep.ray_backend import plan_sweep_ray

        plan = plan_sweep_ray(configs, cache, store, gpus_per_run=options["gpus_per_run"])
    else:
        from fusioncli.sweep.runner import load_sweep_data, plan_sweep

        data = load_sweep_data(configs, cache)
        plan = plan_sweep(configs, data.fingerprint, store)
    decide = OutcomeRecorder(store, len(plan), **retrain)
    trains = {p.index: decide.skipped(p.index, p.run_id, p.config) is None for p in plan}
    if format is OutputFormat.json:
        rows = [
            {"run_id": p.run_id, "stored_status": p.stored_status, "would_train": trains[p.index], **p.config.to_dict()}
            for p in plan
        ]
        out.print(json.dumps(rows, indent=2), markup=False, highlight=False, emoji=False, soft_wrap=True)
    else:
        table = Table(title=f"{len(plan)} runs planned")
        sized = any(p.config.train_per_class is not None for p in plan)
        for col in ("#", "run id", "strategy", "lr", "scheduler", *(["train/class", "epochs"] if sized else []),
                    "seed", "stored", "action"):  # fmt: skip
            table.add_column(col)
        for p in plan:
            c = p.config
            size = [str(c.train_per_class or "all"), str(c.epochs)] if sized else []
            table.add_row(
                str(p.index), p.run_id, c.strategy, format_lr(c.lr), c.scheduler, *size, str(c.seed),
                p.stored_status or "-", "train" if trains[p.index] else "skip",
            )  # fmt: skip
        print_table(table)
    todo = sum(trains.values())
    err.print(
        f"dry run: {todo} of {len(plan)} runs would be trained (the others are finished and would be skipped)",
        highlight=False,
        soft_wrap=True,
    )
