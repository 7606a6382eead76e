"""Comparing groups of seeds: the same in loss, different out of distribution?

``compare_groups`` (former name ``non_identifiability``) takes ``{group: {metric: per-seed
values}}`` and returns a ``GroupComparison`` (former name ``NonIdentifiabilityResult``): a
``MetricSummary`` per group and metric, a ``PairComparison`` per pair of groups (an
``EquivalenceTest`` of the loss at a margin and a ``MetricTest`` per OOD metric, with the pair's
``Verdict``) and a paragraph stating the finding. It claims "same loss, different behaviour" for
a pair only when its loss is shown equivalent at the margin AND some OOD metric differs
(permutation p < alpha). The tests themselves are in ``formal_lm.analysis.stats``; the rules are
in ``docs/statistics.md``.

``compare_groups`` checks its arguments and raises ``FormalLMError`` listing all problems found.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import operator
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from formal_lm.analysis.equivalence import EquivalenceTest, default_margin, equivalence_test
from formal_lm.analysis.stats import (
    DifferenceTest,
    Summary,
    _check_alpha,
    _check_values,
    _is_real,
    _raise,
    difference_test,
    seeds_needed,
    summarize,
)
from formal_lm.errors import Problem

Verdict = Literal["finding", "cannot_reach_alpha", "loss_not_equivalent", "no_ood_difference"]
_Arrays = dict[tuple[str, str], np.ndarray]  # {(group, metric): per-seed values}


# ------------------------------------------------------------------------------------ results
def _forwarding(field: str, names: Sequence[str], prefix: str = ""):
    """Class decorator: for each of ``names``, a read-only property ``prefix + name`` that reads
    ``name`` of the object in ``field`` (``@_forwarding("summary", ["mean"])`` makes ``x.mean``
    read ``x.summary.mean``)."""
    def decorate(cls):
        for name in names:
            setattr(cls, prefix + name, property(operator.attrgetter(f"{field}.{name}"),
                                                 doc=f"``{field}.{name}``."))
        return cls

    return decorate


@_forwarding("summary", ["values", "n", "mean", "std", "ci_low", "ci_high"])
@dataclasses.dataclass(frozen=True)
class MetricSummary:
    """One metric of one group over its seeds.

    ``values``, ``n``, ``mean``, ``std``, ``ci_low`` and ``ci_high`` read those of ``summary``.

    Attributes:
        group: the group name.
        metric: the metric name.
        summary: mean, std and 95% t interval (``summarize``).
    """

    group: str
    metric: str
    summary: Summary


@_forwarding("test", ["diff", "permutation_p", "welch_t", "welch_p", "differs"])
@dataclasses.dataclass(frozen=True)
class MetricTest:
    """An OOD metric compared between the two groups of a pair.

    ``diff``, ``permutation_p``, ``welch_t``, ``welch_p`` and ``differs`` read those of ``test``.

    Attributes:
        metric: the metric name.
        test: the difference test, ``a`` as x and ``b`` as y.
    """

    metric: str
    test: DifferenceTest


@_forwarding("loss", ["diff", "equivalent"], prefix="loss_")
@dataclasses.dataclass(frozen=True)
class PairComparison:
    """Two groups compared: loss equivalence at the margin, and each OOD metric's difference.

    ``loss_diff`` and ``loss_equivalent`` read ``loss.diff`` and ``loss.equivalent``.

    Attributes:
        a: first group.
        b: second group (differences are ``a - b``).
        loss_metric: the in-distribution metric.
        loss: TOST of the loss at the margin.
        ood: one difference test per OOD metric, in the order given.
        differing: the OOD metrics with ``differs`` (permutation p < alpha).
        can_reach_alpha: some OOD test can reach alpha with these group sizes.
        finding: ``loss.equivalent and differing``: same loss, different behaviour.
        verdict: ``"finding"``; ``"cannot_reach_alpha"`` (no OOD test can reach alpha, so no
            finding was possible whatever the data); ``"loss_not_equivalent"`` (the loss was not
            shown within the margin); ``"no_ood_difference"`` (loss equivalent, no OOD metric
            differs).
    """

    a: str
    b: str
    loss_metric: str
    loss: EquivalenceTest
    ood: tuple[MetricTest, ...]
    differing: tuple[str, ...]
    can_reach_alpha: bool
    finding: bool
    verdict: Verdict


@dataclasses.dataclass(frozen=True)
class GroupComparison:
    """Per-group summaries, per-pair tests and a sentence stating the finding.

    Attributes:
        loss_metric: the in-distribution metric.
        ood_metrics: the OOD metrics tested.
        margin: the equivalence margin on the loss metric, in its units.
        margin_rule: where the margin came from (``"given"`` or the default rule with its k).
        alpha: level of every test.
        groups: group names, in the order given.
        summaries: one per group and metric (loss first), t intervals at 95%.
        pairs: one per pair of groups, in the order of ``itertools.combinations``.
        found: some pair's verdict is ``"finding"``.
        can_reach_alpha: every pair can reach alpha on some OOD metric.
        statement: one paragraph stating the finding (or its absence) for every pair, with the
            margin, p values, min attainable p and seeds per group.
    """

    loss_metric: str
    ood_metrics: tuple[str, ...]
    margin: float
    margin_rule: str
    alpha: float
    groups: tuple[str, ...]
    summaries: tuple[MetricSummary, ...]
    pairs: tuple[PairComparison, ...]
    found: bool
    can_reach_alpha: bool
    statement: str

    def summary(self, group: str, metric: str) -> MetricSummary:
        """The summary of ``metric`` in ``group`` (KeyError if absent)."""
        for s in self.summaries:
            if s.group == group and s.metric == metric:
                return s
        raise KeyError((group, metric))

    def pair(self, a: str, b: str) -> PairComparison:
        """The comparison of groups ``a`` and ``b`` (either order; KeyError if absent)."""
        for p in self.pairs:
            if {p.a, p.b} == {a, b}:
                return p
        raise KeyError((a, b))


NonIdentifiabilityResult = GroupComparison  # the former name


# ------------------------------------------------------------------------------------ statement
def _fmt(v: float, pct: bool = False) -> str:
    return f"{100 * v:.1f}%" if pct else f"{v:.4g}"


def _fmt_diff(v: float, pct: bool = False) -> str:
    return f"{100 * v:+.1f} pp" if pct else f"{v:+.3g}"


def _fmt_size(v: float, pct: bool = False) -> str:
    return f"{100 * v:.1f} pp" if pct else f"{v:.3g}"


def _fmt_p(p: float) -> str:
    return f"{p:.2g}"


def _pair_sentence(p: PairComparison, by: dict, alpha: float, pct: set[str]) -> str:
    e = p.loss
    cl = round(100 * (1 - 2 * alpha))
    la, lb = by[(p.a, p.loss_metric)], by[(p.b, p.loss_metric)]
    head = f"'{p.a}' vs '{p.b}' (n = {la.n} vs {lb.n} seeds): "
    loss = (f"{p.loss_metric} {_fmt(la.mean)} vs {_fmt(lb.mean)} (diff {_fmt_diff(e.diff)}, "
            f"{cl}% CI [{_fmt(e.ci_low)}, {_fmt(e.ci_high)}], TOST p = {_fmt_p(e.p)})")

    def ood(t: MetricTest) -> str:
        f = t.metric in pct
        return (f"{t.metric} {_fmt(by[(p.a, t.metric)].mean, f)} vs "
                f"{_fmt(by[(p.b, t.metric)].mean, f)} (permutation p = "
                f"{_fmt_p(t.permutation_p)}, min attainable p = "
                f"{_fmt_p(t.test.min_attainable_p)}, Welch p = {_fmt_p(t.welch_p)})")

    if p.verdict == "finding":
        return (head + f"the same {p.loss_metric} within the margin, {loss}, yet different in "
                + "; ".join(ood(t) for t in p.ood if t.differs) + ".")
    if p.verdict == "cannot_reach_alpha":
        floor = min(t.test.min_attainable_p for t in p.ood) if p.ood else math.nan
        return (head + f"no OOD difference can be shown: the smallest attainable permutation "
                f"p is {_fmt_p(floor)}, not below alpha = {alpha:g} (at least "
                f"{seeds_needed(alpha)} seeds per group are needed); "
                + ("loss equivalent within the margin, " if e.equivalent
                   else "loss not shown equivalent, ") + loss + ".")
    if p.verdict == "loss_not_equivalent":
        tail = ("; it differs in " + ", ".join(
            f"{t.metric} (permutation p = {_fmt_p(t.permutation_p)})" for t in p.ood if t.differs)
            if p.differing else "")
        return head + f"{p.loss_metric} not shown equivalent within the margin, {loss}{tail}."
    best = min(p.ood, key=lambda t: t.permutation_p)
    return (head + f"the same {p.loss_metric} within the margin, {loss}, but no OOD metric "
            f"differs (smallest: {ood(best)}; detectable difference at 80% power "
            f"{_fmt_size(best.test.mde, best.metric in pct)}).")


def _statement(pairs: tuple[PairComparison, ...], summaries: tuple[MetricSummary, ...], *,
               loss_metric: str, ood_metrics: tuple[str, ...], margin: float, rule: str,
               alpha: float, percent_metrics: Sequence[str]) -> str:
    """The paragraph of ``GroupComparison.statement``: the rules, then one sentence per pair."""
    by = {(s.group, s.metric): s for s in summaries}
    pct = set(percent_metrics)
    head = (f"Same {loss_metric} means a TOST (Welch, alpha = {alpha:g}) shows the difference "
            f"of means within ±{_fmt(margin)} ({rule}); different means a two-sided "
            f"permutation p < {alpha:g} on one of {', '.join(ood_metrics)}. ")
    if any(p.finding for p in pairs):
        head += f"Same {loss_metric}, different behaviour is found for " + ", ".join(
            f"'{p.a}' vs '{p.b}'" for p in pairs if p.finding) + ". "
    else:
        head += (f"No pair of groups is shown to have the same {loss_metric} and different "
                 "behaviour. ")
    return head + " ".join(_pair_sentence(p, by, alpha, pct) for p in pairs)


# ------------------------------------------------------------------------------------ comparison
def _check_groups(groups, loss_metric: str, ood_metrics, margin,
                  alpha) -> tuple[tuple[str, ...], _Arrays]:
    """Checks the arguments of ``compare_groups``; returns the OOD metrics as a tuple and
    ``{(group, metric): per-seed values}``, or raises ``FormalLMError`` with every problem."""
    problems: list[Problem] = []
    if not isinstance(groups, Mapping) or len(groups) < 2:
        problems.append(Problem(f"groups has {len(groups) if isinstance(groups, Mapping) else 0} "
                                "groups; comparing needs at least 2",
                                "pass {group: {metric: [per-seed values]}}"))
        _raise(problems)
    if isinstance(ood_metrics, str):
        problems.append(Problem(f"ood_metrics={ood_metrics!r} is a string",
                                f"pass a list: ood_metrics=[{ood_metrics!r}]"))
        _raise(problems)
    ood_metrics = tuple(ood_metrics)
    if not ood_metrics:
        problems.append(Problem("ood_metrics is empty", "name at least one OOD metric"))
    if loss_metric in ood_metrics:
        problems.append(Problem(f"loss_metric={loss_metric!r} is also in ood_metrics"))
    _check_alpha(alpha, problems, upper=0.5)
    if margin is not None and not (_is_real(margin) and math.isfinite(margin) and margin > 0):
        problems.append(Problem(f"margin={margin!r} is not a finite number > 0",
                                "give the margin in the loss metric's units, or None for "
                                "default_margin"))
    arrays: _Arrays = {}
    for g, metrics in groups.items():
        if not isinstance(metrics, Mapping):
            problems.append(Problem(f"group {g!r} is a {type(metrics).__name__}, not a mapping",
                                    "pass {metric: [per-seed values]} per group"))
            continue
        for m in (loss_metric,) + ood_metrics:
            if m not in metrics:
                problems.append(Problem(f"group {g!r} lacks metric {m!r}",
                                        f"it has {sorted(metrics)}"))
            else:
                arrays[(g, m)] = _check_values(metrics[m], f"group {g!r} metric {m!r}", problems)
    _raise(problems)
    return ood_metrics, arrays


def _margin_and_rule(margin: float | None, arrays: _Arrays, names: tuple[str, ...],
                     loss_metric: str) -> tuple[float, str]:
    """The equivalence margin (``default_margin`` over all groups when None) and its rule."""
    if margin is None:
        margin = default_margin({g: arrays[(g, loss_metric)] for g in names})
        rule = f"default: 1 pooled seed-to-seed sd of {loss_metric} over all groups"
    else:
        rule = "given"
    return float(margin), rule


def _compare_pair(a: str, b: str, arrays: _Arrays, *,
                  loss_metric: str, ood_metrics: tuple[str, ...], margin: float, alpha: float,
                  seed: int) -> PairComparison:
    """Groups ``a`` and ``b`` compared: TOST of the loss, difference test per OOD metric."""
    eq = equivalence_test(arrays[(a, loss_metric)], arrays[(b, loss_metric)], margin=margin,
                          alpha=alpha)
    tests = tuple(MetricTest(m, difference_test(arrays[(a, m)], arrays[(b, m)], alpha=alpha,
                                                seed=seed)) for m in ood_metrics)
    differing = tuple(t.metric for t in tests if t.differs)
    reach = any(t.test.can_reach_alpha for t in tests)
    finding = bool(eq.equivalent and differing)
    verdict: Verdict = ("finding" if finding else "cannot_reach_alpha" if not reach
                        else "loss_not_equivalent" if not eq.equivalent
                        else "no_ood_difference")
    return PairComparison(a, b, loss_metric, eq, tests, differing, reach, finding, verdict)


def compare_groups(groups: Mapping[str, Mapping[str, Sequence[float]]], *, loss_metric: str,
                   ood_metrics: Sequence[str], margin: float | None, alpha: float = 0.05,
                   seed: int = 0, percent_metrics: Sequence[str] = ()) -> GroupComparison:
    """Compares groups of seeds: the same in loss, different out of distribution?

    Per group and metric a ``Summary`` (95% t interval). Per pair of groups an
    ``equivalence_test`` of ``loss_metric`` at ``margin`` and a ``difference_test`` of each OOD
    metric. A pair's finding ("same loss, different behaviour") needs BOTH the loss shown
    equivalent (TOST p < alpha) AND some OOD metric different (permutation p < alpha); a pair
    whose group sizes cannot reach alpha says so. No correction is made for testing several OOD
    metrics or pairs.

    Args:
        groups: {group name: {metric name: per-seed values}}, at least two groups, each with
            ``loss_metric`` and every OOD metric (finite values; one value per seed).
        loss_metric: the in-distribution metric (e.g. exact KL per token, validation loss).
        ood_metrics: the OOD metrics to test (at least one).
        margin: the equivalence margin on ``loss_metric`` in its units, or None for
            ``default_margin`` (one pooled seed-to-seed sd of the loss over all groups).
        alpha: level of every test, in (0, 0.5).
        seed: seed of sampled permutations (used only for groups too large to enumerate).
        percent_metrics: metrics shown as percentages in the statement.

    Returns:
        A ``GroupComparison``.

    Raises:
        FormalLMError: fewer than two groups, missing metrics, empty or non-finite values,
            margin <= 0, alpha outside (0, 0.5).

    Example:
        >>> g = {"A": {"kl": [0.010, 0.011, 0.012, 0.010, 0.011], "ood": [0.2, 0.3, 0.2, 0.2, 0.3]},
        ...      "B": {"kl": [0.011, 0.010, 0.012, 0.011, 0.010], "ood": [0.8, 0.9, 0.8, 0.9, 0.8]}}
        >>> r = compare_groups(g, loss_metric="kl", ood_metrics=["ood"], margin=0.002)
        >>> r.found, r.pairs[0].verdict, r.pairs[0].loss.equivalent, r.pairs[0].differing
        (True, 'finding', True, ('ood',))
    """
    ood_metrics, arrays = _check_groups(groups, loss_metric, ood_metrics, margin, alpha)
    names = tuple(groups)
    margin, rule = _margin_and_rule(margin, arrays, names, loss_metric)
    summaries = tuple(MetricSummary(g, m, summarize(arrays[(g, m)]))
                      for g in names for m in (loss_metric,) + ood_metrics)
    pairs = tuple(_compare_pair(a, b, arrays, loss_metric=loss_metric, ood_metrics=ood_metrics,
                                margin=margin, alpha=alpha, seed=seed)
                  for a, b in itertools.combinations(names, 2))
    statement = _statement(pairs, summaries, loss_metric=loss_metric, ood_metrics=ood_metrics,
                           margin=margin, rule=rule, alpha=alpha,
                           percent_metrics=percent_metrics)
    return GroupComparison(loss_metric, ood_metrics, margin, rule, float(alpha), names,
                           summaries, pairs, any(p.finding for p in pairs),
                           all(p.can_reach_alpha for p in pairs), statement)


non_identifiability = compare_groups  # the former name
