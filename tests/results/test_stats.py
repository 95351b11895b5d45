"""Confidence intervals, the paired t-test and Holm's adjustment, checked against scipy.stats
and textbook values.

The numerics are scipy's; these tests pin what fusioncli adds around them (which quantile, the
degenerate cases, missing values) and that the report path does not import scipy.stats.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats as scipy_stats
from hypothesis import given, settings
from hypothesis import strategies as st

from fusioncli.results.stats import (
    ci95_half_width,
    effect_label,
    holm_adjust,
    mean_ci95,
    paired_test,
)


@pytest.mark.parametrize("df, value", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)])
def test_ci_uses_the_textbook_t_quantile(df: int, value: float) -> None:
    # Textbook table values of t_{0.975, df}: the half-width is t_{0.975, n-1} * s / sqrt(n).
    values = np.arange(df + 1, dtype="float64") ** 1.5
    sem = values.std(ddof=1) / math.sqrt(len(values))
    assert ci95_half_width(values) / sem == pytest.approx(value, abs=5e-4)


def test_report_path_does_not_import_scipy_stats() -> None:
    # Every `fusioncli report` builds CIs: importing this module must not load scipy at all, and
    # a CI only scipy.special (import scipy.stats costs more than pandas and pyarrow together).
    code = (
        "import sys\n"
        "import fusioncli.results.stats as s\n"
        "assert 'scipy' not in sys.modules, 'scipy imported with fusioncli.results.stats'\n"
        "s.mean_ci95([1.0, 2.0, 4.0])\n"
        "assert 'scipy.special' in sys.modules\n"
        "assert 'scipy.stats' not in sys.modules, 'mean_ci95 imported scipy.stats'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


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
