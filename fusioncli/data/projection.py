"""LiDAR geometry: the angle grid, ray directions, and depth -> XYZA projection.

Matches the NVIDIA DLI labs: rows of a depth map follow azimuth, columns follow zenith, and a
depth ``d`` at (azimuth ``az``, zenith ``ze``) is the point

    x = d * sin(-az) * cos(-ze),   y = d * cos(-az) * cos(-ze),   z = d * sin(-ze)

with ``a = (d < 50)`` marking a return. The seed's normalisation zeroes x, y, z where there is
no return and divides them by 50 (the maximum range), so inputs lie in [-1, 1].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch loads in the functions that use it: synth and `--help` need only numpy
    import torch

GRID_SIZE = 64
MAX_RANGE = 50.0  # depth value written for "no return"
ANGLE_START_DEG = -16.0
ANGLE_STEP_DEG = 0.5


def default_angles() -> tuple[np.ndarray, np.ndarray]:
    """The real set's azimuth and zenith grids: (64,) float32 radians, -16 ... +15.5 degrees."""
    deg = ANGLE_START_DEG + ANGLE_STEP_DEG * np.arange(GRID_SIZE)
    rad = np.deg2rad(deg).astype(np.float32)
    return rad.copy(), rad.copy()


def ray_directions(azimuth: np.ndarray, zenith: np.ndarray) -> np.ndarray:
    """Unit ray direction per depth-map pixel, shape (len(azimuth), len(zenith), 3).

    ``depth[i, j] * ray_directions(...)[i, j]`` is the 3D point the lab's projection yields, so
    a renderer that casts these rays writes depth maps that project back to the true scene.
    """
    az = np.asarray(azimuth, dtype=np.float64)[:, None]
    ze = np.asarray(zenith, dtype=np.float64)[None, :]
    x = np.sin(-az) * np.cos(-ze)
    y = np.cos(-az) * np.cos(-ze)
    z = np.broadcast_to(np.sin(-ze), x.shape)
    return np.stack([x, y, z], axis=-1)


def project_xyza(
    depth: torch.Tensor,
    azimuth: torch.Tensor | np.ndarray,
    zenith: torch.Tensor | np.ndarray,
    *,
    normalize: bool = True,
) -> torch.Tensor:
    """Project depth maps (..., H, W) to XYZA (..., 4, H, W), vectorised over leading dims.

    ``normalize=True`` applies the seed's normalisation (x, y, z zeroed where a = 0, divided by
    50); ``normalize=False`` gives the labs' raw ``get_torch_xyza`` output.
    """
    import torch

    depth = torch.as_tensor(depth)
    dtype = depth.dtype if depth.is_floating_point() else torch.float32
    depth = depth.to(dtype)
    az = torch.as_tensor(azimuth, dtype=dtype, device=depth.device)[:, None]
    ze = torch.as_tensor(zenith, dtype=dtype, device=depth.device)[None, :]
    fx = torch.sin(-az) * torch.cos(-ze)
    fy = torch.cos(-az) * torch.cos(-ze)
    fz = torch.sin(-ze).expand_as(fx)
    a = (depth < MAX_RANGE).to(dtype)
    scale = depth * a / MAX_RANGE if normalize else depth
    xyz = scale.unsqueeze(-3) * torch.stack([fx, fy, fz]).to(dtype)
    return torch.cat([xyz, a.unsqueeze(-3)], dim=-3)


def unit_directions(
    azimuth: torch.Tensor | np.ndarray,
    zenith: torch.Tensor | np.ndarray,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The (3, H, W) direction grid :func:`project_xyza` multiplies depths by, in ``dtype``.

    Taken from :func:`project_xyza` itself (``1 * direction`` is exact), so projecting with it
    (:func:`xyza_from_directions`) gives bit-identical values. ``dtype`` defaults to float32.
    """
    import torch

    ones = torch.ones((len(azimuth), len(zenith)), dtype=dtype or torch.float32, device=device)
    return project_xyza(ones, azimuth, zenith, normalize=False)[:3]


def xyza_from_directions(
    depth: torch.Tensor, directions: torch.Tensor, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """XYZA (..., 4, H, W) with the seed's normalisation from depths (..., H, W).

    ``directions`` is :func:`unit_directions`; the operations are :func:`project_xyza`'s in the
    same order, so the values are bit-identical to it. ``out`` (any memory format, e.g.
    channels_last) receives the result.
    """
    import torch

    a = (depth < MAX_RANGE).to(depth.dtype)
    if out is None:
        out = torch.empty((*depth.shape[:-2], 4, *depth.shape[-2:]), dtype=depth.dtype, device=depth.device)
    torch.mul((depth * a / MAX_RANGE).unsqueeze(-3), directions, out=out[..., :3, :, :])
    out[..., 3, :, :] = a
    return out
