"""A 3-class dataset through the CLI: train's per-class table, report, evaluate's confusion matrix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fusioncli.cli import app
from fusioncli.data.cache import IS_VAL_FILE, LABELS_FILE, MANIFEST

runner = CliRunner()
CPU = ["--device", "cpu", "--precision", "fp32"]
CLASSES = ["cubes", "spheres", "cones"]


@pytest.fixture(scope="module")
def three_classes(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session cache relabelled into 3 classes (sample i gets label i % 3): same images, same
    shard sizes, a manifest that names 3 classes."""
    cache = tmp_path_factory.mktemp("three") / "cache"
    shutil.copytree(cache_dir, cache)
    labels = np.arange(len(np.load(cache / LABELS_FILE)), dtype=np.int64) % 3
    np.save(cache / LABELS_FILE, labels)
    is_val = np.load(cache / IS_VAL_FILE)
    manifest = json.loads((cache / MANIFEST).read_text())
    manifest["class_names"] = CLASSES
    manifest["counts"] = {
        name: {"train": int(((labels == c) & ~is_val).sum()), "val": int(((labels == c) & is_val).sum())}
        for c, name in enumerate(CLASSES)
    }
    (cache / MANIFEST).write_text(json.dumps(manifest))
    return cache


@pytest.fixture(scope="module")
def trained(three_classes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """`fusioncli train` on the 3 classes: (a results store holding its record, checkpoint, the
    record as json)."""
    from fusioncli.record import RunRecord
    from fusioncli.results.store import ResultsStore

    folder = tmp_path_factory.mktemp("three-run")
    checkpoint = folder / "rgb.safetensors"
    result = runner.invoke(
        app,
        ["train", "--strategy", "rgb-only", "--epochs", "1", "--limit-per-class", "8", *CPU,
         "--cache-dir", str(three_classes), "--checkpoint", str(checkpoint), "--format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    store = ResultsStore(folder / "results")  # train stores no record; a sweep would store this one
    store.write(RunRecord.from_json(record))
    return store.root, checkpoint, record


def test_train_records_every_class(trained: tuple[Path, Path, dict]) -> None:
    _, checkpoint, record = trained
    assert record["dataset"]["class_names"] == CLASSES
    per_class = record["metrics"]["per_class"]
    assert list(per_class) == CLASSES and all(per_class[c]["support"] > 0 for c in CLASSES)
    assert json.loads(checkpoint.with_suffix(".json").read_text())["model"]["num_classes"] == 3


def test_report_reads_a_three_class_store(trained: tuple[Path, Path, dict]) -> None:
    results, _, record = trained
    result = runner.invoke(app, ["report", "--results-dir", str(results), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["strategy"] == "rgb-only"
    assert row["accuracy_pct_mean"] == pytest.approx(100 * record["metrics"]["val_accuracy"])
    markdown = runner.invoke(app, ["report", "--results-dir", str(results), "--format", "markdown"])
    assert markdown.exit_code == 0, markdown.stderr
    assert "| rgb-only |" in markdown.stdout


def test_evaluate_shows_a_three_by_three_confusion_matrix(
    trained: tuple[Path, Path, dict], three_classes: Path
) -> None:
    _, checkpoint, record = trained
    args = ["evaluate", str(checkpoint), "--cache-dir", str(three_classes), *CPU]
    result = runner.invoke(app, [*args, "-f", "json"])
    assert result.exit_code == 0, result.stderr
    (e,) = json.loads(result.stdout)
    confusion = e["metrics"]["confusion"]
    assert [len(row) for row in confusion] == [3, 3, 3]
    assert [sum(row) for row in confusion] == [e["metrics"]["per_class"][c]["support"] for c in CLASSES]
    assert e["model"]["num_classes"] == 3 and e["model"]["input_size"] == [64, 64]
    # Trained on --limit-per-class 8, scored on the whole validation split: the matrix's own accuracy.
    assert e["metrics"]["accuracy"] == pytest.approx(sum(confusion[i][i] for i in range(3)) / sum(map(sum, confusion)))
    assert e["run_id"] == record["run_id"]
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.stderr
    for text in ("→ cubes", "→ spheres", "→ cones"):
        assert text in table.stdout


def test_evaluate_on_the_two_class_cache_names_both_class_lists(
    trained: tuple[Path, Path, dict], cache_dir: Path
) -> None:
    _, checkpoint, _ = trained
    result = runner.invoke(app, ["evaluate", str(checkpoint), "--cache-dir", str(cache_dir), *CPU])
    assert result.exit_code == 2
    assert "trained on classes ['cubes', 'spheres', 'cones']" in result.stderr and "Traceback" not in result.stderr
