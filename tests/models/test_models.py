"""Every strategy on both backbones: shapes, one training step, gradients everywhere, precision
and memory formats; exact parameter counts of the seed's models; FLOPs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fusioncli.models import BACKBONES, create_model, flops_per_sample, parameter_counts, strategy_names
from fusioncli.models.fusion import AddFusion, ConcatFusion, MultiplyFusion

BUILTINS = ["late", "intermediate-concat", "intermediate-add", "intermediate-multiply", "early", "rgb-only", "lidar-only"]
CASES = [(name, bb) for bb in BACKBONES for name in BUILTINS]
IDS = [f"{name}-{bb}" for name, bb in CASES]
B = 3


def conv(i: int, o: int) -> int:
    """Parameters of Conv2d(i, o, 3): weights + bias."""
    return i * o * 9 + o


def lin(i: int, o: int) -> int:
    """Parameters of Linear(i, o): weights + bias."""
    return i * o + o


# The seed's layer list, counted by hand (DESIGN.md): stem 25-50-100, MLP 6400-1000-100-out.
SEED_STEM = conv(4, 25) + conv(25, 50) + conv(50, 100)  # 57,325
SEED_EMBEDDER = SEED_STEM + lin(6400, 1000) + lin(1000, 100) + lin(100, 100)  # 6,568,525
SEED_LATE_HEAD = lin(200, 50) + lin(50, 2)
# The lab backbone: stem 50-100-200-200, MLP 3200-100-out; map heads use the same MLP shape.
LAB_STEM = conv(4, 50) + conv(50, 100) + conv(100, 200) + conv(200, 200)
LAB_EMBEDDER = LAB_STEM + lin(3200, 100) + lin(100, 100)

EXPECTED = {
    # name, backbone: (encoder, fusion, head)
    ("late", "seed"): (2 * SEED_EMBEDDER, 0, SEED_LATE_HEAD),
    ("intermediate-concat", "seed"): (2 * SEED_STEM, 0, lin(200 * 64, 1000) + lin(1000, 100) + lin(100, 2)),
    ("intermediate-add", "seed"): (2 * SEED_STEM, 0, lin(100 * 64, 1000) + lin(1000, 100) + lin(100, 2)),
    ("intermediate-multiply", "seed"): (2 * SEED_STEM, 0, lin(100 * 64, 1000) + lin(1000, 100) + lin(100, 2)),
    ("early", "seed"): (conv(8, 25) + conv(25, 50) + conv(50, 100), 0, lin(6400, 1000) + lin(1000, 100) + lin(100, 2)),
    ("rgb-only", "seed"): (SEED_STEM, 0, lin(6400, 1000) + lin(1000, 100) + lin(100, 2)),
    ("lidar-only", "seed"): (SEED_STEM, 0, lin(6400, 1000) + lin(1000, 100) + lin(100, 2)),
    ("late", "lab"): (2 * LAB_EMBEDDER, 0, SEED_LATE_HEAD),
    ("intermediate-concat", "lab"): (2 * LAB_STEM, 0, lin(400 * 16, 100) + lin(100, 2)),
    ("intermediate-add", "lab"): (2 * LAB_STEM, 0, lin(200 * 16, 100) + lin(100, 2)),
    ("intermediate-multiply", "lab"): (2 * LAB_STEM, 0, lin(200 * 16, 100) + lin(100, 2)),
    ("early", "lab"): (LAB_STEM + conv(8, 50) - conv(4, 50), 0, lin(3200, 100) + lin(100, 2)),
    ("rgb-only", "lab"): (LAB_STEM, 0, lin(3200, 100) + lin(100, 2)),
    ("lidar-only", "lab"): (LAB_STEM, 0, lin(3200, 100) + lin(100, 2)),
}


@pytest.fixture(scope="session")
def built_models() -> dict[tuple[str, str], nn.Module]:
    """Each (strategy, backbone) built once per session on the CPU (13 M-parameter models are
    not free on 2 cores). Tests that change a model's layout work on a copy."""
    torch.manual_seed(0)
    return {case: create_model(*case) for case in CASES}


def _batch(seed: int = 0, n: int = B) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(n, 4, 64, 64, generator=g)
    xyza = torch.randn(n, 4, 64, 64, generator=g) * 0.5
    labels = torch.tensor([0, 1, 1, 0][:n])
    return rgb, xyza, labels


def test_builtins_are_registered_in_order() -> None:
    assert strategy_names()[: len(BUILTINS)] == BUILTINS


@pytest.mark.parametrize(("name", "backbone"), CASES, ids=IDS)
def test_forward_shape_and_finite(built_models, name: str, backbone: str) -> None:
    rgb, xyza, _ = _batch()
    with torch.no_grad():
        logits = built_models[name, backbone](rgb, xyza)
    assert logits.shape == (B, 2)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("name", "backbone"), CASES, ids=IDS)
def test_every_parameter_gets_a_gradient_and_one_adam_step_lowers_the_loss(built_models, name, backbone) -> None:
    model = built_models[name, backbone]
    model.train()
    rgb, xyza, labels = _batch(seed=1)
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    opt.zero_grad()
    loss = loss_fn(model(rgb, xyza), labels)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient reaches {missing}"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    unchanged = [n for n, p in model.named_parameters() if torch.equal(before[n], p.detach())]
    assert not unchanged, f"Adam did not update {unchanged}"
    with torch.no_grad():
        after = loss_fn(model(rgb, xyza), labels)
    assert after.item() < loss.item()


