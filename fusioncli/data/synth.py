"""Synthetic RGB + LiDAR dataset in the NVIDIA DLI layout, rendered by ray casting.

Every sample is one 3D scene -- a cube (label 0) or a sphere (label 1) at a random position,
orientation, size and colour on an empty, black background -- seen by two sensors:

* a LiDAR at the origin that casts the real set's rays (:func:`projection.ray_directions` on
  :func:`projection.default_angles`) and writes the distance to the first hit, ``50.0`` where
  nothing is hit, so :func:`projection.project_xyza` gives back points on the object's surface;
* a pinhole camera at another place, looking at the region where objects appear, that shades the
  object (Lambert + ambient + a little specular, one directional light) into a 64x64 RGBA PNG.

Because both are ray cast against the same geometry, a cube shows flat faces and sharp edges in
its depth map and a sphere a smooth cap -- nothing is a 2D drawing.

Everything that shapes a scene lives in the frozen :class:`SceneParams`, so a difficulty knob is
one new field. Sample ``i`` of a class draws its scene from its own random stream seeded by
``(seed, label, i)``: it does not depend on the number of samples, the batch it was rendered in
or the number of worker processes, and the same seed writes byte-identical files.

Speed comes from (a) casting only the rays whose pixel can see the object's bounding sphere (a
conservative window per sample, so the result is exactly that of casting every ray), (b) doing
the ray maths vectorised over a batch of samples, (c) writing the PNG and ``.npy`` bytes
directly, and (d) a process pool over chunks of samples for larger sets.

Difficulty. The defaults are the ``easy`` preset: clean renders close to the real set. The
``medium`` and ``hard`` presets (:data:`DIFFICULTIES`, :func:`difficulty_params`) turn on knobs,
each a :class:`SceneParams` field that is off by default: LiDAR depth noise and beam dropout,
low light (exposure) and RGB sensor noise, smaller and farther objects, clutter (elongated boxes
and ellipsoids, ray cast in both sensors, never in front of the object) and *complementary
corruption*: with probability ``corruption`` a sample has exactly one modality (50/50) replaced
by a sensor failure that carries nothing of the scene -- a dark camera frame, lost LiDAR returns --
so no single modality suffices for the whole set. Per-pixel noise comes from a per-sample
generator seeded by ``(seed, label, index, stream)``: still independent of N, batch and workers.
"""

from __future__ import annotations

import colorsys
import json
import math
import numbers
import os
import struct
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fusioncli.atomic import atomic_directory
from fusioncli.data.projection import MAX_RANGE, default_angles, ray_directions
from fusioncli.errors import BadInputError

CLASS_NAMES: tuple[str, ...] = ("cubes", "spheres")  # index = label, as in the real set
CUBE, SPHERE = 0, 1
DEFAULT_PER_CLASS = 1000
IMAGE_SIZE = 64
CHUNK_SIZE = 64  # samples per render batch: amortises numpy overhead, arrays stay in cache
MIN_SAMPLES_FOR_POOL = 1000  # below this, starting processes costs more than it saves

Progress = Callable[..., None]


@dataclass(frozen=True)
class SceneParams:
    """Every parameter of the synthetic scenes, in one place (units: metres, degrees).

    Ranges are ``(low, high)`` and sampled uniformly per sample. The LiDAR sits at the origin
    with the real set's angle grid (y forward, x right, z up). The defaults give a camera view
    like the real set's (a small pinkish lit object, ~8-15 px across) and a LiDAR view where the
    object is larger (~15-25 px across). A new knob (depth noise, beam dropout, low light,
    clutter, ...) is a new field whose default leaves today's output unchanged; if it needs
    randomness it takes the next unused column of :func:`scene_uniforms`, so existing columns --
    and datasets rendered before it existed -- stay as they were.
    """

    # -- the object
    size_range: tuple[float, float] = (0.9, 1.4)  # cube edge length
    sphere_scale: float = 1.38  # sphere diameter / cube edge: sqrt(6 / pi) gives equal mean area
    distance_range: tuple[float, float] = (8.0, 12.0)  # object centre to LiDAR
    # keep the object inside the LiDAR's field of view with this many degrees to spare
    edge_margin_deg: float = 0.5
    # colour in HSV: reddish to pink hues like the real renders
    hue_range_deg: tuple[float, float] = (-35.0, 12.0)
    saturation_range: tuple[float, float] = (0.2, 0.65)
    value_range: tuple[float, float] = (0.8, 1.0)
    # -- the light (a direction towards the light; need not be unit length)
    light_direction: tuple[float, float, float] = (0.6, -0.35, 0.7)
    ambient: float = 0.1
    specular: float = 0.25  # strength of a white Blinn-Phong highlight (exponent 16)
    # -- the camera: pinhole at `camera_position` looking at `camera_target`
    camera_position: tuple[float, float, float] = (-4.0, 0.0, 6.0)
    camera_target: tuple[float, float, float] = (0.0, 10.0, 0.0)
    camera_fov_deg: float = 40.0
    supersample: int = 2  # rays per pixel side (2 -> 2x2 anti-aliasing)
    # -- the LiDAR
    max_range: float = MAX_RANGE  # depth written where nothing is hit (and the clip for hits)
    # -- difficulty knobs; every default is "off" and leaves the renders byte for byte as before
    depth_noise: float = 0.0  # std (metres) of Gaussian noise on each LiDAR return; misses stay
    beam_dropout: float = 0.0  # probability that a return is lost (written as max_range)
    exposure: float = 1.0  # scales the camera's linear shade before gamma: < 1 is low light
    rgb_noise: float = 0.0  # std of Gaussian sensor noise per RGB channel, in full-scale units
    clutter: int = 0  # distractor objects per scene: elongated boxes and ellipsoids
    corruption: float = 0.0  # probability that one modality (50/50) of a sample fails outright

    def __post_init__(self) -> None:
        problems: list[str] = []
        # lists become tuples: params must stay hashable (sensor rays are cached per params)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (list, tuple)):
                expected = 3 if f.name in ("light_direction", "camera_position", "camera_target") else 2
                if len(value) != expected:
                    raise BadInputError(f"{_name(f.name)} needs {expected} numbers, got {value!r}")
                object.__setattr__(self, f.name, tuple(float(v) for v in value))
        for name in ("size_range", "distance_range", "hue_range_deg", "saturation_range", "value_range"):
            low, high = getattr(self, name)
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                problems.append(f"{_name(name)} must be (low, high) with low <= high, got {(low, high)}")
        if self.size_range[0] <= 0:
            problems.append(f"{_name('size_range')} must be positive, got {self.size_range}")
        if self.sphere_scale <= 0:
            problems.append(f"SceneParams.sphere_scale must be positive, got {self.sphere_scale}")
        if self.distance_range[0] <= self.size_range[1] * max(math.sqrt(3) / 2, self.sphere_scale / 2):
            problems.append(f"{_name('distance_range')} must keep objects clear of the LiDAR (larger than size)")
        elif self.distance_range[1] > MAX_DISTANCE:
            problems.append(f"{_name('distance_range')} must stay within {MAX_DISTANCE:g} m, got {self.distance_range}")
        problems.extend(self._knob_problems())
        for name in ("saturation_range", "value_range"):
            low, high = getattr(self, name)
            if low < 0 or high > 1:
                problems.append(f"SceneParams.{name} must lie in [0, 1], got {(low, high)}")
        if not 0 <= self.ambient <= 1 or not 0 <= self.specular <= 1:
            problems.append("SceneParams.ambient and .specular must lie in [0, 1]")
        if not 1 <= self.camera_fov_deg <= 150:
            problems.append(f"SceneParams.camera_fov_deg must be in [1, 150], got {self.camera_fov_deg}")
        if self.supersample not in (1, 2, 3, 4):
            problems.append(f"SceneParams.supersample must be 1, 2, 3 or 4, got {self.supersample}")
        if not self.max_range > 0:
            problems.append(f"SceneParams.max_range must be positive, got {self.max_range}")
        if math.dist(self.camera_position, self.camera_target) == 0:
            problems.append("SceneParams.camera_position and camera_target must differ")
        if math.hypot(*self.light_direction) == 0:
            problems.append("SceneParams.light_direction must not be zero")
        if problems:
            raise BadInputError(problems)

    def _knob_problems(self) -> list[str]:
        """Range checks of the difficulty knobs, each message naming its ``fusioncli synth`` flag."""
        problems = []
        for name, low, high, closed, what in _KNOB_RANGES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                problems.append(f"{_name(name)} must be a number ({what}), got {value!r}")
                continue
            above = value > high if closed else value >= high  # type: ignore[operator]  # typeshed's numbers.Real has only < and <=
            below = value <= low if name == "exposure" else value < low
            if below or above:
                opening = "(" if name == "exposure" else "["
                interval = f"{opening}{low:g}, {high:g}{']' if closed else ')'}"
                problems.append(f"{_name(name)} must be in {interval} ({what}), got {value:g}")
            else:
                object.__setattr__(self, name, float(value))
        clutter = self.clutter
        if isinstance(clutter, bool) or not isinstance(clutter, numbers.Integral) or not 0 <= clutter <= MAX_CLUTTER:
            problems.append(f"{_name('clutter')} must be an integer from 0 to {MAX_CLUTTER}, got {clutter!r}")
        else:
            object.__setattr__(self, "clutter", int(clutter))
        return problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (tuples become lists)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


