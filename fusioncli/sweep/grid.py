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

from fusioncli.errors import BadInputError
from fusioncli.config import RunConfig

T = TypeVar("T")

# The seed notebook's grid: four strategies x three learning rates x two schedulers, seed 51.
DEFAULT_STRATEGIES = ("late", "intermediate-concat", "intermediate-add", "intermediate-multiply")
DEFAULT_LRS = (1e-4, 1e-5, 1e-6)
DEFAULT_SCHEDULERS = ("cosine", "constant")
DEFAULT_SEEDS = (51,)
SCHEDULERS = ("cosine", "constant")


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


def parse_choices(text: str, flag: str, choices: Sequence[str]) -> list[str]:
    """Parse a comma list whose items must be among ``choices`` (errors list the known ones)."""
    items = split_list(text, flag)
    bad = [item for item in items if item not in choices]
    if bad:
        known = ", ".join(choices)
        raise BadInputError([f"{flag}: unknown value {item!r}; choose from: {known}" for item in bad])
    return _dedupe(items)


def expand_grid(
    *,
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    lrs: Sequence[float] = DEFAULT_LRS,
    schedulers: Sequence[str] = DEFAULT_SCHEDULERS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    train_sizes: Sequence[int | None] = (None,),
    epochs_by_size: Mapping[int | None, int] | None = None,
    **common: Any,
) -> list[RunConfig]:
    """Every combination of the grid axes as a RunConfig, plus the shared ``common`` fields.

    Axes: strategies, lrs, schedulers, ``train_sizes`` (``train_per_class``; None = all
    training samples) and seeds. Order: strategy, then lr, then scheduler, then training size,
    then seed (innermost), so the runs of one configuration follow each other. ``common`` takes
    the other RunConfig fields (epochs, batch_size, backbone, device, precision,
    limit_per_class); ``epochs_by_size`` (:func:`equal_step_epochs`) gives each training size
    its own epochs instead. Invalid values raise :class:`BadInputError` once per problem, not
    once per combination.
    """
    axes = (
        ("--strategies", strategies), ("--lrs", lrs), ("--schedulers", schedulers), ("--seeds", seeds),
        ("--train-per-class", train_sizes),
    )  # fmt: skip
    for flag, axis in axes:
        if len(axis) == 0:
            raise BadInputError(f"{flag}: give at least one value")
    configs: list[RunConfig] = []
    problems: list[str] = []
    for strategy, lr, scheduler, size, seed in itertools.product(strategies, lrs, schedulers, train_sizes, seeds):
        fields = dict(common, train_per_class=size)
        if epochs_by_size is not None:
            fields["epochs"] = epochs_by_size[size]
        try:
            configs.append(RunConfig(strategy=strategy, lr=lr, scheduler=scheduler, seed=seed, **fields))
        except BadInputError as exc:
            problems.extend(p for p in exc.problems if p not in problems)
        except TypeError as exc:  # an unknown field name: a programming error, but say which
            raise BadInputError(f"invalid run option: {exc}") from None
    if problems:
        raise BadInputError(problems)
    return configs
