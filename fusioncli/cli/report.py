"""`fusioncli report`: aggregate the results store over seeds and print it in one format."""

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from fusioncli.cli._options import ResultsDirOption
from fusioncli.cli._common import err, out, report_errors
from fusioncli.paths import default_results_dir


class ReportFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"
    latex = "latex"


def print_table(table: Table) -> None:
    """A rich table on stdout; piped or redirected, at its natural width instead of 80 columns."""
    if out.is_terminal:
        out.print(table)
        return
    # Console.print caps width at the console's (80 when not a terminal): use a wider one.
    width = max(out.width, Measurement.get(out, out.options.update_width(100_000), table).maximum)
    Console(file=out.file, width=width, no_color=out.no_color).print(table)


@report_errors
def report(
    results_dir: ResultsDirOption = None,
    format: Annotated[
        ReportFormat,
        typer.Option("--format", "-f", help="table (rich), markdown, latex for people; csv, json for machines."),
    ] = ReportFormat.table,
    group_by: Annotated[
        Optional[str],
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
        Optional[list[str]],
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
        Optional[Path],
        typer.Option(
            "--plot",
            help="Also write PNG charts (accuracy, train time, accuracy vs params / time) into this folder "
            "(extra: pip install 'fusioncli\\[plot]').",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Aggregate the results store over seeds and print one row per configuration.

    Each row shows n (runs averaged) and mean ± std over seeds (sample std,
    ddof=1; just the mean when n = 1) of accuracy, macro F1, validation loss,
    training time and peak memory, plus parameters and throughput; the best
    value per column is highlighted. Peak GPU memory is torch's max allocated;
    peak host RSS is the training process's lifetime peak. Failed runs are
    left out of the aggregates and counted on stderr (`--runs` lists them with
    their error). csv and json are machine-readable: separate numeric
    <metric>_mean / <metric>_std columns, units in the names.

    The store is plain files: records/<run_id>.json (full record) and
    runs/<run_id>.parquet (one flat row), so pandas reads every run with
    pd.read_parquet("<results>/runs").

    Example:  fusioncli report --format markdown --filter strategy=late
    """
    from fusioncli.results.aggregate import build_report
    from fusioncli.results.render import render
    from fusioncli.results.store import open_store

    if plot is not None:
        from fusioncli.results.plots import check_available

        check_available()  # before printing anything: a missing extra is a usage error
    results = results_dir if results_dir is not None else default_results_dir()
    store = open_store(results, must_exist=True)
    fields = [f.strip() for f in group_by.split(",")] if group_by is not None else None
    frame = store.load_runs()
    result = build_report(frame, group_by=fields, sort=sort, filters=filter or [], per_run=runs)

    rendered = render(result, format.value)
    if isinstance(rendered, str):
        # Plain write: rich would wrap long csv lines or treat [..] in LaTeX as markup.
        typer.echo(rendered, nl=False)
    else:
        print_table(rendered)
    if result.n_failed and not runs:
        err.print(
            f"note: {result.n_failed} failed run(s) left out of the aggregates (see `fusioncli report --runs`)",
            highlight=False,
            soft_wrap=True,
        )
    if result.n_selected < result.n_runs:
        err.print(
            f"note: {result.n_selected} of {result.n_runs} runs match the filters", highlight=False, soft_wrap=True
        )
    if plot is not None:
        from fusioncli.results.plots import write_plots

        grouped = result
        if runs:  # plots are per configuration, whatever the table shows
            grouped = build_report(frame, group_by=fields, sort=sort, filters=filter or [])
        paths = write_plots(grouped.table, plot, grouped.fields)
        err.print(f"plots written: {', '.join(str(p) for p in paths)}", highlight=False, soft_wrap=True)
