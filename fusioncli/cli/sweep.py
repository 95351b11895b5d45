"""`fusioncli sweep` (placeholder until implemented)."""

from fusioncli.errors import RunFailedError
from fusioncli.cli._common import report_errors


@report_errors
def sweep() -> None:
    """Not implemented yet."""
    raise RunFailedError("fusioncli sweep is not implemented yet")
