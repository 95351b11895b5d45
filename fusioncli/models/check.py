"""``fusioncli strategies --check``: does a strategy keep the builder contract and train every weight?

:func:`check_strategy` builds the strategy, runs one forward and backward pass on a tiny random
batch and returns one line per problem: a build or forward error, a wrong output shape, a loss
that is not finite, a parameter that gets no gradient (an unused layer, a frozen one), and a
tensor the forward trains through that is not registered on the model (factors kept in a plain
Python list, as MultiBench's low-rank fusion does: the optimiser never sees them, so they are
never trained, never saved and never moved to the GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fusioncli.models.backbones import DEFAULT_INPUT_SIZE, INPUT_CHANNELS, as_input_size, format_input_size
from fusioncli.models.registry import create_model

CHECK_BATCH = 4


def _autograd_leaves(loss: torch.Tensor) -> list[torch.Tensor]:
    """Every tensor that requires grad and that ``loss`` was computed from (autograd's leaves)."""
    leaves: dict[int, torch.Tensor] = {}
    seen: set[int] = set()
    stack: list[Any] = [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        variable = getattr(fn, "variable", None)  # AccumulateGrad: the end of a path
        if isinstance(variable, torch.Tensor):
            leaves[id(variable)] = variable
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return list(leaves.values())


def check_strategy(
    name: str,
    backbone: str = "seed",
    num_classes: int = 2,
    *,
    input_size: int | Sequence[int] = DEFAULT_INPUT_SIZE,
    lidar_norm: str = "seed",
    batch: int = CHECK_BATCH,
) -> list[str]:
    """Problems found building strategy ``name`` for ``input_size`` images (one side or (H, W))
    and training it one step (empty: it passed)."""
    h, w = as_input_size(input_size)
    torch.manual_seed(0)
    try:
        model = create_model(name, backbone, num_classes, lidar_norm=lidar_norm, input_size=(h, w))
    except Exception as exc:  # noqa: BLE001 - reported as the check's finding
        return [f"{name}: does not build for {format_input_size((h, w))} inputs: {exc}"]
    model.train()
    shape = (batch, INPUT_CHANNELS, h, w)
    rgb, xyza = torch.rand(shape), torch.rand(shape)
    xyza[:, 3] = (xyza[:, 3] > 0.3).float()  # the return mask is 0/1
    try:
        logits = model(rgb, xyza)
    except Exception as exc:  # noqa: BLE001
        return [f"{name}: forward on a batch of shape {tuple(shape)} fails: {type(exc).__name__}: {exc}"]
    if not isinstance(logits, torch.Tensor):
        return [f"{name}: forward returns {type(logits).__name__}, not a tensor of logits"]
    if tuple(logits.shape) != (batch, num_classes):
        return [f"{name}: output shape {tuple(logits.shape)}, expected (batch, classes) = {(batch, num_classes)}"]
    if not logits.requires_grad:
        return [f"{name}: the output does not depend on any trainable tensor"]
    loss = nn.functional.cross_entropy(logits.float(), torch.arange(batch) % num_classes)
    problems: list[str] = []
    if not torch.isfinite(loss):
        problems.append(f"{name}: the loss is not finite ({loss.item()})")
    registered = {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}
    for leaf in _autograd_leaves(loss):
        if id(leaf) not in registered:
            problems.append(
                f"{name}: the forward trains through a tensor of shape {tuple(leaf.shape)} that is not a "
                "registered parameter (kept in a plain list/dict or a global?): the optimiser never updates it; "
                "use nn.Parameter in an nn.ParameterList/ParameterDict or a submodule"
            )
    try:
        loss.backward()
    except Exception as exc:  # noqa: BLE001
        return [*problems, f"{name}: backward fails: {type(exc).__name__}: {exc}"]
    for pname, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen on purpose (a pretrained encoder): the optimiser skips it too
        if param.grad is None:
            problems.append(f"{name}: parameter {pname} {tuple(param.shape)} gets no gradient (unused in forward?)")
        elif not torch.isfinite(param.grad).all():
            problems.append(f"{name}: parameter {pname} gets a gradient that is not finite")
    return problems
