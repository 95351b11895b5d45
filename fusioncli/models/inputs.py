"""What a model's branches see: the seed's inputs, or inputs that learn sooner (``--lidar-norm``,
``--rgb-norm``).

Every model is *called* with the seed's XYZA (x, y, z = depth x ray direction / 50, zeroed where
there is no return; a = 1 where there is one): the data, the corruptions, robustness and
saved-model scoring all produce that one form. A run's ``--lidar-norm`` (RunConfig.lidar_norm)
picks what the model computes from it first, as a parameter-free input step attached to the
model itself (a forward pre-hook), so every path that builds the run's model -- training loop,
stacked executor, Ray workers, checkpoints -- feeds it the same way:

* ``seed`` -- unchanged (the seed notebook's models; the default).
* ``nearest`` -- x, y, z in metres relative to the sample's nearest surface (the point of its
  :data:`NEAREST_RANK`-th nearest return), zero where there is no return; ``a`` unchanged.

A run's ``--rgb-norm`` does the same for the camera input (the seed's RGBA, pixel / 255):

* ``seed`` -- unchanged (the default).
* ``standard`` -- R, G and B of each image shifted and scaled together to mean 0 and standard
  deviation 1 (over all its colour values); alpha unchanged.

Why LiDAR (benchmarks/RESULTS.md, "Why the LiDAR models learnt slowly"; benchmarks/bench_lidar_input.py):
the class evidence in a depth map is the object's surface relief -- flat faces and edges against
a smooth cap, a few tenths of a metre -- which the seed's encoding presents as changes of ~1 % of
its scale on top of a per-sample offset (the object's range / 50) that varies more between
samples than the relief within one. Taking the nearest surface as the origin removes the offset
and keeps the relief at its physical size; the object a scene is about is the nearest thing the
LiDAR sees (clutter lies behind it), so it starts at ~0 m and clutter reads as metres farther
away. (Centring on the centroid of all returns also removes the offset and learns as fast on
clean scenes, but a distractor behind the object moves the centroid off it: at chance with
clutter.) The reference is the 3rd-nearest return rather than the nearest, so one or two
spurious near returns (crosstalk, fog) do not move the whole map.

Why RGB (RESULTS.md, "Why the camera models learnt slowly"): on ``synth --difficulty hard`` the
camera is dim (exposure 0.7) and the object small on black, so pixel / 255 gives inputs of about
0.02 mean and 0.07 spread; the seed models then sit at chance for a seed-dependent stretch (up
to 6 of 8 epochs). Standardising each image gives the conv stack inputs of unit scale whatever
the exposure; per image, so it needs no dataset statistics (nothing to store with the weights)
and a missing camera (all zeros) stays all zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fusioncli.data.projection import MAX_RANGE

NEAREST_RANK = 3  # the reference return: the 3rd-nearest, so 1-2 spurious near returns do not move it
# Floor of an image's standard deviation in standard_rgb: one 8-bit intensity step, so a flat (or
# all-black) image stays near 0 instead of its rounding noise being blown up to unit scale.
RGB_STD_FLOOR = 1.0 / 255.0


def nearest_xyza(xyza: torch.Tensor) -> torch.Tensor:
    """``xyza`` (..., 4, H, W) in the seed's form -> x, y, z in metres relative to the nearest surface.

    The reference is the point of the sample's :data:`NEAREST_RANK`-th nearest return (its
    farthest one when it has fewer); zero where there is no return, ``a`` unchanged; a sample
    without a single return stays all zero.
    """
    xyz, a = xyza[..., :3, :, :], xyza[..., 3:, :, :]
    metres = (xyz * MAX_RANGE).flatten(-2)  # (..., 3, H*W); already zero where there is no return
    hit = a.flatten(-2)[..., 0, :] > 0  # (..., H*W)
    range2 = torch.where(hit, (metres * metres).sum(dim=-2), torch.inf)
    k = min(NEAREST_RANK, range2.shape[-1])
    order = range2.topk(k, dim=-1, largest=False).indices  # (..., k), nearest first
    rank = (hit.sum(dim=-1, keepdim=True) - 1).clamp(min=0, max=k - 1)  # fewer returns: the farthest
    ref_index = order.gather(-1, rank)  # (..., 1); no return at all: any pixel, whose x, y, z are 0
    ref = metres.gather(-1, ref_index.unsqueeze(-2).expand(*metres.shape[:-1], 1))  # (..., 3, 1)
    out = (metres - ref).unflatten(-1, xyz.shape[-2:]) * a
    return torch.cat([out, a], dim=-3)


def standard_rgb(rgb: torch.Tensor) -> torch.Tensor:
    """``rgb`` (..., 4, H, W) in [0, 1] -> R, G, B of each image at mean 0 and standard deviation 1.

    One mean and one (population) standard deviation per image over all its R, G, B values, the
    deviation floored at :data:`RGB_STD_FLOOR`; alpha unchanged.
    """
    colour, alpha = rgb[..., :3, :, :], rgb[..., 3:, :, :]
    mean = colour.mean(dim=(-3, -2, -1), keepdim=True)
    centred = colour - mean
    var = (centred * centred).mean(dim=(-3, -2, -1), keepdim=True)
    return torch.cat([centred / (var + RGB_STD_FLOOR**2).sqrt(), alpha], dim=-3)


# Every choice but "seed" (the identity) of each input, keyed by create_model's argument;
# fusioncli.config.LIDAR_NORMS / RGB_NORMS list them for the CLI without importing torch (a test
# holds the lists equal).
Transform = Callable[[torch.Tensor], torch.Tensor]
TRANSFORMS: dict[str, Transform] = {"nearest": nearest_xyza}
RGB_TRANSFORMS: dict[str, Transform] = {"standard": standard_rgb}
# create_model's argument -> (the forward argument it changes, its transforms)
_INPUT_OF: dict[str, tuple[str, dict[str, Transform]]] = {
    "lidar_norm": ("xyza", TRANSFORMS),
    "rgb_norm": ("rgb", RGB_TRANSFORMS),
}


class InputNorm:
    """A forward pre-hook that replaces a model's ``rgb`` or ``xyza`` argument by ``norm(it)``."""

    def __init__(self, field: str, name: str) -> None:
        self.field, self.name = field, name
        self.input, transforms = _INPUT_OF[field]
        self.transform = transforms[name]

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        rgb, xyza, *rest = args
        if self.input == "rgb":
            return (self.transform(rgb), xyza, *rest)
        return (rgb, self.transform(xyza), *rest)

    def __repr__(self) -> str:
        return f"InputNorm({self.field}={self.name!r})"


def attach_input_norms(model: nn.Module, *, lidar_norm: str = "seed", rgb_norm: str = "seed") -> nn.Module:
    """``model`` with its input steps (``seed`` or a key of :data:`TRANSFORMS` / :data:`RGB_TRANSFORMS`).

    ``seed`` attaches nothing, so a seed model is exactly the builder's module. The steps have no
    parameters or buffers: weights, parameter counts and checkpoints are those of the builder's
    model, and the run config (saved with every record and checkpoint) says which steps to attach.
    """
    chosen = (("lidar_norm", lidar_norm), ("rgb_norm", rgb_norm))
    for field, name in chosen:  # every name checked before any hook goes on: no half-built model
        transforms = _INPUT_OF[field][1]
        if name != "seed" and name not in transforms:
            raise ValueError(f"unknown {field.replace('_', ' ')} {name!r}; known: seed, {', '.join(transforms)}")
    for field, name in chosen:
        if name != "seed":
            model.register_forward_pre_hook(InputNorm(field, name))
    return model
