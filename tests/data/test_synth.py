"""The synthetic renderer: layout, determinism, real ray-cast geometry, safe writes."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fusioncli.data.projection import MAX_RANGE, default_angles, project_xyza, ray_directions
from fusioncli.data.synth import (
    CLASS_NAMES,
    CUBE,
    SPHERE,
    Scene,
    SceneParams,
    encode_npy,
    encode_png,
    render_batch,
    sample_scene,
    sample_scenes,
    scene_uniforms,
    stem_width,
    write_dataset,
)
from fusioncli.errors import BadInputError

IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
PINK = (1.0, 0.6, 0.7)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> tuple[tuple[float, ...], ...]:
    a, b, c = (math.radians(v) for v in (yaw_deg, pitch_deg, roll_deg))
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    ry = np.array([[math.cos(c), 0, math.sin(c)], [0, 1, 0], [-math.sin(c), 0, math.cos(c)]])
    return tuple(tuple(row) for row in (rz @ rx @ ry).tolist())


def _lidar_points(depth: np.ndarray) -> np.ndarray:
    """(K, 3) 3D points of the pixels with a return, through the labs' projection."""
    az, ze = default_angles()
    xyza = project_xyza(torch.from_numpy(depth), az, ze, normalize=False).numpy()
    hit = xyza[3] > 0
    return xyza[:3, hit].T.astype(np.float64)


def _inverse_depth_curvature(depth: np.ndarray) -> np.ndarray:
    """|second difference| of 1/depth along rows and columns, where all three pixels return."""
    inv = 1.0 / depth.astype(np.float64)
    out = []
    for x, hit in ((inv, depth < MAX_RANGE), (inv.T, (depth < MAX_RANGE).T)):
        second = np.abs(x[2:] - 2 * x[1:-1] + x[:-2])
        out.append(second[hit[2:] & hit[1:-1] & hit[:-2]])
    return np.concatenate(out)


def _camera_pixel(params: SceneParams, point: tuple[float, ...]) -> tuple[float, float]:
    """(row, col) where ``point`` appears, by an independent pinhole model of the camera."""
    eye = np.array(params.camera_position)
    forward = np.array(params.camera_target) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rel = np.array(point) - eye
    tan = math.tan(math.radians(params.camera_fov_deg) / 2)
    col = (rel @ right) / (rel @ forward) / tan * 32 + 32 - 0.5
    row = (rel @ down) / (rel @ forward) / tan * 32 + 32 - 0.5
    return float(row), float(col)


def _plane_rms(points: np.ndarray) -> float:
    """RMS distance of points from their best-fit plane."""
    centred = points - points.mean(axis=0)
    return float(np.linalg.svd(centred, compute_uv=False)[-1] / math.sqrt(len(points)))


# -- layout -----------------------------------------------------------------------------------


def test_layout_dtypes_shapes_and_angles(raw_dir: Path) -> None:
    az, ze = default_angles()
    assert sorted(p.name for p in raw_dir.iterdir()) == ["cubes", "spheres"]
    for name in CLASS_NAMES:
        folder = raw_dir / name
        assert sorted(p.name for p in folder.iterdir()) == ["azimuth.npy", "lidar", "rgb", "zenith.npy"]
        stems = [f"{i:04d}" for i in range(48)]
        assert sorted(p.name for p in (folder / "rgb").iterdir()) == [s + ".png" for s in stems]
        assert sorted(p.name for p in (folder / "lidar").iterdir()) == [s + ".npy" for s in stems]
        for file, expected in (("azimuth.npy", az), ("zenith.npy", ze)):
            arr = np.load(folder / file, allow_pickle=False)
            assert arr.dtype == np.float32 and arr.shape == (64,)
            assert np.array_equal(arr, expected)
        with Image.open(folder / "rgb" / "0007.png") as img:
            assert img.format == "PNG" and img.mode == "RGBA" and img.size == (64, 64)
            rgba = np.asarray(img)
        assert rgba.dtype == np.uint8 and np.all(rgba[..., 3] == 255)
        depth = np.load(folder / "lidar" / "0007.npy", allow_pickle=False)
        assert depth.dtype == np.float32 and depth.shape == (64, 64)
        assert depth.max() == MAX_RANGE and 0 < depth.min() < MAX_RANGE


