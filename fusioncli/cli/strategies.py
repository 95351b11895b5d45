"""`fusioncli strategies`: list the registered fusion strategies with their size and cost."""

import json
from enum import Enum
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from fusioncli.cli._common import OutputFormat, out, report_errors
from fusioncli.models import BACKBONES

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


def _table(rows: list[dict[str, Any]], *, with_description: bool) -> Table:
    # Names and numbers never wrap; the description takes whatever width is left.
    table = Table(
        title="Fusion strategies (FLOPs: one forward pass, one sample)",
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
) -> None:
    """List the fusion strategies with parameter counts and forward FLOPs per sample.

    Example: fusioncli strategies --backbone all --format json
    """
    from fusioncli.models import describe_strategies  # builds each model: torch loads here

    rows = describe_strategies(backbone.value)
    if format is OutputFormat.json:
        out.print(json.dumps(rows, indent=2), markup=False, highlight=False)
    else:
        out.print(_table(rows, with_description=out.width >= _WIDTH_FOR_DESCRIPTION))
