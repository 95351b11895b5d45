"""Stacked (batched) grid execution: equality with one-at-a-time training, grouping, executors."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import fields, replace

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from fusioncli.config import RunConfig
from fusioncli.data.dataset import PreparedData
from fusioncli.errors import BadInputError, RunFailedError
from fusioncli.models import create_model, register_strategy, strategy_names, unregister_strategy
from fusioncli.models.blocks import TwoStreamModel
from fusioncli.models.fusion import ConcatFusion
from fusioncli.record import RunRecord
from fusioncli.train import engine, loop
from fusioncli.machine import cpu_bf16_supported
from fusioncli.train.stacked import (
    ADAM_BETAS,
    StackedAdam,
    group_configs,
    lr_schedule,
    stack_key,
    train_stacked,
)

pytestmark = pytest.mark.numeric

HAS_MODALITY_DROPOUT = "modality_dropout" in {f.name for f in fields(RunConfig)}
needs_dropout_field = pytest.mark.skipif(not HAS_MODALITY_DROPOUT, reason="RunConfig has no modality_dropout yet")


def small_two_stream(num_classes: int, nan: bool = False) -> nn.Module:
    """A two-stream conv model small enough to train in float64 in a second (naming contract kept)."""

    def encoder() -> nn.Module:
        # pooled first: float64 convolutions on the CPU are slow at 64x64
        return nn.Sequential(nn.MaxPool2d(4), nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())

    head: nn.Module = nn.Sequential(nn.Linear(2 * 3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, num_classes))
    if nan:
        head = nn.Sequential(head, _Nan())
    return TwoStreamModel(encoder_rgb=encoder(), encoder_lidar=encoder(), fusion=ConcatFusion(), head=head)


class _Nan(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float("nan")


@pytest.fixture
def small_strategies() -> Iterator[None]:
    register_strategy("test-stack-small", description="small two-stream test model")(
        lambda bb, k: small_two_stream(k)
    )
    register_strategy("test-stack-nan", description="emits NaN logits")(lambda bb, k: small_two_stream(k, nan=True))
    yield
    unregister_strategy("test-stack-small")
    unregister_strategy("test-stack-nan")


def cfg(**kwargs) -> RunConfig:
    base = dict(
        strategy="test-stack-small", epochs=2, batch_size=5, device="cpu", precision="fp32", limit_per_class=8
    )
    return RunConfig(**{**base, **kwargs})


def max_weight_diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[n] - sb[n]).abs().max()) for n in sa)


def max_abs_weight(model: nn.Module) -> float:
    return max(float(p.detach().abs().max()) for p in model.parameters())


# --------------------------------------------------------------------------- error bounds
#
# Every tolerance below is computed from the computation it checks; none is tuned to a machine.
# The executors compute the same mathematics with different kernels (grouped vs plain
# convolutions, batched vs plain matmuls), so their sums run in different orders -- and so do
# one kernel's sums on two instruction sets (ATen and oneDNN pick kernels per ISA: AVX-512,
# AVX2, ...). What the order cannot change:
#
# * gamma(n, u) = n u / (1 - n u) bounds the relative error of a value computed with at most n
#   roundings of unit roundoff u, in any order, when no cancellation magnifies it (Higham,
#   Accuracy and Stability of Numerical Algorithms, 2nd ed., Lemma 3.1); two orders differ by
#   at most twice that.
# * Adam moves a weight by lr * |m^ / (sqrt(v^) + eps)| <= lr * adam_ratio_bound(t) per step,
#   whatever the gradients. A gradient whose terms cancel to about zero has no reliable sign
#   in float32 (rounding of ~1e-7 of its terms flips it), and Adam turns either sign into a
#   step of up to lr. So, in float32, the weights of two executors agree only to Adam's
#   envelope (float32_weight_bound), with no better bound to be had however the kernels sum.
#   Equality up to rounding is checked in float64 (float64_bounds: a flip would need a
#   gradient cancelling to ~1e-9 of its terms), and in float32 on what is well-conditioned:
#   the losses of identical weights on identical inputs (mean_ce_error_bound).

U32 = 2.0**-24  # unit roundoff of float32 (and of the float32 accumulators of bf16 kernels)
U64 = 2.0**-53
UBF16 = 2.0**-8  # a bf16-rounded value: 8 significant bits
U_TF32 = 2.0**-11  # an operand of a TF32 tensor-core product: 11 significant bits


def gamma(n: float, u: float) -> float:
    """Higham's gamma_n: relative error bound of n roundings of unit roundoff ``u``."""
    assert n * u < 0.5, f"{n:g} roundings at unit roundoff {u:g}: no useful bound"
    return n * u / (1 - n * u)


