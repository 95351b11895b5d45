"""Training and inference mechanics shared by every way of running a model.

The training loop (:mod:`fusioncli.train.loop`), the stacked executor
(:mod:`fusioncli.train.stacked`), the robustness suite (:mod:`fusioncli.eval.robustness`) and
saved-model scoring (:mod:`fusioncli.eval.saved`) all feed batches to a model the same way;
this module is that way, written once:

* :func:`autocast` -- bf16 autocast where the run asks for it, nothing for fp32;
* :func:`cudnn_mode` -- deterministic cuDNN for fp32 runs, autotuned for bf16 (CUDA only);
* :func:`channels_last` -- the stored images in the layout convolutions prefer, converted once;
* :func:`batch_inputs` -- the model inputs of the samples at some indices;
* :func:`input_size` -- the (H, W) of the data's images, what its models are built for;
* :func:`eval_batch_size` -- how many samples an inference batch holds on a device;
* :func:`predict` -- the inference loop: autocast -> fp32 logits -> loss sum and argmax.

:func:`predict` takes the forward pass as a callable ``forward(rgb, xyza) -> logits``, so a
model, a stacked (vmapped) group of models whose logits are ``(K, B, classes)``, or a model
behind corrupted inputs all go through the same loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from fusioncli.data.dataset import PreparedData
from fusioncli.errors import BadInputError

# Validation batches (the metrics do not depend on how validation is batched). On a GPU, larger
# than training ones: no gradients, so memory allows it, and fewer launches. On the CPU, small:
# a batch whose activations exceed glibc's largest heap-served block (32 MiB) is mmapped and
# page-faulted afresh every time -- evaluating 1,000 samples 15 times (robustness) spent 7.7 of
# 11.7 s in the kernel at 256 per batch, 0.1 of 7.8 s at 64 (2-core dev machine).
EVAL_BATCH_CUDA = 256
EVAL_BATCH_CPU = 64

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
InputsFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def eval_batch_size(device: torch.device | str, train_batch_size: int, members: int = 1) -> int:
    """Samples per validation batch on ``device`` (``members``: models that see each batch at once)."""
    if torch.device(device).type == "cuda":
        return max(train_batch_size, EVAL_BATCH_CUDA)
    return max(1, EVAL_BATCH_CPU // members)


def autocast(device: torch.device, precision: str, *, cache: bool = True) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``precision`` is ``bf16``; a no-op context for fp32.

    ``cache=False`` turns off autocast's weight-cast cache: a CUDA graph must not capture casts
    whose cache is freed when the context exits (torch.cuda.graph's documentation).
    """
    if precision == "bf16":
        # None: torch's default (the cache on unless turned off globally).
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=None if cache else False)
    return contextlib.nullcontext()


@contextlib.contextmanager
def cudnn_mode(device: torch.device, precision: str) -> Iterator[None]:
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


def channels_last(data: PreparedData) -> PreparedData:
    """``data`` with its stored images (RGBA, and XYZA when stored) in channels_last layout."""
    # Indexing a channels_last tensor along the batch dimension keeps channels_last, so
    # converting the stored images once means no layout copy per batch.
    # (Projected batches of data without stored XYZA come out channels_last already.)
    return replace(
        data,
        rgb=data.rgb.contiguous(memory_format=torch.channels_last),
        xyza=None if data.xyza is None else data.xyza.contiguous(memory_format=torch.channels_last),
    )


def input_size(data: PreparedData) -> tuple[int, int]:
    """The (H, W) of ``data``'s images: the input size every model trained or scored on it is built for.

    RGB and depth must agree (each sample's depth map is its image's LiDAR view); a dataset where
    they do not raises :class:`BadInputError`.
    """
    h, w = (int(n) for n in data.rgb.shape[-2:])
    depth = tuple(int(n) for n in data.depth.shape[-2:])
    if depth != (h, w):
        raise BadInputError(
            f"the dataset's RGB images are {h}x{w} but its depth maps {depth[0]}x{depth[1]}; a model needs one size",
            hint="prepare the data again so that images and depth maps have the same size",
        )
    return h, w


def batch_inputs(data: PreparedData, idx: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs for the samples at ``idx``: RGBA scaled to [0, 1] and XYZA as stored."""
    return data.rgb[idx].float().div_(255), data.lidar(idx)


@dataclass
class Predictions:
    """What :func:`predict` returns, on the device (nothing is read back to the host)."""

    classes: torch.Tensor  # (n,) predicted class per sample; (K, n) for stacked logits
    loss_sum: torch.Tensor | None  # float64 sum of the cross-entropy: () or (K,); None without loss
    logits: torch.Tensor | None = None  # fp32 (n, classes) or (K, n, classes) when asked for


def predict(
    forward: Forward,
    data: PreparedData,
    *,
    device: torch.device,
    precision: str,
    batch_size: int,
    indices: torch.Tensor | None = None,
    loss: bool = True,
    inputs: InputsFn | None = None,
    keep_logits: bool = False,
) -> Predictions:
    """Run ``forward`` over samples of ``data`` in batches of ``batch_size``, without gradients.

    The samples are ``indices`` (gathered batch by batch), or all of ``data`` in order (sliced).
    Each batch: :func:`batch_inputs`, then ``inputs(rgb, xyza)`` when given (e.g. a corruption),
    then ``forward`` under :func:`autocast`; loss and argmax are computed on fp32 logits even
    under bf16. ``forward`` returns ``(B, classes)`` logits, or ``(K, B, classes)`` for K
    stacked models, whose per-model loss sums and classes come back as ``(K,)`` and ``(K, n)``.
    With ``loss`` the cross-entropy against ``data.labels`` is summed (float64 accumulator);
    with ``keep_logits`` the fp32 logits come back too (calibration reads them: no second pass).

    The caller puts models in eval mode and holds :func:`cudnn_mode` (training already does).
    """
    n = len(data) if indices is None else indices.numel()
    loss_sum: torch.Tensor | None = None
    classes = []
    kept: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            b = slice(start, start + batch_size) if indices is None else indices[start : start + batch_size]
            rgb, xyza = batch_inputs(data, b)
            if inputs is not None:
                rgb, xyza = inputs(rgb, xyza)
            with autocast(device, precision):
                logits = forward(rgb, xyza)
            logits = logits.float()  # loss and argmax in fp32 even under bf16 autocast
            if loss:
                batch_loss = _loss_sum(logits, data.labels[b])
                if loss_sum is None:
                    loss_sum = torch.zeros(batch_loss.shape, device=device, dtype=torch.float64)
                loss_sum += batch_loss
            classes.append(logits.argmax(dim=-1))
            if keep_logits:
                kept.append(logits)
    return Predictions(
        classes=torch.cat(classes, dim=-1),
        loss_sum=loss_sum,
        logits=torch.cat(kept, dim=-2) if keep_logits else None,
    )


def _loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of one batch: a scalar, or (K,) for stacked (K, B, classes) logits."""
    if logits.dim() == 2:
        return F.cross_entropy(logits, labels, reduction="sum")
    k = logits.shape[0]
    losses = F.cross_entropy(logits.flatten(0, 1), labels.repeat(k), reduction="none")
    return losses.view(k, -1).sum(dim=1)


__all__ = [
    "EVAL_BATCH_CPU",
    "EVAL_BATCH_CUDA",
    "Predictions",
    "autocast",
    "batch_inputs",
    "channels_last",
    "cudnn_mode",
    "eval_batch_size",
    "input_size",
    "predict",
]
