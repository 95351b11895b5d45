"""The training loop: learning, the run record, determinism, batching, failures, CUDA."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from fusioncli.data.dataset import PreparedData
from fusioncli.errors import BadInputError, RunFailedError
from fusioncli.models import register_strategy, unregister_strategy
from fusioncli.config import RunConfig, run_id
from fusioncli.machine import cpu_bf16_supported
from fusioncli.record import RunRecord
from fusioncli.train.loop import failed_record, train_run

pytestmark = pytest.mark.numeric

U64 = 2.0**-53  # unit roundoff of float64

RECORD_KEYS = {
    "schema", "run_id", "status", "error", "config", "dataset", "metrics", "history", "params",
    "flops_per_sample", "timing", "memory", "env", "started_at", "finished_at",
}  # fmt: skip
ENV_KEYS = {
    "fusioncli_version", "torch_version", "cuda_version", "cudnn_version", "device_name", "cpu_count",
    "python_version", "platform", "git_commit", "git_dirty", "bf16",
}  # fmt: skip


def easy_data(per_class: int = 40, val_per_class: int = 10, seed: int = 0) -> PreparedData:
    """Two classes told apart by RGB brightness (plus noise): any working loop learns it."""
    g = torch.Generator().manual_seed(seed)
    n = 2 * per_class
    labels = torch.arange(n) % 2
    rgb = torch.randint(0, 100, (n, 4, 64, 64), generator=g, dtype=torch.uint8)
    rgb[labels == 1] += 120
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[-2 * val_per_class :] = True
    return PreparedData(
        rgb=rgb,
        xyza=torch.rand(n, 4, 64, 64, generator=g),
        depth=torch.full((n, 64, 64), 50.0),
        labels=labels,
        is_val=is_val,
        class_names=("cubes", "spheres"),
        fingerprint="easy-test-data",
    )


class Tiny(nn.Module):
    """A few-hundred-parameter model that follows the encoder/fusion/head naming contract."""

    def __init__(self, num_classes: int, nan: bool = False) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, num_classes)
        self.nan = nan
        self.train_batch_sizes: list[int] = []

    def forward(self, rgb: torch.Tensor, xyza: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():  # not the FLOP probe's forward
            self.train_batch_sizes.append(rgb.shape[0])
        logits = self.head(self.encoder(torch.cat([rgb, xyza], dim=1)))
        return logits * float("nan") if self.nan else logits


@pytest.fixture
def tiny_strategies() -> Iterator[None]:
    register_strategy("test-tiny", description="tiny test model")(lambda bb, k: Tiny(k))
    register_strategy("test-nan", description="emits NaN logits")(lambda bb, k: Tiny(k, nan=True))
    yield
    unregister_strategy("test-tiny")
    unregister_strategy("test-nan")


def cpu_fp32(**kwargs) -> RunConfig:
    return RunConfig(**{"device": "cpu", "precision": "fp32", **kwargs})


def test_learning_happens_on_an_easy_set() -> None:
    result = train_run(cpu_fp32(strategy="early", lr=1e-3, epochs=3), easy_data())
    metrics = result.record.metrics
    assert metrics.val_accuracy >= 0.8, result.record.history
    assert metrics.f1_macro >= 0.8
    assert result.record.history[-1]["train_loss"] < result.record.history[0]["train_loss"]


def test_record_has_the_documented_shape(prepared: PreparedData) -> None:
    seen: list[dict] = []
    cfg = cpu_fp32(strategy="early", epochs=2)
    result = train_run(cfg, prepared, on_epoch=seen.append)
    rec = result.record.to_json()  # the documented shape is the record's JSON form
    assert set(rec) == RECORD_KEYS
    assert rec["status"] == "finished" and rec["error"] is None and rec["schema"] == 1
    assert rec["run_id"] == run_id(cfg, prepared.fingerprint)
    assert rec["config"] == cfg.to_dict()
    assert rec["dataset"] == {
        "fingerprint": prepared.fingerprint,
        "n_train": int((~prepared.is_val).sum()),
        "n_val": int(prepared.is_val.sum()),
        "class_names": list(prepared.class_names),
    }
    m = rec["metrics"]
    assert set(m) == {"val_loss", "val_accuracy", "f1_macro", "per_class", "calibration", "val_correct"}
    assert set(m["per_class"]) == set(prepared.class_names)
    cal = m["calibration"]  # from the last validation pass's logits
    assert cal["bins"] == 15 and cal["fit_n"] + cal["score_n"] == rec["dataset"]["n_val"]
    # nll is the validation loss recomputed in float64 from the fp32 logits; the loop's loss is
    # fp32 cross-entropy per sample (log-softmax of 2 logits: a few roundings of u32 = 6e-8
    # relative to the logits' size, here < 10) summed in float64: 1e-5 absolute is a wide margin.
    assert cal["nll"] == pytest.approx(m["val_loss"], rel=0, abs=1e-5)
    assert 0 <= cal["ece"] <= 1 and 0 <= cal["brier"] <= 2 and cal["temperature"] > 0
    from fusioncli.record import unpack_correct

    right = unpack_correct(m["val_correct"], rec["dataset"]["n_val"])
    assert right.sum() / len(right) == m["val_accuracy"]  # the same count over the same samples
    assert sum(c["support"] for c in m["per_class"].values()) == rec["dataset"]["n_val"]
    assert m["val_loss"] == rec["history"][-1]["val_loss"]
    assert m["val_accuracy"] == rec["history"][-1]["val_accuracy"]
    assert seen == rec["history"] and [r["epoch"] for r in seen] == [1, 2]
    assert set(seen[0]) == {"epoch", "train_loss", "val_loss", "val_accuracy", "lr", "seconds"}
    assert rec["params"]["total"] == sum(p.numel() for p in result.model.parameters())
    assert rec["params"]["encoder"] + rec["params"]["fusion"] + rec["params"]["head"] == rec["params"]["total"]
    assert rec["flops_per_sample"] > 0
    t = rec["timing"]
    assert len(t["epoch_seconds"]) == 2 and all(s > 0 for s in t["epoch_seconds"])
    assert all(0 < tr <= ep for tr, ep in zip(t["train_epoch_seconds"], t["epoch_seconds"]))
    assert t["samples_per_s"] == pytest.approx(rec["dataset"]["n_train"] / t["train_epoch_seconds"][1])
    assert t["train_seconds"] >= sum(t["epoch_seconds"]) * 0.99
    assert t["samples_per_s"] > 0 and "first epoch excluded" in t["samples_per_s_note"]
    assert rec["memory"]["peak_gpu_allocated_bytes"] is None
    assert rec["memory"]["peak_host_rss_bytes"] > 10_000_000
    assert ENV_KEYS <= set(rec["env"])
    assert rec["env"]["torch_version"] == torch.__version__
    assert rec["started_at"] <= rec["finished_at"]


@pytest.mark.usefixtures("tiny_strategies")
def test_cosine_schedule_is_stepped_per_epoch() -> None:
    rec = train_run(cpu_fp32(strategy="test-tiny", lr=0.1, epochs=4), easy_data(8, 2)).record
    lrs = [row["lr"] for row in rec.history]
    assert lrs == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])


@pytest.mark.usefixtures("tiny_strategies")
def test_constant_schedule_and_single_epoch_note() -> None:
    rec = train_run(cpu_fp32(strategy="test-tiny", lr=0.1, epochs=1, scheduler="constant"), easy_data(8, 2)).record
    assert [row["lr"] for row in rec.history] == [0.1]
    assert "includes warm-up" in rec.timing["samples_per_s_note"]


@pytest.mark.usefixtures("tiny_strategies")
def test_callback_time_is_not_training_time() -> None:
    rec = train_run(cpu_fp32(strategy="test-tiny", epochs=2), easy_data(8, 2), on_epoch=lambda row: time.sleep(0.5)).record
    t = rec.timing
    assert t["train_seconds"] < sum(t["epoch_seconds"]) + 0.4  # two 0.5 s sleeps would exceed this
    assert all(s < 0.5 for s in t["epoch_seconds"])


@pytest.mark.usefixtures("tiny_strategies")
def test_last_partial_batch_is_kept() -> None:
    data = easy_data(per_class=25, val_per_class=5)  # 40 training samples
    result = train_run(cpu_fp32(strategy="test-tiny", epochs=2, batch_size=16), data)
    assert result.model.train_batch_sizes == [16, 16, 8] * 2


def test_same_seed_same_metrics(prepared: PreparedData) -> None:
    cfg = cpu_fp32(strategy="early", epochs=2, limit_per_class=16)
    a = train_run(cfg, prepared).record
    b = train_run(cfg, prepared).record

    def strip(rec: RunRecord) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rec.history]

    assert a.metrics == b.metrics
    assert strip(a) == strip(b)
    other = train_run(cpu_fp32(strategy="early", epochs=2, limit_per_class=16, seed=52), prepared).record
    assert strip(other) != strip(a)  # the seed matters, so the equality above means something


def test_limit_per_class(prepared: PreparedData) -> None:
    rec = train_run(cpu_fp32(strategy="early", epochs=1, limit_per_class=5), prepared).record
    assert rec.dataset.n_train == 10 and rec.dataset.n_val == 10
    assert rec.fingerprint == prepared.fingerprint
    assert rec.config["limit_per_class"] == 5


@pytest.mark.usefixtures("tiny_strategies")
def test_non_finite_loss_fails_the_run() -> None:
    with pytest.raises(RunFailedError, match="non-finite at epoch 1"):
        train_run(cpu_fp32(strategy="test-nan", epochs=2), easy_data(8, 2))


def test_missing_validation_split_is_bad_input() -> None:
    data = easy_data(8, 2)
    from dataclasses import replace

    no_val = replace(data, is_val=torch.zeros_like(data.is_val))
    with pytest.raises(BadInputError, match="no validation samples"):
        train_run(cpu_fp32(strategy="early", epochs=1), no_val)


def test_failed_record_has_the_known_keys() -> None:
    data = easy_data(8, 2)
    rec = failed_record(cpu_fp32(strategy="early"), data, "boom").to_json()
    assert set(rec) == RECORD_KEYS
    assert rec["status"] == "failed" and rec["error"] == "boom"
    assert rec["run_id"] == run_id(cpu_fp32(strategy="early"), data.fingerprint)
    assert rec["dataset"]["n_train"] == 12 and ENV_KEYS <= set(rec["env"])


@pytest.mark.skipif(not cpu_bf16_supported(), reason="CPU without native bf16")
def test_bf16_autocast_on_cpu() -> None:
    rec = train_run(RunConfig(strategy="early", device="cpu", precision="auto", lr=1e-3, epochs=3), easy_data()).record
    assert rec.config["precision"] == "bf16"
    assert rec.env["bf16"] is True
    assert rec.val_accuracy >= 0.8


@pytest.mark.gpu
def test_cuda_run_measures_gpu_memory(prepared: PreparedData) -> None:
    rec = train_run(RunConfig(strategy="early", device="cuda", lr=1e-3, epochs=2), prepared).record
    assert rec.config["device"] == "cuda:0"
    assert rec.memory["peak_gpu_allocated_bytes"] > 0
    assert rec.memory["peak_gpu_reserved_bytes"] >= rec.memory["peak_gpu_allocated_bytes"]
    assert rec.env["device_name"] == torch.cuda.get_device_name(0)
    assert rec.env["cuda_version"] is not None


@pytest.mark.gpu
def test_cuda_fp32_is_deterministic(prepared: PreparedData) -> None:
    cfg = RunConfig(strategy="early", device="cuda", precision="fp32", epochs=2)
    a, b = train_run(cfg, prepared).record, train_run(cfg, prepared).record
    assert a.val_accuracy == b.val_accuracy
    assert a.val_loss == pytest.approx(b.val_loss, rel=1e-4)


# --- modality dropout -------------------------------------------------------------------------


class Recorder(Tiny):
    """Tiny that keeps, per sample, the sum of |RGB| and |XYZA| it was given (0 = zeroed)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.train_sums: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.eval_sums: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, rgb: torch.Tensor, xyza: torch.Tensor) -> torch.Tensor:
        sums = (rgb.detach().abs().flatten(1).sum(1), xyza.detach().abs().flatten(1).sum(1))
        if self.training and torch.is_grad_enabled():
            self.train_sums.append(sums)
        elif torch.is_inference_mode_enabled():  # validation (the FLOP probe feeds zeros otherwise)
            self.eval_sums.append(sums)
        return super().forward(rgb, xyza)