def adam_ratio_bound(t: int, betas: tuple[float, float] = ADAM_BETAS) -> float:
    """The largest |m^_t / sqrt(v^_t)| Adam can reach at step ``t``, whatever the gradients.

    m_t = (1-b1) sum_s b1^(t-s) g_s and v_t = (1-b2) sum_s b2^(t-s) g_s^2, so Cauchy-Schwarz on
    sum_s (b1/sqrt(b2))^(t-s) * sqrt(b2)^(t-s) g_s gives |m_t| <= (1-b1) sqrt(sum_{j<t}
    (b1^2/b2)^j) sqrt(v_t / (1-b2)); with the bias corrections, the value returned. It is 1 at
    t = 1 (the first step is lr * g / (|g| + eps)), 1.04 at t = 10, below 7.3 for every t.
    """
    b1, b2 = betas
    geometric = sum((b1 * b1 / b2) ** j for j in range(t))
    return (1 - b1) / (1 - b1**t) * math.sqrt((1 - b2**t) / (1 - b2)) * math.sqrt(geometric)


def adam_steps(config: RunConfig, n_train: int) -> list[tuple[float, int]]:
    """(learning rate, step number) of every optimiser step of ``config`` on ``n_train`` samples."""
    per_epoch = math.ceil(n_train / config.batch_size)
    return [(lr, e * per_epoch + i + 1) for e, lr in enumerate(lr_schedule(config)) for i in range(per_epoch)]


def adam_travel(config: RunConfig, n_train: int, u: float) -> float:
    """How far Adam can move one weight in a run: sum_t lr_t * adam_ratio_bound(t), plus the
    rounding of Adam's own arithmetic (m and v gather at most 3 roundings a step; the bias
    corrections, square root, eps, division and lr 6 more: relative gamma(5t + 6))."""
    return sum(lr * adam_ratio_bound(t) * (1 + gamma(5 * t + 6, u)) for lr, t in adam_steps(config, n_train))


def float32_weight_bound(config: RunConfig, n_train: int, max_weight: float, u: float = U32) -> float:
    """The largest difference between the weights of two runs of ``config`` that start from
    the same weights, whatever gradients each computes: Adam's envelope.

    Each run moves a weight by at most ``adam_travel``, in either direction (twice it), and each
    step's subtraction rounds by at most u |weight|, |weight| <= ``max_weight`` + the travel.
    """
    travel = adam_travel(config, n_train, u)
    return 2 * travel + 2 * len(adam_steps(config, n_train)) * u * (max_weight + travel)


def float64_bounds(config: RunConfig, record: RunRecord, max_weight: float) -> tuple[float, float]:
    """(weight tolerance, relative loss tolerance) for two float64 runs of ``config``.

    N bounds the roundings behind any number of the run, counted as one chain through all of
    them: ``flops_per_sample`` counts convolutions and matmuls (2 per multiply-add); a training
    sample costs that forward and twice that backward, and what the counter leaves out (bias
    adds, pooling sums, the loss) is less than one operation per counted multiply-add: 4 per
    training sample and 2 per validation sample, every epoch; Adam adds 10 per weight and step.
    Losses (sums of positive terms) then differ by at most 2 gamma(N). Each gradient is within
    gamma(N) of exact, so m^ moves by at most gamma(N) B_t sqrt(v^) (Cauchy-Schwarz as in
    adam_ratio_bound) and sqrt(v^) by gamma(N) of itself: a step by at most 2 gamma(N) lr_t B_t.
    Two runs differ by 4 gamma(N) times Adam's travel, plus the subtractions' rounding.

    This assumes no gradient cancels to within gamma(N) of its terms -- Adam would amplify
    that (see above); in float64 it needs a cancellation to about 1e-9, which random data and
    weights do not produce.
    """
    ds = record.dataset
    steps = adam_steps(config, ds.n_train)
    n = config.epochs * (4 * ds.n_train + 2 * ds.n_val) * record.flops_per_sample
    n += 10 * len(steps) * record.params["total"]
    g = gamma(n, U64)
    travel = adam_travel(config, ds.n_train, U64)
    return 4 * g * travel + 2 * len(steps) * U64 * (max_weight + travel), 2 * g


