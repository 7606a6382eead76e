"""``lang.restrict(min_length, max_length)``: a language conditioned on a length range.

The conformance suite (tests/test_conformance.py) runs the brute-force oracle on restrictions of
every shipped grammar and of hypothesis-drawn languages; here: the length-aware primitive of every
family against enumeration, closed forms, the errors, and the bounds.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import formal_lm as fl
from formal_lm import restricted
from formal_lm.pcfg import _lengths


def _prefixes(lang, k=4):
    """The empty prefix, prefixes of samples, and one impossible-looking prefix."""
    out = {()}
    for s in lang.sample(k, seed=3):
        out |= {tuple(s[:1]), tuple(s[:2]), tuple(s[:3])}
    out.add((lang.alphabet[-1],) * 3)
    return sorted(out, key=lambda p: (len(p), p))


@pytest.mark.parametrize("name", sorted(fl.shipped()))
def test_family_primitive_matches_enumeration(name):
    """prefix_length_log_probs of every family (closed forms, Dyck counts, PFSA matrix powers,
    the PCFG's length-aware Jelinek-Lafferty pass) equals the sum over enumerated completions."""
    lang = fl.load(name)
    L = {1: 12, 2: 9, 3: 6, 4: 5, 5: 5, 6: 5}.get(len(lang.alphabet), 4)
    for p in _prefixes(lang):
        got = lang.prefix_length_log_probs(p, L)
        want = restricted.enumerated_prefix_lengths(lang, p, L)
        assert got.shape == (L + 1,)
        np.testing.assert_allclose(np.exp(got), np.exp(want), rtol=1e-9, atol=1e-15)
        assert np.all(np.isneginf(got[: len(p)]))
        # summed over every length, the prefix probability (up to the mass past L)
        assert math.exp(restricted.lse(got)) <= math.exp(lang.prefix_log_prob(p)) + 1e-12


def test_anbn_restricted_is_uniform_on_the_counts_in_range():
    lang = fl.load("anbn").restrict(2, 16)
    assert lang.name == "anbn[2..16]" and lang.alphabet == ("a", "b")
    assert [r.name for r in lang.rules] == ["R1", "R2"] and lang.entropy_is_exact
    assert lang.prob("ab") == pytest.approx(1 / 8) and lang.prob("a" * 9 + "b" * 9) == 0.0
    assert lang.next_token_dist("a" * 8)["a"] == 0.0  # n = 9 is out of range
    assert lang.next_token_dist("aaa")["b"] == pytest.approx(1 / 6)  # n in 3..8
    assert lang.entropy() == pytest.approx(math.log(8))
    assert lang.expected_length() == pytest.approx(9.0)
    assert lang.optimal_loss().per_token == pytest.approx(math.log(8) / 10)
    assert lang.length_distribution(20)[[2, 16, 18]].tolist() == pytest.approx([1 / 8, 1 / 8, 0])
    assert all(2 <= len(s) <= 16 for s in lang.sample(200, seed=1))


def test_restricting_the_whole_support_changes_nothing():
    base = fl.load("anbn")
    whole = base.restrict(2, 256)
    ids = base.vocab.batch(base.sample(16, seed=0))
    np.testing.assert_allclose(whole.next_token_probs(ids), base.next_token_probs(ids),
                               atol=1e-12)
    assert whole.optimal_loss().per_token == pytest.approx(base.optimal_loss().per_token)


@pytest.mark.parametrize("name, lo, hi", [("parity", 3, 9), ("dyck2", 4, 10), ("bbaN", 3, 12),
                                          ("arith", 3, 9), ("anbmcnm", 4, 14),
                                          ("cs-dyck2", 2, 8)])
def test_fast_tables_match_the_generic_window(name, lo, hi):
    """The families' vectorised window tables against the generic per-prefix path."""
    base = fl.load(name)
    lang = base.restrict(lo, hi)
    strings = lang.sample(6, seed=2) + base.sample(4, seed=5)
    ids = base.vocab.batch(strings)
    fast = lang.next_token_probs(ids)
    generic = restricted.window_next_token_probs(base, ids, lo, hi)
    np.testing.assert_allclose(fast, generic, atol=1e-10)
    for b, s in enumerate(strings):
        np.testing.assert_allclose(fast[b, : len(s) + 1], fl.Language.next_token_table(lang, s),
                                   atol=1e-10)


def test_a_restriction_of_a_restriction():
    base = fl.load("dyck1")
    twice = base.restrict(2, 20).restrict(4, 8)
    once = base.restrict(4, 8)
    assert twice.name == "dyck1[2..20][4..8]"
    for s in once.sample(20, seed=0):
        assert twice.log_prob(s) == pytest.approx(once.log_prob(s))
    ids = base.vocab.batch(once.sample(8, seed=1))
    np.testing.assert_allclose(twice.next_token_probs(ids), once.next_token_probs(ids),
                               atol=1e-12)
    assert twice.fingerprint() != once.fingerprint()


def test_ambiguous_restrictions_estimate_their_floor():
    lang = fl.load("arith").restrict(3, 7)
    assert not lang.entropy_is_exact
    floor = lang.optimal_loss(n=512)
    assert floor.kind == "estimate" and floor.upper_bound >= floor.per_token - 4 * floor.stderr


def test_empty_ranges_and_bad_bounds_are_errors():
    with pytest.raises(fl.FormalLMError, match=r"no strings with length in \[3, 3\].*anbn\[3..3\]"):
        fl.load("anbn").restrict(3, 3)
    with pytest.raises(fl.FormalLMError, match="min_length=5 > max_length=4"):
        fl.load("anbn").restrict(5, 4)
    for lo, hi in ((-1, 4), (1.5, 4), (True, 4), (0, "4")):
        with pytest.raises(fl.FormalLMError):
            fl.load("parity").restrict(lo, hi)
    lang = fl.load("anbn").restrict(2, 8)
    with pytest.raises(fl.FormalLMError, match="no strings of length=10"):
        lang.sample(2, length=10)
    assert all(len(s) == 6 for s in lang.sample(3, length=6))


def test_pcfg_restrictions_are_bounded(monkeypatch):
    with pytest.raises(fl.FormalLMError, match="MAX_RESTRICT_LENGTH"):
        fl.load("arith").restrict(1, _lengths.MAX_RESTRICT_LENGTH + 1)
    monkeypatch.setattr(_lengths, "MAX_RESTRICT_LENGTH", 8)
    with pytest.raises(fl.FormalLMError, match="limit of 8"):
        fl.load("dyck1-pcfg").prefix_length_log_probs("(", 9)


class Wrapped(fl.Language):
    """A language with the required primitives only: restrict goes through enumeration."""

    def __init__(self, inner):
        self.inner, self.name, self.alphabet = inner, "wrapped", inner.alphabet

    def log_prob(self, s):
        return self.inner.log_prob(s)

    def prefix_log_prob(self, p):
        return self.inner.prefix_log_prob(p)

    def _sample(self, n, *, seed, length):
        return self.inner.sample(n, seed=seed, length=length)

    def entropy(self):
        return self.inner.entropy()

    def expected_length(self):
        return self.inner.expected_length()

    def length_stats(self, max_length):
        return self.inner.length_stats(max_length)


def test_the_generic_default_enumerates_then_refuses(monkeypatch):
    inner = fl.load("parity")
    lang = Wrapped(inner)
    mine, theirs = lang.restrict(2, 7), inner.restrict(2, 7)
    ids = inner.vocab.batch(theirs.sample(6, seed=0))
    np.testing.assert_allclose(mine.next_token_probs(ids), theirs.next_token_probs(ids),
                               atol=1e-12)
    assert mine.prefix_log_prob("11") == pytest.approx(theirs.prefix_log_prob("11"))
    monkeypatch.setattr(restricted, "MAX_ENUMERATED_COMPLETIONS", 50)
    with pytest.raises(fl.FormalLMError, match="no exact length-aware prefix probabilities"):
        lang.restrict(2, 12)
    assert len(lang.fingerprint()) == 16  # the generic fallback: from exact quantities