@pytest.fixture
def recorder_strategy() -> Iterator[None]:
    register_strategy("test-recorder", description="records its inputs")(lambda bb, k: Recorder(k))
    yield
    unregister_strategy("test-recorder")


def _cat(sums: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([s[0] for s in sums]), torch.cat([s[1] for s in sums])


@pytest.mark.usefixtures("tiny_strategies", "float64")
def test_modality_dropout_zero_trains_exactly_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    import fusioncli.train.loop as loop

    def never(*args, **kwargs):
        raise AssertionError("p = 0 must not draw dropout masks")

    monkeypatch.setattr(loop, "apply_modality_dropout", never)
    config = cpu_fp32(strategy="test-tiny", lr=1e-2, epochs=3, batch_size=8, modality_dropout=0.0)
    rec = train_run(config, easy_data(16, 4)).record
    # Pinned from the loop before modality dropout existed (commit a69d753: same config, same
    # data, under this file's float64 fixture).
    expected = [
        (0.7090239632484775, 0.7049157575108878, 0.5),
        (0.7024897022401863, 0.6965850403312659, 0.5),
        (0.6953147435355209, 0.6924780069613561, 0.5),
    ]
    # Then and now are the same arithmetic, possibly summed in other orders (other kernels,
    # other instruction sets). Each loss is within gamma(N) of exact, N bounding the roundings
    # behind it: 4 per counted FLOP per training sample and 2 per validation sample, every
    # epoch, plus Adam's 10 per weight and step (derived in test_stacked.float64_bounds;
    # losses are sums of positive terms). So the two differ by at most 2 gamma(N): 1.8e-7 here,
    # a worst case (AVX-512, AVX2 and scalar kernels give values 3e-16 apart).
    ds = rec.dataset
    steps = config.epochs * math.ceil(ds.n_train / config.batch_size)
    n = config.epochs * (4 * ds.n_train + 2 * ds.n_val) * rec.flops_per_sample
    n += 10 * steps * rec.params["total"]
    rel = 2 * n * U64 / (1 - n * U64)
    got = [(r["train_loss"], r["val_loss"], r["val_accuracy"]) for r in rec.history]
    assert got == [pytest.approx(e, rel=rel, abs=0) for e in expected]


def test_apply_modality_dropout_fractions() -> None:
    from fusioncli.train.loop import apply_modality_dropout

    rgb = torch.rand(8000, 4, 2, 2) + 0.1
    xyza = torch.rand(8000, 4, 2, 2) + 0.1
    g = torch.Generator().manual_seed(0)
    out_rgb, out_xyza = apply_modality_dropout(rgb, xyza, 0.3, g)
    rgb_off = (out_rgb.flatten(1) == 0).all(1)
    lidar_off = (out_xyza.flatten(1) == 0).all(1)
    assert not bool((rgb_off & lidar_off).any())  # never both
    # p/2 = 0.15 each; seeded draws; 0.02 = 5 standard deviations, sqrt(0.15 * 0.85 / 8000) = 0.004
    assert float(rgb_off.float().mean()) == pytest.approx(0.15, abs=0.02)
    assert float(lidar_off.float().mean()) == pytest.approx(0.15, abs=0.02)
    kept = ~(rgb_off | lidar_off)
    assert torch.equal(out_rgb[kept], rgb[kept]) and torch.equal(out_xyza[kept], xyza[kept])
    assert torch.count_nonzero(apply_modality_dropout(rgb, xyza, 0.0, g)[0] == 0) == 0
    again = apply_modality_dropout(rgb, xyza, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], out_rgb) and torch.equal(again[1], out_xyza)


