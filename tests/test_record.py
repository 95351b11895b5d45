"""The run record: JSON round trip (records of every version), constructors, the flat row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusioncli.config import RunConfig, run_id
from fusioncli.record import FAILED, FINISHED, RUN_SCHEMA, DatasetInfo, Metrics, RunRecord

OLD_RECORDS = sorted((Path(__file__).parent / "fixtures" / "store_v0_1" / "records").glob("*.json"))


@pytest.mark.parametrize("path", OLD_RECORDS, ids=lambda p: p.stem)
def test_records_of_the_previous_version_round_trip(path: Path) -> None:
    stored = json.loads(path.read_text())
    record = RunRecord.from_json(stored)
    assert record.to_json() == stored
    assert record.run_id == path.stem and record.is_finished
    assert record.val_accuracy == stored["metrics"]["val_accuracy"]
    assert record.run_config() == RunConfig.from_dict(stored["config"])


def test_unknown_keys_of_a_later_version_survive_a_round_trip() -> None:
    stored = json.loads(OLD_RECORDS[0].read_text())
    stored["calibration"] = {"ece": 0.03}
    assert RunRecord.from_json(stored).to_json() == stored


@pytest.mark.parametrize(
    "bad",
    [[], {"status": "running", "config": {}}, {"status": FINISHED}, {"status": FINISHED, "config": "late"}],
)
def test_what_is_not_a_record_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        RunRecord.from_json(bad)  # type: ignore[arg-type]


def _finished() -> RunRecord:
    config = RunConfig(epochs=1, device="cpu", precision="fp32")
    return RunRecord.finished(
        config,
        run_id(config, "f" * 32),
        dataset=DatasetInfo("f" * 32, ("cubes", "spheres"), n_train=8, n_val=4),
        metrics=Metrics(val_loss=0.5, val_accuracy=0.75, f1_macro=0.7, per_class={}),
        history=[{"epoch": 1, "val_accuracy": 0.75}],
        params={"total": 10, "trainable": 10, "encoder": 6, "fusion": 0, "head": 4},
        flops_per_sample=100,
        timing={"train_seconds": 1.5, "samples_per_s": float("nan")},
        memory={"peak_host_rss_bytes": 2**20},
        env={"cpu_count": 2},
        started_at="2026-01-01T00:00:00+00:00",
        finished_at="2026-01-01T00:00:02+00:00",
    )


def test_constructors_return_new_records() -> None:
    record = _finished()
    robust = record.with_robustness({"mean_auc": 0.6}, seconds=2.0)
    assert record.robustness is None
    assert "robustness_seconds" not in (record.timing or {})
    assert robust.robustness == {"mean_auc": 0.6} and robust.timing["robustness_seconds"] == 2.0
    other = DatasetInfo("e" * 32, ("cubes", "spheres"), n_train=0, n_val=10)
    scored = robust.evaluated(Metrics(0.9, 0.5, 0.4), None, other, {"split": "all"})
    assert scored.val_accuracy == 0.5 and scored.trained_val_accuracy == 0.75
    assert scored.evaluation["trained_dataset"]["fingerprint"] == "f" * 32
    assert record.val_accuracy == 0.75  # unchanged
    row = scored.to_row()
    assert row["accuracy_change"] == pytest.approx(0.5 - 0.75) and row["dataset_fingerprint"] == "e" * 32


def test_json_is_strict_and_the_row_matches_the_schema() -> None:
    record = _finished()
    text = json.dumps(record.to_json(), allow_nan=False)  # NaN became null
    assert RunRecord.from_json(json.loads(text)).timing["samples_per_s"] is None
    row = record.to_row()
    assert list(row) == RUN_SCHEMA.names
    assert row["val_accuracy"] == 0.75 and row["epochs_completed"] == 1 and row["modality_dropout"] == 0.0


def test_failed_record() -> None:
    config = RunConfig(epochs=1, device="cpu", precision="fp32").to_dict()
    record = RunRecord.failed(
        config, "abc", "RunFailedError: boom", started_at=None, finished_at="t", traceback="Traceback ..."
    )
    assert record.status == FAILED and not record.is_finished and record.val_accuracy is None
    stored = record.to_json()
    assert stored["traceback"] == "Traceback ..." and "robustness" not in stored
    row = record.to_row()
    assert row["status"] == FAILED and row["val_accuracy"] is None
