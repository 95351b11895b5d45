"""`fusioncli train` through the CLI runner: json on stdout, progress on stderr, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fusioncli.cli import app

runner = CliRunner()
QUICK = ["--strategy", "early", "--epochs", "2", "--device", "cpu", "--precision", "fp32"]


def test_json_record_on_stdout_progress_on_stderr(cache_dir: Path) -> None:
    result = runner.invoke(
        app, ["train", *QUICK, "--cache-dir", str(cache_dir), "--format", "json", "--lr", "1e-3", "--limit-per-class", "12"]
    )
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)  # stdout is exactly one JSON object
    assert record["status"] == "finished"
    assert record["config"]["strategy"] == "early" and record["config"]["lr"] == 1e-3
    assert record["config"]["device"] == "cpu" and record["config"]["precision"] == "fp32"
    assert len(record["history"]) == 2
    assert "epoch 1/2" in result.stderr and "epoch 2/2" in result.stderr
    assert "val_acc" in result.stderr


def test_table_summary(cache_dir: Path) -> None:
    result = runner.invoke(
        app, ["train", *QUICK, "--cache-dir", str(cache_dir), "--limit-per-class", "6", "--scheduler", "constant"]
    )
    assert result.exit_code == 0, result.stderr
    for text in ("F1 (macro)", "val accuracy", "samples/s", "cubes", "spheres", "12 / 12"):
        assert text in result.stdout
    assert "epoch 2/2" in result.stderr and "epoch 1/2" not in result.stdout


def test_checkpoint_option_writes_weights_and_info(cache_dir: Path, tmp_path: Path) -> None:
    from fusioncli.train.checkpoint import load_checkpoint

    target = tmp_path / "out" / "early.safetensors"
    result = runner.invoke(
        app, ["train", *QUICK, "--epochs", "1", "--limit-per-class", "8", "--cache-dir", str(cache_dir), "--checkpoint", str(target), "-f", "json"]
    )
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    model, info = load_checkpoint(target)
    assert info.to_json() == record
    assert "checkpoint written" in result.stderr


def test_missing_cache_says_run_prepare(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", *QUICK, "--cache-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "fusioncli prepare" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "-1"], "--lr must be > 0 (got -1"),
        (["--epochs", "0"], "--epochs must be an integer >= 1"),
        (["--strategy", "nope"], "--strategy must be one of"),
        (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
        (["--limit-per-class", "0"], "--limit-per-class"),
        (["--modality-dropout", "1"], "--modality-dropout must be >= 0 and < 1 (got 1)"),
        (["--modality-dropout", "-0.2"], "--modality-dropout must be >= 0 and < 1 (got -0.2)"),
    ],
)
def test_bad_options_exit_2_naming_the_flag(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["train", "--cache-dir", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_bad_choice_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--cache-dir", str(tmp_path), "--scheduler", "step"])
    assert result.exit_code == 2


def test_modality_dropout_must_be_a_number(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--cache-dir", str(tmp_path), "--modality-dropout", "half"])
    assert result.exit_code == 2
    assert result.stdout == ""


ROBUST_QUICK = [*QUICK, "--epochs", "1", "--limit-per-class", "6", "--robustness", "--modality-dropout", "0.3"]


def test_robustness_and_modality_dropout_in_the_json_record(cache_dir: Path) -> None:
    result = runner.invoke(app, ["train", *ROBUST_QUICK, "--cache-dir", str(cache_dir), "-f", "json"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["config"]["modality_dropout"] == 0.3
    rob = record["robustness"]
    assert {"rgb_noise", "lidar_noise", "lidar_dropout", "fog", "misalignment"} <= set(rob["curves"])
    assert set(rob["missing"]) == {"rgb_missing", "lidar_missing"}
    assert rob["clean_accuracy"] == record["metrics"]["val_accuracy"]
    assert record["timing"]["robustness_seconds"] > 0
    assert "evaluating robustness" in result.stderr


def test_robustness_table(cache_dir: Path) -> None:
    result = runner.invoke(app, ["train", *ROBUST_QUICK, "--cache-dir", str(cache_dir)])
    assert result.exit_code == 0, result.stderr
    for text in ("robustness", "rgb_missing", "lidar_missing", "rgb_noise", "lidar_dropout", "relative AUC", "mean over faults"):
        assert text in result.stdout, text
    assert "modality dropout" in result.stdout and "0.3" in result.stdout


def test_without_robustness_the_record_has_none(cache_dir: Path) -> None:
    result = runner.invoke(
        app, ["train", *QUICK, "--epochs", "1", "--limit-per-class", "4", "--cache-dir", str(cache_dir), "-f", "json"]
    )
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert "robustness" not in record and record["config"]["modality_dropout"] == 0.0


def test_bf16_on_a_cpu_without_native_bf16_says_why_and_what_to_do(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fusioncli import machine

    monkeypatch.setattr(machine, "cpu_bf16_supported", lambda: False)  # e.g. an AVX2-only CPU
    args = ["train", "--strategy", "early", "--epochs", "1", "--device", "cpu", "--cache-dir", str(cache_dir)]
    result = runner.invoke(app, [*args, "--precision", "bf16"])
    assert result.exit_code == 2
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert "--precision bf16: this CPU has no native bf16" in result.stderr  # the flag, and why
    assert "--precision fp32" in result.stderr and "--precision auto" in result.stderr  # what to do
    # and what it suggests works: auto falls back to fp32 on such a CPU
    result = runner.invoke(app, [*args, "--precision", "auto", "--limit-per-class", "4", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["config"]["precision"] == "fp32"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--cache-dir", str(tmp_path), "--device", "cuda"])
    assert result.exit_code == 2
    assert "CUDA is not available" in result.stderr


@pytest.mark.gpu
def test_train_on_cuda(cache_dir: Path) -> None:
    result = runner.invoke(
        app, ["train", "--strategy", "early", "--epochs", "1", "--device", "cuda", "--cache-dir", str(cache_dir), "-f", "json"]
    )
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["config"]["device"] == "cuda:0"
    assert record["memory"]["peak_gpu_allocated_bytes"] > 0
