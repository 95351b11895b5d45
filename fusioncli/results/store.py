"""The results store: one record per run, written atomically, readable with plain pandas.

Layout of a results folder (default ``.fusioncli/results``)::

    records/<run_id>.json     the full run record (config, metrics, history, env, ...)
    runs/<run_id>.parquet     the same run as one flat row (fixed schema, see RUN_SCHEMA)
    best/model.safetensors    weights of the best finished run (+ model.json: its info)
    weights/<run_id>.safetensors  every finished run's weights (+ .json), with `sweep --keep-weights`

``pd.read_parquet("<results>/runs")`` reads every run as a table. Each file is written to a
dot-prefixed temp file and renamed into place, and pandas/pyarrow skip dot-files, so a writer
killed mid-write never leaves a record that counts. The JSON is written first and the Parquet
row second; the Parquet row is the commit marker for the table, and :meth:`ResultsStore.repair`
recreates a row whose writer died between the two renames. Finished records are only ever
replaced whole (``--force``), never edited in place.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from fusioncli.atomic import atomic_path, atomic_write_json
from fusioncli.errors import BadInputError, RunFailedError

SCHEMA_VERSION = 1
FINISHED = "finished"
FAILED = "failed"

# Config fields of the interface, in display order; they are the group-by / filter keys.
CONFIG_FIELDS = (
    "strategy",
    "backbone",
    "lr",
    "scheduler",
    "epochs",
    "batch_size",
    "seed",
    "device",
    "precision",
    "limit_per_class",
    "train_per_class",
    "modality_dropout",
)

# Config fields holding numbers (filters compare them as numbers, tables right-align them).
NUMERIC_CONFIG_FIELDS = (
    "lr", "epochs", "batch_size", "seed", "limit_per_class", "train_per_class", "modality_dropout"
)  # fmt: skip
# Data limits: null means no limit, which reports show (and filters accept) as "all".
DATA_LIMIT_FIELDS = ("limit_per_class", "train_per_class")

# What a config field reads as in rows and records written before the field existed.
CONFIG_DEFAULTS = {"modality_dropout": 0.0}

# Columns flattened from record["robustness"] (null for runs evaluated without it).
ROBUSTNESS_COLUMNS = ("robust_mean_auc", "robust_mean_relative_auc", "acc_rgb_missing", "acc_lidar_missing")

_STR, _F64, _I64, _BOOL = pa.string(), pa.float64(), pa.int64(), pa.bool_()

# One explicit schema for every row file, so files written with nulls in different columns
# still read back as one table with stable types.
RUN_SCHEMA = pa.schema(
    [
        ("run_id", _STR),
        ("status", _STR),
        ("error", _STR),
        ("strategy", _STR),
        ("backbone", _STR),
        ("lr", _F64),
        ("scheduler", _STR),
        ("epochs", _I64),
        ("batch_size", _I64),
        ("seed", _I64),
        ("device", _STR),
        ("precision", _STR),
        ("limit_per_class", _I64),
        ("train_per_class", _I64),
        ("modality_dropout", _F64),
        ("dataset_fingerprint", _STR),
        ("n_train", _I64),
        ("n_val", _I64),
        ("class_names", _STR),
        ("val_accuracy", _F64),
        ("f1_macro", _F64),
        ("val_loss", _F64),
        ("robust_mean_auc", _F64),
        ("robust_mean_relative_auc", _F64),
        ("acc_rgb_missing", _F64),
        ("acc_lidar_missing", _F64),
        ("trained_val_accuracy", _F64),
        ("accuracy_change", _F64),
        ("params_total", _I64),
        ("params_trainable", _I64),
        ("params_encoder", _I64),
        ("params_fusion", _I64),
        ("params_head", _I64),
        ("flops_per_sample", _I64),
        ("train_seconds", _F64),
        ("samples_per_s", _F64),
        ("samples_per_s_note", _STR),
        ("epochs_completed", _I64),
        ("peak_gpu_allocated_bytes", _I64),
        ("peak_gpu_reserved_bytes", _I64),
        ("peak_host_rss_bytes", _I64),
        ("fusioncli_version", _STR),
        ("torch_version", _STR),
        ("cuda_version", _STR),
        ("cudnn_version", _STR),
        ("device_name", _STR),
        ("cpu_count", _I64),
        ("python_version", _STR),
        ("platform", _STR),
        ("git_commit", _STR),
        ("git_dirty", _BOOL),
        ("bf16", _BOOL),
        ("started_at", _STR),
        ("finished_at", _STR),
        ("config_json", _STR),
        ("per_class_json", _STR),
        ("history_json", _STR),
        ("robustness_json", _STR),
    ]
)


def _get(mapping: Any, *keys: str) -> Any:
    """``mapping[k1][k2]...`` or None when any level is missing or null."""
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _cast(value: Any, typ: pa.DataType) -> Any:
    """Coerce a record value to the column type; None (and NaN for ints) stays null."""
    if value is None:
        return None
    if typ == _STR:
        return value if isinstance(value, str) else str(value)
    if typ == _F64:
        return float(value)
    if typ == _I64:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return int(value)
    if typ == _BOOL:
        return bool(value)
    return value


def flatten_record(record: dict[str, Any]) -> dict[str, Any]:
    """The run record as one flat row matching :data:`RUN_SCHEMA` (missing parts are null)."""
    config = record.get("config") or {}
    env = record.get("env") or {}
    history = record.get("history") or []
    class_names = _get(record, "dataset", "class_names")
    robustness = record.get("robustness")
    accuracy = _get(record, "metrics", "val_accuracy")
    trained_accuracy = _get(record, "evaluation", "trained_metrics", "val_accuracy")
    row: dict[str, Any] = {
        "run_id": record.get("run_id"),
        "status": record.get("status"),
        "error": record.get("error"),
        **{name: config.get(name, CONFIG_DEFAULTS.get(name)) for name in CONFIG_FIELDS},
        "dataset_fingerprint": _get(record, "dataset", "fingerprint"),
        "n_train": _get(record, "dataset", "n_train"),
        "n_val": _get(record, "dataset", "n_val"),
        "class_names": ",".join(class_names) if class_names else None,
        "val_accuracy": accuracy,
        "f1_macro": _get(record, "metrics", "f1_macro"),
        "val_loss": _get(record, "metrics", "val_loss"),
        "robust_mean_auc": _get(robustness, "mean_auc"),
        "robust_mean_relative_auc": _get(robustness, "mean_relative_auc"),
        "acc_rgb_missing": _get(robustness, "missing", "rgb_missing", "accuracy"),
        "acc_lidar_missing": _get(robustness, "missing", "lidar_missing", "accuracy"),
        # Runs evaluated on another dataset (fusioncli evaluate --runs --into): the accuracy the
        # run had on its own validation split, and the change from it to the accuracy here.
        "trained_val_accuracy": trained_accuracy,
        "accuracy_change": (
            accuracy - trained_accuracy if accuracy is not None and trained_accuracy is not None else None
        ),
        **{f"params_{k}": _get(record, "params", k) for k in ("total", "trainable", "encoder", "fusion", "head")},
        "flops_per_sample": record.get("flops_per_sample"),
        "train_seconds": _get(record, "timing", "train_seconds"),
        "samples_per_s": _get(record, "timing", "samples_per_s"),
        "samples_per_s_note": _get(record, "timing", "samples_per_s_note"),
        "epochs_completed": len(history),
        "peak_gpu_allocated_bytes": _get(record, "memory", "peak_gpu_allocated_bytes"),
        "peak_gpu_reserved_bytes": _get(record, "memory", "peak_gpu_reserved_bytes"),
        "peak_host_rss_bytes": _get(record, "memory", "peak_host_rss_bytes"),
        **{
            k: env.get(k)
            for k in (
                "fusioncli_version",
                "torch_version",
                "cuda_version",
                "cudnn_version",
                "device_name",
                "cpu_count",
                "python_version",
                "platform",
                "git_commit",
                "git_dirty",
                "bf16",
            )
        },
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
        "config_json": json.dumps(config, sort_keys=True),
        "per_class_json": json.dumps(_get(record, "metrics", "per_class"), sort_keys=True),
        "history_json": json.dumps(history),
        "robustness_json": json.dumps(_jsonable(robustness), sort_keys=True) if robustness is not None else None,
    }
    return {field.name: _cast(row.get(field.name), field.type) for field in RUN_SCHEMA}


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    # Nullable integers keep "no limit" (null) apart from 0 and keep ints as ints.
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get)
    # Row files written before a config field existed read it as null: give it its default, so
    # those runs group and pair with new runs that use the default.
    for name, default in CONFIG_DEFAULTS.items():
        frame[name] = frame[name].fillna(default)
    return frame


def runs_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Records as the runs table, exactly as :meth:`ResultsStore.load_runs` would return them."""
    rows = [flatten_record(r) for r in records]
    return _to_pandas(pa.Table.from_pylist(rows, schema=RUN_SCHEMA))


