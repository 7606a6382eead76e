"""Brute-force oracles: every exact quantity of a Language checked against enumeration.

``check_language(lang, L)`` enumerates every string over the alphabet up to length L and compares
each exact quantity with sums over that enumeration; what the enumeration cannot see (strings
longer than L) is bounded by the exact tail mass P(|s| > L).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

import formal_lm as fl
from formal_lm.language import enumerate_strings

ATOL = 1e-10
FALSE_ALARM = 1e-4  # per chi-square test


def brute_force(lang, L):
    strings = list(enumerate_strings(lang.alphabet, L))
    logp = np.array([lang.log_prob(s) for s in strings])
    return strings, np.exp(logp), logp


def check_language(lang: fl.Language, L: int, *, n_samples: int = 2000, seed: int = 0):
    strings, p, logp = brute_force(lang, L)
    st = lang.length_stats(L)
    lengths = np.array([len(s) for s in strings])

    # probability mass by length and the exact tail
    by_len = np.bincount(lengths, weights=p, minlength=L + 1)
    np.testing.assert_allclose(by_len, st.prob, atol=ATOL)
    assert abs(1 - p.sum() - st.tail) < 1e-9
    full = lang._stats_to_tail()
    assert abs(full.prob.sum() + full.tail - 1) < 1e-9
    assert full.tail < 1e-9, "the distribution must sum to 1"

    # expected surprisal by length, and the entropy
    with np.errstate(invalid="ignore", divide="ignore"):
        surprise = np.where(p > 0, -p * logp, 0.0)
    if st.surprisal is not None:
        np.testing.assert_allclose(np.bincount(lengths, surprise, L + 1), st.surprisal, atol=1e-9)
        if lang.entropy_is_exact:
            assert abs(full.surprisal.sum() - lang.entropy()) < 1e-7
    assert surprise.sum() <= lang.entropy() + 1e-9
    mean_len = float((full.prob * np.arange(len(full.prob))).sum())
    assert abs(mean_len - lang.expected_length()) < 1e-6 * max(1.0, mean_len)

    # membership and rules
    for s, ps in zip(strings, p):
        assert lang.accepts(s) == (ps > 0)
        if ps > 0:
            for r in lang.rules:
                assert r.holds(s), (r.name, s)
                assert all(r.can_complete(s[:t]) for t in range(len(s) + 1)), (r.name, s)
        elif lang.rules and hasattr(lang, "matches_template") and all(
                r.holds(s) for r in lang.rules):
            assert lang.matches_template(s), s  # the rules define exactly the template

    # prefix probabilities: brute-force sums, the chain rule and next-token ratios
    index = {s: i for i, s in enumerate(strings)}
    pre = {}
    for s, ps in zip(strings, p):
        for t in range(len(s) + 1):
            pre[s[:t]] = pre.get(s[:t], 0.0) + ps
    for q in enumerate_strings(lang.alphabet, L - 1):
        exact = math.exp(lang.prefix_log_prob(q))
        seen = pre.get(q, 0.0)
        assert seen <= exact + 1e-12 and exact - seen <= st.tail + 1e-12, (q, exact, seen)
        kids = sum(math.exp(lang.prefix_log_prob(q + (a,))) for a in lang.alphabet)
        assert abs(exact - p[index[q]] - kids) < 1e-12 + 1e-9 * exact, q
        if exact == 0:
            with pytest.raises(fl.ZeroProbabilityPrefix):
                lang.next_token_dist(q)
            continue
        dist = lang.next_token_dist(q)
        assert abs(sum(dist.values()) - 1) < 1e-9
        assert abs(dist[fl.EOS] - p[index[q]] / exact) < 1e-9
        for a in lang.alphabet:
            assert abs(dist[a] - math.exp(lang.prefix_log_prob(q + (a,))) / exact) < 1e-9

    # the loss floor's per-sequence figures against the enumeration
    floor = lang.optimal_loss()
    exact = floor.per_token if floor.kind == "exact" else floor.upper_bound
    assert abs(exact - lang.entropy() / (lang.expected_length() + 1)) < 1e-12
    if floor.kind == "exact" and floor.per_sequence_mean is not None and st.tail < 1e-12:
        per_seq = (surprise / (lengths + 1)).sum()
        assert abs(per_seq - floor.per_sequence_mean) < 1e-9

    # batched exact next-token tables agree with the per-prefix distributions
    samples = lang.sample(n_samples, seed=seed)
    batch = samples[:16]
    ids = lang.vocab.batch(batch)
    probs = lang.next_token_probs(ids)
    for b, s in enumerate(batch):
        # the reference is the base class's per-prefix path (families' own next_token_table
        # may call next_token_probs itself)
        table = fl.Language.next_token_table(lang, s)
        np.testing.assert_allclose(probs[b, : len(s) + 1], table, atol=1e-9)
        np.testing.assert_allclose(table.sum(1), 1.0, atol=1e-9)
        assert not probs[b, len(s) + 1:].any()

    # on arbitrary strings (most outside the language) the fast batched path agrees with the
    # base class's generic per-prefix path
    rng = np.random.default_rng(seed)
    noise = [tuple(rng.choice(lang.alphabet, size=rng.integers(0, L + 1))) for _ in range(12)]
    noise += [()] + [s[:-1] + (lang.alphabet[0],) for s in batch if s][:6]
    probs = lang.next_token_probs(lang.vocab.batch(noise))
    for b, s in enumerate(noise):
        generic = fl.Language.next_token_table(lang, s)
        np.testing.assert_allclose(probs[b, : len(s) + 1], generic, atol=1e-9)

    # samples: accepted, and frequencies match the exact probabilities (chi-square)
    for s in samples:
        assert lang.accepts(s), s
    check_frequencies(lang, samples)
    for length in sorted({len(s) for s in samples})[:3]:
        cond = lang.sample(50, seed=seed + 1, length=length)
        assert all(len(s) == length and lang.accepts(s) for s in cond)


def check_frequencies(lang, samples, max_bins=20):
    """Chi-square goodness of fit of sample counts to exact probabilities (false alarm 1e-4)."""
    counts = {}
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
    top = sorted(counts, key=lambda s: -lang.log_prob(s))[:max_bins]
    exp_p = np.array([lang.prob(s) for s in top])
    obs = np.array([counts[s] for s in top], float)
    rest_p, rest_o = 1 - exp_p.sum(), len(samples) - obs.sum()
    if rest_p > 1e-12:
        exp_p, obs = np.append(exp_p, rest_p), np.append(obs, rest_o)
    expected = exp_p * len(samples)
    keep = expected >= 5
    if keep.sum() < 2:
        return
    obs_k, exp_k = obs[keep], expected[keep]
    exp_k = exp_k * obs_k.sum() / exp_k.sum()
    pvalue = stats.chisquare(obs_k, exp_k).pvalue
    assert pvalue > FALSE_ALARM, f"sample frequencies do not match probabilities (p={pvalue:.2e})"