# The knobs `fusioncli synth` exposes, by field: error messages name the flag a user typed.
KNOB_FLAGS: dict[str, str] = {
    "size_range": "--size-range",
    "distance_range": "--distance-range",
    "depth_noise": "--depth-noise",
    "beam_dropout": "--beam-dropout",
    "exposure": "--exposure",
    "rgb_noise": "--rgb-noise",
    "clutter": "--clutter",
    "corruption": "--corruption",
}
# (field, low, high, high included, meaning); exposure excludes its low end (0 = no light at all)
_KNOB_RANGES: tuple[tuple[str, float, float, bool, str], ...] = (
    ("depth_noise", 0.0, 5.0, True, "metres of noise std on each return"),
    ("beam_dropout", 0.0, 1.0, False, "fraction of LiDAR returns lost"),
    ("exposure", 0.0, 4.0, True, "scale on the light; < 1 is low light"),
    ("rgb_noise", 0.0, 1.0, True, "noise std as a fraction of full scale"),
    ("corruption", 0.0, 1.0, True, "probability that one modality of a sample fails"),
)
MAX_CLUTTER = 8
MAX_DISTANCE = 30.0  # object centres stay well inside the 50 m range, clutter behind them too


def _name(field_name: str) -> str:
    """How an error message names a parameter: its CLI flag where it has one, and the field."""
    flag = KNOB_FLAGS.get(field_name)
    return f"{flag} (SceneParams.{field_name})" if flag else f"SceneParams.{field_name}"


# ----------------------------------------------------------------------------------------------
# Difficulty presets

DIFFICULTIES: tuple[str, ...] = ("easy", "medium", "hard")
# Field values on top of the defaults. easy = the defaults: clean, close to the real set.
# hard was tuned with benchmarks/bench_difficulty.py so that the best fusion strategy beats the
# best single modality by >= 10 accuracy points: measured +23.2 (decision 98.0 % vs rgb-only
# 74.8 %, 2,500 per class, 16 epochs, 2 seeds; benchmarks/RESULTS.md).
PRESETS: dict[str, dict[str, Any]] = {
    "easy": {},
    "medium": {
        "distance_range": (8.25, 12.25),
        "depth_noise": 0.005,
        "beam_dropout": 0.01,
        "exposure": 0.85,
        "rgb_noise": 0.015,
        "clutter": 1,
        "corruption": 0.5,
    },
    "hard": {
        "size_range": (0.85, 1.35),
        "distance_range": (8.5, 12.5),
        "depth_noise": 0.01,
        "beam_dropout": 0.02,
        "exposure": 0.7,
        "rgb_noise": 0.03,
        "clutter": 1,
        "corruption": 1.0,
    },
}


