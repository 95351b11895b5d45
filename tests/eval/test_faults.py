"""The sensor-fault suite: the contract every fault keeps, and what each one physically does.

Contract (every registered fault): severity 0 is the identity; a fault changes only the inputs
it declares (and a single-sensor model's predictions do not move under the other sensor's
faults); the same seed gives the same faulty batch; damage grows with severity.
"""

from __future__ import annotations

import math

import pytest
import torch

from fusioncli.data.dataset import PreparedData
from fusioncli.data.projection import MAX_RANGE
from fusioncli.eval import faults
from fusioncli.eval.corruptions import CORRUPTIONS, corruption_names, get_corruption
from fusioncli.eval.faults import (
    BEAM_LOSS_MAX,
    CROSSTALK_MAX,
    FOG_BACKSCATTER_RANGE_M,
    FOV_LOSS_MAX,
    fault_names,
    fault_table,
)
from fusioncli.models import create_model
from fusioncli.train.engine import batch_inputs

pytestmark = pytest.mark.numeric

ALL = tuple(CORRUPTIONS)
SEVERITIES = (0.25, 0.5, 0.75, 1.0)
LIDAR_FAULTS = ("lidar_noise", "lidar_dropout", "beam_loss", "fov_loss", "fog", "crosstalk")
CAMERA_FAULTS = ("rgb_noise", "occlusion", "brightness", "darkness", "motion_blur")
BOTH_FAULTS = ("misalignment", "desync", "stuck_sensor")
DRAWLESS = ("brightness",)  # a deterministic fault: the seed cannot matter
U32 = 2.0**-24


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def batch(prepared: PreparedData) -> tuple[torch.Tensor, torch.Tensor]:
    """A real model-ready batch: rendered objects, so LiDAR has returns and no-returns."""
    rgb, xyza = batch_inputs(prepared, torch.arange(24))
    return rgb, xyza


