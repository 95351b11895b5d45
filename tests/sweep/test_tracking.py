"""Optional trackers: the missing-extra message, and the calls made on fake wandb / mlflow modules."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
from sweep_fakes import FakeTrainer, grid, tiny_data

from fusioncli.errors import BadInputError
from fusioncli.results.store import ResultsStore
from fusioncli.sweep.runner import run_sweep
from fusioncli.sweep.tracking import MlflowTracker, WandbTracker, default_mlflow_uri, make_trackers


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_missing_package_names_the_extra(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BadInputError) as info:
        make_trackers(**{name: True})
    assert f"--{name} needs the '{name}' package" in info.value.problems[0]
    assert info.value.hint == f"install the {name} extra: pip install 'fusioncli[{name}]'"


def test_no_trackers_by_default() -> None:
    assert make_trackers() == []


class _FakeWandbRun:
    def __init__(self, calls: list) -> None:
        self.calls = calls
        self.summary = types.SimpleNamespace(update=lambda d: calls.append(("summary", dict(d))))

    def log(self, row: dict, step: Any = None) -> None:
        self.calls.append(("log", dict(row), step))

    def finish(self, exit_code: int = 0) -> None:
        self.calls.append(("finish", exit_code))


def _fake_wandb(calls: list) -> types.ModuleType:
    module = types.ModuleType("wandb")

    def init(**kwargs: Any) -> _FakeWandbRun:
        calls.append(("init", kwargs))
        return _FakeWandbRun(calls)

    module.init = init
    return module


def test_wandb_logs_config_epochs_and_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    trackers = make_trackers(wandb=True, wandb_project="proj")
    assert isinstance(trackers[0], WandbTracker)
    summary = run_sweep(
        grid(strategies=["late"], lrs=[1e-3], epochs=2),
        tiny_data(),
        ResultsStore(tmp_path),
        train_fn=FakeTrainer(),
        trackers=trackers,
    )
    rid = summary.outcomes[0].run_id
    kinds = [c[0] for c in calls]
    assert kinds == ["init", "log", "log", "summary", "finish"]
    init = calls[0][1]
    assert init["project"] == "proj" and init["name"] == rid
    assert init["config"]["strategy"] == "late" and init["config"]["run_id"] == rid
    assert calls[1][2] == 1 and calls[2][2] == 2  # step = epoch
    assert "val_accuracy" in calls[1][1] and "epoch" in calls[1][1]
    assert calls[3][1]["status"] == "finished" and "val_accuracy" in calls[3][1]
    assert calls[4] == ("finish", 0)


def test_wandb_marks_failed_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
    trainer = FakeTrainer(fail=lambda c: RuntimeError("boom"))
    run_sweep(
        grid(strategies=["late"], lrs=[1e-3]),
        tiny_data(),
        ResultsStore(tmp_path),
        train_fn=trainer,
        trackers=make_trackers(wandb=True),
    )
    assert calls[-1] == ("finish", 1)
    assert any(c[0] == "summary" and c[1].get("error") == "RuntimeError: boom" for c in calls)


def _fake_mlflow(calls: list) -> types.ModuleType:
    module = types.ModuleType("mlflow")
    for name in ("set_tracking_uri", "set_experiment", "start_run", "log_params", "log_metrics", "set_tag", "end_run"):

        def record(*args: Any, _name: str = name, **kwargs: Any) -> None:
            calls.append((_name, args, kwargs))

        setattr(module, name, record)
    return module


def test_mlflow_logs_to_a_local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    monkeypatch.setitem(sys.modules, "mlflow", _fake_mlflow(calls))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    trackers = make_trackers(mlflow=True, results_dir=tmp_path)
    assert isinstance(trackers[0], MlflowTracker)
    run_sweep(
        grid(strategies=["late"], lrs=[1e-3], epochs=2),
        tiny_data(),
        ResultsStore(tmp_path),
        train_fn=FakeTrainer(),
        trackers=trackers,
    )
    names = [c[0] for c in calls]
    assert names == [
        "set_tracking_uri",
        "set_experiment",
        "start_run",
        "log_params",
        "log_metrics",
        "log_metrics",
        "log_metrics",
        "set_tag",
        "end_run",
    ]
    assert calls[0][1][0] == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert calls[3][1][0]["strategy"] == "late"
    assert calls[4][2]["step"] == 1
    assert calls[-1][2]["status"] == "FINISHED"


def test_mlflow_uri_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_mlflow_uri(tmp_path) == "http://127.0.0.1:5000"
