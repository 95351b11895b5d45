"""`fusioncli strategies` (placeholder until implemented)."""

from fusioncli.errors import RunFailedError
from fusioncli.cli._common import report_errors


@report_errors
def strategies() -> None:
    """Not implemented yet."""
    raise RunFailedError("fusioncli strategies is not implemented yet")
