"""Optional experiment trackers: Weights & Biases (``--wandb``) and MLflow (``--mlflow``).

Both are optional extras; asking for one that is not installed is a BadInputError naming the
extra to install. A tracker has three calls per run: ``start(run_id, config)``,
``log_epoch(row)`` after each epoch, and ``finish(record)`` with the final record. The results
store stays the source of truth; trackers only mirror it.

Trackers take plain dicts: ``finish`` gets the record's JSON form
(:meth:`fusioncli.record.RunRecord.to_json`, what W&B and MLflow are sent anyway), or for a run
stopped by Ctrl-C just ``{"run_id", "status": "interrupted", "error"}`` -- so a tracker needs
nothing from fusioncli beyond this protocol.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Protocol

from fusioncli.errors import BadInputError


class Tracker(Protocol):
    """What the sweep runner calls for each run."""

    name: str

    def start(self, run_id: str, config: dict[str, Any]) -> None: ...

    def log_epoch(self, row: dict[str, Any]) -> None: ...

    def finish(self, record: dict[str, Any]) -> None: ...


def _import_extra(module: str, extra: str, flag: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BadInputError(
            f"{flag} needs the {module!r} package, which is not installed",
            hint=f"install the {extra} extra: pip install 'fusioncli[{extra}]'",
        ) from None


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a flat dict (trackers log metrics, not strings)."""
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


def summary_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a finished record, flat, for a tracker's run summary."""
    metrics = record.get("metrics") or {}
    timing = record.get("timing") or {}
    memory = record.get("memory") or {}
    params = record.get("params") or {}
    flat = {
        "val_accuracy": metrics.get("val_accuracy"),
        "f1_macro": metrics.get("f1_macro"),
        "val_loss": metrics.get("val_loss"),
        "train_seconds": timing.get("train_seconds"),
        "samples_per_s": timing.get("samples_per_s"),
        "peak_gpu_allocated_bytes": memory.get("peak_gpu_allocated_bytes"),
        "peak_host_rss_bytes": memory.get("peak_host_rss_bytes"),
        "params_total": params.get("total"),
        "flops_per_sample": record.get("flops_per_sample"),
    }
    return _numbers({k: v for k, v in flat.items() if v is not None})


class WandbTracker:
    """One W&B run per sweep run (honours WANDB_MODE=offline, WANDB_PROJECT, ...)."""

    name = "wandb"

    def __init__(self, project: str = "fusioncli", group: str | None = None) -> None:
        self._wandb = _import_extra("wandb", "wandb", "--wandb")
        self.project = os.environ.get("WANDB_PROJECT", project)
        self.group = group
        self._run: Any = None

    def start(self, run_id: str, config: dict[str, Any]) -> None:
        self._run = self._wandb.init(
            project=self.project, group=self.group, name=run_id, config=dict(config, run_id=run_id)
        )

    def log_epoch(self, row: dict[str, Any]) -> None:
        if self._run is not None:
            step = row.get("epoch")
            self._run.log(_numbers(row), step=int(step) if step is not None else None)

    def finish(self, record: dict[str, Any]) -> None:
        if self._run is None:
            return
        failed = record.get("status") != "finished"
        self._run.summary.update({**summary_metrics(record), "status": record.get("status")})
        if failed and record.get("error"):
            self._run.summary.update({"error": str(record["error"])[:1000]})
        self._run.finish(exit_code=1 if failed else 0)
        self._run = None


class MlflowTracker:
    """One MLflow run per sweep run, in a local store (default ``<results>/mlflow.db``)."""

    name = "mlflow"

    def __init__(self, tracking_uri: str | None = None, experiment: str = "fusioncli") -> None:
        self._mlflow = _import_extra("mlflow", "mlflow", "--mlflow")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self._active = False

    def start(self, run_id: str, config: dict[str, Any]) -> None:
        if self.tracking_uri:
            self._mlflow.set_tracking_uri(self.tracking_uri)
        self._mlflow.set_experiment(self.experiment)
        self._mlflow.start_run(run_name=run_id)
        self._active = True
        # MLflow params are strings; None would be logged as the text "None", which is fine.
        self._mlflow.log_params({**{k: str(v) for k, v in config.items()}, "run_id": run_id})

    def log_epoch(self, row: dict[str, Any]) -> None:
        if self._active:
            step = row.get("epoch")
            self._mlflow.log_metrics(_numbers(row), step=int(step) if step is not None else None)

    def finish(self, record: dict[str, Any]) -> None:
        if not self._active:
            return
        failed = record.get("status") != "finished"
        self._mlflow.log_metrics(summary_metrics(record))
        self._mlflow.set_tag("status", str(record.get("status")))
        if failed and record.get("error"):
            self._mlflow.set_tag("error", str(record["error"])[:1000])
        self._mlflow.end_run(status="FAILED" if failed else "FINISHED")
        self._active = False


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
    wandb_project: str = "fusioncli",
    group: str | None = None,
) -> list[Tracker]:
    """The trackers asked for; raises BadInputError (naming the extra) before any run starts."""
    trackers: list[Tracker] = []
    if wandb:
        trackers.append(WandbTracker(project=wandb_project, group=group))
    if mlflow:
        uri = mlflow_uri or (default_mlflow_uri(results_dir) if results_dir is not None else None)
        if results_dir is not None:
            Path(results_dir).mkdir(parents=True, exist_ok=True)
        trackers.append(MlflowTracker(tracking_uri=uri))
    return trackers
