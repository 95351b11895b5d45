"""The backbone presets and the model input shape (torch-free: the CLI and the run config read
them without building a model).

``seed`` reproduces the seed's models exactly; ``lab`` is the NVIDIA assessment's wider embedder.
"""

from __future__ import annotations

from dataclasses import dataclass

# Every model takes two (B, 4, 64, 64) inputs: RGBA / 255 and the seed-normalised XYZA.
INPUT_CHANNELS = 4
INPUT_SIZE = 64


@dataclass(frozen=True)
class BackboneSpec:
    """The shape of one backbone preset.

    ``channels`` are the conv stem's output channels (one conv + ReLU + MaxPool2 each);
    ``hidden`` are the MLP's hidden widths after flattening the stem's output.
    """

    name: str
    channels: tuple[int, ...]
    hidden: tuple[int, ...]
    description: str

    @property
    def out_channels(self) -> int:
        """Channels of the stem's feature map."""
        return self.channels[-1]

    @property
    def out_size(self) -> int:
        """Height (= width) of the stem's feature map: one halving per conv block."""
        return INPUT_SIZE >> len(self.channels)

    @property
    def flat_features(self) -> int:
        """Length of one flattened stem feature map."""
        return self.out_channels * self.out_size * self.out_size


BACKBONE_SPECS: dict[str, BackboneSpec] = {
    # The seed's Embedder: 25-50-100 convs -> 100x8x8 -> 6400 -> 1000 -> 100 -> out.
    "seed": BackboneSpec(
        name="seed",
        channels=(25, 50, 100),
        hidden=(1000, 100),
        description="the seed's Embedder: convs 25-50-100, MLP 6400-1000-100",
    ),
    # The NVIDIA assessment's wider embedder: 50-100-200-200 convs -> 200x4x4 -> 3200 -> 100 -> out.
    "lab": BackboneSpec(
        name="lab",
        channels=(50, 100, 200, 200),
        hidden=(100,),
        description="the NVIDIA lab's embedder: convs 50-100-200-200, MLP 3200-100",
    ),
}

BACKBONES: tuple[str, ...] = tuple(BACKBONE_SPECS)
