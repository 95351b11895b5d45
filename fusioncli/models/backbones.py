"""The backbone presets and the model input shape (torch-free: the CLI and the run config read
them without building a model).

``seed`` reproduces the seed's models exactly; ``lab`` is the NVIDIA assessment's wider embedder.
A preset is sized for 64 x 64 inputs (the DLI data's); :meth:`BackboneSpec.at` sizes it for the
data at hand (``BackboneSpec.at((48, 80))``), which changes only the flattened feature sizes: the
convolutions are the same at every size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from fusioncli.errors import BadInputError

# Every model takes two (B, 4, H, W) inputs: RGBA / 255 and the seed-normalised XYZA.
INPUT_CHANNELS = 4
# The seed's (and the DLI data's) image side: the input size a spec has unless told otherwise.
INPUT_SIZE = 64
DEFAULT_INPUT_SIZE: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)


def as_input_size(value: int | Sequence[int]) -> tuple[int, int]:
    """``value`` as an (H, W) input size: one side (square) or a pair of positive integers.

    Anything else raises :class:`BadInputError` naming the value.
    """
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        h, w = pair  # type: ignore[misc]  # checked just below
    except (TypeError, ValueError):
        raise BadInputError(f"an input size is one integer or a pair (H, W), got {value!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (h, w)):
        raise BadInputError(f"an input size is made of positive integers, got {value!r}")
    return int(h), int(w)


def format_input_size(size: Sequence[int]) -> str:
    """(48, 80) -> '48x80' (height x width), as the CLI prints sizes."""
    h, w = size
    return f"{h}x{w}"


@dataclass(frozen=True)
class BackboneSpec:
    """The shape of one backbone preset, for one input size.

    ``channels`` are the conv stem's output channels (one conv + ReLU + MaxPool2 each);
    ``hidden`` are the MLP's hidden widths after flattening the stem's output; ``input_size``
    is the (H, W) of the images the model will see (a strategy builder sizes its flattened
    layers from it through :attr:`out_shape` / :attr:`flat_features`). Frozen: use
    :meth:`at` (``dataclasses.replace``) for another input size. An input smaller than
    :attr:`min_input_size` on either side raises :class:`BadInputError`.
    """

    name: str
    channels: tuple[int, ...]
    hidden: tuple[int, ...]
    description: str
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE

    def __post_init__(self) -> None:
        size = as_input_size(self.input_size)
        object.__setattr__(self, "input_size", size)  # a list or an int becomes the (H, W) tuple
        if min(size) < self.min_input_size:
            minimum = self.min_input_size
            raise BadInputError(
                f"input size {format_input_size(size)} is too small for backbone {self.name!r}: its "
                f"{len(self.channels)} conv blocks each halve the image (MaxPool2), so it needs at least "
                f"{minimum}x{minimum}",
                hint="prepare the data at a larger size, or use a backbone with fewer blocks",
            )

    def at(self, input_size: int | Sequence[int]) -> BackboneSpec:
        """This preset sized for ``input_size`` (one side, or (H, W))."""
        return replace(self, input_size=as_input_size(input_size))

    @property
    def min_input_size(self) -> int:
        """The smallest side the stem accepts: one halving per conv block must leave >= 1 pixel."""
        return 1 << len(self.channels)

    @property
    def out_channels(self) -> int:
        """Channels of the stem's feature map."""
        return self.channels[-1]

    @property
    def out_shape(self) -> tuple[int, int]:
        """(H, W) of the stem's feature map: each MaxPool2 floors H and W separately."""
        k = len(self.channels)
        h, w = self.input_size
        return h >> k, w >> k

    @property
    def out_positions(self) -> int:
        """Positions (H * W) of the stem's feature map: what one channel flattens to."""
        h, w = self.out_shape
        return h * w

    @property
    def out_size(self) -> int:
        """Height (= width) of the stem's square feature map (8 for ``seed`` at 64 x 64).

        Only for a square map; :attr:`out_shape` and :attr:`out_positions` work for any input.
        """
        h, w = self.out_shape
        if h != w:
            raise ValueError(
                f"backbone {self.name!r} at {format_input_size(self.input_size)} has a {h}x{w} feature map, "
                "not a square one: use out_shape or out_positions instead of out_size"
            )
        return h

    @property
    def flat_features(self) -> int:
        """Length of one flattened stem feature map."""
        return self.out_channels * self.out_positions


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
