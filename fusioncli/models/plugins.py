"""Strategy plugins: Python files and installed packages that register their own strategies.

A plugin registers with :func:`fusioncli.register_strategy`, the way the built-ins do. Three
ways to load one, all before a command looks at strategy names:

- ``fusioncli --plugin my_fusion.py COMMAND ...`` (repeatable);
- ``FUSIONCLI_PLUGINS=a.py:b.py`` (``os.pathsep``-separated files);
- an installed package's entry point in the group ``fusioncli.strategies``, naming a module
  that registers on import (or a function, called with no arguments, that registers).

Each strategy a plugin registers remembers the plugin's file and the sha256 of its source
(:class:`~fusioncli.models.registry.PluginSource`): the run id hashes it, so editing a plugin
retrains its runs, and every record names it. A plugin that fails to load raises
:class:`~fusioncli.errors.BadInputError` naming the file and the line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType

from fusioncli.errors import BadInputError
from fusioncli.models.registry import PluginSource, registering_from, strategy_specs, unregister_strategy

ENV_VAR = "FUSIONCLI_PLUGINS"
ENTRY_POINT_GROUP = "fusioncli.strategies"

# Plugin files loaded in this process: resolved path -> sha256 of the source loaded.
_LOADED: dict[str, str] = {}
_ENTRY_POINTS_DONE: list[bool] = []


def source_sha256(path: Path) -> str:
    """The sha256 (hex) of a plugin file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _where(exc: BaseException, file: str) -> str:
    """`` (line N)`` of the deepest frame of ``exc`` in ``file``, if there is one."""
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == file]
    if isinstance(exc, SyntaxError) and exc.filename == file and exc.lineno:
        lines.append(exc.lineno)
    return f" (line {lines[-1]})" if lines else ""


def _forget(file: str) -> None:
    """Unregister the strategies registered by the plugin ``file`` (before loading it again)."""
    for spec in strategy_specs():
        if spec.plugin is not None and spec.plugin.file == file:
            unregister_strategy(spec.name)


def load_plugin_file(path: str | Path) -> PluginSource:
    """Run the plugin file ``path`` so that it registers its strategies; its :class:`PluginSource`.

    Loading the same unchanged file again does nothing; an edited file replaces the strategies
    it registered before. Raises :class:`BadInputError` naming the file when it is missing or
    fails to run (its strategies then stay unregistered).
    """
    file = Path(path).expanduser()
    if file.suffix != ".py":
        raise BadInputError(f"plugin {path}: not a Python file (.py)")
    try:
        file = file.resolve(strict=True)
        sha = source_sha256(file)
    except OSError as exc:
        raise BadInputError(f"plugin {path}: cannot read it ({exc.strerror or exc})") from None
    name = str(file)
    source = PluginSource(file=name, sha256=sha)
    if _LOADED.get(name) == sha:
        return source
    _forget(name)
    _LOADED.pop(name, None)
    module_name = f"fusioncli_plugin_{file.stem}_{sha[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise BadInputError(f"plugin {path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses, pickling and typing look modules up here
    try:
        with registering_from(source):
            spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        _forget(name)
        raise BadInputError(
            f"plugin {file} failed to load{_where(exc, name)}: {type(exc).__name__}: {exc}",
            hint="run with --debug for the traceback",
        ) from exc
    _LOADED[name] = sha
    return source


def _module_file(module: str) -> Path | None:
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return None if found is None or not found.origin or not os.path.isfile(found.origin) else Path(found.origin)


def load_entry_points() -> list[str]:
    """Load the installed plugins (entry-point group ``fusioncli.strategies``), once per process.

    Returns the entry points' names. A plugin that fails raises :class:`BadInputError` naming it.
    """
    if _ENTRY_POINTS_DONE:
        return []
    _ENTRY_POINTS_DONE.append(True)
    names = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        file = _module_file(ep.module)
        label = f"plugin {ep.name} (entry point {ep.value}{f', {file}' if file else ''})"
        source = PluginSource(file=str(file) if file else ep.value, sha256=source_sha256(file) if file else "")
        try:
            with registering_from(source):
                loaded = ep.load()
                if callable(loaded) and not isinstance(loaded, ModuleType):
                    loaded()
        except Exception as exc:
            where = _where(exc, str(file)) if file else ""
            raise BadInputError(
                f"{label} failed to load{where}: {type(exc).__name__}: {exc}",
                hint="run with --debug for the traceback",
            ) from exc
        names.append(ep.name)
    return names


def env_plugin_files() -> list[str]:
    """The files named by ``FUSIONCLI_PLUGINS`` (``os.pathsep``-separated; empty items ignored)."""
    return [item for item in os.environ.get(ENV_VAR, "").split(os.pathsep) if item.strip()]


def load_plugins(files: Iterable[str | Path] = (), *, environment: bool = True, entry_points: bool = True) -> None:
    """Load every plugin: installed ones (entry points), ``FUSIONCLI_PLUGINS``, then ``files``.

    Every failure is reported at once, one :class:`BadInputError` line per plugin.
    """
    errors: list[BadInputError] = []
    if entry_points:
        try:
            load_entry_points()
        except BadInputError as exc:
            errors.append(exc)
    for file in [*(env_plugin_files() if environment else []), *files]:
        try:
            load_plugin_file(file)
        except BadInputError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        problems = [p for exc in errors for p in exc.problems]
        hint = next((exc.hint for exc in errors if exc.hint), None)
        raise BadInputError(problems, hint=hint) from errors[0]


def loaded_plugin_files() -> list[str]:
    """The plugin files loaded in this process (what a Ray worker must load too)."""
    return list(_LOADED)


def load_plugin_files(files: Sequence[str]) -> None:
    """Load ``files`` (on a Ray worker: the driver's plugins) and the installed plugins."""
    load_plugins(files, environment=False)


def unload_plugins() -> None:
    """Unregister every plugin strategy and forget what was loaded (tests, notebooks)."""
    for spec in strategy_specs():
        if spec.plugin is not None:
            unregister_strategy(spec.name)
    _LOADED.clear()
    _ENTRY_POINTS_DONE.clear()
