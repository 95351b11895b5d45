"""Stacked (batched) grid execution: equality with one-at-a-time training, grouping, executors."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import fields, replace

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from fusioncli.data.dataset import PreparedData
from fusioncli.errors import BadInputError, RunFailedError
from fusioncli.models import create_model, register_strategy, strategy_names, unregister_strategy
from fusioncli.models.blocks import TwoStreamModel
from fusioncli.models.fusion import ConcatFusion
from fusioncli.train import loop
from fusioncli.config import RunConfig
from fusioncli.train.device import cpu_bf16_supported
from fusioncli.train.stacked import (
    StackedAdam,
    choose_executor,
    group_configs,
    lr_schedule,
    stack_key,
    train_stacked,
)

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


@pytest.fixture
def float64(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Models and inputs in float64, so stacked and separate training agree to ~1e-12."""
    from fusioncli.train import engine

    original = engine.batch_inputs
    monkeypatch.setattr(engine, "batch_inputs", lambda data, idx: tuple(t.double() for t in original(data, idx)))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def cfg(**kwargs) -> RunConfig:
    base = dict(
        strategy="test-stack-small", epochs=2, batch_size=5, device="cpu", precision="fp32", limit_per_class=8
    )
    return RunConfig(**{**base, **kwargs})


def max_weight_diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[n] - sb[n]).abs().max()) for n in sa)


# --------------------------------------------------------------------------- equality


@pytest.mark.parametrize("seeds", [(1, 2, 3), (7, 7, 7)], ids=["own-order-per-member", "shared-order"])
def test_stacked_equals_separate_training_in_float64(
    small_strategies: None, float64: None, prepared: PreparedData, seeds: tuple[int, int, int]
) -> None:
    configs = [
        cfg(lr=1e-2, scheduler="cosine", seed=seeds[0]),
        cfg(lr=3e-3, scheduler="constant", seed=seeds[1]),
        cfg(lr=3e-2, scheduler="cosine", seed=seeds[2]),
    ]
    stacked = train_stacked(configs, prepared)
    assert len(stacked) == 3
    for config, result in zip(configs, stacked, strict=True):
        alone = loop.train_run(config, prepared)
        got, want = result.record, alone.record
        # 16 training samples in batches of 5: the last partial batch is kept, as in train_run
        assert got["dataset"] == want["dataset"] and got["dataset"]["n_train"] == 16
        assert got["run_id"] == want["run_id"]
        assert got["config"] == want["config"]
        assert set(got) == set(want)
        assert set(want["timing"]) <= set(got["timing"])
        assert len(got["history"]) == 2
        for g, w in zip(got["history"], want["history"], strict=True):
            assert g["epoch"] == w["epoch"]
            assert g["lr"] == w["lr"]  # bit-identical schedules
            # losses pass through float32 (the loop's fp32 loss), so agree to float32 precision
            assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-6)
            assert g["val_loss"] == pytest.approx(w["val_loss"], rel=1e-6)
            assert g["val_accuracy"] == w["val_accuracy"]
        assert got["metrics"]["val_accuracy"] == want["metrics"]["val_accuracy"]
        assert got["metrics"]["f1_macro"] == pytest.approx(want["metrics"]["f1_macro"])
        assert got["params"] == want["params"] and got["flops_per_sample"] == want["flops_per_sample"]
        assert max_weight_diff(result.model, alone.model) < 1e-10
        assert not result.model.training
        # and training did move the weights (the comparison is not between two initialisations)
        torch.manual_seed(config.seed)
        init = create_model(config.strategy, config.backbone, 2)
        assert max_weight_diff(result.model, init) > 1e-3


