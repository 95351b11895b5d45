"""Shared fixtures: a tiny synthetic dataset, rendered once per test session.

Tests never download anything; data comes from ``fusioncli synth``'s renderer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY_PER_CLASS = 48


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny raw dataset in the NVIDIA layout (48 samples per class). Do not modify it."""
    from fusioncli.data.synth import write_dataset

    out = tmp_path_factory.mktemp("raw") / "assessment"
    write_dataset(out, per_class=TINY_PER_CLASS, seed=0)
    return out


@pytest.fixture(scope="session")
def cache_dir(raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``raw_dir`` prepared with a 25 % stratified validation split. Do not modify it."""
    from fusioncli.data.cache import prepare

    out = tmp_path_factory.mktemp("cache") / "cache"
    prepare(raw_dir, out, val_fraction=0.25, split_seed=0)
    return out


@pytest.fixture(scope="session")
def prepared(cache_dir: Path):
    """The tiny dataset as a :class:`fusioncli.data.dataset.PreparedData` on the CPU."""
    from fusioncli.data.cache import load_cache

    return load_cache(cache_dir)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu``-marked tests cleanly when CUDA is absent."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
