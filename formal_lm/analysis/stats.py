"""Non-identifiability: groups of models equally good in distribution that differ off it.

Per group and metric: mean, std (ddof=1), seeded bootstrap 95% CI over seeds. Per pair of
groups: are they indistinguishable in loss (CIs overlap, or means closer than a tolerance), and do
they differ in each OOD metric (two-sided permutation test of the difference of means, exact
when the number of splits is small, plus Welch's t-test)? A sentence states the finding.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from formal_lm.analysis._common import bootstrap_ci
from formal_lm.errors import FormalLMError, Problem

EXACT_PERMUTATIONS = 20000


@dataclasses.dataclass(frozen=True)
class MetricSummary:
    """One metric of one group over its seeds."""

    group: str
    metric: str
    values: tuple[float, ...]
    mean: float
    std: float
    ci_low: float
    ci_high: float

    @property
    def n(self) -> int:
        return len(self.values)


@dataclasses.dataclass(frozen=True)
class MetricTest:
    """Difference of an OOD metric between two groups."""

    metric: str
    diff: float  # mean(a) - mean(b)
    welch_t: float
    welch_p: float
    permutation_p: float
    differs: bool  # permutation_p < alpha


@dataclasses.dataclass(frozen=True)
class PairComparison:
    """Two groups compared: loss equivalence and OOD differences."""

    a: str
    b: str
    loss_metric: str
    loss_diff: float
    loss_ci_overlap: bool
    loss_equivalent: bool
    ood: tuple[MetricTest, ...]


@dataclasses.dataclass(frozen=True)
class NonIdentifiabilityResult:
    """Summaries, pairwise comparisons and the sentence that states the finding.

    ``found`` is True when some pair is indistinguishable in loss but differs in an OOD metric.
    """

    loss_metric: str
    ood_metrics: tuple[str, ...]
    alpha: float
    tolerance: float
    summaries: tuple[MetricSummary, ...]
    pairs: tuple[PairComparison, ...]
    found: bool
    statement: str

    def summary(self, group: str, metric: str) -> MetricSummary:
        for s in self.summaries:
            if s.group == group and s.metric == metric:
                return s
        raise KeyError((group, metric))


def permutation_test(x: Sequence[float], y: Sequence[float], *, seed: int = 0,
                     n_resamples: int = 10000) -> float:
    """Two-sided p-value of |mean(x) - mean(y)| under random relabelling (exact when small)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    pooled = np.concatenate([x, y])
    n, m = len(x), len(pooled)
    if n == 0 or n == m:
        return float("nan")
    observed = abs(x.mean() - y.mean())
    total = pooled.sum()
    if math.comb(m, n) <= EXACT_PERMUTATIONS:
        sums = np.array([pooled[list(c)].sum() for c in itertools.combinations(range(m), n)])
    else:
        rng = np.random.default_rng(seed)
        idx = np.argsort(rng.random((n_resamples, m)), axis=1)[:, :n]
        sums = pooled[idx].sum(1)
    diffs = np.abs(sums / n - (total - sums) / (m - n))
    if math.comb(m, n) <= EXACT_PERMUTATIONS:
        return float(np.mean(diffs >= observed - 1e-12))
    return float((np.sum(diffs >= observed - 1e-12) + 1) / (len(diffs) + 1))