@pytest.mark.usefixtures("recorder_strategy")
def test_modality_dropout_in_training_only_and_the_batch_order_is_kept() -> None:
    data = easy_data(40, 10)  # 60 training samples, 2 epochs
    base = train_run(cpu_fp32(strategy="test-recorder", epochs=2, batch_size=16), data).model
    dropped = train_run(cpu_fp32(strategy="test-recorder", epochs=2, batch_size=16, modality_dropout=0.5), data).model
    rgb0, xyz0 = _cat(base.train_sums)
    rgb1, xyz1 = _cat(dropped.train_sums)
    assert bool((rgb0 > 0).all() and (xyz0 > 0).all())  # nothing is zero without dropout
    rgb_off, lidar_off = rgb1 == 0, xyz1 == 0
    assert rgb_off.any() and lidar_off.any() and not (rgb_off & lidar_off).any()
    # 120 seeded draws at p = 0.5: 0.15 = 3.3 standard deviations, sqrt(0.25 / 120) = 0.046
    assert float((rgb_off | lidar_off).float().mean()) == pytest.approx(0.5, abs=0.15)
    # Dropout draws from its own generator: the same samples arrive in the same order.
    assert torch.equal(rgb1[~rgb_off], rgb0[~rgb_off]) and torch.equal(xyz1[~lidar_off], xyz0[~lidar_off])
    val_rgb, val_xyz = _cat(dropped.eval_sums)
    assert val_rgb.numel() == 2 * 20 and bool((val_rgb > 0).all() and (val_xyz > 0).all())  # never at validation


@pytest.mark.usefixtures("tiny_strategies")
def test_modality_dropout_is_seeded() -> None:
    cfg = cpu_fp32(strategy="test-tiny", lr=1e-2, epochs=2, batch_size=8, modality_dropout=0.4)
    a = train_run(cfg, easy_data(16, 4)).record
    b = train_run(cfg, easy_data(16, 4)).record
    plain = train_run(cpu_fp32(strategy="test-tiny", lr=1e-2, epochs=2, batch_size=8), easy_data(16, 4)).record

    def strip(rec: RunRecord) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rec.history]

    assert strip(a) == strip(b) and a.metrics == b.metrics
    assert strip(a) != strip(plain)  # dropout did something
    assert a.config["modality_dropout"] == 0.4 and a.run_id != plain.run_id


@pytest.mark.gpu
def test_modality_dropout_on_cuda(prepared: PreparedData) -> None:
    cfg = RunConfig(strategy="early", device="cuda", precision="fp32", epochs=2, modality_dropout=0.5)
    a, b = train_run(cfg, prepared).record, train_run(cfg, prepared).record
    assert a.val_accuracy == b.val_accuracy
    assert a.history[0]["train_loss"] == pytest.approx(b.history[0]["train_loss"], rel=1e-4)
