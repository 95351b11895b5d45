"""RunConfig validation, resolution and run ids."""

from __future__ import annotations

import re

import pytest
import torch

from fusioncli.errors import BadInputError
from fusioncli import machine as device_mod
from fusioncli.config import RunConfig, run_id


def test_defaults_are_the_seed_notebooks() -> None:
    cfg = RunConfig()
    assert cfg.to_dict() == {
        "strategy": "late",
        "backbone": "seed",
        "lr": 1e-4,
        "scheduler": "cosine",
        "epochs": 15,
        "batch_size": 32,
        "seed": 51,
        "device": "auto",
        "precision": "auto",
        "limit_per_class": None,
        "train_per_class": None,
        "modality_dropout": 0.0,
        "lidar_norm": "seed",  # the seed notebook's XYZA, unchanged
        "rgb_norm": "seed",  # the seed notebook's pixel / 255, unchanged
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1}, "--lr must be > 0 (got -1"),
        ({"lr": 0.0}, "--lr must be > 0"),
        ({"lr": float("nan")}, "--lr must be > 0"),
        ({"epochs": 0}, "--epochs must be an integer >= 1 (got 0)"),
        ({"epochs": 2.5}, "--epochs"),
        ({"batch_size": 0}, "--batch-size must be an integer >= 1"),
        ({"train_per_class": 0}, "--train-per-class must be an integer >= 1 (got 0)"),
        ({"train_per_class": 2.5}, "--train-per-class must be an integer >= 1"),
        ({"seed": -3}, "--seed"),
        ({"scheduler": "step"}, "--scheduler must be one of cosine, constant (got 'step')"),
        ({"precision": "fp16"}, "--precision must be one of auto, fp32, bf16 (got 'fp16')"),
        ({"device": "gpu"}, "--device must be auto, cpu, cuda or cuda:N (got 'gpu')"),
        ({"device": "cuda:x"}, "--device"),
        ({"limit_per_class": 0}, "--limit-per-class must be an integer >= 1 (got 0)"),
        ({"strategy": "nope"}, "--strategy must be one of late"),
        ({"backbone": "resnet"}, "--backbone must be one of seed, lab (got 'resnet')"),
        ({"modality_dropout": -0.1}, "--modality-dropout must be >= 0 and < 1 (got -0.1)"),
        ({"modality_dropout": 1.0}, "--modality-dropout must be >= 0 and < 1 (got 1)"),
        ({"modality_dropout": float("nan")}, "--modality-dropout must be >= 0 and < 1"),
        ({"modality_dropout": "0.5"}, "--modality-dropout must be a number in [0, 1) (got '0.5')"),
        ({"modality_dropout": True}, "--modality-dropout must be a number"),
    ],
)
def test_invalid_values_name_the_flag(kwargs: dict, message: str) -> None:
    with pytest.raises(BadInputError) as info:
        RunConfig(**kwargs)
    assert any(message in p for p in info.value.problems), info.value.problems


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(BadInputError) as info:
        RunConfig(lr=-1, epochs=0, scheduler="x")
    assert len(info.value.problems) == 3


def test_lr_is_normalised_to_float() -> None:
    assert RunConfig(lr=1).lr == 1.0
    assert isinstance(RunConfig(lr=1).lr, float)


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        RunConfig().lr = 1.0  # type: ignore[misc]


def test_from_dict_round_trip_and_unknown_keys() -> None:
    cfg = RunConfig(strategy="early", lr=1e-3, epochs=2, limit_per_class=5)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(BadInputError, match="unknown run config key"):
        RunConfig.from_dict({**cfg.to_dict(), "momentum": 0.9})


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_resolve_auto_without_cuda(no_cuda: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_mod, "cpu_bf16_supported", lambda: True)
    assert RunConfig().resolve().device == "cpu"
    assert RunConfig().resolve().precision == "bf16"
    assert RunConfig(precision="fp32").resolve().precision == "fp32"
    monkeypatch.setattr(device_mod, "cpu_bf16_supported", lambda: False)
    assert RunConfig().resolve().precision == "fp32"


