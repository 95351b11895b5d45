"""Jobs: train -> (robustness) -> result, with one failure rule for every caller."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fusioncli.config import RunConfig
from fusioncli.errors import BadInputError, RunFailedError
from fusioncli.jobs import error_message, train_from_cache, train_one
from fusioncli.record import RunRecord


def test_error_message_is_one_bounded_line() -> None:
    assert error_message(BadInputError(["a", "b"])) == "a; b"
    assert error_message(ValueError("  bad  ")) == "ValueError: bad"
    assert error_message(KeyError()) == "KeyError"
    assert len(error_message(RuntimeError("x" * 10_000))) == 2000


def test_a_failing_robustness_evaluation_fails_the_run() -> None:
    cfg = RunConfig(device="cpu", precision="fp32")
    record = RunRecord.failed(cfg.to_dict(), None, "RunFailedError: boom", started_at=None, finished_at="t")
    failed = SimpleNamespace(record=record, model=torch.nn.Linear(2, 2))
    calls = []

    def train_fn(cfg, data, *, on_epoch=None):
        calls.append(cfg)
        return failed

    assert train_one(cfg, None, train_fn=train_fn) is failed  # no robustness asked: the result as is
    with pytest.raises(RunFailedError, match="robustness evaluation failed: ValueError: robustness is measured"):
        train_one(cfg, None, train_fn=train_fn, robustness=True)
    assert calls == [cfg, cfg]


def test_train_from_cache_checks_the_checkpoint_path_before_training(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(BadInputError, match="is a folder"):  # not the missing cache: checked first
        train_from_cache(RunConfig(device="cpu", precision="fp32"), tmp_path / "no-cache", checkpoint=folder)
