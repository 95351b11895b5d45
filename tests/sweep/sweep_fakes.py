"""Test doubles for the sweep and the results store: tiny data, fake records, a fake trainer.

Importable from tests/sweep directly, and from other test folders after putting this folder on
sys.path (see tests/cli/test_report_cli.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from fusioncli.data.dataset import PreparedData
from fusioncli.config import RunConfig, run_id
from fusioncli.record import DatasetInfo, Metrics, RunRecord

FINGERPRINT = "fake-fingerprint-0001"
CLASS_NAMES = ("cubes", "spheres")


def tiny_data(n_per_class: int = 4, fingerprint: str = FINGERPRINT) -> PreparedData:
    """A PreparedData with a handful of zero images: enough for the runner, no training."""
    n = 2 * n_per_class
    labels = torch.tensor([0] * n_per_class + [1] * n_per_class)
    is_val = torch.tensor(([False] * (n_per_class - 1) + [True]) * 2)
    return PreparedData(
        rgb=torch.zeros(n, 4, 64, 64, dtype=torch.uint8),
        xyza=torch.zeros(n, 4, 64, 64),
        depth=torch.full((n, 64, 64), 50.0),
        labels=labels,
        is_val=is_val,
        class_names=CLASS_NAMES,
        fingerprint=fingerprint,
    )


def fake_accuracy(config: RunConfig) -> float:
    """A deterministic, config-dependent accuracy in (0.5, 1): seeds differ a little."""
    base = {"late": 0.90, "intermediate-concat": 0.85, "intermediate-add": 0.80, "intermediate-multiply": 0.75}
    acc = base.get(config.strategy, 0.70) + 0.01 * math.log10(config.lr / 1e-6) + 0.002 * (config.seed % 5)
    return min(acc, 0.999)


def fake_record(
    config: RunConfig,
    fingerprint: str = FINGERPRINT,
    *,
    accuracy: float | None = None,
    f1: float | None = None,
    val_loss: float | None = None,
    train_seconds: float = 10.0,
    status: str = "finished",
    error: str | None = None,
    gpu_bytes: int | None = None,
) -> RunRecord:
    """A well-formed run record for ``config``, built by the record's own constructors."""
    cfg = config.resolve()
    acc = fake_accuracy(cfg) if accuracy is None else accuracy
    rid = run_id(cfg, fingerprint)
    dataset = DatasetInfo(fingerprint, CLASS_NAMES, n_train=6, n_val=2)
    env = {
        "fusioncli_version": "0.1.0",
        "torch_version": torch.__version__,
        "cuda_version": None,
        "cudnn_version": None,
        "device_name": "fake cpu",
        "cpu_count": 2,
        "python_version": "3.11",
        "platform": "test",
        "git_commit": "0" * 40,
        "git_dirty": False,
        "bf16": False,
    }
    started_at, finished_at = "2024-01-01T00:00:00+00:00", "2024-01-01T00:00:10+00:00"
    if status != "finished":
        assert error is not None, "a failed fake record needs its error"
        return RunRecord.failed(
            cfg.to_dict(), rid, error, started_at=started_at, finished_at=finished_at, dataset=dataset, env=env
        )
    assert error is None, "a finished record has no error"
    history = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "val_loss": 1.0 - acc + 0.1 / e,
            "val_accuracy": acc,
            "lr": cfg.lr,
            "seconds": 1.0,
        }
        for e in range(1, cfg.epochs + 1)
    ]
    return RunRecord.finished(
        cfg,
        rid,
        dataset=dataset,
        metrics=Metrics(
            val_loss=(1.0 - acc) if val_loss is None else val_loss,
            val_accuracy=acc,
            f1_macro=(acc - 0.01) if f1 is None else f1,
            per_class={c: {"precision": acc, "recall": acc, "f1": acc, "support": 1} for c in CLASS_NAMES},
        ),
        history=history,
        params={"total": 1_000_000, "trainable": 1_000_000, "encoder": 800_000, "fusion": 0, "head": 200_000},
        flops_per_sample=5_000_000,
        timing={
            "train_seconds": train_seconds,
            "epoch_seconds": [train_seconds / cfg.epochs] * cfg.epochs,
            "samples_per_s": 600.0 / train_seconds,
            "samples_per_s_note": "fake",
        },
        memory={
            "peak_gpu_allocated_bytes": gpu_bytes,
            "peak_gpu_reserved_bytes": gpu_bytes,
            "peak_host_rss_bytes": 300 * 2**20,
        },
        env=env,
        started_at=started_at,
        finished_at=finished_at,
    )


def stored_as(record: RunRecord, **keys: Any) -> RunRecord:
    """``record`` as read back from a JSON file in which top-level ``keys`` hold other values
    (e.g. a record an older version wrote, or one edited by hand)."""
    return RunRecord.from_json({**record.to_json(), **keys})


class FakeTrainer:
    """A train function for the runner: records its calls, sleeps, fails on demand.

    ``fail(config)`` returns an exception to raise (or None); ``sleep`` seconds per run;
    ``marker_dir`` gets ``started-<n>`` files so a parent process knows a run is in flight.
    """

    def __init__(
        self,
        *,
        fail: Callable[[RunConfig], BaseException | None] | None = None,
        sleep: float = 0.0,
        marker_dir: Path | None = None,
    ) -> None:
        self.fail = fail
        self.sleep = sleep
        self.marker_dir = marker_dir
        self.calls: list[RunConfig] = []

    def __call__(self, config: RunConfig, data: PreparedData, *, on_epoch: Callable | None = None) -> SimpleNamespace:
        self.calls.append(config)
        if self.marker_dir is not None:
            (Path(self.marker_dir) / f"started-{len(self.calls)}").write_text(config.strategy)
        if self.sleep:
            time.sleep(self.sleep)
        record = fake_record(config, data.fingerprint)
        for row in record.history:
            if on_epoch is not None:
                on_epoch(dict(row))
        if self.fail is not None:
            exc = self.fail(config)
            if exc is not None:
                raise exc
        torch.manual_seed(config.seed)
        return SimpleNamespace(record=record, model=nn.Linear(3, 2))


def grid(**overrides: Any) -> list[RunConfig]:
    """A small grid (2 strategies x 2 lrs, 1 epoch, CPU) for runner tests."""
    from fusioncli.sweep.grid import expand_grid

    kwargs: dict[str, Any] = dict(
        strategies=["late", "intermediate-add"],
        lrs=[1e-3, 1e-4],
        schedulers=["cosine"],
        seeds=[51],
        epochs=1,
        device="cpu",
    )
    kwargs.update(overrides)
    return expand_grid(**kwargs)
