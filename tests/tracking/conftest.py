"""Fixtures for the tracker tests: the real MLflow and W&B libraries, offline and in tmp_path.

MLflow logs to a SQLite file (a template database is created once per session: MLflow's schema
migrations take seconds); W&B runs with WANDB_MODE=offline and WANDB_DIR in the test's folder.
Nothing here touches the network.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweep"))

TRACKER_ENV = (
    "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE",
    "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL", "WANDB_API_KEY", "WANDB_RUN_GROUP", "WANDB_NAME",
)  # fmt: skip


@pytest.fixture(autouse=True)
def offline_trackers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No tracker setting leaks in from the environment; W&B offline, its files in tmp_path."""
    for name in TRACKER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb_dir = tmp_path / "wandb-files"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    return wandb_dir


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite database with its schema, made once."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments(max_results=1)
    return db


@pytest.fixture
def mlflow_uri(mlflow_template: Path, tmp_path: Path) -> str:
    """A fresh MLflow SQLite store in this test's folder (a copy of the template)."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(mlflow_template, db)
    return f"sqlite:///{db}"
