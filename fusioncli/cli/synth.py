"""`fusioncli synth`: render a synthetic RGB + LiDAR dataset in the NVIDIA DLI layout."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from fusioncli.cli._common import OutputFormat, err, out, progress_bar, progress_enabled, report_errors
from fusioncli.data.synth import DEFAULT_PER_CLASS, write_dataset
from fusioncli.paths import default_data_dir


@report_errors
def synth(
    out_dir: Annotated[
        Optional[Path],
        typer.Argument(
            help="Output folder (default: data/assessment, or $FUSIONCLI_DATA_DIR).",
            show_default=False,
        ),
    ] = None,
    per_class: Annotated[
        int,
        typer.Option(
            "--per-class",
            "-n",
            help=(
                f"Samples per class (cubes, spheres). The default {DEFAULT_PER_CLASS} renders in a second or "
                "two and trains quickly; the real set has 9,999."
            ),
        ),
    ] = DEFAULT_PER_CLASS,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed (>= 0); sample i depends only on seed, class and i.")
    ] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the output folder if it exists and is not empty.")
    ] = False,
    format: Annotated[
        OutputFormat,
        typer.Option("--format", "-f", help="table: a summary line on stderr; json: the summary on stdout."),
    ] = OutputFormat.table,
) -> None:
    """Render cubes and spheres seen by a camera (64x64 RGBA PNG) and a LiDAR (64x64 depth).

    Each sample is one ray-cast 3D scene, written in the NVIDIA DLI layout that
    `fusioncli prepare` reads: <out>/{cubes,spheres}/rgb/0000.png, lidar/0000.npy,
    azimuth.npy and zenith.npy. The same seed writes the same bytes.

    Example: fusioncli synth data/assessment --per-class 2000 --seed 1
    """
    target = out_dir if out_dir is not None else default_data_dir()
    show = progress_enabled() and format is OutputFormat.table
    with progress_bar("rendering", total=2 * max(per_class, 0), enabled=show) as advance:
        summary = write_dataset(target, per_class=per_class, seed=seed, force=force, progress=advance)
    if format is OutputFormat.json:
        out.print(json.dumps(summary.to_dict(), indent=2), markup=False, highlight=False)
    else:
        counts = ", ".join(f"{n:,} {name}" for name, n in summary.counts.items())
        err.print(
            f"wrote {summary.total:,} samples ({counts}) to {summary.out_dir} "
            f"in {summary.seconds:.1f} s ({summary.samples_per_s:,.0f} samples/s, seed {summary.seed})",
            highlight=False,
            markup=False,
        )
