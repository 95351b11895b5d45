"""The literature's fusion strategies (``fusioncli.models.zoo``) on both backbones: registration,
shapes, gradients into every parameter (and only registered ones), one Adam step, channels_last
+ bf16, parameter counts by hand, FLOPs; and each operator against its paper's equation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fusioncli.models.zoo  # noqa: F401  (registers the strategies until the package imports it)
from fusioncli.models import (
    BACKBONES,
    create_model,
    describe_strategies,
    flops_per_sample,
    get_strategy,
    parameter_counts,
    strategy_names,
)
from fusioncli.models.fusion_zoo import (
    CrossAttentionFusion,
    FiLMFusion,
    GatedFusion,
    LogitAverage,
    LowRankFusion,
    MMTMFusion,
    TensorFusion,
)
from fusioncli.models.blocks import DecisionFusionModel

NEW = ["gmu", "tensor", "low-rank", "film", "mmtm", "cross-attention", "decision"]
CASES = [(name, bb) for bb in BACKBONES for name in NEW]
IDS = [f"{name}-{bb}" for name, bb in CASES]
B = 2

# What each builder's docstring must cite (the issue asks for the paper by name).
PAPERS = {
    "gmu": "Arevalo",
    "tensor": "Zadeh",
    "low-rank": "Liu",
    "film": "Perez",
    "mmtm": "Joze",
    "cross-attention": "MulT",
    "decision": "logits",
}


def conv(i: int, o: int) -> int:
    return i * o * 9 + o


def lin(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


STEMS = {
    "seed": conv(4, 25) + conv(25, 50) + conv(50, 100),
    "lab": conv(4, 50) + conv(50, 100) + conv(100, 200) + conv(200, 200),
}
EMBEDDERS = {
    "seed": STEMS["seed"] + lin(6400, 1000) + lin(1000, 100) + lin(100, 100),
    "lab": STEMS["lab"] + lin(3200, 100) + lin(100, 100),
}
CHANNELS = {"seed": 100, "lab": 200}
TOKENS = {"seed": 64, "lab": 16}


def map_head(bb: str, channels: int, classes: int = 2) -> int:
    if bb == "seed":
        return lin(channels * 64, 1000) + lin(1000, 100) + lin(100, classes)
    return lin(channels * 16, 100) + lin(100, classes)


def attention_block(d: int) -> int:
    # q, kv, out projections; three LayerNorms (query, context, FFN input); FFN d -> 2d -> d.
    return lin(d, d) + lin(d, 2 * d) + lin(d, d) + 3 * (2 * d) + lin(d, 2 * d) + lin(2 * d, d)


def expected_parts(name: str, bb: str) -> tuple[int, int, int]:
    """(encoder, fusion, head) parameters of strategy ``name`` on ``bb``, from the layer list."""
    c = CHANNELS[bb]
    two_embedders, two_stems = 2 * EMBEDDERS[bb], 2 * STEMS[bb]
    return {
        "gmu": (two_embedders, 2 * lin(100, 100, bias=False) + lin(200, 100, bias=False), lin(100, 50) + lin(50, 2)),
        "tensor": (two_embedders, lin(101 * 101, 50), lin(50, 2)),
        "low-rank": (two_embedders, 2 * 4 * 101 * 50 + 4 + 50, lin(50, 2)),
        "film": (two_stems, lin(c, 2 * c), map_head(bb, c)),
        "mmtm": (two_stems, lin(2 * c, c) + 2 * lin(c, c), map_head(bb, 2 * c)),
        "cross-attention": (
            two_stems,
            2 * lin(c, 64) + 2 * TOKENS[bb] * 64 + 2 * attention_block(64),
            map_head(bb, 128),
        ),
        "decision": (two_stems, 0, 2 * map_head(bb, c)),
    }[name]


@pytest.fixture(scope="module")
def built() -> dict[tuple[str, str], nn.Module]:
    """Each new (strategy, backbone) built once for this module on the CPU."""
    torch.manual_seed(0)
    return {case: create_model(*case) for case in CASES}


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Uniform RGBA and spread-out XYZA: enough variation that no gate starts saturated.
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(B, 4, 64, 64, generator=g)
    xyza = torch.randn(B, 4, 64, 64, generator=g) * 0.5
    return rgb, xyza, torch.tensor([0, 1])


def _graph_leaves(output: torch.Tensor) -> list[torch.Tensor]:
    """Every leaf tensor that requires grad and feeds ``output`` (walks the autograd graph)."""
    leaves, seen, stack = [], set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if hasattr(node, "variable"):  # AccumulateGrad: the node that writes a leaf's .grad
            leaves.append(node.variable)
        stack.extend(nxt for nxt, _ in node.next_functions)
    return leaves


def gradient_problems(model: nn.Module, rgb: torch.Tensor, xyza: torch.Tensor, labels: torch.Tensor) -> list[str]:
    """One backward pass; every way a parameter would silently not train, one line each.

    A registered parameter without a non-zero gradient, and a trainable tensor that feeds the
    loss but is not registered (so ``model.parameters()`` -- the optimizer -- never sees it).
    """
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(rgb, xyza), labels)
    loss.backward()
    problems = [
        f"{n}: no gradient" for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    registered = {id(p) for p in model.parameters()}
    problems += [f"unregistered {tuple(t.shape)}" for t in _graph_leaves(loss) if id(t) not in registered]
    return problems


def test_registered_after_the_builtins_with_their_papers() -> None:
    names = strategy_names()
    first = names.index("lidar-only") + 1  # the last built-in
    assert names[first : first + len(NEW)] == NEW
    for name, cite in PAPERS.items():
        spec = get_strategy(name)
        assert spec.modalities == ("rgb", "lidar")
        assert cite in (spec.builder.__doc__ or ""), name


@pytest.mark.parametrize(("name", "backbone"), CASES, ids=IDS)
def test_forward_shape_and_finite(built, name: str, backbone: str) -> None:
    rgb, xyza, _ = _batch()
    with torch.no_grad():
        logits = built[name, backbone](rgb, xyza)
    assert logits.shape == (B, 2) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("name", "backbone"), CASES, ids=IDS)
def test_every_parameter_trains_and_one_adam_step_changes_the_output(built, name: str, backbone: str) -> None:
    model = built[name, backbone].train()
    rgb, xyza, labels = _batch(seed=1)
    with torch.no_grad():
        before_logits = model(rgb, xyza)
    assert gradient_problems(model, rgb, xyza, labels) == []
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.optim.Adam(model.parameters(), lr=1e-4).step()
    unchanged = [n for n, p in model.named_parameters() if torch.equal(before[n], p.detach())]
    assert not unchanged, f"Adam did not update {unchanged}"
    with torch.no_grad():
        after_logits = model(rgb, xyza)
    assert (after_logits - before_logits).abs().max() > 1e-6


@pytest.mark.parametrize(("name", "backbone"), CASES, ids=IDS)
def test_channels_last_and_bf16_autocast(built, name: str, backbone: str) -> None:
    model = copy.deepcopy(built[name, backbone]).eval()
    rgb, xyza, _ = _batch(seed=2)
    with torch.no_grad():
        reference = model(rgb, xyza)
        model = model.to(memory_format=torch.channels_last)
        rgb_cl = rgb.contiguous(memory_format=torch.channels_last)
        xyza_cl = xyza.contiguous(memory_format=torch.channels_last)
        channels_last = model(rgb_cl, xyza_cl)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(rgb_cl, xyza_cl)
    torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-5)
    assert bf16.shape == (B, 2) and bf16.dtype == torch.bfloat16
    # Largest bf16 error measured: 8.7e-4 (cross-attention, lab, logits ~0.1); others <= 3e-4.
    torch.testing.assert_close(bf16.float(), reference, rtol=0.05, atol=5e-3)


@pytest.mark.parametrize(("name", "backbone"), CASES, ids=IDS)
def test_both_modalities_reach_the_output(built, name: str, backbone: str) -> None:
    model = built[name, backbone]
    rgb, xyza, _ = _batch(seed=3)
    with torch.no_grad():
        full = model(rgb, xyza)
        assert not torch.allclose(full, model(torch.zeros_like(rgb), xyza))
        assert not torch.allclose(full, model(rgb, torch.zeros_like(xyza)))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_three_classes(backbone: str) -> None:
    rgb, xyza, _ = _batch(seed=4)
    for name in NEW:
        model = create_model(name, backbone, num_classes=3)
        with torch.no_grad():
            assert model(rgb, xyza).shape == (B, 3), name


@pytest.mark.parametrize(("name", "backbone"), CASES, ids=IDS)
def test_parameter_counts_match_the_layer_list(name: str, backbone: str) -> None:
    encoder, fusion, head = expected_parts(name, backbone)
    with torch.device("meta"):
        counts = parameter_counts(create_model(name, backbone))
    assert counts == {
        "total": encoder + fusion + head,
        "trainable": encoder + fusion + head,
        "encoder": encoder,
        "fusion": fusion,
        "head": head,
    }


def test_seed_parameter_counts_literal() -> None:
    # Plain numbers, so a wrong helper above cannot hide a wrong model.
    expected = {
        "gmu": 13_182_202,
        "tensor": 13_647_252,
        "low-rank": 13_177_606,
        "film": 6_636_152,
        "mmtm": 13_056_252,
        "cross-attention": 8_496_272,
        "decision": 13_117_254,
    }
    with torch.device("meta"):
        got = {name: parameter_counts(create_model(name, "seed"))["total"] for name in expected}
    assert got == expected


def test_cross_attention_flops_by_hand_and_on_meta(built) -> None:
    # The attention is written with matmuls so the FLOP counter sees it: stems + fusion + head.
    n, d, c = 64, 64, 100
    stem = 2 * (4 * 25 * 9 * 64 * 64 + 25 * 50 * 9 * 32 * 32 + 50 * 100 * 9 * 16 * 16)
    per_direction = 2 * n * (d * d + 2 * d * d + d * d + 2 * d * 2 * d) + 2 * 2 * n * n * d
    fusion = 2 * (2 * n * c * d) + 2 * per_direction
    head = 2 * (128 * 64 * 1000 + 1000 * 100 + 100 * 2)
    with torch.device("meta"):
        meta_model = create_model("cross-attention", "seed")
    assert flops_per_sample(meta_model) == flops_per_sample(built["cross-attention", "seed"])
    assert flops_per_sample(meta_model) == 2 * stem + fusion + head


def test_listed_with_sizes_on_both_backbones() -> None:
    rows = {(r["name"], r["backbone"]): r for r in describe_strategies("all")}
    for name, bb in CASES:
        row = rows[name, bb]
        assert row["params"] == sum(expected_parts(name, bb))
        assert row["flops_per_sample"] > 0
        assert " lab " not in row["description"]  # the strategies CLI test relies on it


# --- The gradient check can fail: MultiBench's low-rank bug, reproduced ---------------------------


class _PlainListLowRank(LowRankFusion):
    """LMF with its factors in a plain Python list, as MultiBench has them: unregistered."""

    def __init__(self, *args: int, **kwargs: int) -> None:
        super().__init__(*args, **kwargs)
        factors = [nn.Parameter(f.detach().clone()) for f in self.factors]
        del self.factors
        self.factors = factors  # a list attribute, invisible to named_parameters()


def test_plain_list_factors_are_caught(built) -> None:
    good = built["low-rank", "lab"]
    broken = copy.deepcopy(good)
    broken.fusion = _PlainListLowRank(100, 100, 50, rank=4)
    rgb, xyza, labels = _batch(seed=5)

    # The real operator registers its factors; the broken one's parameter count misses them.
    assert {n for n, _ in good.fusion.named_parameters()} == {"factors.0", "factors.1", "rank_weights", "bias"}
    assert parameter_counts(good)["fusion"] == 2 * 4 * 101 * 50 + 4 + 50
    assert parameter_counts(broken)["fusion"] == 4 + 50

    # The model still runs, and the check used for every strategy names the two lost factors.
    assert gradient_problems(broken, rgb, xyza, labels) == ["unregistered (4, 101, 50)"] * 2
    assert gradient_problems(good, rgb, xyza, labels) == []

    # ... which is why it matters: the optimizer never moves them.
    factors_before = [f.detach().clone() for f in broken.fusion.factors]
    torch.optim.Adam(broken.parameters(), lr=1e-2).step()
    assert all(torch.equal(a, f) for a, f in zip(factors_before, broken.fusion.factors, strict=True))


def test_a_parameter_without_gradient_is_caught(built) -> None:
    model = copy.deepcopy(built["gmu", "lab"])
    model.fusion.unused = nn.Parameter(torch.ones(3))  # registered but not in the forward pass
    rgb, xyza, labels = _batch(seed=6)
    assert gradient_problems(model, rgb, xyza, labels) == ["fusion.unused: no gradient"]


def test_gates_are_not_saturated_on_the_test_inputs(built) -> None:
    # The gradient test is only meaningful if sigmoid gates sit away from 0 and 1.
    rgb, xyza, _ = _batch(seed=1)
    with torch.no_grad():
        gmu = built["gmu", "seed"]
        a, b = gmu.encoder_rgb(rgb), gmu.encoder_lidar(xyza)
        z = torch.sigmoid(gmu.fusion.gate(torch.cat((a, b), dim=1)))
        assert 0.05 < z.min() and z.max() < 0.95
        mmtm = built["mmtm", "seed"]
        scales = mmtm.fusion.excitations(mmtm.encoder_rgb(rgb), mmtm.encoder_lidar(xyza))
        assert all(0.1 < s.min() and s.max() < 1.9 for s in scales)


# --- Each operator against its paper's equation ---------------------------------------------------


def test_low_rank_is_tensor_fusion_with_a_rank_r_weight() -> None:
    # LMF's claim: its output equals TFN's projection with W = sum_i w_i W_a^(i) (x) W_b^(i).
    torch.manual_seed(0)
    lmf = LowRankFusion(5, 3, 4, rank=2)
    nn.init.normal_(lmf.bias)
    tfn = TensorFusion(5, 3, 4)
    with torch.no_grad():
        tfn.projection.weight.copy_(lmf.full_weight())
        tfn.projection.bias.copy_(lmf.bias)
    a, b = torch.randn(6, 5), torch.randn(6, 3)
    torch.testing.assert_close(lmf(a, b), tfn(a, b), rtol=1e-5, atol=1e-6)
    assert torch.linalg.matrix_rank(lmf.full_weight()[0].view(6, 4)) <= 2


def test_tensor_fusion_keeps_unimodal_terms() -> None:
    a, b = torch.randn(2, 5), torch.randn(2, 3)
    z = TensorFusion(5, 3, 4).outer(a, b)
    assert z.shape == (2, 6, 4)
    torch.testing.assert_close(z[:, :5, :3], a[:, :, None] * b[:, None, :])
    torch.testing.assert_close(z[:, :5, 3], a)
    torch.testing.assert_close(z[:, 5, :3], b)
    assert torch.equal(z[:, 5, 3], torch.ones(2))


def test_gmu_mixes_the_two_hidden_states() -> None:
    torch.manual_seed(0)
    gmu = GatedFusion(5, 3, hidden=4)
    a, b = torch.randn(6, 5), torch.randn(6, 3)
    a[:, 0] = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])  # well away from 0: the gate below saturates
    h_a, h_b = torch.tanh(gmu.hidden_a(a)), torch.tanh(gmu.hidden_b(b))
    with torch.no_grad():
        gmu.gate.weight.fill_(0.0)  # z = 1/2: the plain mean
        torch.testing.assert_close(gmu(a, b), (h_a + h_b) / 2)
        gmu.gate.weight.fill_(0.0)
        gmu.gate.weight[:, 0] = 1e4  # z -> 1 where a[:, 0] > 0, -> 0 where it is < 0
        expected = torch.where(a[:, :1] > 0, h_a, h_b)
        torch.testing.assert_close(gmu(a, b), expected)
    assert gmu.out_channels(5, 3) == 4


def test_film_scales_and_shifts_the_rgb_map_per_channel() -> None:
    film = FiLMFusion(3, 2)
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4)
    with torch.no_grad():
        film.generator.weight.zero_()
        film.generator.bias.zero_()
        torch.testing.assert_close(film(a, b), a)  # gamma = 1, beta = 0
        film.generator.bias.copy_(torch.tensor([1.0, 0.0, -2.0, 0.5, 0.5, 0.5]))
        torch.testing.assert_close(film(a, b), a * torch.tensor([2.0, 1.0, -1.0])[None, :, None, None] + 0.5)
        nn.init.normal_(film.generator.weight)
        gamma, beta = film.modulation(b)
        torch.testing.assert_close(film(a, b), gamma * a + beta)
        assert not torch.allclose(film(a, b), film(a, b + 1))  # LiDAR conditions RGB
    assert film.out_channels(3, 2) == 3


def test_mmtm_rescales_each_map_channel_wise_within_0_and_2() -> None:
    torch.manual_seed(0)
    mmtm = MMTMFusion(3, 5)
    a, b = torch.rand(2, 3, 4, 4) + 0.5, torch.rand(2, 5, 4, 4) + 0.5
    out = mmtm(a, b)
    assert out.shape == (2, 8, 4, 4) and mmtm.out_channels(3, 5) == 8
    ratio = out / torch.cat((a, b), dim=1)
    # One scale per sample and channel, the same at every position, strictly inside (0, 2).
    torch.testing.assert_close(ratio, ratio[:, :, :1, :1].expand_as(ratio))
    assert 0 < ratio.min() and ratio.max() < 2
    # The joint squeeze lets the LiDAR map change the RGB map's scales (the "transfer").
    assert not torch.allclose(mmtm(a, b)[:, :3], mmtm(a, b * 2)[:, :3])
    assert mmtm.squeeze.out_features == 2 * (3 + 5) // 4


def test_cross_attention_reads_the_other_modality() -> None:
    torch.manual_seed(0)
    attn = CrossAttentionFusion(3, 5, tokens=16, dim=8, heads=2).eval()
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    with torch.no_grad():
        out = attn(a, b)
        assert out.shape == (2, 16, 4, 4) and attn.out_channels(3, 5) == 16
        # The RGB half attends to LiDAR tokens: changing only LiDAR changes it, at every position.
        changed = attn(a, torch.randn(2, 5, 4, 4))
        assert ((out[:, :8] - changed[:, :8]).abs().amax(dim=1) > 0).all()
        # Without attention the RGB half would be the projected tokens plus the FFN of them; with
        # the attention branch zeroed the RGB half no longer depends on LiDAR at all.
        attn.a_from_b.attention.out.weight.zero_()
        attn.a_from_b.attention.out.bias.zero_()
        torch.testing.assert_close(attn(a, b)[:, :8], attn(a, torch.randn(2, 5, 4, 4))[:, :8])
        # Tokens return to their own position: the RGB half at (i, j) is a function of a[:, :, i, j].
        a2 = a.clone()
        a2[:, :, 0, 0] += 1
        moved = (attn(a2, b)[:, :8] - attn(a, b)[:, :8]).abs().amax(dim=1)
        assert moved[:, 0, 0].min() > 0 and moved.flatten(1)[:, 1:].max() == 0
    with pytest.raises(ValueError, match="16 positions"):
        attn(torch.randn(2, 3, 2, 2), torch.randn(2, 5, 2, 2))


def test_logit_average_and_decision_model(built) -> None:
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(LogitAverage()(a, b), (a + b) / 2)
    with pytest.raises(ValueError, match="class counts"):
        LogitAverage().out_channels(2, 3)
    model = built["decision", "lab"]
    assert isinstance(model, DecisionFusionModel)
    rgb, xyza, _ = _batch(seed=7)
    with torch.no_grad():
        logits_rgb, logits_lidar = model.modality_logits(rgb, xyza)
        torch.testing.assert_close(model(rgb, xyza), (logits_rgb + logits_lidar) / 2)


@pytest.mark.parametrize(
    "op", [GatedFusion(4, 4, 4), TensorFusion(4, 4, 2), LowRankFusion(4, 4, 2)], ids=["gmu", "tensor", "low-rank"]
)
def test_vector_operators_reject_feature_maps(op) -> None:
    with pytest.raises(ValueError, match="vectors"):
        op(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3))


@pytest.mark.parametrize("op", [FiLMFusion(4, 4), MMTMFusion(4, 4)], ids=["film", "mmtm"])
def test_map_operators_reject_vectors(op) -> None:
    with pytest.raises(ValueError, match="feature maps"):
        op(torch.randn(2, 4), torch.randn(2, 4))


def test_operators_check_channel_counts() -> None:
    with pytest.raises(ValueError, match="built for 4 and 4"):
        MMTMFusion(4, 4).out_channels(4, 5)
