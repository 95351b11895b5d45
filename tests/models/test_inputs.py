"""The input steps (`--lidar-norm`, `--rgb-norm`): what a model computes from the seed's inputs first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fusioncli.config import LIDAR_NORMS, RGB_NORMS, RunConfig, run_id
from fusioncli.data.projection import MAX_RANGE, default_angles, project_xyza, ray_directions
from fusioncli.models import create_model, parameter_counts
from fusioncli.models.inputs import NEAREST_RANK, RGB_STD_FLOOR, RGB_TRANSFORMS, TRANSFORMS, nearest_xyza, standard_rgb
from fusioncli.record import DatasetInfo, RunRecord
from fusioncli.train.checkpoint import load_checkpoint, save_checkpoint


def depth_maps(n: int = 3, seed: int = 0) -> np.ndarray:
    """Depth maps with an object-like patch of returns per sample; sample 0 has no return at all."""
    rng = np.random.default_rng(seed)
    depth = np.full((n, 64, 64), MAX_RANGE)
    for i in range(1, n):
        r, c = rng.integers(5, 40, size=2)
        depth[i, r : r + 20, c : c + 15] = rng.uniform(8.0, 12.0, size=(20, 15))
    return depth


@pytest.mark.numeric
def test_nearest_is_the_returns_relative_to_the_kth_nearest_return_in_metres() -> None:
    depth = depth_maps(5, seed=1)
    depth[3, 50:60, 50:60] = 14.0  # clutter behind the object: the reference stays on the object
    depth[4] = MAX_RANGE
    depth[4, 30, 31], depth[4, 2, 2] = 11.0, 12.0  # two returns only: fewer than NEAREST_RANK
    az, ze = default_angles()
    got = nearest_xyza(project_xyza(torch.from_numpy(depth), az, ze)).numpy()
    points = depth[..., None] * ray_directions(az, ze)
    hit = depth < MAX_RANGE
    for i in range(len(depth)):
        np.testing.assert_array_equal(got[i, 3], hit[i])
        if not hit[i].any():
            assert not got[i].any()
            continue
        returns = points[i][hit[i]]
        ranges = np.sqrt((returns**2).sum(axis=1))
        ref = returns[np.argsort(ranges, kind="stable")[min(NEAREST_RANK, len(ranges)) - 1]]
        want = np.where(hit[i][..., None], points[i] - ref, 0.0).transpose(2, 0, 1)
        scale = np.abs(returns).max()
        # float64: the / 50 and * 50 back and one subtraction per value -> a few ulps of the scale
        np.testing.assert_allclose(got[i, :3], want, rtol=0, atol=8 * np.finfo(np.float64).eps * scale)


def test_the_default_model_is_the_builders_module_and_nearest_feeds_it_the_relative_input() -> None:
    torch.manual_seed(0)
    seed_model = create_model("late", "seed", 2)
    assert not seed_model._forward_pre_hooks  # the seed's model exactly: no input step attached
    relative = create_model("late", "seed", 2, lidar_norm="nearest")
    relative.load_state_dict(seed_model.state_dict())
    assert parameter_counts(relative) == parameter_counts(seed_model)
    rgb = torch.rand(4, 4, 64, 64)
    xyza = project_xyza(torch.from_numpy(depth_maps(4)).float(), *default_angles())
    with torch.no_grad():
        torch.testing.assert_close(relative(rgb, xyza), seed_model(rgb, nearest_xyza(xyza)), rtol=0, atol=0)
        assert not torch.equal(relative(rgb, xyza), seed_model(rgb, xyza))


def test_every_choice_builds() -> None:
    assert set(LIDAR_NORMS) == {"seed", *TRANSFORMS}  # the CLI's choices are the implemented ones
    for name in LIDAR_NORMS:
        model = create_model("lidar-only", "seed", 2, lidar_norm=name)
        assert model(torch.zeros(1, 4, 64, 64), torch.zeros(1, 4, 64, 64)).shape == (1, 2)
    with pytest.raises(ValueError, match="unknown lidar norm"):
        create_model("late", "seed", 2, lidar_norm="bogus")
    assert set(RGB_NORMS) == {"seed", *RGB_TRANSFORMS}
    for name in RGB_NORMS:
        model = create_model("rgb-only", "seed", 2, rgb_norm=name)
        assert model(torch.zeros(1, 4, 64, 64), torch.zeros(1, 4, 64, 64)).shape == (1, 2)
    with pytest.raises(ValueError, match="unknown rgb norm"):
        create_model("late", "seed", 2, rgb_norm="bogus")


@pytest.mark.numeric
def test_standard_rgb_is_each_images_colour_at_mean_0_and_std_1() -> None:
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(4, 4, 16, 16, generator=gen, dtype=torch.float64) * 0.2  # dim, as on hard
    rgb[1, :3, 4:8, 4:8] += 0.5  # an object on one image
    rgb[2] = 0.0  # a missing camera: stays all zeros
    rgb[3, :3] = 0.3  # a flat image: its deviation is below the floor, it stays near 0
    got = standard_rgb(rgb)
    torch.testing.assert_close(got[:, 3], rgb[:, 3], rtol=0, atol=0)  # alpha unchanged
    colour = rgb[:, :3].numpy()
    for i in range(len(rgb)):
        mean, std = colour[i].mean(), colour[i].std()  # population std over all colour values
        want = (colour[i] - mean) / np.sqrt(std**2 + RGB_STD_FLOOR**2)
        # float64: a mean, a variance and one division per value -> a few ulps of the result's scale
        np.testing.assert_allclose(got[i, :3].numpy(), want, rtol=0, atol=64 * np.finfo(np.float64).eps)
    for i in (0, 1):  # real images: mean 0, std 1 up to the floor's share of the variance
        assert abs(float(got[i, :3].mean())) < 1e-12
        assert float(got[i, :3].std(unbiased=False)) == pytest.approx(1.0, abs=RGB_STD_FLOOR**2 / colour[i].var())
    assert not got[2].any() and float(got[3, :3].abs().max()) < 1e-12


def test_standard_rgb_feeds_the_model_and_a_checkpoint_brings_it_back(tmp_path: Path) -> None:
    torch.manual_seed(0)
    seed_model = create_model("late", "seed", 2)
    model = create_model("late", "seed", 2, lidar_norm="nearest", rgb_norm="standard")
    model.load_state_dict(seed_model.state_dict())
    rgb = torch.rand(2, 4, 64, 64) * 0.1
    xyza = project_xyza(torch.from_numpy(depth_maps(2)).float(), *default_angles())
    model.eval(), seed_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(rgb, xyza), seed_model(standard_rgb(rgb), nearest_xyza(xyza)), rtol=0, atol=0)
    record = RunRecord.failed(
        RunConfig(strategy="late", lidar_norm="nearest", rgb_norm="standard").to_dict(), None, "not trained",
        started_at=None, finished_at="2024-01-01T00:00:00+00:00", dataset=DatasetInfo(None, ("cubes", "spheres")),
    )  # fmt: skip
    save_checkpoint(tmp_path / "m.safetensors", model, record)
    loaded, info = load_checkpoint(tmp_path / "m.safetensors")
    assert info.input_norms == {"lidar_norm": "nearest", "rgb_norm": "standard"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(rgb, xyza), model(rgb, xyza), rtol=0, atol=0)


def test_the_option_is_checked_and_enters_the_run_id_only_when_not_the_seeds() -> None:
    from fusioncli.errors import BadInputError

    with pytest.raises(BadInputError, match="--lidar-norm must be one of seed, nearest"):
        RunConfig(lidar_norm="zscore")
    base = RunConfig(device="cpu", precision="fp32")
    explicit = RunConfig(device="cpu", precision="fp32", lidar_norm="seed")
    relative = RunConfig(device="cpu", precision="fp32", lidar_norm="nearest")
    assert run_id(base, "fp") == run_id(explicit, "fp")
    assert run_id(relative, "fp") != run_id(base, "fp")
    with pytest.raises(BadInputError, match="--rgb-norm must be one of seed, standard"):
        RunConfig(rgb_norm="zscore")
    assert run_id(RunConfig(device="cpu", precision="fp32", rgb_norm="seed"), "fp") == run_id(base, "fp")
    standard = RunConfig(device="cpu", precision="fp32", rgb_norm="standard")
    assert run_id(standard, "fp") not in {run_id(base, "fp"), run_id(relative, "fp")}


def test_a_checkpoint_brings_its_input_step_back(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("lidar-only", "seed", 2, lidar_norm="nearest")
    record = RunRecord.failed(
        RunConfig(strategy="lidar-only", lidar_norm="nearest").to_dict(), None, "not trained",
        started_at=None, finished_at="2024-01-01T00:00:00+00:00", dataset=DatasetInfo(None, ("cubes", "spheres")),
    )  # fmt: skip
    save_checkpoint(tmp_path / "m.safetensors", model, record)
    loaded, info = load_checkpoint(tmp_path / "m.safetensors")
    assert info.lidar_norm == "nearest"
    xyza = project_xyza(torch.from_numpy(depth_maps(2)).float(), *default_angles())
    rgb = torch.zeros(2, 4, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(rgb, xyza), model(rgb, xyza), rtol=0, atol=0)


def test_records_written_before_the_option_read_as_the_seeds() -> None:
    old = RunRecord.failed({"strategy": "late"}, None, "x", started_at=None, finished_at="2024-01-01T00:00:00+00:00")
    assert old.lidar_norm == "seed"
    assert old.input_norms == {"lidar_norm": "seed", "rgb_norm": "seed"}


def test_a_sweep_trains_both_inputs_and_the_report_tells_them_apart(cache_dir: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from fusioncli.cli import app

    runner = CliRunner()
    results = tmp_path / "results"
    sweep = runner.invoke(
        app,
        ["sweep", "--strategies", "lidar-only", "--lrs", "1e-3", "--schedulers", "constant", "--epochs", "1",
         "--batch-size", "8", "--lidar-norms", "seed,nearest", "--device", "cpu", "--precision", "fp32",
         "--cache-dir", str(cache_dir), "--results-dir", str(results), "--format", "json"],
    )  # fmt: skip
    assert sweep.exit_code == 0, sweep.output
    records = [json.loads(p.read_text()) for p in sorted((results / "records").glob("*.json"))]
    assert sorted(r["config"]["lidar_norm"] for r in records) == ["nearest", "seed"]
    assert len({r["run_id"] for r in records}) == 2
    report = runner.invoke(app, ["report", "--results-dir", str(results), "--format", "json"])
    assert report.exit_code == 0, report.output
    assert sorted(row["lidar_norm"] for row in json.loads(report.stdout)) == ["nearest", "seed"]