@pytest.mark.slow
def test_stacked_real_strategy_matches_the_loop_in_float32(prepared: PreparedData) -> None:
    """The seed's late fusion, as trained in practice (fp32): equal up to float32 rounding."""
    configs = [
        cfg(strategy="late", lr=lr, seed=seed, limit_per_class=4, epochs=1, batch_size=6)
        for lr, seed in ((1e-3, 5), (1e-4, 6))
    ]
    for config, result in zip(configs, train_stacked(configs, prepared), strict=True):
        alone = loop.train_run(config, prepared)
        assert result.record["metrics"]["val_loss"] == pytest.approx(alone.record["metrics"]["val_loss"], rel=1e-4)
        assert max_weight_diff(result.model, alone.model) < 1e-5


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
    singles = [[torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes] for _ in range(2)]
    stacked = [torch.stack([singles[m][i].detach() for m in range(2)]).requires_grad_() for i in range(len(shapes))]
    lrs = [[1e-2, 1e-3], [5e-3, 1e-3], [0.0, 2e-3]]  # per step, per member; changed between steps
    optimizers = [torch.optim.Adam(params, lr=lrs[0][m]) for m, params in enumerate(singles)]
    adam = StackedAdam(stacked, lrs[0])
    for step_lrs in lrs:
        grads = [torch.randn(2, *s, generator=g, dtype=torch.float64) for s in shapes]
        adam.set_lr(step_lrs)
        adam.step(grads)
        for m, opt in enumerate(optimizers):
            opt.param_groups[0]["lr"] = step_lrs[m]
            for p, grad in zip(singles[m], grads, strict=True):
                p.grad = grad[m].clone()
            opt.step()
    for i in range(len(shapes)):
        for m in range(2):
            torch.testing.assert_close(stacked[i][m].detach(), singles[m][i].detach(), rtol=1e-12, atol=1e-14)
    # member 0 really used its own rates: with member 1's it would end elsewhere
    assert not torch.allclose(stacked[0][0], stacked[0][1])


def test_lr_schedule_is_torchs_cosine_or_constant() -> None:
    cosine = lr_schedule(RunConfig(lr=0.1, scheduler="cosine", epochs=4))
    assert cosine[0] == 0.1
    assert cosine == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    assert cosine[1] > cosine[2] > cosine[3] > 0
    assert lr_schedule(RunConfig(lr=0.1, scheduler="constant", epochs=3)) == [0.1, 0.1, 0.1]


def test_members_follow_their_own_schedule(small_strategies: None, prepared: PreparedData) -> None:
    configs = [cfg(lr=1e-2, scheduler="cosine", epochs=3), cfg(lr=1e-3, scheduler="constant", epochs=3)]
    a, b = train_stacked(configs, prepared)
    assert [row["lr"] for row in a.record["history"]] == lr_schedule(configs[0])
    assert [row["lr"] for row in b.record["history"]] == [1e-3] * 3


# --------------------------------------------------------------------------- records and callbacks


def test_records_callbacks_and_shared_measurements(small_strategies: None, prepared: PreparedData) -> None:
    configs = [cfg(lr=1e-2, seed=1), cfg(lr=1e-3, seed=2)]
    seen: list[tuple[RunConfig, int]] = []
    results = train_stacked(configs, prepared, on_epoch=lambda c, row: seen.append((c, row["epoch"])))
    assert seen == [(configs[0], 1), (configs[1], 1), (configs[0], 2), (configs[1], 2)]
    assert all(c is configs[i] for (c, _), i in zip(seen, [0, 1, 0, 1]))  # the configs as passed in
    a, b = (r.record for r in results)
    assert a["status"] == b["status"] == "finished"
    assert a["run_id"] != b["run_id"]
    # the group's wall time and shared peak, said so in the record
    assert a["timing"]["train_seconds"] == b["timing"]["train_seconds"] > 0
    assert a["timing"]["stacked_group_size"] == 2
    assert a["timing"]["stacked_amortized_train_seconds"] == pytest.approx(a["timing"]["train_seconds"] / 2)
    assert a["timing"]["stacked_run_ids"] == [a["run_id"], b["run_id"]]
    assert "stacked group of 2" in a["timing"]["samples_per_s_note"]
    assert a["timing"]["cuda_graph"] == "off" and a["timing"]["compile"] == "off"
    assert a["memory"]["stacked_group_size"] == 2 and "shared" in a["memory"]["peak_note"]
    assert len(a["timing"]["epoch_seconds"]) == 2


