"""Fusion operators: small modules that merge two modalities' features into one.

Every operator shares one interface, so a strategy swaps them freely and a new operator (gated,
FiLM, cross-attention, low-rank, ...) is one more subclass:

* ``forward(a, b) -> fused``: ``a`` and ``b`` are two feature maps (B, C, H, W) or two vectors
  (B, C) with the channel axis at dim 1;
* ``out_channels(a_channels, b_channels) -> int``: the fused channel count, so a builder can size
  the head before any data flows.

The operators here use only ops that keep ``channels_last`` and bf16 autocast working (cat, add,
mul on dim 1). Parameter-free operators still live in the model as its ``fusion`` child, so the
parameter split reports 0 for them.
"""

from __future__ import annotations

import torch
from torch import nn


class FusionOp(nn.Module):
    """Base class of the fusion operators (see the module docstring for the interface)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def out_channels(self, a_channels: int, b_channels: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


class ConcatFusion(FusionOp):
    """Concatenate along the channel axis: C_a + C_b channels (the seed's ``concat``)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat((a, b), dim=1)

    def out_channels(self, a_channels: int, b_channels: int) -> int:
        return a_channels + b_channels


class _ElementwiseFusion(FusionOp):
    """Shared check for operators that need both inputs to have the same shape."""

    def out_channels(self, a_channels: int, b_channels: int) -> int:
        if a_channels != b_channels:
            raise ValueError(f"{type(self).__name__} needs equal channel counts, got {a_channels} and {b_channels}")
        return a_channels


class AddFusion(_ElementwiseFusion):
    """Elementwise sum (the seed's ``add``)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class MultiplyFusion(_ElementwiseFusion):
    """Elementwise (Hadamard) product (the seed's ``multiply``)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


FUSION_OPS: dict[str, type[FusionOp]] = {
    "concat": ConcatFusion,
    "add": AddFusion,
    "multiply": MultiplyFusion,
}