def test_every_sample_shows_the_object_to_both_sensors(raw_dir: Path) -> None:
    lidar_px, rgb_px = {}, {}
    for name in CLASS_NAMES:
        for i in range(48):
            rgba = np.asarray(Image.open(raw_dir / name / "rgb" / f"{i:04d}.png"))
            depth = np.load(raw_dir / name / "lidar" / f"{i:04d}.npy", allow_pickle=False)
            lit = rgba[..., :3].max(axis=-1) > 0
            ret = depth < MAX_RANGE
            # camera: a small object (~8-15 px across); LiDAR: larger (~15-25 px across)
            assert 30 <= lit.sum() <= 600, (name, i, lit.sum())
            assert 80 <= ret.sum() <= 1200, (name, i, ret.sum())
            assert ret.sum() > lit.sum(), (name, i)
            # nothing cut off by the borders: the whole object is in view
            for mask in (lit, ret):
                assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
            # reddish/pink objects, like the real renders
            colours = rgba[lit][:, :3].astype(int)
            assert colours[:, 0].mean() >= colours[:, 1].mean() and colours[:, 0].mean() >= colours[:, 2].mean()
            lidar_px.setdefault(name, []).append(int(ret.sum()))
            rgb_px.setdefault(name, []).append(int(lit.sum()))
    # the classes differ by shape, not by size: a pixel count alone must not tell them apart
    for counts in (lidar_px, rgb_px):
        cubes, spheres = np.mean(counts["cubes"]), np.mean(counts["spheres"])
        assert abs(cubes - spheres) / (cubes + spheres) < 0.15, counts
        assert max(counts["cubes"]) > min(counts["spheres"]) and max(counts["spheres"]) > min(counts["cubes"])


def test_stem_width_grows_past_ten_thousand() -> None:
    assert stem_width(1) == 4 and stem_width(9_999) == 4 and stem_width(10_000) == 4
    assert stem_width(10_001) == 5 and stem_width(123_456) == 6


def test_encoders_match_numpy_and_pillow() -> None:
    depth = np.random.default_rng(0).uniform(1, 50, (64, 64)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, depth)
    assert encode_npy(depth) == buf.getvalue()
    rgba = np.random.default_rng(1).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    with Image.open(io.BytesIO(encode_png(rgba))) as img:
        assert img.mode == "RGBA"
        assert np.array_equal(np.asarray(img), rgba)


# -- determinism ------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = _files(write_dataset(tmp_path / "a", per_class=5, seed=3).out_dir)
    b = _files(write_dataset(tmp_path / "b", per_class=5, seed=3).out_dir)
    assert a == b and len(a) == 2 * (2 * 5 + 2)
    c = _files(write_dataset(tmp_path / "c", per_class=5, seed=4).out_dir)
    assert a.keys() == c.keys()
    differ = [k for k in a if a[k] != c[k]]
    assert len(differ) == 2 * 2 * 5  # every sample file, none of the angle files


def test_a_sample_does_not_depend_on_n_batching_or_workers(tmp_path: Path) -> None:
    full = _files(write_dataset(tmp_path / "five", per_class=5, seed=7).out_dir)
    short = _files(write_dataset(tmp_path / "three", per_class=3, seed=7).out_dir)
    assert all(full[k] == v for k, v in short.items())
    pooled = _files(write_dataset(tmp_path / "pool", per_class=5, seed=7, workers=2).out_dir)
    assert pooled == full
    scenes = sample_scenes(CUBE, 0, 6, seed=7)
    rgba, depth = render_batch(scenes)
    for i in (0, 5):
        assert scenes[i] == sample_scene(CUBE, i, seed=7)
        one_rgba, one_depth = render_batch([scenes[i]])
        assert np.array_equal(one_rgba[0], rgba[i]) and np.array_equal(one_depth[0], depth[i])


