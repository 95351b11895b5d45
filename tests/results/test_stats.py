"""Student t, confidence intervals and the paired t-test, checked against scipy.stats.

scipy is a dev-only dependency (the reference here); fusioncli computes these itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusioncli.results.stats import (
    betainc,
    ci95_half_width,
    effect_label,
    holm_adjust,
    mean_ci95,
    paired_test,
    t_cdf,
    t_isf,
    t_pdf,
    t_ppf,
    t_sf,
)

scipy_stats = pytest.importorskip("scipy.stats")
scipy_special = pytest.importorskip("scipy.special")

DFS = [0.5, 1, 2, 3, 4, 5, 7, 9, 19, 29, 50, 100, 1000, 1e5]
TS = [-1e6, -300, -40, -12, -5, -2.5, -1, -0.3, 0.0, 0.05, 0.7, 1.5, 2.0, 3.3, 6, 10, 25, 100, 1e4]
PS = [1e-12, 1e-8, 1e-5, 1e-3, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.6, 0.9, 0.95, 0.975, 0.99, 0.999, 1 - 1e-7]


@pytest.mark.parametrize("df", DFS)
def test_t_cdf_and_sf_match_scipy(df: float) -> None:
    for t in TS:
        # Relative accuracy in both tails, down to 1e-300 (cdf(-1e6, df=50) is ~1e-259).
        assert t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), rel=1e-9, abs=1e-300), t
        assert t_sf(t, df) == pytest.approx(scipy_stats.t.sf(t, df), rel=1e-9, abs=1e-300), t
        assert t_pdf(t, df) == pytest.approx(scipy_stats.t.pdf(t, df), rel=1e-9, abs=1e-300), t


def test_t_cdf_near_zero_is_exact_for_cauchy() -> None:
    # df = 1 is the Cauchy distribution: cdf = 1/2 + atan(t)/pi. scipy.stats.t.cdf(1e-8, 1) is off
    # by ~1.6e-9 here (0.5000000047); we are not.
    for t in (1e-8, 1e-4, 0.5, 3.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-14)


@pytest.mark.parametrize("df", DFS)
def test_t_ppf_matches_scipy(df: float) -> None:
    for p in PS:
        assert t_ppf(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9, abs=1e-12), p


@pytest.mark.parametrize("df", [1, 2, 5, 30])
def test_ppf_inverts_cdf(df: int) -> None:
    for p in (1e-6, 0.2, 0.5, 0.8, 0.975):
        assert t_cdf(t_ppf(p, df), df) == pytest.approx(p, rel=1e-11)


def test_well_known_quantiles() -> None:
    # Textbook table values of t_{0.975, df}.
    for df, value in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)]:
        assert t_ppf(0.975, df) == pytest.approx(value, abs=5e-4)
    assert t_ppf(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)  # tends to the normal


def test_edges_and_bad_input() -> None:
    assert t_ppf(0.5, 3) == 0.0
    assert t_ppf(0.0, 3) == -math.inf and t_ppf(1.0, 3) == math.inf
    assert t_isf(0.5, 3) == 0.0
    assert t_cdf(math.inf, 2) == 1.0 and t_cdf(-math.inf, 2) == 0.0
    assert math.isnan(t_cdf(math.nan, 2)) and math.isnan(t_ppf(math.nan, 2))
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_cdf(1.0, 0)
    with pytest.raises(ValueError, match="probability"):
        t_ppf(1.5, 3)


@settings(max_examples=60, deadline=None)
@given(
    st.floats(min_value=0.05, max_value=200.0),
    st.floats(min_value=0.05, max_value=200.0),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_betainc_matches_scipy(a: float, b: float, x: float) -> None:
    assert betainc(a, b, x) == pytest.approx(scipy_special.betainc(a, b, x), rel=1e-8, abs=1e-13)


def test_mean_ci95_on_known_data() -> None:
    # 1..5: mean 3, s = sqrt(2.5), t_{0.975,4} = 2.7764451051977987 -> half-width 1.9632432...
    mean, lo, hi = mean_ci95([1, 2, 3, 4, 5])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert mean == 3.0
    assert (lo, hi) == pytest.approx((3 - half, 3 + half), rel=1e-12)
    assert ci95_half_width([1, 2, 3, 4, 5]) == pytest.approx(half, rel=1e-12)
    # Two values: t_{0.975,1} = 12.706...; 90 and 92 -> 91 ± 12.706
    mean, lo, hi = mean_ci95([90.0, 92.0])
    assert mean == 91.0 and hi - mean == pytest.approx(12.706204736174698, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=-1e3, max_value=1e3), min_size=2, max_size=12))
def test_mean_ci95_matches_scipy_interval(values: list[float]) -> None:
    array = np.asarray(values)
    mean, lo, hi = mean_ci95(array)
    sem = scipy_stats.sem(array)
    if sem == 0:
        assert lo == hi == mean
        return
    ref_lo, ref_hi = scipy_stats.t.interval(0.95, len(array) - 1, loc=array.mean(), scale=sem)
    assert (lo, hi) == pytest.approx((ref_lo, ref_hi), rel=1e-9, abs=1e-9)


def test_mean_ci95_below_two_values() -> None:
    mean, lo, hi = mean_ci95([0.7])
    assert mean == 0.7 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in mean_ci95([]))
    assert mean_ci95([1.0, math.nan, 3.0])[0] == 2.0  # missing values are left out


@pytest.mark.parametrize("seed", range(8))
def test_paired_test_matches_scipy_ttest_rel(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 12))
    a = rng.normal(90, 2, n)
    b = a - rng.normal(rng.uniform(-1.5, 1.5), 1.0, n)
    ours = paired_test(a, b)
    ref = scipy_stats.ttest_rel(a, b)
    assert ours.n == n and ours.df == ref.df == n - 1
    assert ours.t == pytest.approx(ref.statistic, rel=1e-10)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-8)
    ci = ref.confidence_interval(0.95)
    assert ours.ci95 == pytest.approx((ci.low, ci.high), rel=1e-9)
    diff = a - b
    assert ours.cohen_dz == pytest.approx(diff.mean() / diff.std(ddof=1), rel=1e-12)
    assert ours.mean_a == pytest.approx(a.mean()) and ours.mean_b == pytest.approx(b.mean())
    assert ours.significant == (ref.pvalue < 0.05)
    assert ours.note is None


def test_paired_test_known_numbers() -> None:
    result = paired_test([1.0, 2.0, 3.5], [0.5, 1.0, 2.0])  # diffs 0.5, 1, 1.5: mean 1, sd 0.5
    assert result.mean_diff == pytest.approx(1.0) and result.sd_diff == pytest.approx(0.5)
    assert result.t == pytest.approx(1.0 / (0.5 / math.sqrt(3)))
    assert result.p == pytest.approx(0.07417990022744854, rel=1e-9)
    assert result.cohen_dz == pytest.approx(2.0) and result.effect == "large"
    assert not result.significant  # p = 0.074: a large effect that 3 seeds cannot confirm


def test_paired_test_needs_two_pairs() -> None:
    result = paired_test([0.9], [0.8])
    assert result.n == 1 and not result.significant
    assert math.isnan(result.t) and math.isnan(result.p) and math.isnan(result.ci95[0])
    assert "at least 2 pairs" in result.note


def test_identical_runs_are_no_difference() -> None:
    result = paired_test([90.0, 92.0, 91.0], [90.0, 92.0, 91.0])
    assert result.t == 0.0 and result.p == 1.0 and result.cohen_dz == 0.0
    assert not result.significant and result.effect == "negligible"
    assert "identical across seeds" in result.note


@pytest.mark.filterwarnings("ignore:Precision loss occurred")  # scipy's, on purpose
def test_constant_nonzero_difference_is_infinite_t() -> None:
    # 100 * 0.92 - 100 * 0.82 is not exactly 10.0 in floats: still "the same difference".
    result = paired_test([100 * 0.90, 100 * 0.92, 100 * 0.94], [100 * 0.80, 100 * 0.82, 100 * 0.84])
    assert result.t == math.inf and result.p == 0.0 and result.significant
    assert result.cohen_dz == math.inf and result.effect == "large"
    assert result.ci95 == pytest.approx((10.0, 10.0))
    assert "same on every seed" in result.note
    assert paired_test([1.0, 2.0], [3.0, 4.0]).t == -math.inf
    # scipy agrees on the sign and p when the spread is exactly 0
    ref = scipy_stats.ttest_rel([2.0, 3.0], [1.0, 2.0])
    assert ref.statistic == math.inf and ref.pvalue == 0.0


def test_paired_test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="equal lengths"):
        paired_test([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        paired_test([1, math.nan], [1, 2])


@pytest.mark.parametrize(
    "d, label",
    [(0.0, "negligible"), (-0.19, "negligible"), (0.2, "small"), (-0.49, "small"), (0.5, "medium"), (0.8, "large"),
     (-3.0, "large"), (math.inf, "large"), (math.nan, "unknown")],
)
def test_effect_labels(d: float, label: str) -> None:
    assert effect_label(d) == label


def test_holm_adjust_known_numbers() -> None:
    # sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> kept monotone at 0.06
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.2]) == [0.2]  # one test: unchanged
    assert holm_adjust([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    out = holm_adjust([math.nan, 0.02, 0.01])  # no test: not counted, stays NaN
    assert math.isnan(out[0]) and out[1:] == pytest.approx([0.02, 0.02])
    assert holm_adjust([]) == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_holm_adjust_bounds(pvalues: list[float]) -> None:
    adjusted = holm_adjust(pvalues)
    m = len(pvalues)
    for p, q in zip(pvalues, adjusted):
        assert p - 1e-15 <= q <= min(1.0, m * p) + 1e-15  # between raw p and Bonferroni
    # the order of the p-values is kept
    ordered = sorted(zip(pvalues, adjusted))
    assert all(a[1] <= b[1] + 1e-15 for a, b in zip(ordered, ordered[1:]))
