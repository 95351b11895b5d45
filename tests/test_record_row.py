"""The run record's flat row (moved here from tests/results/test_store.py with the code, which
left the store for fusioncli/record.py) and the record's JSON edge cases met while wiring it in."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "sweep"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "results"))
from results_fakes import record as _record  # noqa: E402
from results_fakes import NEW_COLUMNS  # noqa: E402
from results_fakes import robustness as _robustness  # noqa: E402
from sweep_fakes import stored_as  # noqa: E402

from fusioncli.config import RunConfig, run_id  # noqa: E402
from fusioncli.record import RUN_SCHEMA, DatasetInfo, Metrics, RunRecord  # noqa: E402



def test_the_row_tolerates_a_minimal_failed_record() -> None:
    row = RunRecord.from_json({"run_id": "abc", "status": "failed", "error": "x", "config": {"strategy": "late"}}).to_row()
    assert row["run_id"] == "abc" and row["strategy"] == "late"
    assert row["val_accuracy"] is None and row["epochs_completed"] == 0
    assert set(row) == set(RUN_SCHEMA.names)


def test_robustness_is_flattened() -> None:
    rob = _robustness(0.9)
    row = _record(robust=rob, modality_dropout=0.3).to_row()
    assert row["modality_dropout"] == 0.3
    assert row["robust_mean_auc"] == pytest.approx(rob["mean_auc"])
    assert row["robust_mean_relative_auc"] == pytest.approx(rob["mean_relative_auc"])
    assert row["acc_rgb_missing"] == pytest.approx(0.45) and row["acc_lidar_missing"] == pytest.approx(0.63)
    assert json.loads(row["robustness_json"]) == rob


def test_without_robustness_the_columns_are_null_and_dropout_is_zero() -> None:
    new = _record()
    # a record written before the field existed
    rec = stored_as(new, config={k: v for k, v in new.config.items() if k != "modality_dropout"})
    row = rec.to_row()
    assert row["modality_dropout"] == 0.0
    assert all(row[c] is None for c in NEW_COLUMNS[1:])
    partial = _robustness(0.8, missing=False)  # no missing-modality part
    row = _record(robust=partial).to_row()
    assert row["robust_mean_auc"] is not None and row["acc_rgb_missing"] is None


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