def difficulty_params(difficulty: str = "easy", **overrides: Any) -> SceneParams:
    """The :class:`SceneParams` of a difficulty preset, with explicit knob values on top.

    ``overrides`` are SceneParams fields; ``None`` means "the preset's value" (how the CLI passes
    a flag that was not given). Unknown presets or fields are a :class:`BadInputError`.
    """
    if difficulty not in PRESETS:
        raise BadInputError(f"--difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    known = {f.name for f in fields(SceneParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise BadInputError(f"unknown scene parameter(s): {', '.join(unknown)}")
    values = dict(PRESETS[difficulty])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SceneParams(**values)


def changed_params(params: SceneParams, difficulty: str = "easy") -> dict[str, Any]:
    """The fields of ``params`` that differ from the preset ``difficulty`` (JSON-able)."""
    base = difficulty_params(difficulty).to_dict()
    return {k: v for k, v in params.to_dict().items() if base[k] != v}


BOX, ELLIPSOID = "box", "ellipsoid"  # clutter shapes
RGB, LIDAR = "rgb", "lidar"  # the modality a complementary corruption takes out


@dataclass(frozen=True)
class Clutter:
    """A distractor: an elongated box or ellipsoid, neither a cube nor a sphere."""

    kind: str  # BOX or ELLIPSOID
    centre: tuple[float, float, float]
    rotation: tuple[tuple[float, float, float], ...]  # 3x3, columns = its axes in world
    half_extents: tuple[float, float, float]  # box half edges, or ellipsoid semi-axes
    colour: tuple[float, float, float]

    @property
    def bounding_radius(self) -> float:
        a, b, c = self.half_extents
        return math.sqrt(a * a + b * b + c * c) if self.kind == BOX else max(a, b, c)


@dataclass(frozen=True)
class Scene:
    """One sampled scene: what both sensors see."""

    label: int  # CUBE or SPHERE
    centre: tuple[float, float, float]
    rotation: tuple[tuple[float, float, float], ...]  # 3x3, columns = the cube's axes in world
    size: float  # cube edge length, or sphere diameter
    colour: tuple[float, float, float]  # linear RGB albedo in [0, 1]
    # (seed, label, index) of a sampled scene: seeds its per-pixel noise. A hand-built scene
    # (None) uses (0, label, 0).
    key: tuple[int, int, int] | None = None
    corrupt: str | None = None  # RGB or LIDAR: that sensor fails in this sample (None: neither)
    clutter: tuple[Clutter, ...] = ()

    @property
    def bounding_radius(self) -> float:
        return self.size * (math.sqrt(3) / 2 if self.label == CUBE else 0.5)


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_dataset` wrote."""

    out_dir: Path
    per_class: int
    seed: int
    counts: dict[str, int]
    seconds: float
    samples_per_s: float
    workers: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    difficulty: str | None = None  # the preset it started from (None: params given directly)
    overrides: dict[str, Any] = field(default_factory=dict)  # params that differ from that preset
    params_file: str | None = None  # SYNTH_RECORD, when it was written at the root

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["total"] = self.total
        return d


# ----------------------------------------------------------------------------------------------
# Scene sampling


_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
N_UNIFORMS = 16  # random numbers drawn per scene (some spare for future knobs)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective 64-bit hash (uint64 arithmetic wraps by design)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def scene_uniforms(label: int, indices: np.ndarray, seed: int = 0) -> np.ndarray:
    """(len(indices), N_UNIFORMS) uniforms in [0, 1): a counter-based stream per sample.

    Each value hashes (seed, label, index, k) alone -- integer operations, element-wise -- so a
    sample's numbers never depend on N, on the batch it is drawn in or on the worker count, and
    drawing a batch costs microseconds (a Generator per sample costs ~20 us to create).
    """
    key = _mix64(np.array([seed & _MASK64], dtype=np.uint64))
    key = _mix64(key ^ np.uint64(label))
    key = _mix64(key ^ np.asarray(indices, dtype=np.uint64))[:, None]
    counter = np.arange(1, N_UNIFORMS + 1, dtype=np.uint64)[None, :] * _GOLDEN
    bits = _mix64(_mix64(key + counter))
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def sample_scenes(label: int, start: int, stop: int, seed: int = 0, params: SceneParams | None = None) -> list[Scene]:
    """Scenes of samples [start, stop) of class ``label`` (each a function of seed, label, index)."""
    p = params or SceneParams()
    u = scene_uniforms(label, np.arange(start, stop), seed).tolist()
    scenes = [_scene_from_uniforms(label, row, p, (seed, label, i)) for i, row in zip(range(start, stop), u)]
    if p.clutter:
        scenes = [replace(sc, clutter=_sample_clutter(sc, p)) for sc in scenes]
    return scenes


def sample_scene(label: int, index: int, seed: int = 0, params: SceneParams | None = None) -> Scene:
    """The scene of sample ``index`` of class ``label``."""
    return sample_scenes(label, index, index + 1, seed, params)[0]


def _scene_from_uniforms(label: int, u: list[float], p: SceneParams, key: tuple[int, int, int]) -> Scene:
    """One sample's scene from its uniforms: 0 size, 1 distance, 2-3 direction, 4-6 rotation,
    7-9 colour, 10-11 complementary corruption (12-15 unused, for future knobs).
    """

    # Scalar math per sample (not vectorised): libm's sin/cos give the same bits whatever the
    # batch, where numpy's SIMD kernels might not.
    def uniform(k: int, lo_hi: tuple[float, float]) -> float:
        return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * u[k]

    edge = uniform(0, p.size_range)
    size = edge * p.sphere_scale if label == SPHERE else edge
    distance = uniform(1, p.distance_range)
    # Angular room for the centre: the same for both classes (from the cube's silhouette
    # radius, edge * sqrt(2/3)), so the position range carries no hint of the class.
    visible = math.degrees(math.asin(min(1.0, edge * math.sqrt(2 / 3) / distance)))
    az_deg, ze_deg = _grid_limits_deg()
    lo, hi = az_deg[0] + visible + p.edge_margin_deg, az_deg[1] - visible - p.edge_margin_deg
    if lo > hi:  # object wider than the field of view: centre it
        lo = hi = (az_deg[0] + az_deg[1]) / 2
    az = math.radians(lo + (hi - lo) * u[2])
    lo, hi = ze_deg[0] + visible + p.edge_margin_deg, ze_deg[1] - visible - p.edge_margin_deg
    if lo > hi:
        lo = hi = (ze_deg[0] + ze_deg[1]) / 2
    ze = math.radians(lo + (hi - lo) * u[3])
    # the LiDAR's own ray direction formula, so the centre lands where (az, ze) says
    centre = (
        distance * math.sin(-az) * math.cos(-ze),
        distance * math.cos(-az) * math.cos(-ze),
        distance * math.sin(-ze),
    )
    rotation = _uniform_rotation(u[4], u[5], u[6])
    hue = uniform(7, p.hue_range_deg) / 360.0 % 1.0
    colour = colorsys.hsv_to_rgb(hue, uniform(8, p.saturation_range), uniform(9, p.value_range))
    # the same columns for both classes: which samples fail, and how, says nothing of the class
    corrupt = (RGB if u[11] < 0.5 else LIDAR) if u[10] < p.corruption else None
    return Scene(label=label, centre=centre, rotation=rotation, size=size, colour=colour, key=key, corrupt=corrupt)


# Per-sample random streams (besides scene_uniforms' columns): one generator per sample and use,
# so turning one knob on never changes the draws of another.
_STREAM_DEPTH_NOISE, _STREAM_DROPOUT, _STREAM_RGB_NOISE, _STREAM_CLUTTER, _STREAM_FAILURE = 1, 2, 3, 4, 5


def _sample_rng(scene: Scene, stream: int) -> np.random.Generator:
    """The generator of one sample and stream: a function of (seed, label, index, stream) only."""
    seed, label, index = scene.key if scene.key is not None else (0, scene.label, 0)
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, label, index, stream])))


def _sample_clutter(scene: Scene, p: SceneParams) -> tuple[Clutter, ...]:
    """``p.clutter`` distractors anywhere in the LiDAR's view, always behind the object.

    "Behind" for both sensors: the nearest point of a distractor is farther from the LiDAR and
    from the camera than the farthest point of the object, so it never hides any part of the
    object -- it only adds returns and shapes around and behind it.
    """
    rng = _sample_rng(scene, _STREAM_CLUTTER)
    (az0, az1), (ze0, ze1) = _grid_limits_deg()
    lo_size, hi_size = p.size_range
    obj_r = scene.bounding_radius
    out = []
    for _ in range(p.clutter):
        u = rng.random(12).tolist()
        kind = BOX if u[0] < 0.5 else ELLIPSOID
        # elongated: the long side up to an object's size, the two others a quarter to half of it
        # (larger clutter drew the LiDAR models' attention so much that they did not learn in
        # benchmarks/bench_difficulty.py's budget)
        long = (lo_size + (hi_size - lo_size) * u[1]) * (0.7 + 0.4 * u[2])
        half = (long / 2, long * (0.25 + 0.25 * u[3]) / 2, long * (0.25 + 0.25 * u[4]) / 2)
        r = math.sqrt(sum(h * h for h in half)) if kind == BOX else half[0]
        az = math.radians(az0 + (az1 - az0) * u[5])
        ze = math.radians(ze0 + (ze1 - ze0) * u[6])
        direction = (math.sin(-az) * math.cos(-ze), math.cos(-az) * math.cos(-ze), math.sin(-ze))
        near = 0.0
        for sensor in ((0.0, 0.0, 0.0), p.camera_position):
            # smallest d with |d * direction - sensor| >= (object's far side) + r
            reach = math.dist(scene.centre, sensor) + obj_r + r + 0.2
            b = sum(di * si for di, si in zip(direction, sensor))
            c = sum(si * si for si in sensor) - reach * reach
            near = max(near, b + math.sqrt(max(0.0, b * b - c)))
        distance = near + 1.0 + 5.0 * u[7]  # 1-6 m behind the object
        centre = tuple(distance * di for di in direction)
        hue = (p.hue_range_deg[0] + (p.hue_range_deg[1] - p.hue_range_deg[0]) * u[8]) / 360.0 % 1.0
        sat = p.saturation_range[0] + (p.saturation_range[1] - p.saturation_range[0]) * u[9]
        colour = colorsys.hsv_to_rgb(hue, sat, p.value_range[0] + (p.value_range[1] - p.value_range[0]) * u[10])
        rotation = _uniform_rotation(*rng.random(3).tolist())
        out.append(Clutter(kind, centre, rotation, half, colour))
    return tuple(out)


def _uniform_rotation(u1: float, u2: float, u3: float) -> tuple[tuple[float, float, float], ...]:
    """A uniformly random rotation matrix from three uniforms (Shoemake's quaternion method)."""
    a, b = math.sqrt(1 - u1), math.sqrt(u1)
    x, y = a * math.sin(2 * math.pi * u2), a * math.cos(2 * math.pi * u2)
    z, w = b * math.sin(2 * math.pi * u3), b * math.cos(2 * math.pi * u3)
    return (
        (1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)),
        (2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)),
        (2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)),
    )


@lru_cache(maxsize=1)
def _grid_limits_deg() -> tuple[tuple[float, float], tuple[float, float]]:
    az, ze = default_angles()
    return (
        (math.degrees(float(az.min())), math.degrees(float(az.max()))),
        (math.degrees(float(ze.min())), math.degrees(float(ze.max()))),
    )


# ----------------------------------------------------------------------------------------------
# Sensors


@dataclass(frozen=True)
class _Sensors:
    """Ray bundles of both sensors, computed once per SceneParams."""

    lidar_dirs: tuple[np.ndarray, np.ndarray, np.ndarray]  # x, y, z, each (64*64,), row-major (az, ze)
    azimuth: np.ndarray  # (64,) float32
    zenith: np.ndarray
    cam_origin: tuple[float, float, float]
    cam_dirs: tuple[np.ndarray, np.ndarray, np.ndarray]  # x, y, z of the (S*S,) sub-pixel rays
    cam_subpixels: np.ndarray  # (64*64, ss*ss): flat sub-pixel indices of each output pixel
    cam_basis: tuple[tuple[float, float, float], ...]  # right, down, forward
    cam_tan: float  # tan(fov / 2)


def _xyz_columns(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The x, y, z columns of (N, 3) ``a``, each as float32 (N,)."""
    return a[:, 0].astype(np.float32), a[:, 1].astype(np.float32), a[:, 2].astype(np.float32)


def _vec3(v: np.ndarray) -> tuple[float, float, float]:
    """A 3-vector as Python floats."""
    return float(v[0]), float(v[1]), float(v[2])


@lru_cache(maxsize=8)
def _sensors(params: SceneParams) -> _Sensors:
    az, ze = default_angles()
    lidar = ray_directions(az, ze).reshape(-1, 3)
    origin = np.array(params.camera_position, dtype=np.float64)
    forward = np.array(params.camera_target, dtype=np.float64) - origin
    forward /= np.linalg.norm(forward)
    up = np.array([0.0, 0.0, 1.0])
    if abs(float(forward @ up)) > 0.999:  # looking straight up/down: any other "up" will do
        up = np.array([0.0, 1.0, 0.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    tan = math.tan(math.radians(params.camera_fov_deg) / 2)
    ss = params.supersample
    s = IMAGE_SIZE * ss
    coords = (np.arange(s) + 0.5 - s / 2) / (s / 2) * tan  # sub-pixel centres on the image plane
    v, u = np.meshgrid(coords, coords, indexing="ij")
    dirs = forward + u[..., None] * right + v[..., None] * down
    dirs = (dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)).reshape(-1, 3)
    k = np.arange(IMAGE_SIZE)
    sub_rows = k[:, None] * ss + np.arange(ss)[None, :]  # (64, ss)
    subpixels = (sub_rows[:, None, :, None] * s + sub_rows[None, :, None, :]).reshape(IMAGE_SIZE**2, ss * ss)
    return _Sensors(
        lidar_dirs=_xyz_columns(lidar),
        azimuth=az,
        zenith=ze,
        cam_origin=_vec3(origin),
        cam_dirs=_xyz_columns(dirs),
        cam_subpixels=subpixels,
        cam_basis=tuple(_vec3(axis) for axis in (right, down, forward)),
        cam_tan=tan,
    )


def _index_range(lo: float, hi: float, start: float, step: float, n: int) -> tuple[int, int]:
    """Grid indices k with start + k*step in [lo, hi], widened by one cell, clipped to [0, n)."""
    k0 = max(0, math.floor((lo - start) / step) - 1)
    k1 = min(n, math.ceil((hi - start) / step) + 2)
    return k0, max(k0, k1)


def _lidar_window(scene: Scene, sensors: _Sensors) -> tuple[int, int, int, int]:
    """Rows (azimuth) and columns (zenith) whose rays may hit the scene's bounding sphere.

    Conservative: the rays within angle alpha of the centre direction have a zenith within
    alpha of the centre's and an azimuth within asin(sin alpha / cos elevation) of it.
    """
    n_az, n_ze = len(sensors.azimuth), len(sensors.zenith)
    cx, cy, cz = scene.centre
    dist = math.sqrt(cx * cx + cy * cy + cz * cz)
    r = scene.bounding_radius
    if dist <= r or cy <= 0:
        return 0, n_az, 0, n_ze
    alpha = math.asin(r / dist)
    elevation = math.asin(cz / dist)
    if abs(elevation) + alpha >= math.pi / 2 - 1e-6:
        return 0, n_az, 0, n_ze
    d_az = math.asin(min(1.0, math.sin(alpha) / math.cos(elevation)))
    az_c, ze_c = -math.atan2(cx, cy), -elevation
    az0, az_step = float(sensors.azimuth[0]), float(sensors.azimuth[1] - sensors.azimuth[0])
    ze0, ze_step = float(sensors.zenith[0]), float(sensors.zenith[1] - sensors.zenith[0])
    r0, r1 = _index_range(az_c - d_az, az_c + d_az, az0, az_step, n_az)
    c0, c1 = _index_range(ze_c - alpha, ze_c + alpha, ze0, ze_step, n_ze)
    return r0, r1, c0, c1


def _camera_window(scene: Scene, sensors: _Sensors) -> tuple[int, int, int, int]:
    """Output pixel rows and columns of the camera whose rays may hit the bounding sphere.

    A ray that hits the sphere also hits its shadow on the (x, z) and on the (y, z) plane of the
    camera, so each image axis is bounded by the tangents to a circle -- conservative and tight.
    """
    rel = [c - o for c, o in zip(scene.centre, sensors.cam_origin)]
    x, y, z = (a[0] * rel[0] + a[1] * rel[1] + a[2] * rel[2] for a in sensors.cam_basis)
    r = scene.bounding_radius
    half = IMAGE_SIZE / 2
    bounds = []
    for lateral in (y, x):  # rows follow "down" (y), columns follow "right" (x)
        rho = math.hypot(lateral, z)
        if rho <= r or z <= 0:
            return 0, IMAGE_SIZE, 0, IMAGE_SIZE
        theta, beta = math.atan2(lateral, z), math.asin(r / rho)
        if abs(theta) + beta >= math.pi / 2 - 1e-6:
            return 0, IMAGE_SIZE, 0, IMAGE_SIZE
        lo, hi = math.tan(theta - beta) / sensors.cam_tan, math.tan(theta + beta) / sensors.cam_tan
        # plane coordinate of pixel k's centre is (k + 0.5 - half) / half; the one-pixel
        # widening of _index_range covers the sub-pixels, which lie within half a pixel of it
        bounds.append(_index_range(lo, hi, (0.5 - half) / half, 1 / half, IMAGE_SIZE))
    (r0, r1), (c0, c1) = bounds
    return r0, r1, c0, c1


def _gather(windows: Sequence[tuple[int, int, int, int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat grid indices and their sample ids for a list of (r0, r1, c0, c1) windows."""
    idx, counts = [], []
    for r0, r1, c0, c1 in windows:
        flat = (np.arange(r0, r1)[:, None] * width + np.arange(c0, c1)[None, :]).ravel()
        idx.append(flat)
        counts.append(flat.size)
    if not idx:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    return np.concatenate(idx), np.repeat(np.arange(len(windows)), counts)


# ----------------------------------------------------------------------------------------------
# Ray casting (all element-wise: a ray's result never depends on which batch it was cast in)


@dataclass(frozen=True)
class _Objects:
    """Per-sample geometry as arrays (B, ...), float64."""

    centre: np.ndarray  # (B, 3)
    axes: np.ndarray  # (B, 3, 3): axes[b, k] = the cube's k-th axis in world coordinates
    half: np.ndarray  # (B,): half edge, or radius
    is_cube: np.ndarray  # (B,) bool
    colour: np.ndarray  # (B, 3)

    @classmethod
    def of(cls, scenes: Sequence[Scene]) -> _Objects:
        return cls(
            centre=np.array([s.centre for s in scenes], dtype=np.float64).reshape(-1, 3),
            # Scene.rotation's columns are the axes; transposed, rows are
            axes=np.array([s.rotation for s in scenes], dtype=np.float64).reshape(-1, 3, 3).transpose(0, 2, 1),
            half=np.array([s.size / 2 for s in scenes], dtype=np.float64),
            is_cube=np.array([s.label == CUBE for s in scenes], dtype=bool),
            colour=np.array([s.colour for s in scenes], dtype=np.float64).reshape(-1, 3),
        )


def _cast(
    origin: tuple[float, float, float],
    dirs: tuple[np.ndarray, np.ndarray, np.ndarray],
    sid: np.ndarray,
    obj: _Objects,
    *,
    normals: bool,
    round_hit: Callable[..., Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...] | None]:
    """Intersect unit rays from ``origin`` with the object of their sample ``sid``.

    ``obj.is_cube`` picks the slab test (cubes, and clutter boxes); the others go to
    ``round_hit`` (default: spheres; clutter passes :func:`_hit_ellipsoids`).

    ``dirs`` are float32 (N,) x, y, z. Returns ``hit`` (N,) bool, ``t`` (N,) float32 distance
    along the ray (inf where missed) and, if asked, the unit surface normal's x, y, z (N,) each
    (0 where missed). Terms that only depend on the sample are computed once per sample (float64)
    and gathered; per ray only what must be, in float32 (ample for 64x64 maps, twice as fast).
    """
    n = sid.size
    hit = np.zeros(n, dtype=bool)
    t = np.full(n, np.inf, dtype=np.float32)
    normal = tuple(np.zeros(n, dtype=np.float32) for _ in range(3)) if normals else None
    oc = obj.centre - np.asarray(origin)  # (B, 3): origin -> centre
    kinds = obj.is_cube[sid]
    for cube in (False, True):
        if kinds.all() if cube else not kinds.any():
            rays = None  # the whole batch is this kind: no copies
        else:
            rays = np.flatnonzero(kinds == cube)
            if rays.size == 0:
                continue
        s = sid if rays is None else sid[rays]
        d = dirs if rays is None else tuple(c[rays] for c in dirs)
        ok, tk, nk = (_hit_cubes if cube else (round_hit or _hit_spheres))(oc, obj, s, d, normals)
        k = np.flatnonzero(ok) if rays is None else rays[ok]
        hit[k] = True
        t[k] = tk
        if normal is not None and nk is not None:
            for dst, src in zip(normal, nk):
                dst[k] = src
        if rays is None:
            break
    return hit, t, normal


def _per_ray(table: list[np.ndarray], s: np.ndarray) -> np.ndarray:
    """Gather per-sample rows (K lists of (B,)) to per-ray rows (K, N) float32 in one take."""
    return np.take(np.array(table, dtype=np.float32), s, axis=1)


# A hit test's answer: hit (N,) bool, t of the hits, and their unit normals' x, y, z if asked.
_Hit = tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...] | None]


def _hit_spheres(
    oc: np.ndarray, obj: _Objects | _Shapes, s: np.ndarray, d: tuple[np.ndarray, ...], normals: bool
) -> _Hit:
    """Analytic ray/sphere: |t d - oc|^2 = r^2 with |d| = 1."""
    dist2 = oc[:, 0] * oc[:, 0] + oc[:, 1] * oc[:, 1] + oc[:, 2] * oc[:, 2]
    cx, cy, cz, c = _per_ray([oc[:, 0], oc[:, 1], oc[:, 2], obj.half * obj.half - dist2], s)
    dx, dy, dz = d
    b = dx * cx + dy * cy + dz * cz
    disc = c + b * b  # r^2 minus the squared distance of the centre from the ray
    ok = disc >= 0
    t = b[ok] - np.sqrt(disc[ok])
    front = t > 0
    ok[ok] = front
    t = t[front]
    if not normals:
        return ok, t, None
    inv_r = (1.0 / obj.half).astype(np.float32)[s[ok]]
    return ok, t, tuple((e[ok] * t - q[ok]) * inv_r for e, q in ((dx, cx), (dy, cy), (dz, cz)))


def _hit_cubes(
    oc: np.ndarray, obj: _Objects | _Shapes, s: np.ndarray, d: tuple[np.ndarray, ...], normals: bool
) -> _Hit:
    """Ray/oriented box by the slab method in the box's own frame (cubes and clutter boxes)."""
    ax = obj.axes
    # per sample: the ray origin in the cube's frame is o_l = -axes . oc; along axis k the ray is
    # inside the slab for t * d_l in [-h - o_l, h - o_l]
    o_l = -(ax[:, :, 0] * oc[:, None, 0] + ax[:, :, 1] * oc[:, None, 1] + ax[:, :, 2] * oc[:, None, 2])
    half = obj.half[:, None] if obj.half.ndim == 1 else obj.half  # (B, 1) cube or (B, 3) box
    lo, hi = -half - o_l, half - o_l
    rows = _per_ray([ax[:, k, j] for k in range(3) for j in range(3)] + [*lo.T, *hi.T], s)
    dx, dy, dz = d
    near, far, d_local = [], [], []
    with np.errstate(divide="ignore", invalid="ignore"):  # d_l = 0: +-inf bounds are right
        for k in range(3):
            d_l = rows[3 * k] * dx + rows[3 * k + 1] * dy + rows[3 * k + 2] * dz
            inv = 1.0 / d_l
            t1 = rows[9 + k] * inv
            t2 = rows[12 + k] * inv
            near.append(np.minimum(t1, t2))
            far.append(np.maximum(t1, t2))
            d_local.append(d_l)
    t_near = np.maximum(np.maximum(near[0], near[1]), near[2])
    t_far = np.minimum(np.minimum(far[0], far[1]), far[2])
    ok = (t_near <= t_far) & (t_near > 0)
    t = t_near[ok]
    if not normals:
        return ok, t, None
    # the face entered is on the slab whose near plane is the farthest; its normal faces the ray
    n0, n1, n2 = near[0][ok], near[1][ok], near[2][ok]
    axis = np.where((n0 >= n1) & (n0 >= n2), 0, np.where(n1 >= n2, 1, 2))
    d_axis = np.choose(axis, (d_local[0][ok], d_local[1][ok], d_local[2][ok]))
    sign = np.where(d_axis > 0, -1.0, 1.0).astype(np.float32)
    a = ax[s[ok], axis].astype(np.float32)  # (H, 3)
    return ok, t, (a[:, 0] * sign, a[:, 1] * sign, a[:, 2] * sign)


def _hit_ellipsoids(
    oc: np.ndarray, obj: _Objects | _Shapes, s: np.ndarray, d: tuple[np.ndarray, ...], normals: bool
) -> _Hit:
    """Ray/ellipsoid: in the frame where it is the unit sphere, |o' + t d'|^2 = 1."""
    m = obj.axes / obj.half[:, :, None]  # (B, 3, 3): row k = axis k / semi-axis k
    o_l = -(m[:, :, 0] * oc[:, None, 0] + m[:, :, 1] * oc[:, None, 1] + m[:, :, 2] * oc[:, None, 2])
    c_l = o_l[:, 0] * o_l[:, 0] + o_l[:, 1] * o_l[:, 1] + o_l[:, 2] * o_l[:, 2] - 1.0
    rows = _per_ray([m[:, k, j] for k in range(3) for j in range(3)] + [*o_l.T, c_l], s)
    dx, dy, dz = d
    dl = [rows[3 * k] * dx + rows[3 * k + 1] * dy + rows[3 * k + 2] * dz for k in range(3)]
    a = dl[0] * dl[0] + dl[1] * dl[1] + dl[2] * dl[2]
    b = rows[9] * dl[0] + rows[10] * dl[1] + rows[11] * dl[2]
    disc = b * b - a * rows[12]
    ok = disc >= 0
    t = (-b[ok] - np.sqrt(disc[ok])) / a[ok]
    front = t > 0
    ok[ok] = front
    t = t[front]
    if not normals:
        return ok, t, None
    # the gradient of |M (x - c)|^2 is 2 M^T p' with p' the hit in the unit-sphere frame
    p_l = [rows[9 + k][ok] + t * dl[k][ok] for k in range(3)]
    n = [sum(p_l[k] * rows[3 * k + j][ok] for k in range(3)) for j in range(3)]
    inv = 1.0 / np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2])
    return ok, t, (n[0] * inv, n[1] * inv, n[2] * inv)


@dataclass(frozen=True)
class _Shapes:
    """One clutter object per member sample, as arrays (the interface :func:`_cast` reads)."""

    centre: np.ndarray  # (B, 3)
    axes: np.ndarray  # (B, 3, 3)
    half: np.ndarray  # (B, 3) half extents / semi-axes
    is_cube: np.ndarray  # (B,) bool: True for boxes (the slab test), False for ellipsoids
    colour: np.ndarray  # (B, 3)

    @classmethod
    def of(cls, items: Sequence[Clutter]) -> _Shapes:
        return cls(
            centre=np.array([c.centre for c in items], dtype=np.float64).reshape(-1, 3),
            axes=np.array([c.rotation for c in items], dtype=np.float64).reshape(-1, 3, 3).transpose(0, 2, 1),
            half=np.array([c.half_extents for c in items], dtype=np.float64).reshape(-1, 3),
            is_cube=np.array([c.kind == BOX for c in items], dtype=bool),
            colour=np.array([c.colour for c in items], dtype=np.float64).reshape(-1, 3),
        )


def _shade_pixels(
    p: SceneParams,
    n_pixels: int,
    target: np.ndarray,
    n_rays: int,
    on: np.ndarray,
    normal: tuple[np.ndarray, ...],
    eye: tuple[np.ndarray, ...],
    colour: np.ndarray,
) -> np.ndarray:
    """Shade the hit sub-pixel rays ``on`` (of ``n_rays``, pixel-major) into RGBA pixels.

    ``normal`` and ``eye`` (the ray directions) are x, y, z of the hits, ``colour`` (3, H) their
    albedo; the sub-pixels of pixel ``j`` of the list are rays ``j * n_sub ...``, and land on
    output pixel ``target[j]`` of ``n_pixels``. Returns (n_pixels, 4) uint8.
    """
    nx, ny, nz = normal
    ex, ey, ez = eye
    lx, ly, lz = (c / math.hypot(*p.light_direction) for c in p.light_direction)
    # dot products written out element-wise: BLAS may sum in a batch-dependent order
    lambert = np.maximum(nx * lx + ny * ly + nz * lz, 0)
    # white Blinn-Phong highlight: half vector of light and eye, exponent 16 by squaring
    hx, hy, hz = lx - ex, ly - ey, lz - ez
    spec = np.maximum(nx * hx + ny * hy + nz * hz, 0) / np.sqrt(hx * hx + hy * hy + hz * hz)
    spec *= lambert > 0
    for _ in range(4):
        spec *= spec
    shade = p.ambient + (1 - p.ambient) * lambert
    highlight = p.specular * spec
    if p.exposure != 1.0:  # low light: less light on the same sensor, before its gamma
        shade = shade * np.float32(p.exposure)
        highlight = highlight * np.float32(p.exposure)
    n_sub = p.supersample**2
    rgba = np.zeros((n_pixels, 4), dtype=np.uint8)
    rgba[:, 3] = 255  # opaque everywhere, like the real PNGs: black background, not transparent
    scale = np.float32(255 / n_sub)
    value = np.zeros(n_rays, dtype=np.float32)
    for channel in range(3):
        # gamma 2 (sqrt is exactly rounded, so deterministic) on the linear shade
        value[on] = np.sqrt(np.minimum(colour[channel] * shade + highlight, 1))
        per_pixel = value.reshape(-1, n_sub)
        total = per_pixel[:, 0].copy()
        for j in range(1, n_sub):  # a fixed summation order: deterministic
            total += per_pixel[:, j]
        rgba[target, channel] = np.floor(total * scale + 0.5)
    return rgba


def _layers(scenes: Sequence[Scene]) -> list[tuple[Any, list[Any], np.ndarray, Callable[..., Any]]]:
    """The scene's objects as layers: (arrays, items, sample index of each item, round hit test).

    Layer 0 is the cube/sphere of every sample; layer k >= 1 the k-th clutter object of the
    samples that have one.
    """
    layers: list[tuple[Any, list[Any], np.ndarray, Callable[..., Any]]] = [
        (_Objects.of(scenes), list(scenes), np.arange(len(scenes)), _hit_spheres)
    ]
    for k in range(max(len(sc.clutter) for sc in scenes)):
        members = [i for i, sc in enumerate(scenes) if len(sc.clutter) > k]
        items = [scenes[i].clutter[k] for i in members]
        layers.append((_Shapes.of(items), items, np.array(members), _hit_ellipsoids))
    return layers


def _render_layers(
    scenes: Sequence[Scene], p: SceneParams, sensors: _Sensors, full: bool
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render_batch`'s geometry for scenes with clutter: several objects per sample.

    Each layer casts only the rays of its own windows; the nearest hit per ray wins, then
    shading runs once on the winners.
    """
    b = len(scenes)
    n_az, n_ze = len(sensors.azimuth), len(sensors.zenith)
    layers = _layers(scenes)

    t_lidar = np.full(b * n_az * n_ze, np.inf, dtype=np.float32)
    for obj, items, members, round_hit in layers:
        windows = [(0, n_az, 0, n_ze) if full else _lidar_window(it, sensors) for it in items]
        idx, sid = _gather(windows, n_ze)
        dirs = tuple(d[idx] for d in sensors.lidar_dirs)
        hit, t, _ = _cast((0.0, 0.0, 0.0), dirs, sid, obj, normals=False, round_hit=round_hit)
        flat = members[sid[hit]] * (n_az * n_ze) + idx[hit]
        t_lidar[flat] = np.minimum(t_lidar[flat], t[hit])  # a layer touches a ray at most once
    depth = np.where(np.isfinite(t_lidar), np.minimum(t_lidar, p.max_range), p.max_range).astype(np.float32)

    # Camera: the pixels any layer may touch, as one sorted list of (sample, pixel) keys; a
    # z-buffer over their sub-pixels keeps the nearest hit, then shading runs on the winners.
    n_sub = p.supersample**2
    n_pix = IMAGE_SIZE * IMAGE_SIZE
    cast = []
    for _, items, members, _ in layers:
        windows = [(0, IMAGE_SIZE, 0, IMAGE_SIZE) if full else _camera_window(it, sensors) for it in items]
        pix, pix_sid = _gather(windows, IMAGE_SIZE)
        cast.append((pix, pix_sid, members[pix_sid] * n_pix + pix))
    keys = np.unique(np.concatenate([key for _, _, key in cast]))
    zbuf = np.full(keys.size * n_sub, np.inf, dtype=np.float32)
    nbuf = np.zeros((3, keys.size * n_sub), dtype=np.float32)
    cbuf = np.zeros((3, keys.size * n_sub), dtype=np.float32)
    for (obj, _, _, round_hit), (pix, pix_sid, key) in zip(layers, cast):
        sub = sensors.cam_subpixels[pix].ravel()
        sid = np.repeat(pix_sid, n_sub)
        dirs = tuple(d[sub] for d in sensors.cam_dirs)
        hit, t, normal = _cast(sensors.cam_origin, dirs, sid, obj, normals=True, round_hit=round_hit)
        assert normal is not None
        h = np.flatnonzero(hit)
        # slot of sub-pixel j of the pixel with key k: position of k in keys * n_sub + j
        slot = (np.repeat(np.searchsorted(keys, key), n_sub) * n_sub + np.tile(np.arange(n_sub), key.size))[h]
        nearer = t[h] < zbuf[slot]  # a layer touches a sub-pixel at most once
        h, slot = h[nearer], slot[nearer]
        zbuf[slot] = t[h]
        for k in range(3):
            nbuf[k, slot] = normal[k][h]
            cbuf[k, slot] = obj.colour[sid[h], k]
    on = np.flatnonzero(zbuf < np.inf)
    sub = sensors.cam_subpixels[keys % n_pix].ravel()[on]
    rgba = _shade_pixels(
        p,
        b * n_pix,
        keys,
        zbuf.size,
        on,
        (nbuf[0, on], nbuf[1, on], nbuf[2, on]),
        tuple(d[sub] for d in sensors.cam_dirs),
        cbuf[:, on],
    )
    return rgba.reshape(b, IMAGE_SIZE, IMAGE_SIZE, 4), depth.reshape(b, n_az, n_ze)


# Complementary corruption: what a failed sensor delivers (nothing of the scene).
# Dark and quiet on purpose: a loud failure (glare, many spurious points) gives the models noise
# to memorise and slowed learning down in benchmarks/bench_difficulty.py's budget.
FAILED_FRAME_LEVEL = (0.0, 0.1)  # a failed camera's frame: one flat dark grey per sample (full
# scale); the ordinary RGB noise, if any, then lands on it as on every frame
SPURIOUS_RETURNS = 0.01  # a LiDAR that lost its returns still sees this fraction of spurious ones
SPURIOUS_DEPTH = (1.0, 30.0)  # ... at depths uniform in this range (metres)


def _sensor_effects(scenes: Sequence[Scene], p: SceneParams, rgba: np.ndarray, depth: np.ndarray) -> None:
    """Apply sensor failures, LiDAR noise/dropout and camera noise in place (per sample).

    Each effect draws from its own per-sample stream, so a sample's output is a function of
    (seed, label, index) alone. A failed sensor's frame is replaced before the ordinary noise
    is applied on top, so it carries the same noise as any other frame.
    """
    if not (p.depth_noise or p.beam_dropout or p.rgb_noise or any(sc.corrupt for sc in scenes)):
        return
    max_range = np.float32(p.max_range)
    shape, pixels = depth.shape[1:], (*rgba.shape[1:3], 3)
    for k, sc in enumerate(scenes):
        if sc.corrupt == LIDAR:
            rng = _sample_rng(sc, _STREAM_FAILURE)
            spurious = rng.random(shape) < SPURIOUS_RETURNS
            depth[k] = max_range
            depth[k][spurious] = rng.uniform(*SPURIOUS_DEPTH, size=int(spurious.sum())).astype(np.float32)
        elif sc.corrupt == RGB:
            rng = _sample_rng(sc, _STREAM_FAILURE)
            rgba[k, ..., :3] = round(rng.uniform(*FAILED_FRAME_LEVEL) * 255)
    # the draws are per sample; the arithmetic on them runs once for the batch (element-wise)
    if p.depth_noise:
        noise = np.stack([_sample_rng(sc, _STREAM_DEPTH_NOISE).standard_normal(shape, np.float32) for sc in scenes])
        hit = depth < max_range
        # a return stays a return: clipped short of max_range (and in front of the sensor)
        noisy = depth[hit] + np.float32(p.depth_noise) * noise[hit]
        depth[hit] = np.clip(noisy, np.float32(0.05), np.nextafter(max_range, np.float32(0)))
    if p.beam_dropout:
        draws = np.stack([_sample_rng(sc, _STREAM_DROPOUT).random(shape, dtype=np.float32) for sc in scenes])
        depth[draws < np.float32(p.beam_dropout)] = max_range
    if p.rgb_noise:
        noise = np.stack([_sample_rng(sc, _STREAM_RGB_NOISE).standard_normal(pixels, np.float32) for sc in scenes])
        noisy = rgba[..., :3].astype(np.float32) + np.float32(p.rgb_noise * 255) * noise
        rgba[..., :3] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def render_batch(
    scenes: Sequence[Scene], params: SceneParams | None = None, *, full: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Render scenes to camera images and LiDAR depth maps.

    Returns ``rgba`` (B, 64, 64, 4) uint8 and ``depth`` (B, 64, 64) float32 (rows = azimuth,
    columns = zenith; ``max_range`` where nothing is hit). ``full=True`` casts every ray instead
    of only those that can reach the objects -- slower, same result; kept to test exactly that.
    Sensor noise, dropout and failures (the difficulty knobs) are applied per sample last.
    """
    p = params or SceneParams()
    sensors = _sensors(p)
    if any(sc.clutter for sc in scenes):
        rgba, depth = _render_layers(scenes, p, sensors, full)
    else:
        rgba, depth = _render_objects(scenes, p, sensors, full)
    _sensor_effects(scenes, p, rgba, depth)
    return rgba, depth


def _render_objects(
    scenes: Sequence[Scene], p: SceneParams, sensors: _Sensors, full: bool
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render_batch`'s geometry for one object per sample (no clutter): the fast path."""
    b = len(scenes)
    obj = _Objects.of(scenes)
    n_az, n_ze = len(sensors.azimuth), len(sensors.zenith)

    # LiDAR: depth along each ray from the origin
    windows = [(0, n_az, 0, n_ze) if full else _lidar_window(sc, sensors) for sc in scenes]
    idx, sid = _gather(windows, n_ze)
    hit, t, _ = _cast((0.0, 0.0, 0.0), tuple(d[idx] for d in sensors.lidar_dirs), sid, obj, normals=False)
    depth = np.full((b, n_az * n_ze), p.max_range, dtype=np.float32)
    depth[sid[hit], idx[hit]] = np.minimum(t[hit], p.max_range)

    # Camera: shade the first hit of every sub-pixel ray, then average each pixel's sub-pixels
    windows = [(0, IMAGE_SIZE, 0, IMAGE_SIZE) if full else _camera_window(sc, sensors) for sc in scenes]
    pix, pix_sid = _gather(windows, IMAGE_SIZE)
    n_sub = p.supersample**2
    sub = sensors.cam_subpixels[pix].ravel()  # pixel-major: a pixel's sub-pixels are adjacent
    sid = np.repeat(pix_sid, n_sub)
    dirs = tuple(d[sub] for d in sensors.cam_dirs)
    hit, _, normal = _cast(sensors.cam_origin, dirs, sid, obj, normals=True)
    assert normal is not None
    on = np.flatnonzero(hit)
    colour = np.take(obj.colour.T.astype(np.float32), sid[on], axis=1)  # (3, H)
    rgba = _shade_pixels(
        p,
        b * IMAGE_SIZE * IMAGE_SIZE,
        pix_sid * (IMAGE_SIZE * IMAGE_SIZE) + pix,
        sid.size,
        on,
        tuple(c[on] for c in normal),
        tuple(c[on] for c in dirs),
        colour,
    )
    return rgba.reshape(b, IMAGE_SIZE, IMAGE_SIZE, 4), depth.reshape(b, n_az, n_ze)


# ----------------------------------------------------------------------------------------------
# Files


def encode_png(rgba: np.ndarray, compress_level: int = 1) -> bytes:
    """A (H, W, 4) uint8 array as PNG bytes (8-bit RGBA, no filter).

    Written by hand: it is three times faster than going through PIL for 64x64 images and
    deterministic for a given zlib; Pillow and any PNG reader decode it.
    """
    h, w, c = rgba.shape
    raw = np.zeros((h, 1 + w * c), dtype=np.uint8)  # filter byte 0 per scanline
    raw[:, 1:] = rgba.reshape(h, w * c)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), compress_level))
        + chunk(b"IEND", b"")
    )


@lru_cache(maxsize=4)
def _npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    """The exact header ``np.save`` writes for this shape and dtype."""
    import io

    buf = io.BytesIO()
    arr = np.zeros(shape, dtype=dtype)
    np.save(buf, arr)
    return buf.getvalue()[: -arr.nbytes]


def encode_npy(arr: np.ndarray) -> bytes:
    """The bytes ``np.save`` would write for a C-contiguous array, without the file round trip."""
    arr = np.ascontiguousarray(arr)
    return _npy_header(arr.shape, arr.dtype.str) + arr.tobytes()


def _write(folder: int, name: str, data: bytes) -> None:
    """Write a new file ``name`` in the open folder ``folder`` (a descriptor: no path lookups)."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=folder)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _render_chunk(out_dir: str, label: int, start: int, stop: int, seed: int, params: SceneParams, width: int) -> int:
    """Render samples [start, stop) of one class and write their files; returns the count.

    Runs in a worker process (or inline), so it only takes picklable arguments.
    """
    folder = os.path.join(out_dir, CLASS_NAMES[label])
    rgb_dir = os.open(os.path.join(folder, "rgb"), os.O_RDONLY)
    lidar_dir = os.open(os.path.join(folder, "lidar"), os.O_RDONLY)
    try:
        for lo in range(start, stop, CHUNK_SIZE):
            hi = min(stop, lo + CHUNK_SIZE)
            rgba, depth = render_batch(sample_scenes(label, lo, hi, seed, params), params)
            for k, i in enumerate(range(lo, hi)):
                stem = f"{i:0{width}d}"
                _write(rgb_dir, stem + ".png", encode_png(rgba[k]))
                _write(lidar_dir, stem + ".npy", encode_npy(depth[k]))
    finally:
        os.close(rgb_dir)
        os.close(lidar_dir)
    return stop - start


# ----------------------------------------------------------------------------------------------
# The dataset


def _check_target(out_dir: Path, force: bool) -> None:
    """Refuse to overwrite user data unless asked; never replace the working folder or home."""
    if not out_dir.exists():
        if out_dir.is_symlink():
            raise BadInputError(f"{out_dir} is a dangling symlink; remove it or pick another output folder")
        return
    if not out_dir.is_dir():
        raise BadInputError(f"{out_dir} exists and is not a folder; pick another output folder")
    if not any(out_dir.iterdir()):
        return
    if not force:
        raise BadInputError(
            f"{out_dir} already exists and is not empty",
            hint="pass --force to replace it, or pick another output folder",
        )
    resolved = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if resolved == Path.home().resolve() or resolved == cwd or resolved in cwd.parents:
        raise BadInputError(f"refusing to replace {out_dir}: it is the working folder, a parent of it or home")


def stem_width(per_class: int) -> int:
    """Digits in a file stem: 4 like the real set (0000-9998), more when more samples need them."""
    return max(4, len(str(per_class - 1)))


def _default_workers(total: int) -> int:
    if total < MIN_SAMPLES_FOR_POOL:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


SYNTH_RECORD = "synth.json"  # at the dataset root; `prepare` only looks at class folders


def synth_record(per_class: int, seed: int, params: SceneParams, difficulty: str | None) -> dict[str, Any]:
    """What :data:`SYNTH_RECORD` holds: everything needed to render the same set again."""
    return {
        "format": 1,
        "per_class": per_class,
        "seed": seed,
        "difficulty": difficulty,
        "overrides": changed_params(params, difficulty or "easy"),
        "params": params.to_dict(),
    }


def write_dataset(
    out_dir: Path,
    per_class: int = DEFAULT_PER_CLASS,
    seed: int = 0,
    params: SceneParams | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
    workers: int | None = None,
    difficulty: str | None = None,
) -> SynthSummary:
    """Render ``per_class`` cubes and spheres into ``out_dir`` in the NVIDIA DLI layout.

    Writes ``<out>/{cubes,spheres}/rgb/NNNN.png`` (64x64 RGBA), ``.../lidar/NNNN.npy`` ((64, 64)
    float32 depth, 50.0 = no return) and ``.../azimuth.npy``, ``zenith.npy`` ((64,) float32
    radians). Stems have 4 digits (more when ``per_class`` > 10,000). Everything is written into
    a staging folder that replaces ``out_dir`` only when complete. A non-empty ``out_dir`` is
    refused unless ``force``. ``workers`` = processes (default: 1 for small sets, else the
    available cores, at most 8); the files do not depend on it.

    ``difficulty`` names a preset (:data:`DIFFICULTIES`): it gives the params when ``params`` is
    None, and is recorded either way. Any set that is not the plain defaults also gets
    ``<out>/synth.json`` (:func:`synth_record`: preset, overrides, every param), so one can see
    what was rendered; default sets stay byte for byte what they always were.
    """
    out_dir = Path(out_dir)
    if params is None:
        params = difficulty_params(difficulty or "easy")
    elif difficulty is not None and difficulty not in PRESETS:
        raise BadInputError(f"--difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    problems = []
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        problems.append(f"--per-class must be a positive integer, got {per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        problems.append(f"--seed must be a non-negative integer, got {seed!r}")
    if workers is not None and workers < 1:
        problems.append(f"workers must be >= 1, got {workers!r}")
    if problems:
        raise BadInputError(problems)
    _check_target(out_dir, force)

    total = per_class * len(CLASS_NAMES)
    n_workers = workers or _default_workers(total)
    width = stem_width(per_class)
    advance = progress or (lambda *a, **k: None)
    advance(0, total=total)
    az, ze = default_angles()
    started = time.perf_counter()
    with atomic_directory(out_dir) as staging:
        for name in CLASS_NAMES:
            (staging / name / "rgb").mkdir(parents=True)
            (staging / name / "lidar").mkdir(parents=True)
            np.save(staging / name / "azimuth.npy", az)
            np.save(staging / name / "zenith.npy", ze)
        params_file = None
        if params != SceneParams() or difficulty not in (None, "easy"):
            params_file = SYNTH_RECORD
            text = json.dumps(synth_record(per_class, seed, params, difficulty), indent=2, sort_keys=True)
            (staging / SYNTH_RECORD).write_text(text + "\n", encoding="utf-8")
        # tasks: ~ 4 per worker and class keeps both cores busy until the end
        step = max(CHUNK_SIZE, -(-per_class // (4 * n_workers)))
        tasks = [
            (str(staging), label, lo, min(per_class, lo + step), seed, params, width)
            for label in range(len(CLASS_NAMES))
            for lo in range(0, per_class, step)
        ]
        if n_workers == 1:
            for task in tasks:
                advance(_render_chunk(*task))
        else:
            _run_pool(tasks, n_workers, advance)
    seconds = time.perf_counter() - started
    return SynthSummary(
        out_dir=out_dir,
        per_class=per_class,
        seed=seed,
        counts=dict.fromkeys(CLASS_NAMES, per_class),
        seconds=seconds,
        samples_per_s=total / seconds if seconds > 0 else float("inf"),
        workers=n_workers,
        params=params.to_dict(),
        difficulty=difficulty,
        overrides=changed_params(params, difficulty or "easy"),
        params_file=params_file,
    )


def _run_pool(tasks: list[tuple[Any, ...]], n_workers: int, advance: Progress) -> None:
    import multiprocessing

    # fork: workers start in milliseconds and inherit the imported modules; they only run
    # numpy/zlib, so the parent's torch threads do not matter. Elsewhere: the platform default.
    method = "fork" if sys.platform.startswith("linux") else None
    context = multiprocessing.get_context(method)
    pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=context)
    try:
        pending = {pool.submit(_render_chunk, *task) for task in tasks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                advance(future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
