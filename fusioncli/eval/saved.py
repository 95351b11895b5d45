"""Evaluate saved models (safetensors checkpoints) on a prepared dataset — the same one or another.

The question a benchmark has to answer after training: how does this model do on data it has
not seen — the validation split it was selected on, a held-out set, the real DLI data after
training on synthetic scenes, a harder rendering? :func:`evaluate_checkpoint` loads a
checkpoint (``fusioncli train --checkpoint``, the sweep's ``best/<fingerprint>/``, or a sweep's saved
weights) and scores it on a split of a prepared cache, optionally with the corrupted-input
robustness suite, and returns an *evaluation record*::

    {"schema": 1, "checkpoint": str, "run_id": str | None,
     "model": {"strategy", "backbone", "num_classes", "input_size"},
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

:func:`evaluate_runs` does this for every run of a sweep that kept its weights
(``sweep --keep-weights``) and turns each result into a run record of its own
(:func:`transferred_record`), so a results store of them reports like any other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fusioncli.config import RunConfig
from fusioncli.data.dataset import PreparedData
from fusioncli.errors import BadInputError
from fusioncli.record import DatasetInfo, Metrics, RunRecord
from fusioncli.train.checkpoint import load_checkpoint
from fusioncli.train.engine import channels_last, cudnn_mode, eval_batch_size, input_size, predict
from fusioncli.train.metrics import calibration_metrics, classification_metrics, confusion_matrix

EVALUATION_SCHEMA = 1
SPLITS = ("auto", "val", "train", "all")
WEIGHTS_NAME = "model.safetensors"  # what a folder argument (e.g. the store's best/) holds


def checkpoint_file(path: Path) -> Path:
    """``path`` itself, or ``path/model.safetensors`` when ``path`` is a folder holding one, or the
    one ``path/<fingerprint>/model.safetensors`` of a results store's ``best/`` folder."""
    path = Path(path)
    if path.is_dir():
        inside = path / WEIGHTS_NAME
        if inside.is_file():
            return inside
        # A results store's best/ holds one folder per dataset: best/<fingerprint>/model.safetensors.
        nested = sorted(p for p in path.glob(f"*/{WEIGHTS_NAME}") if not p.parent.name.startswith("."))
        if len(nested) == 1:
            return nested[0]
        if nested:
            raise BadInputError(
                f"{path} holds {len(nested)} checkpoints (one per dataset)",
                hint="give one of: " + ", ".join(str(p) for p in nested),
            )
        raise BadInputError(f"{path} is a folder without {WEIGHTS_NAME}", hint="give the .safetensors file itself")
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


def _check_classes(path: Path, info: RunRecord, data: PreparedData, cache_hint: str) -> None:
    trained = list((info.dataset.class_names if info.dataset is not None else None) or [])
    if trained and trained != list(data.class_names):
        raise BadInputError(
            f"checkpoint {path} was trained on classes {trained}; the cache {cache_hint} has {list(data.class_names)}",
            hint="evaluate on data with the same class folders",
        )


def _check_input_size(path: Path, model: torch.nn.Module, data: PreparedData, cache_hint: str) -> None:
    from fusioncli.models import model_input_size
    from fusioncli.models.backbones import format_input_size

    trained, here = model_input_size(model), input_size(data)
    if trained != here:
        cache = f"the cache {cache_hint}" if cache_hint else "the data"
        raise BadInputError(
            f"checkpoint {path} was built for {format_input_size(trained)} images; {cache} "
            f"holds {format_input_size(here)} images",
            hint="evaluate on data prepared at the size the model was trained on",
        )


