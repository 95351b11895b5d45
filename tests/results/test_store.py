"""The results store: atomic per-run files, a fixed table schema, crash repair."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweep"))
from sweep_fakes import FINGERPRINT, fake_record  # noqa: E402

from fusioncli.errors import BadInputError  # noqa: E402
from fusioncli.results.store import CONFIG_FIELDS, RUN_SCHEMA, ResultsStore, flatten_record, open_store  # noqa: E402
from fusioncli.config import RunConfig  # noqa: E402


def _config(**kw) -> RunConfig:
    return RunConfig(**{"epochs": 2, "device": "cpu", "precision": "fp32", **kw})


def test_write_then_read_back(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    record = fake_record(_config(), accuracy=0.9)
    store.write(record)
    assert store.get(record["run_id"]) == record
    assert store.is_finished(record["run_id"])
    assert store.records() == [record]
    assert sorted(p.name for p in store.records_dir.iterdir()) == [f"{record['run_id']}.json"]
    assert sorted(p.name for p in store.runs_dir.iterdir()) == [f"{record['run_id']}.parquet"]


def test_plain_pandas_reads_the_runs_folder(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    finished = fake_record(_config(strategy="late", limit_per_class=100), accuracy=0.75, gpu_bytes=2**30)
    failed = fake_record(_config(strategy="intermediate-add"), status="failed", error="RuntimeError: x")
    store.write(finished)
    store.write(failed)
    runs = pd.read_parquet(tmp_path / "runs").sort_values("strategy").reset_index(drop=True)
    assert list(runs.columns) == RUN_SCHEMA.names
    assert list(runs["status"]) == ["failed", "finished"]
    row = runs.iloc[1]
    assert row["val_accuracy"] == 0.75
    assert row["lr"] == 1e-4 and row["epochs"] == 2 and row["limit_per_class"] == 100
    assert row["peak_gpu_allocated_bytes"] == 2**30
    assert row["dataset_fingerprint"] == FINGERPRINT
    assert row["class_names"] == "cubes,spheres"
    assert json.loads(row["history_json"]) == finished["history"]
    assert json.loads(row["config_json"]) == finished["config"]
    assert math.isnan(runs.iloc[0]["val_accuracy"])
    assert runs.iloc[0]["error"] == "RuntimeError: x"


def test_every_row_file_has_the_same_schema(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.write(fake_record(_config(), gpu_bytes=None))
    store.write(fake_record(_config(seed=1), status="failed", error="e"))
    for path in store.runs_dir.glob("*.parquet"):
        assert pq.read_schema(path).remove_metadata() == RUN_SCHEMA


def test_load_runs_has_nullable_ints_and_all_columns(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.write(fake_record(_config()))
    runs = store.load_runs()
    assert set(CONFIG_FIELDS) <= set(runs.columns)
    assert str(runs["limit_per_class"].dtype) == "Int64" and runs["limit_per_class"].isna().all()
    assert str(runs["epochs"].dtype) == "Int64"


def test_empty_store_reads_as_an_empty_table(tmp_path: Path) -> None:
    runs = ResultsStore(tmp_path / "nothing").load_runs()
    assert runs.empty and list(runs.columns) == RUN_SCHEMA.names


def test_open_store_must_exist(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as info:
        open_store(tmp_path / "missing", must_exist=True)
    assert "fusioncli sweep" in info.value.hint


def test_rewriting_a_run_replaces_it_whole(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    failed = fake_record(_config(), status="failed", error="boom")
    store.write(failed)
    assert not store.is_finished(failed["run_id"])
    store.write(fake_record(_config(), accuracy=0.8))
    runs = store.load_runs()
    assert len(runs) == 1 and runs.loc[0, "status"] == "finished" and runs.loc[0, "val_accuracy"] == 0.8


def test_killed_between_json_and_row_is_repaired(tmp_path: Path) -> None:
    """The JSON is renamed in first; a run without its row still counts and gets its row back."""
    store = ResultsStore(tmp_path)
    record = fake_record(_config())
    store.write(record)
    store.row_path(record["run_id"]).unlink()  # as if killed right after the JSON rename
    assert store.is_finished(record["run_id"])
    assert list(store.load_runs()["run_id"]) == [record["run_id"]]
    assert store.repair() == 1
    assert list(pd.read_parquet(store.runs_dir)["run_id"]) == [record["run_id"]]
    assert store.repair() == 0


def test_repair_removes_only_stale_temp_files(tmp_path: Path) -> None:
    import os
    import time

    store = ResultsStore(tmp_path)
    store.write(fake_record(_config()))
    stale = store.runs_dir / ".x.parquet.old.tmp"
    fresh = store.runs_dir / ".y.parquet.new.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    store.repair()
    assert not stale.exists() and fresh.exists()


def test_repair_restores_a_best_folder_lost_mid_swap(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    old_best = tmp_path / ".best.old-12345"
    old_best.mkdir(parents=True)
    (old_best / "model.json").write_text("{}")
    store.repair()
    assert (store.best_dir / "model.json").exists() and not old_best.exists()


def test_nan_metrics_are_stored_as_null(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    record = fake_record(_config(), val_loss=float("nan"))
    store.write(record)
    text = store.record_path(record["run_id"]).read_text()
    assert "NaN" not in text
    assert json.loads(text)["metrics"]["val_loss"] is None


@pytest.mark.parametrize("bad", [None, "", "../x", ".hidden"])
def test_write_rejects_unusable_run_ids(tmp_path: Path, bad) -> None:
    record = fake_record(_config())
    record["run_id"] = bad
    with pytest.raises(ValueError):
        ResultsStore(tmp_path).write(record)


def test_write_rejects_unknown_status(tmp_path: Path) -> None:
    record = fake_record(_config())
    record["status"] = "running"
    with pytest.raises(ValueError, match="status"):
        ResultsStore(tmp_path).write(record)


def test_flatten_tolerates_a_minimal_failed_record() -> None:
    row = flatten_record({"run_id": "abc", "status": "failed", "error": "x", "config": {"strategy": "late"}})
    assert row["run_id"] == "abc" and row["strategy"] == "late"
    assert row["val_accuracy"] is None and row["epochs_completed"] == 0
    assert set(row) == set(RUN_SCHEMA.names)


# -- modality_dropout and robustness columns (session 2) ----------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_fakes import record as _record  # noqa: E402
from results_fakes import robustness as _robustness  # noqa: E402

_NEW_COLUMNS = (
    "modality_dropout",
    "train_per_class",
    "trained_val_accuracy",
    "accuracy_change",
    "robust_mean_auc",
    "robust_mean_relative_auc",
    "acc_rgb_missing",
    "acc_lidar_missing",
    "robustness_json",
)


def test_robustness_is_flattened() -> None:
    rob = _robustness(0.9)
    row = flatten_record(_record(robust=rob, modality_dropout=0.3))
    assert row["modality_dropout"] == 0.3
    assert row["robust_mean_auc"] == pytest.approx(rob["mean_auc"])
    assert row["robust_mean_relative_auc"] == pytest.approx(rob["mean_relative_auc"])
    assert row["acc_rgb_missing"] == pytest.approx(0.45) and row["acc_lidar_missing"] == pytest.approx(0.63)
    assert json.loads(row["robustness_json"]) == rob


def test_without_robustness_the_columns_are_null_and_dropout_is_zero() -> None:
    rec = _record()
    rec["config"].pop("modality_dropout", None)  # a record written before the field existed
    row = flatten_record(rec)
    assert row["modality_dropout"] == 0.0
    assert all(row[c] is None for c in _NEW_COLUMNS[1:])
    partial = _robustness(0.8, missing=False)  # no missing-modality part
    row = flatten_record(_record(robust=partial))
    assert row["robust_mean_auc"] is not None and row["acc_rgb_missing"] is None


def test_rows_written_by_the_old_schema_still_load(tmp_path: Path) -> None:
    """A row file from before modality_dropout / robustness existed reads with defaults and nulls."""
    import pyarrow as pa

    store = ResultsStore(tmp_path)
    old_rec = _record(seed=0, accuracy=0.8)
    old_rec["config"].pop("modality_dropout", None)
    store.write(old_rec)
    old_schema = pa.schema([f for f in RUN_SCHEMA if f.name not in _NEW_COLUMNS])
    old_row = {k: v for k, v in flatten_record(old_rec).items() if k in old_schema.names}
    pq.write_table(pa.Table.from_pylist([old_row], schema=old_schema), store.row_path(old_rec["run_id"]))
    assert "modality_dropout" not in pq.read_schema(store.row_path(old_rec["run_id"])).names
    new_rec = _record(seed=1, accuracy=0.9, modality_dropout=0.25, robust=_robustness(0.9))
    store.write(new_rec)
    runs = store.load_runs().set_index("run_id")
    assert list(runs.columns) == RUN_SCHEMA.names[1:]
    assert runs.loc[old_rec["run_id"], "modality_dropout"] == 0.0
    assert math.isnan(runs.loc[old_rec["run_id"], "robust_mean_auc"])
    assert pd.isna(runs.loc[old_rec["run_id"], "robustness_json"])
    assert runs.loc[old_rec["run_id"], "val_accuracy"] == 0.8
    assert runs.loc[new_rec["run_id"], "modality_dropout"] == 0.25
    assert runs.loc[new_rec["run_id"], "acc_lidar_missing"] == pytest.approx(0.63)


def test_modality_dropout_is_a_config_field() -> None:
    assert "modality_dropout" in CONFIG_FIELDS
    assert RUN_SCHEMA.field("modality_dropout").type == "double"
