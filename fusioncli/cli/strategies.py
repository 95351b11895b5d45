"""`fusioncli strategies`: list the registered fusion strategies with their size and cost."""

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from fusioncli.cli._common import OutputFormat, out, report_errors
from fusioncli.errors import BadInputError
from fusioncli.models import BACKBONES, get_backbone, get_strategy
from fusioncli.models.backbones import format_input_size

# Choices come from the backbone presets, plus "all".
BackboneChoice = Enum("BackboneChoice", {name: name for name in (*BACKBONES, "all")}, type=str)  # type: ignore[misc]  # members known at run time only


def _human(n: int) -> str:
    """12_345_678 -> '12.3 M' (FLOPs read better rounded)."""
    for factor, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return str(n)


# Below this console width the description column would squeeze the numbers; drop it there
# (json always has it).
_WIDTH_FOR_DESCRIPTION = 110


def _table(
    rows: list[dict[str, Any]], *, with_description: bool, input_size: tuple[int, int], num_classes: int
) -> Table:
    # Names and numbers never wrap; the description takes whatever width is left.
    table = Table(
        title=f"Fusion strategies for {format_input_size(input_size)} inputs and {num_classes} classes "
        "(FLOPs: one forward pass, one sample)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("strategy", style="bold", no_wrap=True)
    table.add_column("backbone", no_wrap=True)
    table.add_column("inputs", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("trainable", justify="right", no_wrap=True)
    table.add_column("FLOPs", justify="right", no_wrap=True)
    if with_description:
        table.add_column("description", overflow="fold")
    for row in rows:
        cells = [
            row["name"],
            row["backbone"],
            "+".join(row["modalities"]),
            f"{row['params']:,}",
            f"{row['trainable_params']:,}",
            _human(row["flops_per_sample"]),
        ]
        table.add_row(*cells, *([row["description"]] if with_description else []))
    return table


@report_errors
def strategies(
    backbone: Annotated[
        BackboneChoice,
        typer.Option("--backbone", "-b", help="Backbone preset to size the strategies on, or 'all'."),
    ] = BackboneChoice["seed"],
    format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table (rich) or json (a list of objects) on stdout.")
    ] = OutputFormat.table,
    check: Annotated[
        str | None,
        typer.Option(
            "--check",
            help="Check strategy NAME instead of listing: one forward and backward pass on a tiny batch; "
            "output shape, finite loss, a gradient for every parameter, no unregistered trained tensor. "
            "Exit 2 with one line per problem.",
            metavar="NAME",
            show_default=False,
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Size the models for this prepared cache's image size and classes (parameters, FLOPs; with "
            "--check, a batch of its shape). Default: 64x64 inputs, 2 classes.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """List the fusion strategies with parameter counts and forward FLOPs per sample.

    Sized for 64x64 inputs and 2 classes, or with --cache-dir for that cache's images and classes.

    Example: fusioncli strategies --backbone all --format json

    For your data:  fusioncli strategies --cache-dir .fusioncli/cache

    Check a plugin:  fusioncli --plugin my_fusion.py strategies --check my-fusion
    """
    if check is not None:
        _check(check, backbone.value, cache_dir, format)
        return
    from fusioncli.models import describe_strategies  # builds each model: torch loads here
    from fusioncli.sweep.plan import cache_shape

    num_classes, size = cache_shape(cache_dir)
    rows = describe_strategies(backbone.value, num_classes, size)
    if format is OutputFormat.json:
        out.print(json.dumps(rows, indent=2), markup=False, highlight=False)
    else:
        wide = out.width >= _WIDTH_FOR_DESCRIPTION
        out.print(_table(rows, with_description=wide, input_size=size, num_classes=num_classes))


def _check(name: str, backbone: str, cache_dir: Path | None, format: OutputFormat) -> None:
    """`strategies --check NAME`: the contract check, one line per problem, exit 2 on any."""
    from fusioncli.models.check import check_strategy  # torch loads here
    from fusioncli.sweep.plan import cache_shape

    spec = get_strategy(name)  # an unknown name: the known ones, exit 2
    num_classes, size = cache_shape(cache_dir)
    backbones = BACKBONES if backbone == "all" else (backbone,)
    for bb in backbones:
        get_backbone(bb, size)  # an input too small for the backbone: that, not a failed contract
    problems = [
        f"{p} (backbone {bb})" if len(backbones) > 1 else p
        for bb in backbones
        for p in check_strategy(name, bb, num_classes, input_size=size)
    ]
    where = f" from plugin {spec.plugin.file}" if spec.plugin is not None else ""
    shape = f"{format_input_size(size)}, {num_classes} classes, backbone {'/'.join(backbones)}"
    if format is OutputFormat.json:
        plugin = None if spec.plugin is None else spec.plugin.to_json()
        # "size": the side of a square input (None for another shape), as before input_size existed.
        side = size[0] if size[0] == size[1] else None
        row = {"name": name, "ok": not problems, "problems": problems, "input_size": list(size), "size": side,
               "num_classes": num_classes, "backbones": list(backbones), "plugin": plugin}  # fmt: skip
        out.print(json.dumps(row, indent=2), markup=False, highlight=False)
    if problems:
        raise BadInputError(problems, hint=f"strategy {name!r}{where} fails the builder contract ({shape})")
    if format is not OutputFormat.json:
        out.print(f"{name}{where}: ok ({shape}; every parameter trained)", markup=False, highlight=False)