def test_bf16_without_hardware_support_is_bad_input(no_cuda: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_mod, "cpu_bf16_supported", lambda: False)
    with pytest.raises(BadInputError, match="--precision bf16"):
        RunConfig(device="cpu", precision="bf16").resolve()


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_bad_input(no_cuda: None, spec: str) -> None:
    with pytest.raises(BadInputError, match="CUDA is not available"):
        RunConfig(device=spec).resolve()


def test_cpu_bf16_detection_reads_cpuinfo_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(device_mod, "_cpuinfo_flags", lambda: frozenset({"avx2", "fma"}))
    assert device_mod.cpu_bf16_supported() is False
    monkeypatch.setattr(device_mod, "_cpuinfo_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert device_mod.cpu_bf16_supported() is True
    monkeypatch.setattr(device_mod, "_cpuinfo_flags", lambda: frozenset({"amx_bf16"}))
    assert device_mod.cpu_bf16_supported() is True


def test_run_id_is_stable_and_sensitive() -> None:
    cfg = RunConfig(device="cpu", precision="fp32")
    rid = run_id(cfg, "abc")
    assert re.fullmatch(r"[0-9a-f]{16}", rid)
    assert run_id(RunConfig(device="cpu", precision="fp32"), "abc") == rid
    assert run_id(cfg, "abd") != rid
    assert run_id(RunConfig(device="cpu", precision="fp32", lr=1e-5), "abc") != rid
    assert run_id(RunConfig(device="cpu", precision="fp32", seed=52), "abc") != rid


def test_run_id_hashes_the_resolved_config(no_cuda: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_mod, "cpu_bf16_supported", lambda: False)
    assert run_id(RunConfig(), "fp") == run_id(RunConfig(device="cpu", precision="fp32"), "fp")


@pytest.mark.gpu
def test_resolve_cuda() -> None:
    cfg = RunConfig(device="cuda").resolve()
    assert cfg.device == "cuda:0"
    assert cfg.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert RunConfig().resolve().device == "cuda:0"


def test_modality_dropout_is_normalised_to_float() -> None:
    assert RunConfig(modality_dropout=0).modality_dropout == 0.0
    assert isinstance(RunConfig(modality_dropout=0).modality_dropout, float)
    assert RunConfig(modality_dropout=0.25).modality_dropout == 0.25


def test_run_ids_of_existing_configs_did_not_change() -> None:
    # Pinned before modality_dropout existed: stores written then must keep their run ids.
    assert run_id(RunConfig(device="cpu", precision="fp32"), "abc") == "ca74f2957f735b17"
    cfg = RunConfig(strategy="early", device="cpu", precision="fp32", lr=1e-3, epochs=3, limit_per_class=5, seed=7)
    assert run_id(cfg, "fp-xyz") == "bbcdc99a9fc9327a"
    assert run_id(RunConfig(device="cpu", precision="fp32", modality_dropout=0), "abc") == "ca74f2957f735b17"


def test_train_per_class_changes_the_run_id_and_none_keeps_old_ids() -> None:
    base = run_id(RunConfig(device="cpu", precision="fp32"), "abc")
    assert run_id(RunConfig(device="cpu", precision="fp32", train_per_class=None), "abc") == base == "ca74f2957f735b17"
    a = run_id(RunConfig(device="cpu", precision="fp32", train_per_class=100), "abc")
    b = run_id(RunConfig(device="cpu", precision="fp32", train_per_class=200), "abc")
    assert len({base, a, b}) == 3
    assert RunConfig.from_dict({k: v for k, v in RunConfig().to_dict().items() if k != "train_per_class"}) == RunConfig()


def test_modality_dropout_changes_the_run_id() -> None:
    base = run_id(RunConfig(device="cpu", precision="fp32"), "abc")
    a = run_id(RunConfig(device="cpu", precision="fp32", modality_dropout=0.3), "abc")
    b = run_id(RunConfig(device="cpu", precision="fp32", modality_dropout=0.5), "abc")
    assert len({base, a, b}) == 3


def test_records_written_before_modality_dropout_still_load() -> None:
    old = RunConfig(strategy="early", epochs=2).to_dict()
    del old["modality_dropout"]
    cfg = RunConfig.from_dict(old)
    assert cfg.modality_dropout == 0.0 and cfg.strategy == "early"
    assert RunConfig.from_dict(RunConfig(modality_dropout=0.2).to_dict()).modality_dropout == 0.2
