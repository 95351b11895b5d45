"""MLflow: one MLflow run per fusioncli run, through ``MlflowClient`` with explicit run ids.

The client API (not ``mlflow.start_run``) keeps no "active run" in the process: runs trained
together each have their own MLflow run, and a run whose close failed cannot swallow the next
run's numbers. The experiment is resolved once, before training (:meth:`MlflowTracker.probe`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fusioncli.errors import BadInputError
from fusioncli.tracking.base import (
    TAG_PREFIX,
    Artifact,
    ProblemHandler,
    RunInfo,
    call_with_timeout,
    check_reachable,
    check_writable_folder,
    final_metrics,
    import_extra,
)

_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
PARAM_CHARS = 6000  # MLflow's limit on a param value
BATCH = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's limits per log_batch


def _key(name: str) -> str:
    """A metric or param name MLflow accepts (letters, digits, _ - . space /)."""
    return _BAD_KEY.sub("_", name)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other URIs and in-memory ones)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


class MlflowTracker:
    """Logs each fusioncli run as one MLflow run of ``experiment`` at ``tracking_uri``."""

    name = "mlflow"

    def __init__(
        self,
        tracking_uri: str,
        experiment: str = "fusioncli",
        *,
        timeout: float,
        on_problem: ProblemHandler | None = None,
        quiet: bool = True,
    ) -> None:
        self._mlflow = import_extra("mlflow", "mlflow", "--mlflow")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.timeout = timeout
        self.on_problem = on_problem
        self.destination = f"mlflow {tracking_uri} experiment={experiment}"
        self._client: Any = None
        self._experiment_id: str | None = None
        self._lock = threading.Lock()
        if quiet:  # "Creating initial MLflow database tables..." and alembic's lines are not ours
            for logger in ("mlflow", "alembic"):
                logging.getLogger(logger).setLevel(logging.WARNING)

    def _hint(self) -> str:
        return (
            "check --mlflow-uri / MLFLOW_TRACKING_URI (a running server, or sqlite:///PATH/mlflow.db), "
            "or leave out --mlflow"
        )

    def _artifact_location(self) -> str | None:
        db = sqlite_path(self.tracking_uri)
        return (db.resolve().parent / "mlflow-artifacts").as_uri() if db is not None else None

    def _experiment(self, *, create: bool) -> tuple[Any, str | None]:
        """(client, experiment id): resolved once; None when absent and not ``create``."""
        with self._lock:
            if self._experiment_id is not None:
                return self._client, self._experiment_id
            client = self._mlflow.tracking.MlflowClient(tracking_uri=self.tracking_uri)
            found = client.get_experiment_by_name(self.experiment)
            if found is not None and getattr(found, "lifecycle_stage", "active") == "deleted":
                raise BadInputError(
                    f"the MLflow experiment {self.experiment!r} is deleted",
                    hint="restore it (mlflow experiments restore) or choose another --mlflow-experiment",
                )
            if found is not None:
                experiment_id: str | None = found.experiment_id
            elif create:
                experiment_id = client.create_experiment(self.experiment, artifact_location=self._artifact_location())
            else:
                experiment_id = None
            if experiment_id is not None:
                self._client, self._experiment_id = client, experiment_id
            return client, experiment_id

    def probe(self, *, create: bool) -> None:
        """Check the tracking store answers (and, with ``create``, resolve the experiment) before
        training; raises BadInputError saying what is wrong."""
        scheme = urlparse(self.tracking_uri).scheme
        if scheme in ("http", "https"):
            check_reachable(self.tracking_uri, "the MLflow server", self._hint())
        db = sqlite_path(self.tracking_uri)
        if db is not None:
            check_writable_folder(db.parent if str(db.parent) else Path("."), "the MLflow database", self._hint())
            if not create and not db.exists():
                return  # a dry run creates no database
        try:
            call_with_timeout(lambda: self._experiment(create=create), self.timeout, "mlflow experiment")
        except BadInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure here means the store is unusable
            from fusioncli.tracking.run import describe

            raise BadInputError(
                f"MLflow at {self.tracking_uri} (experiment {self.experiment!r}) cannot be used: {describe(exc)}",
                hint=self._hint(),
            ) from None

    def open(self, info: RunInfo) -> _MlflowRun:
        client, experiment_id = self._experiment(create=True)
        run = client.create_run(experiment_id, run_name=info.name, tags=dict(info.tags))
        rid = run.info.run_id
        entities = self._mlflow.entities
        params = {**info.config, "run_id": info.run_id, "group": info.group}
        for chunk in _chunks([entities.Param(_key(k), str(v)[:PARAM_CHARS]) for k, v in params.items()], 100):
            client.log_batch(rid, params=chunk)
        replaced = info.tags.get(f"{TAG_PREFIX}replaces")
        if replaced:
            # Best effort: the old run may be gone from this store; the link on the new one is what counts.
            with contextlib.suppress(Exception):
                client.set_tag(replaced, f"{TAG_PREFIX}replaced_by", rid)
        return _MlflowRun(client, entities, rid)


class _MlflowRun:
    def __init__(self, client: Any, entities: Any, run_id: str) -> None:
        self._client = client
        self._entities = entities
        self.id = run_id

    def _metrics(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self._entities.Metric(_key(k), v, now, step) for k, v in values.items()]
        for chunk in _chunks(metrics, BATCH["metrics"]):
            if chunk:
                self._client.log_batch(self.id, metrics=chunk)

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None:
        self._metrics(metrics, step)

    def finish(self, record: dict[str, Any], *, step: int, tags: dict[str, str], artifacts: Sequence[Artifact]) -> None:
        status = str(record.get("status"))
        try:
            self._metrics(final_metrics(record), step)
            all_tags = dict(tags)
            if f"{TAG_PREFIX}git_commit" in tags:  # where MLflow's UI shows a run's source version
                all_tags["mlflow.source.git.commit"] = tags[f"{TAG_PREFIX}git_commit"]
            run_tags = [self._entities.RunTag(k, v[:5000]) for k, v in all_tags.items()]
            for chunk in _chunks(run_tags, BATCH["tags"]):
                if chunk:
                    self._client.log_batch(self.id, tags=chunk)
            for artifact in artifacts:
                self._client.log_artifact(self.id, str(artifact.path), "model" if artifact.kind == "model" else None)
        finally:
            # Closed even when a figure or a file could not be sent (then that error is raised).
            self._client.set_terminated(self.id, status=_STATUS.get(status, "FAILED"))
