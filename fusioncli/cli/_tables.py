"""Rich tables that more than one command prints."""

from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from fusioncli.cli._common import out


def robustness_table(robustness: dict[str, Any], where: str = "validation") -> Table:
    """Accuracy per corruption condition with relative figures and AUCs (a record's ``robustness``)."""
    from fusioncli.eval.robustness import summary_rows

    table = Table(
        title=f"robustness ({where}, corruption seed {robustness['seed']}; relative = accuracy / clean accuracy)",
        title_justify="left",
    )
    for col in ("condition", "accuracy", "relative", "AUC", "relative AUC"):
        table.add_column(col, justify="left" if col == "condition" else "right")

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    for row in summary_rows(robustness):
        table.add_row(
            row["condition"], cell(row["accuracy"]), cell(row["relative"]), cell(row["auc"]), cell(row["relative_auc"])
        )
    return table


def print_table(table: Table) -> None:
    """A rich table on stdout; piped or redirected, at its natural width instead of 80 columns."""
    if out.is_terminal:
        out.print(table)
        return
    # Console.print caps width at the console's (80 when not a terminal): use a wider one.
    width = max(out.width, Measurement.get(out, out.options.update_width(100_000), table).maximum)
    Console(file=out.file, width=width, no_color=out.no_color).print(table)
