"""Models: shared blocks, fusion operators, and the strategy registry.

``create_model(name, backbone, num_classes)`` builds any registered strategy; every model is
called as ``model(rgb, xyza) -> logits``. Importing this package registers the built-in
strategies (:mod:`fusioncli.models.strategies`).
"""

from fusioncli.models.blocks import BACKBONE_SPECS, BACKBONES, BackboneSpec
from fusioncli.models.registry import (
    StrategySpec,
    create_model,
    get_strategy,
    register_strategy,
    strategy_names,
    strategy_specs,
    unregister_strategy,
)
from fusioncli.models import strategies as _strategies  # noqa: F401  (registers the built-ins)
from fusioncli.models import zoo as _zoo  # noqa: F401  (registers the literature's strategies)
from fusioncli.models.stats import describe_strategies, flops_per_sample, parameter_counts

__all__ = [
    "BACKBONES",
    "BACKBONE_SPECS",
    "BackboneSpec",
    "StrategySpec",
    "create_model",
    "describe_strategies",
    "flops_per_sample",
    "get_strategy",
    "parameter_counts",
    "register_strategy",
    "strategy_names",
    "strategy_specs",
    "unregister_strategy",
]
