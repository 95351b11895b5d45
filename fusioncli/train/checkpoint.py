"""Checkpoints: safetensors weights plus a JSON sidecar with the run's config and metrics.

``model.safetensors`` holds the state dict; ``model.json`` (same stem) says which strategy,
backbone, number of classes and input size ([H, W]) rebuild the model, and carries the run
record (``info``: its :meth:`~fusioncli.record.RunRecord.to_json`). A sidecar written before
sizes varied has no ``input_size``: its model was built for 64 x 64 images, and loads so. Loading
reads JSON and safetensors only, so a checkpoint from anywhere can never execute code (no pickle).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from fusioncli.atomic import atomic_path, atomic_write_json
from fusioncli.errors import BadInputError
from fusioncli.models.backbones import DEFAULT_INPUT_SIZE, as_input_size
from fusioncli.record import RunRecord

CHECKPOINT_SCHEMA = 1


def info_path(path: Path) -> Path:
    """The JSON sidecar of the weights file ``path``."""
    return Path(path).with_suffix(".json")


def check_checkpoint_path(path: Path) -> None:
    """Raise :class:`BadInputError` when ``path`` cannot hold weights next to a JSON sidecar."""
    path = Path(path)
    if path.suffix == ".json":
        raise BadInputError(
            f"--checkpoint {path}: the weights file cannot end in .json (its info goes to <stem>.json)",
            hint="use e.g. --checkpoint model.safetensors",
        )
    if path.exists() and path.is_dir():
        raise BadInputError(f"--checkpoint {path} is a folder; give a file name such as {path / 'model.safetensors'}")


def _model_spec(record: RunRecord, input_size: Sequence[int]) -> dict[str, Any]:
    class_names = record.dataset.class_names if record.dataset is not None else None
    spec = {
        "strategy": record.config.get("strategy"),
        "backbone": record.config.get("backbone"),
        "num_classes": len(class_names) if class_names else None,
    }
    missing = [k for k, v in spec.items() if v is None]
    if missing:
        raise ValueError(
            "checkpoint info needs config.strategy, config.backbone and dataset.class_names; "
            f"missing: {', '.join(missing)}"
        )
    return {**spec, "input_size": list(as_input_size(input_size))}


def saved_input_size(spec: dict[str, Any]) -> tuple[int, int]:
    """The (H, W) input size a checkpoint's model spec was built for (64 x 64 when it predates sizes)."""
    size = spec.get("input_size")
    return DEFAULT_INPUT_SIZE if size is None else as_input_size(size)


def save_checkpoint(
    path: Path, model: nn.Module, record: RunRecord, *, input_size: Sequence[int] | None = None
) -> None:
    """Write ``model``'s weights to ``path`` (safetensors) and ``record`` to ``path.with_suffix('.json')``.

    The sidecar holds the model spec (strategy, backbone, number of classes, from the record;
    ``input_size`` (H, W), by default the size the model was built for,
    :func:`fusioncli.models.model_input_size`) and the record as ``info``
    (:meth:`RunRecord.to_json`). Both files are written atomically, weights first, so a sidecar
    never describes weights that are not there yet.
    """
    from fusioncli.models import model_input_size

    path = Path(path)
    check_checkpoint_path(path)
    spec = _model_spec(record, model_input_size(model) if input_size is None else input_size)
    # safetensors wants contiguous, unshared CPU tensors; channels_last weights become plain
    # NCHW here, which is also what a fresh model expects.
    state = {name: t.detach().to("cpu").contiguous().clone() for name, t in model.state_dict().items()}
    metadata = {"format": "pt", "producer": "fusioncli", **{k: str(v) for k, v in spec.items()}}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    atomic_write_json(
        info_path(path),
        {"checkpoint_schema": CHECKPOINT_SCHEMA, "weights": path.name, "model": spec, "info": record.to_json()},
    )


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, RunRecord]:
    """Rebuild the model saved at ``path`` (weights loaded, eval mode; built for the saved input
    size, :func:`fusioncli.models.model_input_size` tells it) and return it with the run record
    saved with it.

    Reads only JSON and safetensors (never unpickles). A missing or damaged file raises
    :class:`BadInputError`.
    """
    from fusioncli.models import create_model

    path = Path(path)
    sidecar = info_path(path)
    problems = [f"checkpoint {p} does not exist" for p in (path, sidecar) if not p.is_file()]
    if problems:
        raise BadInputError(problems, hint="write one with `fusioncli train --checkpoint PATH`")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        spec = meta["model"]
        if meta.get("checkpoint_schema") != CHECKPOINT_SCHEMA:
            raise ValueError(f"unsupported checkpoint_schema {meta.get('checkpoint_schema')!r}")
        try:
            record = RunRecord.from_json(meta["info"])
        except ValueError as exc:
            raise ValueError(f"its run info {exc}") from None
        try:
            size = saved_input_size(spec)
        except BadInputError as exc:
            raise ValueError(f"its model input_size: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f"checkpoint info {sidecar} is not valid: {exc}") from None
    model = create_model(
        spec["strategy"], spec["backbone"], int(spec["num_classes"]), input_size=size, **record.input_norms
    )
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise BadInputError(f"checkpoint {path} is not a valid safetensors file: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BadInputError(f"checkpoint {path} does not fit {spec['strategy']}/{spec['backbone']}: {exc}") from None
    model.to(device)
    model.eval()
    return model, record
