"""The Bayes-optimal in-context predictor (formal_lm.studies.icl_bayes): closed forms against
numerical integration, exact enumeration against brute force over every full automaton, the
particle filter against exact enumeration, and sanity checks on sequences drawn from the prior."""
from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
import pytest
from scipy import integrate

from formal_lm.errors import FormalLMError
from formal_lm.studies.icl import PDFAFamily, icl_batch, ngram_in_context
from formal_lm.studies.icl_bayes import (
    BayesRows,
    bayes_ce,
    bayes_rows,
    kl_to_bayes,
    oracle_gap,
)
from formal_lm.vocab import BOS_ID, EOS_ID, PAD_ID


def _events(fam, ids):
    """Per row t: (context as local tokens, halt token id); local 0 = halt, 1 + a = symbol a."""
    out, ctx, dl = [], [], 0
    for t in range(len(ids) - 1):
        if ids[t + 1] == PAD_ID:
            break
        out.append((list(ctx), fam.delimiter_id if dl < fam.strings_per_sequence - 1 else EOS_ID))
        y = int(ids[t + 1])
        dl += y == fam.delimiter_id
        ctx.append(0 if y in (fam.delimiter_id, EOS_ID) else y - 2)
    return out


def _rows_from(fam, ids, marginal):
    """[T-1, V] rows from ``marginal(local tokens)`` (the marginal likelihood of a context)."""
    A, V = fam.alphabet_size, fam.vocab.size
    rows = np.zeros((len(ids) - 1, V))
    for t, (ctx, halt_id) in enumerate(_events(fam, ids)):
        z = marginal(tuple(ctx))
        rows[t, halt_id] = marginal(tuple(ctx) + (0,)) / z
        for a in range(A):
            rows[t, 3 + a] = marginal(tuple(ctx) + (1 + a,)) / z
    return rows


# ----------------------------------------------------------------------------- one state
def _one_state_marginal(fam, k):
    """Marginal likelihood of a one-state automaton by numerical integration over h and the
    weights (two symbols; k = 1: the subset {a} or {b}, each with prior 1/2)."""
    lo, hi = fam.stop_prob

    @lru_cache(maxsize=None)
    def marginal(ctx):
        H, ca, cb = ctx.count(0), ctx.count(1), ctx.count(2)
        if k == 2:
            f = lambda w, h: h ** H * ((1 - h) * w) ** ca * ((1 - h) * (1 - w)) ** cb
            return integrate.dblquad(f, lo, hi, 0, 1, epsabs=0, epsrel=1e-11)[0] / (hi - lo)
        g = integrate.quad(lambda h: h ** H * (1 - h) ** (ca + cb), lo, hi, epsabs=0,
                           epsrel=1e-12)[0] / (hi - lo)
        return g * 0.5 * ((ca == 0) + (cb == 0))
    return marginal


@pytest.mark.parametrize("density", [1.0, 0.5])
def test_one_state_is_the_closed_form_posterior_predictive(density):
    fam = PDFAFamily(n_states=(1, 1), alphabet_size=2, density=density, strings_per_sequence=3,
                     max_length=12, stop_prob=(0.1, 0.4))
    d = fam.delimiter_id
    seq = [BOS_ID, 3, 3, 4, d, 3, d, 4, 3, 3, EOS_ID] if density == 1.0 else \
        [BOS_ID, 3, 3, 3, d, 3, d, 3, 3, EOS_ID]
    ids = np.array([seq + [PAD_ID] * (12 - len(seq))])
    got = bayes_rows(fam, ids)
    assert got.exact
    want = _rows_from(fam, ids[0], _one_state_marginal(fam, round(density * 2)))
    np.testing.assert_allclose(got.rows[0], want, atol=1e-9)
    assert np.allclose(got.rows[0, len(seq) - 1:], 0)  # zero rows at PAD targets


