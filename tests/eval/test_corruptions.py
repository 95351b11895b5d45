"""Corruptions: identity at severity 0, one modality only, monotone in severity, reproducible."""

from __future__ import annotations

import pytest
import torch

from fusioncli.data.dataset import PreparedData
from fusioncli.data.projection import MAX_RANGE
from fusioncli.errors import BadInputError
from fusioncli.eval.corruptions import (
    CORRUPTIONS,
    LIDAR_NOISE_SIGMA_M,
    RGB_NOISE_SIGMA,
    corruption_names,
    get_corruption,
    lidar_dropout,
    lidar_missing,
    lidar_noise,
    rgb_missing,
    rgb_noise,
)
from fusioncli.train.engine import batch_inputs

pytestmark = pytest.mark.numeric

NAMES = ("rgb_missing", "lidar_missing", "rgb_noise", "lidar_noise", "lidar_dropout")
SEVERITIES = (0.25, 0.5, 0.75, 1.0)
# Statistical checks below use seeded draws, with tolerances stated in standard errors (SE) of
# the estimate for the number of draws; rounding checks use gamma(n) = n u / (1 - n u), the
# relative error bound of n float32 roundings (u = 2^-24).
U32 = 2.0**-24


def gamma(n: int) -> float:
    return n * U32 / (1 - n * U32)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def batch(prepared: PreparedData) -> tuple[torch.Tensor, torch.Tensor]:
    """A real model-ready batch: rendered objects, so LiDAR has returns and no-returns."""
    rgb, xyza = batch_inputs(prepared, torch.arange(24))
    assert 0 < int(xyza[:, 3].sum()) < xyza[:, 3].numel()  # both kinds of LiDAR point present
    return rgb, xyza


def change(name: str, before: tuple[torch.Tensor, torch.Tensor], after: tuple[torch.Tensor, torch.Tensor]) -> float:
    """How much the corrupted modality moved: mean absolute difference."""
    i = 0 if CORRUPTIONS[name].modality == "rgb" else 1
    return float((after[i] - before[i]).abs().mean())


