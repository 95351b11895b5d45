"""fusioncli: benchmark multimodal (RGB + LiDAR) fusion strategies.

The library works without the CLI; the CLI in :mod:`fusioncli.cli` is a thin layer on top.
"""

__version__ = "0.1.0"
