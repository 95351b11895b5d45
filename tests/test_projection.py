"""The depth -> XYZA projection against the labs' formula, written out per pixel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusioncli.data.projection import MAX_RANGE, default_angles, project_xyza, ray_directions

pytestmark = pytest.mark.numeric

# Tolerances: the projection runs in float32, the references in float64 (whose own rounding,
# ~1e-16, is negligible). A float32 value carrying n roundings is within gamma(n) = n u / (1 - n u)
# of exact, relative, u = 2^-24; torch's float32 sin and cos are within 1 ulp (2 u).
U32 = 2.0**-24


def gamma(n: int) -> float:
    return n * U32 / (1 - n * U32)


def test_default_angles_match_the_real_grid() -> None:
    az, ze = default_angles()
    assert az.shape == ze.shape == (64,) and az.dtype == np.float32
    # float32 radians: one rounding of the float64 angle; back to degrees in float64
    err = 16.0 * gamma(1)  # |angle| <= 16 degrees
    assert math.isclose(math.degrees(az[0]), -16.0, rel_tol=0, abs_tol=err)
    assert math.isclose(math.degrees(az[-1]), 15.5, rel_tol=0, abs_tol=err)
    assert np.allclose(np.diff(np.degrees(az)), 0.5, rtol=0, atol=2 * err)


@settings(max_examples=30, deadline=None)
@given(
    d=st.floats(0.5, 60.0),
    i=st.integers(0, 63),
    j=st.integers(0, 63),
)
def test_projection_matches_lab_formula_per_pixel(d: float, i: int, j: int) -> None:
    az, ze = default_angles()
    depth = torch.full((64, 64), MAX_RANGE)
    depth[i, j] = d
    d = float(depth[i, j])  # the depth map holds float32: the formula applies to that value
    raw = project_xyza(depth, az, ze, normalize=False)
    a, z_ = float(az[i]), float(ze[j])
    expected = [d * math.sin(-a) * math.cos(-z_), d * math.cos(-a) * math.cos(-z_), d * math.sin(-z_)]
    # sin and cos (1 ulp each), their product, the product with the depth: 6 u, and |x| <= d
    assert np.all(np.abs(raw[:3, i, j].double().numpy() - expected) <= gamma(6) * d)
    assert raw[3, i, j] == (1.0 if d < MAX_RANGE else 0.0)
    norm = project_xyza(depth, az, ze)
    if d < MAX_RANGE:
        # and the division by MAX_RANGE: 7 u
        error = np.abs(norm[:3, i, j].double().numpy() - np.array(expected) / MAX_RANGE)
        assert np.all(error <= gamma(7) * d / MAX_RANGE)
    else:
        assert torch.all(norm[:3, i, j] == 0)
    # background pixels: no return -> zero xyz after normalisation
    other = (i + 1) % 64
    assert torch.all(norm[:, other, j] == 0)


def test_projection_is_batched_and_points_lie_on_rays() -> None:
    az, ze = default_angles()
    depth = torch.rand(3, 64, 64) * 40 + 1
    xyza = project_xyza(depth, az, ze, normalize=False)
    assert xyza.shape == (3, 4, 64, 64)
    dirs = torch.from_numpy(ray_directions(az, ze)).float()  # (64, 64, 3)
    pts = depth[..., None] * dirs
    # projection: 6 u (above); reference: float64 directions rounded to float32, times the
    # depth: 2 u; components are at most the depth
    err = gamma(8) * depth[..., None]
    assert bool(((xyza[:, :3].permute(0, 2, 3, 1) - pts).abs() <= err).all())
    # The unit directions have norm 1 exactly, so |norm - depth| <= |error vector| <= gamma(6) depth,
    # plus the norm's own squares, sum and square root (<= 5 roundings with a rescaling): 11 u.
    assert bool(((xyza[:, :3].norm(dim=1) - depth).abs() <= gamma(11) * depth).all())