# Layers whose outputs carry rounding (dot products), and layers that compute exactly.
_ROUNDING_LAYERS = (nn.Conv2d, nn.Linear)
_EXACT_LAYERS = (nn.ReLU, nn.MaxPool2d, nn.Flatten, ConcatFusion)


def logit_error_bound(
    model: nn.Module, rgb: torch.Tensor, xyza: torch.Tensor, u: float, u_out: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, bound): |computed - exact| for every logit of ``model`` on a batch, to first order in u.

    For models of Conv2d and Linear layers joined by exact operations (ReLU, max pooling,
    flatten, concatenation). Layer l computes each output as a dot product of fan_in terms
    plus a bias, so its own rounding is at most e_l = (gamma(fan_in + 1, u) + u_out) *
    (|W_l| |a_l| + |b_l|), where ``u_out`` adds what rounds once more per output or product
    (a bf16-stored output: UBF16; TF32 tensor-core operands: 2 * U_TF32). Each e_l reaches
    the logits through the network's Jacobian: |dz| <= sum_l |dz/d out_l| e_l. First order: a
    ReLU or max-pool decision flipped by rounding needs a value within O(u) of a tie and then
    moves the output by O(u) itself, O(u^2) in all. Signed Jacobians keep the cancellation of
    later layers, which products of |W| (the textbook bound) discard: for ``late`` in float32
    this bound is 2% of the logits, the textbook one 2e4 times them. Evaluated in float64 on
    the model's own device, so the bound carries no float32 rounding of its own.
    """
    twin = copy.deepcopy(model).double().eval()
    for layer in twin.modules():
        if not list(layer.children()):
            assert isinstance(layer, _ROUNDING_LAYERS + _EXACT_LAYERS), f"no error bound for {type(layer).__name__}"
    outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record_error(layer: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        a = inputs[0].detach().abs()
        w, b = layer.weight.detach().abs(), None if layer.bias is None else layer.bias.detach().abs()
        if isinstance(layer, nn.Conv2d):
            fan_in = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
            magnitude = F.conv2d(a, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)
        else:
            fan_in = layer.in_features
            magnitude = F.linear(a, w, b)
        outputs.append((out, (gamma(fan_in + 1, u) + u_out) * magnitude))

    hooks = [m.register_forward_hook(record_error) for m in twin.modules() if isinstance(m, _ROUNDING_LAYERS)]
    device = next(twin.parameters()).device
    try:
        with torch.enable_grad():
            logits = twin(rgb.to(device, torch.float64), xyza.to(device, torch.float64))
            bound = torch.zeros_like(logits)
            for j in range(logits.shape[1]):
                # samples are independent (no batch statistics): the gradient of the batch's sum
                # of logit j holds each sample's own Jacobian row
                grads = torch.autograd.grad(logits[:, j].sum(), [o for o, _ in outputs], retain_graph=True)
                bound[:, j] = sum((g.abs() * e).flatten(1).sum(1) for g, (_, e) in zip(grads, outputs, strict=True))
    finally:
        for hook in hooks:
            hook.remove()
    return logits.detach(), bound


def mean_ce_error_bound(
    model: nn.Module, rgb: torch.Tensor, xyza: torch.Tensor, labels: torch.Tensor, u: float, u_out: float = 0.0
) -> float:
    """How far a computed mean cross-entropy of ``model`` on a batch can be from exact (first order).

    Logits within ``logit_error_bound`` move each sample's CE by at most sum_j |p_j - y_j| |dz_j|
    (its gradient is p - y). The CE itself, in float32 (fp32 even under bf16 autocast): subtract
    the max, K exponentials (<= 1 ulp each in PyTorch's vectorised exp), a K-term sum, a log
    (<= 1 ulp), two subtractions: at most gamma(K + 6, u) (1 + 4 spread + 4 log K), spread the
    range of the sample's logits. The batch's sum (all terms >= 0), scaled by its size:
    gamma(B + 2, u) relative. Two executors' values differ by at most twice the result.
    """
    logits, dz = logit_error_bound(model, rgb, xyza, u, u_out)
    labels = labels.to(logits.device)
    k = logits.shape[1]
    p = logits.softmax(dim=1)
    y = F.one_hot(labels, k).to(p.dtype)
    spread = logits.max(dim=1).values - logits.min(dim=1).values
    per_sample = ((p - y).abs() * dz).sum(dim=1) + gamma(k + 6, u) * (1 + 4 * spread + 4 * math.log(k))
    ce = F.cross_entropy(logits, labels, reduction="none")
    return float(per_sample.mean() + gamma(labels.numel() + 2, u) * ce.mean())


def plain_val_loss(model: nn.Module, work: PreparedData, config: RunConfig) -> float:
    """``model``'s validation loss as the loop evaluates it (one model, plain kernels)."""
    device = torch.device(config.resolve().device)
    val = engine.predict(
        model,
        work,
        device=device,
        precision=config.resolve().precision,
        batch_size=engine.eval_batch_size(device, config.batch_size),
        indices=work.val_indices,
    )
    return float(val.loss_sum) / work.val_indices.numel()


# --------------------------------------------------------------------------- equality


@pytest.mark.parametrize(
    ("seeds", "norms"),
    [
        ((1, 2, 3), {}),
        ((7, 7, 7), {}),
        ((1, 2, 3), {"lidar_norm": "nearest", "rgb_norm": "standard"}),
    ],
    ids=["own-order-per-member", "shared-order", "nearest-lidar-standard-rgb-inputs"],
)
def test_stacked_equals_separate_training_in_float64(
    small_strategies: None, float64: None, prepared: PreparedData, seeds: tuple[int, int, int], norms: dict
) -> None:
    configs = [
        cfg(lr=1e-2, scheduler="cosine", seed=seeds[0], **norms),
        cfg(lr=3e-3, scheduler="constant", seed=seeds[1], **norms),
        cfg(lr=3e-2, scheduler="cosine", seed=seeds[2], **norms),
    ]
    stacked = train_stacked(configs, prepared)
    assert len(stacked) == 3
    for config, result in zip(configs, stacked, strict=True):
        alone = loop.train_run(config, prepared)
        got, want = result.record, alone.record
        # 16 training samples in batches of 5: the last partial batch is kept, as in train_run
        assert got.dataset == want.dataset and got.dataset.n_train == 16
        assert got.run_id == want.run_id
        assert got.config == want.config
        assert set(got.to_json()) == set(want.to_json())
        assert set(want.timing) <= set(got.timing)
        assert len(got.history) == 2
        assert got.params == want.params and got.flops_per_sample == want.flops_per_sample
        weight_tol, loss_rel = float64_bounds(config, want, max_abs_weight(alone.model))
        # float64-sized bounds: one value passing through float32 (6e-8) would exceed them
        assert weight_tol < 1e-8 and loss_rel < 1e-8
        for g, w in zip(got.history, want.history, strict=True):
            assert g["epoch"] == w["epoch"]
            assert g["lr"] == w["lr"]  # bit-identical schedules
            assert g["train_loss"] == pytest.approx(w["train_loss"], rel=loss_rel, abs=0)
            assert g["val_loss"] == pytest.approx(w["val_loss"], rel=loss_rel, abs=0)
            # equal predictions: a flip needs a validation margin below loss_rel of the logits
            assert g["val_accuracy"] == w["val_accuracy"]
        assert got.val_accuracy == want.val_accuracy
        assert got.f1_macro == want.f1_macro
        assert max_weight_diff(result.model, alone.model) <= weight_tol
        assert not result.model.training
        # and training did move the weights (the comparison is not between two initialisations)
        torch.manual_seed(config.seed)
        init = create_model(config.strategy, config.backbone, 2)
        assert max_weight_diff(result.model, init) > 1e-3


@pytest.mark.slow
def test_stacked_real_strategy_matches_the_loop_in_float32(prepared: PreparedData) -> None:
    """The seed's late fusion, as trained in practice (fp32): what float32 rounding leaves equal.

    That the executors compute the same thing is checked in float64 above (same layer types);
    this checks the float32 kernels of a real model (grouped convolutions, channels_last,
    oneDNN) to bounds derived for float32 on any instruction set: the losses of the same
    weights on the same inputs, and Adam's envelope for the weights.
    """
    configs = [
        cfg(strategy="late", lr=lr, seed=seed, limit_per_class=4, epochs=2, batch_size=8)
        for lr, seed in ((1e-3, 5), (1e-4, 6))
    ]
    work = loop.run_data(configs[0], prepared)
    train_idx, val_idx = work.train_indices, work.val_indices
    for config, result in zip(configs, train_stacked(configs, prepared), strict=True):
        alone = loop.train_run(config, prepared)
        got, want = result.record, alone.record
        assert [r["lr"] for r in got.history] == [r["lr"] for r in want.history]
        # One step per epoch: epoch 1's training loss is a forward pass of the shared initial
        # weights (both executors seed and build them alike) on the same samples.
        assert want.dataset.n_train == train_idx.numel() == config.batch_size
        torch.manual_seed(config.seed)
        init = create_model(config.strategy, config.backbone, work.num_classes)
        tol = 2 * mean_ce_error_bound(init, *engine.batch_inputs(work, train_idx), work.labels[train_idx], U32)
        assert abs(got.history[0]["train_loss"] - want.history[0]["train_loss"]) <= tol
        # The record's validation loss (the stacked evaluation) against the loop's evaluation
        # of the same trained weights.
        tol = 2 * mean_ce_error_bound(result.model, *engine.batch_inputs(work, val_idx), work.labels[val_idx], U32)
        assert abs(got.val_loss - plain_val_loss(result.model, work, config)) <= tol
        # Trained weights: Adam's envelope (2 steps; see "error bounds").
        bound = float32_weight_bound(config, train_idx.numel(), max_abs_weight(alone.model))
        assert max_weight_diff(result.model, alone.model) <= bound


@pytest.mark.parametrize("strategy", strategy_names())
def test_every_strategy_runs_stacked(strategy: str) -> None:
    """vmap has a batching rule for every op of every registered model (checked on meta: no compute)."""
    for backbone in ("seed", "lab"):
        with torch.device("meta"):
            members = [create_model(strategy, backbone, 2) for _ in range(2)]
        params, buffers = stack_module_state(members)
        rgb = torch.empty(2, 3, 4, 64, 64, device="meta")

        def forward(p, b, r, x):
            return functional_call(members[0], (p, b), (r, x))

        out = vmap(forward)(params, buffers, rgb, rgb)
        grads = torch.autograd.grad(out.sum(), list(params.values()))
        assert out.shape == (2, 3, 2) and len(grads) == len(params)
        assert vmap(forward, in_dims=(0, 0, None, None))(params, buffers, rgb[0], rgb[0]).shape == (2, 3, 2)


# --------------------------------------------------------------------------- optimiser and schedules


def test_stacked_adam_is_torch_adam_with_a_learning_rate_per_member() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 2, 3, 3), (5,)]
    starts = [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(2)]
    lrs = [[1e-2, 1e-3], [5e-3, 1e-3], [0.0, 2e-3]]  # per step, per member; changed between steps
    grads = [[torch.randn(2, *s, generator=g, dtype=torch.float64) for s in shapes] for _ in lrs]
    stacked = [torch.stack([starts[m][i] for m in range(2)]).requires_grad_() for i in range(len(shapes))]
    adam = StackedAdam(stacked, lrs[0])
    for step_lrs, step_grads in zip(lrs, grads, strict=True):
        adam.set_lr(step_lrs)
        adam.step(step_grads)

    def torch_adam(start: list[torch.Tensor], rates: list[float], member: int) -> list[torch.Tensor]:
        params = [t.clone().requires_grad_() for t in start]
        opt = torch.optim.Adam(params, lr=rates[0])
        for rate, step_grads in zip(rates, grads, strict=True):
            opt.param_groups[0]["lr"] = rate
            for p, grad in zip(params, step_grads, strict=True):
                p.grad = grad[member].clone()
            opt.step()
        return [p.detach() for p in params]

    # Each side's step t is within gamma(n_t) lr_t B_t of exact (B_t: adam_ratio_bound). m and v
    # carry <= 3 roundings a step: m^ within gamma(3t) B_t sqrt(v^) (Cauchy-Schwarz, as there)
    # and sqrt(v^) within gamma(3t) of itself, 6t in all; the bias corrections 1 - b^t magnify
    # their powers' 1-ulp error (2u) by b / (1 - b) at most (t = 1: 9 for b1; 999 for b2, halved
    # by the square root): 18 + 999; step size, square root, division and product: 6 more.
    # Each subtraction rounds by u |weight|, |weight| <= its final size + the travel.
    steps = len(lrs)
    for m in range(2):
        rates = [step_lrs[m] for step_lrs in lrs]
        travel = sum(lr * adam_ratio_bound(t) for t, lr in enumerate(rates, start=1))
        step_error = sum(gamma(6 * t + 1023, U64) * lr * adam_ratio_bound(t) for t, lr in enumerate(rates, start=1))
        atol, rtol = 2 * step_error + 2 * steps * U64 * travel, 2 * steps * U64
        for got, want in zip((p[m].detach() for p in stacked), torch_adam(starts[m], rates, m), strict=True):
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
        if m == 0:  # member 0 really used its own rates: with member 1's it would end elsewhere
            other = torch_adam(starts[0], [step_lrs[1] for step_lrs in lrs], 0)
            assert not torch.allclose(stacked[0][0], other[0], rtol=rtol, atol=atol)


