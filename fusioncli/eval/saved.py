"""Evaluate saved models (safetensors checkpoints) on a prepared dataset — the same one or another.

The question a benchmark has to answer after training: how does this model do on data it has
not seen — the validation split it was selected on, a held-out set, the real DLI data after
training on synthetic scenes, a harder rendering? :func:`evaluate_checkpoint` loads a
checkpoint (``fusioncli train --checkpoint``, the sweep's ``best/``, or a sweep's saved
weights) and scores it on a split of a prepared cache, optionally with the corrupted-input
robustness suite, and returns an *evaluation record*::

    {"schema": 1, "checkpoint": str, "run_id": str | None,
     "model": {"strategy", "backbone", "num_classes"},
     "trained": {"dataset_fingerprint", "val_accuracy", "config"},   # what the checkpoint says
     "dataset": {"fingerprint", "same_as_training": bool, "split": "val" | "train" | "all",
                 "split_note": str, "n": int, "class_names": [...]},
     "metrics": {"loss", "accuracy", "f1_macro", "per_class", "confusion"},
     "robustness": {...} | None,            # as in a run record (fusioncli.eval.robustness)
     "device", "precision", "seconds"}

Which split is fair depends on where the data came from, so ``split="auto"`` decides: the
validation split when the cache is the one the model was trained on (its fingerprint matches:
the same raw files and prepare options), else every sample (a different dataset is unseen as a
whole). Asking for ``all`` or ``train`` on the training dataset is allowed — the record's
``split_note`` says the training samples make the figure optimistic.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fusioncli.data.dataset import PreparedData
from fusioncli.errors import BadInputError
from fusioncli.train.checkpoint import load_checkpoint
from fusioncli.train.config import RunConfig
from fusioncli.train.loop import EVAL_BATCH_MIN, _autocast, _batch, _channels_last, _cudnn_mode
from fusioncli.train.metrics import classification_metrics, confusion_matrix

EVALUATION_SCHEMA = 1
SPLITS = ("auto", "val", "train", "all")
WEIGHTS_NAME = "model.safetensors"  # what a folder argument (e.g. the store's best/) holds


def checkpoint_file(path: Path) -> Path:
    """``path`` itself, or ``path/model.safetensors`` when ``path`` is a folder holding one."""
    path = Path(path)
    if path.is_dir():
        inside = path / WEIGHTS_NAME
        if not inside.is_file():
            raise BadInputError(f"{path} is a folder without {WEIGHTS_NAME}", hint="give the .safetensors file itself")
        return inside
    return path


def _base_fingerprint(fingerprint: str | None) -> str | None:
    # PreparedData.limit_per_class tags its view "<cache fingerprint>:limitN": same cache underneath.
    return None if fingerprint is None else fingerprint.split(":", 1)[0]


def choose_split(split: str, same_dataset: bool) -> tuple[str, str]:
    """``(split, note)``: the split to score for ``split`` (one of :data:`SPLITS`) and why."""
    if split not in SPLITS:
        raise BadInputError(f"--split must be one of {', '.join(SPLITS)} (got {split!r})")
    if split == "auto":
        split = "val" if same_dataset else "all"
        why = "the dataset it was trained on" if same_dataset else "a dataset it was not trained on"
        return split, f"auto: {split} split of {why}"
    if same_dataset and split in ("train", "all"):
        return split, f"{split}: includes samples the model was trained on (optimistic)"
    return split, split


def _split_mask(data: PreparedData, split: str) -> torch.Tensor:
    if split == "val":
        return data.is_val
    if split == "train":
        return ~data.is_val
    return torch.ones_like(data.is_val)


def _check_classes(path: Path, info: dict[str, Any], data: PreparedData, cache_hint: str) -> None:
    trained = list((info.get("dataset") or {}).get("class_names") or [])
    if trained and trained != list(data.class_names):
        raise BadInputError(
            f"checkpoint {path} was trained on classes {trained}; the cache {cache_hint} has {list(data.class_names)}",
            hint="evaluate on data with the same class folders",
        )


def evaluate_checkpoint(
    path: Path,
    data: PreparedData,
    *,
    split: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 256,
    robustness: bool = False,
    corruption_seed: int = 0,
    cache_hint: str = "",
) -> dict[str, Any]:
    """Score the checkpoint at ``path`` on ``split`` of ``data``; the evaluation record (module doc).

    ``data`` may live on any device; the chosen split is moved to ``device`` once.
    ``cache_hint`` names the cache in error messages. Bad checkpoints, a class mismatch or an
    empty split raise :class:`BadInputError`.
    """
    path = checkpoint_file(path)
    started = time.perf_counter()
    resolved = RunConfig(device=device, precision=precision, batch_size=batch_size).resolve()
    dev = torch.device(resolved.device)
    model, info = load_checkpoint(path, dev)
    _check_classes(path, info, data, cache_hint)
    trained_fp = _base_fingerprint((info.get("dataset") or {}).get("fingerprint"))
    same = trained_fp is not None and trained_fp == _base_fingerprint(data.fingerprint)
    split, note = choose_split(split, same)
    mask = _split_mask(data, split)
    if int(mask.sum()) == 0:
        raise BadInputError(f"the {split} split of the cache {cache_hint} is empty".replace("  ", " "))
    # The chosen samples become the "validation" split of a view, which is what the
    # robustness suite scores; one copy onto the device, channels_last as in training.
    scored = _channels_last(replace(data, is_val=mask).subset(torch.nonzero(mask).flatten()).to(dev))
    model = model.to(memory_format=torch.channels_last)

    n = len(scored)
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    preds = []
    step = max(batch_size, EVAL_BATCH_MIN)
    with torch.inference_mode(), _cudnn_mode(dev, resolved.precision):
        for start in range(0, n, step):
            rgb, xyza = _batch(scored, slice(start, start + step))
            with _autocast(dev, resolved.precision):
                logits = model(rgb, xyza)
            logits = logits.float()  # loss and argmax in fp32 even under bf16 autocast
            loss_sum += F.cross_entropy(logits, scored.labels[start : start + step], reduction="sum")
            preds.append(logits.argmax(dim=1))
    labels = scored.labels.cpu()
    predicted = torch.cat(preds).cpu()
    metrics = {
        "loss": float(loss_sum) / n,
        **classification_metrics(labels, predicted, scored.class_names),
        "confusion": confusion_matrix(labels, predicted, scored.num_classes).tolist(),
    }

    robust = None
    if robustness:
        from fusioncli.eval.robustness import evaluate_robustness

        robust = evaluate_robustness(model, scored, resolved, seed=corruption_seed)

    trained_metrics = info.get("metrics") or {}
    return {
        "schema": EVALUATION_SCHEMA,
        "checkpoint": str(path),
        "run_id": info.get("run_id"),
        "model": {
            "strategy": (info.get("config") or {}).get("strategy"),
            "backbone": (info.get("config") or {}).get("backbone"),
            "num_classes": data.num_classes,
        },
        "trained": {
            "dataset_fingerprint": (info.get("dataset") or {}).get("fingerprint"),
            "val_accuracy": trained_metrics.get("val_accuracy"),
            "config": info.get("config"),
        },
        "dataset": {
            "fingerprint": data.fingerprint,
            "same_as_training": same,
            "split": split,
            "split_note": note,
            "n": n,
            "class_names": list(data.class_names),
        },
        "metrics": metrics,
        "robustness": robust,
        "device": str(dev),
        "precision": resolved.precision,
        "seconds": time.perf_counter() - started,
    }
