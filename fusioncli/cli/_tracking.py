"""Tracker options shared by ``train`` and ``sweep``, and how tracker problems look on stderr.

The tracker libraries are imported only when a tracker is asked for (``--help`` stays fast).
"""

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from fusioncli.cli._common import debug_enabled, err
from fusioncli.tracking.base import DEFAULT_TIMEOUT_S

F = TypeVar("F", bound=Callable[..., Any])

WandbOption = Annotated[
    bool,
    typer.Option(
        "--wandb",
        help="Log each run to Weights & Biases, one W&B run per run (extra: pip install 'fusioncli\\[wandb]').",
    ),
]
WandbProjectOption = Annotated[
    str | None,
    typer.Option("--wandb-project", help="W&B project (default $WANDB_PROJECT, else fusioncli).", show_default=False),
]
MlflowOption = Annotated[
    bool,
    typer.Option(
        "--mlflow", help="Log each run to MLflow, one MLflow run per run (extra: pip install 'fusioncli\\[mlflow]')."
    ),
]
MlflowUriOption = Annotated[
    str | None,
    typer.Option(
        "--mlflow-uri",
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///<results>/mlflow.db).",
        show_default=False,
    ),
]
MlflowExperimentOption = Annotated[
    str | None,
    typer.Option(
        "--mlflow-experiment",
        help="MLflow experiment (default $MLFLOW_EXPERIMENT_NAME, else fusioncli).",
        show_default=False,
    ),
]
TrackerTimeoutOption = Annotated[
    float,
    typer.Option(
        "--tracker-timeout",
        help="Seconds each tracker call may take before that run's tracker run is given up (reported, exit code 3).",
    ),
]


@dataclass(frozen=True)
class TrackerChoice:
    """What a command line asked of the trackers (``train`` and ``sweep``'s tracker options)."""

    wandb: bool = False
    wandb_project: str | None = None
    mlflow: bool = False
    mlflow_uri: str | None = None
    mlflow_experiment: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S

    @property
    def wanted(self) -> bool:
        """Whether any tracker was asked for."""
        return self.wandb or self.mlflow


NO_TRACKERS = TrackerChoice()  # a command's placeholder default; tracker_options passes the real choice

# The options tracker_options adds: parameter name -> (annotation, default).
_OPTIONS: dict[str, tuple[Any, Any]] = {
    "wandb": (WandbOption, False),
    "wandb_project": (WandbProjectOption, None),
    "mlflow": (MlflowOption, False),
    "mlflow_uri": (MlflowUriOption, None),
    "mlflow_experiment": (MlflowExperimentOption, None),
    "tracker_timeout": (TrackerTimeoutOption, DEFAULT_TIMEOUT_S),
}


def tracker_options(command: F) -> F:
    """Decorate a command so it takes the tracker options (``--wandb`` ... ``--tracker-timeout``).

    The command declares a ``trackers_chosen: TrackerChoice`` parameter; the options take its
    place in ``--help`` and the command receives their values there.
    """
    signature = inspect.signature(command)
    generated = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, (annotation, default) in _OPTIONS.items()
    ]
    params: list[inspect.Parameter] = []
    for name, param in signature.parameters.items():
        # keyword-only throughout: Typer passes every option by name
        params.extend(generated if name == "trackers_chosen" else [param.replace(kind=inspect.Parameter.KEYWORD_ONLY)])

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in _OPTIONS}
        timeout = values.pop("tracker_timeout")
        return command(trackers_chosen=TrackerChoice(**values, timeout=timeout), **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]  # read by inspect.signature (Typer)
    return wrapper  # type: ignore[return-value]  # the command, called by Typer with the generated options


def warn_problem(line: str) -> None:
    """One tracker problem, printed as it happens."""
    from rich.markup import escape

    err.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


def build_trackers(choice: TrackerChoice, *, results_dir: Path | None, dry_run: bool = False) -> list[Any]:
    """The trackers asked for, checked before any training (also on a dry run, which creates
    nothing); a missing extra or an unreachable server is a BadInputError (exit 2)."""
    if not choice.wanted:
        return []
    from fusioncli.tracking import make_trackers, probe_trackers

    trackers = make_trackers(
        wandb=choice.wandb, mlflow=choice.mlflow, results_dir=results_dir, mlflow_uri=choice.mlflow_uri,
        mlflow_experiment=choice.mlflow_experiment, wandb_project=choice.wandb_project, timeout=choice.timeout,
        on_problem=warn_problem, quiet=not debug_enabled(),
    )  # fmt: skip
    probe_trackers(trackers, create=not dry_run)
    if dry_run:
        where = ", ".join(t.destination for t in trackers)
        err.print(f"dry run: trackers reachable: {where}", highlight=False, soft_wrap=True)
    return trackers


def print_tracker_problems(problems: list[str]) -> None:
    """The summary's list of what the trackers missed (each was warned about as it happened)."""
    if not problems:
        return
    from rich.markup import escape

    err.print(
        f"[yellow]tracker problems: {len(problems)}[/] (exit code 3; the results store has every run):",
        highlight=False,
        soft_wrap=True,
    )
    for line in problems:
        err.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
    err.print(
        "  (`fusioncli report --to-mlflow/--to-wandb` logs the runs a tracker does not hold whole, again)",
        highlight=False,
        soft_wrap=True,
    )


def publish_store(store: Any, choice: TrackerChoice) -> int:
    """``report --to-mlflow/--to-wandb``: log the store's finished runs a tracker does not hold
    yet (one tracker run each); returns the exit code (0, or 3 when a tracker missed some)."""
    from fusioncli.tracking import EXIT_TRACKER_MISSED
    from fusioncli.tracking.publish import publish_records

    trackers = build_trackers(choice, results_dir=store.root)
    published = publish_records(trackers, store, store.records())
    where = ", ".join(t.destination for t in trackers)
    err.print(
        f"published to {where}: {len(published.logged)} run(s) logged, {len(published.already)} already there",
        highlight=False,
        soft_wrap=True,
    )
    print_tracker_problems(published.problems)
    return EXIT_TRACKER_MISSED if published.problems else 0
