"""The training loop: one :class:`RunConfig` on one :class:`PreparedData` -> a run record.

Semantics are the seed notebook's (cross-entropy on logits, Adam, cosine annealing stepped
once per epoch or a constant lr, the last partial batch kept); the mechanics are built for
speed:

* the whole dataset lives on the training device, and batches are gathered by index from a
  seeded permutation -- no per-sample DataLoader, no collate, no host-to-device copy per step;
* images and weights are channels_last (what oneDNN and cuDNN convolutions prefer);
* bf16 autocast where the hardware does bf16 natively, with loss and metrics in fp32;
* no ``.item()`` per step: losses and correct counts accumulate on the device and are read
  once per epoch, so the CPU never waits for the GPU inside an epoch.

Modality dropout (``RunConfig.modality_dropout``) zeroes one modality of some training samples;
its random numbers come from their own generator on the device, so a run with p = 0 draws
nothing extra and trains exactly as before the option existed.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fusioncli.data.dataset import PreparedData
from fusioncli.errors import BadInputError, RunFailedError
from fusioncli.config import RunConfig, run_id
from fusioncli.train.metrics import classification_metrics
from fusioncli.train.probes import clock, environment_info, peak_memory, reset_peak_memory, utc_now

RECORD_SCHEMA = 1
# Validation batches (the metrics do not depend on how validation is batched). On a GPU, larger
# than training ones: no gradients, so memory allows it, and fewer launches. On the CPU, small:
# a batch whose activations exceed glibc's largest heap-served block (32 MiB) is mmapped and
# page-faulted afresh every time -- evaluating 1,000 samples 15 times (robustness) spent 7.7 of
# 11.7 s in the kernel at 256 per batch, 0.1 of 7.8 s at 64 (2-core dev machine).
EVAL_BATCH_CUDA = 256
EVAL_BATCH_CPU = 64


def eval_batch_size(device: torch.device | str, train_batch_size: int, members: int = 1) -> int:
    """Samples per validation batch on ``device`` (``members``: models that see each batch at once)."""
    if torch.device(device).type == "cuda":
        return max(train_batch_size, EVAL_BATCH_CUDA)
    return max(1, EVAL_BATCH_CPU // members)

EpochCallback = Callable[[dict[str, Any]], None]


@dataclass
class RunResult:
    """What :func:`train_run` returns: the JSON-able run record and the trained model."""

    record: dict[str, Any]
    model: nn.Module


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def derived_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one ``purpose`` drawn from a run's ``seed``.

    Generators seeded with the same integer on the CPU produce the same stream; deriving a
    distinct seed per purpose keeps, e.g., the dropout masks uncorrelated with the batch order.
    """
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def modality_dropout_generator(cfg: RunConfig, device: torch.device) -> torch.Generator | None:
    """The generator for ``cfg``'s modality dropout masks, or None when p is 0 (nothing drawn)."""
    if cfg.modality_dropout <= 0:
        return None
    return torch.Generator(device=device).manual_seed(derived_seed(cfg.seed, "modality_dropout"))


def apply_modality_dropout(
    rgb: torch.Tensor, xyza: torch.Tensor, p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero one modality (RGB or LiDAR, 50/50) of each sample with probability ``p``.

    Masks are drawn on the generator's device and applied by multiplication, so there is no
    host-device sync; ``p`` is a Python float, never read back from the device. Inputs are not
    modified.
    """
    u = torch.rand((2, rgb.shape[0]), generator=generator, device=generator.device).to(rgb.device)
    dropped = u[0] < p
    pick_rgb = u[1] < 0.5
    keep_rgb = ~(dropped & pick_rgb)
    keep_lidar = ~(dropped & ~pick_rgb)
    return rgb * keep_rgb.view(-1, 1, 1, 1).to(rgb.dtype), xyza * keep_lidar.view(-1, 1, 1, 1).to(xyza.dtype)


def _channels_last(data: PreparedData) -> PreparedData:
    # Indexing a channels_last tensor along the batch dimension keeps channels_last, so
    # converting the stored images once means no layout copy per batch.
    # (Projected batches of data without stored XYZA come out channels_last already.)
    return replace(
        data,
        rgb=data.rgb.contiguous(memory_format=torch.channels_last),
        xyza=None if data.xyza is None else data.xyza.contiguous(memory_format=torch.channels_last),
    )


def run_data(cfg: RunConfig, data: PreparedData) -> PreparedData:
    """The samples a run of ``cfg`` uses: ``limit_per_class`` (both splits), then
    ``train_per_class`` (training samples only)."""
    return data.limit_per_class(cfg.limit_per_class).limit_train_per_class(cfg.train_per_class)


def _batch(data: PreparedData, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs for the samples at ``idx``: RGBA scaled to [0, 1] and XYZA as stored."""
    return data.rgb[idx].float().div_(255), data.lidar(idx)


def _make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    # The fused Adam kernel updates all parameters in one pass over memory (the step of a
    # 13M-parameter model is bandwidth bound); same maths as the for-loop version.
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr)


