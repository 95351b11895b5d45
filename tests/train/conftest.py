"""Fixtures shared by the training tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def float64(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The whole computation in float64, so two runs of the same arithmetic (the loop twice, or
    stacked and separate training) differ by float64 rounding only.

    Models (default dtype), inputs (``engine.batch_inputs``) and the loss: the executors take
    the cross-entropy of ``logits.float()``, which the fixture makes a no-op on float64 tensors
    (otherwise the loss and its gradient would pass through float32).
    """
    from fusioncli.train import engine

    original = engine.batch_inputs
    monkeypatch.setattr(engine, "batch_inputs", lambda data, idx: tuple(t.double() for t in original(data, idx)))
    to_float32 = torch.Tensor.float
    monkeypatch.setattr(
        torch.Tensor, "float", lambda t, *a, **k: t if t.dtype == torch.float64 else to_float32(t, *a, **k)
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
