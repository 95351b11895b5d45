"""`fusioncli report` (placeholder until implemented)."""

from fusioncli.errors import RunFailedError
from fusioncli.cli._common import report_errors


@report_errors
def report() -> None:
    """Not implemented yet."""
    raise RunFailedError("fusioncli report is not implemented yet")
