"""A prepared cache that is not 64 x 64 with 2 classes (a ``--manifest`` dataset of 24 x 40 images,
3 classes) through the CLI: strategies, train, checkpoint, report, evaluate (with robustness)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
import manifestfactory as mf

from fusioncli.cli import app
from fusioncli.data.cache import prepare_manifest
from fusioncli.models import describe_strategies

runner = CliRunner()
CPU = ["--device", "cpu", "--precision", "fp32"]
CLASSES = ("dog", "cat", "bird")


def manifest_cache(root: Path, size: tuple[int, int], classes: tuple[str, ...] = CLASSES) -> Path:
    manifest = mf.write_dataset(root / "data", per_class=8, classes=classes, size=size)
    prepare_manifest(manifest, root / "cache")
    return root / "cache"


@pytest.fixture(scope="module")
def sized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return manifest_cache(tmp_path_factory.mktemp("sized"), (24, 40))


@pytest.fixture(scope="module")
def checkpoint(sized: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("sized-ckpt") / "late.safetensors"
    result = runner.invoke(
        app,
        ["train", "--strategy", "late", "--epochs", "1", *CPU, "--cache-dir", str(sized), "--checkpoint", str(path),
         "--format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return path, json.loads(result.stdout)


def test_strategies_size_the_models_for_the_cache(sized: Path) -> None:
    result = runner.invoke(app, ["strategies", "--cache-dir", str(sized), "-f", "json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {(tuple(r["input_size"]), r["num_classes"]) for r in rows} == {((24, 40), 3)}
    assert rows == describe_strategies("seed", 3, (24, 40))


def test_profile_sizes_the_models_and_inputs_for_the_cache(sized: Path) -> None:
    args = ["profile", "-s", "late,rgb-only", "-b", "2", "--warmup", "0", "--iters", "1", "-f", "json"]
    result = runner.invoke(app, [*args, "--cache-dir", str(sized)])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    described = {r["name"]: r for r in describe_strategies("seed", 3, (24, 40))}
    for row in rows:  # a forward pass ran on (2, 4, 24, 40) inputs of the model described for the cache
        assert (row["input_size"], row["num_classes"]) == ([24, 40], 3)
        want = described[row["strategy"]]
        assert (row["params"], row["flops_per_sample"]) == (want["params"], want["flops_per_sample"])
    default = runner.invoke(app, args)  # without a cache: the seed's 64 x 64, 2 classes
    assert default.exit_code == 0, default.stderr
    assert {(tuple(r["input_size"]), r["num_classes"]) for r in json.loads(default.stdout)} == {((64, 64), 2)}
    missing = runner.invoke(app, [*args, "--cache-dir", str(sized.parent / "nowhere")])
    assert missing.exit_code == 2 and "no prepared cache" in missing.stderr


def test_train_builds_for_the_caches_size_and_classes(checkpoint: tuple[Path, dict]) -> None:
    path, record = checkpoint
    late = next(r for r in describe_strategies("seed", 3, (24, 40)) if r["name"] == "late")
    assert record["params"]["total"] == late["params"] and record["flops_per_sample"] == late["flops_per_sample"]
    assert record["dataset"]["class_names"] == sorted(CLASSES)  # the cache orders classes by name
    assert list(record["metrics"]["per_class"]) == sorted(CLASSES)
    spec = json.loads(path.with_suffix(".json").read_text())["model"]
    assert spec["input_size"] == [24, 40] and spec["num_classes"] == 3


def test_report_reads_the_three_class_run(checkpoint: tuple[Path, dict], tmp_path: Path) -> None:
    from fusioncli.record import RunRecord
    from fusioncli.results.store import ResultsStore

    _, record = checkpoint
    store = ResultsStore(tmp_path / "results")  # train stores no record; a sweep would store this one
    store.write(RunRecord.from_json(record))
    result = runner.invoke(app, ["report", "--results-dir", str(store.root), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["strategy"] == "late"
    assert row["accuracy_pct_mean"] == pytest.approx(100 * record["metrics"]["val_accuracy"])
    markdown = runner.invoke(app, ["report", "--results-dir", str(store.root), "--format", "markdown"])
    assert markdown.exit_code == 0, markdown.stderr
    assert "| late |" in markdown.stdout


def test_evaluate_scores_every_class_with_robustness(checkpoint: tuple[Path, dict], sized: Path) -> None:
    path, record = checkpoint
    args = ["evaluate", str(path), "--cache-dir", str(sized), *CPU, "--robustness"]
    result = runner.invoke(app, [*args, "-f", "json"])
    assert result.exit_code == 0, result.stderr
    (e,) = json.loads(result.stdout)
    assert e["model"]["input_size"] == [24, 40] and [len(row) for row in e["metrics"]["confusion"]] == [3, 3, 3]
    assert e["metrics"]["accuracy"] == pytest.approx(record["metrics"]["val_accuracy"], abs=1e-12)
    assert e["robustness"]["clean_accuracy"] == pytest.approx(e["metrics"]["accuracy"])
    table = runner.invoke(app, args[:-1])
    assert table.exit_code == 0, table.stderr
    assert all(f"→ {name}" in table.stdout for name in CLASSES)


def test_evaluate_refuses_images_of_another_size(checkpoint: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = checkpoint
    other = manifest_cache(tmp_path, (32, 32))
    result = runner.invoke(app, ["evaluate", str(path), "--cache-dir", str(other), *CPU])
    assert result.exit_code == 2
    assert "was built for 24x40 images" in result.stderr and "holds 32x32 images" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_cache_too_small_for_the_backbone_is_bad_input(tmp_path: Path) -> None:
    small = manifest_cache(tmp_path, (12, 16), classes=("dog", "cat"))
    result = runner.invoke(app, ["train", "--strategy", "late", "--backbone", "lab", "--epochs", "1", *CPU,
                                 "--cache-dir", str(small)])  # fmt: skip
    assert result.exit_code == 2
    assert "input size 12x16 is too small for backbone 'lab'" in result.stderr and "16x16" in result.stderr
    assert "Traceback" not in result.stderr