def test_registry_names_and_kinds() -> None:
    # the first five, in registration order; the rest of the suite (fusioncli.eval.faults) follows
    assert corruption_names()[: len(NAMES)] == NAMES
    assert corruption_names("missing") == ("rgb_missing", "lidar_missing")
    assert corruption_names("curve")[:3] == ("rgb_noise", "lidar_noise", "lidar_dropout")
    assert get_corruption("lidar_dropout").apply is lidar_dropout
    assert {CORRUPTIONS[n].modality for n in ("rgb_missing", "rgb_noise")} == {"rgb"}
    with pytest.raises(BadInputError, match="unknown corruption 'blur'; known: rgb_missing"):
        get_corruption("blur")


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_the_identity(name: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    rgb, xyza = batch
    out_rgb, out_xyza = get_corruption(name).apply(rgb, xyza, 0.0, gen())
    assert torch.equal(out_rgb, rgb) and torch.equal(out_xyza, xyza)


@pytest.mark.parametrize("name", NAMES)
def test_only_its_own_modality_changes_and_inputs_are_not_modified(
    name: str, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    rgb, xyza = batch
    keep = rgb.clone(), xyza.clone()
    out = get_corruption(name).apply(rgb, xyza, 0.5, gen())
    own = 0 if CORRUPTIONS[name].modality == "rgb" else 1
    assert not torch.equal(out[own], batch[own])
    assert torch.equal(out[1 - own], batch[1 - own])
    assert torch.equal(rgb, keep[0]) and torch.equal(xyza, keep[1])  # pure: inputs untouched
    assert out[own].shape == batch[own].shape and out[own].dtype == batch[own].dtype


@pytest.mark.parametrize("name", NAMES)
def test_effect_grows_with_severity(name: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    # Equally seeded generators: the same draws at every severity, so the effect is monotone.
    changes = [change(name, batch, get_corruption(name).apply(*batch, s, gen())) for s in SEVERITIES]
    if CORRUPTIONS[name].kind == "missing":
        # whole samples drop out: a non-decreasing step function, everything at severity 1
        assert changes == sorted(changes) and changes[0] < changes[-1]
    else:
        assert all(a < b for a, b in zip(changes, changes[1:])), changes


@pytest.mark.parametrize("name", NAMES)
def test_same_generator_state_same_output(name: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    apply = get_corruption(name).apply
    a, b = apply(*batch, 0.5, gen(3)), apply(*batch, 0.5, gen(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = apply(*batch, 0.5, gen(4))
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))  # the seed matters


@pytest.mark.parametrize("severity", [-0.1, 1.5, float("nan")])
def test_severity_outside_unit_interval_is_rejected(severity: float, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="severity must be in"):
        rgb_noise(*batch, severity, gen())


@pytest.mark.parametrize(("fn", "index"), [(rgb_missing, 0), (lidar_missing, 1)])
def test_missing_zeroes_whole_samples_with_probability_severity(fn, index: int) -> None:
    rgb = torch.rand(4000, 4, 2, 2) + 0.1  # never zero by chance
    xyza = torch.rand(4000, 4, 2, 2) + 0.1
    full = fn(rgb, xyza, 1.0, gen())[index]
    assert torch.count_nonzero(full) == 0
    half = fn(rgb, xyza, 0.3, gen())[index]
    zeroed = (half.flatten(1) == 0).all(dim=1)
    untouched = (half == (rgb, xyza)[index]).flatten(1).all(dim=1)
    assert bool((zeroed | untouched).all())  # a sample is either gone or intact
    # 4000 draws: SE sqrt(0.3 * 0.7 / 4000) = 0.0072; 0.03 = 4.1 SE
    assert float(zeroed.float().mean()) == pytest.approx(0.3, abs=0.03)


def test_rgb_noise_sigma_clamp_and_alpha() -> None:
    rgb = torch.full((64, 4, 16, 16), 0.5)
    xyza = torch.zeros(64, 4, 16, 16)
    out, _ = rgb_noise(rgb, xyza, 0.2, gen())  # sigma 0.1 around 0.5: the clamp is 5 sigma away
    # 49,152 draws: the sample std's relative SE is 1 / sqrt(2 (n - 1)) = 0.0032; 0.05 = 16 SE
    assert float((out[:, :3] - 0.5).std()) == pytest.approx(RGB_NOISE_SIGMA * 0.2, rel=0.05)
    assert torch.equal(out[:, 3], rgb[:, 3])  # alpha is not a measurement: untouched
    strong, _ = rgb_noise(rgb, xyza, 1.0, gen())
    assert float(strong.min()) == 0.0 and float(strong.max()) == 1.0  # clamped, and the clamp is hit


def test_lidar_noise_moves_returns_along_their_rays(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, xyza = batch
    _, out = lidar_noise(*batch, 1.0, gen())
    ret = xyza[:, 3] > 0.5
    assert torch.equal(out[:, 3], xyza[:, 3])  # a return stays a return, and vice versa
    assert torch.count_nonzero(out[:, :3].permute(0, 2, 3, 1)[~ret]) == 0  # no-return stays all zeros
    r_in = torch.linalg.vector_norm(xyza[:, :3], dim=1)[ret]
    r_out = torch.linalg.vector_norm(out[:, :3], dim=1)[ret]
    dirs_in = (xyza[:, :3].permute(0, 2, 3, 1)[ret]) / r_in[:, None]
    dirs_out = (out[:, :3].permute(0, 2, 3, 1)[ret]) / r_out[:, None]
    # Same ray direction: out = xyz * scale rounds each component once (u; the scale's own
    # error is common to all three and normalises away), which turns the direction by <= 2 u;
    # each unit vector costs a norm (<= 5 roundings, allowing for a rescaling) and a division:
    # 6 u. Components are at most 1: |dirs_out - dirs_in| <= gamma(6) + gamma(8) <= gamma(14).
    assert torch.allclose(dirs_in, dirs_out, rtol=0, atol=gamma(14))
    depth_change_m = (r_out - r_in) * MAX_RANGE
    n = int(ret.sum())  # about 6,000 returns
    # the sample std's relative SE is 1 / sqrt(2 (n - 1)) = 0.009: 0.1 = 11 SE; the mean's SE is
    # sigma / sqrt(n) = 0.013 m: 0.1 m = 8 SE
    assert n > 5000
    assert float(depth_change_m.std()) == pytest.approx(LIDAR_NOISE_SIGMA_M, rel=0.1)
    assert abs(float(depth_change_m.mean())) < 0.1


def test_lidar_noise_keeps_ranges_within_the_sensor() -> None:
    xyza = torch.zeros(1, 4, 8, 8)
    xyza[0, 1] = 0.999  # returns just below max range, along +y
    xyza[0, 3] = 1.0
    _, out = lidar_noise(torch.zeros(1, 4, 8, 8), xyza, 1.0, gen())
    r = torch.linalg.vector_norm(out[:, :3], dim=1)
    # the clamped range (<= 1) times the direction: the scale's division, the product, and the
    # norm recomputed here (<= 5 roundings): at most 1 + gamma(7)
    assert float(r.max()) <= 1.0 + gamma(7) and float(r.min()) >= 0.0


def test_lidar_dropout_turns_a_fraction_of_returns_into_no_returns(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, xyza = batch
    ret = xyza[:, 3] > 0.5
    _, out = lidar_dropout(*batch, 0.4, gen())
    kept = out[:, 3] > 0.5
    assert not bool((kept & ~ret).any())  # nothing appears
    removed = ret & ~kept
    # about 6,000 returns: SE sqrt(0.4 * 0.6 / n) = 0.0063; 0.05 = 8 SE
    assert int(ret.sum()) > 5000
    assert float(removed.sum() / ret.sum()) == pytest.approx(0.4, abs=0.05)
    points_out = out.permute(0, 2, 3, 1)
    assert torch.count_nonzero(points_out[removed]) == 0  # removed = exactly the no-return encoding
    assert torch.equal(points_out[kept], xyza.permute(0, 2, 3, 1)[kept])  # the rest untouched
    _, gone = lidar_dropout(*batch, 1.0, gen())
    assert torch.count_nonzero(gone) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_corruptions_on_cuda_match_their_generator(name: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    rgb, xyza = (t.cuda() for t in batch)
    g = torch.Generator(device="cuda").manual_seed(0)
    out = get_corruption(name).apply(rgb, xyza, 0.5, g)
    assert out[0].device.type == "cuda" and out[1].device.type == "cuda"
    again = get_corruption(name).apply(rgb, xyza, 0.5, torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(out[0], again[0]) and torch.equal(out[1], again[1])
    # a CPU generator works on CUDA batches too (draws are moved to the batch's device)
    cpu_out = get_corruption(name).apply(rgb, xyza, 0.5, gen())
    assert torch.equal(cpu_out[0].cpu(), get_corruption(name).apply(*batch, 0.5, gen())[0])
