"""`fusioncli faults`: list the sensor-fault suite robustness evaluation runs."""

import json
from enum import Enum
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from fusioncli.cli._common import out, report_errors


class FaultsFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    json = "json"


def _ladder(row: dict[str, Any]) -> str:
    return "; ".join(f"{s['severity']:g}: {s['parameter']}" for s in row["severities"])


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| fault | modality | changes | what it is | severities |", "|---|---|---|---|---|"]
    for row in rows:
        cells = [row["name"], row["modality"], "+".join(row["changes"]), row["physical"], _ladder(row)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        title="Sensor faults (severity 0 = clean; robustness evaluates 0.25, 0.5, 0.75, 1)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("fault", style="bold", no_wrap=True)
    table.add_column("modality", no_wrap=True)
    table.add_column("description", overflow="fold")
    table.add_column("severities", overflow="fold")
    for row in rows:
        table.add_row(row["name"], row["modality"], f"{row['description']}. {row['physical']}", _ladder(row))
    return table


@report_errors
def faults(
    format: Annotated[
        FaultsFormat,
        typer.Option("--format", "-f", help="table (rich), markdown, or json (a list of objects) on stdout."),
    ] = FaultsFormat.table,
) -> None:
    """List the sensor faults: name, modality (rgb, lidar or both), what the fault is, and the
    physical parameter at each severity.

    `train --robustness` / `sweep --robustness` evaluate every fault at severities 0.25, 0.5,
    0.75 and 1 (severity 0 is the clean validation split), and the missing modalities at 1.
    Faults are seeded: the same seed gives the same faulty batch. Plugins add faults with
    fusioncli.eval.register_corruption.

    Examples:  fusioncli faults
               fusioncli faults --format json
    """
    from fusioncli.eval import fault_table  # torch loads here, not for --help

    rows = fault_table()
    if format is FaultsFormat.json:
        typer.echo(json.dumps(rows, indent=2))
    elif format is FaultsFormat.markdown:
        typer.echo(_markdown(rows), nl=False)
    else:
        out.print(_table(rows))
