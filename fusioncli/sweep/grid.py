"""The sweep grid: comma-list parsing and the Cartesian product of run configurations.

``fusioncli sweep --strategies late,intermediate-add --lrs 1e-4,1e-5`` becomes one
:class:`~fusioncli.config.RunConfig` per combination. Parsing is strict: a bad item is
named with its flag, and every problem is reported at once (one line each).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from fusioncli.config import RunConfig, config_fields, field_info
from fusioncli.errors import BadInputError

T = TypeVar("T")


def split_list(text: str, flag: str) -> list[str]:
    """Split a comma list (``"a, b,c"``) into stripped items; empty items are an error."""
    items = [item.strip() for item in str(text).split(",")]
    if not items or any(item == "" for item in items):
        raise BadInputError(f"{flag}: empty item in {text!r}; give a comma-separated list like 'a,b'")
    return items


def _parse_items(text: str, flag: str, convert: Callable[[str], T], what: str) -> list[T]:
    """Convert every item of a comma list; one error naming all bad values."""
    values: list[T] = []
    bad: list[str] = []
    for item in split_list(text, flag):
        try:
            values.append(convert(item))
        except (ValueError, OverflowError):
            bad.append(item)
    if bad:
        raise BadInputError([f"{flag}: {item!r} is not {what}" for item in bad])
    return _dedupe(values)


def _dedupe(values: Iterable[T]) -> list[T]:
    # Repeating a value would run the same configuration twice under one run id.
    seen: list[T] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def _positive_float(item: str) -> float:
    value = float(item)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(item)
    return value


def _int(item: str) -> int:
    # int("1e3") fails, which is what we want: seeds are integers, not floats that look whole.
    return int(item)


def parse_floats(text: str, flag: str) -> list[float]:
    """Parse a comma list of positive finite floats (learning rates), e.g. ``"1e-4,1e-5"``."""
    return _parse_items(text, flag, _positive_float, "a positive number (e.g. 1e-4)")


def parse_ints(text: str, flag: str) -> list[int]:
    """Parse a comma list of integers (seeds), e.g. ``"51,52,53"``."""
    return _parse_items(text, flag, _int, "an integer")


def _size(item: str) -> int | None:
    if item.lower() == "all":
        return None
    value = int(item)
    if value < 1:
        raise ValueError(item)
    return value


def parse_sizes(text: str, flag: str) -> list[int | None]:
    """Parse a comma list of sample counts >= 1 or ``all`` (no limit), e.g. ``"100,500,all"``."""
    return _parse_items(text, flag, _size, "a whole number >= 1 or 'all'")


def equal_step_epochs(
    epochs: int,
    batch_size: int,
    train_counts: Sequence[int],
    sizes: Sequence[int | None],
    limit_per_class: int | None = None,
) -> dict[int | None, int]:
    """Epochs per training-set size that give each size about the optimiser steps of the
    largest one in ``epochs`` (``--equal-steps``).

    ``train_counts``: training samples per class in the cache; a size N keeps
    ``min(count, limit_per_class, N)`` of each class, and one epoch takes
    ``ceil(samples / batch_size)`` steps. Epochs are rounded to the nearest whole number (>= 1).
    """

    def steps(size: int | None) -> int:
        kept = [min(c, limit_per_class or c, size or c) for c in train_counts]
        return max(1, math.ceil(sum(kept) / batch_size))

    budget = epochs * max(steps(size) for size in sizes)
    return {size: max(1, round(budget / steps(size))) for size in sizes}


def parse_axis(name: str, text: str) -> list[Any]:
    """Parse the comma list of grid axis ``name`` (a RunConfig field), the parser chosen by its
    metadata: choices (static or the strategy registry), positive floats, integers, sizes."""
    info = field_info(name)
    flag = info.grid_flag or info.flag
    annotation = str(RunConfig.__dataclass_fields__[name].type)
    if name == "strategy":
        from fusioncli.models import strategy_names  # torch-free registry

        return parse_choices(text, flag, strategy_names())
    if info.choices is not None:
        return parse_choices(text, flag, info.choices)
    if info.data_limit:
        return parse_sizes(text, flag)
    if "float" in annotation:
        return parse_floats(text, flag)
    if "int" in annotation:
        return parse_ints(text, flag)
    return _dedupe(split_list(text, flag))


def parse_axes(texts: Mapping[str, str]) -> dict[str, list[Any]]:
    """Parse every grid axis given as text (keyed by field name) into :func:`expand_grid`'s
    keyword arguments; all bad values of all axes are reported at once."""
    problems: list[str] = []
    parsed: dict[str, list[Any]] = {}
    for name, text in texts.items():
        try:
            parsed[field_info(name).axis or name] = parse_axis(name, text)
        except BadInputError as exc:
            problems.extend(exc.problems)
    if problems:
        raise BadInputError(problems)
    return parsed


def _axis_default(name: str) -> tuple[Any, ...]:
    # The seed notebook's grid (four strategies x three lrs x two schedulers, seed 51), from the
    # fields' grid defaults.
    return tuple(parse_axis(name, field_info(name).grid_default or ""))


def parse_choices(text: str, flag: str, choices: Sequence[str]) -> list[str]:
    """Parse a comma list whose items must be among ``choices`` (errors list the known ones)."""
    items = split_list(text, flag)
    bad = [item for item in items if item not in choices]
    if bad:
        known = ", ".join(choices)
        raise BadInputError([f"{flag}: unknown value {item!r}; choose from: {known}" for item in bad])
    return _dedupe(items)


# Product order of the axes, outermost first. Seeds innermost, so the runs of one configuration
# follow each other; an axis field not named here goes just outside the seeds.
AXIS_ORDER = ("strategy", "lidar_norm", "rgb_norm", "lr", "scheduler", "train_per_class", "seed")


def _ordered_axes() -> list[str]:
    axes = [f.name for f, info in config_fields() if info.axis]
    extra = [name for name in axes if name not in AXIS_ORDER]
    return [name for name in AXIS_ORDER[:-1] if name in axes] + extra + [AXIS_ORDER[-1]]


def expand_grid(
    *,
    epochs_by_size: Mapping[int | None, int] | None = None,
    **values: Any,
) -> list[RunConfig]:
    """Every combination of the grid axes as a RunConfig, plus the shared fields.

    Axes, each a sequence keyed by its field's ``axis`` name: ``strategies``, ``lrs``,
    ``schedulers``, ``train_sizes`` (``train_per_class``; None = all training samples) and
    ``seeds``; an axis not given takes its grid default (the seed notebook's grid: four
    strategies x three lrs x two schedulers, seed 51, all training samples). Order: strategy,
    then lr, then scheduler, then training size, then seed (innermost), so the runs of one
    configuration follow each other. The other keywords are RunConfig fields shared by every
    run (epochs, batch_size, backbone, device, precision, limit_per_class, ...);
    ``epochs_by_size`` (:func:`equal_step_epochs`) gives each training size its own epochs
    instead. Invalid values raise :class:`BadInputError` once per problem, not once per
    combination.
    """
    names = _ordered_axes()
    axes: dict[str, Sequence[Any]] = {}
    for name in names:
        info = field_info(name)
        axes[name] = values.pop(info.axis) if info.axis in values else _axis_default(name)
        if len(axes[name]) == 0:
            raise BadInputError(f"{info.grid_flag}: give at least one value")
    configs: list[RunConfig] = []
    problems: list[str] = []
    for combination in itertools.product(*axes.values()):
        fields = dict(values, **dict(zip(names, combination)))
        if epochs_by_size is not None:
            fields["epochs"] = epochs_by_size[fields["train_per_class"]]
        try:
            configs.append(RunConfig(**fields))
        except BadInputError as exc:
            problems.extend(p for p in exc.problems if p not in problems)
        except TypeError as exc:  # an unknown field name: a programming error, but say which
            raise BadInputError(f"invalid run option: {exc}") from None
    if problems:
        raise BadInputError(problems)
    return configs