def test_lr_schedule_is_torchs_cosine_or_constant() -> None:
    cosine = lr_schedule(RunConfig(lr=0.1, scheduler="cosine", epochs=4))
    assert cosine[0] == 0.1
    assert cosine == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    assert cosine[1] > cosine[2] > cosine[3] > 0
    assert lr_schedule(RunConfig(lr=0.1, scheduler="constant", epochs=3)) == [0.1, 0.1, 0.1]


def test_members_follow_their_own_schedule(small_strategies: None, prepared: PreparedData) -> None:
    configs = [cfg(lr=1e-2, scheduler="cosine", epochs=3), cfg(lr=1e-3, scheduler="constant", epochs=3)]
    a, b = train_stacked(configs, prepared)
    assert [row["lr"] for row in a.record.history] == lr_schedule(configs[0])
    assert [row["lr"] for row in b.record.history] == [1e-3] * 3


# --------------------------------------------------------------------------- records and callbacks


def test_records_callbacks_and_shared_measurements(small_strategies: None, prepared: PreparedData) -> None:
    configs = [cfg(lr=1e-2, seed=1), cfg(lr=1e-3, seed=2)]
    seen: list[tuple[RunConfig, int]] = []
    results = train_stacked(configs, prepared, on_epoch=lambda c, row: seen.append((c, row["epoch"])))
    assert seen == [(configs[0], 1), (configs[1], 1), (configs[0], 2), (configs[1], 2)]
    assert all(c is configs[i] for (c, _), i in zip(seen, [0, 1, 0, 1]))  # the configs as passed in
    a, b = (r.record for r in results)
    assert a.status == b.status == "finished"
    assert a.run_id != b.run_id
    # the group's wall time and shared peak, said so in the record
    assert a.timing["train_seconds"] == b.timing["train_seconds"] > 0
    assert a.timing["stacked_group_size"] == 2
    assert a.timing["stacked_amortized_train_seconds"] == pytest.approx(a.timing["train_seconds"] / 2)
    assert a.timing["stacked_run_ids"] == [a.run_id, b.run_id]
    assert "stacked group of 2" in a.timing["samples_per_s_note"]
    assert a.timing["cuda_graph"] == "off" and a.timing["compile"] == "off"
    assert a.memory["stacked_group_size"] == 2 and "shared" in a.memory["peak_note"]
    assert len(a.timing["epoch_seconds"]) == 2


