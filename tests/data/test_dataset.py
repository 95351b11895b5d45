"""PreparedData: the data limits runs apply, and the LiDAR input with or without stored XYZA."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fusioncli.data.dataset import PreparedData
from fusioncli.data.projection import default_angles, project_xyza, unit_directions


def data(n_per_class: int = 10, n_val_per_class: int = 3) -> PreparedData:
    """Two classes, interleaved, the last ``n_val_per_class`` of each class in validation."""
    n = 2 * n_per_class
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    order = torch.arange(n) // 2  # position of each sample within its class
    depth = torch.rand(n, 64, 64, generator=g) * 60  # some beyond 50: no return
    az, ze = default_angles()
    return PreparedData(
        rgb=torch.randint(0, 255, (n, 4, 64, 64), generator=g, dtype=torch.uint8),
        xyza=None,
        depth=depth,
        labels=labels,
        is_val=order >= n_per_class - n_val_per_class,
        class_names=("cubes", "spheres"),
        fingerprint="fp",
        directions=unit_directions(az, ze),
    )


def test_limit_train_per_class_keeps_every_validation_sample() -> None:
    full = data()
    limited = full.limit_train_per_class(4)
    assert int(limited.is_val.sum()) == int(full.is_val.sum()) == 6
    for c in (0, 1):
        assert int(((limited.labels == c) & ~limited.is_val).sum()) == 4
    # the first training samples of each class, in order, and the same validation samples
    assert torch.equal(limited.depth[limited.is_val], full.depth[full.is_val])
    first = [i for i in range(20) if not full.is_val[i]]
    kept = [i for c in (0, 1) for i in [j for j in first if full.labels[j] == c][:4]]
    assert torch.equal(limited.depth[~limited.is_val], full.depth[sorted(kept)])
    assert limited.fingerprint == "fp:train4"
    assert full.limit_train_per_class(None) is full
    assert int((~full.limit_train_per_class(100).is_val).sum()) == 14  # more than there are: all
    with pytest.raises(ValueError):
        full.limit_train_per_class(0)


def test_lidar_projects_batches_like_the_stored_form() -> None:
    lazy = data()
    az, ze = default_angles()
    stored = replace(lazy, xyza=project_xyza(lazy.depth, az, ze))
    idx = torch.tensor([7, 2, 19, 2])
    projected = lazy.lidar(idx)
    assert torch.equal(projected, stored.lidar(idx))  # bit-identical
    assert projected.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(lazy.lidar(slice(3, 9)), stored.xyza[3:9])
    # subsets and limits keep it lazy and right
    sub = lazy.limit_train_per_class(2)
    assert sub.xyza is None and torch.equal(sub.lidar(slice(None)), project_xyza(sub.depth, az, ze))


def test_xyza_or_directions_is_required() -> None:
    with pytest.raises(ValueError, match="needs xyza or the directions"):
        replace(data(), directions=None)
