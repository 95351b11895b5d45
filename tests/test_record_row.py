"""The run record's JSON edge cases: what ``from_json`` refuses and says, optional keys that
earlier versions wrote as null, constructors that leave their record alone."""

from __future__ import annotations

import pytest

from fusioncli.config import RunConfig, run_id
from fusioncli.record import DatasetInfo, Metrics, RunRecord


# -- JSON edge cases ------------------------------------------------------------------------------


def _trained(accuracy: float = 0.9) -> RunRecord:
    config = RunConfig(epochs=1, device="cpu", precision="fp32")
    return RunRecord.finished(
        config,
        run_id(config, "f" * 32),
        dataset=DatasetInfo("f" * 32, ("cubes", "spheres"), n_train=8, n_val=4),
        metrics=Metrics(val_loss=0.3, val_accuracy=accuracy, f1_macro=0.88, per_class={}),
        history=[{"epoch": 1, "val_accuracy": accuracy}],
        params={"total": 10, "trainable": 10, "encoder": 6, "fusion": 0, "head": 4},
        flops_per_sample=100,
        timing={"train_seconds": 1.5, "samples_per_s": 10.0},
        memory={"peak_host_rss_bytes": 2**20},
        env={"cpu_count": 2},
        started_at="2026-01-01T00:00:00+00:00",
        finished_at="2026-01-01T00:00:02+00:00",
    )


def _scored(record: RunRecord, robustness: dict | None) -> RunRecord:
    return record.evaluated(
        Metrics(val_loss=0.7, val_accuracy=0.5, f1_macro=0.4, confusion=[[1, 1], [1, 1]]),
        robustness,
        DatasetInfo("other-data", ("cubes", "spheres"), n_train=0, n_val=4),
        {"schema": 1, "checkpoint": "w.safetensors", "split": "all"},
    )


def test_an_evaluated_record_without_robustness_says_null_as_before() -> None:
    """Earlier versions wrote ``"robustness": null`` into evaluated records; it stays, both ways."""
    stored = _scored(_trained(), None).to_json()
    assert "robustness" in stored and stored["robustness"] is None
    assert stored["metrics"]["confusion"] == [[1, 1], [1, 1]]
    assert stored["evaluation"]["trained_metrics"]["val_accuracy"] == 0.9
    assert RunRecord.from_json(stored).to_json() == stored  # a record read back writes the same JSON
    # Scored with robustness, or given it later: the dict replaces the null.
    rob = {"version": 1, "mean_auc": 0.5}
    assert _scored(_trained(), rob).to_json()["robustness"] == rob
    later = RunRecord.from_json(stored).with_robustness(rob, seconds=1.0)
    assert later.to_json()["robustness"] == rob
    # A trained run's record never had the key: none appears.
    assert "robustness" not in _trained().to_json()


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("metrics", [0.9], "its metrics is not a JSON object"),
        ("history", {"epoch": 1}, "its history is not a JSON list"),
        ("config", None, "has no config"),
        ("run_id", 7, "its run_id is not a string"),
        ("status", "running", "status 'running' is neither 'finished' nor 'failed'"),
    ],
)
def test_from_json_says_what_is_wrong(key: str, value: object, problem: str) -> None:
    stored = {**_trained().to_json(), key: value}
    with pytest.raises(ValueError, match=problem):
        RunRecord.from_json(stored)


def test_constructors_leave_the_record_they_start_from_alone() -> None:
    record = _trained()
    before = record.to_json()
    record.with_run_id("other").with_robustness({"mean_auc": 0.5}, seconds=2.0).without_env()
    _scored(record, None)
    assert record.to_json() == before