@contextlib.contextmanager
def _cudnn_mode(device: torch.device, precision: str) -> Iterator[None]:
    """fp32 on CUDA: deterministic convolutions (same seed, same metrics); bf16: autotuned."""
    if device.type != "cuda":
        yield
        return
    # Autotuning picks the fastest convolution per shape but may pick differently run to run,
    # and some backward algorithms accumulate atomically; fp32 runs promise reproducibility.
    previous = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.backends.cudnn.benchmark = precision == "bf16"
    torch.backends.cudnn.deterministic = precision == "fp32"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous


def _evaluate(
    model: nn.Module, data: PreparedData, idx: torch.Tensor, batch_size: int, device: torch.device, precision: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the validation loss (a device scalar) and the predicted classes (on the device)."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    preds = []
    step = eval_batch_size(device, batch_size)
    with torch.inference_mode():
        for start in range(0, idx.numel(), step):
            b = idx[start : start + step]
            rgb, xyza = _batch(data, b)
            with _autocast(device, precision):
                logits = model(rgb, xyza)
            logits = logits.float()  # loss and argmax in fp32 even under bf16 autocast
            loss_sum += F.cross_entropy(logits, data.labels[b], reduction="sum")
            preds.append(logits.argmax(dim=1))
    return loss_sum, torch.cat(preds)


def _check_data(data: PreparedData) -> None:
    problems = []
    if int((~data.is_val).sum()) == 0:
        problems.append("the dataset has no training samples")
    if int(data.is_val.sum()) == 0:
        problems.append("the dataset has no validation samples")
    if problems:
        raise BadInputError(problems, hint="prepare the cache with a validation split (`fusioncli prepare`)")


def _dataset_info(data: PreparedData, fingerprint: str) -> dict[str, Any]:
    n_val = int(data.is_val.sum())
    return {
        "fingerprint": fingerprint,
        "n_train": len(data) - n_val,
        "n_val": n_val,
        "class_names": list(data.class_names),
    }


def failed_record(config: RunConfig, data: PreparedData | None, error: str, *, started_at: str | None = None) -> dict:
    """A run record with status ``failed`` and whatever is known without training.

    For callers (the sweep) that catch an exception from :func:`train_run` and still want a
    record with the same keys: config (resolved when possible), dataset, env, error.
    """
    try:
        resolved = config if config.is_resolved else config.resolve()
    except BadInputError:
        resolved = config
    record: dict[str, Any] = {
        "schema": RECORD_SCHEMA,
        "run_id": run_id(resolved, data.fingerprint) if data is not None and resolved.is_resolved else None,
        "status": "failed",
        "error": error,
        "config": resolved.to_dict(),
        "dataset": None,
        "metrics": None,
        "history": [],
        "params": None,
        "flops_per_sample": None,
        "timing": None,
        "memory": None,
        "env": environment_info(resolved.device if resolved.is_resolved else "cpu"),
        "started_at": started_at or utc_now(),
        "finished_at": utc_now(),
    }
    if data is not None:
        record["dataset"] = _dataset_info(run_data(resolved, data), data.fingerprint)
    return record


def train_run(config: RunConfig, data: PreparedData, *, on_epoch: EpochCallback | None = None) -> RunResult:
    """Train ``config`` on ``data`` and measure it; returns the run record and the model.

    ``data`` is the full prepared dataset (``config.limit_per_class`` and ``train_per_class``
    are applied here, :func:`run_data`; the record's dataset fingerprint and run id refer to
    ``data`` as passed). ``on_epoch`` gets each
    history row as soon as its epoch ends; its own time is excluded from every timing. A
    non-finite loss raises :class:`RunFailedError`; other exceptions propagate.

    Timing: ``train_seconds`` is the wall time of all epochs (training + validation; model
    building and data transfer excluded); ``samples_per_s`` counts training samples over the
    training part of epochs 2..N.
    """
    from fusioncli import models  # the registry, imported late so tests can swap builders

    started_at = utc_now()
    cfg = config.resolve()
    device = torch.device(cfg.device)
    precision = cfg.precision
    rid = run_id(cfg, data.fingerprint)

    reset_peak_memory(device)
    work = _channels_last(run_data(cfg, data).to(device))
    _check_data(work)
    train_idx = work.train_indices
    val_idx = work.val_indices
    n_train, n_val = train_idx.numel(), val_idx.numel()
    val_labels = work.labels[val_idx]

    torch.manual_seed(cfg.seed)
    model = models.create_model(cfg.strategy, cfg.backbone, work.num_classes)
    params = models.parameter_counts(model)
    flops = models.flops_per_sample(model)  # zero inputs: draws no random numbers
    model = model.to(device=device, memory_format=torch.channels_last)

    optimizer = _make_optimizer(model, cfg.lr)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs) if cfg.scheduler == "cosine" else None
    )
    # The permutation comes from its own generator on the CPU, so it is the same sequence on
    # every device and is not disturbed by anything else that draws random numbers.
    perm_gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    # Training only (validation always sees both modalities); None when p == 0.
    drop_gen = modality_dropout_generator(cfg, device)

    history: list[dict[str, Any]] = []
    epoch_seconds: list[float] = []
    train_phase_seconds: list[float] = []
    preds = val_labels
    val_loss = float("nan")
    callback_seconds = 0.0
    with _cudnn_mode(device, precision):
        run_start = clock(device)
        for epoch in range(1, cfg.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            t0 = clock(device)
            model.train()
            order = train_idx[torch.randperm(n_train, generator=perm_gen).to(device)]
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            for start in range(0, n_train, cfg.batch_size):
                b = order[start : start + cfg.batch_size]
                rgb, xyza = _batch(work, b)
                if drop_gen is not None:
                    rgb, xyza = apply_modality_dropout(rgb, xyza, cfg.modality_dropout, drop_gen)
                with _autocast(device, precision):
                    logits = model(rgb, xyza)
                loss = F.cross_entropy(logits.float(), work.labels[b])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * b.numel()
            t_train = clock(device)
            if scheduler is not None:
                scheduler.step()
            val_loss_sum, preds = _evaluate(model, work, val_idx, cfg.batch_size, device, precision)
            correct = (preds == val_labels).sum()
            # the one host-device sync of the epoch
            sums = torch.stack([loss_sum, val_loss_sum, correct.to(torch.float64)]).tolist()
            train_loss = sums[0] / n_train
            val_loss = sums[1] / n_val
            val_accuracy = int(sums[2]) / n_val
            t1 = clock(device)
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                raise RunFailedError(
                    f"run {rid}: loss became non-finite at epoch {epoch} "
                    f"(train {train_loss}, val {val_loss}); try a lower --lr or --precision fp32"
                )
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "lr": lr,
                "seconds": t1 - t0,
            }
            history.append(row)
            epoch_seconds.append(t1 - t0)
            train_phase_seconds.append(t_train - t0)
            if on_epoch is not None:
                t_cb = time.perf_counter()
                on_epoch(dict(row))
                callback_seconds += time.perf_counter() - t_cb
        # the callback's own time (printing, a sweep's bookkeeping) is not training time
        train_seconds = clock(device) - run_start - callback_seconds

    record = finished_record(
        cfg,
        work,
        data.fingerprint,
        val_labels=val_labels,
        preds=preds,
        val_loss=val_loss,
        history=history,
        params=params,
        flops=flops,
        train_seconds=train_seconds,
        epoch_seconds=epoch_seconds,
        train_phase_seconds=train_phase_seconds,
        started_at=started_at,
    )
    model.eval()
    return RunResult(record=record, model=model)


