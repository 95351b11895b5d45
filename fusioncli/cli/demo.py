"""`fusioncli demo` (placeholder until implemented)."""

from fusioncli.errors import RunFailedError
from fusioncli.cli._common import report_errors


@report_errors
def demo() -> None:
    """Not implemented yet."""
    raise RunFailedError("fusioncli demo is not implemented yet")
