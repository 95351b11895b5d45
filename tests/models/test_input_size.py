"""Models sized for the data's images: BackboneSpec.input_size, create_model(input_size=...),
every strategy at other sizes, and the 64 x 64 / 2-class figures kept exactly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from fusioncli.errors import BadInputError, RunFailedError
from fusioncli.models import (
    BACKBONE_SPECS,
    BACKBONES,
    DEFAULT_INPUT_SIZE,
    BackboneSpec,
    create_model,
    describe_strategies,
    flops_per_sample,
    get_backbone,
    model_input_size,
    parameter_counts,
    register_strategy,
    strategy_names,
    unregister_strategy,
)
from fusioncli.models.backbones import as_input_size
from fusioncli.models.blocks import UnimodalModel, conv_stem, map_head
from fusioncli.models.check import check_strategy

# `fusioncli strategies --backbone all --format json` before sizes followed the data (64 x 64,
# 2 classes): (params, forward FLOPs per sample). Every one must stay exactly as it was.
BEFORE: dict[tuple[str, str], tuple[int, int]] = {
    ("late", "seed"): (13_147_202, 132_965_800),
    ("intermediate-concat", "seed"): (13_015_952, 132_706_000),
    ("intermediate-add", "seed"): (6_615_952, 119_906_000),
    ("intermediate-multiply", "seed"): (6_615_952, 119_906_000),
    ("early", "seed"): (6_559_527, 73_826_000),
    ("rgb-only", "seed"): (6_558_627, 66_453_200),
    ("lidar-only", "seed"): (6_558_627, 66_453_200),
    ("gmu", "seed"): (13_182_202, 133_035_800),
    ("tensor", "seed"): (13_647_252, 133_965_900),
    ("low-rank", "seed"): (13_177_606, 133_027_000),
    ("film", "seed"): (6_636_152, 119_946_000),
    ("mmtm", "seed"): (13_056_252, 132_786_000),
    ("cross-attention", "seed"): (8_496_272, 135_614_160),
    ("decision", "seed"): (13_117_254, 132_906_400),
    ("late", "lab"): (1_845_252, 491_631_400),
    ("intermediate-concat", "lab"): (1_815_002, 491_571_600),
    ("intermediate-add", "lab"): (1_495_002, 490_931_600),
    ("intermediate-multiply", "lab"): (1_495_002, 490_931_600),
    ("early", "lab"): (909_452, 260_531_600),
    ("rgb-only", "lab"): (907_652, 245_786_000),
    ("lidar-only", "lab"): (907_652, 245_786_000),
    ("gmu", "lab"): (1_880_252, 491_701_400),
    ("tensor", "lab"): (2_345_302, 492_631_500),
    ("low-rank", "lab"): (1_875_656, 491_692_600),
    ("film", "lab"): (1_575_402, 491_091_600),
    ("mmtm", "lab"): (1_975_602, 491_891_600),
    ("cross-attention", "lab"): (1_474_778, 493_748_624),
    ("decision", "lab"): (1_815_304, 491_572_000),
}
BUILTINS = sorted({name for name, _ in BEFORE})
SIZES = [(32, 32), (48, 80), (128, 128)]


@pytest.fixture(autouse=True)
def _builtins_only() -> Iterator[None]:
    # Plugins another test left registered would join the "every strategy" loops below.
    extra = [n for n in strategy_names() if n not in BUILTINS]
    assert not extra, f"strategies registered by another test: {extra}"
    yield


# --------------------------------------------------------------------------- the spec


def test_presets_default_to_64_by_64() -> None:
    seed, lab = BACKBONE_SPECS["seed"], BACKBONE_SPECS["lab"]
    assert seed.input_size == lab.input_size == DEFAULT_INPUT_SIZE == (64, 64)
    assert (seed.out_shape, seed.out_size, seed.flat_features) == ((8, 8), 8, 6400)
    assert (lab.out_shape, lab.out_size, lab.flat_features) == ((4, 4), 4, 3200)
    assert (seed.min_input_size, lab.min_input_size) == (8, 16)


@pytest.mark.parametrize(
    ("backbone", "size", "out_shape"),
    [
        ("seed", (48, 80), (6, 10)),
        ("lab", (48, 80), (3, 5)),
        ("seed", (37, 45), (4, 5)),  # each MaxPool2 floors H and W separately: 37 -> 18 -> 9 -> 4
        ("lab", (16, 16), (1, 1)),  # the smallest the lab stem takes
        ("seed", (128, 128), (16, 16)),
    ],
)
def test_out_shape_follows_the_input(backbone: str, size: tuple[int, int], out_shape: tuple[int, int]) -> None:
    spec = get_backbone(backbone, size)
    assert spec.input_size == size and spec.out_shape == out_shape
    assert spec.out_positions == out_shape[0] * out_shape[1]
    assert spec.flat_features == spec.out_channels * spec.out_positions
    assert spec.channels == BACKBONE_SPECS[backbone].channels  # same convolutions at every size
    # What a stem really produces, for the builders that size layers from out_shape.
    with torch.device("meta"):
        out = conv_stem(spec)(torch.empty(1, 4, *size))
    assert tuple(out.shape[-2:]) == out_shape


def test_the_spec_is_frozen_and_at_replaces_it() -> None:
    seed = BACKBONE_SPECS["seed"]
    wide = seed.at((48, 80))
    assert wide is not seed and seed.input_size == (64, 64) and wide.name == "seed"
    assert seed.at(32) == seed.at((32, 32)) == get_backbone("seed", 32)
    assert get_backbone("seed") is seed  # the default size is the preset itself
    with pytest.raises(AttributeError):
        seed.input_size = (32, 32)  # type: ignore[misc]


def test_out_size_is_only_for_square_maps() -> None:
    with pytest.raises(ValueError, match=r"6x10 feature map.*out_shape"):
        _ = get_backbone("seed", (48, 80)).out_size


@pytest.mark.parametrize(
    ("backbone", "size", "shown", "minimum"),
    [("seed", 7, "7x7", "8x8"), ("seed", (64, 4), "64x4", "8x8"), ("lab", (15, 64), "15x64", "16x16")],
)
def test_an_input_too_small_for_the_pooling_names_the_size_and_the_minimum(
    backbone: str, size: int | tuple[int, int], shown: str, minimum: str
) -> None:
    with pytest.raises(BadInputError) as info:
        get_backbone(backbone, size)
    message = str(info.value)
    assert f"input size {shown}" in message and f"at least {minimum}" in message and repr(backbone) in message
    with pytest.raises(BadInputError, match=shown):
        create_model("late", backbone, 2, input_size=size)


@pytest.mark.parametrize("bad", [0, -3, (64,), (64, 64, 64), "64", True, (64, 64.0), None])
def test_bad_input_sizes_are_bad_input(bad: object) -> None:
    with pytest.raises(BadInputError, match="input size"):
        as_input_size(bad)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="input size"):
        create_model("rgb-only", input_size=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- 64 x 64 unchanged


def test_every_strategy_keeps_its_64_by_64_two_class_figures() -> None:
    rows = describe_strategies("all")
    got = {(r["name"], r["backbone"]): (r["params"], r["flops_per_sample"]) for r in rows}
    assert got == BEFORE
    assert {(tuple(r["input_size"]), r["num_classes"]) for r in rows} == {((64, 64), 2)}
    # The explicit default builds the same models.
    assert describe_strategies("all", 2, (64, 64)) == rows


def test_late_is_still_the_seeds_exact_model() -> None:
    with torch.device("meta"):
        late = create_model("late", "seed", 2)
        explicit = create_model("late", "seed", 2, input_size=(64, 64))
    assert parameter_counts(late)["total"] == parameter_counts(explicit)["total"] == 13_147_202
    assert [tuple(p.shape) for p in late.parameters()] == [tuple(p.shape) for p in explicit.parameters()]


def test_the_same_seed_initialises_the_same_weights_as_before() -> None:
    # Sizing through the spec adds no random draws: 64 x 64 models start from the same weights,
    # so runs trained before sizes varied reproduce.
    torch.manual_seed(51)
    a = create_model("cross-attention", "lab", 2)
    torch.manual_seed(51)
    b = create_model("cross-attention", "lab", 2, input_size=64)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


# --------------------------------------------------------------------------- other sizes


def _meta_step(name: str, backbone: str, size: tuple[int, int], num_classes: int = 3) -> list[str]:
    """Forward and backward on the meta device (shapes only, no compute): the problems found."""
    with torch.device("meta"):
        model = create_model(name, backbone, num_classes, input_size=size)
        rgb, xyza = torch.empty(2, 4, *size), torch.empty(2, 4, *size)
        labels = torch.zeros(2, dtype=torch.long)
    logits = model(rgb, xyza)
    if tuple(logits.shape) != (2, num_classes):
        return [f"{name}/{backbone} at {size}: logits {tuple(logits.shape)}"]
    nn.functional.cross_entropy(logits, labels).backward()
    return [f"{name}/{backbone} at {size}: {p} gets no gradient" for p, t in model.named_parameters() if t.grad is None]


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_every_strategy_builds_runs_and_trains_every_parameter_at(size: tuple[int, int]) -> None:
    problems = [p for bb in BACKBONES for name in BUILTINS for p in _meta_step(name, bb, size)]
    assert problems == []


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_contract_check_passes_on_real_numbers_at_a_non_square_size(backbone: str) -> None:
    # check_strategy: a real forward and backward (finite loss, a gradient for every parameter,
    # nothing trained outside the model), at 48 x 80 with 3 classes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: threads only add barriers on a shared machine
    try:
        problems = [p for name in BUILTINS for p in check_strategy(name, backbone, 3, input_size=(48, 80), batch=2)]
    finally:
        torch.set_num_threads(threads)
    assert problems == []


def test_figures_follow_the_size_and_the_class_count() -> None:
    rows = {(r["name"], r["backbone"]): r for r in describe_strategies("all", 4, (48, 80))}
    assert {tuple(r["input_size"]) for r in rows.values()} == {(48, 80)}
    late = rows["late", "seed"]
    # The seed's embedder flattens 100 x 6 x 10 = 6000 instead of 6400; the head ends in 4 classes.
    assert late["params"] == 13_147_202 - 2 * (400 * 1000) + 2 * 51
    assert late["flops_per_sample"] != BEFORE["late", "seed"][1]
    # cross-attention: one positional embedding (2 x 64 values) per position of the 6 x 10 map.
    xattn = rows["cross-attention", "seed"]
    with torch.device("meta"):
        square = create_model("cross-attention", "seed", 4)
    assert xattn["fusion_params"] == parameter_counts(square)["fusion"] + 2 * 64 * (60 - 64)


def test_the_model_remembers_its_input_size() -> None:
    with torch.device("meta"):
        wide = create_model("rgb-only", "lab", 2, input_size=(48, 80))
        default = create_model("rgb-only", "lab", 2, lidar_norm="nearest")
    assert model_input_size(wide) == (48, 80) and model_input_size(default) == (64, 64)
    assert model_input_size(nn.Linear(2, 2)) == (64, 64)  # built elsewhere: the size of old
    assert "fusioncli_input_size" not in dict(wide.named_parameters()) and not list(wide.buffers())
    # FLOPs are counted at the model's own size unless told otherwise.
    assert flops_per_sample(wide) == flops_per_sample(wide, (48, 80)) < flops_per_sample(default)


# --------------------------------------------------------------------------- plugins


def test_a_plugin_builder_gets_the_size_through_the_spec() -> None:
    seen: list[BackboneSpec] = []

    @register_strategy("test-sized-plugin", description="sizes its head from the spec", modalities=("rgb",))
    def build(backbone: BackboneSpec, num_classes: int) -> nn.Module:  # the two-argument contract
        seen.append(backbone)
        return UnimodalModel("rgb", conv_stem(backbone), map_head(backbone, backbone.out_channels, num_classes))

    try:
        assert check_strategy("test-sized-plugin", "seed", 3, input_size=(40, 24), batch=2) == []
    finally:
        unregister_strategy("test-sized-plugin")
    assert seen[-1].input_size == (40, 24) and seen[-1].out_shape == (5, 3)


def test_a_builder_that_assumes_64_by_64_fails_the_check_at_another_size() -> None:
    @register_strategy("test-fixed-64", description="hard-codes the 8 x 8 map", modalities=("rgb",))
    def build(backbone: BackboneSpec, num_classes: int) -> nn.Module:
        head = nn.Sequential(nn.Flatten(), nn.Linear(100 * 8 * 8, num_classes))
        return UnimodalModel("rgb", conv_stem(backbone), head)

    try:
        assert check_strategy("test-fixed-64", "seed", 2, batch=2) == []
        (problem,) = check_strategy("test-fixed-64", "seed", 2, input_size=(48, 80), batch=2)
    finally:
        unregister_strategy("test-fixed-64")
    assert "forward on a batch of shape (2, 4, 48, 80) fails" in problem


def test_a_builder_failing_at_a_size_is_reported_with_the_size() -> None:
    @register_strategy("test-square-only", description="uses out_size", modalities=("rgb",))
    def build(backbone: BackboneSpec, num_classes: int) -> nn.Module:
        side = backbone.out_size  # raises for a non-square map
        head = nn.Sequential(nn.Flatten(), nn.Linear(backbone.out_channels * side * side, num_classes))
        return UnimodalModel("rgb", conv_stem(backbone), head)

    try:
        with pytest.raises(ValueError, match="out_shape"):
            create_model("test-square-only", input_size=(48, 80))
        (problem,) = check_strategy("test-square-only", "seed", 2, input_size=(48, 80))
    finally:
        unregister_strategy("test-square-only")
    assert problem.startswith("test-square-only: does not build for 48x80 inputs:")


def test_a_plugin_failing_at_a_size_names_its_file() -> None:
    # A plugin's builder error becomes RunFailedError naming the plugin (registry contract).
    from fusioncli.models.registry import PluginSource, registering_from

    with registering_from(PluginSource(file="/tmp/square_plugin.py", sha256="0" * 64)):

        @register_strategy("test-square-plugin", description="uses out_size", modalities=("rgb",))
        def build(backbone: BackboneSpec, num_classes: int) -> nn.Module:
            return nn.Linear(backbone.out_size, num_classes)

    try:
        with pytest.raises(RunFailedError, match=r"/tmp/square_plugin\.py failed to build: ValueError"):
            create_model("test-square-plugin", input_size=(48, 80))
    finally:
        unregister_strategy("test-square-plugin")
