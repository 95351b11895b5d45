"""`fusioncli sweep`: train the Cartesian product of strategies x lrs x schedulers x seeds."""

from enum import Enum
from typing import Annotated, Any

import typer

from fusioncli.cli._common import OutputFormat, err, out, progress_enabled, report_errors
from fusioncli.cli._config_options import run_config_options
from fusioncli.cli._options import CacheDirOption, ResultsDirOption, RobustnessOption
from fusioncli.cli._sweep_view import equal_steps_line, execute_sweep, outcomes_json, print_plan, print_summary
from fusioncli.cli._tracking import (
    MlflowExperimentOption,
    MlflowOption,
    MlflowUriOption,
    TrackerTimeoutOption,
    WandbOption,
    WandbProjectOption,
    build_trackers,
    print_tracker_problems,
)
from fusioncli.paths import default_cache_dir, default_results_dir
from fusioncli.sweep.plan import BACKENDS, DEFAULT_MAX_GROUP, EXECUTORS
from fusioncli.tracking.base import DEFAULT_TIMEOUT_S

# How a sweep trains its runs, and where: the plan's choices.
Executor = Enum("Executor", {name: name for name in EXECUTORS}, type=str)  # type: ignore[misc]
Backend = Enum("Backend", {name: name for name in BACKENDS}, type=str)  # type: ignore[misc]


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
    wandb: WandbOption = False,
    wandb_project: WandbProjectOption = None,
    mlflow: MlflowOption = False,
    mlflow_uri: MlflowUriOption = None,
    mlflow_experiment: MlflowExperimentOption = None,
    tracker_timeout: TrackerTimeoutOption = DEFAULT_TIMEOUT_S,
    log_existing: Annotated[
        bool,
        typer.Option(
            "--log-existing",
            help="With --mlflow/--wandb: also log the finished runs the sweep skips, unless that tracker "
            "already holds them (publish a store after the fact).",
        ),
    ] = False,
    backend: Annotated[
        Backend,
        typer.Option(
            "--backend",
            help="local: one run after another on this machine; ray: each run as a task on a Ray cluster "
            "(extra: pip install 'fusioncli\\[ray]').",
        ),
    ] = Backend["local"],
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="Ray: 'auto' (the cluster this machine belongs to) or HOST:PORT; default: start Ray on this machine.",
            show_default=False,
        ),
    ] = None,
    gpus_per_run: Annotated[
        float | None,
        typer.Option(
            "--gpus-per-run",
            help="Ray: GPU share each run reserves, 0 to 1 (0.25: four runs per GPU); > 0 trains on CUDA (default 0).",
            show_default=False,
        ),
    ] = None,
    cpus_per_run: Annotated[
        float | None,
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
    ] = Executor["auto"],
    max_group: Annotated[
        int, typer.Option("--max-group", help="Stacked executor: at most this many runs per group (memory bound).")
    ] = DEFAULT_MAX_GROUP,
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
    weights are kept in <results>/best/. Exit code 1 if any run failed; 3 if
    every run is stored but a tracker (--mlflow/--wandb) missed some of it.

    With --mlflow or --wandb each run is one tracker run (named like
    `late lr=1e-3 cosine seed=1`, seeds grouped); the trackers are checked
    before training (also with --dry-run).

    With --backend ray each run (or, with the stacked executor, each stacked
    group) is a Ray task; the cache folder must be on storage every node sees
    at the same path, and records come back into the results folder on this
    machine as runs finish.

    Example:  fusioncli sweep --lrs 1e-4,1e-5 --seeds 51,52,53 --epochs 5

    Robustness:  fusioncli sweep --strategies late,gmu --seeds 1,2,3 --robustness

    On a cluster:  fusioncli sweep --backend ray --address auto --gpus-per-run 0.25

    Tracked:  fusioncli sweep --seeds 1,2,3 --mlflow --mlflow-experiment fusion
    """
    from fusioncli.config import GRID_AXES
    from fusioncli.results.store import ResultsStore
    from fusioncli.sweep.plan import SweepSpec, plan_sweep

    cache = cache_dir if cache_dir is not None else default_cache_dir()
    results = results_dir if results_dir is not None else default_results_dir()
    spec = SweepSpec.from_options(
        {name: run_options.pop(name) for name in GRID_AXES},
        run_options,
        cache_dir=cache,
        equal_steps=equal_steps,
        backend=backend.value,
        executor=executor.value,
        max_group=max_group,
        compile=compile,
        force=force,
        robustness=robustness,
        keep_weights=keep_weights,
        address=address,
        gpus_per_run=gpus_per_run,
        cpus_per_run=cpus_per_run,
    )
    if spec.backend == "ray":
        from fusioncli.sweep.ray_backend import import_ray

        import_ray()  # a missing extra is a usage error, before the plan costs time
    if log_existing and not (wandb or mlflow):
        from fusioncli.errors import BadInputError

        raise BadInputError("--log-existing logs to a tracker: give --mlflow and/or --wandb too")
    store = ResultsStore(results)
    plan = plan_sweep(spec, cache, store)
    if equal_steps:
        err.print(f"equal steps: {equal_steps_line(plan)}", highlight=False, soft_wrap=True)
    trackers = build_trackers(
        wandb=wandb, mlflow=mlflow, results_dir=results, mlflow_uri=mlflow_uri, mlflow_experiment=mlflow_experiment,
        wandb_project=wandb_project, timeout=tracker_timeout, dry_run=dry_run,
    )  # fmt: skip
    if dry_run:
        print_plan(plan, format)
        return

    err.print(f"sweep: {plan.total} runs ({plan.placement}), results in {results}", highlight=False, soft_wrap=True)
    summary = execute_sweep(
        plan, store, show_bar=progress_enabled() and format is OutputFormat.table, trackers=trackers
    )
    published = None
    if log_existing and trackers:
        from fusioncli.tracking.publish import publish_records

        skipped = [o.record for o in summary.skipped if o.record is not None]
        published = publish_records(trackers, store, skipped)
        err.print(
            f"log existing: {len(published.logged)} stored run(s) logged, {len(published.already)} already held",
            highlight=False,
            soft_wrap=True,
        )
    if format is OutputFormat.json:
        out.print(outcomes_json(summary, published), markup=False, highlight=False, emoji=False, soft_wrap=True)
    print_summary(summary, results, kept_weights=keep_weights)
    problems = summary.tracker_problems + (published.problems if published is not None else [])
    print_tracker_problems(problems)
    code = summary.exit_code
    if code == 0 and problems:
        from fusioncli.tracking import EXIT_TRACKER_MISSED

        code = EXIT_TRACKER_MISSED
    if code:
        raise typer.Exit(code)
