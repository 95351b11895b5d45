"""Small-sample statistics for the report: 95 % confidence intervals, a paired t-test, Holm.

The numerics are scipy's; what lives here is what the report needs around them: missing
values left out, n < 2 and zero-spread cases given a defined answer and a note, and a record
(:class:`PairedTest`) the renderers read.

scipy is imported inside the functions, not here: every ``fusioncli report`` builds CIs, and
``import scipy.stats`` costs more than pandas and pyarrow together. The CI path uses
``scipy.special.stdtrit`` (the t quantile, about a fifth of that); only ``--compare`` pays for
``scipy.stats``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EFFECT_THRESHOLDS = ((0.2, "negligible"), (0.5, "small"), (0.8, "medium"))  # Cohen's conventions
ALPHA = 0.05


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype="float64").ravel()
    return array[np.isfinite(array)]


def ci95_half_width(values: Sequence[float] | np.ndarray) -> float:
    """Half-width of the two-sided 95 % t confidence interval of the mean; NaN for n < 2.

    ``t_{0.975, n-1} * s / sqrt(n)`` with the sample std ``s`` (ddof = 1). Non-finite values
    (missing metrics) are left out.
    """
    array = _finite(values)
    n = len(array)
    if n < 2:
        return math.nan  # one value says nothing about the spread
    from scipy.special import stdtrit  # the t quantile, without importing scipy.stats

    return float(stdtrit(n - 1, 0.975)) * float(array.std(ddof=1)) / math.sqrt(n)


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean and its 95 % confidence interval (Student t, n - 1 df).

    The interval needs n >= 2 values: with one, lo and hi are NaN; with none, all three are.
    Non-finite values (missing metrics) are left out.
    """
    array = _finite(values)
    if not len(array):
        return math.nan, math.nan, math.nan
    mean = float(array.mean())
    half = ci95_half_width(array)
    return mean, mean - half, mean + half


def effect_label(d: float) -> str:
    """Cohen's words for an effect size: negligible / small / medium / large (|d| < 0.2 / 0.5 / 0.8)."""
    if math.isnan(d):
        return "unknown"
    for bound, word in EFFECT_THRESHOLDS:
        if abs(d) < bound:
            return word
    return "large"


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test of ``a - b`` over pairs (e.g. two configurations' runs with equal seeds).

    ``note`` is None for an ordinary test and says what happened in the degenerate cases:

    * n < 2: no test (``t``, ``p``, ``ci95`` and ``cohen_dz`` are NaN, ``significant`` False).
    * every difference equal and zero ("identical across seeds"): ``t = 0``, ``p = 1``,
      ``cohen_dz = 0`` -- no evidence of any difference.
    * every difference equal and non-zero (sd 0): ``t = ±inf``, ``p = 0``, ``cohen_dz = ±inf``,
      CI = the difference itself; significant. A spread this small is real only with many seeds.

    "Equal" allows float noise: sd <= 1e-12 * the largest |value| counts as 0, so 92.00000000000001
    - 82 and 90 - 80 are the same difference.
    """

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float  # mean of a - b
    sd_diff: float  # sample std of a - b (ddof = 1)
    ci95: tuple[float, float]  # 95 % CI of the mean difference
    t: float
    df: int
    p: float  # two-sided
    cohen_dz: float  # mean_diff / sd_diff
    effect: str  # negligible / small / medium / large (from |cohen_dz|)
    significant: bool  # p < alpha
    alpha: float = ALPHA
    note: str | None = None


def paired_test(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, alpha: float = ALPHA
) -> PairedTest:
    """Paired two-sided t-test of ``a`` vs ``b`` (``a[i]`` and ``b[i]`` are one pair).

    The test is ``scipy.stats.ttest_rel``. The n < 2 and zero-spread cases are answered here
    first (see :class:`PairedTest`): scipy gives NaN and a warning for n < 2 and for all-zero
    differences, and a huge finite t with a precision-loss warning when the differences are
    equal but for float noise. Raises ValueError when the lengths differ or a value is not finite.
    """
    xa = np.asarray(a, dtype="float64").ravel()
    xb = np.asarray(b, dtype="float64").ravel()
    if xa.shape != xb.shape:
        raise ValueError(f"paired samples need equal lengths, got {len(xa)} and {len(xb)}")
    if not (np.isfinite(xa).all() and np.isfinite(xb).all()):
        raise ValueError("paired samples must be finite numbers")
    n = len(xa)
    nan = math.nan
    mean_a = float(xa.mean()) if n else nan
    mean_b = float(xb.mean()) if n else nan
    diff = xa - xb
    mean_diff = float(diff.mean()) if n else nan
    if n < 2:
        return PairedTest(
            n=n,
            mean_a=mean_a,
            mean_b=mean_b,
            mean_diff=mean_diff,
            sd_diff=nan,
            ci95=(nan, nan),
            t=nan,
            df=max(n - 1, 0),
            p=nan,
            cohen_dz=nan,
            effect="unknown",
            significant=False,
            alpha=alpha,
            note=f"no test: a paired test needs at least 2 pairs, got {n}",
        )
    df = n - 1
    sd = float(diff.std(ddof=1))
    scale = max(float(np.abs(xa).max()), float(np.abs(xb).max()), 1e-300)
    if sd <= 1e-12 * scale:
        if abs(mean_diff) <= 1e-12 * scale:
            return PairedTest(
                n=n,
                mean_a=mean_a,
                mean_b=mean_b,
                mean_diff=0.0,
                sd_diff=0.0,
                ci95=(0.0, 0.0),
                t=0.0,
                df=df,
                p=1.0,
                cohen_dz=0.0,
                effect="negligible",
                significant=False,
                alpha=alpha,
                note="identical across seeds: every difference is 0",
            )
        sign = math.copysign(math.inf, mean_diff)
        return PairedTest(
            n=n,
            mean_a=mean_a,
            mean_b=mean_b,
            mean_diff=mean_diff,
            sd_diff=0.0,
            ci95=(mean_diff, mean_diff),
            t=sign,
            df=df,
            p=0.0,
            cohen_dz=sign,
            effect="large",
            significant=True,
            alpha=alpha,
            note="the difference is the same on every seed (sd 0): t is infinite",
        )
    from scipy.stats import ttest_rel  # only --compare gets here; scipy.stats is slow to import

    result = ttest_rel(xa, xb)
    t, p = float(result.statistic), float(result.pvalue)
    ci = result.confidence_interval(0.95)
    dz = mean_diff / sd
    return PairedTest(
        n=n,
        mean_a=mean_a,
        mean_b=mean_b,
        mean_diff=mean_diff,
        sd_diff=sd,
        ci95=(float(ci.low), float(ci.high)),
        t=t,
        df=df,
        p=p,
        cohen_dz=dz,
        effect=effect_label(dz),
        significant=p < alpha,
        alpha=alpha,
    )


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given; NaN (no test) stays NaN.

    With m real tests sorted so that p(1) <= ... <= p(m), the adjusted p(i) is
    max over j <= i of min(1, (m - j + 1) p(j)): rejecting where it is below alpha keeps the
    chance of any false "significant" among the m tests at most alpha (Holm 1979), and it never
    rejects less than plain Bonferroni. One test: the p-value itself.
    """
    values = [float(p) for p in pvalues]
    tested = sorted((p, i) for i, p in enumerate(values) if not math.isnan(p))
    m = len(tested)
    adjusted = [math.nan] * len(values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
