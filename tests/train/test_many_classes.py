"""Training, checkpoints and evaluation on data that is not 64 x 64 with 2 classes: the models
are built for the data's image size and class count wherever a model is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fusioncli.config import RunConfig
from fusioncli.data.dataset import PreparedData
from fusioncli.errors import BadInputError
from fusioncli.eval.saved import evaluate_checkpoint
from fusioncli.models import create_model, describe_strategies, model_input_size
from fusioncli.record import DatasetInfo, RunRecord
from fusioncli.sweep.ray_backend import model_from_weights, weights_to_bytes
from fusioncli.train import engine
from fusioncli.train.checkpoint import info_path, load_checkpoint, save_checkpoint
from fusioncli.train.loop import RunResult, train_run
from fusioncli.train.stacked import train_stacked

CLASSES = ("box", "ball", "cone")
SIZE = (24, 40)


def tiny_data(
    size: tuple[int, int] = SIZE, classes: tuple[str, ...] = CLASSES, per_class: int = 8, seed: int = 0
) -> PreparedData:
    """``per_class`` random samples per class of ``size`` images, a quarter of them validation."""
    g = torch.Generator().manual_seed(seed)
    n = per_class * len(classes)
    return PreparedData(
        rgb=torch.randint(0, 256, (n, 4, *size), generator=g, dtype=torch.uint8),
        xyza=torch.rand(n, 4, *size, generator=g),
        depth=torch.full((n, *size), 50.0),
        labels=torch.arange(len(classes)).repeat_interleave(per_class),
        is_val=torch.arange(n) % 4 == 0,
        class_names=classes,
        fingerprint=f"tiny-{size[0]}x{size[1]}-{len(classes)}",
    )


def config(strategy: str = "late", seed: int = 51) -> RunConfig:
    return RunConfig(strategy=strategy, epochs=1, batch_size=8, seed=seed, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def trained() -> RunResult:
    """One ``late`` run on 3 classes of 24 x 40 images."""
    return train_run(config(), tiny_data())


def test_a_run_builds_its_model_for_the_datas_size_and_classes(trained: RunResult) -> None:
    record, model = trained.record, trained.model
    row = next(r for r in describe_strategies("seed", 3, SIZE) if r["name"] == "late")
    assert record.params["total"] == row["params"] != 13_147_202
    assert record.flops_per_sample == row["flops_per_sample"]
    assert model_input_size(model) == SIZE
    with torch.no_grad():
        assert model(torch.rand(2, 4, *SIZE), torch.rand(2, 4, *SIZE)).shape == (2, 3)
    # Per-class metrics for every class, in class order; supports add up to the validation split.
    assert record.dataset is not None and record.dataset.class_names == CLASSES
    assert list(record.metrics.per_class) == list(CLASSES)
    assert sum(c["support"] for c in record.metrics.per_class.values()) == record.dataset.n_val == 6
    assert 0.0 <= record.val_accuracy <= 1.0


def test_a_stacked_group_builds_for_the_datas_size_and_classes() -> None:
    data = tiny_data(size=(24, 16), classes=("a", "b", "c", "d"), per_class=4)
    results = train_stacked([config("intermediate-add", seed=1), config("intermediate-add", seed=2)], data)
    row = next(r for r in describe_strategies("seed", 4, (24, 16)) if r["name"] == "intermediate-add")
    for result in results:
        assert result.record.params["total"] == row["params"]
        assert result.record.flops_per_sample == row["flops_per_sample"]
        assert list(result.record.metrics.per_class) == ["a", "b", "c", "d"]
        assert model_input_size(result.model) == (24, 16)
    # Each member is trained exactly as train_run trains it alone (same seed, same data).
    alone = train_run(config("intermediate-add", seed=2), data)
    assert results[1].record.history[0]["train_loss"] == pytest.approx(alone.record.history[0]["train_loss"], 1e-5)


def test_the_checkpoint_records_the_size_and_rebuilds_it(trained: RunResult, tmp_path: Path) -> None:
    path = tmp_path / "late.safetensors"
    save_checkpoint(path, trained.model, trained.record)
    spec = json.loads(info_path(path).read_text())["model"]
    assert spec == {"strategy": "late", "backbone": "seed", "num_classes": 3, "input_size": [24, 40]}
    loaded, info = load_checkpoint(path)
    assert model_input_size(loaded) == SIZE and info.run_id == trained.record.run_id
    rgb, xyza = torch.rand(2, 4, *SIZE), torch.rand(2, 4, *SIZE)
    with torch.no_grad():
        assert torch.allclose(loaded(rgb, xyza), trained.model(rgb, xyza), atol=1e-5)


def test_a_checkpoint_written_before_sizes_loads_as_64_by_64(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("early", "seed", 2).eval()
    record = RunRecord.failed(
        config("early").to_dict(), None, "not trained", started_at=None, finished_at="2024-01-01T00:00:00+00:00",
        dataset=DatasetInfo(None, ("cubes", "spheres")),
    )  # fmt: skip
    path = tmp_path / "old.safetensors"
    save_checkpoint(path, model, record)
    sidecar = json.loads(info_path(path).read_text())
    assert sidecar["model"].pop("input_size") == [64, 64]
    info_path(path).write_text(json.dumps(sidecar))  # what an older fusioncli wrote
    loaded, _ = load_checkpoint(path)
    assert model_input_size(loaded) == (64, 64)
    x = torch.rand(1, 4, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x, x), model(x, x))


def test_a_bad_saved_input_size_is_bad_input(trained: RunResult, tmp_path: Path) -> None:
    path = tmp_path / "late.safetensors"
    save_checkpoint(path, trained.model, trained.record)
    sidecar = json.loads(info_path(path).read_text())
    sidecar["model"]["input_size"] = [32]
    info_path(path).write_text(json.dumps(sidecar))
    with pytest.raises(BadInputError, match="is not valid: its model input_size"):
        load_checkpoint(path)


def test_evaluation_reports_every_class_and_refuses_another_size(trained: RunResult, tmp_path: Path) -> None:
    path = tmp_path / "late.safetensors"
    save_checkpoint(path, trained.model, trained.record)
    data = tiny_data()
    e = evaluate_checkpoint(path, data, device="cpu", precision="fp32")
    assert e["model"]["num_classes"] == 3 and e["model"]["input_size"] == [24, 40]
    assert e["dataset"]["split"] == "val" and e["dataset"]["class_names"] == list(CLASSES)
    confusion = e["metrics"]["confusion"]
    assert len(confusion) == 3 and all(len(row) == 3 for row in confusion) and sum(map(sum, confusion)) == 6
    assert list(e["metrics"]["per_class"]) == list(CLASSES)
    assert e["metrics"]["accuracy"] == pytest.approx(trained.record.val_accuracy, abs=1e-12)
    assert e["metrics"]["calibration"]["score_n"] == 3
    with pytest.raises(BadInputError, match="built for 24x40 images; the cache here holds 64x64 images"):
        evaluate_checkpoint(path, tiny_data(size=(64, 64)), device="cpu", precision="fp32", cache_hint="here")


def test_ray_weights_come_back_at_their_size(trained: RunResult) -> None:
    weights = weights_to_bytes(trained.model)
    model = model_from_weights(trained.record, weights, input_size=[24, 40])
    assert model_input_size(model) == SIZE
    with pytest.raises(RuntimeError, match="size mismatch"):  # a payload without a size means 64 x 64
        model_from_weights(trained.record, weights)
    torch.manual_seed(0)
    square = create_model("late", "seed", 3)
    assert model_input_size(model_from_weights(trained.record, weights_to_bytes(square))) == (64, 64)


def test_images_and_depth_of_different_sizes_are_bad_input() -> None:
    data = tiny_data()
    odd = PreparedData(
        rgb=data.rgb, xyza=data.xyza, depth=torch.full((len(data), 32, 40), 50.0), labels=data.labels,
        is_val=data.is_val, class_names=data.class_names, fingerprint="odd",
    )  # fmt: skip
    assert engine.input_size(data) == SIZE
    with pytest.raises(BadInputError, match="RGB images are 24x40 but its depth maps 32x40"):
        engine.input_size(odd)
    with pytest.raises(BadInputError, match="32x40"):
        train_run(config(), odd)


def test_data_too_small_for_the_backbone_is_bad_input() -> None:
    with pytest.raises(BadInputError, match=r"input size 12x12 is too small for backbone 'lab'.*16x16"):
        train_run(RunConfig(strategy="late", backbone="lab", epochs=1, device="cpu"), tiny_data(size=(12, 12)))