def test_non_finite_loss_fails_the_group_naming_the_run(small_strategies: None, prepared: PreparedData) -> None:
    configs = [cfg(strategy="test-stack-nan", lr=1e-2, seed=1), cfg(strategy="test-stack-nan", lr=1e-3, seed=2)]
    with pytest.raises(RunFailedError, match="non-finite at epoch 1"):
        train_stacked(configs, prepared)


@pytest.mark.skipif(not cpu_bf16_supported(), reason="CPU without native bf16")
def test_bf16_autocast_path_runs(small_strategies: None, prepared: PreparedData) -> None:
    configs = [cfg(lr=1e-2, seed=1, precision="bf16", epochs=1), cfg(lr=1e-3, seed=1, precision="bf16", epochs=1)]
    work = loop.run_data(configs[0], prepared)
    val_idx = work.val_indices
    for config, result in zip(configs, train_stacked(configs, prepared), strict=True):
        alone = loop.train_run(config, prepared)
        assert result.record.config["precision"] == "bf16"
        # bf16 kernels accumulate in float32 and store bf16 outputs (u_out), from operands that
        # autocast rounds to bf16 alike in both executors: the stacked evaluation and the
        # loop's, of the same weights, differ by at most twice the first-order bound.
        cast = [t.to(torch.bfloat16).float() for t in engine.batch_inputs(work, val_idx)]
        rounded = copy.deepcopy(result.model)
        with torch.no_grad():
            for t in rounded.parameters():
                t.copy_(t.to(torch.bfloat16).float())
        tol = 2 * mean_ce_error_bound(rounded, *cast, work.labels[val_idx], U32, u_out=UBF16)
        assert abs(result.record.val_loss - plain_val_loss(result.model, work, config)) <= tol
        # Trained weights (float32 master weights, float32 Adam): Adam's envelope.
        bound = float32_weight_bound(config, work.train_indices.numel(), max_abs_weight(alone.model))
        assert max_weight_diff(result.model, alone.model) <= bound