def welch(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Welch's t statistic and two-sided p (NaN when both groups have zero variance)."""
    from scipy import stats
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or len(y) < 2 or (x.std() == 0 and y.std() == 0):
        return float("nan"), float("nan")
    r = stats.ttest_ind(x, y, equal_var=False)
    return float(r.statistic), float(r.pvalue)


def _fmt(v: float, pct: bool) -> str:
    return f"{100 * v:.1f}%" if pct else f"{v:.4g}"


def non_identifiability(groups: Mapping[str, Sequence[Mapping[str, float]]], *,
                        loss_metric: str = "kl", ood_metrics: Sequence[str] | None = None,
                        alpha: float = 0.05, tolerance: float = 1e-3, seed: int = 0,
                        percent_metrics: Sequence[str] = ()) -> NonIdentifiabilityResult:
    """Compares groups of per-seed records: equal in loss, different out of distribution?

    Args:
        groups: {group name: [per-seed record {metric: value, ...}, ...]}.
        loss_metric: the in-distribution metric (e.g. exact KL per token or validation loss).
        ood_metrics: OOD metrics to test (default: every numeric key other than ``seed`` and
            ``loss_metric`` present in all records).
        alpha: significance level of the permutation test.
        tolerance: groups whose mean loss differs by less than this are equivalent in loss
            (as are groups whose 95% CIs overlap).
        seed: bootstrap and permutation seed.
        percent_metrics: metrics shown as percentages in the statement.
    """
    problems = []
    if len(groups) < 1:
        problems.append(Problem("groups is empty", "pass {name: [records]}"))
    for g, recs in groups.items():
        if not recs:
            problems.append(Problem(f"group={g!r} has no records"))
        for i, r in enumerate(recs):
            if loss_metric not in r:
                problems.append(Problem(f"group={g!r} record {i} lacks loss_metric={loss_metric!r}",
                                        f"records have {sorted(r)}"))
    if problems:
        raise FormalLMError(problems)
    if ood_metrics is None:
        common = set.intersection(*(set(r) for recs in groups.values() for r in recs))
        ood_metrics = sorted(k for k in common if k not in ("seed", loss_metric) and all(
            isinstance(r[k], (int, float)) and not isinstance(r[k], bool)
            for recs in groups.values() for r in recs))
    ood_metrics = tuple(ood_metrics)
    summaries = []
    for g, recs in groups.items():
        for m in (loss_metric,) + ood_metrics:
            v = np.array([float(r[m]) for r in recs])
            lo, hi = bootstrap_ci(v, seed=seed)
            summaries.append(MetricSummary(g, m, tuple(v.tolist()), float(v.mean()),
                                           float(v.std(ddof=1)) if len(v) > 1 else 0.0, lo, hi))
    by = {(s.group, s.metric): s for s in summaries}
    pairs, sentences = [], []
    for a, b in itertools.combinations(groups, 2):
        la, lb = by[(a, loss_metric)], by[(b, loss_metric)]
        overlap = la.ci_low <= lb.ci_high and lb.ci_low <= la.ci_high
        ldiff = la.mean - lb.mean
        equivalent = overlap or abs(ldiff) < tolerance
        tests = []
        for m in ood_metrics:
            xa, xb = by[(a, m)].values, by[(b, m)].values
            t, p = welch(xa, xb)
            pp = permutation_test(xa, xb, seed=seed)
            tests.append(MetricTest(m, by[(a, m)].mean - by[(b, m)].mean, t, p, pp,
                                    bool(pp < alpha)))
        pairs.append(PairComparison(a, b, loss_metric, ldiff, overlap, equivalent, tuple(tests)))
        differ = [t for t in tests if t.differs]
        if equivalent and differ:
            why = "95% CIs overlap" if overlap else f"|diff| = {abs(ldiff):.2g} < {tolerance:g}"
            parts = []
            for t in differ:
                pct = t.metric in percent_metrics
                parts.append(
                    f"{t.metric} ({_fmt(by[(a, t.metric)].mean, pct)} vs "
                    f"{_fmt(by[(b, t.metric)].mean, pct)}; permutation p = {t.permutation_p:.2g}, "
                    f"Welch t = {t.welch_t:.3g}, p = {t.welch_p:.2g})")
            sentences.append(
                f"'{a}' and '{b}' are indistinguishable in {loss_metric} "
                f"({_fmt(la.mean, False)} vs {_fmt(lb.mean, False)}; {why}) but differ in "
                + "; ".join(parts) + f", n = {la.n} vs {lb.n} seeds.")
    found = bool(sentences)
    if not found:
        sentences = [f"No pair of groups is indistinguishable in {loss_metric} yet different in "
                     f"{', '.join(ood_metrics) or 'any OOD metric'} at alpha = {alpha:g} "
                     "(two-sided permutation test)."]
    return NonIdentifiabilityResult(loss_metric, ood_metrics, alpha, tolerance, tuple(summaries),
                                    tuple(pairs), found, " ".join(sentences))
