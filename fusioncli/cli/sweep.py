"""`fusioncli sweep`: train the Cartesian product of strategies x lrs x schedulers x seeds."""

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from fusioncli.cli._common import OutputFormat, err, out, progress_enabled, report_errors
from fusioncli.cli._config_options import run_config_options
from fusioncli.cli._options import CacheDirOption, ResultsDirOption, RobustnessOption
from fusioncli.cli._sweep_view import equal_steps_line, execute_sweep, outcomes_json, print_plan, print_summary
from fusioncli.cli._tracking import (
    NO_TRACKERS,
    TrackerChoice,
    build_trackers,
    print_tracker_problems,
    tracker_options,
)
from fusioncli.config import config_fields
from fusioncli.paths import default_cache_dir, default_results_dir
from fusioncli.sweep.plan import BACKENDS, DEFAULT_MAX_GROUP, EXECUTORS

# How a sweep trains its runs, and where: the plan's choices.
Executor = Enum("Executor", {name: name for name in EXECUTORS}, type=str)  # type: ignore[misc]
Backend = Enum("Backend", {name: name for name in BACKENDS}, type=str)  # type: ignore[misc]

# Parameters a sweep file cannot set / that the resolved sweep leaves out (how it is shown).
_NOT_IN_FILE = ("config", "print_config", "help")
_NOT_RESOLVED = (*_NOT_IN_FILE, "dry_run", "format")
# The grid axes' parameters: a list in the file is their comma list.
_AXIS_PARAMS = tuple(f.name for f, info in config_fields() if info.grid_flag is not None)


def _long_flag(param: Any) -> str | None:
    return next((opt[2:] for opt in param.opts if opt.startswith("--")), None)


def _is_path(param: Any) -> bool:
    descriptor = getattr(param, "type_descriptor", None)
    return getattr(descriptor, "annotation", None) is Path


@report_errors
def _file_defaults(ctx: typer.Context, path: Path) -> dict[str, Any]:
    """The sweep file's values as defaults of the options (checked; one line per problem)."""
    from fusioncli.errors import BadInputError
    from fusioncli.sweep.config_file import axis_text, read_sweep_file

    by_key = {_long_flag(p): p for p in ctx.command.params if p.name not in _NOT_IN_FILE}
    problems: list[str] = []
    defaults: dict[str, Any] = {}
    for key, value in read_sweep_file(path).items():
        param = by_key.get(key)
        if param is None or param.name is None:
            problems.append(f"sweep file {path}: unknown key {key!r} (keys are the long options of `fusioncli sweep`)")
            continue
        if param.name in _AXIS_PARAMS:
            value = axis_text(value)
        elif isinstance(value, list):
            problems.append(f"sweep file {path}: {key} takes one value, not a list")
            continue
        elif isinstance(value, str) and _is_path(param) and not Path(value).expanduser().is_absolute():
            value = str(path.parent / value)  # relative to the file, wherever the sweep starts
        try:
            param.process_value(ctx, value)  # the option's own conversion and checks
        except typer.BadParameter as exc:
            problems.append(f"sweep file {path}: {key} = {value!r}: {exc.message}")
            continue
        defaults[param.name] = value
    if problems:
        raise BadInputError(problems)
    return defaults


def _config_file(ctx: typer.Context, value: Path | None) -> Path | None:
    # Eager, so the file's values become the other options' defaults: the command line wins.
    if value is not None and not ctx.resilient_parsing:
        ctx.default_map = {**(ctx.default_map or {}), **_file_defaults(ctx, value)}
    return value


def _resolved_sweep(ctx: typer.Context, cache: Path, results: Path) -> dict[str, Any]:
    """Every sweep option as it applies now (file, command line, defaults), keyed by long name."""
    from fusioncli.sweep.config_file import axis_items

    values: dict[str, Any] = {}
    for param in ctx.command.params:
        key = _long_flag(param)
        if key is None or param.name is None or param.name in _NOT_RESOLVED:
            continue
        value = ctx.params.get(param.name)
        if isinstance(value, Enum):
            value = value.value
        if param.name in _AXIS_PARAMS:
            value = axis_items(str(value))
        elif isinstance(value, Path):
            value = str(value.expanduser().absolute())
        values[key] = value
    values["cache-dir"] = str(cache.expanduser().absolute())
    values["results-dir"] = str(results.expanduser().absolute())
    return values


@report_errors
@run_config_options(grid=True)
@tracker_options
def sweep(
    ctx: typer.Context,
    run_options: dict[str, Any],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help='A TOML sweep file: the long option names as keys (lrs = [1e-4, 1e-5], cache-dir = "..."); '
            "options on the command line override it.",
            is_eager=True,
            callback=_config_file,
            show_default=False,
        ),
    ] = None,
    print_config: Annotated[
        bool,
        typer.Option("--print-config", help="Print the resolved sweep as TOML (a sweep file) and train nothing."),
    ] = False,
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
    trackers_chosen: TrackerChoice = NO_TRACKERS,
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

    From a file:  fusioncli sweep --config sweep.toml --seeds 1,2  (--print-config shows the result)
    """
    from fusioncli.config import GRID_AXES
    from fusioncli.results.store import ResultsStore
    from fusioncli.sweep.config_file import save_resolved, to_toml
    from fusioncli.sweep.plan import SweepSpec, plan_sweep

    cache = cache_dir if cache_dir is not None else default_cache_dir()
    results = results_dir if results_dir is not None else default_results_dir()
    from fusioncli.models.plugins import loaded_plugin_files

    # Plugins are loaded before the command (root --plugin, FUSIONCLI_PLUGINS): named, not set, here.
    plugins = "".join(f"\nwith --plugin {file}" for file in loaded_plugin_files())
    resolved = to_toml(
        _resolved_sweep(ctx, cache, results),
        f"fusioncli sweep, resolved (file, options, defaults): `fusioncli sweep --config FILE` runs it again{plugins}",
    )
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
    if print_config:  # checked like a sweep (every problem named), but nothing trains
        out.print(resolved, markup=False, highlight=False, emoji=False, soft_wrap=True, end="")
        return
    if spec.backend == "ray":
        from fusioncli.sweep.ray_backend import import_ray

        import_ray()  # a missing extra is a usage error, before the plan costs time
    if log_existing and not trackers_chosen.wanted:
        from fusioncli.errors import BadInputError

        raise BadInputError("--log-existing logs to a tracker: give --mlflow and/or --wandb too")
    store = ResultsStore(results)
    plan = plan_sweep(spec, cache, store)
    if equal_steps:
        err.print(f"equal steps: {equal_steps_line(plan)}", highlight=False, soft_wrap=True)
    trackers = build_trackers(trackers_chosen, results_dir=results, dry_run=dry_run)
    if dry_run:
        print_plan(plan, format)
        return

    err.print(f"sweep: {plan.total} runs ({plan.placement}), results in {results}", highlight=False, soft_wrap=True)
    saved = save_resolved(results, resolved)
    err.print(f"sweep file: {saved} (`fusioncli sweep --config {saved}` runs this sweep again)", highlight=False,
              soft_wrap=True)  # fmt: skip
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
