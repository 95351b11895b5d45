"""`fusioncli train` (placeholder until implemented)."""

from fusioncli.errors import RunFailedError
from fusioncli.cli._common import report_errors


@report_errors
def train() -> None:
    """Not implemented yet."""
    raise RunFailedError("fusioncli train is not implemented yet")
