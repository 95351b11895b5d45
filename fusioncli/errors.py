"""The project's own error types.

The CLI catches :class:`FusionError` at its edge and prints ``error: <line>`` per problem on
stderr, then exits with :attr:`FusionError.exit_code` -- no traceback unless ``--debug``.
Exit codes follow the design card: 1 = failure while running, 2 = bad usage or bad input.
"""

from __future__ import annotations

from collections.abc import Iterable


class FusionError(Exception):
    """Base class: a problem the user can act on. One message line per problem."""

    exit_code = 1

    def __init__(self, problems: str | Iterable[str], hint: str | None = None) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        self.hint = hint
        super().__init__("\n".join(self.problems))


class BadInputError(FusionError):
    """The input data or an option's value is wrong (exit code 2)."""

    exit_code = 2


class RunFailedError(FusionError):
    """Something failed while running (exit code 1)."""

    exit_code = 1
