"""What a model's LiDAR branch sees: the seed's XYZA, or XYZA relative to the nearest surface.

Every model is *called* with the seed's XYZA (x, y, z = depth x ray direction / 50, zeroed where
there is no return; a = 1 where there is one): the data, the corruptions, robustness and
saved-model scoring all produce that one form. A run's ``--lidar-norm`` (RunConfig.lidar_norm)
picks what the model computes from it first, as a parameter-free input step attached to the
model itself (a forward pre-hook), so every path that builds the run's model -- training loop,
stacked executor, Ray workers, checkpoints -- feeds it the same way:

* ``seed`` -- unchanged (the seed notebook's models; the default).
* ``nearest`` -- x, y, z in metres relative to the sample's nearest surface (the point of its
  :data:`NEAREST_RANK`-th nearest return), zero where there is no return; ``a`` unchanged.

Why (benchmarks/RESULTS.md, "Why the LiDAR models learnt slowly"; benchmarks/bench_lidar_input.py):
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
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fusioncli.data.projection import MAX_RANGE

NEAREST_RANK = 3  # the reference return: the 3rd-nearest, so 1-2 spurious near returns do not move it


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


# Every --lidar-norm choice but "seed" (the identity); fusioncli.config.LIDAR_NORMS lists the
# choices for the CLI without importing torch (a test holds the two lists equal).
TRANSFORMS = {"nearest": nearest_xyza}


class LidarNorm:
    """A forward pre-hook that replaces a model's ``xyza`` argument by ``norm(xyza)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transform = TRANSFORMS[name]

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        rgb, xyza, *rest = args
        return (rgb, self.transform(xyza), *rest)

    def __repr__(self) -> str:
        return f"LidarNorm({self.name!r})"


def attach_lidar_norm(model: nn.Module, name: str) -> nn.Module:
    """``model`` with its LiDAR input step ``name`` (``seed`` or a key of :data:`TRANSFORMS`).

    ``seed`` attaches nothing, so a seed model is exactly the builder's module. The step has no
    parameters or buffers: weights, parameter counts and checkpoints are those of the builder's
    model, and the run config (saved with every record and checkpoint) says which step to attach.
    """
    if name != "seed" and name not in TRANSFORMS:
        raise ValueError(f"unknown lidar norm {name!r}; known: seed, {', '.join(TRANSFORMS)}")
    if name != "seed":
        model.register_forward_pre_hook(LidarNorm(name))
    return model
