"""The Ray backend: same run ids and metrics as the local backend, resume, failures, Ctrl-C.

Tests that start Ray share one local instance (``ray.init(num_cpus=2)``, module fixture):
``run_sweep_ray`` uses an existing connection and leaves it open. Faults are injected through
``train_fn``, a function defined inside a test helper so that Ray pickles it by value into the
workers (a test module is not importable there).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from sweep_fakes import fake_record, grid

from fusioncli.data.cache import load_cache
from fusioncli.errors import BadInputError
from fusioncli.results.store import ResultsStore
from fusioncli.sweep import ray_backend
from fusioncli import machine
from fusioncli.sweep.plan import SweepSpec, plan_grid, plan_sweep, resolve_for_ray
from fusioncli.sweep.ray_backend import run_sweep_ray
from fusioncli.sweep.runner import run_sweep
from fusioncli.config import RunConfig, run_id

QUICK = dict(precision="fp32", limit_per_class=8, lrs=[1e-3])


def _ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


needs_ray = pytest.mark.skipif(not _ray_available(), reason="ray is not installed (pip install 'fusioncli[ray]')")


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for this module's tests (a start costs seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def _fingerprint(cache_dir: Path) -> str:
    return json.loads((cache_dir / "manifest.json").read_text())["fingerprint"]


# -- no Ray needed ----------------------------------------------------------------------------


def test_auto_resolves_like_the_local_backend_on_cpu() -> None:
    config = RunConfig(strategy="late", device="auto", precision="auto")
    resolved = resolve_for_ray(config, gpus_per_run=0)
    assert resolved.device == "cpu"
    assert resolved == RunConfig(strategy="late", device="cpu").resolve()  # same run id as local on a CPU


def test_gpu_runs_train_on_cuda0_and_a_gpu_less_driver_picks_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "cuda_available", lambda: False)
    for device in ("auto", "cuda", "cuda:0"):
        resolved = resolve_for_ray(RunConfig(device=device), gpus_per_run=0.25)
        assert (resolved.device, resolved.precision) == ("cuda:0", "bf16")
    assert resolve_for_ray(RunConfig(precision="fp32"), gpus_per_run=1).precision == "fp32"  # explicit: kept


@pytest.mark.parametrize(
    "device, gpus, message",
    [
        ("cpu", 0.5, "--device cpu with --gpus-per-run 0.5"),
        ("cuda", 0.0, "--device cuda on Ray needs --gpus-per-run > 0"),
        ("cuda:1", 1.0, "--device cuda:1: on Ray each run sees the GPU it reserved as cuda:0"),
    ],
)
def test_device_conflicts_are_bad_input(device: str, gpus: float, message: str) -> None:
    with pytest.raises(BadInputError) as info:
        resolve_for_ray(RunConfig(device=device), gpus_per_run=gpus)
    assert info.value.problems[0].startswith(message)


def test_resource_values_are_checked() -> None:
    configs = tuple(grid(**QUICK))
    with pytest.raises(BadInputError) as info:
        SweepSpec(configs=configs, backend="ray", gpus_per_run=1.5, cpus_per_run=0)
    assert [p.split(" (")[0] for p in info.value.problems] == [
        "--gpus-per-run must be between 0 and 1",
        "--cpus-per-run must be > 0",
    ]
    SweepSpec(configs=configs, backend="ray", gpus_per_run=0.25, cpus_per_run=0.5)  # fractions are fine


def test_missing_ray_names_the_extra(cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(BadInputError) as info:
        run_sweep_ray(grid(**QUICK), cache_dir, ResultsStore(tmp_path))
    assert info.value.exit_code == 2
    assert info.value.problems == ["--backend ray needs the 'ray' package, which is not installed"]
    assert info.value.hint == "install the ray extra: pip install 'fusioncli[ray]'"


@needs_ray
def test_missing_cache_fails_before_ray_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_backend, "ray_session", _no_ray)
    with pytest.raises(BadInputError, match="no prepared cache in"):
        run_sweep_ray(grid(**QUICK), tmp_path / "nocache", ResultsStore(tmp_path / "results"))


def _no_ray(*args, **kwargs):
    raise AssertionError("Ray was started")


@needs_ray
def test_nothing_left_to_train_does_not_start_ray(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ResultsStore(tmp_path)
    configs = grid(**QUICK)
    for config in configs:
        store.write(fake_record(config, _fingerprint(cache_dir)))
    monkeypatch.setattr(ray_backend, "ray_session", _no_ray)
    ended = []
    summary = run_sweep_ray(configs, cache_dir, store, on_run_end=ended.append)
    assert [o.status for o in summary.outcomes] == ["skipped"] * len(configs)
    assert [o.index for o in ended] == list(range(1, len(configs) + 1))
    assert summary.exit_code == 0


def test_plan_has_the_local_run_ids(cache_dir: Path, tmp_path: Path) -> None:
    configs = grid(**QUICK)  # device cpu, precision fp32
    store = ResultsStore(tmp_path)
    local = plan_grid(SweepSpec(configs=tuple(configs)), _fingerprint(cache_dir), store)
    on_ray = plan_sweep(SweepSpec(configs=tuple(configs), backend="ray"), cache_dir, store)
    assert [p.run_id for p in on_ray.runs] == [p.run_id for p in local.runs]


# -- on a local Ray instance ------------------------------------------------------------------


@needs_ray
@pytest.mark.slow
def test_matches_the_local_backend_then_resumes(ray_instance, cache_dir: Path, tmp_path: Path) -> None:
    """Real training: two good configs and one whose loss becomes NaN (lr 1e30) at train time."""
    configs = grid(strategies=["late", "intermediate-add"], **QUICK) + grid(
        strategies=["late"], lrs=[1e30], precision="fp32", limit_per_class=8
    )
    local = run_sweep(configs, load_cache(cache_dir), ResultsStore(tmp_path / "local"))
    store = ResultsStore(tmp_path / "ray")
    summary = run_sweep_ray(configs, cache_dir, store)

    assert [(o.run_id, o.status) for o in summary.outcomes] == [(o.run_id, o.status) for o in local.outcomes]
    assert [o.status for o in summary.outcomes] == ["finished", "finished", "failed"]
    assert summary.exit_code == local.exit_code == 1
    for theirs, ours in zip(local.outcomes[:2], summary.outcomes[:2]):
        mine, ref = ours.record.metrics, theirs.record.metrics
        assert mine.val_accuracy == ref.val_accuracy
        assert mine.val_loss == pytest.approx(ref.val_loss, abs=1e-6)
        train_loss = theirs.record.history[0]["train_loss"]
        assert ours.record.history[0]["train_loss"] == pytest.approx(train_loss, abs=1e-6)
        assert store.get(ours.run_id).status == "finished"

    failed = store.get(summary.outcomes[2].run_id)
    local_failed = ResultsStore(tmp_path / "local").get(local.outcomes[2].run_id)
    assert failed.error == local_failed.error and "loss became non-finite" in failed.error
    assert set(failed.to_json()) == set(local_failed.to_json())  # same record format as a local failure
    assert "RunFailedError" in failed.traceback
    assert failed.dataset == local_failed.dataset and failed.env["torch_version"] == torch.__version__

    assert sorted(store.load_runs()["status"]) == ["failed", "finished", "finished"]
    from fusioncli.train.checkpoint import load_checkpoint

    model, info = load_checkpoint(store.best_checkpoint_path)
    assert info.run_id == summary.best.run_id == local.best.run_id
    assert isinstance(model, torch.nn.Module)

    again = run_sweep_ray(configs, cache_dir, store)
    assert [o.status for o in again.outcomes] == ["skipped", "skipped", "failed"]  # failed runs are retried
    assert ray_instance.is_initialized()  # an existing connection is left open


def _crash_on(strategy: str):
    def train(cfg, data, *, on_epoch=None):
        import os

        from fusioncli.train.loop import train_run

        if cfg.strategy == strategy:
            os._exit(3)  # the worker process dies mid-run, as with a segfault or the OOM killer
        return train_run(cfg, data, on_epoch=on_epoch)

    return train


@needs_ray
@pytest.mark.slow
def test_a_dead_worker_gives_a_failed_record(
    ray_instance, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ray_backend, "TASK_MAX_RETRIES", 0)
    store = ResultsStore(tmp_path)
    configs = grid(strategies=["late", "intermediate-add"], **QUICK)
    summary = run_sweep_ray(configs, cache_dir, store, train_fn=_crash_on("late"))
    assert [o.status for o in summary.outcomes] == ["failed", "finished"]
    assert summary.exit_code == 1
    record = store.get(summary.outcomes[0].run_id)
    assert record.status == "failed" and record.error.startswith("WorkerCrashedError: The worker died")
    assert record.env is None  # built on the driver: the worker's machine is unknown
    assert record.fingerprint == _fingerprint(cache_dir)
    assert record.run_id == run_id(configs[0], _fingerprint(cache_dir))


def _sleep_on(strategy: str, seconds: float):
    def train(cfg, data, *, on_epoch=None):
        import time

        from fusioncli.train.loop import train_run

        if cfg.strategy == strategy:
            time.sleep(seconds)
        return train_run(cfg, data, on_epoch=on_epoch)

    return train


@needs_ray
@pytest.mark.slow
def test_ctrl_c_cancels_outstanding_tasks(ray_instance, cache_dir: Path, tmp_path: Path) -> None:
    def interrupt(outcome) -> None:
        raise KeyboardInterrupt

    store = ResultsStore(tmp_path)
    started = time.perf_counter()
    summary = run_sweep_ray(
        grid(strategies=["late", "intermediate-add"], **QUICK),
        cache_dir,
        store,
        train_fn=_sleep_on("intermediate-add", 300),
        on_run_end=interrupt,
    )
    assert time.perf_counter() - started < 120  # did not wait for the sleeping run
    assert summary.interrupted and summary.exit_code == 130
    assert [o.status for o in summary.outcomes] == ["finished"] and summary.not_run == 1
    assert [r.config["strategy"] for r in store.records()] == ["late"]


@needs_ray
@pytest.mark.slow
def test_robustness_is_evaluated_on_the_worker(ray_instance, cache_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("fusioncli.eval.robustness")
    store = ResultsStore(tmp_path)
    summary = run_sweep_ray(
        grid(strategies=["late"], **QUICK), cache_dir, store, robustness=True, keep_best=False, keep_weights=True
    )
    assert summary.exit_code == 0, [o.error for o in summary.failed]
    robustness = store.get(summary.outcomes[0].run_id).robustness
    assert robustness["version"] == 2
    assert robustness["clean_accuracy"] == summary.outcomes[0].record.val_accuracy
    # --keep-weights: the weights came back from the worker even without a best checkpoint.
    assert store.has_weights(summary.outcomes[0].run_id) and not store.best_checkpoint_path.exists()


@needs_ray
@pytest.mark.slow
def test_stacked_groups_are_one_task_each_and_match_the_local_stacked_executor(
    ray_instance, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two lrs of late fusion stack into one group; intermediate-add is a group of its own.
    configs = grid(strategies=["late", "intermediate-add"], lrs=[1e-3, 3e-4], precision="fp32", limit_per_class=8)
    local = run_sweep(configs, load_cache(cache_dir), ResultsStore(tmp_path / "local"), executor="stacked")
    store = ResultsStore(tmp_path / "ray")
    trackers = []
    if importlib.util.find_spec("wandb") is not None:  # each run its own W&B run (offline), group or not
        from fusioncli.tracking import make_trackers

        monkeypatch.setenv("WANDB_MODE", "offline")
        monkeypatch.setenv("WANDB_DIR", str(tmp_path))
        trackers = make_trackers(wandb=True)
    summary = run_sweep_ray(
        configs, cache_dir, store, executor="stacked", robustness=True, cpus_per_run=2, trackers=trackers
    )
    if trackers:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tracking"))
        from wandb_reader import offline_runs

        logged = {r.config["fusioncli.run_id"]: r for r in offline_runs(tmp_path)}
        assert sorted(logged) == sorted(o.run_id for o in summary.outcomes) and summary.tracker_problems == []
        for outcome in summary.outcomes:
            assert logged[outcome.run_id].series("lr")[0][1] == outcome.record.history[0]["lr"]

    assert summary.exit_code == 0, [o.error for o in summary.failed]
    assert [o.run_id for o in summary.outcomes] == [o.run_id for o in local.outcomes]
    for theirs, ours in zip(local.outcomes, summary.outcomes):
        stored = store.get(ours.run_id)
        assert stored.timing["executor"] == "stacked" and stored.timing["stacked_group_size"] == 2
        assert stored.val_accuracy == theirs.record.val_accuracy
        assert stored.val_loss == pytest.approx(theirs.record.val_loss, abs=1e-5)
        assert stored.robustness["clean_accuracy"] == stored.val_accuracy  # evaluated on the worker
    assert store.best_checkpoint_path.exists()


@needs_ray
@pytest.mark.slow
def test_a_failing_stacked_group_is_rerun_one_run_at_a_time_on_the_worker(
    ray_instance, cache_dir: Path, tmp_path: Path
) -> None:
    configs = grid(strategies=["late"], lrs=[1e-3, 1e30], precision="fp32", limit_per_class=8)
    summary = run_sweep_ray(configs, cache_dir, ResultsStore(tmp_path), executor="stacked", keep_best=False)
    assert [o.status for o in summary.outcomes] == ["finished", "failed"]
    assert any("stacked group of 2 failed" in w for w in summary.warnings), summary.warnings
    assert "loss became non-finite" in summary.outcomes[1].error
    assert summary.outcomes[0].record.timing["executor"] == "loop"  # the re-run, one at a time


@needs_ray
def test_workers_load_the_drivers_plugins(ray_instance, cache_dir: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
    from plugin_sources import write_plugin

    from fusioncli.models.plugins import load_plugin_file, unload_plugins

    source = load_plugin_file(write_plugin(tmp_path))  # the driver's --plugin
    try:
        store = ResultsStore(tmp_path / "results")
        configs = grid(strategies=["tiny-plugin"], **QUICK)
        summary = run_sweep_ray(configs, cache_dir, store, keep_best=False)
        assert summary.exit_code == 0, [o.error for o in summary.failed]
        (outcome,) = summary.outcomes
        assert outcome.run_id == run_id(configs[0].resolve(), _fingerprint(cache_dir))  # the plugin's hash in it
        assert store.get(outcome.run_id).plugin == source.to_json()
    finally:
        unload_plugins()
