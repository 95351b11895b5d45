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

The mechanics shared with the other executors and with evaluation (autocast, cuDNN mode, the
batch inputs, the inference loop) live in :mod:`fusioncli.train.engine`.

Modality dropout (``RunConfig.modality_dropout``) zeroes one modality of some training samples;
its random numbers come from their own generator on the device, so a run with p = 0 draws
nothing extra and trains exactly as before the option existed.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fusioncli.config import RunConfig, run_id
from fusioncli.data.dataset import PreparedData
from fusioncli.errors import BadInputError, RunFailedError
from fusioncli.record import DatasetInfo, Metrics, RunRecord, pack_correct
from fusioncli.train import engine  # module access: tests patch engine.batch_inputs
from fusioncli.train.metrics import calibration_metrics, classification_metrics
from fusioncli.train.probes import clock, environment_info, peak_memory, reset_peak_memory, utc_now

EpochCallback = Callable[[dict[str, Any]], None]


@dataclass
class RunResult:
    """What :func:`train_run` returns: the run record and the trained model."""

    record: RunRecord
    model: nn.Module


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


def run_data(cfg: RunConfig, data: PreparedData) -> PreparedData:
    """The samples a run of ``cfg`` uses: ``limit_per_class`` (both splits), then
    ``train_per_class`` (training samples only)."""
    return data.limit_per_class(cfg.limit_per_class).limit_train_per_class(cfg.train_per_class)


def _make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    # The fused Adam kernel updates all parameters in one pass over memory (the step of a
    # 13M-parameter model is bandwidth bound); same maths as the for-loop version.
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr)


def run_work(cfg: RunConfig, data: PreparedData, device: torch.device) -> PreparedData:
    """The samples a run of ``cfg`` trains and validates on, on ``device`` (channels_last) and
    checked; the run's peak memory is counted from here (the device's peak counter is reset)."""
    reset_peak_memory(device)
    work = engine.channels_last(run_data(cfg, data).to(device))
    check_data(work)
    return work


def check_data(data: PreparedData) -> None:
    """Raise :class:`BadInputError` unless ``data`` has training and validation samples."""
    problems = []
    if int((~data.is_val).sum()) == 0:
        problems.append("the dataset has no training samples")
    if int(data.is_val.sum()) == 0:
        problems.append("the dataset has no validation samples")
    if problems:
        raise BadInputError(problems, hint="prepare the cache with a validation split (`fusioncli prepare`)")


def _dataset_info(data: PreparedData, fingerprint: str) -> DatasetInfo:
    n_val = int(data.is_val.sum())
    return DatasetInfo(fingerprint, tuple(data.class_names), n_train=len(data) - n_val, n_val=n_val)


