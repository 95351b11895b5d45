"""More fusion strategies from the literature, one registered builder each.

They reuse the built-ins' parts so that each one differs from a built-in in the fusion alone:

* on the per-modality **embeddings** (each modality: the backbone's :class:`Embedder` -> 100,
  as ``late``): ``gmu``, ``tensor``, ``low-rank``; compare with ``late`` (concat -> 50);
* on the conv stems' **feature maps** (as ``intermediate-*``): ``film``, ``mmtm``,
  ``cross-attention``;
* at the **decision** level: ``decision`` averages the logits of two unimodal classifiers, each
  shaped like ``rgb-only`` / ``lidar-only``.

The fusion operators themselves are in :mod:`fusioncli.models.fusion_zoo`. Importing this module
registers the strategies (after the built-ins, which it imports first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusioncli.models.backbones import INPUT_CHANNELS, BackboneSpec
from fusioncli.models.registry import register_strategy
from fusioncli.models.strategies import LATE_EMBED_DIM, LATE_HIDDEN

# Builders import the torch-side modules in their bodies: registering (and listing names) stays
# torch-free, so `--help`, `report` and `sweep --dry-run` start fast; torch loads on the first build.
if TYPE_CHECKING:
    from torch import nn

    from fusioncli.models.blocks import TwoStreamModel
    from fusioncli.models.fusion import FusionOp

# Sizes of the new operators, kept in proportion with the seed models (see each builder).
LOW_RANK = 4
ATTENTION_DIM = 64
ATTENTION_HEADS = 4
MMTM_RATIO = 4


def _embedding_model(backbone: BackboneSpec, fusion: FusionOp, head: nn.Module) -> TwoStreamModel:
    """Two late-fusion embedders (-> 100 each) meeting in ``fusion``, then ``head``."""
    from fusioncli.models.blocks import Embedder, TwoStreamModel

    return TwoStreamModel(
        encoder_rgb=Embedder(backbone, INPUT_CHANNELS, LATE_EMBED_DIM),
        encoder_lidar=Embedder(backbone, INPUT_CHANNELS, LATE_EMBED_DIM),
        fusion=fusion,
        head=head,
    )


def _classifier_tail(num_classes: int) -> nn.Sequential:
    """The rest of the late head after its Linear(., 50): ReLU -> Linear(50, classes)."""
    from torch import nn

    return nn.Sequential(nn.ReLU(), nn.Linear(LATE_HIDDEN, num_classes))


@register_strategy("gmu", description="gated multimodal unit on the two embeddings (Arevalo et al. 2017)")
def build_gmu(backbone: BackboneSpec, num_classes: int) -> nn.Module:
    """Gated Multimodal Unit (Arevalo et al., ICLR-W 2017) on the late-fusion embeddings.

    Embedders -> 100 per modality; ``h = z * tanh(W_r x_r) + (1 - z) * tanh(W_l x_l)`` with
    ``z = sigmoid(W_z [x_r; x_l])`` (100 units, no biases: 40,000 parameters); head
    Linear(100, 50) -> ReLU -> Linear(50, classes), the late head on 100 instead of 200 inputs.
    """
    from torch import nn

    from fusioncli.models.fusion_zoo import GatedFusion

    fusion = GatedFusion(LATE_EMBED_DIM, LATE_EMBED_DIM, hidden=LATE_EMBED_DIM)
    head = nn.Sequential(nn.Linear(LATE_EMBED_DIM, LATE_HIDDEN), nn.ReLU(), nn.Linear(LATE_HIDDEN, num_classes))
    return _embedding_model(backbone, fusion, head)


@register_strategy("tensor", description="tensor fusion: outer product of the embeddings (Zadeh et al. 2017)")
def build_tensor(backbone: BackboneSpec, num_classes: int) -> nn.Module:
    """Tensor Fusion Network (Zadeh et al., EMNLP 2017) on the late-fusion embeddings.

    Embedders -> 100 per modality; fusion ``[x_r; 1] (x) [x_l; 1]`` (101 x 101 = 10,201 features)
    -> Linear(10201, 50) (510,100 parameters); head ReLU -> Linear(50, classes). The late head's
    Linear(200, 50) becomes a Linear over all unimodal and bimodal products.
    """
    from fusioncli.models.fusion_zoo import TensorFusion

    fusion = TensorFusion(LATE_EMBED_DIM, LATE_EMBED_DIM, LATE_HIDDEN)
    return _embedding_model(backbone, fusion, _classifier_tail(num_classes))


@register_strategy("low-rank", description="low-rank multimodal fusion, rank 4 (Liu et al. 2018)")
def build_low_rank(backbone: BackboneSpec, num_classes: int) -> nn.Module:
    """Low-rank Multimodal Fusion (Liu et al., ACL 2018): ``tensor`` with its projection in rank 4.

    Embedders -> 100 per modality; fusion = rank-4 modality-specific factors (4 x 101 x 50 per
    modality) + 4 rank weights + 50 biases = 40,454 parameters, the same 10,201 -> 50 map as
    ``tensor``'s 510,100-parameter Linear restricted to rank 4; head ReLU -> Linear(50, classes).
    """
    from fusioncli.models.fusion_zoo import LowRankFusion

    fusion = LowRankFusion(LATE_EMBED_DIM, LATE_EMBED_DIM, LATE_HIDDEN, rank=LOW_RANK)
    return _embedding_model(backbone, fusion, _classifier_tail(num_classes))


@register_strategy(
    "film",
    description="LiDAR map predicts per-channel scale/shift of the RGB map (FiLM, Perez et al. 2018)",
)
def build_film(backbone: BackboneSpec, num_classes: int) -> nn.Module:
    """FiLM (Perez et al., AAAI 2018): the LiDAR feature map conditions the RGB feature map.

    Two conv stems; the LiDAR map is pooled and Linear(C, 2C) predicts per-channel ``gamma``
    (as ``1 + delta``) and ``beta`` for the RGB map (``seed``: 20,200 parameters; ``lab``:
    80,400); the modulated RGB map (C channels) goes to the backbone's map head, as in
    ``intermediate-add``. One direction only (LiDAR -> RGB), as in the paper's question -> image.
    """
    from fusioncli.models.blocks import map_fusion_model
    from fusioncli.models.fusion_zoo import FiLMFusion

    c = backbone.out_channels
    return map_fusion_model(backbone, num_classes, FiLMFusion(c, c))


@register_strategy(
    "mmtm",
    description="multimodal transfer module: joint squeeze-excitation of both maps (Joze et al. 2020)",
)
def build_mmtm(backbone: BackboneSpec, num_classes: int) -> nn.Module:
    """MMTM (Joze et al., CVPR 2020) after the two conv stems, then ``intermediate-concat``'s head.

    Both maps are squeezed (global average pool), a joint Linear(2C, C) + ReLU, then per modality
    Linear(C, C) -> ``2 * sigmoid`` rescales its channels (``seed``: 40,300 parameters; ``lab``:
    160,600); the recalibrated maps are concatenated (2C) into the map head.
    """
    from fusioncli.models.blocks import map_fusion_model
    from fusioncli.models.fusion_zoo import MMTMFusion

    c = backbone.out_channels
    return map_fusion_model(backbone, num_classes, MMTMFusion(c, c, ratio=MMTM_RATIO))


@register_strategy(
    "cross-attention",
    description="bidirectional cross-attention between the two maps (MulT, TransFuser)",
)
def build_cross_attention(backbone: BackboneSpec, num_classes: int) -> nn.Module:
    """Cross-modal attention (MulT, Tsai et al. 2019; TransFuser, Prakash et al. 2021) between
    the two conv stems' maps.

    Tokens: the 8 x 8 (``seed``) / 4 x 4 (``lab``) positions of each map at 64 x 64 inputs (the
    stem's ``out_shape`` at other sizes), Linear(C, 64) plus a learned positional embedding per
    position; RGB attends to LiDAR and LiDAR to RGB (one pre-norm block per direction: LayerNorm,
    4-head attention, residual; LayerNorm, FFN 64 -> 128 -> 64, residual). The attended tokens
    return to their positions, both maps concatenated (128 channels) -> the backbone's map head
    (``seed``: Linear(8192, 1000) -> 100 -> classes; ``lab``: Linear(2048, 100) -> classes).
    Fusion: 88,320 (``seed``) / 94,976 (``lab``) parameters at 64 x 64 (the positional
    embeddings, 2 x 64 per position, follow the input size).

    Not mean-pooled before the head, though MulT-style models often pool: on these stems'
    small-object maps a pooled head barely trained (``seed``, 64 synthetic samples, 60 full-batch
    Adam steps at 1e-4: training loss 0.713 -> 0.684 mean-pooled into Linear(128, 50) -> ReLU ->
    Linear(50, 2), 0.695 -> 0.406 with the map head; ``intermediate-concat``: 0.693 -> 0.211).
    """
    from fusioncli.models.blocks import TwoStreamModel, conv_stem, map_head
    from fusioncli.models.fusion_zoo import CrossAttentionFusion

    c = backbone.out_channels
    # One token per position of the stem's map (its out_shape follows the input size).
    fusion = CrossAttentionFusion(c, c, tokens=backbone.out_positions, dim=ATTENTION_DIM, heads=ATTENTION_HEADS)
    return TwoStreamModel(
        encoder_rgb=conv_stem(backbone),
        encoder_lidar=conv_stem(backbone),
        fusion=fusion,
        head=map_head(backbone, fusion.out_channels(c, c), num_classes),
    )


@register_strategy("decision", description="decision-level fusion: mean of two unimodal classifiers' logits")
def build_decision(backbone: BackboneSpec, num_classes: int) -> nn.Module:
    """Decision-level (late-late) fusion: the ``rgb-only`` and ``lidar-only`` classifiers, trained
    jointly, with their logits averaged (:class:`~fusioncli.models.fusion_zoo.LogitAverage`
    explains logits vs probabilities). No fusion parameters; twice a unimodal baseline's size.
    """
    from fusioncli.models.blocks import DecisionFusionModel, conv_stem, map_head
    from fusioncli.models.fusion_zoo import LogitAverage

    c = backbone.out_channels
    return DecisionFusionModel(
        encoder_rgb=conv_stem(backbone),
        encoder_lidar=conv_stem(backbone),
        head_rgb=map_head(backbone, c, num_classes),
        head_lidar=map_head(backbone, c, num_classes),
        fusion=LogitAverage(),
    )
