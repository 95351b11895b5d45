"""Options shared by several commands, declared once so their names and help stay in step."""

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


PrecisionOption = Annotated[
    Precision, typer.Option("--precision", help="auto: bf16 autocast where the hardware has it, else fp32.")
]
LimitPerClassOption = Annotated[
    int | None,
    typer.Option("--limit-per-class", help="Use at most N samples per class in each split (quick runs)."),
]
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
ModalityDropoutOption = Annotated[
    float,
    typer.Option(
        "--modality-dropout",
        help="Training only: probability (0 <= p < 1) that a sample has RGB or LiDAR (50/50) replaced by zeros.",
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
