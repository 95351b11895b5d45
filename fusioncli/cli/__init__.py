"""The ``fusioncli`` command line: a thin Typer layer over the library.

One module per command; each parses options, calls one library function and prints its
result. Errors are the library's :class:`fusioncli.errors.FusionError`, turned into one line per
problem and an exit code by :func:`fusioncli.cli._common.report_errors`.
"""

import os
from pathlib import Path
from typing import Annotated

import typer

from fusioncli import __version__
from fusioncli.cli import demo, evaluate, faults, prepare, profile, report, strategies, sweep, synth, train
from fusioncli.cli._common import report_errors

app = typer.Typer(
    name="fusioncli",
    help=(
        "Benchmark multimodal (RGB + LiDAR) fusion strategies.\n\n"
        "Typical session:  fusioncli synth && fusioncli prepare && "
        "fusioncli train --strategy late --epochs 3"
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fusioncli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
    plugin: Annotated[
        list[Path] | None,
        typer.Option(
            "--plugin",
            help="A Python file registering strategies (`from fusioncli import register_strategy`); repeatable. "
            "Also: FUSIONCLI_PLUGINS (files separated by os.pathsep) and the entry-point group fusioncli.strategies.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Benchmark multimodal fusion strategies (see `fusioncli COMMAND --help`)."""
    if debug:
        os.environ["FUSIONCLI_DEBUG"] = "1"
    _load_plugins(plugin or [])


@report_errors
def _load_plugins(files: list[Path]) -> None:
    # Before any command reads strategy names (choices and RunConfig check them lazily).
    from fusioncli.models.plugins import load_plugins

    load_plugins(files)


app.command("synth")(synth.synth)
app.command("prepare")(prepare.prepare)
app.command("strategies")(strategies.strategies)
app.command("train")(train.train)
app.command("sweep")(sweep.sweep)
app.command("report")(report.report)
app.command("evaluate")(evaluate.evaluate)
app.command("demo")(demo.demo)
app.command("faults")(faults.faults)
app.command("profile")(profile.profile)


def main() -> None:
    """Console-script entry point."""
    app()
