"""The sensor-fault suite: what real cameras and LiDARs do wrong, as seeded corruptions of a batch.

Modelled on the camera-LiDAR robustness benchmarks (Dong et al., CVPR 2023, "Benchmarking
Robustness of 3D Object Detection to Common Corruptions"; MultiCorrupt, Beemelmanns et al.
2024), adapted to what this tool's inputs are: a 64 x 64 RGBA image and a 64 x 64 XYZA LiDAR
map whose rows follow azimuth and columns zenith (:mod:`fusioncli.data.projection`).

This module registers the faults beyond :mod:`fusioncli.eval.corruptions`' five (missing
modalities, RGB noise, range noise, point thinning) in the same registry, so importing it (the
robustness evaluator does) gives the whole suite:

* LiDAR: ``beam_loss`` (whole beams = columns: a beam of a spinning LiDAR has a fixed
  elevation, i.e. zenith), ``fov_loss`` (a contiguous azimuth sector = rows), ``fog``
  (range-dependent loss plus near backscatter), ``crosstalk`` (spurious returns);
* camera: ``occlusion``, ``brightness``, ``darkness``, ``motion_blur``;
* both sensors: ``misalignment`` (an extrinsic calibration error), ``desync`` (a LiDAR frame
  of another sample), ``stuck_sensor`` (one sensor repeats a frame).

Every fault follows the corruptions' contract: ``(rgb, xyza, severity, generator) -> (rgb,
xyza)``, severity in [0, 1] with 0 the identity (the same tensors back), draws only from
``generator`` and the same draws at every severity (so damage grows with severity for a fixed
seed, not just on average), inputs never modified. A spurious LiDAR return is written the way the
projection writes a real one: ``direction(azimuth, zenith) * range / 50`` with ``a = 1``, on the
real set's angle grid (-16 ... +15.5 degrees in 0.5 degree steps).

Draws are laid out sample by sample, so a sample's fault does not depend on how the split is
batched -- except for the faults that mix samples (``desync``, ``stuck_sensor``): they take the
other frame from the same batch, so their figures depend on the evaluation batch size (the
robustness evaluator batches a split the same way every time on a given device kind).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fusioncli.data.projection import ANGLE_START_DEG, ANGLE_STEP_DEG, MAX_RANGE
from fusioncli.eval.corruptions import (
    CORRUPTIONS,
    Corruption,
    corruption_names,
    get_corruption,
    noisy_colour,
    register_corruption,
    uniform,
    with_colour,
)

# Severity 1 of each fault, in physical units. Chosen so that severity 1 is severe but not the
# same as a missing sensor (that is what rgb_missing / lidar_missing measure).
BEAM_LOSS_MAX = 0.75  # share of beams (columns) lost
FOV_LOSS_MAX = 0.75  # share of the azimuth field of view (rows) lost, one contiguous sector
FOG_BETA_MAX = 0.1  # extinction coefficient (1/m): two-way loss 1 - exp(-2 beta r), 86 % at 10 m
FOG_BACKSCATTER_MAX = 0.1  # share of rays answered by the fog itself at severity 1
FOG_BACKSCATTER_RANGE_M = (1.0, 5.0)
CROSSTALK_MAX = 0.15  # share of rays replaced by another LiDAR's pulse
CROSSTALK_RANGE_M = (1.0, MAX_RANGE)
OCCLUSION_MAX = 0.5  # side of the square occluder, as a share of the image side
OCCLUSION_LEVEL = 0.5  # intensity of the occluder (grey: not the black background)
BRIGHTNESS_MAX = 0.6  # added to R, G, B (overexposure), clamped to [0, 1]
DARKNESS_GAIN_MIN = 0.1  # remaining light at severity 1
DARKNESS_NOISE_SIGMA = 0.05  # read noise that the low light uncovers, at severity 1
BLUR_MAX_PX = 12  # blur length at severity 1 (the kernel is 1 + 2 * round(6 s) pixels)
MISALIGN_MAX_DEG = 10.0  # rotation of the LiDAR map relative to the camera
MISALIGN_MAX_PX = 8.0  # shift of the LiDAR map relative to the camera

_DIRECTIONS: dict[tuple[int, int, torch.dtype, str], torch.Tensor] = {}


def directions(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(3, h, w) unit ray directions on the real set's angle grid, in ``like``'s dtype and device."""
    key = (h, w, like.dtype, str(like.device))
    if key not in _DIRECTIONS:
        from fusioncli.data.projection import unit_directions

        az = [math.radians(ANGLE_START_DEG + ANGLE_STEP_DEG * i) for i in range(h)]
        ze = [math.radians(ANGLE_START_DEG + ANGLE_STEP_DEG * j) for j in range(w)]
        _DIRECTIONS[key] = unit_directions(torch.tensor(az), torch.tensor(ze), dtype=like.dtype, device=like.device)
    return _DIRECTIONS[key]


