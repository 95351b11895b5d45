"""The synth difficulty knobs and presets: each knob moves the output the way it says, and only
that way; sampling stays a function of (seed, label, index); presets and bad values."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fusioncli.data.layout import discover
from fusioncli.data.projection import MAX_RANGE, default_angles, project_xyza
from fusioncli.data.synth import (
    BOX,
    CUBE,
    DIFFICULTIES,
    ELLIPSOID,
    LIDAR,
    PRESETS,
    RGB,
    SPHERE,
    SYNTH_RECORD,
    Clutter,
    Scene,
    SceneParams,
    changed_params,
    difficulty_params,
    render_batch,
    sample_scene,
    sample_scenes,
    write_dataset,
)
from fusioncli.errors import BadInputError

IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
PINK = (1.0, 0.6, 0.7)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mixed(n: int, seed: int = 3, params: SceneParams | None = None) -> list[Scene]:
    return sample_scenes(CUBE, 0, n, seed, params) + sample_scenes(SPHERE, 0, n, seed, params)


def _render(scenes: list[Scene], **knobs: object) -> tuple[np.ndarray, np.ndarray]:
    return render_batch(scenes, SceneParams(**knobs))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def clean() -> tuple[list[Scene], np.ndarray, np.ndarray]:
    scenes = _mixed(8)
    rgba, depth = render_batch(scenes)
    return scenes, rgba, depth


# -- each knob, alone -------------------------------------------------------------------------


def test_depth_noise_perturbs_returns_but_not_misses_or_the_image(clean) -> None:
    scenes, rgba, depth = clean
    noisy_rgba, noisy = _render(scenes, depth_noise=0.05)
    hit = depth < MAX_RANGE
    assert np.array_equal(noisy_rgba, rgba)
    assert np.array_equal(noisy < MAX_RANGE, hit)  # a return stays a return, a miss a miss
    diff = (noisy - depth)[hit]
    assert np.count_nonzero(diff) > 0.99 * diff.size
    assert diff.std() == pytest.approx(0.05, rel=0.1) and abs(diff.mean()) < 0.01


def test_beam_dropout_loses_that_fraction_of_returns_and_keeps_the_rest(clean) -> None:
    scenes, rgba, depth = clean
    dropped_rgba, dropped = _render(scenes, beam_dropout=0.3)
    hit = depth < MAX_RANGE
    lost = hit & (dropped == MAX_RANGE)
    assert np.array_equal(dropped_rgba, rgba)
    assert lost.sum() / hit.sum() == pytest.approx(0.3, abs=0.03)  # ~4,000 returns: SE ~0.007
    kept = hit & ~lost
    assert np.array_equal(dropped[kept], depth[kept])
    assert np.all(dropped[~hit] == MAX_RANGE)


def test_low_light_darkens_every_pixel_and_leaves_the_lidar_alone(clean) -> None:
    scenes, rgba, depth = clean
    dark_rgba, dark_depth = _render(scenes, exposure=0.3)
    assert np.array_equal(dark_depth, depth)
    rgb, dark = rgba[..., :3].astype(int), dark_rgba[..., :3].astype(int)
    assert np.all(dark <= rgb) and np.all(dark_rgba[..., 3] == 255)
    lit = rgb.max(axis=-1) > 0
    # gamma 2: light x 0.3 reads as ~x sqrt(0.3) = 0.55 once the highlight is small
    assert 0.45 < dark[lit].mean() / rgb[lit].mean() < 0.65
    bright_rgba, _ = _render(scenes, exposure=2.0)
    assert bright_rgba[..., :3].astype(int).sum() > rgb.sum()


def test_rgb_noise_has_the_asked_spread_and_leaves_the_lidar_alone(clean) -> None:
    scenes, rgba, depth = clean
    noisy_rgba, noisy_depth = _render(scenes, rgb_noise=0.04)
    assert np.array_equal(noisy_depth, depth) and np.all(noisy_rgba[..., 3] == 255)
    rgb = rgba[..., :3].astype(float)
    mid = (rgb > 40) & (rgb < 215)  # away from clipping at 0 and 255
    diff = noisy_rgba[..., :3].astype(float)[mid] - rgb[mid]
    assert diff.std() == pytest.approx(0.04 * 255, rel=0.15)
    assert (noisy_rgba[..., :3][rgba[..., :3] == 0] > 0).mean() > 0.3  # the black background too


def test_clutter_adds_returns_and_shapes_but_never_hides_the_object(clean) -> None:
    scenes, rgba, depth = clean
    # the same scenes, each with the three distractors its sample draws at clutter=3
    with_clutter = _mixed(8, params=SceneParams(clutter=3))
    cluttered = [dataclasses.replace(sc, clutter=c.clutter) for sc, c in zip(scenes, with_clutter)]
    c_rgba, c_depth = render_batch(cluttered)
    hit = depth < MAX_RANGE
    assert np.array_equal(c_depth[hit], depth[hit])  # behind the object for the LiDAR...
    extra = (c_depth < MAX_RANGE) & ~hit
    assert extra.sum() > 0.08 * hit.sum() and extra.any(axis=(1, 2)).mean() > 0.8
    lit, c_lit = (x[..., :3].max(axis=-1) > 0 for x in (rgba, c_rgba))
    # ...and for the camera: every object pixel still shows the object (edges may blend)
    assert np.all(c_lit[lit]) and c_lit.sum() > lit.sum()
    inner = lit.copy()
    inner[:, 1:-1, 1:-1] &= lit[:, :-2, 1:-1] & lit[:, 2:, 1:-1] & lit[:, 1:-1, :-2] & lit[:, 1:-1, 2:]
    assert np.array_equal(c_rgba[inner], rgba[inner])
    for sc in cluttered:
        assert len(sc.clutter) == 3
        for item in sc.clutter:
            assert item.kind in (BOX, ELLIPSOID)
            assert max(item.half_extents) >= 2 * min(item.half_extents)  # elongated: not a cube/sphere


def test_clutter_shapes_are_ray_cast_on_their_surfaces() -> None:
    az, ze = default_angles()
    rotation = tuple(tuple(r) for r in np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0].tolist())
    centre = (0.5, 14.0, -0.5)
    half = (1.2, 0.4, 0.3)
    far = Scene(label=SPHERE, centre=(-2.0, 9.0, 2.0), rotation=IDENTITY, size=0.8, colour=PINK)
    for kind in (BOX, ELLIPSOID):
        item = Clutter(kind, centre, rotation, half, PINK)
        _, depth = render_batch([dataclasses.replace(far, clutter=(item,))])
        xyza = project_xyza(torch.from_numpy(depth[0]), az, ze, normalize=False).numpy()
        points = xyza[:3, xyza[3] > 0].T.astype(np.float64)
        local = (points - np.array(centre)) @ np.array(rotation) / np.array(half)  # unit-shape frame
        on_shape = local[np.abs(np.linalg.norm(points - np.array(centre), axis=1)) < 2]
        assert len(on_shape) > 30
        if kind == BOX:
            assert np.allclose(np.abs(on_shape).max(axis=1), 1, atol=5e-3)
        else:
            assert np.allclose(np.linalg.norm(on_shape, axis=1), 1, atol=5e-3)


def test_windowed_casting_equals_casting_every_ray_with_clutter() -> None:
    scenes = _mixed(4, params=difficulty_params("hard"))
    params = difficulty_params("hard")
    a = render_batch(scenes, params)
    b = render_batch(scenes, params, full=True)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# -- complementary corruption ------------------------------------------------------------------


def test_corruption_takes_out_exactly_one_modality(clean) -> None:
    scenes, rgba, depth = clean
    params = SceneParams(corruption=1.0)
    failing = _mixed(8, params=params)
    assert {sc.corrupt for sc in failing} == {RGB, LIDAR}
    f_rgba, f_depth = render_batch(failing, params)
    for k, sc in enumerate(failing):
        if sc.corrupt == RGB:
            assert np.array_equal(f_depth[k], depth[k]) and not np.array_equal(f_rgba[k], rgba[k])
            frame = f_rgba[k, ..., :3].astype(float)  # a dark, flat frame: no object in it
            assert frame.mean() < 0.15 * 255 and frame.std() < 0.05 * 255
        else:
            assert np.array_equal(f_rgba[k], rgba[k]) and not np.array_equal(f_depth[k], depth[k])
            returns = f_depth[k] < MAX_RANGE
            assert returns.mean() < 0.03 and not np.array_equal(returns, depth[k] < MAX_RANGE)


@pytest.mark.parametrize("modality", [RGB, LIDAR])
def test_a_failed_modality_carries_nothing_of_the_scene(modality: str) -> None:
    # a cube and a sphere elsewhere, same sample key: the failed sensor gives the same bytes
    cube = Scene(CUBE, (1.0, 9.0, 0.0), IDENTITY, 1.2, PINK, key=(0, 0, 5), corrupt=modality)
    sphere = Scene(SPHERE, (-1.0, 11.0, 1.0), IDENTITY, 1.6, (0.9, 0.4, 0.5), key=(0, 0, 5), corrupt=modality)
    rgba, depth = render_batch([cube, sphere], SceneParams(depth_noise=0.05, rgb_noise=0.02))
    failed = rgba[..., :3] if modality == RGB else depth
    intact = depth if modality == RGB else rgba[..., :3]
    assert np.array_equal(failed[0], failed[1])
    assert not np.array_equal(intact[0], intact[1])


def test_corruption_rate_and_split_do_not_depend_on_the_class() -> None:
    params = SceneParams(corruption=0.6)
    for label in (CUBE, SPHERE):
        kinds = np.array([sc.corrupt or "" for sc in sample_scenes(label, 0, 4000, 1, params)])
        failed = kinds != ""
        assert failed.mean() == pytest.approx(0.6, abs=0.025)
        assert (kinds[failed] == RGB).mean() == pytest.approx(0.5, abs=0.03)
    assert all(sc.corrupt is None for sc in sample_scenes(CUBE, 0, 500, 1))


# -- determinism ------------------------------------------------------------------------------


def test_hard_samples_do_not_depend_on_n_batching_or_workers(tmp_path: Path) -> None:
    full = _files(write_dataset(tmp_path / "five", per_class=5, seed=7, difficulty="hard").out_dir)
    short = _files(write_dataset(tmp_path / "three", per_class=3, seed=7, difficulty="hard").out_dir)
    assert all(full[k] == v for k, v in short.items() if k != SYNTH_RECORD)
    pooled = _files(write_dataset(tmp_path / "pool", per_class=5, seed=7, difficulty="hard", workers=2).out_dir)
    assert pooled == full
    again = _files(write_dataset(tmp_path / "again", per_class=5, seed=7, difficulty="hard").out_dir)
    assert again == full
    other = _files(write_dataset(tmp_path / "other", per_class=5, seed=8, difficulty="hard").out_dir)
    assert sum(other[k] != v for k, v in full.items()) >= 2 * 2 * 5
    params = difficulty_params("hard")
    scenes = sample_scenes(SPHERE, 0, 6, 7, params)
    rgba, depth = render_batch(scenes, params)
    for i in (0, 4):
        assert scenes[i] == sample_scene(SPHERE, i, 7, params)
        one_rgba, one_depth = render_batch([scenes[i]], params)
        assert np.array_equal(one_rgba[0], rgba[i]) and np.array_equal(one_depth[0], depth[i])


def test_one_knob_does_not_change_another_knobs_draws(clean) -> None:
    scenes, _, depth = clean
    _, noisy = _render(scenes, depth_noise=0.05)
    _, both = _render(scenes, depth_noise=0.05, beam_dropout=0.3)
    kept = both < MAX_RANGE
    assert np.array_equal(both[kept], noisy[kept])


# -- presets, records, validation ----------------------------------------------------------------


def test_easy_is_the_defaults_and_writes_no_record(tmp_path: Path) -> None:
    assert difficulty_params("easy") == SceneParams() and PRESETS["easy"] == {}
    plain = _files(write_dataset(tmp_path / "plain", per_class=2, seed=1).out_dir)
    easy = write_dataset(tmp_path / "easy", per_class=2, seed=1, difficulty="easy")
    assert _files(easy.out_dir) == plain and SYNTH_RECORD not in plain
    assert easy.difficulty == "easy" and easy.overrides == {} and easy.params_file is None


def test_presets_get_harder_knob_by_knob() -> None:
    easy, medium, hard = (difficulty_params(d) for d in DIFFICULTIES)
    for lower, higher in ((easy, medium), (medium, hard)):
        assert lower != higher
        for name in ("depth_noise", "beam_dropout", "rgb_noise", "clutter", "corruption"):
            assert getattr(lower, name) <= getattr(higher, name), name
        assert lower.exposure >= higher.exposure
        assert lower.size_range[1] >= higher.size_range[1] and lower.distance_range[0] <= higher.distance_range[0]
    assert hard.corruption >= 0.5  # fusion can then beat any single sensor by up to p/4 = 12.5+ points


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_every_preset_keeps_the_object_in_both_views(difficulty: str) -> None:
    # the geometry alone (no noise, no failures): the camera and the LiDAR both see the object
    params = dataclasses.replace(
        difficulty_params(difficulty), depth_noise=0.0, beam_dropout=0.0, rgb_noise=0.0, corruption=0.0, clutter=0
    )
    rgba, depth = render_batch(_mixed(100, seed=11, params=params), params)
    assert (rgba[..., :3].max(axis=-1) > 0).sum(axis=(1, 2)).min() >= 10
    assert (depth < MAX_RANGE).sum(axis=(1, 2)).min() >= 20


def test_knob_flags_override_the_preset() -> None:
    params = difficulty_params("hard", clutter=0, corruption=None, size_range=(0.6, 0.9))
    hard = difficulty_params("hard")
    assert params.clutter == 0 and params.corruption == hard.corruption and params.size_range == (0.6, 0.9)
    assert changed_params(params, "hard") == {"clutter": 0, "size_range": [0.6, 0.9]}


def test_the_record_says_what_was_rendered_and_prepare_ignores_it(tmp_path: Path) -> None:
    params = difficulty_params("medium", clutter=0)
    summary = write_dataset(tmp_path / "d", per_class=3, seed=2, params=params, difficulty="medium")
    record = json.loads((tmp_path / "d" / SYNTH_RECORD).read_text())
    assert record["difficulty"] == "medium" and record["seed"] == 2 and record["per_class"] == 3
    assert record["overrides"] == {"clutter": 0} == summary.overrides
    assert SceneParams(**record["params"]) == params
    assert summary.to_dict()["difficulty"] == "medium" and summary.params_file == SYNTH_RECORD
    layout = discover(tmp_path / "d")  # a file at the root is neither a class nor a problem
    assert layout.class_names == ("cubes", "spheres") and layout.n_samples == 6
    assert not layout.problems and not layout.orphans and not layout.notes


@pytest.mark.parametrize(
    ("knobs", "flag"),
    [
        ({"depth_noise": -0.1}, "--depth-noise"),
        ({"depth_noise": math.nan}, "--depth-noise"),
        ({"beam_dropout": 1.0}, "--beam-dropout"),
        ({"exposure": 0.0}, "--exposure"),
        ({"rgb_noise": 1.5}, "--rgb-noise"),
        ({"clutter": 9}, "--clutter"),
        ({"clutter": 1.5}, "--clutter"),
        ({"corruption": -0.5}, "--corruption"),
        ({"corruption": True}, "--corruption"),
        ({"size_range": (1.0, 0.5)}, "--size-range"),
        ({"distance_range": (1.0, 2.0)}, "--distance-range"),
        ({"distance_range": (10.0, 45.0)}, "--distance-range"),
    ],
)
def test_bad_knob_values_name_their_flag(knobs: dict, flag: str) -> None:
    with pytest.raises(BadInputError) as info:
        SceneParams(**knobs)
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith(flag)


def test_bad_difficulty_and_unknown_knobs() -> None:
    with pytest.raises(BadInputError, match="--difficulty must be one of easy, medium, hard"):
        difficulty_params("extreme")
    with pytest.raises(BadInputError, match="unknown scene parameter"):
        difficulty_params("hard", fog=0.5)
    with pytest.raises(BadInputError, match="--difficulty"):
        write_dataset(Path("never-written"), per_class=1, params=SceneParams(), difficulty="extreme")
    assert not Path("never-written").exists()
