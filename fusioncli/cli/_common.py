"""Shared pieces of the CLI layer: consoles, output formats, error handling, progress.

Data goes to stdout (:data:`out`), progress and logs to stderr (:data:`err`).
"""

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fusioncli.errors import FusionError

out = Console(soft_wrap=True)  # data: tables, markdown, csv, json
err = Console(stderr=True)  # humans: progress, summaries, errors

P = ParamSpec("P")
R = TypeVar("R")


class OutputFormat(str, Enum):
    """How a command prints its result on stdout."""

    table = "table"
    json = "json"


def debug_enabled() -> bool:
    """``--debug`` (or FUSIONCLI_DEBUG=1) shows tracebacks instead of one-line errors."""
    return os.environ.get("FUSIONCLI_DEBUG", "") not in ("", "0")


def report_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn :class:`FusionError` into ``error: ...`` lines on stderr and its exit code.

    Ctrl-C exits 130 with one line, as shells expect.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except FusionError as exc:
            if debug_enabled():
                raise
            # escape: paths and values may contain [brackets] that rich would read as markup
            for problem in exc.problems:
                err.print(f"[bold red]error:[/] {escape(problem)}", highlight=False, soft_wrap=True)
            if exc.hint:
                err.print(f"[yellow]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            err.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def progress_enabled() -> bool:
    """Live bars only on an interactive stderr (never in CI logs or pipes)."""
    return err.is_terminal and not os.environ.get("FUSIONCLI_NO_PROGRESS")


@contextmanager
def progress_bar(description: str, total: int | None, *, enabled: bool | None = None) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr; yields ``advance(n=1, total=None, description=None)``.

    When disabled (not a terminal, json mode) it yields a no-op so library code stays the same.
    """
    if enabled is None:
        enabled = progress_enabled()
    if not enabled:
        yield lambda *a, **k: None
        return
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    with progress:
        task = progress.add_task(description, total=total)

        def advance(n: int = 1, total: int | None = None, description: str | None = None) -> None:
            kwargs: dict[str, Any] = {}
            if total is not None:
                kwargs["total"] = total
            if description is not None:
                kwargs["description"] = description
            progress.update(task, advance=n, **kwargs)

        yield advance


def is_stdout_terminal() -> bool:
    return sys.stdout.isatty()