# --------------------------------------------------------------------------- grouping and executors


def test_stack_key_ignores_lr_scheduler_and_seed_only() -> None:
    base = RunConfig(strategy="late", device="cpu", precision="fp32")
    assert stack_key(base) == stack_key(replace(base, lr=1e-5, scheduler="constant", seed=3))
    if not torch.cuda.is_available():
        assert stack_key(replace(base, device="auto")) == stack_key(base)  # keys compare resolved configs
    for change in (
        {"strategy": "early"}, {"backbone": "lab"}, {"epochs": 3}, {"batch_size": 16}, {"limit_per_class": 5},
        {"lidar_norm": "nearest"}, {"rgb_norm": "standard"},
        {"precision": "bf16"} if cpu_bf16_supported() else {"epochs": 4},
    ):  # fmt: skip
        assert stack_key(base) != stack_key(replace(base, **change)), change


def test_group_configs_groups_in_order_and_caps_the_size() -> None:
    late = [RunConfig(strategy="late", lr=lr, device="cpu", precision="fp32") for lr in (1e-4, 1e-5, 1e-6)]
    early = [RunConfig(strategy="early", lr=lr, device="cpu", precision="fp32") for lr in (1e-4, 1e-5)]
    mixed = [late[0], early[0], late[1], early[1], late[2]]
    assert group_configs(mixed) == [late, early]
    assert group_configs(mixed, max_group=2) == [late[:2], late[2:], early]
    assert group_configs(mixed, max_group=1) == [[c] for c in (late[0], late[1], late[2], early[0], early[1])]
    assert group_configs([]) == []
    for bad in (0, -1, 1.5, True):
        with pytest.raises(BadInputError, match="--max-group"):
            group_configs(mixed, max_group=bad)


