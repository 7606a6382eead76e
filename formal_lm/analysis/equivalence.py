"""Equivalence of two groups of seeds at a stated margin ("the same"), and the default margin.

``equivalence_test``: two one-sided Welch t-tests (TOST) that the difference of means lies
inside ``(-margin, margin)``. Overlapping confidence intervals are *not* evidence of sameness,
and neither is a non-significant difference test. ``default_margin`` gives a margin of one
pooled seed-to-seed standard deviation. See ``docs/statistics.md``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from formal_lm.analysis.stats import (_check_alpha, _check_values, _is_real, _raise, _special,
                                      _welch)
from formal_lm.errors import Problem


@dataclasses.dataclass(frozen=True)
class EquivalenceTest:
    """Is ``|mean(x) - mean(y)| < margin``? Two one-sided Welch t-tests (TOST).

    ``diff``, ``n_x`` and ``n_y`` are as in ``DifferenceTest``: ``mean(x) - mean(y)`` and the
    sizes of x and y.

    Attributes:
        margin: the equivalence margin, in the metric's units.
        alpha: the level of each one-sided test (and of the equivalence claim).
        se: standard error of ``diff`` (Welch).
        df: Welch-Satterthwaite degrees of freedom (NaN when ``se == 0``).
        ci_low: lower end of the ``1 - 2 alpha`` (90% for alpha = 0.05) Welch CI of ``diff``.
        ci_high: upper end.
        p_lower: p of H0 ``diff <= -margin`` against ``diff > -margin``.
        p_upper: p of H0 ``diff >= margin`` against ``diff < margin``.
        p: ``max(p_lower, p_upper)``, the TOST p-value.
        equivalent: ``p < alpha``; the same as ``-margin < ci_low and ci_high < margin``.
            False (with NaN p's) when a group has fewer than 2 values.
    """

    diff: float
    n_x: int
    n_y: int
    margin: float
    alpha: float
    se: float
    df: float
    ci_low: float
    ci_high: float
    p_lower: float
    p_upper: float
    p: float
    equivalent: bool


def equivalence_test(x: Sequence[float], y: Sequence[float], *, margin: float,
                     alpha: float = 0.05) -> EquivalenceTest:
    """Tests that the means of x and y are within ``margin`` of each other (TOST, Welch).

    With ``d = mean(x) - mean(y)``, Welch standard error ``se`` and df ``nu``:
    ``p_lower = P(T_nu > (d + margin) / se)``, ``p_upper = P(T_nu < (d - margin) / se)`` and
    ``p = max(p_lower, p_upper)``. Equivalence is claimed when ``p < alpha``, i.e. when the
    ``1 - 2 alpha`` CI ``d +- t_{1-alpha, nu} se`` lies inside ``(-margin, margin)``. The chance
    of claiming it when the true difference is ``margin`` is at most alpha (measured 0.04 at
    n = 8 with a one-sd margin). When both groups have zero variance, ``se == 0`` and the
    groups are equivalent exactly when ``|d| < margin``.

    Args:
        x: per-seed values of one group (finite; at least 2 to test).
        y: per-seed values of the other group.
        margin: the largest difference of means that counts as "the same", in the metric's
            units; the caller chooses it (``default_margin`` gives a data-derived one).
        alpha: level in (0, 0.5).

    Raises:
        FormalLMError: empty groups, non-finite values, margin <= 0 or not finite, alpha outside
            (0, 0.5).

    Example:
        >>> e = equivalence_test([1.00, 1.01, 0.99, 1.00], [1.00, 1.02, 1.01, 0.99], margin=0.05)
        >>> e.equivalent, round(e.p, 4)
        (True, 0.001)
        >>> equivalence_test([1.0, 1.2, 0.8], [1.5, 1.7, 1.3], margin=0.05).equivalent
        False
    """
    problems: list[Problem] = []
    xv = _check_values(x, "x", problems)
    yv = _check_values(y, "y", problems)
    if not (_is_real(margin) and math.isfinite(margin) and margin > 0):
        problems.append(Problem(f"margin={margin!r} is not a finite number > 0",
                                "give the largest difference that counts as the same, in the "
                                "metric's units (e.g. default_margin(...))"))
    _check_alpha(alpha, problems, upper=0.5)
    _raise(problems)
    d, se, df, _ = _welch(xv, yv)
    n, m = len(xv), len(yv)
    if math.isnan(se):
        nan = math.nan
        return EquivalenceTest(d, n, m, float(margin), float(alpha), nan, nan, nan, nan, nan, nan,
                               nan, False)
    if se == 0:
        pl = 0.0 if d > -margin else 1.0
        pu = 0.0 if d < margin else 1.0
        lo = hi = d
    else:
        sp = _special()
        pl = float(sp.stdtr(df, -(d + margin) / se))
        pu = float(sp.stdtr(df, (d - margin) / se))
        half = float(sp.stdtrit(df, 1 - alpha)) * se
        lo, hi = d - half, d + half
    p = max(pl, pu)
    return EquivalenceTest(d, n, m, float(margin), float(alpha), se, df, lo, hi, pl, pu, p,
                           bool(p < alpha))


# ------------------------------------------------------------------------------------ paired


def default_margin(values_by_group: Mapping[str, Sequence[float]], *, k: float = 1.0) -> float:
    """The default equivalence margin: ``k`` pooled seed-to-seed standard deviations.

    ``sqrt(sum_g (n_g - 1) s_g^2 / sum_g (n_g - 1))`` over every group with at least 2 values,
    times ``k`` (default 1). Why: "two groups have the same loss" then means that switching
    group moves the mean loss by less than re-running one configuration with a new seed moves a
    single run, a statement in the metric's own units that needs no loss floor (so it works for
    KL, whose floor is 0) and is the same for every pair. Pooling over all groups gives it the
    most degrees of freedom. Costs: the margin is estimated from the data being tested (the
    measured false-equivalence rate stays below alpha: 0.028 at n = 8, 3 groups, true
    difference one true sd; see docs/statistics.md), and one sd is a tight margin for few
    seeds: at n = 8 per group TOST shows two truly identical groups equivalent only 22% of the
    time (74% at n = 16, 85% at n = 20). Pass a margin that matters for the application when
    there is one.

    Args:
        values_by_group: {group: per-seed values of the loss metric}.
        k: the margin in pooled standard deviations (> 0).

    Raises:
        FormalLMError: no group with 2 values, non-finite values, k <= 0, or every group
            constant (the pooled sd is 0: give a margin explicitly).

    Example:
        >>> default_margin({"a": [1.0, 2.0, 3.0], "b": [2.0, 2.0, 5.0]})
        1.4142135623730951
    """
    problems: list[Problem] = []
    ss, dof = 0.0, 0
    for g, vals in values_by_group.items():
        v = _check_values(vals, f"group {g!r}", problems)
        if len(v) > 1 and np.all(np.isfinite(v)):
            ss += float(((v - v.mean()) ** 2).sum())
            dof += len(v) - 1
    if not (_is_real(k) and math.isfinite(k) and k > 0):
        problems.append(Problem(f"k={k!r} is not a finite number > 0"))
    if not problems and dof == 0:
        problems.append(Problem("no group has 2 or more values: the seed-to-seed spread is "
                                "unknown", "give the margin explicitly"))
    if not problems and ss == 0:
        problems.append(Problem("every group is constant: the pooled standard deviation is 0",
                                "give the margin explicitly"))
    _raise(problems)
    return float(k * math.sqrt(ss / dof))
