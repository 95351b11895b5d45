"""What a model's LiDAR branch sees: the seed's XYZA, or XYZA centred on the sample's returns.

Every model is *called* with the seed's XYZA (x, y, z = depth x ray direction / 50, zeroed where
there is no return; a = 1 where there is one): the data, the corruptions, robustness and
saved-model scoring all produce that one form. A run's ``--lidar-norm`` (RunConfig.lidar_norm)
picks what the model computes from it first, as a parameter-free input step attached to the
model itself (a forward pre-hook), so every path that builds the run's model -- training loop,
stacked executor, Ray workers, checkpoints -- feeds it the same way:

* ``seed`` -- unchanged (the seed notebook's models; the default).
* ``centered`` -- x, y, z in metres minus the centroid of the sample's returns, zero where there
  is no return; ``a`` unchanged. Why (benchmarks/RESULTS.md, "Why the LiDAR path learnt
  slowly"): the class evidence in a depth map is the object's surface relief -- flat faces and
  edges against a smooth cap, a few tenths of a metre -- which the seed's encoding presents as
  changes of ~1 % of its scale on top of a per-sample offset (the object's range / 50) that varies
  more between samples than the relief within one. Centring removes the offset and leaves the
  relief at its physical size; the object's position is still in the map's layout and in ``a``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fusioncli.data.projection import MAX_RANGE


def centered_xyza(xyza: torch.Tensor) -> torch.Tensor:
    """``xyza`` (..., 4, H, W) in the seed's form -> x, y, z in metres about the returns' centroid.

    Samples without a single return stay all zero (nothing to centre on).
    """
    xyz, a = xyza[..., :3, :, :], xyza[..., 3:, :, :]
    metres = xyz * MAX_RANGE  # undo the seed's / 50 (x, y, z are already zero without a return)
    count = a.sum(dim=(-2, -1), keepdim=True)
    centroid = metres.sum(dim=(-2, -1), keepdim=True) / count.clamp(min=1)
    return torch.cat([(metres - centroid) * a, a], dim=-3)


# Every --lidar-norm choice but "seed" (the identity); fusioncli.config.LIDAR_NORMS lists the
# choices for the CLI without importing torch (a test holds the two lists equal).
TRANSFORMS = {"centered": centered_xyza}


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