def finished_record(
    cfg: RunConfig,
    work: PreparedData,
    fingerprint: str,
    *,
    val_labels: torch.Tensor,
    preds: torch.Tensor,
    val_loss: float,
    history: list[dict[str, Any]],
    params: dict[str, int],
    flops: int,
    train_seconds: float,
    epoch_seconds: list[float],
    train_phase_seconds: list[float],
    started_at: str,
    memory: dict[str, Any] | None = None,
    timing_notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of a finished run from what its training measured.

    Shared by every way of training (one model at a time, a stacked group), so a record has
    the same keys and meanings whichever produced it. ``work`` is the data as trained on
    (limited), ``fingerprint`` that of the full dataset the run id refers to. ``memory``
    defaults to the device's peaks now; ``timing_notes`` adds keys to ``timing`` (e.g. how a
    stacked group's time was shared out).
    """
    rid = run_id(cfg, fingerprint)
    n_train = int((~work.is_val).sum())
    if cfg.epochs > 1:
        steady = train_phase_seconds[1:]
        note = "training samples/s over epochs 2..N (first epoch excluded as warm-up; validation not timed)"
    else:
        steady = train_phase_seconds
        note = "training samples/s of the only epoch (includes warm-up; validation not timed)"
    samples_per_s = n_train * len(steady) / sum(steady) if sum(steady) > 0 else float("nan")

    summary = classification_metrics(val_labels.cpu(), preds.cpu(), work.class_names)
    record: dict[str, Any] = {
        "schema": RECORD_SCHEMA,
        "run_id": rid,
        "status": "finished",
        "error": None,
        "config": cfg.to_dict(),
        "dataset": _dataset_info(work, fingerprint),
        "metrics": {
            "val_loss": val_loss,
            "val_accuracy": summary["accuracy"],
            "f1_macro": summary["f1_macro"],
            "per_class": summary["per_class"],
        },
        "history": history,
        "params": params,
        "flops_per_sample": int(flops),
        "timing": {
            "train_seconds": train_seconds,
            "epoch_seconds": epoch_seconds,
            "train_epoch_seconds": train_phase_seconds,  # the training part of each epoch
            "samples_per_s": samples_per_s,
            "samples_per_s_note": note,
            "executor": "loop",  # a stacked group's timing_notes say "stacked"
            **(timing_notes or {}),
        },
        "memory": memory if memory is not None else peak_memory(cfg.device),
        "env": environment_info(cfg.device),
        "started_at": started_at,
        "finished_at": utc_now(),
    }
    return record


def train_from_cache(
    config: RunConfig,
    cache_dir: Path,
    *,
    on_epoch: EpochCallback | None = None,
    checkpoint: Path | None = None,
    robustness: bool = False,
) -> RunResult:
    """Load the prepared cache onto the run's device, train, and optionally save a checkpoint.

    What ``fusioncli train`` does; a missing cache raises the loader's error with its hint.
    ``robustness`` adds ``record["robustness"]`` (see :mod:`fusioncli.eval.robustness`),
    evaluated before the checkpoint is written so its info file carries it too.
    """
    from fusioncli.data.cache import load_cache
    from fusioncli.train.checkpoint import check_checkpoint_path, save_checkpoint

    if checkpoint is not None:
        check_checkpoint_path(checkpoint)  # fail before training, not after
    resolved = config.resolve()
    data = load_cache(Path(cache_dir), resolved.device)
    result = train_run(resolved, data, on_epoch=on_epoch)
    if robustness:
        from fusioncli.eval.robustness import add_robustness

        add_robustness(result, data)
    if checkpoint is not None:
        save_checkpoint(checkpoint, result.model, result.record)
    return result
