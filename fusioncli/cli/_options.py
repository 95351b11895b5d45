"""Options shared by several commands, declared once so their names and help stay in step."""

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from fusioncli.config import field_info
from fusioncli.machine import PRECISIONS

# For commands that run models without a RunConfig option set (demo, evaluate): the same choices
# and help as the run configuration's --precision.
Precision = Enum("Precision", {name: name for name in PRECISIONS}, type=str)  # type: ignore[misc]  # functional Enum
PrecisionOption = Annotated[Precision, typer.Option("--precision", help=field_info("precision").help)]
CacheDirOption = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir", help="Prepared cache (default .fusioncli/cache or $FUSIONCLI_CACHE_DIR).", show_default=False
    ),
]
ResultsDirOption = Annotated[
    Path | None,
    typer.Option(
        "--results-dir",
        help="Results store (default .fusioncli/results or $FUSIONCLI_RESULTS_DIR).",
        show_default=False,
    ),
]
RobustnessOption = Annotated[
    bool,
    typer.Option(
        "--robustness",
        help="After training, evaluate on corrupted validation sets (missing modality, Gaussian noise at "
        "severities 0-1, LiDAR dropout); `fusioncli report --robustness` shows the results.",
    ),
]
