"""The shared mechanics: eval batch size, autocast, cuDNN mode, channels_last, batch inputs, predict."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusioncli.data.dataset import PreparedData
from fusioncli.train.engine import (
    EVAL_BATCH_CPU,
    EVAL_BATCH_CUDA,
    autocast,
    batch_inputs,
    channels_last,
    cudnn_mode,
    eval_batch_size,
    predict,
)

CPU = torch.device("cpu")


def small_data(n: int = 23, seed: int = 0) -> PreparedData:
    g = torch.Generator().manual_seed(seed)
    return PreparedData(
        rgb=torch.randint(0, 256, (n, 4, 8, 8), generator=g, dtype=torch.uint8),
        xyza=torch.rand(n, 4, 8, 8, generator=g),
        depth=torch.full((n, 8, 8), 50.0),
        labels=torch.randint(0, 3, (n,), generator=g),
        is_val=torch.ones(n, dtype=torch.bool),
        class_names=("a", "b", "c"),
        fingerprint="engine-test",
    )


def linear_forward(seed: int):
    """A fixed random linear model on pooled inputs: (B, 4, H, W) x 2 -> (B, 3) logits."""
    weight = torch.randn(8, 3, generator=torch.Generator().manual_seed(seed))

    def forward(rgb: torch.Tensor, xyza: torch.Tensor) -> torch.Tensor:
        return torch.cat([rgb.mean(dim=(2, 3)), xyza.mean(dim=(2, 3))], dim=1) @ weight

    return forward


def test_eval_batch_size_is_small_on_the_cpu_and_large_on_a_gpu() -> None:
    assert eval_batch_size("cpu", 32) == eval_batch_size("cpu", 512) == EVAL_BATCH_CPU
    assert eval_batch_size("cpu", 32, members=4) == EVAL_BATCH_CPU // 4
    assert eval_batch_size("cpu", 32, members=1000) == 1
    assert eval_batch_size("cuda:0", 32) == EVAL_BATCH_CUDA and eval_batch_size("cuda", 512) == 512


def test_batch_inputs_scale_rgb_and_keep_xyza() -> None:
    data = small_data()
    idx = torch.tensor([3, 0, 7])
    rgb, xyza = batch_inputs(data, idx)
    assert rgb.dtype == torch.float32 and torch.equal(rgb, data.rgb[idx].float() / 255)
    assert torch.equal(xyza, data.xyza[idx])
    by_slice, _ = batch_inputs(data, slice(2, 5))
    assert torch.equal(by_slice, batch_inputs(data, torch.arange(2, 5))[0])


def test_channels_last_converts_the_stored_images_once() -> None:
    data = channels_last(small_data())
    assert data.rgb.is_contiguous(memory_format=torch.channels_last)
    assert data.xyza is not None and data.xyza.is_contiguous(memory_format=torch.channels_last)
    rgb, _ = batch_inputs(data, torch.arange(4))
    assert rgb.is_contiguous(memory_format=torch.channels_last)  # no copy per batch


def test_autocast_only_for_bf16_and_cudnn_mode_leaves_the_cpu_alone() -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(CPU, "fp32"):
        assert (a @ b).dtype == torch.float32
    for cache in (True, False):
        with autocast(CPU, "bf16", cache=cache):
            assert (a @ b).dtype == torch.bfloat16
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    with cudnn_mode(CPU, "bf16"):
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == before


def test_predict_gives_the_loss_sum_and_classes_of_one_pass() -> None:
    data = small_data()
    forward = linear_forward(0)
    rgb, xyza = batch_inputs(data, slice(None))
    logits = forward(rgb, xyza)
    whole = predict(forward, data, device=CPU, precision="fp32", batch_size=5)
    assert torch.equal(whole.classes, logits.argmax(dim=1))
    assert whole.loss_sum is not None and whole.loss_sum.dtype == torch.float64 and whole.loss_sum.shape == ()
    assert float(whole.loss_sum) == pytest.approx(float(F.cross_entropy(logits, data.labels, reduction="sum")))
    # Indices are gathered in their order; the batch size does not change the answer.
    idx = torch.tensor([5, 1, 22, 9, 0, 13, 2])
    picked = predict(forward, data, device=CPU, precision="fp32", batch_size=3, indices=idx)
    assert torch.equal(picked.classes, logits.argmax(dim=1)[idx])
    assert float(picked.loss_sum) == pytest.approx(
        float(F.cross_entropy(logits[idx], data.labels[idx], reduction="sum"))
    )
    assert predict(forward, data, device=CPU, precision="fp32", batch_size=4, loss=False).loss_sum is None


def test_predict_runs_stacked_models_member_by_member() -> None:
    data = small_data()
    forwards = [linear_forward(seed) for seed in range(3)]

    def stacked(rgb: torch.Tensor, xyza: torch.Tensor) -> torch.Tensor:
        return torch.stack([f(rgb, xyza) for f in forwards])  # (K, B, classes)

    together = predict(stacked, data, device=CPU, precision="fp32", batch_size=6)
    assert together.classes.shape == (3, len(data)) and together.loss_sum is not None
    assert together.loss_sum.shape == (3,)
    for k, forward in enumerate(forwards):
        alone = predict(forward, data, device=CPU, precision="fp32", batch_size=6)
        assert torch.equal(together.classes[k], alone.classes)
        assert float(together.loss_sum[k]) == pytest.approx(float(alone.loss_sum), rel=1e-6)


def test_predict_feeds_every_batch_through_inputs_in_order() -> None:
    data = small_data()
    seen = []

    def blank_rgb(rgb: torch.Tensor, xyza: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(rgb.shape[0])
        return torch.zeros_like(rgb), xyza

    forward = linear_forward(1)
    got = predict(forward, data, device=CPU, precision="fp32", batch_size=10, loss=False, inputs=blank_rgb)
    assert seen == [10, 10, 3]
    _, xyza = batch_inputs(data, slice(None))
    assert torch.equal(got.classes, forward(torch.zeros(len(data), 4, 8, 8), xyza).argmax(dim=1))


def test_predict_under_bf16_scores_fp32_logits() -> None:
    data = small_data()
    got = predict(linear_forward(2), data, device=CPU, precision="bf16", batch_size=8)
    assert got.loss_sum is not None and got.loss_sum.dtype == torch.float64
    assert torch.isfinite(got.loss_sum) and got.classes.dtype == torch.int64
