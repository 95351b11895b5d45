"""Evaluating saved checkpoints on the training dataset and on another one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fusioncli.data.dataset import PreparedData
from fusioncli.errors import BadInputError
from fusioncli.eval.saved import checkpoint_file, choose_split, evaluate_checkpoint
from fusioncli.record import RunRecord
from fusioncli.train.checkpoint import save_checkpoint
from fusioncli.config import RunConfig
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
    assert e["dataset"]["n"] == record.dataset.n_val == int(prepared.is_val.sum())
    # Same weights, same validation samples, fp32: the figures the run recorded.
    assert e["metrics"]["accuracy"] == pytest.approx(record.val_accuracy, abs=1e-12)
    assert e["metrics"]["f1_macro"] == pytest.approx(record.f1_macro, abs=1e-12)
    assert e["metrics"]["loss"] == pytest.approx(record.val_loss, rel=1e-5)
    assert e["metrics"]["per_class"] == record.metrics.per_class
    assert e["trained"]["val_accuracy"] == record.val_accuracy
    assert e["run_id"] == record.run_id and e["model"]["strategy"] == "early"
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
        logits = model(other.rgb.float() / 255, other.lidar(slice(None)))
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
    from fusioncli.eval.faults import fault_names

    assert tuple(r["curves"]) == fault_names()
    assert evaluate_checkpoint(trained[0], other, **CPU)["robustness"] is None


def test_class_mismatch_and_empty_split_are_bad_input(trained, prepared: PreparedData) -> None:
    renamed = replace(prepared, class_names=("boxes", "balls"), fingerprint="x")
    with pytest.raises(BadInputError, match=r"trained on classes \['cubes', 'spheres'\].*\['boxes', 'balls'\]"):
        evaluate_checkpoint(trained[0], renamed, **CPU)
    no_val = replace(prepared, is_val=torch.zeros_like(prepared.is_val))
    with pytest.raises(BadInputError, match="the val split is empty"):
        evaluate_checkpoint(trained[0], no_val, split="val", **CPU)
    with pytest.raises(BadInputError, match="batch size must be at least 1"):
        evaluate_checkpoint(trained[0], prepared, batch_size=0, **CPU)


def test_checkpoint_file_accepts_a_folder_holding_model_safetensors(trained, tmp_path: Path) -> None:
    path, _ = trained
    assert checkpoint_file(path.parent) == path
    assert checkpoint_file(path) == path
    with pytest.raises(BadInputError, match="folder without model.safetensors"):
        checkpoint_file(tmp_path)


# --------------------------------------------------------------------------- a sweep's runs


@pytest.fixture(scope="module")
def swept(prepared: PreparedData, tmp_path_factory: pytest.TempPathFactory):
    """A real 2-seed sweep of `early` with --keep-weights, plus one run without kept weights."""
    from fusioncli.results.store import ResultsStore
    from fusioncli.sweep.grid import expand_grid
    from fusioncli.sweep.runner import run_sweep

    store = ResultsStore(tmp_path_factory.mktemp("swept") / "results")
    common = {"strategies": ["early"], "lrs": [1e-3], "schedulers": ["constant"], "epochs": 1, **CPU}
    summary = run_sweep(expand_grid(seeds=[1, 2], **common), prepared, store, keep_weights=True)
    assert summary.exit_code == 0
    run_sweep(expand_grid(seeds=[3], **common), prepared, store)  # weights not kept
    return store


def test_evaluate_runs_gives_run_records_with_the_new_figures(swept, other: PreparedData, tmp_path: Path) -> None:
    from fusioncli.eval.saved import evaluate_runs
    from fusioncli.results.aggregate import build_report
    from fusioncli.results.store import ResultsStore, runs_frame

    into = ResultsStore(tmp_path / "into")
    seen = []
    records, missing = evaluate_runs(swept, other, into=into, on_run=lambda *a: seen.append(a), **CPU)
    assert len(records) == 2 and len(missing) == 1
    assert swept.get(missing[0]).config["seed"] == 3
    for r in records:
        trained = swept.get(r.run_id)
        direct = evaluate_checkpoint(swept.weights_path(r.run_id), other, **CPU)
        assert r.val_accuracy == direct["metrics"]["accuracy"]
        assert r.fingerprint == other.fingerprint and r.dataset.n_val == len(other)
        assert r.config == trained.config and r.params == trained.params
        assert r.evaluation["trained_metrics"]["val_accuracy"] == trained.val_accuracy
        assert r.evaluation["split"] == "all" and into.get(r.run_id) == json_roundtrip(r)
    assert [s[3] for s in seen] == [False, False]
    # The stored records report like any sweep: one configuration, 2 seeds.
    report = build_report(runs_frame(into.records()))
    assert report.table["n"].tolist() == [2]
    expected = 100 * sum(r.val_accuracy for r in records) / 2
    assert report.table["accuracy_pct_mean"].iloc[0] == pytest.approx(expected)
    # ... with the runs' own validation accuracy and the change from it, per run then averaged
    own = 100 * sum(swept.get(r.run_id).val_accuracy for r in records) / 2
    assert report.table["own_accuracy_pct_mean"].iloc[0] == pytest.approx(own)
    assert report.table["accuracy_change_pts_mean"].iloc[0] == pytest.approx(expected - own)
    plain = build_report(runs_frame(swept.records()))  # ordinary runs: no such figures
    assert plain.table["own_accuracy_pct_mean"].isna().all()
    # A second call reuses what --into holds; force measures again; robustness is not there yet.
    seen.clear()
    evaluate_runs(swept, other, into=into, on_run=lambda *a: seen.append(a), **CPU)
    assert [s[3] for s in seen] == [True, True]
    seen.clear()
    evaluate_runs(swept, other, into=into, force=True, on_run=lambda *a: seen.append(a), **CPU)
    assert [s[3] for s in seen] == [False, False]
    records, _ = evaluate_runs(swept, other, into=into, robustness=True, **CPU)
    assert all(into.get(r.run_id).robustness is not None for r in records)
    # A run trained again since (sweep --force) has new weights: evaluated again.
    original = swept.get(records[0].run_id)
    retrained = RunRecord.from_json({**original.to_json(), "finished_at": "2099-01-01T00:00:00+00:00"})
    swept.write(retrained)
    try:
        seen.clear()
        evaluate_runs(swept, other, into=into, robustness=True, on_run=lambda *a: seen.append(a), **CPU)
        assert sorted(s[3] for s in seen) == [False, True]
        assert into.get(retrained.run_id).finished_at == retrained.finished_at
    finally:
        swept.write(original)  # the fixture is shared by the module's other tests


def json_roundtrip(record: RunRecord) -> RunRecord:
    import json

    return RunRecord.from_json(json.loads(json.dumps(record.to_json())))


def test_evaluate_runs_never_writes_into_the_store_it_reads(swept, other: PreparedData) -> None:
    from fusioncli.eval.saved import evaluate_runs
    from fusioncli.results.store import ResultsStore

    before = {r.run_id: r for r in swept.records()}
    with pytest.raises(BadInputError, match="is the results store being evaluated"):
        evaluate_runs(swept, other, into=ResultsStore(swept.root / ".." / swept.root.name), **CPU)
    assert {r.run_id: r for r in swept.records()} == before


def test_evaluate_runs_never_writes_over_a_training_store(swept, other: PreparedData, tmp_path: Path) -> None:
    import shutil

    from fusioncli.eval.saved import evaluate_runs
    from fusioncli.results.store import ResultsStore

    copy = ResultsStore(tmp_path / "copy")  # another store holding the same trained runs
    shutil.copytree(swept.root, copy.root)
    before = copy.records()
    with pytest.raises(BadInputError, match="holds 3 run\\(s\\) trained there"):
        evaluate_runs(swept, other, into=copy, **CPU)
    assert copy.records() == before


def test_evaluate_runs_selects_run_ids(swept, other: PreparedData) -> None:
    from fusioncli.eval.saved import evaluate_runs

    first = sorted(r.run_id for r in swept.records() if swept.has_weights(r.run_id))[0]
    records, missing = evaluate_runs(swept, other, run_ids=[first], **CPU)
    assert [r.run_id for r in records] == [first] and missing == []


@pytest.mark.gpu
def test_on_cuda_it_matches_the_cpu(trained, other: PreparedData) -> None:
    cpu = evaluate_checkpoint(trained[0], other, **CPU)
    cuda = evaluate_checkpoint(trained[0], other, device="cuda", precision="fp32")
    assert cuda["device"] == "cuda:0"
    assert cuda["metrics"]["accuracy"] == pytest.approx(cpu["metrics"]["accuracy"], abs=1 / len(other))
    assert cuda["metrics"]["loss"] == pytest.approx(cpu["metrics"]["loss"], rel=1e-3)
    bf16 = evaluate_checkpoint(trained[0], other, device="cuda", precision="bf16", robustness=True)
    assert bf16["precision"] == "bf16" and bf16["robustness"]["clean_accuracy"] == bf16["metrics"]["accuracy"]


def test_weights_kept_from_a_stacked_group_score_as_the_group_did(prepared: PreparedData, tmp_path: Path) -> None:
    """Each member's kept weights, rebuilt as a model of its own, reproduce its recorded metrics."""
    from fusioncli.results.store import ResultsStore
    from fusioncli.sweep.grid import expand_grid
    from fusioncli.sweep.runner import run_sweep

    store = ResultsStore(tmp_path / "results")
    configs = expand_grid(strategies=["early"], lrs=[1e-3, 1e-4], schedulers=["constant"], epochs=1, **CPU)
    summary = run_sweep(configs, prepared, store, executor="stacked", keep_weights=True)
    assert summary.exit_code == 0
    for outcome in summary.finished:
        record = store.get(outcome.run_id)
        assert record.timing["executor"] == "stacked"
        e = evaluate_checkpoint(store.weights_path(outcome.run_id), prepared, **CPU)
        assert e["dataset"]["split"] == "val"
        assert e["metrics"]["accuracy"] == pytest.approx(record.val_accuracy, abs=1e-12)
        assert e["metrics"]["loss"] == pytest.approx(record.val_loss, rel=1e-4)
