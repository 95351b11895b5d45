"""`fusioncli synth` (placeholder until implemented)."""

from fusioncli.errors import RunFailedError
from fusioncli.cli._common import report_errors


@report_errors
def synth() -> None:
    """Not implemented yet."""
    raise RunFailedError("fusioncli synth is not implemented yet")