@pytest.mark.parametrize(("name", "backbone"), CASES, ids=IDS)
def test_channels_last_and_bf16_autocast(built_models, name: str, backbone: str) -> None:
    model = copy.deepcopy(built_models[name, backbone]).eval()
    rgb, xyza, _ = _batch(seed=2)
    with torch.no_grad():
        reference = model(rgb, xyza)
        model = model.to(memory_format=torch.channels_last)
        rgb_cl = rgb.contiguous(memory_format=torch.channels_last)
        xyza_cl = xyza.contiguous(memory_format=torch.channels_last)
        channels_last = model(rgb_cl, xyza_cl)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(rgb_cl, xyza_cl)
    # channels_last must not change what the model computes (flatten order included).
    torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-5)
    assert bf16.shape == (B, 2) and bf16.dtype == torch.bfloat16
    assert torch.isfinite(bf16.float()).all()
    # Logits are ~0.1 at init; bf16 errors measured ~3e-4, so this margin still catches a broken path.
    torch.testing.assert_close(bf16.float(), reference, rtol=0.05, atol=5e-3)


@pytest.mark.parametrize(("name", "backbone"), CASES, ids=IDS)
def test_more_classes(name: str, backbone: str) -> None:
    # Shapes only: the meta device builds and runs without allocating or computing.
    with torch.device("meta"):
        model = create_model(name, backbone, num_classes=5)
        logits = model(torch.zeros(4, 4, 64, 64), torch.zeros(4, 4, 64, 64))
    assert logits.shape == (4, 5)


@pytest.mark.parametrize(("name", "backbone"), list(EXPECTED), ids=[f"{n}-{b}" for n, b in EXPECTED])
def test_parameter_counts_match_the_layer_list(name: str, backbone: str) -> None:
    encoder, fusion, head = EXPECTED[name, backbone]
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
    # The same figures as plain numbers, so a wrong helper above cannot hide a wrong model.
    expected = {
        "late": 13_147_202,
        "intermediate-concat": 13_015_952,
        "intermediate-add": 6_615_952,
        "intermediate-multiply": 6_615_952,
    }
    with torch.device("meta"):
        got = {name: parameter_counts(create_model(name, "seed"))["total"] for name in expected}
    assert got == expected


def test_unimodal_models_ignore_the_other_modality(built_models) -> None:
    rgb, xyza, _ = _batch(seed=3)
    with torch.no_grad():
        rgb_model, lidar_model = built_models["rgb-only", "seed"], built_models["lidar-only", "seed"]
        torch.testing.assert_close(rgb_model(rgb, xyza), rgb_model(rgb, torch.zeros_like(xyza)))
        torch.testing.assert_close(lidar_model(rgb, xyza), lidar_model(torch.zeros_like(rgb), xyza))
        assert not torch.allclose(rgb_model(rgb, xyza), rgb_model(torch.zeros_like(rgb), xyza))


def test_trainable_counts_follow_requires_grad() -> None:
    with torch.device("meta"):
        model = create_model("late", "seed")
    for p in model.encoder_rgb.parameters():
        p.requires_grad_(False)
    counts = parameter_counts(model)
    assert counts["total"] == 13_147_202
    assert counts["trainable"] == 13_147_202 - SEED_EMBEDDER


def test_parameter_counts_reject_parameters_outside_the_parts() -> None:
    model = nn.Module()
    model.encoder = nn.Linear(2, 2)
    model.classifier = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="classifier"):
        parameter_counts(model)


def test_flops_of_seed_late_fusion_by_hand() -> None:
    # A multiply-add is 2 FLOPs; convs at 64, 32 and 16 px, then the MLP, per modality.
    embedder = (
        2 * 4 * 25 * 9 * 64 * 64
        + 2 * 25 * 50 * 9 * 32 * 32
        + 2 * 50 * 100 * 9 * 16 * 16
        + 2 * (6400 * 1000 + 1000 * 100 + 100 * 100)
    )
    expected = 2 * embedder + 2 * (200 * 50 + 50 * 2)
    with torch.device("meta"):
        meta_model = create_model("late", "seed")
    assert flops_per_sample(meta_model) == expected == 132_965_800


def test_flops_on_meta_equal_flops_on_cpu(built_models) -> None:
    # describe_strategies counts on the meta device; it must agree with a real forward pass.
    for case in [("intermediate-concat", "seed"), ("early", "lab")]:
        with torch.device("meta"):
            meta_model = create_model(*case)
        assert flops_per_sample(meta_model) == flops_per_sample(built_models[case]) > 0


def test_flops_keep_train_mode(built_models) -> None:
    model = built_models["rgb-only", "lab"].train()
    flops_per_sample(model)
    assert model.training


def test_fusion_operators() -> None:
    a = torch.randn(2, 3, 4, 4)
    b = torch.randn(2, 3, 4, 4)
    assert ConcatFusion()(a, b).shape == (2, 6, 4, 4)
    assert ConcatFusion().out_channels(3, 5) == 8
    torch.testing.assert_close(AddFusion()(a, b), a + b)
    torch.testing.assert_close(MultiplyFusion()(a[:, :, 0, 0], b[:, :, 0, 0]), a[:, :, 0, 0] * b[:, :, 0, 0])
    assert AddFusion().out_channels(3, 3) == 3
    with pytest.raises(ValueError, match="equal channel"):
        MultiplyFusion().out_channels(3, 4)
