"""`fusioncli evaluate` on the store's best checkpoints: one per dataset, an older store's single
best, and damaged ones (a clear message, never a traceback)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweep"))
from sweep_fakes import fake_record  # noqa: E402

from fusioncli.cli import app  # noqa: E402
from fusioncli.config import RunConfig  # noqa: E402
from fusioncli.record import RunRecord  # noqa: E402
from fusioncli.results.store import ResultsStore  # noqa: E402

runner = CliRunner()
CPU = ["--device", "cpu", "--precision", "fp32"]


def _fingerprint(cache_dir: Path) -> str:
    return json.loads((cache_dir / "manifest.json").read_text())["fingerprint"]


def _best(store: ResultsStore, fingerprint: str, *, strategy: str = "late", legacy: bool = False) -> RunRecord:
    """A best checkpoint of an (untrained) real model for runs on dataset ``fingerprint``."""
    from fusioncli.models import create_model
    from fusioncli.train.checkpoint import save_checkpoint

    record = fake_record(RunConfig(strategy=strategy, epochs=1, device="cpu", precision="fp32"), fingerprint)
    model = create_model(strategy, "seed", 2)
    if legacy:  # as the previous version wrote it: best/model.safetensors for the whole store
        save_checkpoint(store.legacy_best_path, model, record)
    else:
        store.update_best(record, lambda path: save_checkpoint(path, model, record))
    return record


def _evaluate(store: ResultsStore, cache_dir: Path, *args: str):
    return runner.invoke(
        app, ["evaluate", *args, "--results-dir", str(store.root), "--cache-dir", str(cache_dir), *CPU, "-f", "json"]
    )


def test_the_default_is_the_best_of_the_caches_dataset(cache_dir: Path, tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results")
    own = _best(store, _fingerprint(cache_dir), strategy="late")
    _best(store, "another-dataset", strategy="intermediate-add")  # written last, yet not the one
    result = _evaluate(store, cache_dir)
    assert result.exit_code == 0, result.output
    [evaluation] = json.loads(result.stdout)
    assert evaluation["run_id"] == own.run_id
    assert evaluation["checkpoint"] == str(store.best_checkpoint_for(_fingerprint(cache_dir)))
    assert evaluation["dataset"]["same_as_training"] is True


def test_the_only_best_of_another_dataset_is_scored_on_all_of_the_cache(cache_dir: Path, tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results")
    other = _best(store, "synthetic-training-data")
    result = _evaluate(store, cache_dir)
    assert result.exit_code == 0, result.output
    [evaluation] = json.loads(result.stdout)
    assert evaluation["run_id"] == other.run_id and evaluation["dataset"]["split"] == "all"
    # The best/ folder as an argument: its one dataset folder's checkpoint.
    result = _evaluate(store, cache_dir, str(store.best_dir))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["checkpoint"] == str(store.best_checkpoint_for("synthetic-training-data"))


def test_several_bests_of_other_datasets_ask_which_one(cache_dir: Path, tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results")
    _best(store, "dataset-one")
    _best(store, "dataset-two")
    result = _evaluate(store, cache_dir)
    assert result.exit_code == 2 and result.stdout == ""
    assert "best models of 2 datasets" in result.stderr and "Traceback" not in result.output
    assert str(store.best_checkpoint_for("dataset-one")) in result.stderr
    folder = _evaluate(store, cache_dir, str(store.best_dir))
    assert folder.exit_code == 2 and "holds 2 checkpoints (one per dataset)" in folder.stderr


def test_an_old_stores_best_is_still_the_default(cache_dir: Path, tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results")
    old = _best(store, _fingerprint(cache_dir), legacy=True)
    result = _evaluate(store, cache_dir)
    assert result.exit_code == 0, result.output
    [evaluation] = json.loads(result.stdout)
    assert evaluation["run_id"] == old.run_id and evaluation["checkpoint"] == str(store.legacy_best_path)


@pytest.mark.parametrize("damage", ["weights cut short", "info missing", "info broken"])
def test_a_damaged_best_is_a_clear_error(cache_dir: Path, tmp_path: Path, damage: str) -> None:
    store = ResultsStore(tmp_path / "results")
    _best(store, _fingerprint(cache_dir))
    _best(store, "another-dataset")  # usable, but not the one this cache's best should be
    weights = store.best_checkpoint_for(_fingerprint(cache_dir))
    if damage == "weights cut short":
        weights.write_bytes(weights.read_bytes()[:5000])
    elif damage == "info missing":
        weights.with_suffix(".json").unlink()
    else:
        weights.with_suffix(".json").write_text('{"checkpoint_schema": 1, "info": {"run')
    result = _evaluate(store, cache_dir)
    assert result.exit_code == 2 and result.stdout == ""
    assert f"the best model {weights.parent} in the results store is damaged" in result.stderr
    assert "fusioncli sweep" in result.stderr and "Traceback" not in result.output
    # Named explicitly, the damaged weights are one clear line too.
    if damage == "weights cut short":
        direct = _evaluate(store, cache_dir, str(weights))
        assert direct.exit_code == 2 and "not a valid safetensors file" in direct.stderr
        assert "Traceback" not in direct.output
