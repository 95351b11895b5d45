"""The run record: what one run measured, as a typed value with a JSON round trip and a flat row.

A :class:`RunRecord` is built by its constructors only -- :meth:`RunRecord.finished` (training
measured it), :meth:`RunRecord.failed` (what is known about a run that did not finish),
:meth:`RunRecord.with_robustness` and :meth:`RunRecord.evaluated` (the figures of a saved model
scored on other data) -- and never edited: each returns a new record. The results store saves
:meth:`RunRecord.to_json` (``records/<id>.json``) and :meth:`RunRecord.to_row` (one row of
:data:`RUN_SCHEMA`, ``runs/<id>.parquet``) and reads them back with :meth:`RunRecord.from_json`.

The JSON layout is the one every earlier version wrote (records on disk keep loading; keys a
later version adds are kept on a round trip). Torch-free, like the config.
"""

from __future__ import annotations

import base64
import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import pyarrow as pa

from fusioncli.config import (
    CONFIG_FIELDS,
    DEFAULTS,
    INPUT_NORM_FIELDS,
    ROW_DEFAULTS,
    RunConfig,
    config_fields,
    plugin_of,
)

RECORD_SCHEMA = 1
FINISHED = "finished"
FAILED = "failed"
STATUSES = (FINISHED, FAILED)


@dataclass(frozen=True)
class Metrics:
    """Validation figures of a run (or, for an evaluated record, of the data it was scored on)."""

    val_loss: float | None
    val_accuracy: float | None
    f1_macro: float | None
    per_class: dict[str, Any] = field(default_factory=dict)
    confusion: list[list[int]] | None = None  # evaluated records keep their confusion matrix
    # ece / brier / nll and temperature scaling (fusioncli.train.metrics.calibration_metrics);
    # records written before calibration existed have none.
    calibration: dict[str, Any] | None = None
    # Which validation samples the run got right, in split order: base64 of numpy.packbits of
    # the 0/1 vector (:func:`pack_correct`); what a paired per-sample comparison of two runs needs.
    val_correct: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"val_loss": self.val_loss, "val_accuracy": self.val_accuracy,
                               "f1_macro": self.f1_macro, "per_class": self.per_class}  # fmt: skip
        if self.confusion is not None:
            out["confusion"] = self.confusion
        if self.calibration is not None:
            out["calibration"] = self.calibration
        if self.val_correct is not None:
            out["val_correct"] = self.val_correct
        return out

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> Metrics:
        return cls(
            val_loss=values.get("val_loss"),
            val_accuracy=values.get("val_accuracy"),
            f1_macro=values.get("f1_macro"),
            per_class=values.get("per_class") or {},
            confusion=values.get("confusion"),
            calibration=values.get("calibration") if isinstance(values.get("calibration"), dict) else None,
            val_correct=values.get("val_correct") if isinstance(values.get("val_correct"), str) else None,
        )


@dataclass(frozen=True)
class DatasetInfo:
    """The data a run saw: the fingerprint its run id refers to and the split sizes it used.

    A failed run may know only the fingerprint and the class names (sizes None).
    """

    fingerprint: str | None
    class_names: tuple[str, ...] | None = None
    n_train: int | None = None
    n_val: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "class_names": None if self.class_names is None else list(self.class_names),
        }

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> DatasetInfo:
        names = values.get("class_names")
        return cls(
            fingerprint=values.get("fingerprint"),
            class_names=None if names is None else tuple(names),
            n_train=values.get("n_train"),
            n_val=values.get("n_val"),
        )


# Keys written only when set (older records lack them; the layout of the others is fixed).
_OPTIONAL_KEYS = ("robustness", "evaluation", "traceback", "record_error", "plugin")
# Keys that must hold a JSON object (or null) / a JSON list in a record's JSON form.
_OBJECT_KEYS = (
    "config", "metrics", "dataset", "env", "params", "timing", "memory", "evaluation", "robustness", "plugin",
)  # fmt: skip
_LIST_KEYS = ("history",)


