"""Accuracy of a recognizer (membership classifier), per length bin and per kind of example,
with two baselines on the same examples.

The examples come from :func:`formal_lm.tasks.recognition.examples` (or anywhere): per example
its length ``|x|``, its label (True = accept), the recognizer's predicted label and its kind:
``"positive"`` (a member), ``"negative"`` (a uniform non-member) or ``"near_miss"`` (one edit
away from a member). The baselines are fitted on a training set of (length, label) and scored
on the evaluated examples:

- majority class: the most frequent training label (a tie: reject);
- length-only rule: the majority training label at each length (a tie, or a length absent from
  training: the majority class). Among rules that see only ``|x|`` it is the best on the
  training set, so a recognizer that does no better has learned nothing beyond length.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from formal_lm.analysis import measures as M
from formal_lm.errors import FormalLMError, Problem
from formal_lm.tasks.recognition import KINDS


@dataclasses.dataclass(frozen=True)
class Accuracy:
    """Correct predictions among ``n`` examples (``accuracy`` NaN when ``n == 0``)."""

    n: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")


@dataclasses.dataclass(frozen=True)
class LengthBin:
    """Accuracy on examples with ``lo <= |x| <= hi``."""

    lo: int
    hi: int
    scores: Accuracy
    in_training_range: bool


@dataclasses.dataclass(frozen=True)
class RecognitionAccuracy:
    """A recognizer's accuracy overall, per kind, per length bin, and two baselines' on the
    same examples (see the module doc).

    ``in_training_range`` holds when every evaluated length is at most ``train_max_length`` (or
    that is None); it sets the scope of the overall and per-kind measures. ``kinds`` maps each
    kind present among the examples to its accuracy.
    """

    overall: Accuracy
    kinds: tuple[tuple[str, Accuracy], ...]
    bins: tuple[LengthBin, ...]
    majority_label: bool
    majority: Accuracy
    length_rule: Accuracy
    train_max_length: int | None
    in_training_range: bool
    label: str = "rec"

    def kind(self, name: str) -> Accuracy:
        """The accuracy on one kind (``Accuracy(0, 0)`` when absent)."""
        return dict(self.kinds).get(name, Accuracy(0, 0))

    def measures(self) -> tuple[M.Measure, ...]:
        """Accuracies (fractions), counts, and the baselines (reference). Every given bin is
        reported (None when empty); a kind only when present."""
        p = f"{self.label}_" if self.label else ""
        scope = M.IN_DISTRIBUTION if self.in_training_range else M.OUT_OF_DISTRIBUTION
        out = [M.fraction(f"{p}acc", self.overall.accuracy, scope,
                          "share of examples whose membership the recognizer predicts right",
                          headline=True, tested=True),
               M.count(f"{p}n", self.overall.n, "examples scored")]
        for kind, acc in self.kinds:
            what = {"positive": "members", "negative": "uniform non-members",
                    "near_miss": "one-edit near misses of members"}[kind]
            out += [M.fraction(f"{p}acc_{kind}", acc.accuracy, scope,
                               f"share of {what} classified right", tested=True),
                    M.count(f"{p}n_{kind}", acc.n, f"{what} scored")]
        for b in self.bins:
            s = M.IN_DISTRIBUTION if b.in_training_range else M.OUT_OF_DISTRIBUTION
            out += [M.fraction(f"{p}len[{b.lo}-{b.hi}]_acc", b.scores.accuracy, s,
                               f"share of examples of length {b.lo}-{b.hi} classified right",
                               tested=not b.in_training_range),
                    M.count(f"{p}len[{b.lo}-{b.hi}]_n", b.scores.n,
                            f"examples of length {b.lo}-{b.hi} scored")]
        out += [M.Measure(f"{p}majority_acc", self.majority.accuracy, "fraction", None,
                          M.REFERENCE, "accuracy of always predicting the training set's "
                          "majority label, on the same examples"),
                M.Measure(f"{p}length_rule_acc", self.length_rule.accuracy, "fraction", None,
                          M.REFERENCE, "accuracy of predicting the training set's majority "
                          "label at each length, on the same examples")]
        return tuple(out)


def _labels(name: str, values, n: int | None, problems: list[Problem]) -> np.ndarray:
    """bool [N] from bools, 0/1 or "accept"/"reject"."""
    a = np.asarray(values)
    if a.size == 0:
        a = a.astype(bool)
    if a.dtype.kind in "US":
        bad = sorted(set(a.tolist()) - {"accept", "reject"})
        if bad:
            problems.append(Problem(f"{name} holds {bad[:3]}", "use 'accept' / 'reject'"))
        a = a == "accept"
    elif a.dtype.kind not in "biu" or (a.size and not np.isin(a, (0, 1)).all()):
        problems.append(Problem(f"{name} must hold bools, 0/1 or 'accept'/'reject'",
                                "pass True for accept, False for reject"))
        a = np.zeros(a.shape, bool)
    if a.ndim != 1 or (n is not None and len(a) != n):
        problems.append(Problem(f"{name} has shape {a.shape}; expected [{n}]",
                                "pass one value per example"))
    return a.astype(bool).reshape(-1)


def _check(lengths, kinds, bins, train_lengths, problems) -> None:
    if lengths.dtype.kind not in "iu" or (lengths < 0).any():
        problems.append(Problem("lengths must be ints >= 0", "pass |x| per example"))
    bad = sorted(set(kinds.tolist()) - set(KINDS))
    if bad:
        problems.append(Problem(f"kinds holds {bad[:3]}", f"use {KINDS}"))
    if not bins or any(len(b) != 2 or b[0] > b[1] for b in bins):
        problems.append(Problem(f"bins={list(bins)!r} must be (lo, hi) pairs with lo <= hi",
                                "pass e.g. bins=[(1, 40), (41, 80)]"))
    if train_lengths.dtype.kind not in "iu" or not len(train_lengths):
        problems.append(Problem("train_lengths must be a non-empty array of ints",
                                "pass the lengths of the training examples"))


def _ints(values) -> np.ndarray:
    a = np.asarray(values).reshape(-1)
    return a.astype(np.int64) if a.size == 0 else a


def _majority(labels: np.ndarray, tie: bool) -> bool:
    yes = int(labels.sum())
    return tie if 2 * yes == len(labels) else 2 * yes > len(labels)


def length_rule(train_lengths, train_labels) -> tuple[bool, dict[int, bool]]:
    """(the majority class, {length: majority label at that length}) of a training set."""
    lengths = np.asarray(train_lengths)
    labels = _labels("train_labels", train_labels, len(lengths), [])
    majority = _majority(labels, False)
    return majority, {int(L): _majority(labels[lengths == L], majority)
                      for L in np.unique(lengths)}


def recognition_accuracy(lengths, labels, predicted, kinds, *, bins: Sequence[tuple[int, int]],
                         train_lengths, train_labels, train_max_length: int | None = None,
                         label: str = "rec") -> RecognitionAccuracy:
    """A recognizer's accuracy on examples given as arrays (one entry per example).

    Args:
        lengths: int [N], ``|x|``.
        labels, predicted: [N] true and predicted labels: bools (True = accept), 0/1 or
            "accept"/"reject".
        kinds: [N] "positive", "negative" or "near_miss" (positives must be labelled accept,
            the others reject).
        bins: inclusive (lo, hi) length bins; a bin is in the training range when
            ``hi <= train_max_length``.
        train_lengths, train_labels: the training set the baselines are fitted on.
        train_max_length: the longest training length (None: everything is in range).
        label: prefix of the measure names.

    Example:
        >>> r = recognition_accuracy([1, 2, 2], [False, True, False], [False, False, False],
        ...                          ["negative", "positive", "negative"], bins=[(1, 2)],
        ...                          train_lengths=[1, 2, 2], train_labels=[0, 1, 1])
        >>> r.overall.accuracy, r.majority.accuracy, r.length_rule.accuracy
        (0.6666666666666666, 0.3333333333333333, 0.6666666666666666)

    Raises:
        FormalLMError: arrays of different sizes, unknown labels or kinds, kinds that contradict
            labels, empty or inverted bins, an empty training set.
    """
    problems: list[Problem] = []
    lengths = _ints(lengths)
    kinds = np.asarray(kinds, dtype=object).reshape(-1)
    y = _labels("labels", labels, len(lengths), problems)
    yhat = _labels("predicted", predicted, len(lengths), problems)
    if len(kinds) != len(lengths):
        problems.append(Problem(f"kinds has {len(kinds)} entries for {len(lengths)} examples",
                                "pass one kind per example"))
    train_lengths = _ints(train_lengths)
    _check(lengths, kinds, list(bins), train_lengths, problems)
    ty = _labels("train_labels", train_labels, len(train_lengths), problems)
    if not problems and ((kinds == "positive") != y).any():
        problems.append(Problem("a positive is labelled reject, or a negative accept",
                                "label positives True and negatives/near misses False"))
    if problems:
        raise FormalLMError(problems)
    majority, per_length = length_rule(train_lengths, ty)
    by_length = np.array([per_length.get(int(L), majority) for L in lengths], bool)
    right = y == yhat

    def acc(mask) -> Accuracy:
        return Accuracy(int(mask.sum()), int((right & mask).sum()))

    everything = np.ones(len(lengths), bool)
    inside = train_max_length is None or not len(lengths) or lengths.max() <= train_max_length
    return RecognitionAccuracy(
        overall=acc(everything),
        kinds=tuple((k, acc(kinds == k)) for k in KINDS if (kinds == k).any()),
        bins=tuple(LengthBin(int(lo), int(hi), acc((lo <= lengths) & (lengths <= hi)),
                             train_max_length is None or hi <= train_max_length)
                   for lo, hi in bins),
        majority_label=majority, majority=Accuracy(len(y), int((y == majority).sum())),
        length_rule=Accuracy(len(y), int((y == by_length).sum())),
        train_max_length=train_max_length, in_training_range=bool(inside), label=label)
