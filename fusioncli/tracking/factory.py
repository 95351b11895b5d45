"""Build the trackers a command asks for, with options that win over the environment, and check
them before any training.

Precedence, for each setting: the command-line option, else the variable the tool itself
documents (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``, ``WANDB_PROJECT``,
``WANDB_ENTITY``, ``WANDB_DIR``), else fusioncli's default (a SQLite store and its artifacts
inside the results folder; W&B files in ``<results>/wandb``; project and experiment
``fusioncli``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fusioncli.errors import BadInputError
from fusioncli.tracking.base import DEFAULT_TIMEOUT_S, ProblemHandler, Tracker

DEFAULT_NAME = "fusioncli"  # W&B project and MLflow experiment


def default_mlflow_uri(results_dir: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store inside the results folder."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path(results_dir) / 'mlflow.db').resolve()}"


def make_trackers(
    *,
    wandb: bool = False,
    mlflow: bool = False,
    results_dir: Path | None = None,
    mlflow_uri: str | None = None,
    mlflow_experiment: str | None = None,
    wandb_project: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    on_problem: ProblemHandler | None = None,
    quiet: bool = True,
) -> list[Tracker]:
    """The trackers asked for; raises BadInputError (naming the extra) before any run starts.

    ``timeout``: seconds each tracker call may take. ``on_problem`` is told each tracker
    problem as it happens. ``quiet`` keeps the libraries' own console output off stderr.
    """
    if timeout <= 0:
        raise BadInputError(f"--tracker-timeout must be > 0 seconds (got {timeout:g})")
    trackers: list[Tracker] = []
    if wandb:
        from fusioncli.tracking.wandb_tracker import WandbTracker

        env_dir = os.environ.get("WANDB_DIR")
        directory = Path(env_dir) if env_dir else (Path(results_dir) if results_dir is not None else None)
        project = wandb_project or os.environ.get("WANDB_PROJECT") or DEFAULT_NAME
        entity = os.environ.get("WANDB_ENTITY") or None
        wandb_tracker = WandbTracker(
            project, directory=directory, entity=entity, timeout=timeout, on_problem=on_problem, quiet=quiet
        )
        trackers.append(wandb_tracker)
    if mlflow:
        from fusioncli.tracking.mlflow_tracker import MlflowTracker

        if mlflow_uri:
            uri = mlflow_uri
        elif results_dir is not None:
            uri = default_mlflow_uri(results_dir)
        else:
            uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"
        experiment = mlflow_experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_NAME
        trackers.append(MlflowTracker(uri, experiment, timeout=timeout, on_problem=on_problem, quiet=quiet))
    return trackers


def probe_trackers(trackers: Sequence[Tracker], *, create: bool = True) -> None:
    """Check every tracker before training (servers reachable, folders writable, and with
    ``create`` the MLflow experiment resolved); raises one BadInputError listing every problem.

    ``create=False`` (a dry run) creates nothing: no database, no experiment, no folder.
    """
    problems: list[str] = []
    hints: list[str] = []
    for tracker in trackers:
        try:
            tracker.probe(create=create)
        except BadInputError as exc:
            problems.extend(exc.problems)
            if exc.hint and exc.hint not in hints:
                hints.append(exc.hint)
    if problems:
        raise BadInputError(problems, hint="; ".join(hints) or None)
