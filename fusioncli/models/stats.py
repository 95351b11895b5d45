"""Model size and cost: parameter counts split by part, forward FLOPs per sample.

Both work on a model built on the ``meta`` device (no memory, no init), which is how
:func:`describe_strategies` sizes every strategy in milliseconds: FlopCounterMode counts from
shapes, so meta and real tensors give the same FLOPs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fusioncli.errors import BadInputError
from fusioncli.models.backbones import BACKBONES, DEFAULT_INPUT_SIZE, INPUT_CHANNELS, as_input_size
from fusioncli.models.registry import PART_PREFIXES, create_model, model_input_size, strategy_specs


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameter counts: ``total``, ``trainable`` and the split of ``total`` into ``encoder``,
    ``fusion`` and ``head`` by the top-level name prefix (a parameter-free fusion counts 0).

    Shared parameters count once. A parameter outside the three parts raises ValueError: the
    split would silently not add up otherwise.
    """
    counts = {"total": 0, "trainable": 0, **dict.fromkeys(PART_PREFIXES, 0)}
    for name, param in model.named_parameters():
        n = param.numel()
        counts["total"] += n
        if param.requires_grad:
            counts["trainable"] += n
        top = name.split(".", 1)[0]
        part = next((p for p in PART_PREFIXES if top.startswith(p)), None)
        if part is None:
            raise ValueError(f"parameter {name!r} is not under an encoder*/fusion*/head* module")
        counts[part] += n
    return counts


def flops_per_sample(model: nn.Module, input_size: int | Sequence[int] | None = None) -> int:
    """Forward-pass FLOPs for one sample (batch 1, zero inputs) on the model's own device.

    ``input_size`` (one side or (H, W)) defaults to the size the model was built for
    (:func:`~fusioncli.models.registry.model_input_size`). Counted by ``torch.utils.flop_counter``
    (convs and matmuls; a multiply-add is 2 FLOPs; elementwise ops, pooling and activations
    count 0). The model's train/eval mode is kept.
    """
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    h, w = model_input_size(model) if input_size is None else as_input_size(input_size)
    shape = (1, INPUT_CHANNELS, h, w)
    rgb = torch.zeros(shape, device=device, dtype=dtype)
    xyza = torch.zeros(shape, device=device, dtype=dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(rgb, xyza)
    return int(counter.get_total_flops())


def describe_strategies(
    backbone: str = "seed", num_classes: int = 2, input_size: int | Sequence[int] = DEFAULT_INPUT_SIZE
) -> list[dict[str, Any]]:
    """One row per registered strategy and backbone (``backbone`` may be ``"all"``): name,
    backbone, description, modalities, parameter counts and forward FLOPs per sample, for
    ``num_classes`` classes and ``input_size`` images (one side or (H, W); each row says which,
    as ``num_classes`` and ``input_size`` [H, W]).

    Models are built on the meta device, so this allocates nothing and takes milliseconds.
    """
    if backbone == "all":
        backbones = BACKBONES
    elif backbone in BACKBONES:
        backbones = (backbone,)
    else:
        raise BadInputError(f"unknown backbone {backbone!r}; known backbones: {', '.join(BACKBONES)}, all")
    size = as_input_size(input_size)
    rows: list[dict[str, Any]] = []
    for bb in backbones:
        for spec in strategy_specs():
            with torch.device("meta"):
                model = create_model(spec.name, bb, num_classes, input_size=size)
            counts = parameter_counts(model)
            rows.append(
                {
                    "name": spec.name,
                    "backbone": bb,
                    "description": spec.description,
                    "modalities": list(spec.modalities),
                    "params": counts["total"],
                    "trainable_params": counts["trainable"],
                    "encoder_params": counts["encoder"],
                    "fusion_params": counts["fusion"],
                    "head_params": counts["head"],
                    "flops_per_sample": flops_per_sample(model),
                    "num_classes": num_classes,
                    "input_size": list(size),
                }
            )
    return rows
