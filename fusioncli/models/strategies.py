"""The built-in fusion strategies, one registered builder each.

Every builder receives the backbone preset (:class:`~fusioncli.models.blocks.BackboneSpec`, sized
for the data's images: its ``input_size``) and the number of classes. With the ``seed`` backbone,
``late`` and ``intermediate-*`` are exactly the seed's models; the other strategies and the
``lab`` backbone reuse the same parts so that a comparison changes one thing at a time. Sizes
quoted below are at 64 x 64 inputs; the flattened layers follow ``backbone.out_shape`` at other
sizes. Importing this module registers them (the package's ``__init__`` does so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusioncli.models.backbones import INPUT_CHANNELS, BackboneSpec
from fusioncli.models.registry import register_strategy

# Builders import the torch-side modules in their bodies: registering (and listing names) stays
# torch-free, so `--help`, `report` and `sweep --dry-run` start fast; torch loads on the first build.
if TYPE_CHECKING:
    from torch import nn

    from fusioncli.models.fusion import FusionOp

# The seed's late fusion: each modality embedded to 100, the 200-long concat -> 50 -> classes.
LATE_EMBED_DIM = 100
LATE_HIDDEN = 50


@register_strategy("late", description="one embedder per modality, concat the vectors, small MLP head")
def build_late(backbone: BackboneSpec, num_classes: int) -> nn.Module:
    """Late fusion: an :class:`Embedder` (stem + MLP -> 100) per modality, concat -> 200 ->
    Linear(200, 50) -> ReLU -> Linear(50, classes).

    ``seed``: exactly the seed's LateFusionModel (13,147,202 parameters for 2 classes).
    ``lab``: the same, with the lab embedder (convs 50-100-200-200, 3200 -> 100 -> 100).
    """
    from torch import nn

    from fusioncli.models.blocks import Embedder, TwoStreamModel
    from fusioncli.models.fusion import ConcatFusion

    return TwoStreamModel(
        encoder_rgb=Embedder(backbone, INPUT_CHANNELS, LATE_EMBED_DIM),
        encoder_lidar=Embedder(backbone, INPUT_CHANNELS, LATE_EMBED_DIM),
        fusion=ConcatFusion(),
        head=nn.Sequential(nn.Linear(2 * LATE_EMBED_DIM, LATE_HIDDEN), nn.ReLU(), nn.Linear(LATE_HIDDEN, num_classes)),
    )


def _intermediate(backbone: BackboneSpec, num_classes: int, fusion: FusionOp) -> nn.Module:
    from fusioncli.models.blocks import map_fusion_model

    return map_fusion_model(backbone, num_classes, fusion)


@register_strategy("intermediate-concat", description="fuse the two conv feature maps by channel concat")
def build_intermediate_concat(backbone: BackboneSpec, num_classes: int) -> nn.Module:
    """Intermediate fusion by concat: two stems -> maps concatenated (2C channels) -> map head.

    ``seed``: the seed's IntermediateFusionModel(fusion_type='concat'): 2 x 100x8x8 -> 200x8x8 ->
    Linear(12800, 1000) -> ReLU -> Linear(1000, 100) -> ReLU -> Linear(100, classes).
    ``lab``: 2 x 200x4x4 -> 400x4x4 -> Linear(6400, 100) -> ReLU -> Linear(100, classes).
    """
    from fusioncli.models.fusion import ConcatFusion

    return _intermediate(backbone, num_classes, ConcatFusion())


@register_strategy("intermediate-add", description="fuse the two conv feature maps by elementwise sum")
def build_intermediate_add(backbone: BackboneSpec, num_classes: int) -> nn.Module:
    """Intermediate fusion by sum: two stems -> maps added (C channels) -> map head.

    ``seed``: the seed's IntermediateFusionModel(fusion_type='add'), head from 6400 features.
    ``lab``: head Linear(3200, 100) -> ReLU -> Linear(100, classes).
    """
    from fusioncli.models.fusion import AddFusion

    return _intermediate(backbone, num_classes, AddFusion())


@register_strategy("intermediate-multiply", description="fuse the two conv feature maps by elementwise product")
def build_intermediate_multiply(backbone: BackboneSpec, num_classes: int) -> nn.Module:
    """Intermediate fusion by product: two stems -> maps multiplied (C channels) -> map head.

    ``seed``: the seed's IntermediateFusionModel(fusion_type='multiply'). ``lab``: as ``add``.
    """
    from fusioncli.models.fusion import MultiplyFusion

    return _intermediate(backbone, num_classes, MultiplyFusion())


@register_strategy("early", description="concat RGBA and XYZA at the input (8 channels), one stream")
def build_early(backbone: BackboneSpec, num_classes: int) -> nn.Module:
    """Early fusion: RGBA and XYZA concatenated to 8 input channels -> one conv stem -> map head.

    The head is the intermediate head with C = the stem's channels (``seed``: 6400 -> 1000 ->
    100 -> classes; ``lab``: 3200 -> 100 -> classes), so early vs intermediate-add differs only
    in where the modalities meet. The input concat is the ``fusion`` part (no parameters).
    """
    from fusioncli.models.blocks import EarlyFusionModel, conv_stem, map_head
    from fusioncli.models.fusion import ConcatFusion

    return EarlyFusionModel(
        fusion=ConcatFusion(),
        encoder=conv_stem(backbone, 2 * INPUT_CHANNELS),
        head=map_head(backbone, backbone.out_channels, num_classes),
    )


def _unimodal(backbone: BackboneSpec, num_classes: int, modality: str) -> nn.Module:
    from fusioncli.models.blocks import UnimodalModel, conv_stem, map_head

    return UnimodalModel(
        modality,
        encoder=conv_stem(backbone),
        head=map_head(backbone, backbone.out_channels, num_classes),
    )


@register_strategy("rgb-only", description="baseline: RGBA only (one conv stream, LiDAR ignored)", modalities=("rgb",))
def build_rgb_only(backbone: BackboneSpec, num_classes: int) -> nn.Module:
    """Unimodal baseline on RGBA: one conv stem -> the intermediate-style map head (C = stem channels).

    Same shape as ``early`` except the stem reads 4 channels; there is no ``fusion`` part.
    """
    return _unimodal(backbone, num_classes, "rgb")


@register_strategy(
    "lidar-only", description="baseline: XYZA only (one conv stream, RGB ignored)", modalities=("lidar",)
)
def build_lidar_only(backbone: BackboneSpec, num_classes: int) -> nn.Module:
    """Unimodal baseline on XYZA: one conv stem -> the intermediate-style map head (C = stem channels).

    Same shape as ``rgb-only``; there is no ``fusion`` part.
    """
    return _unimodal(backbone, num_classes, "lidar")
