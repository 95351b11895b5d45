"""The trackers with the real MLflow and W&B libraries, offline: one tracker run per run whatever
the executor, failures kept to their run, time limits, names, tags, links and publishing.

Runs are trained by the fake trainer (instant) except by the stacked executor, which trains the
real models (tiny data, 1 epoch, fp32) because it takes no fake.
"""

from __future__ import annotations

import socket
import sqlite3
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow_reader import artifacts, metric_history, mlflow_runs
from sweep_fakes import FakeTrainer, grid, tiny_data
from typer.testing import CliRunner
from wandb_reader import offline_runs

from fusioncli.cli import app
from fusioncli.errors import BadInputError
from fusioncli.results.store import ResultsStore
from fusioncli.sweep.runner import run_sweep
from fusioncli.tracking import Ledger, RunInfo, RunTracking, make_trackers

pytest.importorskip("mlflow")
pytest.importorskip("wandb")

runner = CliRunner()


def _trackers(mlflow_uri: str, *, wandb: bool = True, timeout: float = 30.0, seen: list | None = None) -> list:
    return make_trackers(
        mlflow=True, wandb=wandb, mlflow_uri=mlflow_uri, timeout=timeout,
        on_problem=seen.append if seen is not None else None,
    )  # fmt: skip


# -- one tracker run per run, whatever the executor ---------------------------------------------
@pytest.mark.parametrize("executor", ["loop", "stacked"])
def test_each_run_is_its_own_tracker_run(
    executor: str, prepared: Any, mlflow_uri: str, offline_trackers: Path, tmp_path: Path
) -> None:
    store = ResultsStore(tmp_path / "results")
    configs = grid(strategies=["late"], lrs=[1e-3, 1e-4], epochs=1, batch_size=16, precision="fp32", limit_per_class=8)
    fake = FakeTrainer() if executor == "loop" else None  # a train function means the loop
    summary = run_sweep(configs, prepared, store, train_fn=fake, trackers=_trackers(mlflow_uri), executor=executor)
    assert {o.record.config["lr"] for o in summary.outcomes} == {1e-3, 1e-4}
    assert summary.exit_code == 0 and summary.tracker_problems == []
    runs = mlflow_runs(mlflow_uri)
    assert sorted(runs) == sorted(o.run_id for o in summary.outcomes)
    wandb_runs = {r.config["fusioncli.run_id"]: r for r in offline_runs(offline_trackers)}
    assert sorted(wandb_runs) == sorted(runs)
    for outcome in summary.outcomes:
        record = outcome.record
        lr = outcome.config.lr
        run = runs[outcome.run_id]
        # MLflow: its own lr (param and history), the final figures at the last epoch, FINISHED
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"late lr={'1e-3' if lr == 1e-3 else '1e-4'} cosine seed=51"
        assert float(run.data.params["lr"]) == lr
        assert metric_history(mlflow_uri, run, "lr") == [(1, record.history[0]["lr"])]
        assert metric_history(mlflow_uri, run, "val_accuracy") == [(1, record.history[0]["val_accuracy"])]
        assert metric_history(mlflow_uri, run, "final/val_accuracy") == [(1, record.val_accuracy)]
        assert run.data.metrics["final/f1_macro"] == pytest.approx(record.f1_macro)
        assert run.data.tags["fusioncli.dataset_fingerprint"] == prepared.fingerprint
        assert run.data.tags["mlflow.source.git.commit"] == record.env["git_commit"]
        assert run.data.tags["fusioncli.torch_version"] == record.env["torch_version"]
        assert "run_record.json" in artifacts(mlflow_uri, run)
        assert outcome.tracker_runs["mlflow"] == run.info.run_id
        # W&B: the same, in its own run
        wb = wandb_runs[outcome.run_id]
        assert wb.name == run.info.run_name and wb.exit_code == 0
        assert wb.series("lr") == [(1, record.history[0]["lr"])]
        assert wb.series("final/val_accuracy") == [(1, record.val_accuracy)]
        assert wb.config["lr"] == lr and "run_record.json" in wb.files
    best = [o for o in summary.outcomes if o.new_best][-1]
    assert "model" in artifacts(mlflow_uri, runs[best.run_id])  # the best run's weights


