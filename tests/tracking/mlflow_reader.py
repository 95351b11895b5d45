"""Read back what MLflow holds, for the tracker tests."""

from __future__ import annotations

from typing import Any


def mlflow_runs(uri: str, experiment: str = "fusioncli") -> dict[str, Any]:
    """The experiment's MLflow runs, keyed by their fusioncli run id tag (each key must be unique)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    runs: dict[str, Any] = {}
    for run in client.search_runs([found.experiment_id], max_results=1000):
        key = run.data.tags["fusioncli.run_id"]
        assert key not in runs, f"two MLflow runs for run {key}"
        runs[key] = run
    return runs


def metric_history(uri: str, run: Any, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, key)
    return sorted((m.step, m.value) for m in history)


def artifacts(uri: str, run: Any) -> list[str]:
    from mlflow.tracking import MlflowClient

    return sorted(a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run.info.run_id))
