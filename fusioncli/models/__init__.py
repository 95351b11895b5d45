"""Models: shared blocks, fusion operators, and the strategy registry.

``create_model(name, backbone, num_classes, input_size=(H, W))`` builds any registered strategy
for the data's image size (64 x 64 by default); every model is called as
``model(rgb, xyza) -> logits``. Importing this package registers the built-in
strategies (:mod:`fusioncli.models.strategies`, :mod:`fusioncli.models.zoo`) without importing
torch: names, descriptions and backbones are known at once, and torch loads when a model is
built or measured (``parameter_counts``, ``flops_per_sample``, ``describe_strategies``).
"""

from typing import Any

from fusioncli.models.backbones import BACKBONE_SPECS, BACKBONES, DEFAULT_INPUT_SIZE, BackboneSpec
from fusioncli.models.registry import (
    StrategySpec,
    create_model,
    get_backbone,
    get_strategy,
    model_input_size,
    register_strategy,
    strategy_names,
    strategy_specs,
    unregister_strategy,
)

# isort: split
# Last, after the public names: importing these registers the built-in strategies.
from fusioncli.models import strategies as _strategies  # noqa: F401  (registers the built-ins)
from fusioncli.models import zoo as _zoo  # noqa: F401  (registers the literature's strategies)

# Measured on a built model, so they need torch: loaded on first use (PEP 562).
_TORCH_SIDE = {"describe_strategies", "flops_per_sample", "parameter_counts"}


def __getattr__(name: str) -> Any:
    if name in _TORCH_SIDE:
        from fusioncli.models import stats

        return getattr(stats, name)
    raise AttributeError(f"module 'fusioncli.models' has no attribute {name!r}")


__all__ = [
    "BACKBONES",
    "BACKBONE_SPECS",
    "DEFAULT_INPUT_SIZE",
    "BackboneSpec",
    "StrategySpec",
    "create_model",
    "describe_strategies",
    "flops_per_sample",
    "get_backbone",
    "get_strategy",
    "model_input_size",
    "parameter_counts",
    "register_strategy",
    "strategy_names",
    "strategy_specs",
    "unregister_strategy",
]
