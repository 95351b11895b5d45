"""Default locations, so the short command forms work from a project folder.

Every default can be overridden by an option or by an environment variable:
``FUSIONCLI_DATA_DIR`` (raw data), ``FUSIONCLI_CACHE_DIR`` (prepared cache) and
``FUSIONCLI_RESULTS_DIR`` (results store). ``FUSIONCLI_HOME`` moves cache and results together.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_DIR = Path("data/assessment")
DEFAULT_HOME = Path(".fusioncli")


def _home() -> Path:
    return Path(os.environ.get("FUSIONCLI_HOME", str(DEFAULT_HOME)))


def default_data_dir() -> Path:
    """Raw dataset folder in the NVIDIA layout (``data/assessment``)."""
    return Path(os.environ.get("FUSIONCLI_DATA_DIR", str(DEFAULT_DATA_DIR)))


def default_cache_dir() -> Path:
    """Prepared cache folder (``.fusioncli/cache``)."""
    env = os.environ.get("FUSIONCLI_CACHE_DIR")
    return Path(env) if env else _home() / "cache"


def default_results_dir() -> Path:
    """Results store folder (``.fusioncli/results``)."""
    env = os.environ.get("FUSIONCLI_RESULTS_DIR")
    return Path(env) if env else _home() / "results"
