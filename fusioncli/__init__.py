"""fusioncli: benchmark multimodal (RGB + LiDAR) fusion strategies.

The library works without the CLI; the CLI in :mod:`fusioncli.cli` is a thin layer on top.
A plugin registers its strategies with ``from fusioncli import register_strategy``.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Loaded on first use (PEP 562): `import fusioncli` (every CLI start) stays free of the registry.
    if name == "register_strategy":
        from fusioncli.models import register_strategy

        return register_strategy
    raise AttributeError(f"module 'fusioncli' has no attribute {name!r}")


__all__ = ["__version__", "register_strategy"]
