"""Grid expansion and comma-list parsing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusioncli.errors import BadInputError
from fusioncli.sweep.grid import (
    expand_grid,
    parse_choices,
    parse_floats,
    parse_ints,
    split_list,
)
from fusioncli.config import RunConfig


def test_split_list_strips_spaces() -> None:
    assert split_list(" late , intermediate-add", "--strategies") == ["late", "intermediate-add"]


@pytest.mark.parametrize("text", ["", ",", "a,,b", "a,", " , a"])
def test_split_list_rejects_empty_items(text: str) -> None:
    with pytest.raises(BadInputError, match="--x: empty item"):
        split_list(text, "--x")


def test_parse_floats_accepts_scientific_notation() -> None:
    assert parse_floats("1e-4,1e-5, 0.001", "--lrs") == [1e-4, 1e-5, 0.001]


def test_parse_floats_names_every_bad_value() -> None:
    with pytest.raises(BadInputError) as info:
        parse_floats("1e-4,abc,-1,nan", "--lrs")
    problems = info.value.problems
    assert len(problems) == 3
    assert all(p.startswith("--lrs: ") for p in problems)
    assert "'abc'" in problems[0] and "'-1'" in problems[1] and "'nan'" in problems[2]


def test_parse_floats_drops_repeats_keeping_order() -> None:
    assert parse_floats("1e-5,1e-4,0.00001", "--lrs") == [1e-5, 1e-4]


def test_parse_ints() -> None:
    assert parse_ints("51, 52,53", "--seeds") == [51, 52, 53]
    with pytest.raises(BadInputError, match=r"--seeds: '1\.5' is not an integer"):
        parse_ints("51,1.5", "--seeds")


def test_parse_choices_lists_known_values() -> None:
    assert parse_choices("constant,cosine", "--schedulers", ("cosine", "constant")) == ["constant", "cosine"]
    with pytest.raises(BadInputError, match=r"--schedulers: unknown value 'step'; choose from: cosine, constant"):
        parse_choices("cosine,step", "--schedulers", ("cosine", "constant"))


@given(st.lists(st.floats(min_value=1e-9, max_value=10.0, allow_nan=False), min_size=1, max_size=6))
def test_parse_floats_round_trips_repr(values: list[float]) -> None:
    parsed = parse_floats(",".join(repr(v) for v in values), "--lrs")
    assert parsed == list(dict.fromkeys(values))


def test_default_grid_is_the_seed_notebooks() -> None:
    configs = expand_grid(epochs=1, device="cpu")
    assert len(configs) == 4 * 3 * 2 * 1
    strategies = ("late", "intermediate-concat", "intermediate-add", "intermediate-multiply")
    expected = list(itertools.product(strategies, (1e-4, 1e-5, 1e-6), ("cosine", "constant"), (51,)))
    assert [(c.strategy, c.lr, c.scheduler, c.seed) for c in configs] == expected


def test_expand_grid_order_and_common_fields() -> None:
    configs = expand_grid(
        strategies=["late", "intermediate-add"],
        lrs=[1e-3],
        schedulers=["cosine"],
        seeds=[1, 2, 3],
        epochs=2,
        batch_size=8,
        limit_per_class=10,
        device="cpu",
        precision="fp32",
    )
    assert [(c.strategy, c.seed) for c in configs] == [
        ("late", 1),
        ("late", 2),
        ("late", 3),
        ("intermediate-add", 1),
        ("intermediate-add", 2),
        ("intermediate-add", 3),
    ]
    assert all(isinstance(c, RunConfig) for c in configs)
    assert {(c.epochs, c.batch_size, c.limit_per_class, c.precision) for c in configs} == {(2, 8, 10, "fp32")}


def test_expand_grid_reports_a_bad_common_option_once() -> None:
    with pytest.raises(BadInputError) as info:
        expand_grid(strategies=["late", "intermediate-add"], lrs=[1e-3, 1e-4], epochs=0)
    assert len(info.value.problems) == 1
    assert "--epochs" in info.value.problems[0]


def test_expand_grid_rejects_an_empty_axis() -> None:
    with pytest.raises(BadInputError, match="--seeds: give at least one value"):
        expand_grid(seeds=[])


def test_parse_sizes_takes_counts_and_all() -> None:
    from fusioncli.sweep.grid import parse_sizes

    assert parse_sizes("100, 500,all,ALL,100", "--train-per-class") == [100, 500, None]
    with pytest.raises(BadInputError) as exc:
        parse_sizes("0,-3,1.5,abc,10", "--train-per-class")
    assert len(exc.value.problems) == 4 and all("whole number >= 1 or 'all'" in p for p in exc.value.problems)


def test_train_sizes_are_a_grid_axis_before_the_seed() -> None:
    configs = expand_grid(strategies=["late"], lrs=[1e-4], schedulers=["constant"], seeds=[1, 2], train_sizes=[50, None])
    assert [(c.train_per_class, c.seed) for c in configs] == [(50, 1), (50, 2), (None, 1), (None, 2)]
    assert [c.train_per_class for c in expand_grid(strategies=["late"], lrs=[1e-4], schedulers=["constant"])] == [None]
    with pytest.raises(BadInputError, match="--train-per-class: give at least one value"):
        expand_grid(train_sizes=[])


def test_equal_step_epochs() -> None:
    from fusioncli.sweep.grid import equal_step_epochs

    # 400 + 400 training samples, batch 16: 50 steps per epoch at full size, 4 epochs = 200 steps
    assert equal_step_epochs(4, 16, [400, 400], [25, 100, None]) == {25: 50, 100: 15, None: 4}
    # a size above the class counts is the full set; unequal classes count what each keeps
    assert equal_step_epochs(3, 10, [30, 10], [None, 1000, 10]) == {None: 3, 1000: 3, 10: 6}
    # --limit-per-class caps the full set first
    assert equal_step_epochs(2, 8, [400, 400], [4, None], limit_per_class=16) == {4: 8, None: 2}  # 4 vs 1 step
    # never below one epoch
    assert equal_step_epochs(1, 64, [10, 10], [1, None]) == {1: 1, None: 1}
