"""`fusioncli report`: aggregate the results store over seeds and print it in one format."""

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fusioncli.cli._common import err, out, report_errors
from fusioncli.cli._options import ResultsDirOption
from fusioncli.cli._tables import print_table
from fusioncli.cli._tracking import MlflowExperimentOption, MlflowUriOption, WandbProjectOption
from fusioncli.paths import default_results_dir

if TYPE_CHECKING:
    from rich.table import Table


class ReportFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"
    latex = "latex"


@report_errors
def report(
    results_dir: ResultsDirOption = None,
    format: Annotated[
        ReportFormat,
        typer.Option("--format", "-f", help="table (rich), markdown, latex for people; csv, json for machines."),
    ] = ReportFormat.table,
    group_by: Annotated[
        str | None,
        typer.Option(
            "--group-by",
            help="Comma list of config fields to group by (default: every config field except seed).",
            show_default=False,
        ),
    ] = None,
    sort: Annotated[
        str,
        typer.Option(
            "--sort",
            help="Column to sort by, best first: accuracy, f1, loss, time, memory, rss, params, throughput, "
            "or a config field; append :asc or :desc to force the direction.",
        ),
    ] = "accuracy",
    filter: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            help="KEY=VALUE on a config field (or status); repeat for AND, comma-list values for OR, "
            "e.g. --filter strategy=late --filter lr=1e-4,1e-5.",
            show_default=False,
        ),
    ] = None,
    runs: Annotated[
        bool, typer.Option("--runs", help="One row per run (with status and error) instead of per group.")
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Also write PNG charts (accuracy, train time, accuracy vs params / time, and accuracy vs "
            "corruption severity when runs have robustness results) into this folder "
            "(extra: pip install 'fusioncli\\[plot]').",
            show_default=False,
        ),
    ] = None,
    compare: Annotated[
        tuple[str, str] | None,
        typer.Option(
            "--compare",
            help="Paired t-test of A vs B over shared seeds: each a strategy name or a comma list of KEY=VALUE "
            "(e.g. --compare late gmu, or --compare 'strategy=late,lr=1e-4' 'strategy=late,lr=1e-5'). "
            "Runs pair by seed and must agree on every other config field.",
            show_default=False,
        ),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            help="Metric for --compare: accuracy (default), f1, loss, time, throughput, robust, rgb_missing, ...",
            show_default=False,
        ),
    ] = None,
    robustness: Annotated[
        bool,
        typer.Option(
            "--robustness",
            help="Show accuracy per corruption and severity, AUC, relative AUC and missing-modality accuracy "
            "per configuration (runs trained with --robustness), with a configuration x fault matrix of "
            "robust accuracy and mRA.",
        ),
    ] = False,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="With --robustness: relative robust accuracy (rRA, MultiCorrupt) of each configuration against "
            "this strategy trained with the same settings, e.g. --baseline rgb-only; 'unimodal' takes the better "
            "of rgb-only and lidar-only.",
            show_default=False,
        ),
    ] = None,
    to_mlflow: Annotated[
        bool, typer.Option("--to-mlflow", help="Also log the store's finished runs to MLflow (those not there yet).")
    ] = False,
    to_wandb: Annotated[
        bool, typer.Option("--to-wandb", help="Also log the store's finished runs to W&B (those not there yet).")
    ] = False,
    mlflow_uri: MlflowUriOption = None,
    mlflow_experiment: MlflowExperimentOption = None,
    wandb_project: WandbProjectOption = None,
) -> None:
    """Aggregate the results store over seeds and print one row per configuration.

    Each row shows n (runs averaged) and mean ± 95% CI half-width over seeds
    (Student t, n-1 df; just the mean when n = 1) of accuracy, macro F1,
    validation loss, training time and peak memory, plus parameters and
    throughput, and robust AUC / missing-modality accuracy for runs evaluated
    with --robustness; the best value per column is highlighted. Peak GPU
    memory is torch's max allocated; peak host RSS is the training process's
    lifetime peak. Failed runs are left out of the aggregates and counted on
    stderr (`--runs` lists them with their error). csv and json are
    machine-readable: separate numeric <metric>_mean / _std / _ci95_lo /
    _ci95_hi columns, units in the names.

    --compare A B runs a paired t-test over the seeds A and B share and says
    whether the difference is significant (alpha 0.05), with its 95% CI and
    Cohen's dz. --robustness shows robust accuracy per sensor fault (a
    configuration x fault matrix with mRA; --baseline adds rRA), the accuracy
    per fault and severity, and missing-modality accuracy.

    The store is plain files: records/<run_id>.json (full record) and
    runs/<run_id>.parquet (one flat row), so pandas reads every run with
    pd.read_parquet("<results>/runs").

    A damaged store still reports: an unreadable row is read from its
    record instead, and a run whose record is unreadable (or whose row is,
    with no record) is left out with one line on stderr naming the file and
    the problem; the next sweep with that run trains it again. Exit code 0
    when the rest could be reported, 2 when no run at all is readable.

    Examples:  fusioncli report --format markdown --filter strategy=late
               fusioncli report --compare late gmu --metric accuracy
               fusioncli report --robustness --baseline unimodal --plot plots/
               fusioncli report --to-mlflow --mlflow-uri http://127.0.0.1:5000  (exit 3: a run missed)
    """
    from fusioncli.errors import BadInputError
    from fusioncli.results.store import open_store

    problems = []
    if compare is not None and (runs or robustness):
        problems.append("--compare cannot be combined with " + ("--runs" if runs else "--robustness"))
    if runs and robustness:
        problems.append("--runs and --robustness are different views: give one")
    if compare is not None and group_by is not None:
        problems.append("--compare pairs runs on every config field: --group-by does not apply")
    if metric is not None and compare is None:
        problems.append("--metric chooses what --compare tests: give --compare A B too")
    if baseline is not None and not robustness:
        problems.append("--baseline is the reference of --robustness's rRA: give --robustness too")
    if problems:
        raise BadInputError(problems)
    if plot is not None:
        from fusioncli.results.plots import check_available

        check_available()  # before printing anything: a missing extra is a usage error
    results = results_dir if results_dir is not None else default_results_dir()
    store = open_store(results, must_exist=True)
    tracker_code = 0
    if to_mlflow or to_wandb:
        from fusioncli.cli._tracking import TrackerChoice, publish_store

        choice = TrackerChoice(
            mlflow=to_mlflow, wandb=to_wandb, mlflow_uri=mlflow_uri, mlflow_experiment=mlflow_experiment,
            wandb_project=wandb_project,
        )  # fmt: skip
        tracker_code = publish_store(store, choice)
    fields = [f.strip() for f in group_by.split(",")] if group_by is not None else None
    frame = _read_runs(store)
    filters = filter or []
    notes_from = None
    rendered: str | Table | list[Table]
    if compare is not None:
        from fusioncli.results.compare import build_comparison, render_comparison

        rendered = render_comparison(build_comparison(frame, *compare, metric=metric, filters=filters), format.value)
    elif robustness:
        from fusioncli.results.robustness import build_robustness, render_robustness, with_baseline

        view = build_robustness(frame, group_by=fields, sort=sort, filters=filters)
        if baseline is not None:
            view = with_baseline(view, baseline)
        rendered, notes_from = render_robustness(view, format.value), view.report
    else:
        from fusioncli.results.aggregate import build_report
        from fusioncli.results.render import render

        notes_from = build_report(frame, group_by=fields, sort=sort, filters=filters, per_run=runs)
        rendered = render(notes_from, format.value)

    if isinstance(rendered, str):
        # Plain write: rich would wrap long csv lines or treat [..] in LaTeX as markup.
        typer.echo(rendered, nl=False)
    else:
        for index, table in enumerate(rendered if isinstance(rendered, list) else [rendered]):
            if index:
                out.print()
            print_table(table)
    if notes_from is not None and notes_from.n_failed and not runs:
        err.print(
            f"note: {notes_from.n_failed} failed run(s) left out of the aggregates (see `fusioncli report --runs`)",
            highlight=False,
            soft_wrap=True,
        )
    if notes_from is not None and notes_from.n_selected < notes_from.n_runs:
        err.print(
            f"note: {notes_from.n_selected} of {notes_from.n_runs} runs match the filters",
            highlight=False,
            soft_wrap=True,
        )
    if plot is not None:
        from fusioncli.results.plots import write_report_plots

        paths = write_report_plots(frame, plot, group_by=fields, sort=sort, filters=filters)
        err.print(f"plots written: {', '.join(str(p) for p in paths)}", highlight=False, soft_wrap=True)
    if tracker_code:
        raise typer.Exit(tracker_code)


def _read_runs(store: Any) -> Any:
    """The store's runs table; damaged runs are said on stderr (and are an error when nothing is left)."""
    from fusioncli.errors import BadInputError

    table = store.read_runs()
    for damage in table.rebuilt:
        err.print(
            f"note: run {damage.run_id}: {damage}; read from its record instead (the next sweep rewrites the row)",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
    if table.damaged and table.frame.empty:
        raise BadInputError(
            [f"damaged run {d.run_id}: {d}" for d in table.damaged]
            + [f"no readable run in the results store {store.root}"],
            hint="re-run the sweep that wrote these runs (damaged runs are trained again), or remove the damaged files",
        )
    for damage in table.damaged:
        err.print(
            f"skipped damaged run {damage.run_id}: {damage} (a sweep with this run trains it again)",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
    return table.frame