@dataclass(frozen=True)
class RunRecord:
    """One run's record. Build it with the constructors below; it is never mutated."""

    run_id: str | None
    status: str
    config: dict[str, Any]
    error: str | None = None
    dataset: DatasetInfo | None = None
    metrics: Metrics | None = None
    history: tuple[dict[str, Any], ...] = ()
    params: dict[str, int] | None = None
    flops_per_sample: int | None = None
    timing: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None
    env: dict[str, Any] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    robustness: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    traceback: str | None = None
    record_error: str | None = None
    # A plugin strategy's plugin: {"file", "sha256"} of its source (hashed into the run id).
    plugin: dict[str, str] | None = None
    schema: int = RECORD_SCHEMA
    # Keys of a record written by a later version, kept so a round trip loses nothing.
    extra: dict[str, Any] = field(default_factory=dict)
    # Optional keys (_OPTIONAL_KEYS) written as null although unset: an evaluated record scored
    # without robustness says ``"robustness": null``, as every earlier version wrote it.
    null_keys: frozenset[str] = frozenset()

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def finished(
        cls,
        config: RunConfig,
        run_id: str,
        *,
        dataset: DatasetInfo,
        metrics: Metrics,
        history: list[dict[str, Any]],
        params: dict[str, int],
        flops_per_sample: int,
        timing: dict[str, Any],
        memory: dict[str, Any],
        env: dict[str, Any],
        started_at: str,
        finished_at: str,
    ) -> RunRecord:
        """The record of a run that trained to the end."""
        return cls(
            run_id=run_id,
            status=FINISHED,
            config=config.to_dict(),
            dataset=dataset,
            metrics=metrics,
            history=tuple(dict(row) for row in history),
            params=dict(params),
            flops_per_sample=int(flops_per_sample),
            timing=dict(timing),
            memory=dict(memory),
            env=dict(env),
            started_at=started_at,
            finished_at=finished_at,
            plugin=plugin_of(config.strategy),
        )

    @classmethod
    def failed(
        cls,
        config: dict[str, Any],
        run_id: str | None,
        error: str,
        *,
        started_at: str | None,
        finished_at: str,
        dataset: DatasetInfo | None = None,
        history: list[dict[str, Any]] | tuple[dict[str, Any], ...] = (),
        env: dict[str, Any] | None = None,
        traceback: str | None = None,
        record_error: str | None = None,
    ) -> RunRecord:
        """What is known about a run that did not finish: its config, the error, the epochs that
        did finish (e.g. up to a NaN), and the data when it was loaded."""
        return cls(
            run_id=run_id,
            status=FAILED,
            config=dict(config),
            error=error,
            dataset=dataset,
            history=tuple(dict(row) for row in history),
            env=env,
            started_at=started_at,
            finished_at=finished_at,
            traceback=traceback,
            record_error=record_error,
            plugin=plugin_of(config.get("strategy")),
        )

    def with_run_id(self, run_id: str) -> RunRecord:
        """This record under ``run_id`` (the id the sweep planned for it)."""
        return replace(self, run_id=run_id)

    def with_robustness(self, robustness: dict[str, Any], seconds: float) -> RunRecord:
        """This record with its robustness evaluation (``seconds`` it took goes into timing)."""
        return replace(
            self,
            robustness=robustness,
            timing={**(self.timing or {}), "robustness_seconds": seconds},
            null_keys=self.null_keys - {"robustness"},
        )

    def without_env(self) -> RunRecord:
        """This record with no machine description (a Ray worker's machine is unknown here)."""
        return replace(self, env=None)

    def evaluated(
        self, metrics: Metrics, robustness: dict[str, Any] | None, dataset: DatasetInfo, evaluation: dict[str, Any]
    ) -> RunRecord:
        """A record whose figures are those of this run's saved model scored on other data.

        Config, parameters, history, timing and memory stay the run's own; ``dataset`` is the
        evaluated data and ``evaluation`` says where the figures come from (it gets the run's
        own dataset and validation figures as ``trained_dataset`` / ``trained_metrics``).
        """
        own = self.metrics
        trained = {
            "val_accuracy": own.val_accuracy if own else None,
            "f1_macro": own.f1_macro if own else None,
            "val_loss": own.val_loss if own else None,
        }
        return replace(
            self,
            metrics=metrics,
            robustness=robustness,
            dataset=dataset,
            evaluation={
                **evaluation,
                "trained_dataset": None if self.dataset is None else self.dataset.to_json(),
                "trained_metrics": trained,
            },
            null_keys=(self.null_keys | {"robustness"}) if robustness is None else (self.null_keys - {"robustness"}),
        )

    # -- reading -----------------------------------------------------------------------------
    @property
    def is_finished(self) -> bool:
        return self.status == FINISHED

    @property
    def val_accuracy(self) -> float | None:
        return None if self.metrics is None else self.metrics.val_accuracy

    @property
    def val_loss(self) -> float | None:
        return None if self.metrics is None else self.metrics.val_loss

    @property
    def f1_macro(self) -> float | None:
        return None if self.metrics is None else self.metrics.f1_macro

    @property
    def fingerprint(self) -> str | None:
        return None if self.dataset is None else self.dataset.fingerprint

    @property
    def train_seconds(self) -> float | None:
        return (self.timing or {}).get("train_seconds")

    @property
    def trained_val_accuracy(self) -> float | None:
        """An evaluated record's accuracy on the data it was trained on (else None)."""
        return ((self.evaluation or {}).get("trained_metrics") or {}).get("val_accuracy")

    @property
    def lidar_norm(self) -> str:
        """The run's LiDAR input step (records written before ``--lidar-norm`` existed: the seed's)."""
        return self.input_norms["lidar_norm"]

    @property
    def input_norms(self) -> dict[str, str]:
        """The run's model input steps, as ``create_model``'s keyword arguments (a record written
        before an option existed: the seed's step)."""
        return {name: str(self.config.get(name, DEFAULTS[name])) for name in INPUT_NORM_FIELDS}

    def run_config(self) -> RunConfig:
        """The config as a :class:`RunConfig` (raises BadInputError for an unknown field)."""
        return RunConfig.from_dict(self.config)

    # -- JSON --------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The JSON form (``records/<id>.json``): every earlier version's key layout."""
        out: dict[str, Any] = {
            "schema": self.schema,
            "run_id": self.run_id,
            "status": self.status,
            "error": self.error,
            "config": self.config,
            "dataset": None if self.dataset is None else self.dataset.to_json(),
            "metrics": None if self.metrics is None else self.metrics.to_json(),
            "history": [dict(row) for row in self.history],
            "params": self.params,
            "flops_per_sample": self.flops_per_sample,
            "timing": self.timing,
            "memory": self.memory,
            "env": self.env,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }
        for key in _OPTIONAL_KEYS:
            if getattr(self, key) is not None or key in self.null_keys:
                out[key] = getattr(self, key)
        return jsonable({**out, **self.extra})

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> RunRecord:
        """A record from its JSON form (any version's); raises ValueError, saying what is wrong,
        when it is not one."""
        if not isinstance(values, dict):
            raise ValueError(f"is JSON but not a run record (a {type(values).__name__})")
        status = values.get("status")
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is neither {FINISHED!r} nor {FAILED!r}")
        for key, kind in (*((k, dict) for k in _OBJECT_KEYS), *((k, list) for k in _LIST_KEYS)):
            if values.get(key) is not None and not isinstance(values[key], kind):
                raise ValueError(f"its {key} is not a JSON {'object' if kind is dict else 'list'}")
        config = values.get("config")
        if not isinstance(config, dict):
            raise ValueError("has no config")
        run_id = values.get("run_id")
        if run_id is not None and not isinstance(run_id, str):
            raise ValueError(f"its run_id is not a string ({run_id!r})")
        dataset, metrics = values.get("dataset"), values.get("metrics")
        known = {f.name for f in fields(cls)} - {"extra", "null_keys"}
        return cls(
            run_id=run_id,
            status=status,
            config=config,
            error=values.get("error"),
            dataset=DatasetInfo.from_json(dataset) if isinstance(dataset, dict) else None,
            metrics=Metrics.from_json(metrics) if isinstance(metrics, dict) else None,
            history=tuple(values.get("history") or ()),
            params=values.get("params"),
            flops_per_sample=values.get("flops_per_sample"),
            timing=values.get("timing"),
            memory=values.get("memory"),
            env=values.get("env"),
            started_at=values.get("started_at"),
            finished_at=values.get("finished_at"),
            robustness=values.get("robustness"),
            evaluation=values.get("evaluation"),
            traceback=values.get("traceback"),
            record_error=values.get("record_error"),
            plugin=values.get("plugin"),
            schema=values.get("schema", RECORD_SCHEMA),
            extra={k: v for k, v in values.items() if k not in known},
            null_keys=frozenset(k for k in _OPTIONAL_KEYS if k in values and values[k] is None),
        )

    # -- the flat row ------------------------------------------------------------------------
    def to_row(self) -> dict[str, Any]:
        """This record as one row of :data:`RUN_SCHEMA` (missing parts are null)."""
        robustness = self.robustness
        env = self.env or {}
        accuracy, trained = self.val_accuracy, self.trained_val_accuracy
        dataset = self.dataset or DatasetInfo(fingerprint=None)
        metrics = self.metrics
        row: dict[str, Any] = {
            "run_id": self.run_id,
            "status": self.status,
            "error": self.error,
            **{name: self.config.get(name, ROW_DEFAULTS.get(name)) for name in CONFIG_FIELDS},
            "dataset_fingerprint": dataset.fingerprint,
            "n_train": dataset.n_train,
            "n_val": dataset.n_val,
            "class_names": ",".join(dataset.class_names) if dataset.class_names else None,
            "val_accuracy": accuracy,
            "f1_macro": self.f1_macro,
            "val_loss": self.val_loss,
            "robust_mean_auc": _get(robustness, "mean_auc"),
            "robust_mean_relative_auc": _get(robustness, "mean_relative_auc"),
            "acc_rgb_missing": _get(robustness, "missing", "rgb_missing", "accuracy"),
            "acc_lidar_missing": _get(robustness, "missing", "lidar_missing", "accuracy"),
            "robust_mra": _get(robustness, "mra"),
            **_calibration_columns(None if metrics is None else metrics.calibration),
            "val_correct": None if metrics is None else metrics.val_correct,
            # Runs evaluated on another dataset (fusioncli evaluate --runs --into): the accuracy
            # the run had on its own validation split, and the change from it to the one here.
            "trained_val_accuracy": trained,
            "accuracy_change": accuracy - trained if accuracy is not None and trained is not None else None,
            **{f"params_{k}": _get(self.params, k) for k in ("total", "trainable", "encoder", "fusion", "head")},
            "flops_per_sample": self.flops_per_sample,
            "train_seconds": self.train_seconds,
            "samples_per_s": _get(self.timing, "samples_per_s"),
            "samples_per_s_note": _get(self.timing, "samples_per_s_note"),
            "epochs_completed": len(self.history),
            "peak_gpu_allocated_bytes": _get(self.memory, "peak_gpu_allocated_bytes"),
            "peak_gpu_reserved_bytes": _get(self.memory, "peak_gpu_reserved_bytes"),
            "peak_host_rss_bytes": _get(self.memory, "peak_host_rss_bytes"),
            **{k: env.get(k) for k in _ENV_COLUMNS},
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "config_json": json.dumps(self.config, sort_keys=True),
            "per_class_json": json.dumps(None if metrics is None else metrics.per_class, sort_keys=True),
            "history_json": json.dumps(list(self.history)),
            "robustness_json": json.dumps(jsonable(robustness), sort_keys=True) if robustness is not None else None,
        }
        return {column.name: _cast(row.get(column.name), column.type) for column in RUN_SCHEMA}