def evaluate_checkpoint(
    path: Path,
    data: PreparedData,
    *,
    split: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    robustness: bool = False,
    corruption_seed: int = 0,
    cache_hint: str = "",
) -> dict[str, Any]:
    """Score the checkpoint at ``path`` on ``split`` of ``data``; the evaluation record (module doc).

    ``data`` may live on any device; the chosen split is moved to ``device`` once.
    ``batch_size``: samples per inference batch (default: 64 on the CPU, 256 on a GPU).
    ``cache_hint`` names the cache in error messages. Bad checkpoints, a class mismatch, images of
    another size than the model was built for, or an empty split raise :class:`BadInputError`.
    """
    if batch_size is not None and batch_size < 1:
        raise BadInputError(f"the inference batch size must be at least 1 (got {batch_size})")
    path = checkpoint_file(path)
    started = time.perf_counter()
    resolved = RunConfig(device=device, precision=precision).resolve()
    dev = torch.device(resolved.device)
    model, info = load_checkpoint(path, dev)
    _check_classes(path, info, data, cache_hint)
    _check_input_size(path, model, data, cache_hint)
    trained_fp = _base_fingerprint(info.fingerprint)
    same = trained_fp is not None and trained_fp == _base_fingerprint(data.fingerprint)
    split, note = choose_split(split, same)
    mask = _split_mask(data, split)
    if int(mask.sum()) == 0:
        where = f" of the cache {cache_hint}" if cache_hint else ""
        raise BadInputError(f"the {split} split{where} is empty")
    # The chosen samples become the "validation" split of a view, which is what the
    # robustness suite scores; one copy onto the device, channels_last as in training.
    scored = channels_last(replace(data, is_val=mask).subset(torch.nonzero(mask).flatten()).to(dev))
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit memory_format

    n = len(scored)
    step = batch_size if batch_size is not None else eval_batch_size(dev, 1)
    with cudnn_mode(dev, resolved.precision):
        scores = predict(model, scored, device=dev, precision=resolved.precision, batch_size=step, keep_logits=True)
    assert scores.loss_sum is not None
    labels = scored.labels.cpu()
    predicted = scores.classes.cpu()
    metrics = {
        "loss": float(scores.loss_sum) / n,
        **classification_metrics(labels, predicted, scored.class_names),
        "confusion": confusion_matrix(labels, predicted, scored.num_classes).tolist(),
        "calibration": None if scores.logits is None else calibration_metrics(scores.logits, labels),
    }

    robust = None
    if robustness:
        from fusioncli.eval.robustness import evaluate_robustness

        robust = evaluate_robustness(model, scored, resolved, seed=corruption_seed, batch_size=step)

    return {
        "schema": EVALUATION_SCHEMA,
        "checkpoint": str(path),
        "run_id": info.run_id,
        "model": {
            "strategy": info.config.get("strategy"),
            "backbone": info.config.get("backbone"),
            "num_classes": data.num_classes,
            "input_size": list(input_size(data)),  # (H, W): the checkpoint's, checked above
        },
        "trained": {
            "dataset_fingerprint": info.fingerprint,
            "val_accuracy": info.val_accuracy,
            "config": info.config,
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


# --------------------------------------------------------------------------- a sweep's runs


def transferred_record(record: RunRecord, evaluation: dict[str, Any]) -> RunRecord:
    """A run record whose metrics (and robustness) are those measured by ``evaluation``.

    Config, parameters, training history, timing and memory stay the run's own; ``dataset``
    describes the evaluated data, and ``evaluation`` says where the figures come from (the
    checkpoint, the split, the dataset the run was trained on and its own validation
    accuracy: :meth:`~fusioncli.record.RunRecord.evaluated`). Stored in a results store of its
    own, every ``fusioncli report`` view — means and 95 % CIs over seeds, ``--compare``,
    ``--robustness`` — then reads the new figures.
    """
    m = evaluation["metrics"]
    scored = evaluation["dataset"]
    return record.evaluated(
        Metrics(
            val_loss=m["loss"],
            val_accuracy=m["accuracy"],
            f1_macro=m["f1_macro"],
            per_class=m["per_class"],
            confusion=m["confusion"],
            calibration=m.get("calibration"),
        ),
        evaluation["robustness"],
        DatasetInfo(scored["fingerprint"], tuple(scored["class_names"]), n_train=0, n_val=scored["n"]),
        {
            "schema": EVALUATION_SCHEMA,
            "checkpoint": evaluation["checkpoint"],
            "split": scored["split"],
            "split_note": scored["split_note"],
            "same_as_training": scored["same_as_training"],
            "device": evaluation["device"],
            "precision": evaluation["precision"],
            "seconds": evaluation["seconds"],
        },
    )


def _already_evaluated(
    into: Any, record: RunRecord, data: PreparedData, split: str, robustness: bool
) -> RunRecord | None:
    """The stored transferred record of ``record``'s run when it answers this very request."""
    stored = into.get(record.run_id)
    if stored is None or not stored.is_finished or stored.evaluation is None:
        return None
    if stored.finished_at != record.finished_at:
        return None  # the run was trained again since (sweep --force): new weights
    same_data = stored.fingerprint == data.fingerprint
    same_split = split == "auto" or stored.evaluation.get("split") == split
    if same_data and same_split and (stored.robustness or not robustness):
        return stored
    return None


def evaluate_runs(
    store: Any,
    data: PreparedData,
    *,
    run_ids: Sequence[str] | None = None,
    into: Any | None = None,
    force: bool = False,
    split: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    robustness: bool = False,
    cache_hint: str = "",
    on_run: Callable[[int, int, RunRecord, bool], None] | None = None,
) -> tuple[list[RunRecord], list[str]]:
    """Evaluate the finished runs of ``store`` whose weights were kept (``sweep --keep-weights``).

    Returns ``(records, missing)``: one :func:`transferred_record` per evaluated run, and the
    ids of selected finished runs without kept weights. ``run_ids`` narrows the selection.
    With ``into`` (another :class:`~fusioncli.results.store.ResultsStore`) each record is stored
    there as soon as it is measured, and runs already evaluated there the same way are reused
    unless ``force``. ``on_run(index, total, record, reused)`` follows each run.
    """
    if into is not None and Path(into.root).resolve() == Path(store.root).resolve():
        raise BadInputError(
            f"--into {into.root} is the results store being evaluated; its training records would be replaced",
            hint="give another folder, e.g. .fusioncli/results-<dataset>",
        )
    if into is not None:
        trained_here = [r.run_id for r in into.records() if r.evaluation is None]
        if trained_here:
            raise BadInputError(
                f"--into {into.root} holds {len(trained_here)} run(s) trained there (e.g. {trained_here[0]}), "
                "which evaluated records could replace",
                hint="give an empty folder, or one that only `fusioncli evaluate --runs --into` wrote",
            )
    wanted = None if run_ids is None else set(run_ids)
    records = [
        r for r in store.records()
        if r.is_finished and (wanted is None or r.run_id in wanted)
    ]  # fmt: skip
    with_weights = [r for r in records if store.has_weights(r.run_id)]
    missing = [r.run_id for r in records if not store.has_weights(r.run_id)]
    results = []
    for index, record in enumerate(with_weights, 1):
        rid = record.run_id
        reused = None if (into is None or force) else _already_evaluated(into, record, data, split, robustness)
        if reused is None:
            evaluation = evaluate_checkpoint(
                store.weights_path(rid), data, split=split, device=device, precision=precision,
                batch_size=batch_size, robustness=robustness, cache_hint=cache_hint,
            )  # fmt: skip
            transferred = transferred_record(record, evaluation)
            if into is not None:
                into.write(transferred)
        else:
            transferred = reused
        results.append(transferred)
        if on_run is not None:
            on_run(index, len(with_weights), transferred, reused is not None)
    return results, missing