@needs_dropout_field
def test_configs_with_modality_dropout_train_alone() -> None:
    plain = RunConfig(strategy="late", device="cpu", precision="fp32")
    dropped = replace(plain, modality_dropout=0.3)
    groups = group_configs([plain, dropped, replace(plain, lr=1e-5), dropped])
    assert groups == [[plain, replace(plain, lr=1e-5)], [dropped], [dropped]]
    assert stack_key(dropped) != stack_key(plain)


@needs_dropout_field
def test_train_stacked_hands_a_lone_unstackable_config_to_the_loop(
    small_strategies: None, prepared: PreparedData
) -> None:
    dropped = cfg(lr=1e-2, epochs=1, modality_dropout=0.5)
    rows = []
    (result,) = train_stacked([dropped], prepared, on_epoch=lambda c, row: rows.append((c, row)))
    want = loop.train_run(dropped, prepared).record
    assert result.record.history[0]["train_loss"] == want.history[0]["train_loss"]
    assert "stacked_group_size" not in result.record.timing
    assert rows and rows[0][0] is dropped
    with pytest.raises(BadInputError, match="modality-dropout"):
        train_stacked([dropped, cfg(lr=1e-3)], prepared)


def test_train_stacked_refuses_configs_that_cannot_share_a_group(
    small_strategies: None, prepared: PreparedData
) -> None:
    with pytest.raises(BadInputError, match="cannot train together"):
        train_stacked([cfg(), cfg(epochs=3)], prepared)
    with pytest.raises(BadInputError, match="CUDA graphs need a CUDA device"):
        train_stacked([cfg(), cfg(lr=1e-3)], prepared, cuda_graphs=True)
    assert train_stacked([], prepared) == []