def failed_record(
    config: RunConfig, data: PreparedData | None, error: str, *, started_at: str | None = None
) -> RunRecord:
    """A run record with status ``failed`` and whatever is known without training.

    For callers (the sweep) that catch an exception from :func:`train_run` and still want a
    record: config (resolved when possible), dataset, env, error.
    """
    try:
        resolved = config if config.is_resolved else config.resolve()
    except BadInputError:
        resolved = config
    return RunRecord.failed(
        resolved.to_dict(),
        run_id(resolved, data.fingerprint) if data is not None and resolved.is_resolved else None,
        error,
        started_at=started_at or utc_now(),
        finished_at=utc_now(),
        dataset=None if data is None else _dataset_info(run_data(resolved, data), data.fingerprint),
        env=environment_info(resolved.device if resolved.is_resolved else "cpu"),
    )


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

    work = run_work(cfg, data, device)
    train_idx = work.train_indices
    val_idx = work.val_indices
    n_train, n_val = train_idx.numel(), val_idx.numel()
    val_labels = work.labels[val_idx]

    torch.manual_seed(cfg.seed)
    # Sized for the data: its class count and image size (64 x 64 builds the seed's exact models).
    model = models.create_model(
        cfg.strategy, cfg.backbone, work.num_classes, input_size=engine.input_size(work), **cfg.input_norms
    )
    params = models.parameter_counts(model)
    flops = models.flops_per_sample(model)  # zero inputs: draws no random numbers
    model = model.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit memory_format

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
    val_logits: torch.Tensor | None = None
    val_loss = float("nan")
    callback_seconds = 0.0
    with engine.cudnn_mode(device, precision):
        run_start = clock(device)
        for epoch in range(1, cfg.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            t0 = clock(device)
            model.train()
            order = train_idx[torch.randperm(n_train, generator=perm_gen).to(device)]
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            for start in range(0, n_train, cfg.batch_size):
                b = order[start : start + cfg.batch_size]
                rgb, xyza = engine.batch_inputs(work, b)
                if drop_gen is not None:
                    rgb, xyza = apply_modality_dropout(rgb, xyza, cfg.modality_dropout, drop_gen)
                with engine.autocast(device, precision):
                    logits = model(rgb, xyza)
                loss = F.cross_entropy(logits.float(), work.labels[b])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * b.numel()
            t_train = clock(device)
            if scheduler is not None:
                scheduler.step()
            model.eval()
            val = engine.predict(
                model, work, indices=val_idx, device=device, precision=precision,
                batch_size=engine.eval_batch_size(device, cfg.batch_size),
                keep_logits=epoch == cfg.epochs,  # the last epoch's logits give the calibration
            )  # fmt: skip
            val_loss_sum, preds, val_logits = val.loss_sum, val.classes, val.logits
            assert val_loss_sum is not None  # predict sums the loss unless asked not to
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
        val_logits=val_logits,
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
    val_logits: torch.Tensor | None = None,
) -> RunRecord:
    """The record of a finished run from what its training measured.

    Shared by every way of training (one model at a time, a stacked group), so a record has
    the same keys and meanings whichever produced it. ``work`` is the data as trained on
    (limited), ``fingerprint`` that of the full dataset the run id refers to. ``memory``
    defaults to the device's peaks now; ``timing_notes`` adds keys to ``timing`` (e.g. how a
    stacked group's time was shared out). ``val_logits`` (the last validation pass's) give the
    metrics' ``calibration`` (:func:`fusioncli.train.metrics.calibration_metrics`).
    """
    n_train = int((~work.is_val).sum())
    if cfg.epochs > 1:
        steady = train_phase_seconds[1:]
        note = "training samples/s over epochs 2..N (first epoch excluded as warm-up; validation not timed)"
    else:
        steady = train_phase_seconds
        note = "training samples/s of the only epoch (includes warm-up; validation not timed)"
    samples_per_s = n_train * len(steady) / sum(steady) if sum(steady) > 0 else float("nan")

    summary = classification_metrics(val_labels.cpu(), preds.cpu(), work.class_names)
    return RunRecord.finished(
        cfg,
        run_id(cfg, fingerprint),
        dataset=_dataset_info(work, fingerprint),
        metrics=Metrics(
            val_loss=val_loss,
            val_accuracy=summary["accuracy"],
            f1_macro=summary["f1_macro"],
            per_class=summary["per_class"],
            calibration=None if val_logits is None else calibration_metrics(val_logits, val_labels),
            val_correct=pack_correct((preds == val_labels).cpu().numpy()),
        ),
        history=history,
        params=params,
        flops_per_sample=int(flops),
        timing={
            "train_seconds": train_seconds,
            "epoch_seconds": epoch_seconds,
            "train_epoch_seconds": train_phase_seconds,  # the training part of each epoch
            "samples_per_s": samples_per_s,
            "samples_per_s_note": note,
            "executor": "loop",  # a stacked group's timing_notes say "stacked"
            **(timing_notes or {}),
        },
        memory=memory if memory is not None else peak_memory(cfg.device),
        env=environment_info(cfg.device),
        started_at=started_at,
        finished_at=utc_now(),
    )
