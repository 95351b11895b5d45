"""`fusioncli prepare` (placeholder until implemented)."""

from fusioncli.errors import RunFailedError
from fusioncli.cli._common import report_errors


@report_errors
def prepare() -> None:
    """Not implemented yet."""
    raise RunFailedError("fusioncli prepare is not implemented yet")