def test_uniform_streams_are_independent_per_sample_and_class() -> None:
    u = scene_uniforms(0, np.arange(20_000), seed=0)
    assert u.shape[0] == 20_000 and 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03
    assert not np.array_equal(u[:5], scene_uniforms(1, np.arange(5), seed=0))
    assert not np.array_equal(u[:5], scene_uniforms(0, np.arange(5), seed=1))
    assert np.array_equal(u[7:9], scene_uniforms(0, np.array([7, 8]), seed=0))


def test_windowed_casting_equals_casting_every_ray() -> None:
    # mixed batch, both classes: the per-sample window only skips rays that cannot hit
    scenes = [s for i in range(6) for s in (sample_scene(CUBE, i, 11), sample_scene(SPHERE, i, 11))]
    rgba, depth = render_batch(scenes)
    full_rgba, full_depth = render_batch(scenes, full=True)
    assert np.array_equal(rgba, full_rgba) and np.array_equal(depth, full_depth)


# -- geometry ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("row", "col", "distance", "radius"), [(32, 32, 10.0, 1.0), (12, 47, 9.0, 0.8)])
def test_sphere_depth_is_distance_minus_radius_on_the_centre_ray(
    row: int, col: int, distance: float, radius: float
) -> None:
    az, ze = default_angles()
    direction = ray_directions(az, ze)[row, col]
    centre = tuple(float(c) for c in distance * direction)
    scene = Scene(label=SPHERE, centre=centre, rotation=IDENTITY, size=2 * radius, colour=PINK)
    _, depth = render_batch([scene])
    assert depth[0, row, col] == pytest.approx(distance - radius, abs=1e-4)
    assert depth[0, row, col] == depth[0].min()
    # every return lies on the sphere, every ray within its angular radius returns
    points = _lidar_points(depth[0])
    assert np.allclose(np.linalg.norm(points - np.array(centre), axis=1), radius, atol=2e-3)
    angle = np.arccos(np.clip(ray_directions(az, ze) @ direction, -1, 1))
    inside = angle < math.asin(radius / distance) - 1e-3
    outside = angle > math.asin(radius / distance) + 1e-3
    assert np.all(depth[0][inside] < MAX_RANGE) and np.all(depth[0][outside] == MAX_RANGE)
    # and it is round: no plane fits its points, its depth map is curved everywhere
    assert _plane_rms(points) > 0.05
    assert np.median(_inverse_depth_curvature(depth[0])) > 5e-5


def test_cube_depth_map_shows_planar_faces() -> None:
    centre = (1.0, 9.0, -0.5)
    rotation = _rotation(35.0, 25.0, 10.0)
    edge = 1.6
    scene = Scene(label=CUBE, centre=centre, rotation=rotation, size=edge, colour=PINK)
    _, depth = render_batch([scene])
    points = _lidar_points(depth[0])
    local = (points - np.array(centre)) @ np.array(rotation)  # world -> cube frame
    # every return lies on the cube's surface: its largest local coordinate is the half edge
    assert np.allclose(np.abs(local).max(axis=1), edge / 2, atol=2e-3)
    # the returns split into 2-3 visible faces, each of them a plane
    axis = np.abs(local).argmax(axis=1)
    face = axis * 2 + (np.take_along_axis(local, axis[:, None], 1)[:, 0] > 0)
    faces = [points[face == f] for f in np.unique(face)]
    # first hits only: every return is on a face turned towards the LiDAR at the origin
    sign = np.where(np.take_along_axis(local, axis[:, None], 1)[:, 0] > 0, 1.0, -1.0)
    outward = np.array(rotation).T[axis] * sign[:, None]
    assert np.all((outward * points).sum(axis=1) < 0)
    assert 2 <= len(faces) <= 3
    for pts in faces:
        if len(pts) >= 10:
            assert _plane_rms(pts) < 1e-3
    assert _plane_rms(points) > 0.02  # ... but not all one plane
    # in the depth map itself: 1/depth along the rays to a plane is (nearly) linear in the
    # angles, so its second difference is ~0 on a face and spikes on the edges between faces
    curvature = _inverse_depth_curvature(depth[0])
    assert np.median(curvature) < 3e-5 and curvature.max() > 100 * np.median(curvature)
    assert (curvature > 20 * np.median(curvature)).sum() >= 10  # an edge, not one odd pixel


