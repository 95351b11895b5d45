"""`fusioncli synth`: render a synthetic RGB + LiDAR dataset in the NVIDIA DLI layout."""

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from fusioncli.cli._common import OutputFormat, err, out, progress_bar, progress_enabled, report_errors
from fusioncli.data.synth import DEFAULT_PER_CLASS, MAX_CLUTTER, SYNTH_RECORD, difficulty_params, write_dataset
from fusioncli.paths import default_data_dir


class Difficulty(str, Enum):
    """The difficulty presets of :mod:`fusioncli.data.synth`."""

    easy = "easy"
    medium = "medium"
    hard = "hard"


@report_errors
def synth(
    out_dir: Annotated[
        Path | None,
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
    difficulty: Annotated[
        Difficulty,
        typer.Option(
            "--difficulty",
            "-d",
            help=(
                "Preset: easy = clean renders close to the real data; medium and hard add sensor noise, "
                "dropout, low light, smaller and farther objects, clutter and complementary corruption "
                "(one modality of a sample fails), so that no single modality suffices. "
                "The flags below override single knobs."
            ),
        ),
    ] = Difficulty.easy,
    depth_noise: Annotated[
        float | None,
        typer.Option(
            "--depth-noise", help="LiDAR: std of Gaussian noise on each return, in metres (>= 0).", show_default=False
        ),
    ] = None,
    beam_dropout: Annotated[
        float | None,
        typer.Option(
            "--beam-dropout", help="LiDAR: fraction of returns lost (written as 50.0), in [0, 1).", show_default=False
        ),
    ] = None,
    exposure: Annotated[
        float | None,
        typer.Option(
            "--exposure", help="Camera: light/exposure scale; 1 = normal, < 1 = low light.", show_default=False
        ),
    ] = None,
    rgb_noise: Annotated[
        float | None,
        typer.Option(
            "--rgb-noise",
            help="Camera: std of Gaussian noise per channel, as a fraction of full scale.",
            show_default=False,
        ),
    ] = None,
    size_range: Annotated[
        tuple[float, float] | None,
        typer.Option(
            "--size-range", help="Cube edge range LOW HIGH in metres (spheres: x1.38 diameter).", show_default=False
        ),
    ] = None,
    distance_range: Annotated[
        tuple[float, float] | None,
        typer.Option(
            "--distance-range", help="Object distance range LOW HIGH from the LiDAR, in metres.", show_default=False
        ),
    ] = None,
    clutter: Annotated[
        int | None,
        typer.Option(
            "--clutter",
            help=f"Distractors per scene (elongated boxes, ellipsoids), 0-{MAX_CLUTTER}.",
            show_default=False,
        ),
    ] = None,
    corruption: Annotated[
        float | None,
        typer.Option(
            "--corruption",
            help=(
                "Probability that one modality of a sample (RGB or LiDAR, 50/50) fails outright: a dark "
                "camera frame, or a LiDAR that lost its returns; nothing of the scene is left in it."
            ),
            show_default=False,
        ),
    ] = None,
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
    azimuth.npy and zenith.npy. The same seed writes the same bytes. A set that is not the
    plain default also gets <out>/synth.json with the preset and every parameter.

    Example: fusioncli synth data/assessment --per-class 2000 --seed 1

    Example: fusioncli synth data/hard --difficulty hard --clutter 0
    """
    params = difficulty_params(
        difficulty.value,
        depth_noise=depth_noise,
        beam_dropout=beam_dropout,
        exposure=exposure,
        rgb_noise=rgb_noise,
        size_range=size_range,
        distance_range=distance_range,
        clutter=clutter,
        corruption=corruption,
    )
    target = out_dir if out_dir is not None else default_data_dir()
    show = progress_enabled() and format is OutputFormat.table
    with progress_bar("rendering", total=2 * max(per_class, 0), enabled=show) as advance:
        summary = write_dataset(
            target,
            per_class=per_class,
            seed=seed,
            params=params,
            difficulty=difficulty.value,
            force=force,
            progress=advance,
        )
    if format is OutputFormat.json:
        out.print(json.dumps(summary.to_dict(), indent=2), markup=False, highlight=False)
    else:
        counts = ", ".join(f"{n:,} {name}" for name, n in summary.counts.items())
        changed = ", ".join(f"{k}={v}" for k, v in summary.overrides.items())
        err.print(
            f"wrote {summary.total:,} samples ({counts}) to {summary.out_dir} "
            f"in {summary.seconds:.1f} s ({summary.samples_per_s:,.0f} samples/s, seed {summary.seed}, "
            f"difficulty {summary.difficulty}{' with ' + changed if changed else ''})"
            + (f"; parameters in {SYNTH_RECORD}" if summary.params_file else ""),
            highlight=False,
            markup=False,
        )