# ----------------------------------------------------------------------------- brute force
def _brute_marginal(fam):
    """Marginal likelihood of a context, summed over EVERY full automaton of the family (state
    count, subsets, targets) with parameters integrated numerically (k <= 2)."""
    lo, hi = fam.stop_prob
    A = fam.alphabet_size
    k = max(1, int(round(fam.density * A)))
    assert k <= 2
    subsets = list(itertools.combinations(range(A), k))
    autos = []  # (prior, subsets per state, targets per state and symbol)
    p_n = 1 / (fam.n_states[1] - fam.n_states[0] + 1)
    for n in range(fam.n_states[0], fam.n_states[1] + 1):
        for S in itertools.product(subsets, repeat=n):
            for tg in itertools.product(range(n), repeat=n * k):
                delta = [dict(zip(S[q], tg[q * k:(q + 1) * k])) for q in range(n)]
                autos.append((p_n / len(subsets) ** n / n ** (n * k), S, delta))

    @lru_cache(maxsize=None)
    def J(H, C):
        return integrate.quad(lambda h: h ** H * (1 - h) ** C, lo, hi, epsabs=0,
                              epsrel=1e-12)[0] / (hi - lo)

    @lru_cache(maxsize=None)
    def D(c):  # E[prod w_a^c_a] under a flat Dirichlet over k symbols
        return 1.0 if k == 1 else integrate.quad(lambda w: w ** c[0] * (1 - w) ** c[1], 0, 1,
                                                 epsabs=0, epsrel=1e-12)[0]

    def lik(S, delta, ctx):
        H, cnt, q = [0] * len(S), [[0] * A for _ in S], 0
        for x in ctx:
            if x == 0:
                H[q], q = H[q] + 1, 0
                continue
            if x - 1 not in S[q]:
                return 0.0
            cnt[q][x - 1] += 1
            q = delta[q][x - 1]
        return math.prod(J(H[s], sum(cnt[s])) * D(tuple(cnt[s][a] for a in S[s]))
                         for s in range(len(S)))

    return lru_cache(maxsize=None)(lambda ctx: sum(p * lik(S, d, ctx) for p, S, d in autos))


@pytest.mark.parametrize("n_states,alphabet,density",
                         [((1, 2), 2, 1.0), ((1, 2), 2, 0.5), ((1, 2), 3, 0.6), ((2, 3), 2, 0.5)])
def test_exact_enumeration_matches_brute_force(n_states, alphabet, density):
    fam = PDFAFamily(n_states=n_states, alphabet_size=alphabet, density=density,
                     strings_per_sequence=3, max_length=16, stop_prob=(0.1, 0.3))
    b = icl_batch(fam, 3, seed=5)
    got = bayes_rows(fam, b, exact=True)
    marginal = _brute_marginal(fam)
    for j in range(len(b.ids)):
        np.testing.assert_allclose(got.rows[j], _rows_from(fam, b.ids[j], marginal), atol=1e-9)


# ----------------------------------------------------------------------------- particle filter
def _agree(b, ex, pf, k=4.0):
    """The estimate's CE and KL(oracle || .) within k standard errors of exact; per-entry
    errors within 3 standard errors for nearly all entries."""
    assert ex.exact and not pf.exact and pf.se.max() > 0  # the filter did cut structures
    for fn in (bayes_ce, oracle_gap):
        (v_ex, se_ex), (v_pf, se_pf) = fn(b, ex), fn(b, pf)
        assert se_ex == 0 and 0 < se_pf < 0.01
        assert abs(v_pf - v_ex) < k * se_pf, (fn.__name__, v_ex, v_pf, se_pf)
    mask = b.ids[:, 1:] != PAD_ID
    assert np.abs(pf.rows - ex.rows)[mask].mean() < 0.005
    z = np.abs(pf.rows - ex.rows)[mask] / np.maximum(pf.se[mask], 1e-12)
    assert np.mean(z < 3) > 0.95  # t with 7 degrees of freedom: P(|t| < 3) = 0.98


def test_particle_estimate_agrees_with_exact_enumeration():
    fam = PDFAFamily(n_states=(1, 3), alphabet_size=3, density=0.6, strings_per_sequence=5,
                     max_length=48)
    b = icl_batch(fam, 24, seed=3)
    ex = bayes_rows(fam, b)  # hi^(hi k) = 729 structures at most: exact by default
    pf = bayes_rows(fam, b, exact=False, particles=64, runs=8, seed=1)
    assert pf.runs.shape == (8,) + ex.rows.shape and pf.kept_true
    _agree(b, ex, pf)
    plain = bayes_rows(fam, b.ids, exact=False, particles=64, runs=8, seed=1)  # ids only
    assert not plain.kept_true
    _agree(b, ex, plain)


