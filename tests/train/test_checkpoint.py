"""Checkpoints: safetensors + JSON round trip, and no pickle anywhere on the load path."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch

from fusioncli.data.dataset import PreparedData
from fusioncli.errors import BadInputError
from fusioncli.models import create_model
from fusioncli.record import DatasetInfo, RunRecord
from fusioncli.train.checkpoint import load_checkpoint, save_checkpoint
from fusioncli.config import RunConfig
from fusioncli.train.loop import train_run



def tiny_data(n: int = 20) -> PreparedData:
    g = torch.Generator().manual_seed(0)
    return PreparedData(
        rgb=torch.randint(0, 255, (n, 4, 64, 64), generator=g, dtype=torch.uint8),
        xyza=torch.rand(n, 4, 64, 64, generator=g),
        depth=torch.full((n, 64, 64), 50.0),
        labels=torch.arange(n) % 2,
        is_val=torch.arange(n) >= n - 4,
        class_names=("cubes", "spheres"),
        fingerprint="tiny",
    )


def info_for(strategy: str, backbone: str = "seed") -> RunRecord:
    """The least record a checkpoint needs: the config and the class names (a failed run's record)."""
    return RunRecord.failed(
        RunConfig(strategy=strategy, backbone=backbone).to_dict(),
        None,
        "not trained",
        started_at=None,
        finished_at="2024-01-01T00:00:00+00:00",
        dataset=DatasetInfo(None, ("cubes", "spheres")),
    )


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 4, 64, 64, generator=g), torch.rand(3, 4, 64, 64, generator=g)


@pytest.mark.parametrize("strategy", ["early", "intermediate-add"])
def test_round_trip_gives_the_same_logits(tmp_path: Path, strategy: str) -> None:
    torch.manual_seed(1)
    model = create_model(strategy).eval()
    path = tmp_path / "ckpt" / "model.safetensors"
    save_checkpoint(path, model, info_for(strategy))
    loaded, info = load_checkpoint(path)
    assert info == info_for(strategy)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(*inputs()), model(*inputs()))
    fresh = create_model(strategy).eval()  # other weights: the equality above is not vacuous
    with torch.no_grad():
        assert not torch.equal(fresh(*inputs()), model(*inputs()))


def test_round_trip_of_a_trained_channels_last_model(tmp_path: Path) -> None:
    result = train_run(RunConfig(strategy="early", device="cpu", precision="fp32", epochs=1), tiny_data())
    path = tmp_path / "run.safetensors"
    save_checkpoint(path, result.model, result.record)
    loaded, info = load_checkpoint(path)
    assert info.run_id == result.record.run_id
    assert json.loads(path.with_suffix(".json").read_text())["model"] == {
        "strategy": "early",
        "backbone": "seed",
        "num_classes": 2,
        "input_size": [64, 64],
    }
    with torch.no_grad():
        assert torch.allclose(loaded(*inputs()), result.model(*inputs()), atol=1e-5)


def test_files_are_safetensors_and_json(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, create_model("early"), info_for("early"))
    raw = path.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + header_len])  # safetensors: u64 length + JSON header + raw data
    assert header["__metadata__"]["strategy"] == "early"
    assert not raw.startswith(b"PK") and b"\x80\x02" not in raw[:16]  # not a torch zip, not a pickle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]  # no temp files left


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, create_model("early"), info_for("early"))

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used on the load path")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    model, _ = load_checkpoint(path)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_missing_files_are_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, create_model("early"), info_for("early"))
    path.with_suffix(".json").unlink()
    with pytest.raises(BadInputError, match=r"m\.json does not exist"):
        load_checkpoint(path)


def test_damaged_or_mismatched_checkpoints_are_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, create_model("early"), info_for("early"))
    sidecar = json.loads(path.with_suffix(".json").read_text())
    sidecar["model"]["strategy"] = "late"
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(BadInputError, match="does not fit late"):
        load_checkpoint(path)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(BadInputError, match="not a valid safetensors"):
        load_checkpoint(path)


def test_json_weights_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="cannot end in .json"):
        save_checkpoint(tmp_path / "m.json", create_model("early"), info_for("early"))