def test_sampled_scenes_are_ray_cast_consistently() -> None:
    for label in (CUBE, SPHERE):
        scenes = sample_scenes(label, 0, 8, seed=5)
        _, depth = render_batch(scenes)
        for scene, dmap in zip(scenes, depth):
            points = _lidar_points(dmap)
            rel = points - np.array(scene.centre)
            if label == SPHERE:
                assert np.allclose(np.linalg.norm(rel, axis=1), scene.size / 2, atol=2e-3)
            else:
                local = rel @ np.array(scene.rotation)
                assert np.allclose(np.abs(local).max(axis=1), scene.size / 2, atol=2e-3)


def test_camera_sees_the_same_scene_from_its_own_viewpoint() -> None:
    params = SceneParams()
    centre = (0.8, 10.5, 0.4)
    scene = Scene(label=SPHERE, centre=centre, rotation=IDENTITY, size=1.6, colour=PINK)
    rgba, depth = render_batch([scene], params)
    row, col = _camera_pixel(params, centre)
    lit = rgba[0, ..., :3].max(axis=-1) > 0
    rows, cols = np.nonzero(lit)
    assert abs(rows.mean() - row) < 1.0 and abs(cols.mean() - col) < 1.0
    # the camera is farther away than the LiDAR: the object looks smaller
    assert lit.sum() < (depth[0] < MAX_RANGE).sum()
    # lit by a directional light: shading varies across the sphere, the background stays black
    intensity = rgba[0, ..., :3].astype(int).sum(axis=-1)
    assert intensity[lit].max() - intensity[lit].min() > 150
    assert np.all(rgba[0, ~lit, :3] == 0)


# -- writing safely ---------------------------------------------------------------------------


def test_refuses_a_non_empty_folder_and_replaces_it_with_force(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    with pytest.raises(BadInputError) as info:
        write_dataset(out, per_class=2)
    assert str(out) in info.value.problems[0] and "--force" in (info.value.hint or "")
    assert (out / "mine.txt").read_text() == "precious"
    summary = write_dataset(out, per_class=2, force=True)
    assert summary.counts == {"cubes": 2, "spheres": 2} and summary.out_dir == out
    assert not (out / "mine.txt").exists() and (out / "spheres" / "rgb" / "0001.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging left behind


def test_an_empty_folder_is_fine_and_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert write_dataset(tmp_path / "empty", per_class=1).counts == {"cubes": 1, "spheres": 1}
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInputError, match="not a folder"):
        write_dataset(tmp_path / "file", per_class=1, force=True)


def test_force_never_replaces_the_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "keep.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInputError, match="working folder"):
        write_dataset(Path("."), per_class=1, force=True)
    assert (tmp_path / "keep.txt").exists()


def test_an_interrupted_run_leaves_the_old_data_untouched(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "old.txt").write_text("old")
    calls = []

    def progress(n: int = 1, total: int | None = None) -> None:
        calls.append(n)
        if len(calls) == 2:  # after the first class
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dataset(out, per_class=3, force=True, progress=progress)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_progress_reports_the_total_then_every_sample(tmp_path: Path) -> None:
    seen: list[tuple[int, int | None]] = []
    summary = write_dataset(tmp_path / "d", per_class=4, progress=lambda n=1, total=None: seen.append((n, total)))
    assert seen[0] == (0, 8) and sum(n for n, _ in seen) == 8
    assert summary.total == 8 and summary.samples_per_s > 0 and summary.seed == 0
    assert summary.to_dict()["out_dir"] == str(tmp_path / "d")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"per_class": 0}, "--per-class"),
        ({"per_class": 2, "seed": -1}, "--seed"),
        ({"per_class": 2, "workers": 0}, "workers"),
    ],
)
def test_bad_arguments_are_bad_input(tmp_path: Path, kwargs: dict, fragment: str) -> None:
    with pytest.raises(BadInputError, match=fragment):
        write_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_scene_params_are_validated_and_frozen() -> None:
    with pytest.raises(BadInputError, match="size_range"):
        SceneParams(size_range=(2.0, 1.0))
    with pytest.raises(BadInputError, match="supersample"):
        SceneParams(supersample=0)
    params = SceneParams()
    with pytest.raises(AttributeError):
        params.ambient = 0.5  # type: ignore[misc]
    assert SceneParams(supersample=1).to_dict()["supersample"] == 1


