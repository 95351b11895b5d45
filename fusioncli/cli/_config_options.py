"""The run-configuration options of ``train`` and ``sweep``, generated from RunConfig's fields.

Each :class:`~fusioncli.config.RunConfig` field carries its flag, help, default and choices
(:class:`~fusioncli.config.FieldInfo`); :func:`run_config_options` adds one Typer option per
field to a command, so a new field appears on both commands without another edit here. In a
sweep, the grid-axis fields take comma lists (``--lrs 1e-4,1e-5``) instead.
"""

import contextlib
import functools
import inspect
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer

from fusioncli.config import FieldInfo, config_fields

F = TypeVar("F", bound=Callable[..., Any])


def _registry_names(field: str) -> list[str]:
    # Imported on Tab only: the registry is torch-free, but the CLI need not load it for --help.
    from fusioncli.errors import FusionError
    from fusioncli.models import BACKBONES, strategy_names
    from fusioncli.models.plugins import load_plugins

    if field == "strategy":
        # Completion runs no root callback: load the installed and FUSIONCLI_PLUGINS plugins here;
        # a broken one shows its error when the command runs, not on Tab.
        with contextlib.suppress(FusionError):
            load_plugins()
    return list(strategy_names()) if field == "strategy" else list(BACKBONES)


def _completer(field: str, info: FieldInfo, comma_list: bool) -> Callable[[str], list[str]] | None:
    """Shell completion of a field's values (the last item of a comma list)."""
    if info.choices is None and field not in ("strategy", "backbone"):
        return None

    def complete(incomplete: str) -> list[str]:
        names = list(info.choices) if info.choices is not None else _registry_names(field)
        head, _, last = incomplete.rpartition(",") if comma_list else ("", "", incomplete)
        prefix = f"{head}," if head else ""
        taken = set(head.split(",")) if head else set()  # a list names each value once
        return [prefix + name for name in names if name.startswith(last) and name not in taken]

    return complete


def _python_type(annotation: str) -> Any:
    if "float" in annotation:
        return float
    if "int" in annotation:
        return int | None if "None" in annotation else int
    return str


def _choices_enum(name: str, choices: Sequence[str]) -> Any:
    """A str Enum with one member per choice, which Typer offers as the option's choices."""
    return Enum(name.title().replace("_", ""), {c: c for c in choices}, type=str)


def _option(field: Any, info: FieldInfo, *, grid: bool) -> inspect.Parameter:
    """The Typer parameter of one RunConfig field (a comma list when it is a sweep axis)."""
    if grid and info.grid_flag is not None:
        annotation: Any = Annotated[
            str,
            typer.Option(info.grid_flag, help=info.grid_help, autocompletion=_completer(field.name, info, True)),
        ]
        default: Any = info.grid_default
    else:
        kind: Any = _python_type(str(field.type))
        default = field.default
        if info.choices is not None:
            kind = _choices_enum(field.name, info.choices)
            default = kind(field.default)
        decls = [info.flag, *([info.short] if info.short else [])]
        annotation = Annotated[
            kind,
            typer.Option(
                *decls,
                help=info.help,
                show_default=default is not None,
                autocompletion=_completer(field.name, info, False),
            ),
        ]
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def run_config_options(*, grid: bool = False, exclude: Sequence[str] = ()) -> Callable[[F], F]:
    """Decorate a command so it takes one option per RunConfig field (minus ``exclude``).

    The command itself declares a ``run_options: dict`` parameter and receives the parsed values
    there, keyed by field name (choices as plain strings; with ``grid``, axis fields as their
    comma-list text). The generated options come first in ``--help``.
    """
    chosen = [(f, info) for f, info in config_fields() if f.name not in exclude]

    def decorate(command: F) -> F:
        signature = inspect.signature(command)
        # keyword-only throughout: Typer passes every option by name
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for name, p in signature.parameters.items()
            if name != "run_options"
        ]
        generated = [_option(f, info, grid=grid) for f, info in chosen]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            run_options = {}
            for f, _ in chosen:
                value = kwargs.pop(f.name)
                run_options[f.name] = value.value if isinstance(value, Enum) else value
            return command(run_options=run_options, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*generated, *own])  # type: ignore[attr-defined]  # read by inspect.signature (Typer); undeclared on functions
        return wrapper  # type: ignore[return-value]  # the command, called by Typer with the generated options

    return decorate
