"""`report --compare`: selectors, pairing by seed, the paired test per configuration pair, errors."""

from __future__ import annotations

import io
import json
import math

import pandas as pd
import pytest
from results_fakes import record

from fusioncli.errors import BadInputError
from fusioncli.results.compare import (
    build_comparison,
    format_p,
    parse_selector,
    render_comparison,
    resolve_metric,
)
from fusioncli.results.stats import paired_test
from fusioncli.results.store import runs_frame

scipy_stats = pytest.importorskip("scipy.stats")

# Accuracies (fractions) per seed: late beats gmu by about 2 points, with seed-to-seed noise
# that the pairing cancels (both move together with the seed).
LATE = {0: 0.900, 1: 0.925, 2: 0.880, 3: 0.910, 4: 0.935}
GMU = {0: 0.882, 1: 0.903, 2: 0.862, 3: 0.887, 4: 0.916}


def _runs(*records):
    return runs_frame(list(records))


def _pairs(strategies=("late", "gmu"), seeds=range(5), **kw):
    table = {"late": LATE, "gmu": GMU}
    return [record(s, seed, accuracy=table[s][seed], **kw) for s in strategies for seed in seeds]


def test_parse_selector() -> None:
    assert parse_selector("late").filters == (("strategy", ("late",)),)
    sel = parse_selector("strategy=late, lr=1e-4")
    assert sel.filters == (("strategy", ("late",)), ("lr", ("1e-4",))) and sel.keys == ["strategy", "lr"]
    assert parse_selector("modality_dropout=0.3").keys == ["modality_dropout"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("strategy=late,gmu", "'gmu' in selector A is not KEY=VALUE"),
        ("seed=1", "runs are paired by seed"),
        ("colour=red", "unknown key 'colour'"),
        ("strategy=late,strategy=gmu", "names 'strategy' twice"),
        ("", "empty"),
        ("strategy=", "not KEY=VALUE"),
    ],
)
def test_bad_selectors(text: str, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        parse_selector(text, "A")


def test_resolve_metric() -> None:
    assert resolve_metric(None).key == "accuracy_pct"
    assert resolve_metric("f1").key == "f1_macro_pct"
    assert resolve_metric("train time (s)").key == "train_time_s"
    assert resolve_metric("robust").key == "robust_auc_pct"
    for bad in ("params", "speed"):
        with pytest.raises(BadInputError, match="--metric"):
            resolve_metric(bad)


def test_pairs_by_seed_and_matches_scipy() -> None:
    # late has seeds 0-3, gmu seeds 1-4: only 1, 2, 3 pair up.
    runs = _runs(*_pairs(("late",), range(4)), *_pairs(("gmu",), range(1, 5)))
    comparison = build_comparison(runs, "late", "gmu")
    assert len(comparison.rows) == 1
    row = comparison.rows[0]
    assert row.seeds == [1, 2, 3] and (row.a_label, row.b_label) == ("late", "gmu")
    a = [100 * LATE[s] for s in (1, 2, 3)]
    b = [100 * GMU[s] for s in (1, 2, 3)]
    ref = scipy_stats.ttest_rel(a, b)
    assert row.test.n == 3 and row.test.df == 2
    assert row.test.t == pytest.approx(ref.statistic, rel=1e-9)
    assert row.test.p == pytest.approx(ref.pvalue, rel=1e-8)
    assert row.test.mean_diff == pytest.approx(sum(a) / 3 - sum(b) / 3)
    assert len(row.run_ids_a) == len(row.run_ids_b) == 3


def test_verdict_says_who_is_better_with_effect_size() -> None:
    comparison = build_comparison(_runs(*_pairs()), "late", "gmu")
    test = comparison.rows[0].test
    assert test.significant and test.effect == "large"
    assert comparison.rows[0].verdict.startswith(f"late is better than gmu by {test.mean_diff:.2f} points of accuracy")
    assert "large effect" in comparison.rows[0].verdict
    # Swapping the sides swaps the sign but not the verdict.
    swapped = build_comparison(_runs(*_pairs()), "gmu", "late").rows[0]
    assert swapped.test.mean_diff == pytest.approx(-test.mean_diff)
    assert swapped.verdict.startswith("late is better than gmu")


def test_lower_is_better_metrics() -> None:
    records = [record("late", s, train_seconds=10.0 + s) for s in range(3)]
    records += [record("gmu", s, train_seconds=12.0 + s + 0.1 * (s % 2)) for s in range(3)]
    row = build_comparison(_runs(*records), "late", "gmu", metric="time").rows[0]
    assert row.test.mean_diff < 0 and row.verdict.startswith("late is better than gmu by")
    assert " s of train time" in row.verdict


def test_no_significant_difference() -> None:
    records = [record("late", s, accuracy=a) for s, a in enumerate((0.90, 0.92, 0.91))]
    records += [record("gmu", s, accuracy=a) for s, a in enumerate((0.91, 0.90, 0.915))]
    row = build_comparison(_runs(*records), "late", "gmu").rows[0]
    assert not row.test.significant
    assert row.verdict.startswith("no significant difference between late and gmu (p = ")


def test_identical_results() -> None:
    records = [record(s, seed, accuracy=acc) for s in ("late", "gmu") for seed, acc in ((0, 0.9), (1, 0.95))]
    row = build_comparison(_runs(*records), "late", "gmu").rows[0]
    assert row.test.p == 1.0 and "identical on every seed" in row.verdict


def test_one_row_per_matched_pair_of_configurations() -> None:
    runs = _runs(*_pairs(lr=1e-3), *_pairs(lr=1e-4))
    comparison = build_comparison(runs, "late", "gmu")
    assert len(comparison.rows) == 2
    assert sorted(row.context["lr"] for row in comparison.rows) == [1e-4, 1e-3]
    assert all(row.test.n == 5 for row in comparison.rows)
    # Naming lr in the selectors compares across learning rates instead.
    across = build_comparison(runs, "strategy=late,lr=1e-3", "strategy=late,lr=1e-4")
    assert len(across.rows) == 1 and across.rows[0].a_label == "late lr=1e-3"
    assert across.rows[0].test.mean_diff == pytest.approx(0.0, abs=1e-9)


def test_several_configurations_on_one_side_each_get_a_row() -> None:
    runs = _runs(*_pairs(("late",), lr=1e-3), *_pairs(("gmu",), lr=1e-3), *_pairs(("gmu",), lr=1e-4))
    # A = every late run, B = gmu at any lr: lr is not named, so only lr=1e-3 pairs.
    assert len(build_comparison(runs, "late", "gmu").rows) == 1
    # A field named by either side may differ between A and B: late (lr=1e-3) vs gmu lr=1e-4.
    rows = build_comparison(runs, "strategy=late", "strategy=gmu,lr=1e-4").rows
    assert [(r.a_label, r.b_label) for r in rows] == [("late lr=1e-3", "gmu lr=1e-4")]


def test_mismatched_configs_are_rejected() -> None:
    runs = _runs(*_pairs(("late",), lr=1e-3), *_pairs(("gmu",), lr=1e-4))
    with pytest.raises(BadInputError) as info:
        build_comparison(runs, "late", "gmu")
    assert "no run of A (late) matches a run of B (gmu)" in info.value.problems[0]
    assert "lr: A has 1e-3; B has 1e-4" in info.value.problems
    assert "name a differing field in both selectors" in info.value.hint


def test_different_datasets_do_not_pair() -> None:
    runs = _runs(*_pairs(("late",)), *_pairs(("gmu",), fingerprint="another-dataset"))
    with pytest.raises(BadInputError) as info:
        build_comparison(runs, "late", "gmu")
    assert any(p.startswith("dataset_fingerprint: A has") for p in info.value.problems)


def test_modality_dropout_as_a_selector() -> None:
    records = [record("late", s, accuracy=LATE[s], modality_dropout=0.3) for s in range(3)]
    records += [record("late", s, accuracy=GMU[s]) for s in range(3)]
    row = build_comparison(_runs(*records), "modality_dropout=0.3", "modality_dropout=0").rows[0]
    assert (row.a_label, row.b_label) == ("modality_dropout=0.3", "modality_dropout=0") and row.test.n == 3


@pytest.mark.parametrize(
    "a, b, seeds_a, seeds_b, message",
    [
        ("early", "gmu", range(3), range(3), "no finished runs with accuracy (%) match A (early)"),
        ("late", "mmtm", range(3), range(3), "match B (mmtm)"),
        ("late", "gmu", (0, 1), (2, 3), "A and B share no seed (A has seeds 0,1; B has seeds 2,3)"),
        ("late", "gmu", (0, 1), (1, 2), "a paired test needs at least 2 seeds shared by A and B; found only 1"),
        ("late", "strategy=late", range(3), range(3), "select the same runs"),
    ],
)
def test_errors(a: str, b: str, seeds_a, seeds_b, message: str) -> None:
    runs = _runs(*_pairs(("late",), seeds_a), *_pairs(("gmu",), seeds_b))
    with pytest.raises(BadInputError) as info:
        build_comparison(runs, a, b)
    assert message in info.value.problems[0]
    if "seed" in message:
        assert "--seeds" in info.value.hint


def test_unknown_strategy_hint_lists_the_store() -> None:
    with pytest.raises(BadInputError) as info:
        build_comparison(_runs(*_pairs()), "early", "gmu")
    assert "strategy: gmu, late" in info.value.hint


def test_a_pair_with_one_seed_is_shown_without_a_test_next_to_tested_ones() -> None:
    records = _pairs(lr=1e-3) + _pairs(seeds=(0,), lr=1e-4)
    rows = {row.context["lr"]: row for row in build_comparison(_runs(*records), "late", "gmu").rows}
    assert rows[1e-3].test.n == 5 and rows[1e-3].test.significant
    assert rows[1e-4].test.n == 1 and math.isnan(rows[1e-4].test.p)
    assert rows[1e-4].verdict.startswith("no test: 1 shared seed(s)")


def test_failed_runs_and_filters_are_respected() -> None:
    records = _pairs(seeds=range(3))
    records.append(record("gmu", 3, status="failed", error="x"))
    records.append(record("late", 3, accuracy=0.5))
    comparison = build_comparison(_runs(*records), "late", "gmu")
    assert comparison.rows[0].seeds == [0, 1, 2]
    with pytest.raises(BadInputError, match="no finished runs"):
        build_comparison(_runs(*records), "late", "gmu", filters=["lr=1e-3"])


def test_empty_store() -> None:
    with pytest.raises(BadInputError, match="no runs yet"):
        build_comparison(runs_frame([]), "late", "gmu")


def test_format_p() -> None:
    assert [format_p(p) for p in (0.0031234, 0.41, 2.34e-5, 1.0, 0.0, math.nan)] == [
        "0.0031",
        "0.41",
        "2.3e-05",
        "1",
        "0",
        "-",
    ]


def test_every_format() -> None:
    runs = _runs(*_pairs(lr=1e-3), *_pairs(lr=1e-4))
    comparison = build_comparison(runs, "late", "gmu")
    back = pd.read_csv(io.StringIO(render_comparison(comparison, "csv")))
    assert len(back) == 2
    for column in ("lr", "a", "b", "n", "seeds", "mean_a", "mean_b", "mean_diff", "diff_ci95_lo", "t", "df", "p"):
        assert column in back.columns
    assert set(back["effect"]) == {"large"} and back["significant"].all()
    expected = paired_test([100 * LATE[s] for s in range(5)], [100 * GMU[s] for s in range(5)])
    assert back.loc[0, "p"] == pytest.approx(expected.p, rel=1e-9)
    assert back.loc[0, "cohen_dz"] == pytest.approx(expected.cohen_dz, rel=1e-9)
    rows = json.loads(render_comparison(comparison, "json"))
    assert rows[0]["seeds"] == "0,1,2,3,4" and rows[0]["verdict"].startswith("late is better")
    md = render_comparison(comparison, "markdown")
    header = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    assert header[:4] == ["lr", "A", "B", "n"] and "Cohen's dz" in header and "A - B [95% CI]" in header
    assert "Verdict (lr=1e-3): late is better than gmu" in md
    tex = render_comparison(comparison, "latex")
    assert "\\begin{tabular}" in tex and "% verdict (lr=1e-4)" in tex
    assert render_comparison(comparison, "table").caption.count("verdict") == 2


def test_several_rows_are_judged_by_holm_adjusted_p() -> None:
    # Two learning rates, each with a difference that is significant on its own (0.025 < p < 0.05)
    # but not once the two tests are accounted for (Holm doubles the smaller p).
    late = {0: 0.90, 1: 0.92, 2: 0.88, 3: 0.91}
    gaps = {1e-3: (0.01, 0.02, 0.03, 0.01), 1e-4: (0.012, 0.02, 0.03, 0.01)}
    records = []
    for lr, gap in gaps.items():
        for seed, g in zip(late, gap):
            records += [record("late", seed, accuracy=late[seed], lr=lr), record("gmu", seed, accuracy=late[seed] - g, lr=lr)]
    comparison = build_comparison(_runs(*records), "late", "gmu")
    assert len(comparison.rows) == 2
    for row in comparison.rows:
        assert 0.025 < row.test.p < 0.05 and row.test.significant  # alone: significant
        assert row.p_adjusted >= 0.05 and not row.significant
        assert row.verdict.startswith("no significant difference between late and gmu (p = Holm-adjusted ")
    back = pd.read_csv(io.StringIO(render_comparison(comparison, "csv")))
    assert not back["significant"].any() and (back["p_holm"] >= back["p"]).all()
    md = render_comparison(comparison, "markdown")
    assert "p (Holm)" in md.splitlines()[0] and "Holm-Bonferroni" in md


def test_one_row_is_not_adjusted() -> None:
    comparison = build_comparison(_runs(*_pairs()), "late", "gmu")
    (row,) = comparison.rows
    assert row.p_adjusted == row.test.p and row.significant
    assert "Holm" not in row.verdict and "p (Holm)" not in render_comparison(comparison, "markdown")