def test_non_finite_loss_fails_the_group_naming_the_run(small_strategies: None, prepared: PreparedData) -> None:
    configs = [cfg(strategy="test-stack-nan", lr=1e-2, seed=1), cfg(strategy="test-stack-nan", lr=1e-3, seed=2)]
    with pytest.raises(RunFailedError, match="non-finite at epoch 1"):
        train_stacked(configs, prepared)


@pytest.mark.skipif(not cpu_bf16_supported(), reason="CPU without native bf16")
def test_bf16_autocast_path_runs(small_strategies: None, prepared: PreparedData) -> None:
    configs = [cfg(lr=1e-2, seed=1, precision="bf16", epochs=1), cfg(lr=1e-3, seed=1, precision="bf16", epochs=1)]
    for config, result in zip(configs, train_stacked(configs, prepared), strict=True):
        alone = loop.train_run(config, prepared).record
        assert result.record["config"]["precision"] == "bf16"
        # bf16 rounding differs between grouped and separate convolutions: close, not equal
        assert result.record["metrics"]["val_loss"] == pytest.approx(alone["metrics"]["val_loss"], rel=0.05)


# --------------------------------------------------------------------------- grouping and executors


def test_stack_key_ignores_lr_scheduler_and_seed_only() -> None:
    base = RunConfig(strategy="late", device="cpu", precision="fp32")
    assert stack_key(base) == stack_key(replace(base, lr=1e-5, scheduler="constant", seed=3))
    if not torch.cuda.is_available():
        assert stack_key(replace(base, device="auto")) == stack_key(base)  # keys compare resolved configs
    for change in (
        {"strategy": "early"}, {"backbone": "lab"}, {"epochs": 3}, {"batch_size": 16}, {"limit_per_class": 5},
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
    assert result.record["history"][0]["train_loss"] == want["history"][0]["train_loss"]
    assert "stacked_group_size" not in result.record["timing"]
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


# --------------------------------------------------------------------------- CUDA (skipped without it)


def cuda_cfg(**kwargs) -> RunConfig:
    return cfg(device="cuda", **kwargs)


@pytest.mark.gpu
def test_cuda_graph_step_matches_the_loop_in_fp32(small_strategies: None, prepared: PreparedData) -> None:
    configs = [cuda_cfg(lr=1e-2, seed=1, batch_size=4, epochs=2), cuda_cfg(lr=1e-3, seed=2, batch_size=4, epochs=2)]
    results = train_stacked(configs, prepared)  # 6 full batches per epoch: 3 warm-up, then captured
    assert results[0].record["timing"]["cuda_graph"].startswith("captured")
    eager = train_stacked(configs, prepared, cuda_graphs=False)
    for config, graphed, plain in zip(configs, results, eager, strict=True):
        alone = loop.train_run(config, prepared)
        assert max_weight_diff(graphed.model, plain.model) < 1e-5
        assert max_weight_diff(graphed.model, alone.model) < 1e-4
        assert graphed.record["metrics"]["val_loss"] == pytest.approx(alone.record["metrics"]["val_loss"], rel=1e-3)
        assert graphed.record["memory"]["peak_gpu_allocated_bytes"] > 0
        assert next(graphed.model.parameters()).is_cuda


@pytest.mark.gpu
def test_cuda_bf16_and_compiled_forward_run(small_strategies: None, prepared: PreparedData) -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("GPU without bf16")
    configs = [cuda_cfg(lr=lr, seed=1, precision="bf16", batch_size=4) for lr in (1e-2, 1e-3)]
    for compile_forward in (False, True):
        results = train_stacked(configs, prepared, compile=compile_forward)
        timing = results[0].record["timing"]
        assert timing["cuda_graph"].startswith("captured"), timing["cuda_graph"]
        assert timing["compile"].startswith("compiled" if compile_forward else "off"), timing["compile"]
        assert all(math.isfinite(r.record["metrics"]["val_loss"]) for r in results)


def test_training_set_size_splits_stacked_groups(small_strategies: None) -> None:
    from fusioncli.train.stacked import group_configs

    configs = [cfg(lr=lr, train_per_class=size) for size in (4, None) for lr in (1e-3, 1e-4)]
    groups = group_configs(configs, None)
    assert sorted(len(g) for g in groups) == [2, 2]
    assert all(len({c.train_per_class for c in g}) == 1 for g in groups)
