"""`fusioncli prepare`: validate a raw folder or a manifest and build (or reuse) the prepared cache."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fusioncli.cli._common import OutputFormat, err, out, progress_bar, report_errors
from fusioncli.errors import BadInputError
from fusioncli.paths import default_cache_dir, default_data_dir

if TYPE_CHECKING:
    from fusioncli.data.cache import PrepareSummary

MAX_LISTED = 20  # skipped files printed; the manifest lists all of them


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _print_summary(s: "PrepareSummary") -> None:
    state = f"cache hit ({s.how})" if s.cache_hit else "cache built"
    err.print(f"[bold green]{state}[/] {escape(str(s.cache_dir))} in {s.seconds:.2f} s", highlight=False)
    if s.manifest is not None:
        h, w = s.image_size
        err.print(f"manifest: {escape(str(s.manifest))}   {s.geometry} geometry, {h}x{w} (HxW)", highlight=False)
    table = Table(title=None, show_edge=False, pad_edge=False)
    for col in ("class", "label", "train", "val", "total"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for label, name in enumerate(s.class_names):
        c = s.counts[name]
        table.add_row(escape(name), str(label), str(c["train"]), str(c["val"]), str(c["train"] + c["val"]))
    table.add_section()
    table.add_row("all", "", str(s.n_train), str(s.n_val), str(s.n_train + s.n_val))
    err.print(table)
    err.print(f"split: {escape(s.split)}", highlight=False)
    err.print(f"fingerprint: {s.fingerprint}   cache size: {_size(s.cache_bytes)}", highlight=False)
    if s.skipped:
        err.print(f"[yellow]skipped {len(s.skipped)} file(s):[/]", highlight=False)
        for p in s.skipped[:MAX_LISTED]:
            err.print(f"  {escape(str(p))}", highlight=False, soft_wrap=True)
        if len(s.skipped) > MAX_LISTED:
            err.print(
                f"  ... and {len(s.skipped) - MAX_LISTED} more"
                f" (all listed in {escape(str(s.cache_dir / 'manifest.json'))})",
                highlight=False,
            )
    for note in s.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)


@report_errors
def prepare(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Raw data folder in the NVIDIA layout (default: data/assessment, or $FUSIONCLI_DATA_DIR).",
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help="Your own dataset instead of the NVIDIA layout: a CSV or Parquet file with the columns rgb"
            " (PNG/JPEG), depth (.npy metres or 16-bit PNG), label and optionally split (train/val); paths"
            " relative to its folder. The sensor geometry comes from dataset.toml beside it.",
        ),
    ] = None,
    geometry: Annotated[
        Path | None,
        typer.Option(
            "--geometry",
            help="With --manifest: the geometry file (a lidar section with angle grids, or camera intrinsics)"
            " instead of dataset.toml beside the manifest.",
        ),
    ] = None,
    size: Annotated[
        int | None,
        typer.Option(
            "--size",
            help="With --manifest: resize every sample to NxN (RGB bilinear, depth by nearest neighbour;"
            " angle grids resampled and camera intrinsics scaled to match). Default: keep the size all"
            " samples share.",
            min=1,
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir", help="Where the prepared cache goes (default: .fusioncli/cache, or $FUSIONCLI_CACHE_DIR)."
        ),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            "--val-fraction",
            help="Validation share per class, chosen by a seeded hash (stratified)."
            " Default: the seed's split, the last 320 samples of each class; with --manifest, its split"
            " column, else 0.2. With a split column, it splits only the rows whose split cell is empty.",
        ),
    ] = None,
    split_seed: Annotated[int, typer.Option("--split-seed", help="Seed of the --val-fraction split.")] = 0,
    skip_invalid: Annotated[
        bool,
        typer.Option(
            "--skip-invalid", help="Leave bad files out (listed, and recorded in the manifest) instead of failing."
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the cache is current.")] = False,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="table: summary on stderr; json: the summary as JSON on stdout.")
    ] = OutputFormat.table,
) -> None:
    """Validate the raw data and build the training cache (reused while the input is unchanged).

    Every bad file is listed (exit code 2, nothing written) unless --skip-invalid is given.

    Example:  fusioncli prepare --data-dir data/assessment --val-fraction 0.2

    Example:  fusioncli prepare --manifest mydata/samples.csv --size 64
    """
    from fusioncli.data.cache import prepare as prepare_cache  # numpy, PIL: not for --help
    from fusioncli.data.cache import prepare_manifest

    if manifest is not None and data_dir is not None:
        raise BadInputError("--manifest and --data-dir name two datasets; pass one of them")
    if manifest is None and (geometry is not None or size is not None):
        given = " and ".join(o for o, v in (("--geometry", geometry), ("--size", size)) if v is not None)
        raise BadInputError(f"{given}: only for --manifest datasets (the NVIDIA layout is 64x64, with its own grids)")
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    with progress_bar("Preparing", total=None, enabled=False if fmt == OutputFormat.json else None) as advance:
        if manifest is not None:
            summary = prepare_manifest(
                manifest,
                cache,
                geometry=geometry,
                size=size,
                val_fraction=val_fraction,
                split_seed=split_seed,
                skip_invalid=skip_invalid,
                force=force,
                progress=advance,
            )
        else:
            summary = prepare_cache(
                data_dir if data_dir is not None else default_data_dir(),
                cache,
                val_fraction=val_fraction,
                split_seed=split_seed,
                skip_invalid=skip_invalid,
                force=force,
                progress=advance,
            )
    if fmt == OutputFormat.json:
        out.print(json.dumps(summary.to_dict(), indent=2), markup=False, highlight=False, soft_wrap=True)
    else:
        _print_summary(summary)
