"""Sweep files: a whole sweep in TOML, keyed by the long option names of ``fusioncli sweep``.

::

    # sweep.toml
    strategies = ["late", "intermediate-add"]
    lrs = [1e-4, 1e-5]
    train-per-class = [100, "all"]
    seeds = [51, 52, 53]
    epochs = 5
    cache-dir = "data/cache"

A list is a grid axis (the comma list of the option); anything else is the option's value.
Relative paths are read relative to the file's folder. The resolved sweep (file, command line
and defaults together) is written back as TOML (:func:`to_toml`) and saved in the results store
(:func:`save_resolved`), so ``fusioncli sweep --config <results>/sweeps/<hash>.toml`` runs it
again. Torch-free.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusioncli.atomic import atomic_write_text
from fusioncli.errors import BadInputError

SWEEPS_DIR = "sweeps"
# tomllib is 3.11's; 3.10 has the same parser as the tomli package (a dependency there).
tomllib: Any = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")


def read_sweep_file(path: Path) -> dict[str, Any]:
    """The key/value table of the sweep file ``path``; BadInputError naming the file otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"sweep file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"sweep file {path}: not valid TOML: {exc}") from None
    nested = sorted(key for key, value in values.items() if isinstance(value, dict))
    if nested:
        raise BadInputError(
            [f"sweep file {path}: [{key}]: tables are not sweep options; put the keys at the top" for key in nested]
        )
    return values


def axis_text(value: Any) -> str:
    """A grid axis as the option's comma list: ``[1e-4, 1e-5]`` -> ``"0.0001,1e-05"``."""
    items = value if isinstance(value, list) else [value]
    return ",".join(_item_text(item) for item in items)


def _item_text(item: Any) -> str:
    if isinstance(item, bool):
        return str(item).lower()
    return repr(item) if isinstance(item, float) else str(item)


def axis_items(text: str) -> list[Any]:
    """A comma list back as typed TOML items: numbers as numbers, the rest as strings."""
    items: list[Any] = []
    for raw in str(text).split(","):
        item = raw.strip()
        for convert in (int, float):
            try:
                items.append(convert(item))
                break
            except ValueError:
                continue
        else:
            items.append(item)
    return items


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
        )
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def to_toml(values: Mapping[str, Any], comment: str = "") -> str:
    """``values`` (str/int/float/bool or lists of them; None left out) as a flat TOML document."""
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None]
    return "\n".join(lines) + "\n"


def save_resolved(results_dir: Path, text: str) -> Path:
    """Save a resolved sweep's TOML as ``<results>/sweeps/<sha256[:16]>.toml`` (same sweep, same file)."""
    target = Path(results_dir) / SWEEPS_DIR / f"{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}.toml"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
    return target
