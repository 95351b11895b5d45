"""The sweep plan: executor choice (spec validation and planning are covered with the runners)."""

from __future__ import annotations

import pytest
import torch

from fusioncli.errors import BadInputError
from fusioncli.sweep.plan import choose_executor


def test_choose_executor() -> None:
    assert choose_executor("cpu") == "loop"
    assert choose_executor("cuda") == "stacked"
    assert choose_executor("cuda:1", "auto") == "stacked"
    assert choose_executor("auto") == ("stacked" if torch.cuda.is_available() else "loop")
    assert choose_executor("cpu", "stacked") == "stacked"
    assert choose_executor("cuda:0", "loop") == "loop"
    with pytest.raises(BadInputError, match="--executor must be one of auto, loop, stacked"):
        choose_executor("cpu", "vmap")
    with pytest.raises(BadInputError, match="--device"):
        choose_executor("tpu")
