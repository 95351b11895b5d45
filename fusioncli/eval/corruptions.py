"""Corruptions of a model-ready batch, for robustness evaluation: missing modalities and noise.

Every corruption is a pure function ``(rgb, xyza, severity, generator) -> (rgb, xyza)`` on a
batch exactly as the model gets it (:func:`fusioncli.train.engine.batch_inputs`):

* ``rgb``: (B, 4, H, W) float RGBA in [0, 1];
* ``xyza``: (B, 4, H, W) float in the seed normalisation (:mod:`fusioncli.data.projection`):
  x, y, z = depth * ray direction / 50 and a = 1 where the LiDAR has a return; a point with no
  return is all zeros (x = y = z = a = 0).

``severity`` is in [0, 1]; severity 0 returns the inputs unchanged (the same tensors), and a
larger severity corrupts more. Random draws come only from ``generator`` (on any device; the
draws are moved to the batch's device), so the same generator state gives the same corrupted
batch. Inputs are never modified in place.

Severity couples across levels: with equally seeded generators, the draws at severity 0.5 and
1.0 are the same numbers, only scaled or thresholded differently, so a curve over severities
measures the severity, not fresh noise at each level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fusioncli.data.projection import MAX_RANGE
from fusioncli.errors import BadInputError

# Noise standard deviation at severity 1, in the units the model sees (RGB intensity in [0, 1]).
# 0.5 buries a small lit object on a black background; lower severities span the usable range.
RGB_NOISE_SIGMA = 0.5
# Range noise standard deviation at severity 1, in metres of depth. Objects are about 1 m across
# at 8-12 m, so 1 m of range noise wipes out their depth relief but not their silhouette.
LIDAR_NOISE_SIGMA_M = 1.0

CorruptionFn = Callable[[torch.Tensor, torch.Tensor, float, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Corruption:
    """One registered corruption: its function and how robustness evaluation uses it."""

    name: str
    modality: str  # "rgb" or "lidar": the only input it changes
    kind: str  # "curve": evaluated over severities; "missing": evaluated at severity 1 only
    apply: CorruptionFn
    description: str


CORRUPTIONS: dict[str, Corruption] = {}


def register_corruption(
    name: str, *, modality: str, kind: str, description: str
) -> Callable[[CorruptionFn], CorruptionFn]:
    """Decorator adding a corruption function to :data:`CORRUPTIONS` under ``name``."""
    if modality not in ("rgb", "lidar") or kind not in ("curve", "missing"):
        raise ValueError(f"corruption {name!r}: modality must be rgb or lidar, kind curve or missing")

    def decorate(fn: CorruptionFn) -> CorruptionFn:
        if name in CORRUPTIONS:
            raise ValueError(f"corruption {name!r} is already registered")
        CORRUPTIONS[name] = Corruption(name, modality, kind, fn, description)
        return fn

    return decorate


def get_corruption(name: str) -> Corruption:
    """The registered corruption ``name``; an unknown name lists the known ones."""
    try:
        return CORRUPTIONS[name]
    except KeyError:
        raise BadInputError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}") from None


def corruption_names(kind: str | None = None) -> tuple[str, ...]:
    """Registered names in registration order, optionally only those of one ``kind``."""
    return tuple(n for n, c in CORRUPTIONS.items() if kind is None or c.kind == kind)


def _check_severity(severity: float) -> float:
    severity = float(severity)
    if not 0.0 <= severity <= 1.0:  # also rejects NaN
        raise ValueError(f"severity must be in [0, 1] (got {severity})")
    return severity


def _uniform(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    # Drawn on the generator's device (its stream), then moved: the same generator state gives
    # the same numbers whichever device the batch lives on.
    return torch.rand(shape, generator=generator, device=generator.device).to(like.device)


def _normal(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device).to(like.device)


def _missing(x: torch.Tensor, severity: float, generator: torch.Generator) -> torch.Tensor:
    """``x`` with each sample replaced by zeros with probability ``severity`` (all at 1)."""
    # rand is in [0, 1): at severity 1 every sample is dropped, at 0 none.
    keep = _uniform((x.shape[0],), generator, x) >= severity
    return x * keep.view(-1, 1, 1, 1).to(x.dtype)


@register_corruption(
    "rgb_missing",
    modality="rgb",
    kind="missing",
    description="RGB replaced by zeros (per sample, probability = severity)",
)
def rgb_missing(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The camera is missing: each sample's RGBA becomes zeros with probability ``severity``."""
    severity = _check_severity(severity)
    if severity == 0.0:
        return rgb, xyza
    return _missing(rgb, severity, generator), xyza


