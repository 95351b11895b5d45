"""Small-sample statistics for the report: Student-t CDF / quantile, 95 % CIs, a paired t-test.

Written here (standard library + numpy) so scipy stays a test-only dependency; the tests check
every function against ``scipy.stats`` over a range of degrees of freedom and values.

The t distribution's tail is ``P(T > t) = I_x(df/2, 1/2) / 2`` with ``x = df / (df + t^2)``,
where ``I_x(a, b)`` is the regularized incomplete beta function, evaluated by its continued
fraction (modified Lentz, as in Numerical Recipes ``betacf``). The quantile inverts the tail by
Newton's method on ``log P(T > t)``, kept inside a bisection bracket so it always converges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_EPS = 1e-16  # relative accuracy asked of the continued fraction
_TINY = 1e-300  # keeps Lentz's divisions away from zero

EFFECT_THRESHOLDS = ((0.2, "negligible"), (0.5, "small"), (0.8, "medium"))  # Cohen's conventions
ALPHA = 0.05


def betainc(a: float, b: float, x: float, y: float | None = None) -> float:
    """The regularized incomplete beta function ``I_x(a, b)`` for ``a, b > 0``, ``0 <= x <= 1``.

    ``y`` is ``1 - x`` when the caller knows it more accurately than ``1 - x`` in floating point
    (x close to 1); the t tail passes ``t^2 / (df + t^2)`` for it.
    """
    if y is None:
        y = 1.0 - x
    if not (a > 0 and b > 0) or math.isnan(x):
        return math.nan
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    # The continued fraction converges fast only below the mean of the beta distribution;
    # above it, use I_x(a, b) = 1 - I_y(b, a).
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, y) / b


def _beta_cf(a: float, b: float, x: float) -> float:
    """The continued fraction of ``I_x(a, b)`` (modified Lentz's method)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    # Iterations grow like sqrt(a + b); the cap is far above what df of a few hundred needs.
    for m in range(1, 1000 + int(20 * math.sqrt(a + b))):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def _check_df(df: float) -> float:
    df = float(df)
    if not df > 0:  # also catches NaN
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    return df


def t_sf(t: float, df: float) -> float:
    """``P(T > t)`` for Student's t with ``df`` degrees of freedom (accurate far in the tail)."""
    df = _check_df(df)
    t = float(t)
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    t2 = t * t
    tail = 0.5 * betainc(0.5 * df, 0.5, df / (df + t2), t2 / (df + t2))
    return tail if t >= 0 else 1.0 - tail


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df`` degrees of freedom."""
    return t_sf(-float(t), df)  # symmetry; keeps the lower tail accurate too


def t_pdf(t: float, df: float) -> float:
    """The density of Student's t with ``df`` degrees of freedom."""
    df = _check_df(df)
    t = float(t)
    log_c = math.lgamma(0.5 * (df + 1.0)) - math.lgamma(0.5 * df) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - 0.5 * (df + 1.0) * math.log1p(t * t / df))


@lru_cache(maxsize=1024)
def t_isf(q: float, df: float) -> float:
    """The ``t`` with ``P(T > t) = q`` (inverse survival function), for ``0 < q < 1``."""
    df = _check_df(df)
    q = float(q)
    if not 0.0 < q < 1.0:
        if q == 0.0:
            return math.inf
        if q == 1.0:
            return -math.inf
        raise ValueError(f"a probability must be in [0, 1], got {q}")
    if q > 0.5:
        return -t_isf(1.0 - q, df)
    if q == 0.5:
        return 0.0
    # Bracket the root: sf(lo) > q >= sf(hi).
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > q:
        lo, hi = hi, hi * 2.0
        if math.isinf(hi):
            return math.inf
    log_q = math.log(q)
    t = 0.5 * (lo + hi)
    for _ in range(300):
        sf = t_sf(t, df)
        if sf > q:
            lo = t
        else:
            hi = t
        # Newton on log sf(t) - log q: nearly linear in the tail, where plain sf is not.
        pdf = t_pdf(t, df)
        step = (math.log(sf) - log_q) * sf / pdf if sf > 0 and pdf > 0 else math.nan
        new = t + step
        if not lo < new < hi:
            # Outside the bracket: bisect instead (geometrically when the bracket spans decades).
            new = math.sqrt(lo * hi) if lo > 0 and hi > 8 * lo else 0.5 * (lo + hi)
        if abs(new - t) <= 2e-15 * max(abs(new), 1e-300) or hi - lo <= 2e-15 * hi:
            return new
        t = new
    return t


def t_ppf(p: float, df: float) -> float:
    """The quantile of Student's t: the ``t`` with ``P(T <= t) = p``, for ``0 <= p <= 1``."""
    p = float(p)
    if math.isnan(p):
        return math.nan
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a probability must be in [0, 1], got {p}")
    if p < 0.5:
        return -t_isf(p, df)
    return t_isf(1.0 - p, df)


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
    return t_ppf(0.975, n - 1) * float(array.std(ddof=1)) / math.sqrt(n)


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

    Matches ``scipy.stats.ttest_rel`` for ordinary data; see :class:`PairedTest` for the
    degenerate cases. Raises ValueError when the lengths differ or a value is not finite.
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
    se = sd / math.sqrt(n)
    t = mean_diff / se
    p = min(1.0, 2.0 * t_sf(abs(t), df))
    half = t_ppf(0.975, df) * se
    dz = mean_diff / sd
    return PairedTest(
        n=n,
        mean_a=mean_a,
        mean_b=mean_b,
        mean_diff=mean_diff,
        sd_diff=sd,
        ci95=(mean_diff - half, mean_diff + half),
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