def test_seeds_of_a_configuration_share_a_group(mlflow_uri: str, offline_trackers: Path, tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results")
    configs = grid(strategies=["late"], lrs=[1e-3, 1e-4], seeds=[1, 2], epochs=2)
    summary = run_sweep(
        configs, tiny_data(), store, train_fn=FakeTrainer(), trackers=_trackers(mlflow_uri), keep_weights=True
    )
    runs = mlflow_runs(mlflow_uri)
    for outcome in summary.outcomes:  # --keep-weights: every run's weights go along
        assert artifacts(mlflow_uri, runs[outcome.run_id]) == ["model", "run_record.json"]
    groups = {o.run_id: runs[o.run_id].data.tags["fusioncli.group"] for o in summary.outcomes}
    by_lr: dict[float, set[str]] = {}
    for o in summary.outcomes:
        by_lr.setdefault(o.config.lr, set()).add(groups[o.run_id])
    assert all(len(g) == 1 for g in by_lr.values()) and len(set(groups.values())) == 2
    assert next(iter(by_lr[1e-3])).startswith("late lr=1e-3 cosine [")
    for wb in offline_runs(offline_trackers):
        assert wb.group == groups[wb.config["fusioncli.run_id"]]
        assert wb.artifacts == [f"model-{wb.config['fusioncli.run_id']}"]
        assert [step for step, _ in wb.history] == [1, 2]
        assert "final/val_accuracy" in wb.history[-1][1] and "val_loss" in wb.history[-1][1]  # at the last epoch
    for run in runs.values():
        assert metric_history(mlflow_uri, run, "final/val_loss")[0][0] == 2


# -- failures stay with their run ---------------------------------------------------------------
def test_a_failed_close_does_not_touch_the_next_run(
    mlflow_uri: str, offline_trackers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient
    from wandb.sdk.wandb_run import Run

    real_terminate, real_finish = MlflowClient.set_terminated, Run.finish
    unclosed: list[Any] = []

    def terminate(self: Any, run_id: str, *args: Any, **kwargs: Any) -> None:
        if not unclosed or len(unclosed) == 1 and not isinstance(unclosed[0], str):
            unclosed.append(run_id)
            raise RuntimeError("database is locked")
        real_terminate(self, run_id, *args, **kwargs)

    def finish(self: Any, *args: Any, **kwargs: Any) -> None:
        if not any(isinstance(u, Run) for u in unclosed):
            unclosed.append(self)
            raise ConnectionError("wandb service is gone")
        real_finish(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_terminated", terminate)
    monkeypatch.setattr(Run, "finish", finish)
    seen: list[str] = []
    store = ResultsStore(tmp_path / "results")
    configs = grid(strategies=["late", "intermediate-add"], lrs=[1e-3], epochs=2)
    try:
        summary = run_sweep(
            configs, tiny_data(), store, train_fn=FakeTrainer(), trackers=_trackers(mlflow_uri, seen=seen)
        )
    finally:
        for leftover in unclosed:
            if isinstance(leftover, Run):
                real_finish(leftover)
    first, second = summary.outcomes
    assert summary.exit_code == 3 and all(store.is_finished(o.run_id) for o in summary.outcomes)
    assert len(first.tracker_problems) == 2 and second.tracker_problems == []
    assert "mlflow: run " in first.tracker_problems[1] and "close failed: RuntimeError: database is locked" in (
        first.tracker_problems[1]
    )
    assert "wandb: run " in first.tracker_problems[0] and "close failed: ConnectionError" in first.tracker_problems[0]
    assert seen == first.tracker_problems  # told as it happened
    runs = mlflow_runs(mlflow_uri)
    assert runs[first.run_id].info.status == "RUNNING"  # its close failed: left open, as MLflow shows it
    assert runs[second.run_id].info.status == "FINISHED"
    for outcome in summary.outcomes:  # each run holds its own epochs only
        assert metric_history(mlflow_uri, runs[outcome.run_id], "train_loss") == [(1, 1.0), (2, 0.5)]
        assert runs[outcome.run_id].data.params["strategy"] == outcome.config.strategy
    wandb_runs = {r.config["fusioncli.run_id"]: r for r in offline_runs(offline_trackers)}
    assert wandb_runs[second.run_id].exit_code == 0 and wandb_runs[second.run_id].name.startswith("intermediate-add")
    assert [s for s, _ in wandb_runs[second.run_id].series("train_loss")] == [1, 2]
    ledger = Ledger(store.root)
    assert not ledger.has_complete(first.run_id, next(t for t in _trackers(mlflow_uri)).destination)


def test_a_locked_database_is_a_problem_of_that_run_only(
    mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = mlflow_uri[len("sqlite:///") :]
    lock = sqlite3.connect(db, timeout=0, isolation_level=None)

    class LockingTrainer(FakeTrainer):
        def __call__(self, config: Any, data: Any, *, on_epoch: Any = None) -> SimpleNamespace:
            result = super().__call__(config, data, on_epoch=on_epoch)
            if len(self.calls) == 1:
                lock.execute("BEGIN EXCLUSIVE")  # another process holds the database from now on
            return result

    def release(outcome: Any) -> None:
        if outcome.index == 1:
            lock.execute("COMMIT")

    store = ResultsStore(tmp_path / "results")
    # The limit bounds how long the locked close waits (sqlite's own busy wait may answer first);
    # it must also leave the unlocked calls before it time on a loaded machine (1 s did not).
    trackers = make_trackers(mlflow=True, mlflow_uri=mlflow_uri, timeout=5.0)
    configs = grid(strategies=["late", "intermediate-add"], lrs=[1e-3], epochs=2)
    summary = run_sweep(configs, tiny_data(), store, train_fn=LockingTrainer(), trackers=trackers, on_run_end=release)
    first, second = summary.outcomes
    assert summary.exit_code == 3
    assert len(first.tracker_problems) == 1 and "close failed" in first.tracker_problems[0]
    assert second.tracker_problems == []
    run = mlflow_runs(mlflow_uri)[second.run_id]
    assert run.info.status == "FINISHED" and run.data.params["strategy"] == "intermediate-add"
    assert metric_history(mlflow_uri, run, "train_loss") == [(1, 1.0), (2, 0.5)]
    lock.close()


def test_a_hung_call_is_given_up_and_the_sweep_goes_on(tmp_path: Path) -> None:
    class Hanging:
        name, destination, timeout, on_problem = "slow", "slow", 0.2, None

        def __init__(self) -> None:
            self.finished: list[str] = []

        def probe(self, *, create: bool) -> None: ...

        def open(self, info: RunInfo) -> Any:
            tracker = self

            class Run:
                id = info.run_id

                def log_epoch(self, step: int, metrics: dict) -> None:
                    if info.config["strategy"] == "late":
                        time.sleep(2)

                def finish(self, record: dict, **_: Any) -> None:
                    tracker.finished.append(info.run_id)

            return Run()

    tracker = Hanging()
    store = ResultsStore(tmp_path / "results")
    configs = grid(strategies=["late", "intermediate-add"], lrs=[1e-3], epochs=3)
    summary = run_sweep(configs, tiny_data(), store, train_fn=FakeTrainer(), trackers=[tracker])
    # one time limit, not one per epoch: after the first timeout the run's later calls are skipped
    first, second = summary.outcomes
    assert len(first.tracker_problems) == 1
    assert "epoch 1 failed: no answer within 0.2 s" in first.tracker_problems[0]
    assert "later slow calls are skipped" in first.tracker_problems[0]
    assert tracker.finished == [second.run_id] and summary.exit_code == 3


def test_a_run_that_cannot_open_is_reported_and_the_next_one_opens(mlflow_uri: str, tmp_path: Path) -> None:
    trackers = make_trackers(mlflow=True, mlflow_uri=mlflow_uri, timeout=10)
    real_open = trackers[0].open
    calls = []

    def open_once_broken(info: RunInfo) -> Any:
        calls.append(info.run_id)
        if len(calls) == 1:
            raise OSError("disk full")
        return real_open(info)

    trackers[0].open = open_once_broken  # type: ignore[method-assign]
    summary = run_sweep(
        grid(strategies=["late", "intermediate-add"], lrs=[1e-3]), tiny_data(), ResultsStore(tmp_path / "r"),
        train_fn=FakeTrainer(), trackers=trackers,
    )  # fmt: skip
    first, second = summary.outcomes
    assert first.tracker_problems == [
        f"mlflow: run {first.run_id} (late lr=1e-3 cosine seed=51): start failed: OSError: disk full"
    ]
    assert sorted(mlflow_runs(mlflow_uri)) == [second.run_id]


# -- before training ----------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_training(monkeypatch: pytest.MonkeyPatch) -> FakeTrainer:
    trainer = FakeTrainer()
    monkeypatch.setattr("fusioncli.sweep.runner.train_run", trainer)
    monkeypatch.setattr("fusioncli.train.loop.train_run", trainer)
    return trainer


SWEEP = ["sweep", "--strategies", "late,intermediate-add", "--lrs", "1e-3", "--schedulers", "cosine", "--epochs", "2"]


@pytest.mark.parametrize("dry_run", [False, True])
def test_an_unreachable_server_stops_the_sweep_before_training(
    dry_run: bool, cache_dir: Path, tmp_path: Path, fake_training: FakeTrainer
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    args = [*SWEEP, "--cache-dir", str(cache_dir), "--results-dir", str(tmp_path / "r"), "--mlflow", "--mlflow-uri", url]
    # No timed assertion (the suite runs on loaded CI machines): the probe's own connect limit
    # is what keeps this from hanging; here, what it must say and that nothing trains.
    result = runner.invoke(app, args + (["--dry-run"] if dry_run else []))
    assert result.exit_code == 2, result.stderr
    assert f"the MLflow server {url} is unreachable" in result.stderr
    assert fake_training.calls == [] and "Traceback" not in result.stderr


def test_a_file_uri_mlflow_refuses_is_an_error_before_training(
    cache_dir: Path, tmp_path: Path, fake_training: FakeTrainer
) -> None:
    uri = (tmp_path / "mlruns").as_uri()
    args = [*SWEEP, "--cache-dir", str(cache_dir), "--results-dir", str(tmp_path / "r"), "--mlflow", "--mlflow-uri", uri]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert f"MLflow at {uri} (experiment 'fusioncli') cannot be used" in result.stderr
    assert fake_training.calls == []


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_missing_package_names_the_extra(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BadInputError) as info:
        make_trackers(**{name: True})
    assert f"--{name} needs the '{name}' package" in info.value.problems[0]
    assert info.value.hint == f"install the {name} extra: pip install 'fusioncli[{name}]'"


def test_options_win_over_the_environment_and_the_environment_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert make_trackers() == []
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "env-experiment")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    wandb, mlflow = make_trackers(wandb=True, mlflow=True, results_dir=tmp_path)
    assert (wandb.project, mlflow.experiment, mlflow.tracking_uri) == ("from-env", "env-experiment", "sqlite:///env.db")
    wandb, mlflow = make_trackers(
        wandb=True, mlflow=True, results_dir=tmp_path, wandb_project="opt", mlflow_experiment="exp",
        mlflow_uri="sqlite:///opt.db",
    )  # fmt: skip
    assert (wandb.project, mlflow.experiment, mlflow.tracking_uri) == ("opt", "exp", "sqlite:///opt.db")
    for name in ("WANDB_PROJECT", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name)
    wandb, mlflow = make_trackers(wandb=True, mlflow=True, results_dir=tmp_path)
    assert (wandb.project, mlflow.experiment) == ("fusioncli", "fusioncli")
    assert mlflow.tracking_uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"


# -- through the CLI ----------------------------------------------------------------------------
def test_sweep_json_lists_tracker_problems_and_exits_3(
    cache_dir: Path, tmp_path: Path, mlflow_uri: str, fake_training: FakeTrainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    real = MlflowClient.log_batch

    def log_batch(self: Any, run_id: str, metrics: Any = (), *args: Any, **kwargs: Any) -> Any:
        if any(m.key == "final/val_accuracy" for m in metrics) and not getattr(log_batch, "failed", False):
            log_batch.failed = True  # type: ignore[attr-defined]
            raise ConnectionError("server went away")
        return real(self, run_id, metrics, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", log_batch)
    args = [*SWEEP, "--cache-dir", str(cache_dir), "--results-dir", str(tmp_path / "r"), "--format", "json"]
    result = runner.invoke(app, [*args, "--mlflow", "--mlflow-uri", mlflow_uri, "--wandb"])
    assert result.exit_code == 3, result.stderr
    import json

    rows = json.loads(result.stdout)
    assert [r["status"] for r in rows] == ["finished", "finished"]
    assert len(rows[0]["tracker_problems"]) == 1 and "server went away" in rows[0]["tracker_problems"][0]
    assert rows[1]["tracker_problems"] == [] and set(rows[1]["tracker_runs"]) == {"mlflow", "wandb"}
    assert result.stderr.count("warning: mlflow: run") == 1  # as it happened
    assert "tracker problems: 1 (exit code 3; the results store has every run)" in result.stderr
    assert "wandb:" not in result.stderr  # W&B's own console output is kept out
    run = mlflow_runs(mlflow_uri)[rows[0]["run_id"]]
    assert run.info.status == "FINISHED"  # closed although its final figures did not get through


def test_force_links_the_new_tracker_run_to_the_replaced_one(mlflow_uri: str, tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results")
    configs = grid(strategies=["late"], lrs=[1e-3])
    first = run_sweep(configs, tiny_data(), store, train_fn=FakeTrainer(), trackers=_trackers(mlflow_uri, wandb=False))
    again = run_sweep(
        configs, tiny_data(), store, train_fn=FakeTrainer(), trackers=_trackers(mlflow_uri, wandb=False), force=True
    )
    old, new = first.outcomes[0].tracker_runs["mlflow"], again.outcomes[0].tracker_runs["mlflow"]
    assert old != new
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    assert client.get_run(new).data.tags["fusioncli.replaces"] == old
    assert client.get_run(old).data.tags["fusioncli.replaced_by"] == new


def test_a_store_is_published_after_the_fact_once(
    cache_dir: Path, tmp_path: Path, mlflow_uri: str, fake_training: FakeTrainer, offline_trackers: Path
) -> None:
    results = tmp_path / "r"
    base = [*SWEEP, "--cache-dir", str(cache_dir), "--results-dir", str(results)]
    assert runner.invoke(app, base).exit_code == 0  # no tracker
    logged = runner.invoke(app, [*base, "--wandb", "--log-existing"])
    assert logged.exit_code == 0, logged.stderr
    assert "log existing: 2 stored run(s) logged" in logged.stderr
    assert len(offline_runs(offline_trackers)) == 2
    for publish in range(2):
        result = runner.invoke(app, ["report", "--results-dir", str(results), "--to-mlflow", "--mlflow-uri", mlflow_uri])
        assert result.exit_code == 0, result.stderr
        assert f"{2 if publish == 0 else 0} run(s) logged, {0 if publish == 0 else 2} already there" in result.stderr
    runs = mlflow_runs(mlflow_uri)
    assert len(runs) == 2
    for run in runs.values():
        assert [s for s, _ in metric_history(mlflow_uri, run, "val_loss")] == [1, 2]
        assert metric_history(mlflow_uri, run, "final/val_accuracy")[0][0] == 2
    assert len(fake_training.calls) == 2  # publishing trained nothing


def test_train_logs_its_run(cache_dir: Path, tmp_path: Path, mlflow_uri: str, fake_training: FakeTrainer) -> None:
    import json

    args = ["train", "--strategy", "late", "--epochs", "2", "--cache-dir", str(cache_dir), "--format", "json"]
    result = runner.invoke(app, [*args, "--mlflow", "--mlflow-uri", mlflow_uri, "--mlflow-experiment", "single"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    run = mlflow_runs(mlflow_uri, "single")[record["run_id"]]
    assert run.info.status == "FINISHED" and run.info.run_name == "late lr=1e-4 cosine seed=51"
    assert metric_history(mlflow_uri, run, "final/val_accuracy") == [(2, record["metrics"]["val_accuracy"])]


def test_run_tracking_without_trackers_is_inert() -> None:
    tracking = RunTracking([], "abc", {"strategy": "late", "lr": 1e-3, "scheduler": "cosine", "seed": 1})
    tracking.epoch({"epoch": 1, "val_loss": 0.5})
    tracking.finish({"status": "finished"})
    assert tracking.problems == [] and tracking.ids == {} and tracking.name == "late lr=1e-3 cosine seed=1"


def test_a_restarted_run_closes_its_tracker_run_as_failed_and_opens_a_new_one(mlflow_uri: str) -> None:
    """What a stacked group that failed as a whole does before retrying each member alone."""
    trackers = make_trackers(mlflow=True, mlflow_uri=mlflow_uri)
    config = grid(strategies=["late"], lrs=[1e-3])[0].resolve().to_dict()
    tracking = RunTracking(trackers, "r" * 16, config, fingerprint="fp")
    tracking.epoch({"epoch": 1, "train_loss": 9.0})
    first = tracking.ids["mlflow"]
    tracking.restart("stacked group of 2 failed (NaN); re-run one at a time")
    tracking.epoch({"epoch": 1, "train_loss": 1.0})
    second = tracking.ids["mlflow"]
    tracking.interrupted()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    old, new = client.get_run(first), client.get_run(second)
    assert first != second and tracking.problems == []
    assert old.info.status == "FAILED" and "stacked group of 2 failed" in old.data.tags["fusioncli.error"]
    assert new.info.status == "KILLED"  # Ctrl-C
    assert [m.value for m in client.get_metric_history(second, "train_loss")] == [1.0]  # its own epochs only


def test_online_wandb_needs_an_api_key_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr("fusioncli.tracking.wandb_tracker.check_reachable", lambda *a, **k: None)
    monkeypatch.setattr(wandb, "login", lambda **kwargs: False)
    (tracker,) = make_trackers(wandb=True)
    with pytest.raises(BadInputError) as info:
        tracker.probe(create=True)
    assert info.value.problems == ["W&B has no API key for this machine"] and "wandb login" in info.value.hint


def test_final_figures_include_robustness_calibration_and_per_class() -> None:
    from fusioncli.tracking.base import final_metrics, last_step

    record = {
        "metrics": {"val_accuracy": 0.9, "per_class": {"cubes": {"f1": 0.8, "support": 3}}, "calibration": {"ece": 0.05}},
        "robustness": {"mean_auc": 0.7, "curves": {"rgb_noise": {"0.5": 0.6}}, "note": "text is left out"},
        "params": {"total": 10},
        "flops_per_sample": 5,
        "history": [{"epoch": 1}, {"epoch": 2}],
    }
    assert final_metrics(record) == {
        "final/val_accuracy": 0.9, "final/per_class/cubes/f1": 0.8, "final/per_class/cubes/support": 3.0,
        "final/calibration/ece": 0.05, "robustness/mean_auc": 0.7, "robustness/curves/rgb_noise/0.5": 0.6,
        "params/total": 10.0, "flops_per_sample": 5.0,
    }  # fmt: skip
    assert last_step(record) == 2 and last_step({"history": []}) == 0
