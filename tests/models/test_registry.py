"""The strategy registry: registration, lookup errors, the naming contract, describe_strategies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from fusioncli.errors import BadInputError, RunFailedError
from fusioncli.models import (
    BACKBONES,
    BackboneSpec,
    create_model,
    describe_strategies,
    get_strategy,
    register_strategy,
    strategy_names,
    unregister_strategy,
)
from fusioncli.models.blocks import TwoStreamModel, conv_stem, map_head
from fusioncli.models.fusion import FusionOp

TEST_NAME = "test-max-fusion"


class MaxFusion(FusionOp):
    """Elementwise maximum: a new operator written against the common interface."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.maximum(a, b)

    def out_channels(self, a_channels: int, b_channels: int) -> int:
        return a_channels


@pytest.fixture
def temp_strategy() -> Iterator[str]:
    """Register a throw-away strategy for one test and always remove it afterwards."""

    @register_strategy(TEST_NAME, description="elementwise max of the two feature maps")
    def build(backbone: BackboneSpec, num_classes: int) -> nn.Module:
        c = backbone.out_channels
        return TwoStreamModel(conv_stem(backbone), conv_stem(backbone), MaxFusion(), map_head(backbone, c, num_classes))

    try:
        yield TEST_NAME
    finally:
        unregister_strategy(TEST_NAME)


def test_backbones() -> None:
    assert BACKBONES == ("seed", "lab")


def test_registering_a_strategy_makes_it_available(temp_strategy: str) -> None:
    assert strategy_names()[-1] == temp_strategy
    assert get_strategy(temp_strategy).modalities == ("rgb", "lidar")
    with torch.device("meta"):
        model = create_model(temp_strategy, "lab", num_classes=3)
        logits = model(torch.zeros(2, 4, 64, 64), torch.zeros(2, 4, 64, 64))
    assert logits.shape == (2, 3)
    rows = describe_strategies("seed")
    assert [r["name"] for r in rows] == strategy_names()


def test_unregistered_strategy_is_gone(temp_strategy: str) -> None:
    unregister_strategy(temp_strategy)
    assert temp_strategy not in strategy_names()
    with pytest.raises(BadInputError):
        create_model(temp_strategy)


def test_duplicate_registration_raises(temp_strategy: str) -> None:
    with pytest.raises(ValueError, match="already registered"):

        @register_strategy(temp_strategy, description="again")
        def build(backbone: BackboneSpec, num_classes: int) -> nn.Module:  # pragma: no cover
            raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        register_strategy("late", description="shadowing a built-in")(lambda bb, n: nn.Module())


def test_unknown_modality_is_refused() -> None:
    with pytest.raises(ValueError, match="modalities"):
        register_strategy("test-bad-modality", description="x", modalities=("thermal",))
    assert "test-bad-modality" not in strategy_names()


def test_unknown_strategy_lists_the_known_ones() -> None:
    with pytest.raises(BadInputError) as info:
        create_model("latte")
    message = str(info.value)
    assert "'latte'" in message
    for name in strategy_names():
        assert name in message
    assert info.value.exit_code == 2


def test_unknown_backbone_lists_the_known_ones() -> None:
    with pytest.raises(BadInputError) as info:
        create_model("late", backbone="resnet")
    assert "'resnet'" in str(info.value)
    assert all(bb in str(info.value) for bb in BACKBONES)


@pytest.mark.parametrize("num_classes", [0, -1, 2.0, True])
def test_bad_num_classes(num_classes) -> None:
    with pytest.raises(BadInputError, match="num_classes"):
        create_model("late", num_classes=num_classes)


def test_builder_breaking_the_naming_contract_fails() -> None:
    @register_strategy("test-badly-named", description="top-level module not named encoder/fusion/head")
    def build(backbone: BackboneSpec, num_classes: int) -> nn.Module:
        model = nn.Module()
        model.encoder = nn.Linear(2, 2)
        model.classifier = nn.Linear(2, num_classes)
        return model

    try:
        with pytest.raises(RunFailedError, match="classifier"):
            create_model("test-badly-named")
    finally:
        unregister_strategy("test-badly-named")


def test_describe_strategies_rows() -> None:
    rows = describe_strategies("all")
    assert [(r["name"], r["backbone"]) for r in rows] == [(n, bb) for bb in BACKBONES for n in strategy_names()]
    late = rows[0]
    assert late["params"] == 13_147_202 == late["trainable_params"]
    assert late["encoder_params"] + late["fusion_params"] + late["head_params"] == late["params"]
    assert late["flops_per_sample"] == 132_965_800
    by_key = {(r["name"], r["backbone"]): r for r in rows}
    assert by_key["rgb-only", "seed"]["modalities"] == ["rgb"]
    # The lab backbone is wider in the convs but much smaller in the MLP.
    assert by_key["late", "lab"]["flops_per_sample"] > late["flops_per_sample"]
    assert by_key["late", "lab"]["params"] < late["params"]


def test_describe_strategies_unknown_backbone() -> None:
    with pytest.raises(BadInputError, match="known backbones: seed, lab, all"):
        describe_strategies("tiny")
