"""Recognizer examples (formal_lm.tasks.recognition) against brute force, and the recognizer's
accuracy summary (formal_lm.analysis.recognition) against hand-computed answers.

The oracles here enumerate Σ^n and the one-symbol edits of each member with their own code
(explicit substitutions, deletions and insertions), never the module's edit numbering. Every
chi-square test uses a fixed seed and ALPHA; ``test_the_chi_square_check_has_power`` shows it
rejects the plausible wrong samplers.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scipy import stats

import formal_lm as fl
import formal_lm.testing as ft
from formal_lm.analysis.recognition import Accuracy, recognition_accuracy
from formal_lm.errors import FormalLMError
from formal_lm.pfsa import PFSA
from formal_lm.tasks import recognition as R
from formal_lm.tasks.encoding import TaskVocab, encode

ALPHA = 1e-4  # false alarm of each chi-square test
N = 2000      # draws per chi-square test
SHIPPED = ["anbn", "dyck2", "parity", "anbncn"]
HYPOTHESIS = settings(max_examples=15, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow])


# ----- independent oracles ---------------------------------------------------------------------
def is_member(lang, s) -> bool:
    return lang.log_prob(s) > -math.inf


def brute_non_members(lang, n):
    return [s for s in itertools.product(lang.alphabet, repeat=n) if not is_member(lang, s)]


def one_edits(s, alphabet):
    """Every one-symbol edit of ``s`` (a list with repeats: one entry per edit)."""
    subs = [s[:i] + (b,) + s[i + 1:] for i in range(len(s)) for b in alphabet if b != s[i]]
    dels = [s[:i] + s[i + 1:] for i in range(len(s))]
    ins = [s[:i] + (b,) + s[i:] for i in range(len(s) + 1) for b in alphabet]
    return subs + dels + ins


def brute_near_misses(lang, n):
    """The near-miss distribution by enumeration of Σ^n and of every edit of every member."""
    mem = [s for s in itertools.product(lang.alphabet, repeat=n) if is_member(lang, s)]
    p = np.array([lang.prob(s) for s in mem])
    p = p / p.sum()
    out = Counter()
    for s, ps in zip(mem, p):
        edits = one_edits(s, lang.alphabet)
        assert len(edits) == (2 * n + 1) * len(lang.alphabet)
        for t in edits:
            if not is_member(lang, t):
                out[t] += ps / len(edits)
    z = sum(out.values())
    return {t: v / z for t, v in out.items()}


def chi_square_p(samples, probs) -> float:
    """p-value of the samples against {outcome: probability}; bins with fewer than 5 expected
    counts are pooled into one, and an outcome outside the support gives 0."""
    counts = Counter(samples)
    if set(counts) - set(probs):
        return 0.0
    keys = sorted(probs, key=lambda t: -probs[t])
    exp = np.array([probs[t] * len(samples) for t in keys])
    obs = np.array([counts[t] for t in keys], float)
    small = exp < 5
    if small.any():
        exp = np.append(exp[~small], exp[small].sum())
        obs = np.append(obs[~small], obs[small].sum())
    if len(exp) < 2:
        return 1.0
    return float(stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


def uniform(strings):
    return {s: 1 / len(strings) for s in strings}


def sigma_star():
    return PFSA("sigma-star", [(0, "a", 0, 0.4), (0, "b", 0, 0.4)], {0: 0.2}, 0,
                alphabet=("a", "b"))


# ----- distributions, shipped languages ---------------------------------------------------------
@pytest.mark.parametrize("name,n", [("anbn", 4), ("dyck2", 4), ("parity", 5), ("anbncn", 3)])
def test_negatives_are_uniform_non_members(name, n):
    lang = fl.load(name)
    neg = R.negatives(lang, n, N, seed=3)
    assert len(neg) == N and all(len(s) == n and not is_member(lang, s) for s in neg)
    assert chi_square_p(neg, uniform(brute_non_members(lang, n))) > ALPHA


@pytest.mark.parametrize("name,n", [("anbn", 6), ("dyck2", 4), ("parity", 4)])
def test_negatives_by_rejection_are_uniform(name, n, monkeypatch):
    monkeypatch.setattr(R, "ENUMERATION_LIMIT", 0)  # force the rejection path
    lang = fl.load(name)
    neg = R.negatives(lang, n, N, seed=4)
    assert chi_square_p(neg, uniform(brute_non_members(lang, n))) > ALPHA


@pytest.mark.parametrize("name,n", [("anbn", 4), ("dyck2", 2), ("parity", 3), ("anbncn", 3)])
def test_near_misses_match_their_exact_distribution(name, n):
    lang = fl.load(name)
    q = R.near_miss_probabilities(lang, n)
    oracle = brute_near_misses(lang, n)
    assert set(q) == set(oracle) and sum(q.values()) == pytest.approx(1, abs=1e-12)
    assert all(q[t] == pytest.approx(oracle[t], rel=1e-9) for t in q)
    nm = R.near_misses(lang, n, N, seed=5)
    assert all(abs(len(t) - n) <= 1 and not is_member(lang, t) for t in nm)
    assert chi_square_p(nm, q) > ALPHA


def test_near_miss_probabilities_by_hand():
    # anbn at 2: the 10 edits of ab are b, bb (position 0), aa, a (position 1), aab, bab, aab,
    # abb, aba, abb (insertions); none is a member
    q = R.near_miss_probabilities(fl.load("anbn"), 2)
    want = {("b",): .1, ("b", "b"): .1, ("a", "a"): .1, ("a",): .1, ("a", "a", "b"): .2,
            ("b", "a", "b"): .1, ("a", "b", "b"): .2, ("a", "b", "a"): .1}
    assert q.keys() == want.keys() and all(q[t] == pytest.approx(want[t]) for t in q)


@pytest.mark.parametrize("name,n", [("parity", 4), ("dyck2", 4)])
def test_positives_are_exact_members(name, n):
    lang = fl.load(name)
    pos = R.positives(lang, n, N, seed=6)
    mem = [s for s in itertools.product(lang.alphabet, repeat=n) if is_member(lang, s)]
    p = np.array([lang.prob(s) for s in mem])
    assert all(len(s) == n and is_member(lang, s) for s in pos)
    assert chi_square_p(pos, dict(zip(mem, p / p.sum()))) > ALPHA


def test_same_seed_same_output():
    lang = fl.load("dyck2")
    for f in (R.positives, R.negatives, R.near_misses):
        assert f(lang, 4, 30, seed=1) == f(lang, 4, 30, seed=1)
        assert f(lang, 4, 30, seed=1) != f(lang, 4, 30, seed=2)
    a = R.examples(lang, range(0, 7), 10, seed=1, negative="near_miss")
    assert a == R.examples(lang, range(0, 7), 10, seed=1, negative="near_miss")
    assert a != R.examples(lang, range(0, 7), 10, seed=2, negative="near_miss")


# ----- distributions, hypothesis languages ------------------------------------------------------
@HYPOTHESIS
@given(ft.pfsas(min_states=2, max_states=4, min_halt=0.2), st.integers(0, 5))
def test_random_pfsa_distributions(lang, n):
    non = brute_non_members(lang, n)
    has = any(is_member(lang, s) for s in itertools.product(lang.alphabet, repeat=n))
    if non:
        neg = R.negatives(lang, n, 500, seed=7)
        assert chi_square_p(neg, uniform(non)) > ALPHA
    else:
        with pytest.raises(FormalLMError, match="no non-members"):
            R.negatives(lang, n, 5, seed=7)
    if not has:
        for f in (R.positives, R.near_misses, R.near_miss_probabilities):
            with pytest.raises(FormalLMError, match=f"no strings of length {n}"):
                f(lang, n, 5, 0) if f is not R.near_miss_probabilities else f(lang, n)
        return
    assert all(is_member(lang, s) for s in R.positives(lang, n, 50, seed=7))
    oracle = brute_near_misses(lang, n)
    if not oracle:
        with pytest.raises(FormalLMError, match="no near misses"):
            R.near_miss_probabilities(lang, n)
        return
    q = R.near_miss_probabilities(lang, n)
    assert set(q) == set(oracle) and sum(q.values()) == pytest.approx(1, abs=1e-12)
    assert all(q[t] == pytest.approx(oracle[t], rel=1e-9) for t in q)
    assert chi_square_p(R.near_misses(lang, n, 500, seed=7), q) > ALPHA


@HYPOTHESIS
@given(ft.counter_languages(max_blocks=2, max_count=3), st.data())
def test_random_counter_near_misses(lang, data):
    lengths = [n for n in range(8) if lang.length_distribution(7)[n] > 0]
    if not lengths:
        return
    n = data.draw(st.sampled_from(lengths))
    oracle = brute_near_misses(lang, n)
    if not oracle:  # e.g. a^n: every edit of a member is a member
        with pytest.raises(FormalLMError, match="no near misses"):
            R.near_miss_probabilities(lang, n)
        return
    q = R.near_miss_probabilities(lang, n)
    assert set(q) == set(oracle) and all(q[t] == pytest.approx(oracle[t]) for t in q)
    assert chi_square_p(R.near_misses(lang, n, 500, seed=8), q) > ALPHA


def test_the_chi_square_check_has_power():
    """The samplers a careless implementation would write are rejected at ALPHA."""
    lang, n, g = fl.load("parity"), 2, np.random.default_rng(0)
    q = R.near_miss_probabilities(lang, n)
    # redrawing only the edit (not the member) when it lands in the language
    mem = [("0", "0"), ("1", "1")]
    redraw_edit = []
    while len(redraw_edit) < N:
        s = mem[g.integers(2)]
        while is_member(lang, t := one_edits(s, lang.alphabet)[g.integers(10)]):
            pass
        redraw_edit.append(t)
    assert chi_square_p(redraw_edit, q) < ALPHA
    # uniform over distinct near-miss strings instead of over edits
    assert chi_square_p([list(q)[i] for i in g.integers(len(q), size=N)], q) < ALPHA
    # negatives: a member redrawn in its last symbol only, not as a whole string
    lang, n = fl.load("anbn"), 4
    biased = []
    for row in g.integers(0, 2, size=(N, n)):
        s = tuple(lang.alphabet[i] for i in row)
        while is_member(lang, s):
            s = s[:-1] + (lang.alphabet[g.integers(2)],)
        biased.append(s)
    non = brute_non_members(lang, n)
    assert chi_square_p(biased, uniform(non)) < ALPHA


# ----- examples ---------------------------------------------------------------------------------
def test_examples_uniform():
    lang = fl.load("anbn")
    ex = R.examples(lang, range(0, 7), 10, seed=0, positive_fraction=0.3)
    assert len(ex) == 70 and ex.notes == tuple(f"length {n}: no members; 10 negatives only"
                                                for n in (0, 1, 3, 5))
    for (x, y), kind, n in zip(ex, ex.kinds, ex.drawn_lengths):
        assert len(x) == n and (y == ("accept",)) == is_member(lang, x)
        assert kind == ("positive" if y == ("accept",) else "negative")
    per = Counter((n, k) for k, n in zip(ex.kinds, ex.drawn_lengths))
    assert per[2, "positive"] == per[4, "positive"] == 3 and per[2, "negative"] == 7
    assert ex.labels.sum() == 9 and list(ex.lengths) == [len(x) for x, _ in ex]
    ids, targets = encode(TaskVocab(lang.alphabet, ("reject", "accept")), ex)
    assert ids.shape[0] == 70


def test_examples_near_miss():
    lang = fl.load("anbn")
    ex = R.examples(lang, [1, 2, 4], 8, seed=0, negative="near_miss")
    assert ex.notes == ("length 1: no members, so no near misses; no examples",)
    assert len(ex) == 16 and Counter(ex.kinds) == {"positive": 8, "near_miss": 8}
    for (x, y), kind, n in zip(ex, ex.kinds, ex.drawn_lengths):
        assert (y == ("accept",)) == is_member(lang, x) and abs(len(x) - n) <= (kind != "positive")


def test_examples_round_the_positives_half_up():
    ex = R.examples(fl.load("anbn"), [4], 5, seed=0)
    assert Counter(ex.kinds) == {"positive": 3, "negative": 2}
    assert Counter(R.examples(fl.load("anbn"), [4], 5, 0, positive_fraction=0.2).kinds) == \
        {"positive": 1, "negative": 4}


def test_examples_without_non_members_are_positives_only():
    ex = R.examples(sigma_star(), [2, 3], 5, seed=0)
    assert set(ex.kinds) == {"positive"} and len(ex) == 10
    assert ex.notes == ("length 2: every string is a member; 5 positives only",
                        "length 3: every string is a member; 5 positives only")


# ----- errors -----------------------------------------------------------------------------------
def test_errors():
    anbn, star = fl.load("anbn"), sigma_star()
    with pytest.raises(FormalLMError, match="no strings of length 3"):
        R.positives(anbn, 3, 5, 0)
    with pytest.raises(FormalLMError, match="no strings of length 3"):
        R.near_misses(anbn, 3, 5, 0)
    with pytest.raises(FormalLMError, match="no non-members"):
        R.negatives(star, 4, 5, 0)
    with pytest.raises(FormalLMError, match=r"length 13 of 'sigma-star'.*max_draws=500"):
        R.negatives(star, 13, 5, 0, max_draws=500)  # 2^13 strings: rejection, none found
    with pytest.raises(FormalLMError, match="no near misses"):
        R.near_miss_probabilities(star, 2)
    with pytest.raises(FormalLMError, match="near misses of length-2 members of 'sigma-star'"):
        R.near_misses(star, 2, 5, 0, max_draws=200)
    with pytest.raises(FormalLMError, match="more than limit=3"):
        R.near_miss_probabilities(fl.load("parity"), 4, limit=3)
    for bad in [dict(length=-1), dict(count=1.5), dict(count=True), dict(seed=-2)]:
        args = dict(lang=anbn, length=4, count=2, seed=0) | bad
        for f in (R.positives, R.negatives, R.near_misses):
            with pytest.raises(FormalLMError, match=next(iter(bad))):
                f(**args)
    with pytest.raises(FormalLMError, match="max_draws=0"):
        R.negatives(anbn, 20, 1, 0, max_draws=0)
    assert R.members(anbn, 0, 10) == [] and R.members(anbn, 4, 10) == [("a", "a", "b", "b")]
    with pytest.raises(FormalLMError, match="not a formal_lm Language"):
        R.negatives("anbn", 2, 1, 0)
    with pytest.raises(FormalLMError) as e:
        R.examples(anbn, [2, 2], 0, 0, negative="edit", positive_fraction=2)
    assert len(e.value.problems) == 4  # gathered, not only the first
    with pytest.raises(FormalLMError, match="lengths is empty"):
        R.examples(anbn, [], 4, 0)


# ----- accuracy summary -------------------------------------------------------------------------
def test_recognition_accuracy_known_answers():
    lengths = [1, 2, 2, 3, 4, 5]
    labels = [0, 1, 0, 0, 1, 0]
    predicted = ["reject", "accept", "accept", "reject", "reject", "accept"]
    kinds = ["negative", "positive", "near_miss", "near_miss", "positive", "negative"]
    # training set: length 1 all reject; length 2 tie (-> majority); length 4 mostly accept
    train_lengths = [1, 1, 2, 2, 4, 4, 4]
    train_labels = [0, 0, 1, 0, 1, 1, 0]  # 3 accept of 7 -> majority reject
    r = recognition_accuracy(lengths, labels, predicted, kinds, bins=[(1, 2), (3, 5), (9, 9)],
                             train_lengths=train_lengths, train_labels=train_labels,
                             train_max_length=2)
    assert (r.overall.n, r.overall.correct) == (6, 3)  # right: 1, 2, 3
    assert r.kind("positive") == Accuracy(2, 1) and r.kind("near_miss") == Accuracy(2, 1)
    assert r.kind("negative") == Accuracy(2, 1)
    assert [(b.scores.n, b.scores.correct, b.in_training_range) for b in r.bins] == \
        [(3, 2, True), (3, 1, False), (0, 0, False)]
    # majority reject: right on labels 0 -> 4 of 6; length rule: 1->0, 2->tie->0, 4->1,
    # 3 and 5 unseen -> 0: predictions 0,0,0,0,1,0 -> right on all but the length-2 positive
    assert r.majority_label is False and r.majority == Accuracy(6, 4)
    assert r.length_rule == Accuracy(6, 5) and r.in_training_range is False
    m = {x.name: x for x in r.measures()}
    assert m["rec_acc"].value == 0.5 and m["rec_acc"].scope == "out_of_distribution"
    assert m["rec_len[1-2]_acc"].value == pytest.approx(2 / 3)
    assert m["rec_len[1-2]_acc"].scope == "in_distribution"
    assert m["rec_len[9-9]_acc"].value is None and m["rec_len[9-9]_n"].value == 0
    assert m["rec_majority_acc"].scope == "reference" and m["rec_length_rule_acc"].value == 5 / 6
    assert m["rec_n_near_miss"].value == 2


def test_recognition_accuracy_on_examples_and_ties():
    lang = fl.load("anbn")
    ex = R.examples(lang, range(1, 7), 6, seed=0)
    # the exact language as the recognizer: every example right
    pred = [is_member(lang, x) for x, _ in ex]
    r = recognition_accuracy(ex.lengths, ex.labels, pred, ex.kinds, bins=[(1, 6)],
                             train_lengths=ex.lengths, train_labels=ex.labels, label="")
    assert r.overall.accuracy == 1 and {m.name for m in r.measures()} >= {"acc", "acc_negative"}
    # odd lengths are all reject, even ones 3 of 6 accept (a tie -> the majority class, reject)
    assert r.length_rule.accuracy == r.majority.accuracy == 1 - 9 / 36
    r2 = recognition_accuracy([2], [1], [1], ["positive"], bins=[(1, 2)], train_lengths=[2, 3],
                              train_labels=[1, 0])
    assert r2.majority_label is False and r2.length_rule.accuracy == 1  # a tie is reject


def test_recognition_accuracy_of_nothing_is_undefined():
    r = recognition_accuracy([], [], [], [], bins=[(1, 2)], train_lengths=[1], train_labels=[1])
    m = {x.name: x.value for x in r.measures()}
    assert m["rec_acc"] is None and m["rec_n"] == 0 and m["rec_length_rule_acc"] is None


def test_recognition_accuracy_errors():
    good = dict(lengths=[1, 2], labels=[1, 0], predicted=[1, 1], kinds=["positive", "negative"],
                bins=[(1, 2)], train_lengths=[1], train_labels=[1])
    for bad, text in [(dict(labels=[1, 0, 1]), "expected"), (dict(kinds=["positive", "odd"]),
                      "kinds holds"), (dict(bins=[(3, 1)]), "lo <= hi"),
                      (dict(predicted=["yes", "no"]), "predicted holds"),
                      (dict(kinds=["negative", "negative"]), "labelled reject"),
                      (dict(train_lengths=[]), "non-empty"), (dict(lengths=[1.5, 2]), "ints")]:
        args = good | bad
        with pytest.raises(FormalLMError, match=text):
            recognition_accuracy(args.pop("lengths"), args.pop("labels"), args.pop("predicted"),
                                 args.pop("kinds"), **args)
