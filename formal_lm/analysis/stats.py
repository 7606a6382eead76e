"""Summary statistics over seeds and tests between two groups of seeds, on plain numbers.

A *group* is a set of independent training runs (seeds) of one configuration; each run gives one
value per metric. This module works on one metric's per-seed values; comparing named groups over
several metrics (``compare_groups``: "same loss, different behaviour") is in
``formal_lm.analysis.comparison``, built on these tests. The rules (see ``docs/statistics.md``):

- **Intervals.** ``summarize`` gives a Student-t interval of the mean (default) or a BCa bootstrap
  interval. Both assume independent seeds; the t interval also assumes a roughly normal mean.
- **"Different".** ``difference_test``: a two-sided permutation test of the difference of means
  (exact when the number of relabellings is small), Welch's t-test beside it. It also says whether
  the group sizes *can* reach ``alpha`` at all (``min_attainable_p``, ``seeds_needed``) and how
  large a difference they detect with 80% power (``mde``, ``min_detectable_difference``).
- **"The same"** is in ``formal_lm.analysis.equivalence`` (TOST at a margin).
- **Paired groups.** ``paired_sign_flip_test``: a sign-flip test of per-seed differences, for
  groups that share seeds.

Every function checks its arguments and raises ``FormalLMError`` listing all problems found.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import numbers
from collections.abc import Sequence

import numpy as np

from formal_lm.errors import FormalLMError, Problem
from formal_lm.seeding import Stream, rng

EXACT_PERMUTATIONS = 20000  # enumerate every relabelling when there are at most this many
EXACT_SIGN_FLIPS = 1 << 20  # enumerate every sign vector up to 20 paired differences
DEFAULT_N_RESAMPLES = 10000
DEFAULT_N_BOOT = 10000

def _special():
    # scipy is imported lazily: the rest of formal_lm does not need it.
    from scipy import special
    return special


# ------------------------------------------------------------------------------------ checks
def _check_values(values, name: str, problems: list[Problem], *, min_n: int = 1) -> np.ndarray:
    """``values`` as a 1-D float array; appends a problem when empty, not 1-D or not finite."""
    try:
        v = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        problems.append(Problem(f"{name} is not a sequence of numbers",
                                "pass a list or 1-D array of per-seed floats"))
        return np.zeros(0)
    if v.ndim != 1:
        problems.append(Problem(f"{name} has shape {v.shape}, not a 1-D sequence",
                                "pass one value per seed"))
        return np.zeros(0)
    if len(v) < min_n:
        problems.append(Problem(f"{name} has {len(v)} values (at least {min_n} needed)",
                                "pass one value per seed"))
    bad = np.flatnonzero(~np.isfinite(v))
    if len(bad):
        problems.append(Problem(f"{name} has non-finite values at positions {bad.tolist()}",
                                "drop or fix the runs that produced NaN/inf"))
    return v


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _check_alpha(alpha, problems: list[Problem], *, upper: float = 1.0, name: str = "alpha"):
    if not (_is_real(alpha) and 0 < alpha < upper):
        problems.append(Problem(f"{name}={alpha!r} is outside (0, {upper:g})",
                                "use a level such as 0.05"))


def _check_sizes(n, m, problems: list[Problem]) -> None:
    for k, v in (("n", n), ("m", m)):
        if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1):
            problems.append(Problem(f"{k}={v!r} is not a positive int",
                                    "pass group sizes (seeds per group)"))


def _raise(problems: list[Problem]) -> None:
    if problems:
        raise FormalLMError(problems)


# ------------------------------------------------------------------------------------ summaries
@dataclasses.dataclass(frozen=True)
class Summary:
    """A metric over seeds: mean, standard deviation and a confidence interval of the mean.

    Attributes:
        values: the per-seed values, in the order given.
        n: the number of values.
        mean: their mean.
        std: their sample standard deviation (ddof=1); NaN when ``n == 1``.
        ci_low: lower end of the ``level`` confidence interval of the mean.
        ci_high: upper end. With ``n == 1`` (or all values equal) the interval is degenerate,
            ``ci_low == ci_high == mean``: one seed says nothing about seed-to-seed spread.
        level: the confidence level, e.g. 0.95.
        method: ``"t"`` (Student t) or ``"bca"`` (bias-corrected and accelerated bootstrap).
    """

    values: tuple[float, ...]
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    level: float
    method: str


def summarize(values: Sequence[float], *, level: float = 0.95, method: str = "t",
              seed: int = 0, n_boot: int = DEFAULT_N_BOOT) -> Summary:
    """Mean, std (ddof=1) and a confidence interval of the mean of per-seed values.

    ``method="t"``: ``mean +- t_{(1+level)/2, n-1} * std / sqrt(n)``, exact for normal values and
    the default (measured coverage of the 95% interval at n = 8: 0.95, see docs/statistics.md).
    ``method="bca"``: a BCa bootstrap interval from ``n_boot`` resamples drawn with ``seed``
    (bias correction from the share of resampled means below the mean, acceleration from the
    jackknife). It does not assume normality but undercovers at few seeds (measured 0.88 for a
    95% interval at n = 8 on normal data, 0.92 at n = 20); prefer ``"t"`` at few seeds.

    Args:
        values: one value per seed (at least one, all finite).
        level: confidence level in (0, 1).
        method: ``"t"`` or ``"bca"``.
        seed: seed of the bootstrap resamples (``"bca"`` only).
        n_boot: number of bootstrap resamples (``"bca"`` only).

    Returns:
        A ``Summary``; degenerate interval (``ci_low == ci_high == mean``) when ``n == 1`` or
        all values are equal.

    Raises:
        FormalLMError: no values, non-finite values, ``level`` outside (0, 1), unknown method.

    Example:
        >>> s = summarize([1.0, 2.0, 3.0])
        >>> s.mean, s.std, round(s.ci_low, 3), round(s.ci_high, 3)
        (2.0, 1.0, -0.484, 4.484)
        >>> summarize([5.0]).ci_low
        5.0
    """
    problems: list[Problem] = []
    v = _check_values(values, "values", problems)
    _check_alpha(level, problems, name="level")
    if method not in ("t", "bca"):
        problems.append(Problem(f"method={method!r} is unknown", "use 't' or 'bca'"))
    if method == "bca" and not (isinstance(n_boot, int) and n_boot >= 100):
        problems.append(Problem(f"n_boot={n_boot!r} is too small", "use at least 1000"))
    _raise(problems)
    n = len(v)
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else math.nan
    if n == 1 or np.all(v == v[0]):
        lo = hi = mean
    elif method == "t":
        half = float(_special().stdtrit(n - 1, 0.5 + level / 2)) * std / math.sqrt(n)
        lo, hi = mean - half, mean + half
    else:
        lo, hi = _bca(v, level, seed, n_boot)
    return Summary(tuple(float(x) for x in v), n, mean, std, float(lo), float(hi), float(level),
                   method)


def _bca(v: np.ndarray, level: float, seed: int, n_boot: int) -> tuple[float, float]:
    sp = _special()
    n, mean = len(v), v.mean()
    gen = rng(seed, Stream.BOOTSTRAP)
    means = v[gen.integers(0, n, size=(n_boot, n))].mean(1)
    below = (np.sum(means < mean) + 0.5 * np.sum(means == mean)) / n_boot
    z0 = sp.ndtri(np.clip(below, 0.5 / n_boot, 1 - 0.5 / n_boot))
    jack = (v.sum() - v) / (n - 1)
    d = jack.mean() - jack
    den = 6.0 * np.sum(d ** 2) ** 1.5
    a = np.sum(d ** 3) / den if den > 0 else 0.0
    z = sp.ndtri(np.array([0.5 - level / 2, 0.5 + level / 2]))
    q = sp.ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))
    lo, hi = np.quantile(means, q)
    return float(lo), float(hi)


# ------------------------------------------------------------------------------------ permutation
@functools.lru_cache(maxsize=32)
def _splits(m: int, n: int) -> np.ndarray:
    """int [C(m, n), n]: every choice of n of m positions (row 0 is 0..n-1)."""
    return np.array(list(itertools.combinations(range(m), n)), dtype=np.intp).reshape(-1, n)


def _permutation_p(x: np.ndarray, y: np.ndarray, seed: int, n_resamples: int) -> float:
    pooled = np.concatenate([x, y])
    n, m = len(x), len(pooled)
    observed = abs(x.mean() - y.mean())
    total = pooled.sum()
    exact = math.comb(m, n) <= EXACT_PERMUTATIONS
    if exact:
        sums = pooled[_splits(m, n)].sum(1)
    else:
        gen = rng(seed, Stream.BOOTSTRAP)
        sums = pooled[np.argsort(gen.random((n_resamples, m)), axis=1)[:, :n]].sum(1)
    diffs = np.abs(sums / n - (total - sums) / (m - n))
    # Splits as extreme as the observed one, up to rounding of the sums.
    hits = np.sum(diffs >= observed - 1e-10 * float(np.abs(pooled).max()))
    if exact:
        return float(hits / len(diffs))
    return float((hits + 1) / (len(diffs) + 1))


def permutation_test(x: Sequence[float], y: Sequence[float], *, seed: int = 0,
                     n_resamples: int = DEFAULT_N_RESAMPLES) -> float:
    """Two-sided permutation p-value of ``|mean(x) - mean(y)|`` under random relabelling.

    Exact (every split of the pooled values into groups of ``len(x)`` and ``len(y)``) when there
    are at most ``EXACT_PERMUTATIONS`` splits, which covers 8 vs 8 seeds; otherwise ``n_resamples``
    random relabellings drawn with ``seed`` and ``p = (hits + 1) / (n_resamples + 1)``. The
    smallest possible value is ``min_attainable_p(len(x), len(y))``.

    Raises:
        FormalLMError: an empty group, non-finite values, ``n_resamples < 1``.

    Example:
        >>> permutation_test([0, 0, 0], [1, 1, 1])  # 2 of the 20 splits are as extreme
        0.1
    """
    problems: list[Problem] = []
    xv = _check_values(x, "x", problems)
    yv = _check_values(y, "y", problems)
    if not (isinstance(n_resamples, int) and n_resamples >= 1):
        problems.append(Problem(f"n_resamples={n_resamples!r} is not a positive int"))
    _raise(problems)
    return _permutation_p(xv, yv, seed, n_resamples)


def min_attainable_p(n: int, m: int) -> float:
    """The smallest two-sided p an exact permutation test of means gives with groups of n and m.

    Without ties, the observed split is the only one as extreme as itself, except that with
    ``n == m`` swapping the groups gives the same ``|difference|``: the minimum is
    ``2 / C(n + m, n)`` when ``n == m`` and ``1 / C(n + m, n)`` otherwise. A test whose minimum
    is not below alpha cannot reject whatever the data (3 vs 3 seeds: 0.1). Ties only raise it.

    Raises:
        FormalLMError: ``n`` or ``m`` not a positive int.

    Example:
        >>> min_attainable_p(3, 3)
        0.1
        >>> min_attainable_p(8, 8) < 0.05
        True
    """
    problems: list[Problem] = []
    _check_sizes(n, m, problems)
    _raise(problems)
    return (2.0 if n == m else 1.0) / math.comb(int(n) + int(m), int(n))


def seeds_needed(alpha: float = 0.05) -> int:
    """The fewest seeds per group (equal groups) whose exact permutation test can reach alpha.

    Example:
        >>> seeds_needed(0.05), seeds_needed(0.01)
        (4, 5)
    """
    problems: list[Problem] = []
    _check_alpha(alpha, problems)
    _raise(problems)
    k = 1
    while min_attainable_p(k, k) >= alpha:
        k += 1
    return k


# ------------------------------------------------------------------------------------ difference
def _welch(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """(difference of means, standard error, Welch df, t); NaNs when n < 2 in a group."""
    d = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return d, math.nan, math.nan, math.nan
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se2 = vx + vy
    if se2 == 0:
        return d, 0.0, math.nan, math.nan
    df = se2 ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    return d, math.sqrt(se2), float(df), d / math.sqrt(se2)


def min_detectable_difference(n: int, m: int, std: float, *, alpha: float = 0.05,
                              power: float = 0.8) -> float:
    """The difference of means a two-sided level-``alpha`` test detects with ``power``.

    Normal theory: for normal values with common standard deviation ``std``, the pooled
    two-sample t statistic is noncentral t with ``df = n + m - 2`` and noncentrality
    ``delta / (std * sqrt(1/n + 1/m))``; this returns the ``delta`` at which
    ``P(|T| > t_{1-alpha/2, df}) = power`` (solved numerically). For large n it tends to
    ``(z_{1-alpha/2} + z_power) * std * sqrt(1/n + 1/m)``. The permutation test has about the
    same power (measured 0.80 at n = 8, see docs/statistics.md). Returns inf when
    ``n + m < 3`` (no degrees of freedom) and 0 when ``std == 0``.

    Example:
        >>> round(min_detectable_difference(8, 8, 1.0), 2)  # in standard deviations
        1.51
    """
    problems: list[Problem] = []
    _check_alpha(alpha, problems)
    _check_alpha(power, problems, name="power")
    if not (_is_real(std) and math.isfinite(std) and std >= 0):
        problems.append(Problem(f"std={std!r} is not a finite non-negative number"))
    _check_sizes(n, m, problems)
    if _is_real(alpha) and _is_real(power) and 0 < alpha < 1 and 0 < power <= alpha:
        problems.append(Problem(f"power={power!r} is not above alpha={alpha!r}",
                                "a test has power alpha at difference 0; use e.g. 0.8"))
    _raise(problems)
    df = n + m - 2
    if df < 1:
        return math.inf
    if std == 0:
        return 0.0
    sp = _special()
    tc = float(sp.stdtrit(df, 1 - alpha / 2))

    def shortfall(nc: float) -> float:
        return float(1 - sp.nctdtr(df, nc, tc) + sp.nctdtr(df, nc, -tc)) - power

    from scipy.optimize import brentq
    hi = 1.0
    while shortfall(hi) < 0:
        hi *= 2
    nc = brentq(shortfall, 0.0, hi, xtol=1e-10)
    return float(nc * std * math.sqrt(1 / n + 1 / m))


@dataclasses.dataclass(frozen=True)
class DifferenceTest:
    """Do the means of two groups differ? A permutation test, with Welch's t-test beside it.

    Attributes:
        diff: ``mean(x) - mean(y)``.
        n_x: size of x.
        n_y: size of y.
        permutation_p: two-sided permutation p of ``|diff|`` (see ``permutation_test``).
        welch_t: Welch's t statistic (NaN when a group has fewer than 2 values or both have zero
            variance).
        welch_p: its two-sided p (NaN likewise).
        alpha: the level.
        min_attainable_p: the smallest ``permutation_p`` these sizes can give: the exact
            ``min_attainable_p(n_x, n_y)``, or ``1 / (n_resamples + 1)`` if larger when the test
            is sampled.
        can_reach_alpha: ``min_attainable_p < alpha``. When False no data can make the groups
            differ at ``alpha``: add seeds.
        pooled_std: pooled standard deviation ``sqrt(((n_x-1) s_x^2 + (n_y-1) s_y^2) /
            (n_x + n_y - 2))`` (NaN when ``n_x + n_y < 3``).
        power: the power at which ``mde`` is computed (0.8).
        mde: the minimum detectable difference of means at ``power`` for these sizes and
            ``pooled_std`` (``min_detectable_difference``); inf when the test cannot reach alpha.
            A non-significant result rules out differences of about this size, not smaller ones.
        differs: ``permutation_p < alpha`` (always False when ``can_reach_alpha`` is False).
    """

    diff: float
    n_x: int
    n_y: int
    permutation_p: float
    welch_t: float
    welch_p: float
    alpha: float
    min_attainable_p: float
    can_reach_alpha: bool
    pooled_std: float
    power: float
    mde: float
    differs: bool


def difference_test(x: Sequence[float], y: Sequence[float], *, alpha: float = 0.05,
                    seed: int = 0, n_resamples: int = DEFAULT_N_RESAMPLES,
                    power: float = 0.8) -> DifferenceTest:
    """Tests whether the means of x and y differ (two-sided), and says what the test can detect.

    Args:
        x: per-seed values of one group (at least one, finite).
        y: per-seed values of the other group.
        alpha: level in (0, 1).
        seed: seed of the sampled permutations (used only when the test is not exact).
        n_resamples: sampled permutations when the test is not exact.
        power: power at which ``mde`` is reported.

    Returns:
        A ``DifferenceTest``; ``differs`` is ``permutation_p < alpha``.

    Raises:
        FormalLMError: empty groups, non-finite values, alpha or power outside (0, 1), power
            not above alpha.

    Example:
        >>> t = difference_test([0.1, 0.2, 0.3], [0.7, 0.8, 0.9])
        >>> t.permutation_p, t.min_attainable_p, t.can_reach_alpha, t.differs
        (0.1, 0.1, False, False)
        >>> difference_test([0, 1, 2, 3], [10, 11, 12, 13]).differs
        True
    """
    problems: list[Problem] = []
    xv = _check_values(x, "x", problems)
    yv = _check_values(y, "y", problems)
    _check_alpha(alpha, problems)
    _check_alpha(power, problems, name="power")
    if _is_real(alpha) and _is_real(power) and 0 < alpha < 1 and 0 < power <= alpha:
        problems.append(Problem(f"power={power!r} is not above alpha={alpha!r}", "use e.g. 0.8"))
    if not (isinstance(n_resamples, int) and n_resamples >= 1):
        problems.append(Problem(f"n_resamples={n_resamples!r} is not a positive int"))
    _raise(problems)
    n, m = len(xv), len(yv)
    p = _permutation_p(xv, yv, seed, n_resamples)
    floor = min_attainable_p(n, m)
    if math.comb(n + m, n) > EXACT_PERMUTATIONS:
        floor = max(floor, 1.0 / (n_resamples + 1))
    reach = floor < alpha
    d, se, df, t = _welch(xv, yv)
    wp = float(2 * _special().stdtr(df, -abs(t))) if math.isfinite(t) else math.nan
    ss = float(((xv - xv.mean()) ** 2).sum() + ((yv - yv.mean()) ** 2).sum())
    pooled = math.sqrt(ss / (n + m - 2)) if n + m >= 3 else math.nan
    mde = (min_detectable_difference(n, m, pooled, alpha=alpha, power=power)
           if reach and math.isfinite(pooled) else math.inf)
    return DifferenceTest(d, n, m, p, t, wp, float(alpha), float(floor), bool(reach), pooled,
                          float(power), mde, bool(reach and p < alpha))


# ------------------------------------------------------------------------------------ equivalence


def paired_sign_flip_test(diffs: Sequence[float], *, seed: int = 0,
                          n_resamples: int = DEFAULT_N_RESAMPLES) -> float:
    """Two-sided p of ``|mean(diffs)|`` when each paired difference's sign is flipped at random.

    For groups that share seeds (a model and its reparametrised copy): pass the per-seed
    differences. Exact (all ``2^n`` sign vectors) up to 20 differences, else ``n_resamples``
    random sign vectors drawn with ``seed`` and ``p = (hits + 1) / (n_resamples + 1)``. The
    smallest exact p is ``2 / 2^n`` (0.25 at 3 pairs, 0.0078 at 8).

    Raises:
        FormalLMError: no differences, non-finite values.

    Example:
        >>> paired_sign_flip_test([0.1, 0.2, 0.3])  # 2 of 8 sign vectors are as extreme
        0.25
    """
    problems: list[Problem] = []
    d = _check_values(diffs, "diffs", problems)
    if not (isinstance(n_resamples, int) and n_resamples >= 1):
        problems.append(Problem(f"n_resamples={n_resamples!r} is not a positive int"))
    _raise(problems)
    n = len(d)
    a = np.abs(d)
    observed = abs(d.sum())
    tol = 1e-10 * float(a.max()) * n
    if (1 << n) <= EXACT_SIGN_FLIPS:
        hits, chunk = 0, 1 << min(n, 14)
        low = ((np.arange(chunk)[:, None] >> np.arange(min(n, 14))) & 1) * 2 - 1  # [chunk, k]
        low_sums = low @ a[:min(n, 14)]
        for hi_bits in range(1 << max(0, n - 14)):
            signs = ((hi_bits >> np.arange(n - min(n, 14))) & 1) * 2 - 1
            s = low_sums + signs @ a[min(n, 14):]
            hits += int(np.sum(np.abs(s) >= observed - tol))
        return float(hits / (1 << n))
    gen = rng(seed, Stream.BOOTSTRAP)
    s = (gen.integers(0, 2, size=(n_resamples, n)) * 2 - 1) @ a
    return float((np.sum(np.abs(s) >= observed - tol) + 1) / (n_resamples + 1))


# ------------------------------------------------------------------------------------ margin