def _spurious(xyza: torch.Tensor, where: torch.Tensor, range_m: torch.Tensor) -> torch.Tensor:
    """``xyza`` with a return at ``range_m`` metres written at ``where`` (B, 1, H, W)."""
    _, _, h, w = xyza.shape
    point = torch.cat([directions(h, w, xyza) * (range_m / MAX_RANGE), torch.ones_like(range_m)], dim=1)  # (B, 4, H, W)
    return torch.where(where, point.to(xyza.dtype), xyza)


def _range_m(xyza: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) range in metres of each point (0 where there is no return)."""
    return torch.linalg.vector_norm(xyza[:, :3], dim=1, keepdim=True) * MAX_RANGE


# -- LiDAR -------------------------------------------------------------------------------------


@register_corruption(
    "beam_loss",
    modality="lidar",
    kind="curve",
    description=f"whole beams (depth-map columns = zenith) lost; each with probability {BEAM_LOSS_MAX:g} x severity",
    physical="dead laser/receiver channels of a multi-beam LiDAR: every point of those elevations is missing",
    ladder=lambda s: f"{100 * BEAM_LOSS_MAX * s:.0f}% of beams lost",
)
def beam_loss(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each beam (a column: one zenith angle) of each sample is lost with probability 0.75 x severity."""
    b, _, _, w = xyza.shape
    keep = uniform((b, 1, 1, w), generator, xyza) >= BEAM_LOSS_MAX * severity
    return rgb, xyza * keep.to(xyza.dtype)