# Columns flattened from the metrics' calibration (null for records written before it existed).
# *_half_raw / *_half_scaled: the half of validation the temperature was not fitted on, before
# and after temperature scaling (the same samples, so the two compare).
CALIBRATION_COLUMNS = (
    "ece", "brier", "nll", "temperature", "ece_half_raw", "ece_half_scaled", "nll_half_raw", "nll_half_scaled",
)  # fmt: skip


def pack_correct(correct: Any) -> str:
    """A 0/1 sequence (which samples a run got right) as base64 text of its packed bits."""
    bits = np.packbits(np.asarray(correct, dtype=bool).ravel())
    return base64.b64encode(bits.tobytes()).decode("ascii")


def unpack_correct(text: str, n: int) -> Any:
    """The first ``n`` bits of :func:`pack_correct`'s text as a bool numpy array."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))
    if len(bits) < n:
        raise ValueError(f"val_correct holds {len(bits)} bits, fewer than the {n} samples asked for")
    return bits[:n].astype(bool)


def _calibration_columns(calibration: dict[str, Any] | None) -> dict[str, Any]:
    c = calibration
    return {
        "ece": _get(c, "ece"),
        "brier": _get(c, "brier"),
        "nll": _get(c, "nll"),
        "temperature": _get(c, "temperature"),
        "ece_half_raw": _get(c, "raw_half", "ece"),
        "ece_half_scaled": _get(c, "scaled_half", "ece"),
        "nll_half_raw": _get(c, "raw_half", "nll"),
        "nll_half_scaled": _get(c, "scaled_half", "nll"),
    }


_ENV_COLUMNS = (
    "fusioncli_version", "torch_version", "cuda_version", "cudnn_version", "device_name", "cpu_count",
    "python_version", "platform", "git_commit", "git_dirty", "bf16",
)  # fmt: skip

_STR, _F64, _I64, _BOOL = pa.string(), pa.float64(), pa.int64(), pa.bool_()


def _config_columns() -> list[tuple[str, pa.DataType]]:
    """One column per RunConfig field, typed from its annotation (int / float / str)."""
    columns = []
    for f, _ in config_fields():
        annotation = str(f.type)
        columns.append((f.name, _F64 if "float" in annotation else _I64 if "int" in annotation else _STR))
    return columns


# One explicit schema for every row file, so files written with nulls in different columns
# still read back as one table with stable types.
RUN_SCHEMA = pa.schema(
    [
        ("run_id", _STR),
        ("status", _STR),
        ("error", _STR),
        *_config_columns(),
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
        ("robust_mra", _F64),
        *[(name, _F64) for name in CALIBRATION_COLUMNS],
        ("val_correct", _STR),
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
        *[(name, _I64 if name == "cpu_count" else _BOOL if name in ("git_dirty", "bf16") else _STR)
          for name in _ENV_COLUMNS],
        ("started_at", _STR),
        ("finished_at", _STR),
        ("config_json", _STR),
        ("per_class_json", _STR),
        ("history_json", _STR),
        ("robustness_json", _STR),
    ]
)  # fmt: skip

# Columns flattened from the record's robustness (null for runs evaluated without it).
ROBUSTNESS_COLUMNS = (
    "robust_mean_auc", "robust_mean_relative_auc", "acc_rgb_missing", "acc_lidar_missing", "robust_mra",
)  # fmt: skip


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


def jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that json can write strictly: NaN/inf become None, tuples lists."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        return jsonable(obj.item())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)
