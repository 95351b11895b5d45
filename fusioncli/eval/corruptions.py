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

import functools
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
    """One registered corruption (a sensor fault): its function and how robustness evaluation uses it.

    ``modality`` is the sensor the fault belongs to: ``rgb`` and ``lidar`` faults change only that
    input; ``both`` faults concern the pair (a calibration or timing error between the sensors,
    a stuck frame of either) -- :attr:`changes` says which inputs they may change. ``physical``
    is a sentence on what the fault is in a real sensor; ``ladder`` turns a severity into the
    physical parameter it sets (for ``fusioncli faults``).
    """

    name: str
    modality: str  # "rgb", "lidar" or "both"
    kind: str  # "curve": evaluated over severities; "missing": evaluated at severity 1 only
    apply: CorruptionFn
    description: str
    physical: str = ""
    ladder: Callable[[float], str] | None = None
    changes: tuple[str, ...] = ()  # inputs the fault may change; default: its modality

    @property
    def inputs_changed(self) -> tuple[str, ...]:
        """The model inputs (``rgb``, ``lidar``) this fault may change."""
        if self.changes:
            return self.changes
        return ("rgb", "lidar") if self.modality == "both" else (self.modality,)

    def parameter(self, severity: float) -> str:
        """The physical parameter at ``severity`` (e.g. "45% of beams lost"), or the severity itself."""
        return f"severity {severity:g}" if self.ladder is None else self.ladder(severity)


CORRUPTIONS: dict[str, Corruption] = {}


def register_corruption(
    name: str,
    *,
    modality: str,
    kind: str,
    description: str,
    physical: str = "",
    ladder: Callable[[float], str] | None = None,
    changes: tuple[str, ...] = (),
) -> Callable[[CorruptionFn], CorruptionFn]:
    """Decorator adding a corruption (fault) function to :data:`CORRUPTIONS` under ``name``.

    The public extension point of the fault suite: a plugin registers its own fault the same
    way the built-ins do, and robustness evaluation picks up every ``curve`` fault registered.
    """
    if modality not in ("rgb", "lidar", "both") or kind not in ("curve", "missing"):
        raise ValueError(f"corruption {name!r}: modality must be rgb, lidar or both, kind curve or missing")
    if not set(changes) <= {"rgb", "lidar"}:
        raise ValueError(f"corruption {name!r}: changes must name rgb and/or lidar")

    def decorate(fn: CorruptionFn) -> CorruptionFn:
        if name in CORRUPTIONS:
            raise ValueError(f"corruption {name!r} is already registered")
        guarded = _guarded(fn)
        CORRUPTIONS[name] = Corruption(name, modality, kind, guarded, description, physical, ladder, changes)
        return guarded

    return decorate


def _guarded(fn: CorruptionFn) -> CorruptionFn:
    """``fn`` behind the contract's common part: severity checked, severity 0 the identity.

    Every registered fault (built-in or a plugin's) gets it here, so a fault's body only says
    what the fault does at a severity in (0, 1].
    """

    @functools.wraps(fn)
    def apply(
        rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        severity = check_severity(severity)
        if severity == 0.0:
            return rgb, xyza
        return fn(rgb, xyza, severity, generator)

    return apply


def get_corruption(name: str) -> Corruption:
    """The registered corruption ``name``; an unknown name lists the known ones."""
    try:
        return CORRUPTIONS[name]
    except KeyError:
        raise BadInputError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}") from None


def corruption_names(kind: str | None = None) -> tuple[str, ...]:
    """Registered names in registration order, optionally only those of one ``kind``."""
    return tuple(n for n, c in CORRUPTIONS.items() if kind is None or c.kind == kind)


def check_severity(severity: float) -> float:
    """``severity`` as a float, or ValueError when it is outside [0, 1]."""
    severity = float(severity)
    if not 0.0 <= severity <= 1.0:  # also rejects NaN
        raise ValueError(f"severity must be in [0, 1] (got {severity})")
    return severity


