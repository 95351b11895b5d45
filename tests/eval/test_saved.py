"""Evaluating saved checkpoints on the training dataset and on another one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fusioncli.data.dataset import PreparedData
from fusioncli.errors import BadInputError
from fusioncli.eval.saved import checkpoint_file, choose_split, evaluate_checkpoint
from fusioncli.train.checkpoint import save_checkpoint
from fusioncli.train.config import RunConfig
from fusioncli.train.loop import train_run

CPU = {"device": "cpu", "precision": "fp32"}


@pytest.fixture(scope="module")
def trained(prepared: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """An `early` model trained 2 epochs on the tiny dataset, saved as a checkpoint; (path, record)."""
    cfg = RunConfig(strategy="early", epochs=2, lr=1e-3, seed=3, **CPU)
    result = train_run(cfg, prepared)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(path, result.model, result.record)
    return path, result.record


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    """Another synthetic dataset (another seed, 20 per class): data the model never saw."""
    from fusioncli.data.cache import load_cache, prepare
    from fusioncli.data.synth import write_dataset

    root = tmp_path_factory.mktemp("other")
    write_dataset(root / "raw", per_class=20, seed=7)
    prepare(root / "raw", root / "cache", val_fraction=0.25)
    return load_cache(root / "cache")


def test_on_its_own_dataset_it_reproduces_the_runs_validation_figures(trained, prepared: PreparedData) -> None:
    path, record = trained
    e = evaluate_checkpoint(path, prepared, **CPU)
    assert e["dataset"]["same_as_training"] is True
    assert e["dataset"]["split"] == "val" and e["dataset"]["split_note"].startswith("auto: val")
    assert e["dataset"]["n"] == record["dataset"]["n_val"] == int(prepared.is_val.sum())
    # Same weights, same validation samples, fp32: the figures the run recorded.
    assert e["metrics"]["accuracy"] == pytest.approx(record["metrics"]["val_accuracy"], abs=1e-12)
    assert e["metrics"]["f1_macro"] == pytest.approx(record["metrics"]["f1_macro"], abs=1e-12)
    assert e["metrics"]["loss"] == pytest.approx(record["metrics"]["val_loss"], rel=1e-5)
    assert e["metrics"]["per_class"] == record["metrics"]["per_class"]
    assert e["trained"]["val_accuracy"] == record["metrics"]["val_accuracy"]
    assert e["run_id"] == record["run_id"] and e["model"]["strategy"] == "early"
    confusion = torch.tensor(e["metrics"]["confusion"])
    assert int(confusion.sum()) == e["dataset"]["n"]
    assert float(confusion.diagonal().sum()) / e["dataset"]["n"] == pytest.approx(e["metrics"]["accuracy"])


def test_on_another_dataset_auto_scores_every_sample(trained, other: PreparedData) -> None:
    path, _ = trained
    e = evaluate_checkpoint(path, other, **CPU)
    assert e["dataset"]["same_as_training"] is False
    assert e["dataset"]["split"] == "all" and e["dataset"]["n"] == len(other) == 40
    assert e["dataset"]["fingerprint"] == other.fingerprint
    # Independent check: the model's own predictions on all 40 samples.
    from fusioncli.train.checkpoint import load_checkpoint

    model, _ = load_checkpoint(path)
    with torch.no_grad():
        logits = model(other.rgb.float() / 255, other.xyza)
    expected = (logits.argmax(dim=1) == other.labels).double().mean().item()
    assert e["metrics"]["accuracy"] == pytest.approx(expected, abs=1e-12)
    loss = torch.nn.functional.cross_entropy(logits, other.labels).item()
    assert e["metrics"]["loss"] == pytest.approx(loss, rel=1e-5)


@pytest.mark.parametrize(
    ("split", "n_of"),
    [("val", lambda d: int(d.is_val.sum())), ("train", lambda d: int((~d.is_val).sum())), ("all", len)],
)
def test_explicit_splits(trained, prepared: PreparedData, split: str, n_of) -> None:
    e = evaluate_checkpoint(trained[0], prepared, split=split, **CPU)
    assert e["dataset"]["split"] == split and e["dataset"]["n"] == n_of(prepared)
    assert ("optimistic" in e["dataset"]["split_note"]) == (split != "val")


def test_choose_split() -> None:
    assert choose_split("auto", True)[0] == "val"
    assert choose_split("auto", False)[0] == "all"
    assert choose_split("all", False) == ("all", "all")
    assert "optimistic" in choose_split("train", True)[1]
    with pytest.raises(BadInputError, match="--split must be one of"):
        choose_split("test", True)


def test_a_limited_run_still_recognises_its_dataset(prepared: PreparedData, tmp_path: Path) -> None:
    cfg = RunConfig(strategy="early", epochs=1, limit_per_class=6, **CPU)
    result = train_run(cfg, prepared)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, result.model, result.record)
    for data in (prepared, prepared.limit_per_class(6)):  # the limited view is tagged "<fp>:limit6"
        e = evaluate_checkpoint(path, data, **CPU)
        assert e["dataset"]["same_as_training"] is True and e["dataset"]["split"] == "val"


def test_robustness_is_measured_on_the_scored_split(trained, other: PreparedData) -> None:
    e = evaluate_checkpoint(trained[0], other, robustness=True, **CPU)
    r = e["robustness"]
    assert r["clean_accuracy"] == pytest.approx(e["metrics"]["accuracy"], abs=1e-12)
    assert set(r["curves"]) == {"rgb_noise", "lidar_noise", "lidar_dropout"}
    assert evaluate_checkpoint(trained[0], other, **CPU)["robustness"] is None


def test_class_mismatch_and_empty_split_are_bad_input(trained, prepared: PreparedData) -> None:
    renamed = replace(prepared, class_names=("boxes", "balls"), fingerprint="x")
    with pytest.raises(BadInputError, match=r"trained on classes \['cubes', 'spheres'\].*\['boxes', 'balls'\]"):
        evaluate_checkpoint(trained[0], renamed, **CPU)
    no_val = replace(prepared, is_val=torch.zeros_like(prepared.is_val))
    with pytest.raises(BadInputError, match="the val split .* is empty"):
        evaluate_checkpoint(trained[0], no_val, split="val", **CPU)


def test_checkpoint_file_accepts_a_folder_holding_model_safetensors(trained, tmp_path: Path) -> None:
    path, _ = trained
    assert checkpoint_file(path.parent) == path
    assert checkpoint_file(path) == path
    with pytest.raises(BadInputError, match="folder without model.safetensors"):
        checkpoint_file(tmp_path)