@register_corruption(
    "fov_loss",
    modality="lidar",
    kind="curve",
    description=f"a contiguous azimuth sector (depth-map rows), {FOV_LOSS_MAX:g} x severity of the field of view, lost",
    physical="part of the field of view blocked or masked (a mount, a dirty section of the window)",
    ladder=lambda s: f"{100 * FOV_LOSS_MAX * s:.0f}% of the azimuth range lost",
)
def fov_loss(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A sector of ``round(0.75 x severity x H)`` consecutive rows lost, at a random position per sample.

    The start is ``u x (H - width)`` with one draw ``u`` per sample, so a higher severity's sector
    contains the lower one's (same draws).
    """
    b, _, h, _ = xyza.shape
    width = round(FOV_LOSS_MAX * severity * h)
    start = (uniform((b,), generator, xyza) * (h - width)).floor().view(b, 1, 1, 1)
    rows = torch.arange(h, device=xyza.device, dtype=start.dtype).view(1, 1, h, 1)
    lost = (rows >= start) & (rows < start + width)
    return rgb, xyza * (~lost).to(xyza.dtype)


@register_corruption(
    "fog",
    modality="lidar",
    kind="curve",
    description=(
        f"returns lost with probability 1 - exp(-2 beta r), beta = {FOG_BETA_MAX:g}/m x severity, "
        f"and {FOG_BACKSCATTER_MAX:g} x severity of rays answered by the fog at 1-5 m"
    ),
    physical="fog attenuates the pulse both ways (far returns vanish first) and scatters some of it back from close by",
    ladder=lambda s: (
        f"beta {FOG_BETA_MAX * s:.3g}/m (visibility {3 / (FOG_BETA_MAX * s):.0f} m), "
        f"{100 * FOG_BACKSCATTER_MAX * s:.1f}% backscatter"
        if s > 0
        else "clear"
    ),
)
def fog(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Beer-Lambert two-way loss by range, then near backscatter returns (Hahner et al.'s fog, simplified)."""
    b, _, h, w = xyza.shape
    u_loss, u_back, u_range = uniform((b, 3, h, w), generator, xyza).unsqueeze(2).unbind(1)
    r = _range_m(xyza)
    lost = u_loss < 1.0 - torch.exp(-2.0 * FOG_BETA_MAX * severity * r)
    out = xyza * (~lost).to(xyza.dtype)
    lo, hi = FOG_BACKSCATTER_RANGE_M
    return rgb, _spurious(out, u_back < FOG_BACKSCATTER_MAX * severity, lo + (hi - lo) * u_range.to(xyza.dtype))


@register_corruption(
    "crosstalk",
    modality="lidar",
    kind="curve",
    description=f"{CROSSTALK_MAX:g} x severity of rays replaced by a spurious return at a uniform range of 1-50 m",
    physical="another LiDAR's pulses (or sunlight) are taken for echoes: points appear at random ranges",
    ladder=lambda s: f"{100 * CROSSTALK_MAX * s:.1f}% spurious returns",
)
def crosstalk(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A share 0.15 x severity of rays (return or not) gets a spurious return at a random range."""
    b, _, h, w = xyza.shape
    u_hit, u_range = uniform((b, 2, h, w), generator, xyza).unsqueeze(2).unbind(1)
    lo, hi = CROSSTALK_RANGE_M
    return rgb, _spurious(xyza, u_hit < CROSSTALK_MAX * severity, lo + (hi - lo) * u_range.to(xyza.dtype))


# -- camera ------------------------------------------------------------------------------------


@register_corruption(
    "occlusion",
    modality="rgb",
    kind="curve",
    description=f"a grey square of side {OCCLUSION_MAX:g} x severity of the image at a random place per sample",
    physical="something on or in front of the lens: mud, a leaf, a sticker",
    ladder=lambda s: f"{100 * (OCCLUSION_MAX * s) ** 2:.0f}% of the image covered",
)
def occlusion(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """R, G, B set to grey 0.5 inside a square centred at a random point (a larger severity's square contains it)."""
    b, _, h, w = rgb.shape
    centre = uniform((b, 2), generator, rgb).T
    half_h, half_w = OCCLUSION_MAX * severity * h / 2, OCCLUSION_MAX * severity * w / 2
    cy, cx = (centre[0] * h).view(b, 1, 1, 1), (centre[1] * w).view(b, 1, 1, 1)
    rows = torch.arange(h, device=rgb.device, dtype=cy.dtype).view(1, 1, h, 1) + 0.5
    cols = torch.arange(w, device=rgb.device, dtype=cx.dtype).view(1, 1, 1, w) + 0.5
    inside = ((rows - cy).abs() < half_h) & ((cols - cx).abs() < half_w)
    return with_colour(rgb, torch.where(inside, torch.full_like(rgb, OCCLUSION_LEVEL), rgb)), xyza


@register_corruption(
    "brightness",
    modality="rgb",
    kind="curve",
    description=f"{BRIGHTNESS_MAX:g} x severity added to R, G, B, clamped to [0, 1]",
    physical="overexposure: glare, the sun in view, auto-exposure lagging a change of light",
    ladder=lambda s: f"+{BRIGHTNESS_MAX * s:.2g} intensity",
)
def brightness(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Overexposure: R, G, B raised by 0.6 x severity and clipped at 1 (no draws)."""
    return with_colour(rgb, (rgb + BRIGHTNESS_MAX * severity).clamp(0.0, 1.0)), xyza


@register_corruption(
    "darkness",
    modality="rgb",
    kind="curve",
    description=(
        f"R, G, B scaled by 1 - {1 - DARKNESS_GAIN_MIN:g} x severity plus read noise "
        f"(sigma {DARKNESS_NOISE_SIGMA:g} x severity), clamped"
    ),
    physical="low light: less signal, and the sensor noise that is no longer drowned by it",
    ladder=lambda s: (
        f"{100 * (1 - (1 - DARKNESS_GAIN_MIN) * s):.0f}% of the light, noise sigma {DARKNESS_NOISE_SIGMA * s:.2g}"
    ),
)
def darkness(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low light: intensities scaled down and read noise added (the same normal draws at every severity)."""
    gain = 1.0 - (1.0 - DARKNESS_GAIN_MIN) * severity
    return noisy_colour(rgb, generator, gain=gain, sigma=DARKNESS_NOISE_SIGMA * severity), xyza


@register_corruption(
    "motion_blur",
    modality="rgb",
    kind="curve",
    description="a box blur of 1 + 2 round(6 severity) pixels, horizontal or vertical per sample",
    physical="the camera or the object moves during the exposure",
    ladder=lambda s: f"{1 + 2 * round(BLUR_MAX_PX / 2 * s)} px blur",
)
def motion_blur(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear motion blur: the mean over a line of pixels (zeros, i.e. black, beyond the border)."""
    b = rgb.shape[0]
    vertical = (uniform((b,), generator, rgb) < 0.5).view(b, 1, 1, 1)
    n = 1 + 2 * round(BLUR_MAX_PX / 2 * severity)
    colour = rgb[:, :3].contiguous()
    horiz = F.avg_pool2d(colour, (1, n), stride=1, padding=(0, n // 2), count_include_pad=True)
    vert = F.avg_pool2d(colour, (n, 1), stride=1, padding=(n // 2, 0), count_include_pad=True)
    return with_colour(rgb, torch.where(vertical, vert, horiz)), xyza


# -- both sensors ------------------------------------------------------------------------------


@register_corruption(
    "misalignment",
    modality="both",
    kind="curve",
    description=(
        f"the LiDAR map rotated by up to {MISALIGN_MAX_DEG:g} deg and shifted by up to {MISALIGN_MAX_PX:g} px "
        "(x severity) relative to the image"
    ),
    physical="an extrinsic calibration error: the LiDAR was knocked or its mount flexes (the camera is the reference)",
    ladder=lambda s: f"{MISALIGN_MAX_DEG * s:.3g} deg, {MISALIGN_MAX_PX * s:.3g} px",
    changes=("lidar",),
)
def misalignment(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The LiDAR map resampled (nearest point, no interpolation) under a rotation and a shift.

    Per sample the rotation's sign and the shift's direction are random; their sizes are
    ``severity`` times the maxima. Points rotated in from outside the map are no-returns (zeros).
    Only the LiDAR input changes: the camera is the reference frame.
    """
    b, _, h, w = xyza.shape
    u = uniform((b, 2), generator, xyza).T.to(torch.float64)
    angle = math.radians(MISALIGN_MAX_DEG * severity) * torch.where(u[0] < 0.5, -1.0, 1.0)
    heading = 2 * math.pi * u[1]
    # affine_grid works in [-1, 1] coordinates: one pixel is 2 / size
    tx = MISALIGN_MAX_PX * severity * torch.cos(heading) * 2 / w
    ty = MISALIGN_MAX_PX * severity * torch.sin(heading) * 2 / h
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, tx], dim=1), torch.stack([sin, cos, ty], dim=1)], dim=1)
    grid = F.affine_grid(theta.to(xyza.dtype), [b, 4, h, w], align_corners=False)
    moved = F.grid_sample(xyza, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return rgb, moved


@register_corruption(
    "desync",
    modality="both",
    kind="curve",
    description="a share = severity of samples get the LiDAR frame of another sample of the batch",
    physical="temporal desynchronisation: the LiDAR scan paired with the image was taken at another moment",
    ladder=lambda s: f"{100 * s:.0f}% of pairs desynchronised",
    changes=("lidar",),
)
def desync(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``i`` (with probability ``severity``) gets the LiDAR of sample ``i - k``, ``1 <= k < B``.

    The other frame is one of the same batch (the frames around it in time); a batch of one sample
    has no other frame and is left as is.
    """
    b = xyza.shape[0]
    u = uniform((b, 2), generator, xyza).T
    if b < 2:
        return rgb, xyza
    offset = 1 + (u[1] * (b - 1)).long().clamp_(max=b - 2)
    source = (torch.arange(b, device=xyza.device) - offset) % b
    hit = (u[0] < severity).view(b, 1, 1, 1)
    return rgb, torch.where(hit, xyza[source], xyza)


@register_corruption(
    "stuck_sensor",
    modality="both",
    kind="curve",
    description="a share = severity of samples get one sensor (camera or LiDAR, 50/50) frozen at a repeated frame",
    physical="a sensor's driver stalls and keeps delivering its last frame while the other sensor moves on",
    ladder=lambda s: f"{100 * s:.0f}% of samples with a stuck sensor",
)
def stuck_sensor(
    rgb: torch.Tensor, xyza: torch.Tensor, severity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affected samples see, on one sensor, the frame of one sample of the batch (the frozen frame)."""
    b = rgb.shape[0]
    u = uniform((b, 3), generator, rgb).T
    # one frozen frame per batch, picked on the device (no host sync)
    frozen = (u[2, :1] * b).long().clamp_(max=b - 1)
    hit = u[0] < severity
    on_rgb = (hit & (u[1] < 0.5)).view(b, 1, 1, 1)
    on_lidar = (hit & (u[1] >= 0.5)).view(b, 1, 1, 1)
    new_rgb = torch.where(on_rgb, rgb.index_select(0, frozen), rgb)
    new_xyza = torch.where(on_lidar, xyza.index_select(0, frozen), xyza)
    return new_rgb, new_xyza


def fault_names(modality: str | None = None) -> tuple[str, ...]:
    """Names of the faults evaluated over severities (the ``curve`` kind), optionally of one modality."""
    return tuple(n for n in corruption_names("curve") if modality is None or CORRUPTIONS[n].modality == modality)


def fault_table(severities: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)) -> list[dict[str, object]]:
    """Every registered fault as a plain dict (``fusioncli faults``): name, modality, kind,
    inputs changed, description, physical meaning and the physical parameter at each severity."""
    rows: list[dict[str, object]] = []
    for name in CORRUPTIONS:
        fault: Corruption = get_corruption(name)
        levels = severities if fault.kind == "curve" else (1.0,)
        rows.append(
            {
                "name": fault.name,
                "modality": fault.modality,
                "kind": fault.kind,
                "changes": list(fault.inputs_changed),
                "description": fault.description,
                "physical": fault.physical,
                "severities": [{"severity": s, "parameter": fault.parameter(s)} for s in levels],
            }
        )
    return rows


__all__ = [
    "beam_loss",
    "brightness",
    "crosstalk",
    "darkness",
    "desync",
    "directions",
    "fault_names",
    "fault_table",
    "fog",
    "fov_loss",
    "misalignment",
    "motion_blur",
    "occlusion",
    "stuck_sensor",
]