@register_corruption(
    "lidar_missing",
    modality="lidar",
    kind="missing",
    description="LiDAR replaced by zeros, i.e. no returns (per sample, probability = severity)",
)
def lidar_missing(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The LiDAR is missing: each sample's XYZA becomes zeros (no return anywhere) with probability ``severity``."""
    severity = _check_severity(severity)
    if severity == 0.0:
        return rgb, xyza
    return rgb, _missing(xyza, severity, generator)


@register_corruption(
    "rgb_noise",
    modality="rgb",
    kind="curve",
    description=f"Gaussian noise on R, G, B (sigma = {RGB_NOISE_SIGMA} x severity), clamped to [0, 1]",
)
def rgb_noise(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera sensor noise: Gaussian noise with sigma ``RGB_NOISE_SIGMA * severity`` on R, G, B.

    Values are clamped back to [0, 1], the range a real image has. Alpha is left alone: it is
    not a sensor measurement (the PNGs are opaque everywhere, alpha = 1), so noise there would
    only test how a model reacts to a channel that never varies in real data.
    """
    severity = _check_severity(severity)
    if severity == 0.0:
        return rgb, xyza
    b, _, h, w = rgb.shape
    noise = _normal((b, 3, h, w), generator, rgb).to(rgb.dtype)
    out = rgb.clone()
    out[:, :3] = (rgb[:, :3] + noise * (RGB_NOISE_SIGMA * severity)).clamp_(0.0, 1.0)
    return out, xyza


@register_corruption(
    "lidar_noise",
    modality="lidar",
    kind="curve",
    description=f"Gaussian range noise on LiDAR returns (sigma = {LIDAR_NOISE_SIGMA_M:g} m x severity), along each ray",
)
def lidar_noise(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Range noise: each return moves along its ray by Gaussian noise of ``LIDAR_NOISE_SIGMA_M * severity`` metres.

    In the seed normalisation a return's (x, y, z) is its ray direction (a unit vector) times
    depth / 50, so scaling (x, y, z) by ``r' / r`` with ``r = |(x, y, z)|`` changes the depth and
    keeps the direction -- what range noise does to a real LiDAR. The noisy range is clamped to
    [0, 50 m]: noise changes where a return is, never whether there is one (that is
    :func:`lidar_dropout`), so no-return points stay all zeros and alpha is unchanged.
    """
    severity = _check_severity(severity)
    if severity == 0.0:
        return rgb, xyza
    b, _, h, w = xyza.shape
    xyz, alpha = xyza[:, :3], xyza[:, 3:]
    r = torch.linalg.vector_norm(xyz, dim=1, keepdim=True)
    sigma = LIDAR_NOISE_SIGMA_M / MAX_RANGE * severity  # in normalised range units
    r_new = (r + _normal((b, 1, h, w), generator, xyza).to(xyza.dtype) * sigma).clamp_(0.0, 1.0)
    has_return = (alpha > 0.5) & (r > 0)
    scale = torch.where(has_return, r_new / r.clamp_min(torch.finfo(r.dtype).tiny), torch.ones_like(r))
    return rgb, torch.cat([xyz * scale, alpha], dim=1)


@register_corruption(
    "lidar_dropout",
    modality="lidar",
    kind="curve",
    description="a fraction = severity of LiDAR returns removed (turned into no-return points)",
)
def lidar_dropout(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lost returns: each return is removed with probability ``severity`` (all at 1).

    A removed return becomes what a no-return point is after the seed normalisation: x = y =
    z = 0 and a = 0. The expected fraction removed is ``severity`` (per point, independently).
    """
    severity = _check_severity(severity)
    if severity == 0.0:
        return rgb, xyza
    b, _, h, w = xyza.shape
    keep = _uniform((b, 1, h, w), generator, xyza) >= severity
    return rgb, xyza * keep.to(xyza.dtype)