def uniform(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape`` from ``generator``, on ``like``'s device."""
    # Drawn on the generator's device (its stream), then moved: the same generator state gives
    # the same numbers whichever device the batch lives on.
    return torch.rand(shape, generator=generator, device=generator.device).to(like.device)


def normal(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal draws of ``shape`` from ``generator``, on ``like``'s device."""
    return torch.randn(shape, generator=generator, device=generator.device).to(like.device)


def with_colour(rgb: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """``rgb`` with R, G, B from ``colour`` (its first 3 channels) and alpha kept.

    Camera faults change only R, G, B: alpha is not a measurement (the PNGs are opaque
    everywhere), so changing it would only test a channel that never varies in real data.
    """
    return torch.cat([colour[:, :3].to(rgb.dtype), rgb[:, 3:]], dim=1)


def noisy_colour(rgb: torch.Tensor, generator: torch.Generator, *, gain: float, sigma: float) -> torch.Tensor:
    """R, G, B scaled by ``gain`` plus Gaussian noise of std ``sigma``, clamped to [0, 1]; alpha kept.

    The noise is one standard normal draw per colour value, so the same generator state gives
    the same draws whatever ``gain`` and ``sigma`` are (severities stay coupled).
    """
    b, _, h, w = rgb.shape
    noise = normal((b, 3, h, w), generator, rgb).to(rgb.dtype)
    return with_colour(rgb, (rgb[:, :3] * gain + noise * sigma).clamp(0.0, 1.0))


def _missing(x: torch.Tensor, severity: float, generator: torch.Generator) -> torch.Tensor:
    """``x`` with each sample replaced by zeros with probability ``severity`` (all at 1)."""
    # rand is in [0, 1): at severity 1 every sample is dropped, at 0 none.
    keep = uniform((x.shape[0],), generator, x) >= severity
    return x * keep.view(-1, 1, 1, 1).to(x.dtype)


@register_corruption(
    "rgb_missing",
    modality="rgb",
    kind="missing",
    description="RGB replaced by zeros (per sample, probability = severity)",
    physical="the camera delivers no frame (cable, driver or power fault)",
    ladder=lambda s: f"{100 * s:.0f}% of frames missing",
)
def rgb_missing(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The camera is missing: each sample's RGBA becomes zeros with probability ``severity``."""
    return _missing(rgb, severity, generator), xyza


@register_corruption(
    "lidar_missing",
    modality="lidar",
    kind="missing",
    description="LiDAR replaced by zeros, i.e. no returns (per sample, probability = severity)",
    physical="the LiDAR delivers no scan (cable, driver or power fault)",
    ladder=lambda s: f"{100 * s:.0f}% of scans missing",
)
def lidar_missing(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The LiDAR is missing: each sample's XYZA becomes zeros (no return anywhere) with probability ``severity``."""
    return rgb, _missing(xyza, severity, generator)


@register_corruption(
    "rgb_noise",
    modality="rgb",
    kind="curve",
    description=f"Gaussian noise on R, G, B (sigma = {RGB_NOISE_SIGMA} x severity), clamped to [0, 1]",
    physical="sensor read and shot noise of a camera at high gain",
    ladder=lambda s: f"sigma {RGB_NOISE_SIGMA * s:.3g}",
)
def rgb_noise(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera sensor noise: Gaussian noise with sigma ``RGB_NOISE_SIGMA * severity`` on R, G, B.

    Values are clamped back to [0, 1], the range a real image has. Alpha is left alone: it is
    not a sensor measurement (the PNGs are opaque everywhere, alpha = 1), so noise there would
    only test how a model reacts to a channel that never varies in real data.
    """
    return noisy_colour(rgb, generator, gain=1.0, sigma=RGB_NOISE_SIGMA * severity), xyza


@register_corruption(
    "lidar_noise",
    modality="lidar",
    kind="curve",
    description=f"Gaussian range noise on LiDAR returns (sigma = {LIDAR_NOISE_SIGMA_M:g} m x severity), along each ray",
    physical="range jitter: timing noise of the time-of-flight measurement, each point moves along its ray",
    ladder=lambda s: f"sigma {LIDAR_NOISE_SIGMA_M * s:.3g} m",
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
    b, _, h, w = xyza.shape
    xyz, alpha = xyza[:, :3], xyza[:, 3:]
    r = torch.linalg.vector_norm(xyz, dim=1, keepdim=True)
    sigma = LIDAR_NOISE_SIGMA_M / MAX_RANGE * severity  # in normalised range units
    r_new = (r + normal((b, 1, h, w), generator, xyza).to(xyza.dtype) * sigma).clamp_(0.0, 1.0)
    has_return = (alpha > 0.5) & (r > 0)
    scale = torch.where(has_return, r_new / r.clamp_min(torch.finfo(r.dtype).tiny), torch.ones_like(r))
    return rgb, torch.cat([xyz * scale, alpha], dim=1)


@register_corruption(
    "lidar_dropout",
    modality="lidar",
    kind="curve",
    description="point thinning: a fraction = severity of LiDAR returns removed (turned into no-return points)",
    physical="returns lost at random (low-reflectance surfaces, a sparser scan pattern)",
    ladder=lambda s: f"{100 * s:.0f}% of returns removed",
)
def lidar_dropout(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lost returns: each return is removed with probability ``severity`` (all at 1).

    A removed return becomes what a no-return point is after the seed normalisation: x = y =
    z = 0 and a = 0. The expected fraction removed is ``severity`` (per point, independently).
    """
    b, _, h, w = xyza.shape
    keep = uniform((b, 1, h, w), generator, xyza) >= severity
    return rgb, xyza * keep.to(xyza.dtype)