def damage(before: tuple[torch.Tensor, torch.Tensor], after: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Mean absolute change over both inputs."""
    return float((after[0] - before[0]).abs().mean() + (after[1] - before[1]).abs().mean())


def test_the_suite_is_registered_with_its_modalities() -> None:
    assert fault_names() == corruption_names("curve")
    assert set(fault_names()) == {*LIDAR_FAULTS, *CAMERA_FAULTS, *BOTH_FAULTS}
    assert set(fault_names("lidar")) == set(LIDAR_FAULTS)
    assert set(fault_names("rgb")) == set(CAMERA_FAULTS)
    assert set(fault_names("both")) == set(BOTH_FAULTS)
    assert corruption_names("missing") == ("rgb_missing", "lidar_missing")
    for row in fault_table():
        assert row["description"] and row["physical"], row["name"]
        levels = [s["severity"] for s in row["severities"]]
        assert levels == ([1.0] if row["kind"] == "missing" else list(SEVERITIES))
        assert all(s["parameter"] for s in row["severities"])


@pytest.mark.parametrize("name", ALL)
def test_severity_zero_is_the_identity(name: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    rgb, xyza = batch
    out = get_corruption(name).apply(rgb, xyza, 0.0, gen())
    assert out[0] is rgb and out[1] is xyza


@pytest.mark.parametrize("name", ALL)
def test_changes_only_the_inputs_it_declares_and_keeps_its_arguments(
    name: str, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    rgb, xyza = batch
    keep = rgb.clone(), xyza.clone()
    fault = get_corruption(name)
    out = fault.apply(rgb, xyza, 0.75, gen())
    for i, which in enumerate(("rgb", "lidar")):
        assert out[i].shape == batch[i].shape and out[i].dtype == batch[i].dtype
        if which not in fault.inputs_changed:
            assert torch.equal(out[i], batch[i]), which
    assert any(not torch.equal(out[i], batch[i]) for i in range(2))
    assert torch.equal(rgb, keep[0]) and torch.equal(xyza, keep[1])  # pure
    if fault.modality != "both":
        assert fault.inputs_changed == (fault.modality,)
    if fault.kind == "curve":  # a missing camera zeroes its alpha too; no other fault touches it
        assert torch.equal(out[0][:, 3], rgb[:, 3])


@pytest.fixture(scope="module")
def single_sensor_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: create_model(name, "seed", 2).eval() for name in ("rgb-only", "lidar-only")}


@pytest.mark.parametrize("name", ALL)
def test_a_single_sensor_model_ignores_the_other_sensors_faults(
    name: str, batch: tuple[torch.Tensor, torch.Tensor], single_sensor_models: dict[str, torch.nn.Module]
) -> None:
    fault = get_corruption(name)
    out = fault.apply(*batch, 1.0, gen())
    with torch.inference_mode():
        for model_name, sensor in (("rgb-only", "rgb"), ("lidar-only", "lidar")):
            model = single_sensor_models[model_name]
            if sensor not in fault.inputs_changed:
                # bit-identical logits when the model's own sensor is untouched: nothing leaks
                assert torch.equal(model(*out), model(*batch)), model_name


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_faulty_batch(name: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    apply = get_corruption(name).apply
    a, b = apply(*batch, 0.5, gen(3)), apply(*batch, 0.5, gen(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    if name not in DRAWLESS:
        c = apply(*batch, 0.5, gen(4))
        assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))  # the seed matters


@pytest.mark.parametrize("name", ALL)
def test_damage_grows_with_severity(name: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    # Equally seeded generators draw the same numbers at every severity, so on one batch the
    # damage is non-decreasing (most faults: strictly increasing), and severity 1 is worse than 0.25.
    changes = [damage(batch, get_corruption(name).apply(*batch, s, gen())) for s in SEVERITIES]
    assert changes == sorted(changes), changes
    assert changes[0] < changes[-1]


def test_damage_grows_with_severity_for_a_model_on_average(
    batch: tuple[torch.Tensor, torch.Tensor], single_sensor_models: dict[str, torch.nn.Module]
) -> None:
    # What "damage" means to a model: how far its logits move, averaged over the faults of its sensor.
    def moved(model: torch.nn.Module, names: tuple[str, ...], s: float) -> float:
        with torch.inference_mode():
            clean = model(*batch)
            return sum(float((model(*get_corruption(n).apply(*batch, s, gen())) - clean).abs().mean()) for n in names)

    for model_name, names in (("rgb-only", CAMERA_FAULTS), ("lidar-only", LIDAR_FAULTS)):
        model = single_sensor_models[model_name]
        assert moved(model, names, 0.25) < moved(model, names, 1.0), model_name


def test_severity_outside_the_unit_interval_is_rejected(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    for name in fault_names():
        with pytest.raises(ValueError, match="severity must be in"):
            get_corruption(name).apply(*batch, 1.5, gen())


# -- what each fault physically does ------------------------------------------------------------


def test_beam_loss_removes_whole_columns(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, xyza = batch
    _, out = faults.beam_loss(*batch, 1.0, gen())
    gone = (out == 0).all(dim=1).all(dim=1)  # (B, W): a column with nothing left
    intact = (out == xyza).all(dim=1).all(dim=1)
    assert bool((gone | intact).all())  # a beam is either lost or untouched
    had_returns = (xyza[:, 3] > 0).any(dim=1)
    lost = gone & had_returns & ~intact
    # 24 samples x the columns with returns (> 400 beams): SE sqrt(.75 .25 / 400) = 0.022; 0.1 = 4.6 SE
    assert int(had_returns.sum()) > 400
    assert float(lost.sum() / had_returns.sum()) == pytest.approx(BEAM_LOSS_MAX, abs=0.1)


def test_fov_loss_removes_one_contiguous_sector_of_rows(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, xyza = batch
    _, out = faults.fov_loss(*batch, 0.5, gen())
    width = round(FOV_LOSS_MAX * 0.5 * xyza.shape[2])
    for i in range(xyza.shape[0]):
        empty = (out[i] == 0).flatten(0, 0).all(dim=0).all(dim=1)  # (H,) rows with no return left
        changed = torch.nonzero((out[i] != xyza[i]).any(dim=0).any(dim=1)).flatten()
        assert bool(empty[changed].all())  # a changed row is a lost row
        if len(changed):
            assert int(changed.max() - changed.min()) < width  # inside one sector of `width` rows
        runs = empty.int().unfold(0, width, 1).sum(dim=1)
        assert int(runs.max()) == width  # the whole sector is empty


def test_fog_loses_far_returns_first_and_adds_near_backscatter() -> None:
    # Two rays per sample: a return at 5 m and one at 40 m, many samples.
    xyza = torch.zeros(4000, 4, 2, 2)
    dirs = faults.directions(2, 2, xyza)
    depth = torch.tensor([[5.0, 40.0], [5.0, 40.0]])
    xyza[:, :3] = dirs * depth / MAX_RANGE
    xyza[:, 3] = 1.0
    _, out = faults.fog(torch.zeros(4000, 4, 2, 2), xyza, 1.0, gen())
    r = torch.linalg.vector_norm(out[:, :3], dim=1) * MAX_RANGE
    kept_near = (r[:, :, 0] - 5.0).abs() < 1e-3
    kept_far = (r[:, :, 1] - 40.0).abs() < 1e-3
    beta = faults.FOG_BETA_MAX
    # kept with probability exp(-2 beta r) x (1 - backscatter): 8000 rays each, SE <= 0.0056; 0.03 = 5 SE
    back = faults.FOG_BACKSCATTER_MAX
    assert float(kept_near.float().mean()) == pytest.approx(math.exp(-2 * beta * 5) * (1 - back), abs=0.03)
    assert float(kept_far.float().mean()) == pytest.approx(math.exp(-2 * beta * 40) * (1 - back), abs=0.03)
    # everything else is either a no-return (all zeros) or backscatter at 1-5 m on the same ray
    other = ~torch.stack([kept_near, kept_far], dim=-1)
    r_other = r[other]
    spurious = r_other > 0
    lo, hi = FOG_BACKSCATTER_RANGE_M
    assert bool(((r_other[spurious] >= lo - 1e-4) & (r_other[spurious] <= hi + 1e-4)).all())
    assert bool((out[:, 3][other][~spurious] == 0).all())
    unit = out[:, :3] / r.clamp_min(1e-9).unsqueeze(1) * MAX_RANGE
    on_ray = (unit - dirs).abs().amax(dim=1) < 1e-5
    assert bool(on_ray[r > 0].all())  # spurious or not, a return lies on its pixel's ray


def test_crosstalk_adds_returns_on_the_grid_rays_at_the_given_rate() -> None:
    xyza = torch.zeros(64, 4, 16, 16)  # no returns at all: every return seen is spurious
    _, out = faults.crosstalk(torch.zeros(64, 4, 16, 16), xyza, 1.0, gen())
    hits = out[:, 3] > 0
    # 16,384 rays: SE sqrt(.15 .85 / n) = 0.0028; 0.015 = 5 SE
    assert float(hits.float().mean()) == pytest.approx(CROSSTALK_MAX, abs=0.015)
    r = torch.linalg.vector_norm(out[:, :3], dim=1)[hits] * MAX_RANGE
    assert float(r.min()) >= 1.0 - 1e-4 and float(r.max()) <= MAX_RANGE + 1e-3


def test_camera_faults_by_hand() -> None:
    rgb = torch.zeros(2, 4, 9, 9)
    rgb[:, 3] = 1.0
    rgb[:, :3, 4, 4] = 0.9  # one lit pixel in the middle
    xyza = torch.zeros(2, 4, 9, 9)
    bright, _ = faults.brightness(rgb, xyza, 0.5, gen())
    assert torch.allclose(bright[:, :3], (rgb[:, :3] + 0.3).clamp(0, 1), rtol=0, atol=U32)
    assert float(bright[:, :3].max()) == 1.0  # clipped
    blurred, _ = faults.motion_blur(rgb, xyza, 0.25, gen())  # 5 px
    line = blurred[:, 0]
    # the lit pixel is spread evenly over 5 pixels of its row or of its column
    assert torch.allclose(line.sum(dim=(1, 2)), torch.full((2,), 0.9), rtol=0, atol=8 * U32)
    assert int((line > 0).sum()) == 2 * 5
    assert torch.allclose(line[line > 0], torch.full((10,), 0.9 / 5), rtol=0, atol=4 * U32)
    covered, _ = faults.occlusion(torch.zeros(1, 4, 64, 64), xyza[:1], 1.0, gen())
    grey = (covered[0, :3] == faults.OCCLUSION_LEVEL).all(dim=0)
    assert 0 < int(grey.sum()) <= 32 * 32  # a square of side 0.5 x 64, clipped at the border


def test_darkness_scales_the_light() -> None:
    rgb = torch.full((64, 4, 16, 16), 0.8)
    out, _ = faults.darkness(rgb, torch.zeros(64, 4, 16, 16), 1.0, gen())
    # mean of 49,152 values with noise sigma 0.05: SE 0.0002; 0.002 = 10 SE
    assert float(out[:, :3].mean()) == pytest.approx(0.8 * faults.DARKNESS_GAIN_MIN, abs=0.002)


def test_misalignment_moves_points_without_inventing_any(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, xyza = batch
    _, out = faults.misalignment(*batch, 1.0, gen())
    for i in range(xyza.shape[0]):
        before = {tuple(p) for p in xyza[i].flatten(1).T.tolist()}
        after = {tuple(p) for p in out[i].flatten(1).T.tolist()}
        assert after <= before | {(0.0, 0.0, 0.0, 0.0)}  # nearest resampling: each point is an old one
    assert not torch.equal(out, xyza)


def test_desync_and_stuck_sensor_take_frames_from_the_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    rgb, xyza = batch
    _, swapped = faults.desync(*batch, 1.0, gen())
    for i in range(xyza.shape[0]):
        sources = [j for j in range(xyza.shape[0]) if torch.equal(swapped[i], xyza[j])]
        assert sources and i not in sources  # every pair gets another sample's scan
    one_rgb, one_xyza = faults.desync(rgb[:1], xyza[:1], 1.0, gen())
    assert torch.equal(one_xyza, xyza[:1])  # one sample: no other frame to take
    s_rgb, s_xyza = faults.stuck_sensor(*batch, 1.0, gen())
    changed_rgb = [i for i in range(rgb.shape[0]) if not torch.equal(s_rgb[i], rgb[i])]
    changed_lidar = [i for i in range(rgb.shape[0]) if not torch.equal(s_xyza[i], xyza[i])]
    assert not set(changed_rgb) & set(changed_lidar)  # one sensor stuck per sample
    assert changed_rgb and changed_lidar
    assert len({tuple(s_rgb[i].flatten()[:64].tolist()) for i in changed_rgb}) == 1  # one frozen frame


@pytest.mark.gpu
@pytest.mark.parametrize("name", ALL)
def test_faults_on_cuda_follow_their_generator(name: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    rgb, xyza = (t.cuda() for t in batch)
    out = get_corruption(name).apply(rgb, xyza, 0.5, torch.Generator(device="cuda").manual_seed(0))
    again = get_corruption(name).apply(rgb, xyza, 0.5, torch.Generator(device="cuda").manual_seed(0))
    assert out[0].device.type == "cuda" and torch.equal(out[0], again[0]) and torch.equal(out[1], again[1])
    cpu_gen = get_corruption(name).apply(rgb, xyza, 0.5, gen())
    cpu = get_corruption(name).apply(*batch, 0.5, gen())
    # the same draws whichever device the batch is on (a CPU generator); values agree to float32 kernels
    assert torch.allclose(cpu_gen[0].cpu(), cpu[0], atol=1e-5) and torch.allclose(cpu_gen[1].cpu(), cpu[1], atol=1e-5)