class ResultsStore:
    """A results folder: write run records atomically, look them up, read them as a table."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.records_dir = self.root / "records"
        self.runs_dir = self.root / "runs"
        self.best_dir = self.root / "best"
        self.weights_dir = self.root / "weights"

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------
    def record_path(self, run_id: str) -> Path:
        return self.records_dir / f"{run_id}.json"

    def row_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.parquet"

    def weights_path(self, run_id: str) -> Path:
        """Where ``sweep --keep-weights`` keeps this run's weights (its info: same stem, .json)."""
        return self.weights_dir / f"{run_id}.safetensors"

    def has_weights(self, run_id: str) -> bool:
        """True when both the weights and their JSON info of ``run_id`` are stored."""
        path = self.weights_path(run_id)
        return path.is_file() and path.with_suffix(".json").is_file()

    @property
    def best_checkpoint_path(self) -> Path:
        """Weights of the best run (safetensors); its info is ``best/model.json``."""
        return self.best_dir / "model.safetensors"

    # -- writing -------------------------------------------------------------------------
    def write(self, record: dict[str, Any]) -> None:
        """Store ``record`` (keyed by its ``run_id``), replacing an earlier record of that run.

        Order matters for crash safety: the old row is removed first, then the JSON and the row
        are each renamed into place, so at every instant the row (if present) matches the JSON.
        """
        run_id = record.get("run_id")
        if not run_id or not isinstance(run_id, str) or "/" in run_id or run_id.startswith("."):
            raise ValueError(f"a run record needs a plain run_id, got {run_id!r}")
        if record.get("status") not in (FINISHED, FAILED):
            raise ValueError(f"run {run_id}: status must be {FINISHED!r} or {FAILED!r}, got {record.get('status')!r}")
        try:
            self.row_path(run_id).unlink(missing_ok=True)
            atomic_write_json(self.record_path(run_id), _jsonable(record))
            self._write_row(record)
        except OSError as exc:  # disk full, read-only folder: nothing the sweep can go on with
            raise RunFailedError(f"cannot write run {run_id} to the results store {self.root}: {exc}") from exc

    def _write_row(self, record: dict[str, Any]) -> None:
        table = pa.Table.from_pylist([flatten_record(record)], schema=RUN_SCHEMA)
        with atomic_path(self.row_path(record["run_id"])) as tmp:
            pq.write_table(table, tmp)

    def repair(self, *, stale_seconds: float = 3600.0) -> int:
        """Recreate table rows missing for complete JSON records; drop stale temp files.

        Only temp files older than ``stale_seconds`` are removed, so a sweep writing into the
        same store right now keeps its own. Returns the number of rows recreated.
        """
        fixed = 0
        for run_id in self._record_ids():
            if not self.row_path(run_id).exists():
                record = self.get(run_id)
                if record is not None:
                    self._write_row(record)
                    fixed += 1
        if not self.best_dir.exists():
            # Killed between the two renames of atomic_directory: the previous best is intact
            # under its ".best.old-<pid>" name; put it back.
            olds = sorted(self.root.glob(f".{self.best_dir.name}.old-*"), key=lambda p: p.stat().st_mtime)
            if olds:
                os.replace(olds[-1], self.best_dir)
        now = time.time()
        for folder in (self.records_dir, self.runs_dir, self.best_dir, self.weights_dir):
            if not folder.is_dir():
                continue
            for path in folder.glob(".*"):
                try:
                    if path.is_file() and now - path.stat().st_mtime > stale_seconds:
                        path.unlink()
                except OSError:
                    pass  # another process removed it first
        if self.root.is_dir():
            for staging in self.root.glob(f".{self.best_dir.name}.*.staging"):
                try:
                    if now - staging.stat().st_mtime > stale_seconds:
                        shutil.rmtree(staging, ignore_errors=True)
                except OSError:
                    pass
        return fixed

    # -- reading -------------------------------------------------------------------------
    def _record_ids(self) -> Iterator[str]:
        if self.records_dir.is_dir():
            for path in sorted(self.records_dir.glob("*.json")):
                if not path.name.startswith("."):
                    yield path.stem

    def get(self, run_id: str) -> dict[str, Any] | None:
        """The stored record of ``run_id``, or None if there is none (or it is unreadable)."""
        try:
            return json.loads(self.record_path(run_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # Cannot happen through our atomic writes; a hand-edited file must not stop a sweep.
            return None

    def is_finished(self, run_id: str) -> bool:
        """True when a complete, finished record of ``run_id`` is stored."""
        record = self.get(run_id)
        return record is not None and record.get("status") == FINISHED

    def records(self) -> list[dict[str, Any]]:
        """Every stored record (full JSON form), ordered by run id."""
        found = (self.get(run_id) for run_id in self._record_ids())
        return [record for record in found if record is not None]

    def load_runs(self) -> pd.DataFrame:
        """All runs as a DataFrame, one row per run, columns as in :data:`RUN_SCHEMA`.

        Rows come from the Parquet files; a JSON record whose row is missing (writer killed
        between the two renames) is flattened in memory, so no finished run is ever missed.
        """
        row_files = (
            sorted(p for p in self.runs_dir.glob("*.parquet") if not p.name.startswith("."))
            if self.runs_dir.is_dir()
            else []
        )
        have = {p.stem for p in row_files}
        orphans = [self.get(run_id) for run_id in self._record_ids() if run_id not in have]
        tables = []
        if row_files:
            dataset = pads.dataset([str(p) for p in row_files], schema=RUN_SCHEMA, format="parquet")
            tables.append(dataset.to_table())
        extra = [flatten_record(r) for r in orphans if r is not None]
        if extra:
            tables.append(pa.Table.from_pylist(extra, schema=RUN_SCHEMA))
        table = pa.concat_tables(tables) if tables else RUN_SCHEMA.empty_table()
        return _to_pandas(table).sort_values("run_id", kind="stable").reset_index(drop=True)

    def best_record(self) -> dict[str, Any] | None:
        """The run record saved with the best checkpoint (``best/model.json``), or None."""
        try:
            sidecar = json.loads(self.best_checkpoint_path.with_suffix(".json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        info = sidecar.get("info") if isinstance(sidecar, dict) else None
        # Both files are needed: the sidecar is written after the weights, but check anyway.
        return info if isinstance(info, dict) and self.best_checkpoint_path.is_file() else None


def open_store(root: Path, *, must_exist: bool = False) -> ResultsStore:
    """A :class:`ResultsStore` at ``root``; with ``must_exist`` a missing folder is a BadInputError."""
    store = ResultsStore(root)
    if must_exist and not store.root.is_dir():
        raise BadInputError(
            f"no results store at {store.root}",
            hint="run `fusioncli sweep` (or `fusioncli demo`) first, or pass --results-dir",
        )
    return store


def _jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that json can write strictly: NaN/inf become None, tuples lists."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        return _jsonable(obj.item())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)
