"""Robustness evaluation: the record dict, its AUC maths, reproducibility, a trained model."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from fusioncli.data.dataset import PreparedData
from fusioncli.errors import BadInputError
from fusioncli.eval import corruptions
from fusioncli.eval.corruptions import CORRUPTIONS, Corruption
from fusioncli.eval.robustness import (
    SEVERITIES,
    add_robustness,
    evaluate_robustness,
    summary_rows,
    trapezoid_auc,
)
from fusioncli.config import RunConfig
from fusioncli.record import RunRecord
from fusioncli.train.loop import RunResult, train_run

pytestmark = pytest.mark.numeric

CURVE_KEYS = {"modality", "severities", "accuracy", "f1_macro", "auc", "relative_auc", "mean_accuracy"}
FIRST_THREE = ("rgb_noise", "lidar_noise", "lidar_dropout")
# The figures compared with pytest.approx are float64 arithmetic on non-negative numbers (no
# cancellation): a trapezoid over 5 points (4 x (difference, sum, product, halving) + 3 sums:
# 19 roundings), a relative score (1 more), a mean over 3 curves (3 more), an F1 (10): each
# side carries at most 32 roundings, so they agree to 2 gamma_32 = 2 * 32 u / (1 - 32 u),
# u = 2^-53 (7e-15). (Accuracies are counts over a power of two of samples: exact, compared with ==.)
U64 = 2.0**-53
REL = 2 * 32 * U64 / (1 - 32 * U64)


def close(expected: object) -> object:
    return pytest.approx(expected, rel=REL, abs=0)


def cpu_fp32(**kwargs) -> RunConfig:
    return RunConfig(**{"device": "cpu", "precision": "fp32", **kwargs})


class BrightnessOracle(nn.Module):
    """Predicts class 1 when the mean red intensity is above 0.5; ignores LiDAR."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.modes: list[bool] = []

    def forward(self, rgb: torch.Tensor, xyza: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        p1 = (rgb[:, 0].mean(dim=(1, 2)) > 0.5).float()
        return torch.stack([1 - p1, p1], dim=1) + self.dummy


def labelled_by_brightness(n_val: int = 8, level: float = 1.0) -> PreparedData:
    """Class 1 = red at ``level`` (0..1), class 0 = black; LiDAR random; the last ``n_val`` are validation."""
    n = 2 * n_val
    labels = torch.arange(n) % 2
    rgb = torch.zeros(n, 4, 64, 64, dtype=torch.uint8)
    rgb[labels == 1, 0] = round(level * 255)
    rgb[:, 3] = 255
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[n_val:] = True
    return PreparedData(
        rgb=rgb,
        xyza=torch.rand(n, 4, 64, 64, generator=torch.Generator().manual_seed(0)),
        depth=torch.full((n, 64, 64), 50.0),
        labels=labels,
        is_val=is_val,
        class_names=("cubes", "spheres"),
        fingerprint="brightness",
    )


def flip_first(rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator):
    """A fake corruption with a known effect: inverts red on the first ``severity`` share of the batch."""
    k = round(severity * rgb.shape[0])
    out = rgb.clone()
    out[:k, 0] = 1 - out[:k, 0]
    return out, xyza


def test_trapezoid_auc_by_hand() -> None:
    # 0.25 * ((1 + .8) / 2 + (.8 + .6) / 2 + (.6 + .4) / 2 + (.4 + .2) / 2) = 0.25 * 2.4
    assert trapezoid_auc(SEVERITIES, [1.0, 0.8, 0.6, 0.4, 0.2]) == close(0.6)
    assert trapezoid_auc([0.0, 1.0], [0.5, 0.5]) == close(0.5)
    assert trapezoid_auc([0.0, 0.5, 1.0], [1.0, 0.0, 1.0]) == close(0.5)
    with pytest.raises(ValueError):
        trapezoid_auc([0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="ascending"):
        trapezoid_auc([1.0, 0.0], [1.0, 1.0])


def test_dict_structure_and_values_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    # rgb_noise replaced by a corruption whose accuracy at severity s is exactly 1 - s.
    monkeypatch.setitem(CORRUPTIONS, "rgb_noise", Corruption("rgb_noise", "rgb", "curve", flip_first, "test"))
    model = BrightnessOracle()
    rob = evaluate_robustness(model, labelled_by_brightness(n_val=8), cpu_fp32(), seed=5, faults=FIRST_THREE)

    assert set(rob) == {
        "version", "seed", "clean_accuracy", "curves", "missing", "mean_auc", "mean_relative_auc", "mra",
        "mean_relative_accuracy",
    }  # fmt: skip
    assert rob["version"] == 2 and rob["seed"] == 5
    assert rob["clean_accuracy"] == 1.0
    assert set(rob["curves"]) == {"rgb_noise", "lidar_noise", "lidar_dropout"}
    assert set(rob["missing"]) == {"rgb_missing", "lidar_missing"}
    for curve in rob["curves"].values():
        assert set(curve) == CURVE_KEYS
        assert curve["severities"] == [0.0, 0.25, 0.5, 0.75, 1.0]
        assert len(curve["accuracy"]) == len(curve["f1_macro"]) == 5

    flipped = rob["curves"]["rgb_noise"]
    assert flipped["accuracy"] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert flipped["auc"] == close(0.5)  # area under 1 - s
    assert flipped["relative_auc"] == close(0.5)
    assert flipped["mean_accuracy"] == close((0.75 + 0.5 + 0.25 + 0.0) / 4)
    assert flipped["modality"] == "rgb" and rob["curves"]["lidar_dropout"]["modality"] == "lidar"
    for name in ("lidar_noise", "lidar_dropout"):  # the oracle ignores LiDAR
        assert rob["curves"][name]["accuracy"] == [1.0] * 5
        assert rob["curves"][name]["auc"] == close(1.0)
        assert rob["curves"][name]["relative_auc"] == close(1.0)
    # RGB zeros -> always class 0 on a balanced split: accuracy 0.5; F1 (2/3 + 0) / 2
    assert rob["missing"]["rgb_missing"] == close({"accuracy": 0.5, "f1_macro": 1 / 3, "relative": 0.5})
    assert rob["missing"]["lidar_missing"] == close({"accuracy": 1.0, "f1_macro": 1.0, "relative": 1.0})
    assert rob["mean_auc"] == close((0.5 + 1.0 + 1.0) / 3)
    assert rob["mean_relative_auc"] == close((0.5 + 1.0 + 1.0) / 3)
    # mra: accuracy over every (fault, severity > 0): (0.375 + 1 + 1) / 3; clean is 1
    assert rob["mra"] == close((0.375 + 1.0 + 1.0) / 3)
    assert rob["mean_relative_accuracy"] == close(rob["mra"])


def test_the_whole_suite_by_default_and_single_sensor_faults_leave_the_other_sensor_alone() -> None:
    from fusioncli.eval.faults import fault_names

    rob = evaluate_robustness(BrightnessOracle(), labelled_by_brightness(n_val=8), cpu_fp32())
    assert tuple(rob["curves"]) == fault_names() and len(fault_names()) == 14
    for name in fault_names("lidar"):  # the oracle reads only RGB: LiDAR faults cannot move it
        assert rob["curves"][name]["accuracy"] == [1.0] * 5, name
    assert rob["curves"]["darkness"]["accuracy"][-1] == 0.5  # 10 % of the light: red is below 0.5
    with pytest.raises(BadInputError, match="missing modality"):
        evaluate_robustness(BrightnessOracle(), labelled_by_brightness(), cpu_fp32(), faults=["rgb_missing"])


def test_relative_scores_are_against_clean_accuracy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CORRUPTIONS, "rgb_noise", Corruption("rgb_noise", "rgb", "curve", flip_first, "test"))
    data = labelled_by_brightness(n_val=8, level=0.4)  # too dark for the oracle: clean accuracy 0.5
    rob = evaluate_robustness(BrightnessOracle(), data, cpu_fp32())
    assert rob["clean_accuracy"] == 0.5
    acc = rob["curves"]["rgb_noise"]["accuracy"]
    assert rob["curves"]["rgb_noise"]["auc"] == close(trapezoid_auc(SEVERITIES, acc))
    assert rob["curves"]["rgb_noise"]["relative_auc"] == close(rob["curves"]["rgb_noise"]["auc"] / 0.5)
    assert rob["missing"]["rgb_missing"]["relative"] == close(rob["missing"]["rgb_missing"]["accuracy"] / 0.5)


def test_zero_clean_accuracy_gives_zero_relative_scores() -> None:
    data = labelled_by_brightness(n_val=8)
    inverted = replace(data, labels=1 - data.labels)  # the oracle is always wrong
    rob = evaluate_robustness(BrightnessOracle(), inverted, cpu_fp32())
    assert rob["clean_accuracy"] == 0.0
    assert all(c["relative_auc"] == 0.0 for c in rob["curves"].values())
    assert all(m["relative"] == 0.0 for m in rob["missing"].values())


def test_eval_mode_during_and_mode_restored_after() -> None:
    model = BrightnessOracle()
    model.train()
    evaluate_robustness(model, labelled_by_brightness(), cpu_fp32())
    assert model.modes and not any(model.modes)  # every forward in eval mode
    assert model.training


def test_batches_larger_than_the_eval_batch() -> None:
    data = labelled_by_brightness(n_val=10)
    whole = evaluate_robustness(BrightnessOracle(), data, cpu_fp32(), batch_size=64)
    batched = evaluate_robustness(BrightnessOracle(), data, cpu_fp32(), batch_size=3)  # 4 batches, last partial
    # Each sample's draws are its own, so batching does not matter -- except to the faults that
    # take another frame from the batch (desync, stuck_sensor).
    for rob in (whole, batched):
        for name in ("desync", "stuck_sensor"):
            rob["curves"].pop(name)
        for key in ("mean_auc", "mean_relative_auc", "mra", "mean_relative_accuracy"):
            rob.pop(key)
    assert whole == batched


def test_no_validation_samples_is_bad_input() -> None:
    data = labelled_by_brightness()
    no_val = replace(data, is_val=torch.zeros_like(data.is_val))
    with pytest.raises(BadInputError, match="no validation samples"):
        evaluate_robustness(BrightnessOracle(), no_val, cpu_fp32())


class NoisyThreshold(nn.Module):
    """Predicts from a single pixel, so RGB noise flips some predictions at random."""

    def forward(self, rgb: torch.Tensor, xyza: torch.Tensor) -> torch.Tensor:
        p1 = (rgb[:, 0, 0, 0] > 0.5).float() + 0.1 * xyza[:, 3, 0, 0]
        return torch.stack([1 - p1, p1], dim=1)


def test_same_seed_same_numbers_other_seed_other_noise() -> None:
    data = labelled_by_brightness(n_val=64, level=0.7)
    a = evaluate_robustness(NoisyThreshold(), data, cpu_fp32(), seed=0)
    b = evaluate_robustness(NoisyThreshold(), data, cpu_fp32(), seed=0)
    assert a == b
    c = evaluate_robustness(NoisyThreshold(), data, cpu_fp32(), seed=1)
    assert c["curves"]["rgb_noise"]["accuracy"] != a["curves"]["rgb_noise"]["accuracy"]
    assert c["curves"]["rgb_noise"]["accuracy"][0] == a["curves"]["rgb_noise"]["accuracy"][0]  # clean


def test_summary_rows() -> None:
    rob = evaluate_robustness(BrightnessOracle(), labelled_by_brightness(), cpu_fp32(), faults=FIRST_THREE)
    rows = summary_rows(rob)
    assert [r["condition"] for r in rows] == [
        "clean",
        "rgb_missing",
        "lidar_missing",
        "rgb_noise (severity 1)",
        "lidar_noise (severity 1)",
        "lidar_dropout (severity 1)",
        "mean over faults",
    ]
    assert rows[1]["accuracy"] == rob["missing"]["rgb_missing"]["accuracy"]
    assert rows[3]["auc"] == rob["curves"]["rgb_noise"]["auc"] and rows[0]["auc"] is None
    assert rows[-1]["relative_auc"] == rob["mean_relative_auc"] and rows[-1]["accuracy"] == rob["mra"]


@pytest.mark.slow
def test_trained_model_smoke(prepared: PreparedData) -> None:
    cfg = cpu_fp32(strategy="early", lr=1e-3, epochs=1, limit_per_class=8)
    result = train_run(cfg, prepared)
    record = add_robustness(result, prepared)  # a new record: the trained one is left as it was
    rob = record.robustness
    assert rob is not None and result.record.robustness is None
    assert record.timing["robustness_seconds"] > 0 and "robustness_seconds" not in result.record.timing
    assert rob["clean_accuracy"] == record.val_accuracy  # same split, same model
    for curve in rob["curves"].values():
        assert all(0.0 <= a <= 1.0 for a in curve["accuracy"])
        assert 0.0 <= curve["auc"] <= 1.0
    # reproducible on a real model too
    assert evaluate_robustness(result.model, prepared.limit_per_class(8), cfg) == rob


def test_add_robustness_refuses_failed_runs() -> None:
    failed = RunRecord.failed(cpu_fp32().to_dict(), None, "boom", started_at=None, finished_at="t")
    result = RunResult(record=failed, model=BrightnessOracle())
    with pytest.raises(ValueError, match="finished runs"):
        add_robustness(result, labelled_by_brightness())


def test_registry_is_restored_between_tests() -> None:
    # guards the monkeypatching above: the real rgb_noise is registered again
    assert CORRUPTIONS["rgb_noise"].apply is corruptions.rgb_noise


@pytest.mark.gpu
def test_on_cuda(prepared: PreparedData) -> None:
    cfg = RunConfig(strategy="early", device="cuda", precision="fp32", epochs=1, limit_per_class=8)
    result = train_run(cfg, prepared)
    rob = add_robustness(result, prepared).robustness
    assert rob["clean_accuracy"] == result.record.val_accuracy
    assert evaluate_robustness(result.model, prepared.limit_per_class(8), cfg.resolve()) == rob
