"""The depth -> XYZA projection against the labs' formula, written out per pixel."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusioncli.data.projection import MAX_RANGE, default_angles, project_xyza, ray_directions


def test_default_angles_match_the_real_grid() -> None:
    az, ze = default_angles()
    assert az.shape == ze.shape == (64,) and az.dtype == np.float32
    assert math.isclose(math.degrees(az[0]), -16.0, abs_tol=1e-4)
    assert math.isclose(math.degrees(az[-1]), 15.5, abs_tol=1e-4)
    assert np.allclose(np.diff(np.degrees(az)), 0.5, atol=1e-4)


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
    raw = project_xyza(depth, az, ze, normalize=False)
    a, z_ = float(az[i]), float(ze[j])
    expected = [d * math.sin(-a) * math.cos(-z_), d * math.cos(-a) * math.cos(-z_), d * math.sin(-z_)]
    assert np.allclose(raw[:3, i, j].numpy(), expected, atol=1e-4)
    assert raw[3, i, j] == (1.0 if d < MAX_RANGE else 0.0)
    norm = project_xyza(depth, az, ze)
    if d < MAX_RANGE:
        assert np.allclose(norm[:3, i, j].numpy(), np.array(expected) / MAX_RANGE, atol=1e-5)
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
    assert torch.allclose(xyza[:, :3].permute(0, 2, 3, 1), pts, atol=1e-4)
    assert torch.allclose(xyza[:, :3].norm(dim=1), depth, atol=1e-3)