# --------------------------------------------------------------------------- CUDA (skipped without it)


def cuda_cfg(**kwargs) -> RunConfig:
    return cfg(device="cuda", **kwargs)


@pytest.mark.gpu
def test_cuda_graph_step_matches_the_loop_in_fp32(small_strategies: None, prepared: PreparedData) -> None:
    configs = [cuda_cfg(lr=1e-2, seed=1, batch_size=4, epochs=2), cuda_cfg(lr=1e-3, seed=2, batch_size=4, epochs=2)]
    results = train_stacked(configs, prepared)  # 6 full batches per epoch: 3 warm-up, then captured
    assert results[0].record.timing["cuda_graph"].startswith("captured")
    eager = train_stacked(configs, prepared, cuda_graphs=False)
    work = loop.run_data(configs[0], prepared).to("cuda:0")
    val_idx = work.val_indices
    for config, graphed, plain in zip(configs, results, eager, strict=True):
        alone = loop.train_run(config, prepared)
        # Weights: Adam's envelope ("error bounds"), whatever precision the kernels compute in.
        bound = float32_weight_bound(config, work.train_indices.numel(), max_abs_weight(alone.model))
        assert max_weight_diff(graphed.model, plain.model) <= bound
        assert max_weight_diff(graphed.model, alone.model) <= bound
        # The graphed run's recorded validation loss against the loop's evaluation of the same
        # weights; "fp32" convolutions may run on TF32 tensor cores (operands rounded to 11
        # significant bits: 2 * U_TF32 per product), accumulating in float32.
        inputs = engine.batch_inputs(work, val_idx)
        tol = 2 * mean_ce_error_bound(graphed.model, *inputs, work.labels[val_idx], U32, u_out=2 * U_TF32)
        assert abs(graphed.record.val_loss - plain_val_loss(graphed.model, work, config)) <= tol
        assert graphed.record.memory["peak_gpu_allocated_bytes"] > 0
        assert next(graphed.model.parameters()).is_cuda


@pytest.mark.gpu
def test_cuda_bf16_and_compiled_forward_run(small_strategies: None, prepared: PreparedData) -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("GPU without bf16")
    configs = [cuda_cfg(lr=lr, seed=1, precision="bf16", batch_size=4) for lr in (1e-2, 1e-3)]
    for compile_forward in (False, True):
        results = train_stacked(configs, prepared, compile=compile_forward)
        timing = results[0].record.timing
        assert timing["cuda_graph"].startswith("captured"), timing["cuda_graph"]
        assert timing["compile"].startswith("compiled" if compile_forward else "off"), timing["compile"]
        assert all(math.isfinite(r.record.val_loss) for r in results)


def test_training_set_size_splits_stacked_groups(small_strategies: None) -> None:
    from fusioncli.train.stacked import group_configs

    configs = [cfg(lr=lr, train_per_class=size) for size in (4, None) for lr in (1e-3, 1e-4)]
    groups = group_configs(configs, None)
    assert sorted(len(g) for g in groups) == [2, 2]
    assert all(len({c.train_per_class for c in g}) == 1 for g in groups)
