"""Shared building blocks: the conv stems of the two backbones and the MLP heads.

A *backbone* is a conv stem (3x3 convs, padding 1, each followed by ReLU and MaxPool2) plus the
MLP that the seed's ``Embedder`` puts after it. Strategies reuse the two parts:

* the **stem** turns one (B, C, H, W) input into a feature map (the intermediate features),
* the **embedder** (stem + MLP) turns an input into a vector (late fusion),
* the **map head** (flatten + the same MLP shape, ending in ``num_classes``) classifies a
  (fused) feature map -- the seed's intermediate-fusion head.

``seed`` reproduces the seed's models exactly; ``lab`` is the NVIDIA assessment's wider embedder.
The layers after a flatten are sized from the spec's input size (``BackboneSpec.input_size``,
64 x 64 unless the data says otherwise), so the same builder fits any image size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from fusioncli.models.backbones import BACKBONE_SPECS, BACKBONES, INPUT_CHANNELS, INPUT_SIZE, BackboneSpec  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from fusioncli.models.fusion import FusionOp


class ConvStem(nn.Sequential):
    """Conv(3x3, padding 1) -> ReLU -> MaxPool2 per entry of ``channels``.

    Maps (B, in_channels, H, W) to (B, channels[-1], H / 2**k, W / 2**k).
    """

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        layers: list[nn.Module] = []
        prev = in_channels
        for width in channels:
            layers += [nn.Conv2d(prev, width, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            prev = width
        super().__init__(*layers)
        self.in_channels = in_channels
        self.out_channels = prev


class MLP(nn.Sequential):
    """Flatten -> (Linear -> ReLU) per hidden width -> Linear(out_features).

    The flatten makes it usable on vectors (a no-op) and on feature maps alike; it flattens in
    logical (C, H, W) order, so a ``channels_last`` input gives the same result.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for width in hidden:
            layers += [nn.Linear(prev, width), nn.ReLU()]
            prev = width
        layers.append(nn.Linear(prev, out_features))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features


class Embedder(nn.Module):
    """One modality's input -> a vector: a conv stem followed by the backbone's MLP.

    With the ``seed`` backbone and ``in_channels=4`` this is exactly the seed's ``Embedder``.
    """

    def __init__(self, backbone: BackboneSpec, in_channels: int, out_features: int) -> None:
        super().__init__()
        self.stem = ConvStem(in_channels, backbone.channels)
        self.mlp = MLP(backbone.flat_features, backbone.hidden, out_features)
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.stem(x))


def conv_stem(backbone: BackboneSpec, in_channels: int = INPUT_CHANNELS) -> ConvStem:
    """The backbone's conv stem for an input with ``in_channels`` channels."""
    return ConvStem(in_channels, backbone.channels)


def map_head(backbone: BackboneSpec, channels: int, num_classes: int) -> MLP:
    """Classifier for a (B, channels, h, w) map of the backbone (``backbone.out_shape``):
    flatten -> backbone MLP -> classes.

    For ``seed`` this is the seed's intermediate head, Linear(C*64, 1000) -> ReLU ->
    Linear(1000, 100) -> ReLU -> Linear(100, classes); for ``lab`` it is Linear(C*16, 100) ->
    ReLU -> Linear(100, classes), the lab embedder's own MLP shape (kept proportionate to the
    lab backbone instead of bolting the seed's 1000-wide layer onto it). Those sizes are at 64 x 64;
    the first Linear takes ``channels * out_positions`` features at any input size.
    """
    return MLP(channels * backbone.out_positions, backbone.hidden, num_classes)


class TwoStreamModel(nn.Module):
    """One encoder per modality, a fusion operator, a head: ``head(fusion(enc_rgb, enc_lidar))``.

    Covers late fusion (encoders end in vectors) and intermediate fusion (encoders end in
    feature maps) alike; the fusion operator decides how the two meet.
    """

    def __init__(self, encoder_rgb: nn.Module, encoder_lidar: nn.Module, fusion: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder_rgb = encoder_rgb
        self.encoder_lidar = encoder_lidar
        self.fusion = fusion
        self.head = head

    def forward(self, rgb: torch.Tensor, xyza: torch.Tensor) -> torch.Tensor:
        return self.head(self.fusion(self.encoder_rgb(rgb), self.encoder_lidar(xyza)))


class EarlyFusionModel(nn.Module):
    """Fuse the raw inputs first, then one stream: ``head(encoder(fusion(rgb, xyza)))``."""

    def __init__(self, fusion: nn.Module, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.fusion = fusion
        self.encoder = encoder
        self.head = head

    def forward(self, rgb: torch.Tensor, xyza: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.fusion(rgb, xyza)))


class UnimodalModel(nn.Module):
    """A single-modality baseline: ``head(encoder(x))`` on ``rgb`` or ``xyza``; the other input is ignored.

    It keeps the two-input signature so training and evaluation treat every strategy alike.
    """

    def __init__(self, modality: str, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        if modality not in ("rgb", "lidar"):
            raise ValueError(f"modality must be 'rgb' or 'lidar', got {modality!r}")
        self.modality = modality
        self.encoder = encoder
        self.head = head

    def forward(self, rgb: torch.Tensor, xyza: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(rgb if self.modality == "rgb" else xyza))


def map_fusion_model(backbone: BackboneSpec, num_classes: int, fusion: FusionOp) -> TwoStreamModel:
    """Both conv stems, their feature maps fused by ``fusion``, then the backbone's map head.

    The shape shared by every strategy that fuses feature maps (intermediate-*, FiLM, MMTM);
    ``fusion`` must offer ``out_channels(c_rgb, c_lidar)``.
    """
    c = backbone.out_channels
    return TwoStreamModel(
        encoder_rgb=conv_stem(backbone),
        encoder_lidar=conv_stem(backbone),
        fusion=fusion,
        head=map_head(backbone, fusion.out_channels(c, c), num_classes),
    )


class DecisionFusionModel(nn.Module):
    """Two complete unimodal classifiers whose logits are fused:
    ``fusion(head_rgb(encoder_rgb(rgb)), head_lidar(encoder_lidar(xyza)))``."""

    def __init__(
        self,
        encoder_rgb: nn.Module,
        encoder_lidar: nn.Module,
        head_rgb: nn.Module,
        head_lidar: nn.Module,
        fusion: nn.Module,
    ) -> None:
        super().__init__()
        self.encoder_rgb = encoder_rgb
        self.encoder_lidar = encoder_lidar
        self.head_rgb = head_rgb
        self.head_lidar = head_lidar
        self.fusion = fusion

    def modality_logits(self, rgb: torch.Tensor, xyza: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each classifier's own logits, before fusion (for per-modality analysis)."""
        return self.head_rgb(self.encoder_rgb(rgb)), self.head_lidar(self.encoder_lidar(xyza))

    def forward(self, rgb: torch.Tensor, xyza: torch.Tensor) -> torch.Tensor:
        return self.fusion(*self.modality_logits(rgb, xyza))