def test_scene_params_change_what_is_rendered() -> None:
    scene = sample_scene(SPHERE, 0, seed=0)
    base_rgba, base_depth = render_batch([scene])
    dark_rgba, dark_depth = render_batch([scene], SceneParams(ambient=0.0, specular=0.0))
    assert np.array_equal(base_depth, dark_depth)
    assert dark_rgba[..., :3].astype(int).sum() < base_rgba[..., :3].astype(int).sum()
    aliased, _ = render_batch([scene], SceneParams(supersample=1))
    assert not np.array_equal(aliased, base_rgba)
    lit, lit_aliased = (int((x[0, ..., :3].max(axis=-1) > 0).sum()) for x in (base_rgba, aliased))
    assert abs(lit - lit_aliased) < 0.2 * lit


def test_cube_faces_are_shaded_by_their_normal() -> None:
    # an axis-aligned cube seen from above-left-behind: the camera sees its top (+z), -x and
    # -y faces; with no highlight each face's inner pixels have exactly the Lambert shade
    params = SceneParams(specular=0.0)
    half = 0.9
    centre = (0.0, 10.0, 0.0)
    colour = (0.9, 0.5, 0.6)
    scene = Scene(label=CUBE, centre=centre, rotation=IDENTITY, size=2 * half, colour=colour)
    rgba, _ = render_batch([scene], params)
    light = np.array(params.light_direction) / np.linalg.norm(params.light_direction)
    for normal in ((0.0, 0.0, 1.0), (-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)):
        face_centre = tuple(c + half * n for c, n in zip(centre, normal))
        row, col = (round(v) for v in _camera_pixel(params, face_centre))
        shade = params.ambient + (1 - params.ambient) * max(0.0, float(np.dot(normal, light)))
        expected = [math.floor(255 * math.sqrt(min(c * shade, 1.0)) + 0.5) for c in colour]
        assert np.abs(rgba[0, row, col, :3].astype(int) - expected).max() <= 1, normal


def test_default_output_is_byte_for_byte_what_it_was_before_the_difficulty_knobs(tmp_path: Path) -> None:
    # sha256 over (relative path, bytes) of every file, in sorted order, as rendered by the
    # renderer before SceneParams had any difficulty knob (same machine type: x86_64, numpy 2.4).
    # New knobs must default to "off" and leave this digest alone.
    import hashlib

    root = write_dataset(tmp_path / "d", per_class=6, seed=0).out_dir
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    assert digest.hexdigest() == "9acf4ad7f6020ac36f3aa41c69120605f98b7a9f3feda13a156cb3c76def50aa"
