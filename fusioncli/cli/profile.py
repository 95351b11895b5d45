"""`fusioncli profile`: inference latency, throughput, size, FLOPs and memory per strategy."""

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from fusioncli.cli._common import err, out, report_errors
from fusioncli.errors import BadInputError


class ProfileFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    json = "json"


COLUMNS = (
    ("strategy", "strategy", "{}"),
    ("batch_size", "batch", "{}"),
    ("p50_ms", "p50 (ms)", "{:.2f}"),
    ("p95_ms", "p95 (ms)", "{:.2f}"),
    ("samples_per_s", "samples/s", "{:,.0f}"),
    ("params", "params", "{:,}"),
    ("flops_per_sample", "MFLOPs/sample", None),
    ("checkpoint_bytes", "checkpoint (MiB)", None),
    ("peak_mem_bytes", "peak mem (MiB)", None),
)


def _cell(key: str, fmt: str | None, value: Any) -> str:
    if key == "flops_per_sample":
        return f"{value / 1e6:,.1f}"
    if key in ("checkpoint_bytes", "peak_mem_bytes"):
        return f"{value / 2**20:,.1f}"
    return (fmt or "{}").format(value)


def _protocol(rows: list[dict[str, Any]]) -> str:
    first = rows[0]
    memory = "CUDA max allocated" if first["peak_mem_kind"] == "cuda_max_allocated" else "process peak RSS (lifetime)"
    h, w = first["input_size"]
    return (
        f"{h}x{w} inputs, {first['num_classes']} classes; "
        f"device {first['device']}, {first['precision']}, {first['threads']} threads; {first['warmup']} warm-up + "
        f"{first['iters']} timed passes per row; timer: one forward pass on a batch already on the device "
        f"(synchronised on CUDA); samples/s = batch / p50; peak mem: {memory}"
    )


def _parse_ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInputError(f"{option} takes a comma list of integers (got {text!r})") from None
    if not values or min(values) < 1:
        raise BadInputError(f"{option} takes positive integers (got {text!r})")
    return values


@report_errors
def profile(
    strategies: Annotated[
        str, typer.Option("--strategies", "-s", help="Comma list of strategies (see `fusioncli strategies`).")
    ] = "late,rgb-only,lidar-only",
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", "-b", help="Comma list of batch sizes.")] = "1,32",
    backbone: Annotated[str, typer.Option("--backbone", help="Backbone preset.")] = "seed",
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")] = "cpu",
    precision: Annotated[str, typer.Option("--precision", help="fp32, bf16 or auto.")] = "fp32",
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed forward passes before timing.", min=0)] = 10,
    iters: Annotated[int, typer.Option("--iters", help="Timed forward passes per row.", min=1)] = 50,
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="torch intra-op threads while measuring (default: torch's).", min=1),
    ] = None,
    format: Annotated[
        ProfileFormat, typer.Option("--format", "-f", help="table (rich), markdown, or json (a list of objects).")
    ] = ProfileFormat.table,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Size the models and inputs for this prepared cache's image size and classes "
            "(default: 64x64 inputs, 2 classes).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Measure inference cost per strategy and batch size: latency p50 / p95, samples/s,
    parameters, FLOPs per sample, checkpoint size (safetensors) and peak memory.

    Protocol: random weights, eval mode, channels_last; inputs made on the device before
    timing; --warmup untimed passes, then --iters timed passes of exactly one forward call
    each (bf16 autocast for --precision bf16; CUDA synchronised before and after). Latency
    on a shared machine moves with its load.

    Examples:  fusioncli profile --strategies late,rgb-only --batch-sizes 1,32
               fusioncli profile --device cuda --precision bf16 --format json
    """
    from fusioncli.eval.profile import profile_strategies  # torch loads here
    from fusioncli.sweep.plan import cache_shape

    names = [s.strip() for s in strategies.split(",") if s.strip()]
    if not names:
        raise BadInputError("--strategies: give at least one strategy")
    sizes = _parse_ints(batch_sizes, "--batch-sizes")
    num_classes, input_size = cache_shape(cache_dir)
    err.print(f"profiling {len(names)} strategies x {len(sizes)} batch sizes ...", highlight=False)
    rows = profile_strategies(
        names, sizes, backbone=backbone, device=device, precision=precision, warmup=warmup, iters=iters,
        threads=threads, num_classes=num_classes, input_size=input_size,
    )  # fmt: skip
    if format is ProfileFormat.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    cells = [[_cell(k, f, row[k]) for k, _, f in COLUMNS] for row in rows]
    if format is ProfileFormat.markdown:
        lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
        typer.echo("\n".join(lines) + f"\n\n{_protocol(rows)}\n")
        return
    table = Table(title="Inference cost", caption=_protocol(rows), caption_justify="left", box=box.SIMPLE_HEAD)
    for key, header, _ in COLUMNS:
        table.add_column(header, justify="left" if key == "strategy" else "right", no_wrap=True)
    for r in cells:
        table.add_row(*r)
    out.print(table)
