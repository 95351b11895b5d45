"""The local sweep runner: skip / resume, failure recording, interrupts, best checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from sweep_fakes import FINGERPRINT, FakeTrainer, fake_record, grid, tiny_data

from fusioncli.errors import RunFailedError
from fusioncli.results.store import ResultsStore
from fusioncli.sweep.plan import SweepSpec, plan_grid
from fusioncli.sweep.runner import run_sweep
from fusioncli.config import RunConfig, run_id


@pytest.fixture
def store(tmp_path: Path) -> ResultsStore:
    return ResultsStore(tmp_path / "results")


def test_runs_every_grid_point_and_stores_each(store: ResultsStore) -> None:
    trainer = FakeTrainer()
    ended = []
    summary = run_sweep(grid(), tiny_data(), store, train_fn=trainer, on_run_end=ended.append)
    assert len(trainer.calls) == 4
    assert [o.status for o in summary.outcomes] == ["finished"] * 4
    assert [o.index for o in ended] == [1, 2, 3, 4]
    assert summary.exit_code == 0 and not summary.interrupted
    runs = pd.read_parquet(store.runs_dir)
    assert sorted(runs["run_id"]) == sorted(o.run_id for o in summary.outcomes)
    for outcome in summary.outcomes:
        assert outcome.run_id == run_id(outcome.config, FINGERPRINT)
        assert store.get(outcome.run_id).status == "finished"


def test_rerun_skips_finished_runs_and_force_recomputes(store: ResultsStore) -> None:
    run_sweep(grid(), tiny_data(), store, train_fn=FakeTrainer())
    again = FakeTrainer()
    summary = run_sweep(grid(), tiny_data(), store, train_fn=again)
    assert again.calls == []
    assert [o.status for o in summary.outcomes] == ["skipped"] * 4
    assert all(o.record.status == "finished" for o in summary.outcomes)
    forced = FakeTrainer()
    summary = run_sweep(grid(), tiny_data(), store, train_fn=forced, force=True)
    assert len(forced.calls) == 4
    assert [o.status for o in summary.outcomes] == ["finished"] * 4


def test_a_bigger_grid_runs_only_the_new_points(store: ResultsStore) -> None:
    run_sweep(grid(), tiny_data(), store, train_fn=FakeTrainer())
    trainer = FakeTrainer()
    summary = run_sweep(grid(seeds=[51, 52]), tiny_data(), store, train_fn=trainer)
    assert {c.seed for c in trainer.calls} == {52}
    assert len(trainer.calls) == 4
    assert sum(o.status == "skipped" for o in summary.outcomes) == 4


def test_failed_run_is_recorded_and_the_sweep_goes_on(store: ResultsStore) -> None:
    def fail(config: RunConfig):
        if config.strategy == "intermediate-add" and config.lr == 1e-3:
            return RunFailedError("run x: loss became non-finite at epoch 1")
        if config.strategy == "late" and config.lr == 1e-4:
            return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return None

    summary = run_sweep(grid(), tiny_data(), store, train_fn=FakeTrainer(fail=fail))
    assert summary.exit_code == 1
    assert len(summary.finished) == 2 and len(summary.failed) == 2
    errors = sorted(o.error for o in summary.failed)
    assert errors[0].startswith("OutOfMemoryError: CUDA out of memory")
    assert errors[1] == "run x: loss became non-finite at epoch 1"
    for outcome in summary.failed:
        record = store.get(outcome.run_id)
        assert record.status == "failed"
        assert record.error == outcome.error
        assert "Traceback" in record.traceback
        assert record.config["strategy"] == outcome.config.strategy
        assert record.fingerprint == FINGERPRINT
        assert record.env["torch_version"] == torch.__version__
        assert len(record.history) == 1  # the epoch that finished before the failure
    runs = pd.read_parquet(store.runs_dir)
    assert (runs["status"] == "failed").sum() == 2
    assert runs.loc[runs["status"] == "failed", "val_accuracy"].isna().all()


def test_failed_runs_are_retried_on_rerun(store: ResultsStore) -> None:
    flaky = FakeTrainer(fail=lambda c: RuntimeError("boom") if c.strategy == "late" else None)
    run_sweep(grid(), tiny_data(), store, train_fn=flaky)
    fixed = FakeTrainer()
    summary = run_sweep(grid(), tiny_data(), store, train_fn=fixed)
    assert {c.strategy for c in fixed.calls} == {"late"} and len(fixed.calls) == 2
    assert summary.exit_code == 0
    assert (pd.read_parquet(store.runs_dir)["status"] == "finished").all()


def test_keyboard_interrupt_keeps_finished_runs(store: ResultsStore) -> None:
    def fail(config: RunConfig):
        return KeyboardInterrupt() if config.strategy == "intermediate-add" else None

    summary = run_sweep(grid(), tiny_data(), store, train_fn=FakeTrainer(fail=fail))
    assert summary.interrupted and summary.exit_code == 130
    assert len(summary.finished) == 2 and summary.not_run == 2
    assert len(store.records()) == 2  # nothing written for the interrupted run
    trainer = FakeTrainer()
    summary = run_sweep(grid(), tiny_data(), store, train_fn=trainer)
    assert {c.strategy for c in trainer.calls} == {"intermediate-add"}
    assert summary.exit_code == 0


def test_best_checkpoint_follows_the_best_accuracy(store: ResultsStore) -> None:
    data = tiny_data()
    summary = run_sweep(grid(strategies=["intermediate-add"]), data, store, train_fn=FakeTrainer())
    best = store.best_record()
    assert best is not None and best.config["strategy"] == "intermediate-add"
    assert best.config["lr"] == 1e-3  # fake accuracy grows with lr
    assert [o.new_best for o in summary.outcomes] == [True, False]
    assert store.best_checkpoint_path.is_file()
    info = json.loads(store.best_checkpoint_path.with_suffix(".json").read_text())
    assert info["info"]["run_id"] == best.run_id
    # late is better than intermediate-add in the fake: it takes over the checkpoint
    run_sweep(grid(strategies=["late"], lrs=[1e-4]), data, store, train_fn=FakeTrainer())
    assert store.best_record().config["strategy"] == "late"
    # a worse run does not
    run_sweep(grid(strategies=["intermediate-multiply"]), data, store, train_fn=FakeTrainer())
    assert store.best_record().config["strategy"] == "late"


def test_best_ties_are_broken_by_lower_val_loss(store: ResultsStore) -> None:
    losses = {1e-3: 0.30, 1e-4: 0.20}

    def train(config, data, *, on_epoch=None):
        record = fake_record(config, data.fingerprint, accuracy=0.9, val_loss=losses[config.lr])
        return SimpleNamespace(record=record, model=torch.nn.Linear(2, 2))

    run_sweep(grid(strategies=["late"]), tiny_data(), store, train_fn=train)
    assert store.best_record().config["lr"] == 1e-4


def test_no_best_checkpoint_when_disabled(store: ResultsStore) -> None:
    run_sweep(grid(), tiny_data(), store, train_fn=FakeTrainer(), keep_best=False)
    assert not store.best_checkpoint_path.exists()


def test_callbacks_see_every_epoch(store: ResultsStore) -> None:
    seen = []
    starts = []
    run_sweep(
        grid(epochs=3, strategies=["late"], lrs=[1e-3]),
        tiny_data(),
        store,
        train_fn=FakeTrainer(),
        on_run_start=lambda i, n, rid, cfg: starts.append((i, n, rid)),
        on_epoch=lambda cfg, row: seen.append(row["epoch"]),
    )
    assert seen == [1, 2, 3]
    assert starts[0][:2] == (1, 1)


def test_duplicate_grid_points_run_once(store: ResultsStore) -> None:
    configs = grid(strategies=["late"], lrs=[1e-3])
    trainer = FakeTrainer()
    summary = run_sweep(
        configs + [RunConfig(strategy="late", lr=1e-3, epochs=1, scheduler="cosine", device="auto")],
        tiny_data(),
        store,
        train_fn=trainer,
    )
    assert len(trainer.calls) == 1 and summary.total == 1


def test_plan_sweep_reports_stored_status(store: ResultsStore) -> None:
    run_sweep(
        grid(strategies=["late"]),
        tiny_data(),
        store,
        train_fn=FakeTrainer(fail=lambda c: RuntimeError("x") if c.lr == 1e-4 else None),
    )
    plan = plan_grid(SweepSpec(configs=tuple(grid())), FINGERPRINT, store)
    assert [p.stored_status for p in plan.runs] == ["finished", "failed", None, None]
    assert [p.action for p in plan.runs] == ["skip", "train", "train", "train"]


class RecordingTracker:
    """A tracker (fusioncli.tracking protocol) that records what each of its runs is told."""

    name = "recording"
    destination = "recording"
    timeout = 5.0
    on_problem = None

    def __init__(self, fail_on: str | None = None) -> None:
        self.events: list[tuple] = []
        self.fail_on = fail_on

    def _log(self, *event):
        if event[0] == self.fail_on:
            raise ConnectionError("tracker offline")
        self.events.append(event)

    def probe(self, *, create):
        pass

    def open(self, info):
        self._log("start", info.run_id, info.config["strategy"])
        tracker = self

        class Run:
            id = f"rec-{info.run_id}"

            def log_epoch(self, step, metrics):
                tracker._log("epoch", step)

            def finish(self, record, *, step, tags, artifacts):
                tracker._log("finish", record["status"])  # trackers get the record's JSON form

        return Run()


def test_trackers_get_start_epochs_finish(store: ResultsStore) -> None:
    tracker = RecordingTracker()
    summary = run_sweep(
        grid(strategies=["late"], lrs=[1e-3], epochs=2),
        tiny_data(),
        store,
        train_fn=FakeTrainer(),
        trackers=[tracker],
    )
    rid = summary.outcomes[0].run_id
    assert tracker.events == [("start", rid, "late"), ("epoch", 1), ("epoch", 2), ("finish", "finished")]
    assert summary.outcomes[0].tracker_runs == {"recording": f"rec-{rid}"}


def test_tracker_errors_are_problems_not_failures(store: ResultsStore) -> None:
    summary = run_sweep(
        grid(strategies=["late"], lrs=[1e-3]),
        tiny_data(),
        store,
        train_fn=FakeTrainer(),
        trackers=[RecordingTracker("epoch")],
    )
    rid = summary.outcomes[0].run_id
    assert summary.exit_code == 3  # stored, but the tracker missed some
    assert summary.tracker_problems == [
        f"recording: run {rid} (late lr=1e-3 cosine seed=51): epoch 1 failed: ConnectionError: tracker offline"
    ]
    assert store.is_finished(rid)


@pytest.mark.slow
def test_real_training_integration(prepared, tmp_path: Path) -> None:
    """The real train_run, 1 epoch, on the tiny prepared fixture; the best checkpoint loads."""
    from fusioncli.train.checkpoint import load_checkpoint

    store = ResultsStore(tmp_path / "results")
    configs = grid(strategies=["late", "intermediate-add"], lrs=[1e-3], precision="fp32", limit_per_class=16)
    summary = run_sweep(configs, prepared, store)
    assert summary.exit_code == 0, [o.error for o in summary.failed]
    for outcome in summary.outcomes:
        record = store.get(outcome.run_id)
        assert record.run_id == run_id(outcome.config, prepared.fingerprint)
        assert record.dataset.n_train == 32 and record.dataset.n_val == 24
        assert 0.0 <= record.val_accuracy <= 1.0
    model, info = load_checkpoint(store.best_checkpoint_path)
    assert info.run_id == store.best_record().run_id
    assert isinstance(model, torch.nn.Module)
    again = run_sweep(configs, prepared, store)
    assert [o.status for o in again.outcomes] == ["skipped", "skipped"]


def test_failure_while_describing_a_failure_is_still_recorded(
    store: ResultsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args, **kwargs):
        raise torch.OutOfMemoryError("again")

    monkeypatch.setattr("fusioncli.sweep.recorder.failed_record", broken)
    summary = run_sweep(
        grid(strategies=["late"], lrs=[1e-3]),
        tiny_data(),
        store,
        train_fn=FakeTrainer(fail=lambda c: RuntimeError("first")),
    )
    record = store.get(summary.outcomes[0].run_id)
    assert record.status == "failed" and record.error == "RuntimeError: first"
    assert record.record_error == "OutOfMemoryError: again"
    assert len(store.load_runs()) == 1


def test_unwritable_store_is_a_run_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("a file where the store folder should be")
    with pytest.raises(RunFailedError, match="cannot write run"):
        run_sweep(grid(strategies=["late"], lrs=[1e-3]), tiny_data(), ResultsStore(blocker), train_fn=FakeTrainer())


# -- the pieces every backend shares ---------------------------------------------------------


def test_the_plan_applies_the_backend_rule(store: ResultsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from fusioncli import machine

    monkeypatch.setattr(machine, "cuda_available", lambda: False)  # a driver without CUDA
    configs = grid(strategies=["late"], lrs=[1e-3], device="auto") + grid(strategies=["late"], lrs=[1e-3], device="cpu")
    local = plan_grid(SweepSpec(configs=tuple(configs)), FINGERPRINT, store)
    assert len(local.runs) == 1  # duplicates are found after resolving ("auto" is the CPU here)
    (run,) = local.runs
    assert run.config == configs[0].resolve() and run.run_id == run_id(run.config, FINGERPRINT)  # this machine
    gpu = SweepSpec(configs=tuple(configs[:1]), backend="ray", gpus_per_run=0.5)
    (remote,) = plan_grid(gpu, FINGERPRINT, store).runs
    assert (remote.config.device, remote.config.precision) == ("cuda:0", "bf16")  # Ray's rule: GPU share
    assert remote.run_id == run_id(remote.config, FINGERPRINT) != run.run_id


def _fake_robustness_module(monkeypatch: pytest.MonkeyPatch, calls: list, fail: bool = False) -> None:
    """Stand-in for fusioncli.eval.robustness (the fake trainer's model is no fusion model)."""
    import sys
    import types

    module = types.ModuleType("fusioncli.eval.robustness")

    def add_robustness(result, data, *, seed=0):
        if fail:
            raise ValueError("no validation samples")
        calls.append((result.record.run_id, len(data)))
        return result.record.with_robustness({"version": 1, "mean_auc": 0.5}, seconds=0.0)

    module.add_robustness = add_robustness
    monkeypatch.setitem(sys.modules, "fusioncli.eval.robustness", module)


def test_robustness_is_added_to_each_finished_record(store: ResultsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    _fake_robustness_module(monkeypatch, calls)
    data = tiny_data()
    summary = run_sweep(grid(strategies=["late"]), data, store, train_fn=FakeTrainer(), robustness=True)
    assert summary.exit_code == 0
    assert sorted(c[0] for c in calls) == sorted(o.run_id for o in summary.outcomes)
    assert all(n == len(data) for _, n in calls)  # the full data: add_robustness applies the limit
    for outcome in summary.outcomes:
        assert store.get(outcome.run_id).robustness == {"version": 1, "mean_auc": 0.5}
    calls.clear()
    run_sweep(grid(strategies=["late"]), data, ResultsStore(store.root / "plain"), train_fn=FakeTrainer())
    assert calls == []  # only when asked for


def test_failing_robustness_fails_the_run(store: ResultsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_robustness_module(monkeypatch, [], fail=True)
    configs = grid(strategies=["late"], lrs=[1e-3])
    summary = run_sweep(configs, tiny_data(), store, train_fn=FakeTrainer(), robustness=True)
    assert summary.exit_code == 1
    record = store.get(summary.outcomes[0].run_id)
    assert record.error == "robustness evaluation failed: ValueError: no validation samples"
    assert len(record.history) == 1  # training itself finished


def test_recorder_builds_the_model_only_for_a_new_best(store: ResultsStore) -> None:
    from fusioncli.sweep.recorder import OutcomeRecorder

    built = []

    def model():
        built.append(1)
        return torch.nn.Linear(2, 2)

    configs = [c.resolve() for c in grid(strategies=["late"])]  # lr 1e-3 beats 1e-4 in the fake
    told = []
    recorder = OutcomeRecorder(store, 2, on_run_end=told.append)
    outcomes = []
    for index, cfg in enumerate(configs, start=1):
        rid = run_id(cfg, FINGERPRINT)
        assert recorder.skipped(index, rid, cfg) is None
        outcome = recorder.begin(index, rid, cfg).finished(fake_record(cfg), model)
        assert outcome.status == "finished" and store.is_finished(rid)
        outcomes.append(outcome)
    for outcome in reversed(outcomes):  # e.g. Ray: in the order the runs came back
        recorder.ended(outcome)
    assert len(built) == 1 and store.best_record().config["lr"] == 1e-3
    assert recorder.skipped(1, run_id(configs[0], FINGERPRINT), configs[0]).status == "skipped"
    summary = recorder.summary(interrupted=False, started=0.0)
    assert summary.best.run_id == run_id(configs[0], FINGERPRINT)
    assert [o.index for o in told] == [2, 1]  # as they ended
    assert [o.index for o in summary.outcomes] == [1, 2]  # grid order


def test_failure_record_without_the_data_says_what_is_known() -> None:
    from fusioncli.sweep.recorder import failure_record

    cfg = grid(strategies=["late"], lrs=[1e-3])[0].resolve()
    record = failure_record(
        cfg,
        "abc",
        ("WorkerCrashedError: died", "remote traceback"),
        dataset={"fingerprint": FINGERPRINT, "class_names": ["cubes", "spheres"]},
        started_at="2024-01-01T00:00:00+00:00",
    )
    assert record.status == "failed" and record.run_id == "abc"
    assert record.error == "WorkerCrashedError: died" and record.traceback == "remote traceback"
    assert record.dataset.to_json() == {
        "fingerprint": FINGERPRINT,
        "n_train": None,
        "n_val": None,
        "class_names": ["cubes", "spheres"],
    }
    assert list(record.history) == [] and record.config == cfg.to_dict()
    assert set(record.to_json()) >= {"metrics", "params", "timing", "memory", "env", "started_at", "finished_at"}


def test_sweep_from_cache_picks_the_backend(cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fusioncli.errors import BadInputError
    from fusioncli.sweep.dispatch import sweep_from_cache

    seen = {}

    def fake_ray(plan, store, **kwargs):
        seen.update(plan=plan, root=store.root, **kwargs)
        return "ray summary"

    monkeypatch.setattr("fusioncli.sweep.ray_backend.run_plan_ray", fake_ray)
    configs = grid(device="auto", precision="fp32")
    result = sweep_from_cache(configs, cache_dir, tmp_path / "results", backend="ray", gpus_per_run=0.5, keep_best=False)
    assert result == "ray summary"
    plan = seen.pop("plan")
    assert seen == {"root": tmp_path / "results", "keep_best": False}
    assert plan.spec.backend == "ray" and plan.spec.gpu_share == 0.5 and plan.cache_dir == cache_dir.absolute()
    assert plan.device == "cuda:0" and len(plan.runs) == len(configs)  # planned by Ray's rule (a GPU share)
    with pytest.raises(BadInputError, match="--backend must be one of local, ray"):
        sweep_from_cache(grid(), cache_dir, tmp_path / "results", backend="slurm")


def test_robustness_sweep_retrains_finished_runs_stored_without_it(
    store: ResultsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list = []
    _fake_robustness_module(monkeypatch, calls)
    configs = grid(strategies=["late"], lrs=[1e-3])
    data = tiny_data()
    first = run_sweep(configs, data, store, train_fn=FakeTrainer())
    assert [o.status for o in first.outcomes] == ["finished"]
    assert store.get(first.outcomes[0].run_id).robustness is None

    # asked for robustness: the stored run lacks it, so it is trained again (not skipped)
    second = run_sweep(configs, data, store, train_fn=FakeTrainer(), robustness=True)
    assert [o.status for o in second.outcomes] == ["finished"]
    assert store.get(second.outcomes[0].run_id).robustness == {"version": 1, "mean_auc": 0.5}

    # now it has robustness: skipped, with or without the flag
    assert [o.status for o in run_sweep(configs, data, store, train_fn=FakeTrainer(), robustness=True).outcomes] == [
        "skipped"
    ]
    assert [o.status for o in run_sweep(configs, data, store, train_fn=FakeTrainer()).outcomes] == ["skipped"]


def test_stacked_executor_stores_the_same_runs_as_the_loop(prepared, tmp_path: Path) -> None:
    """--executor stacked: same run ids and (fp32, within float tolerance) the same metrics."""
    configs = grid(
        strategies=["late"], lrs=[1e-3, 3e-4], schedulers=["cosine", "constant"], precision="fp32", limit_per_class=8,
        epochs=2,
    )  # fmt: skip
    loop_store, stacked_store = ResultsStore(tmp_path / "loop"), ResultsStore(tmp_path / "stacked")
    epochs_seen: list = []
    looped = run_sweep(configs, prepared, loop_store, executor="loop")
    stacked = run_sweep(
        configs, prepared, stacked_store, executor="stacked", max_group=3,
        on_epoch=lambda cfg, row: epochs_seen.append((cfg.lr, cfg.scheduler, row["epoch"])),
    )  # fmt: skip
    assert looped.exit_code == stacked.exit_code == 0
    assert [o.run_id for o in stacked.outcomes] == [o.run_id for o in looped.outcomes]  # grid order kept
    assert len(epochs_seen) == 2 * len(configs)
    for outcome in looped.outcomes:
        a, b = loop_store.get(outcome.run_id), stacked_store.get(outcome.run_id)
        assert b.timing["executor"] == "stacked"
        assert b.val_accuracy == a.val_accuracy
        assert b.val_loss == pytest.approx(a.val_loss, rel=1e-4)
        assert [r["lr"] for r in b.history] == [r["lr"] for r in a.history]
    assert stacked_store.best_record().run_id == loop_store.best_record().run_id
    # a stored run is skipped whichever executor stored it
    assert {o.status for o in run_sweep(configs, prepared, stacked_store, executor="loop").outcomes} == {"skipped"}


def test_a_failing_stacked_group_is_rerun_one_at_a_time(prepared, tmp_path: Path) -> None:
    """One member's loss turns NaN: the group fails, each run is retried alone and recorded."""
    store = ResultsStore(tmp_path / "results")
    configs = grid(strategies=["late"], lrs=[1e-3, 1e30], precision="fp32", limit_per_class=4)
    summary = run_sweep(configs, prepared, store, executor="stacked")
    assert summary.exit_code == 1
    status = {o.config.lr: o.status for o in summary.outcomes}
    assert status == {1e-3: "finished", 1e30: "failed"}
    assert "non-finite" in store.get(summary.failed[0].run_id).error
    assert any("stacked group of 2 failed" in w for w in summary.warnings)
    assert store.get(summary.finished[0].run_id).timing.get("executor") != "stacked"  # retrained by the loop


def test_bad_max_group_is_a_usage_error(store: ResultsStore) -> None:
    from fusioncli.errors import BadInputError

    with pytest.raises(BadInputError, match="--max-group"):
        run_sweep(grid(), tiny_data(), store, train_fn=FakeTrainer(), max_group=0)


def test_keep_weights_stores_every_finished_run_and_retrains_runs_without(store: ResultsStore) -> None:
    data = tiny_data()
    run_sweep(grid(), data, store, train_fn=FakeTrainer())  # without --keep-weights
    assert not store.weights_dir.exists()
    trainer = FakeTrainer()
    summary = run_sweep(grid(), data, store, train_fn=trainer, keep_weights=True)
    # The finished runs had no weights: they were trained again, and now have them.
    assert len(trainer.calls) == len(grid()) and not summary.skipped
    for outcome in summary.finished:
        assert store.has_weights(outcome.run_id)
        info = json.loads(store.weights_path(outcome.run_id).with_suffix(".json").read_text())
        assert info["info"]["run_id"] == outcome.run_id and info["info"]["status"] == "finished"
    again = FakeTrainer()
    summary = run_sweep(grid(), data, store, train_fn=again, keep_weights=True)
    assert not again.calls and len(summary.skipped) == len(grid())


def test_a_run_whose_weights_cannot_be_kept_is_still_recorded(store: ResultsStore) -> None:
    store.root.mkdir(parents=True)
    store.weights_dir.write_text("a file where the weights folder should be")
    summary = run_sweep(grid(), tiny_data(), store, train_fn=FakeTrainer(), keep_weights=True)
    assert len(summary.finished) == len(grid()) and summary.exit_code == 0
    assert all(store.is_finished(o.run_id) for o in summary.finished)
    assert any("weights not kept" in w for w in summary.warnings)


def test_compile_is_once_per_architecture_across_the_grids_groups(
    prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--compile: every stacked group of one architecture reuses the first group's compiled forward."""
    import fusioncli.train.stacked as stacked

    compiled = []

    def fake_compile(fn, **kwargs):  # counts, and leaves the function as it is (CPU compile is slow)
        compiled.append(kwargs)
        return fn

    monkeypatch.setattr(stacked, "_COMPILED", {})
    monkeypatch.setattr(stacked.torch, "compile", fake_compile)
    configs = grid(
        strategies=["late", "early"], lrs=[1e-3, 3e-4], schedulers=["cosine", "constant"], precision="fp32",
        limit_per_class=4, epochs=1,
    )  # fmt: skip
    store = ResultsStore(tmp_path / "results")
    summary = run_sweep(configs, prepared, store, executor="stacked", max_group=2, compile=True)
    assert summary.exit_code == 0 and len(summary.finished) == 8
    # 4 groups of 2 (two per strategy), 2 architectures: compiled twice, statically shaped
    assert compiled == [{"dynamic": False}, {"dynamic": False}]
    assert {len(store.get(o.run_id).timing["stacked_run_ids"]) for o in summary.finished} == {2}
    assert all(store.get(o.run_id).timing["compile"].startswith("compiled") for o in summary.finished)
    # without --compile nothing is compiled
    plain = ResultsStore(tmp_path / "plain")
    summary = run_sweep(configs, prepared, plain, executor="stacked", max_group=2)
    assert len(compiled) == 2
    assert {plain.get(o.run_id).timing["compile"] for o in summary.finished} == {"off"}


# -- a store that survives damage; one trainer per run (issue 12 part 6) ---------------------------


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_damaged_run_is_trained_again_and_its_files_replaced(store: ResultsStore) -> None:
    first = run_sweep(grid(), tiny_data(), store, train_fn=FakeTrainer())
    broken = first.outcomes[1].run_id
    _cut(store.record_path(broken))
    _cut(store.row_path(broken))
    assert [d.run_id for d in store.read_runs().damaged] == [broken]
    trainer = FakeTrainer()
    summary = run_sweep(grid(), tiny_data(), store, train_fn=trainer)
    assert [run_id(c, FINGERPRINT) for c in trainer.calls] == [broken]
    assert [o.status for o in summary.outcomes] == ["skipped", "finished", "skipped", "skipped"]
    table = store.read_runs()
    assert table.damaged == () and table.rebuilt == () and len(table.frame) == 4
    assert len(pd.read_parquet(store.runs_dir)) == 4  # plain pandas reads the store again


def test_a_damaged_row_of_a_finished_run_is_rewritten_not_retrained(store: ResultsStore) -> None:
    first = run_sweep(grid(), tiny_data(), store, train_fn=FakeTrainer())
    _cut(store.row_path(first.outcomes[0].run_id))
    trainer = FakeTrainer()
    summary = run_sweep(grid(), tiny_data(), store, train_fn=trainer)
    assert trainer.calls == [] and [o.status for o in summary.outcomes] == ["skipped"] * 4
    assert len(pd.read_parquet(store.runs_dir)) == 4


def test_the_best_is_kept_per_dataset_and_the_summary_shows_the_sweeps(store: ResultsStore) -> None:
    easy, hard = tiny_data(fingerprint="easy-data"), tiny_data(fingerprint="hard-data")
    run_sweep(grid(strategies=["late"]), easy, store, train_fn=FakeTrainer())  # ~0.91 in the fake
    summary = run_sweep(grid(strategies=["intermediate-multiply"]), hard, store, train_fn=FakeTrainer())  # ~0.77
    # Before per-dataset bests the easy dataset's late run hid every run on the hard one.
    assert [o.new_best for o in summary.outcomes] == [True, False]
    assert summary.best.config["strategy"] == "intermediate-multiply"
    assert summary.best.fingerprint == "hard-data"
    assert summary.best_checkpoint == store.best_checkpoint_for("hard-data") and summary.best_checkpoint.is_file()
    assert store.best_record("easy-data").config["strategy"] == "late"
    assert store.best_record("hard-data").config["lr"] == 1e-3
    again = run_sweep(grid(strategies=["late"]), easy, store, train_fn=FakeTrainer())
    assert again.best.fingerprint == "easy-data"  # skipped runs: still this dataset's best
    assert again.best_checkpoint == store.best_checkpoint_for("easy-data")


def test_an_old_stores_best_stays_until_a_better_run_on_its_dataset(store: ResultsStore) -> None:
    from fusioncli.train.checkpoint import save_checkpoint

    old = fake_record(grid(strategies=["late"])[0], accuracy=0.95)
    # best/ as the previous version wrote it: one pair for the whole store.
    save_checkpoint(store.best_dir / "model.safetensors", torch.nn.Linear(2, 2), old)
    summary = run_sweep(grid(strategies=["intermediate-add"]), tiny_data(), store, train_fn=FakeTrainer())
    assert not any(o.new_best for o in summary.outcomes)
    assert summary.best.run_id == old.run_id and summary.best_checkpoint == store.legacy_best_path
    assert store.best_checkpoint_path == store.legacy_best_path
    # Another dataset: its own best, the old one stays for its dataset.
    other = run_sweep(grid(strategies=["intermediate-add"]), tiny_data(fingerprint="other"), store, train_fn=FakeTrainer())
    assert other.outcomes[0].new_best and store.legacy_best_path.is_file()
    assert store.best_record(FINGERPRINT).run_id == old.run_id

    def better(config, data, *, on_epoch=None):
        return SimpleNamespace(record=fake_record(config, data.fingerprint, accuracy=0.99), model=torch.nn.Linear(2, 2))

    won = run_sweep(grid(strategies=["late"], lrs=[1e-4]), tiny_data(), store, train_fn=better)
    assert won.outcomes[0].new_best and won.best.run_id == won.outcomes[0].run_id
    assert not store.legacy_best_path.exists()
    info = json.loads(store.best_checkpoint_for(FINGERPRINT).with_suffix(".json").read_text())["info"]
    assert info["run_id"] == won.outcomes[0].run_id


def test_a_damaged_best_is_replaced_by_the_next_finished_run(store: ResultsStore) -> None:
    run_sweep(grid(strategies=["late"], lrs=[1e-3]), tiny_data(), store, train_fn=FakeTrainer())
    _cut(store.best_checkpoint_for(FINGERPRINT))  # e.g. the disk filled up while copying the store
    assert store.best_record(FINGERPRINT) is None
    worse = run_sweep(grid(strategies=["intermediate-add"], lrs=[1e-4]), tiny_data(), store, train_fn=FakeTrainer())
    assert worse.outcomes[0].new_best and worse.best.config["strategy"] == "intermediate-add"
    assert all(b.usable for b in store.bests())


def _claim_files(store: ResultsStore) -> list[Path]:
    return sorted(store.records_dir.glob(".*.claim")) if store.records_dir.is_dir() else []


def test_claims_are_released_whatever_becomes_of_the_run(store: ResultsStore) -> None:
    seen = []

    def fail(config: RunConfig):
        seen.append(_claim_files(store))  # while training: exactly this run is claimed
        if config.strategy == "late" and config.lr == 1e-4:
            return RuntimeError("boom")
        return KeyboardInterrupt() if config.strategy == "intermediate-add" and config.lr == 1e-4 else None

    summary = run_sweep(grid(), tiny_data(), store, train_fn=FakeTrainer(fail=fail))
    assert summary.interrupted and len(summary.finished) == 2 and len(summary.failed) == 1
    assert [len(claims) for claims in seen] == [1, 1, 1, 1]
    assert _claim_files(store) == []


def test_a_failing_store_write_releases_the_claims(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results")
    store.runs_dir.mkdir(parents=True)
    store.runs_dir.rmdir()
    store.runs_dir.write_text("a file where the rows folder should be")
    with pytest.raises(RunFailedError, match="cannot write run"):
        run_sweep(grid(), tiny_data(), store, train_fn=FakeTrainer())
    assert _claim_files(store) == []


def _sweep_process(results: Path, markers: Path, name: str, script: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [sys.executable, "-c", script, str(results), str(markers), name],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


_HOLDER = """
import sys, time
from pathlib import Path
from sweep_fakes import FakeTrainer, grid, tiny_data
from fusioncli.results.store import ResultsStore
from fusioncli.sweep.runner import run_sweep

results, markers = Path(sys.argv[1]), Path(sys.argv[2])

class Blocking(FakeTrainer):
    def __call__(self, config, data, *, on_epoch=None):
        (markers / "started").write_text("")
        deadline = time.monotonic() + 90
        while not (markers / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return super().__call__(config, data, on_epoch=on_epoch)

summary = run_sweep(grid(strategies=["late"], lrs=[1e-3]), tiny_data(), ResultsStore(results), train_fn=Blocking())
print(" ".join(o.status for o in summary.outcomes))
"""


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"sweep process exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {path.name}")
        time.sleep(0.02)


@pytest.mark.skipif(sys.platform == "win32", reason="process tests are POSIX here")
def test_a_run_another_live_sweep_is_training_is_left_to_it(store: ResultsStore, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    holder = _sweep_process(store.root, markers, "holder", _HOLDER)
    try:
        _wait_for(markers / "started", holder)
        held = run_id(grid(strategies=["late"], lrs=[1e-3])[0].resolve(), FINGERPRINT)
        trainer = FakeTrainer()
        summary = run_sweep(grid(), tiny_data(), store, train_fn=trainer)
        assert held not in {run_id(c, FINGERPRINT) for c in trainer.calls} and len(trainer.calls) == 3
        [claimed] = summary.claimed
        assert claimed.run_id == held and claimed.status == "claimed" and claimed.record is None
        assert claimed not in summary.finished and claimed not in summary.skipped and summary.exit_code == 0
        assert any(held in w and f"pid {holder.pid}" in w and "another sweep" in w for w in summary.warnings)
        assert not store.is_finished(held)
    finally:
        (markers / "go").write_text("")
        out, errors = holder.communicate(timeout=90)
    assert holder.returncode == 0, errors
    assert out.split() == ["finished"]
    assert store.is_finished(held) and _claim_files(store) == []
    trainer = FakeTrainer()
    assert [o.status for o in run_sweep(grid(), tiny_data(), store, train_fn=trainer).outcomes] == ["skipped"] * 4
    assert trainer.calls == []


_RACER = """
import json, sys, time
from pathlib import Path
from sweep_fakes import FakeTrainer, grid, tiny_data
from fusioncli.results.store import ResultsStore
from fusioncli.sweep.runner import run_sweep

results, markers, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
data = tiny_data()
(markers / f"ready-{name}").write_text("")
deadline = time.monotonic() + 90
while len(list(markers.glob("ready-*"))) < 2 and time.monotonic() < deadline:  # start together
    time.sleep(0.005)
summary = run_sweep(grid(), data, ResultsStore(results), train_fn=FakeTrainer(sleep=0.3))
print(json.dumps({o.run_id: o.status for o in summary.outcomes}))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="process tests are POSIX here")
def test_two_sweeps_on_one_store_train_each_run_once(store: ResultsStore, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    procs = [_sweep_process(store.root, markers, name, _RACER) for name in ("a", "b")]
    results = []
    for proc in procs:
        out, errors = proc.communicate(timeout=120)
        assert proc.returncode == 0, errors
        results.append(json.loads(out))
    everyone = {run_id(c.resolve(), FINGERPRINT) for c in grid()}
    trained = [{rid for rid, status in outcome.items() if status == "finished"} for outcome in results]
    assert trained[0].isdisjoint(trained[1]), results  # no run trained by both
    assert trained[0] | trained[1] == everyone, results
    for outcome in results:
        assert set(outcome) == everyone and set(outcome.values()) <= {"finished", "claimed", "skipped"}
    assert all(store.is_finished(rid) for rid in everyone) and _claim_files(store) == []