def test_particle_estimate_on_the_default_family():
    """The experiment's family (n_states 3..6, 4 symbols), cut to 40 tokens so that exact
    enumeration runs (up to ~10^5 lazy structures per sequence)."""
    fam = PDFAFamily(max_length=40)
    b = icl_batch(fam, 16, seed=7)
    ex = bayes_rows(fam, b, exact=True, max_structures=400_000)
    _agree(b, ex, bayes_rows(fam, b, particles=256, runs=8, seed=0))


def test_seeds_dead_runs_limits_and_bad_input():
    fam = PDFAFamily(n_states=(1, 3), alphabet_size=2, density=1.0, strings_per_sequence=3,
                     max_length=24)
    b = icl_batch(fam, 4, seed=0)
    one = bayes_rows(fam, b, exact=False, particles=4, runs=2, seed=4)
    assert np.array_equal(one.rows, bayes_rows(fam, b, exact=False, particles=4, runs=2,
                                               seed=4).rows)
    assert not np.array_equal(one.rows, bayes_rows(fam, b, exact=False, particles=4, runs=2,
                                                   seed=5).rows)
    big = PDFAFamily(max_length=64)
    bb = icl_batch(big, 8, seed=2)
    real = bb.ids[:, 1:] != PAD_ID
    kept = bayes_rows(big, bb, particles=1, runs=2)  # the true structure keeps every run alive
    assert kept.kept_true and ((kept.runs.sum(-1) > 0) == real).all()
    np.testing.assert_allclose(kept.rows.sum(-1), real.astype(float), atol=1e-9)
    with pytest.raises(FormalLMError, match="every run lost the structures"):
        bayes_rows(big, bb.ids, particles=1, runs=2)  # without it one particle loses them
    with pytest.raises(FormalLMError, match="max_structures=2"):
        bayes_rows(fam, b, exact=True, max_structures=2)
    other = PDFAFamily(n_states=(1, 3), alphabet_size=2, strings_per_sequence=2, max_length=24)
    with pytest.raises(FormalLMError, match="not a sequence of this family"):
        bayes_rows(other, b)
    one_state = PDFAFamily(n_states=(1, 1), alphabet_size=2, density=0.5, strings_per_sequence=1)
    impossible = np.array([[BOS_ID, 3, 4, EOS_ID]])  # "ab" from one state with one symbol
    with pytest.raises(FormalLMError, match=r"sequences \[0\] have probability 0"):
        bayes_rows(one_state, impossible)


# ----------------------------------------------------------------------------- sanity
def test_sanity_on_sequences_of_the_prior():
    fam = PDFAFamily()  # the default family of experiments/icl-pdfa.toml: particle estimate
    b = icl_batch(fam, 64, seed=11)
    bay = bayes_rows(fam, b, particles=256, runs=4, seed=0)
    assert isinstance(bay, BayesRows) and not bay.exact and bay.particles == 256
    mask = b.ids[:, 1:] != PAD_ID
    np.testing.assert_allclose(bay.rows.sum(-1), mask.astype(float), atol=1e-9)
    gap, se = oracle_gap(b, bay)  # the oracle knows the automaton; the learner must infer it
    assert gap > 0.05 and se < gap / 20
    by_string = [oracle_gap(b, bay, where=b.string_index == i)[0] for i in range(8)]
    assert by_string[0] > 2 * by_string[-1]  # the learner catches up as context accumulates
    assert by_string[0] > by_string[1] > by_string[3] > by_string[7]
    ce, ce_se = bayes_ce(b, bay)
    with np.errstate(divide="ignore"):
        oracle_ce = -np.log(np.take_along_axis(b.oracle, b.ids[:, 1:, None], -1)[..., 0][mask])
        assert oracle_ce.mean() < ce
        for n in (1, 2, 3):  # the Bayes predictor beats every in-context n-gram
            logq = np.log(ngram_in_context(b.ids, n, fam.vocab.size, k=0.5))
            ngram_ce = -np.take_along_axis(logq, b.ids[:, 1:, None], -1)[..., 0][mask].mean()
            assert ce + 5 * ce_se < ngram_ce - 0.02, (n, ce, ngram_ce)
            kl, kl_se = kl_to_bayes(b, logq, bay)
            assert kl > 0.02 and kl_se < kl / 10
        logp = np.log(np.where(mask[..., None], bay.rows, 1.0))
    assert abs(kl_to_bayes(b, logp, bay)[0]) < 1e-9
