"""The conformance suite: every language passes the same brute-force checks.

Adding a grammar file to grammars/ adds it here automatically. Random languages from
hypothesis go through the same checks.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import formal_lm as fl
import formal_lm.testing as ft
from oracles import check_language

# enumeration length per alphabet size keeps each grammar to a few thousand strings
def _length(lang):
    return {1: 14, 2: 10, 3: 6, 4: 5, 5: 4}.get(len(lang.alphabet), 3)


@pytest.mark.parametrize("name", sorted(fl.shipped()))
def test_shipped_grammar_conforms(name):
    lang = fl.load(name)
    check_language(lang, _length(lang), n_samples=1000)


@pytest.mark.parametrize("name", sorted(fl.shipped()))
def test_shipped_grammar_inspect_figures(name):
    lang = fl.load(name)
    floor = lang.optimal_loss()
    assert floor.entropy > 0 and floor.per_token > 0
    assert floor.tokens_per_string == pytest.approx(lang.expected_length() + 1)


def test_anbn_matches_the_papers_setting():
    lang = fl.load("anbn")
    assert lang.prob("ab") == pytest.approx(1 / 128)
    assert lang.log_prob("a" * 129 + "b" * 129) == -math.inf
    # Reizinger et al. report an entropy floor of 0.018879 nats per position averaged over 257
    # positions of a 258-token padded sequence: ln(128) / 257.
    assert lang.entropy() / 257 == pytest.approx(0.018879, abs=1e-6)
    # after a^j the next token is b with probability P(n = j) / P(n >= j)
    for j in (1, 5, 128):
        dist = lang.next_token_dist("a" * j)
        assert dist["b"] == pytest.approx(1 / (128 - j + 1))
    assert lang.next_token_dist("a" * 128)["a"] == 0.0
    assert lang.optimal_loss().per_token == pytest.approx(math.log(128) / 130)


def test_string_and_tuple_forms_agree():
    lang = fl.load("anbn")
    assert lang.log_prob("aabb") == lang.log_prob(("a", "a", "b", "b"))
    with pytest.raises(fl.FormalLMError, match="symbol='c'"):
        lang.log_prob("abc")


def test_no_underflow_at_length_3000():
    lang = fl.load("parity")
    s = "0" * 3000
    lp = lang.log_prob(s)
    assert np.isfinite(lp) and lp == pytest.approx(3000 * math.log(0.4) + math.log(0.2))
    assert np.isfinite(lang.next_token_table(s)).all()


# ----- random languages (the strategies of formal_lm.testing) -------------------------------------
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ft.counter_languages())
def test_random_counter_languages_conform(lang):
    check_language(lang, 7, n_samples=500)


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 3), st.integers(0, 10_000))
def test_counter_languages_with_unbounded_geometric_priors(n_blocks, seed):
    rng = np.random.default_rng(seed)
    blocks = [fl.Block("ab"[i % 2], int(rng.integers(1, 3)), ["n", "m"][int(rng.integers(2))])
              for i in range(n_blocks + 1)]
    priors = {v: fl.Geometric(float(rng.choice([0.5, 0.7])), int(rng.integers(1, 3)))
              for v in sorted({b.var for b in blocks})}
    check_language(fl.CounterLanguage("geo", blocks, priors), 8, n_samples=500)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ft.counter_languages(linear=True, max_blocks=4, max_count=3))
def test_random_linear_counter_languages_conform(lang):
    """Blocks that sum variables (c^(n+m)): a string may come from several assignments."""
    check_language(lang, 7, n_samples=500)


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 10_000))
def test_linear_counter_languages_with_unbounded_geometric_priors(seed):
    rng = np.random.default_rng(seed)
    blocks = [fl.Block("a", 1, "n", ((int(rng.integers(1, 3)), "m"),))]
    if rng.integers(2):
        blocks.append(fl.Block("b", int(rng.integers(1, 3)), "m"))
    priors = {"n": fl.Geometric(float(rng.choice([0.5, 0.7])), int(rng.integers(0, 2))),
              "m": fl.Geometric(float(rng.choice([0.5, 0.7])), int(rng.integers(0, 2)))}
    check_language(fl.CounterLanguage("geo", blocks, priors), 9, n_samples=500)


def test_a_string_from_several_assignments_sums_them():
    """c^(n+m) with n, m ~ Uniform{1..3}: P(c^k) counts the pairs with n + m = k, and the string
    entropy is below the prior's (the assignment is not identifiable)."""
    lang = fl.CounterLanguage("c", [fl.Block("c", 1, "n", ((1, "m"),))],
                              {"n": fl.Uniform(1, 3), "m": fl.Uniform(1, 3)})
    pairs = {k: sum(1 for n in range(1, 4) for m in range(1, 4) if n + m == k) for k in range(2, 7)}
    for k, count in pairs.items():
        assert lang.prob("c" * k) == pytest.approx(count / 9)
    exact = -sum(c / 9 * math.log(c / 9) for c in pairs.values())
    assert lang.entropy_is_exact and lang.entropy() == pytest.approx(exact, abs=1e-12)
    assert lang.entropy() < 2 * math.log(3)
    assert lang.next_token_dist("cc")[fl.EOS] == pytest.approx(1 / 9)
    # unbounded: n, m ~ Geometric(p, min 0), so n + m is negative binomial: (k + 1) p^2 q^k
    p, q = 0.5, 0.5
    geo = fl.CounterLanguage("g", [fl.Block("c", 1, "n", ((1, "m"),))],
                             {"n": fl.Geometric(p), "m": fl.Geometric(p)})
    pk = [(k + 1) * p * p * q ** k for k in range(400)]
    assert geo.prob("ccc") == pytest.approx(pk[3], rel=1e-12)
    assert geo.entropy() == pytest.approx(-sum(x * math.log(x) for x in pk if x > 0), abs=1e-10)


def test_anbmcnm_and_anbmcndm_are_exact():
    lang = fl.load("anbmcnm")
    assert lang.prob("abcc") == pytest.approx(1 / 36) and lang.prob("abc") == 0.0
    dist = lang.next_token_dist("aab")  # m = 1 (then c) or m > 1 (another b)
    assert dist["c"] == pytest.approx(1 / 6) and dist["b"] == pytest.approx(5 / 6)
    assert lang.next_token_dist("aabcc")["c"] == 1.0
    assert lang.entropy() == pytest.approx(2 * math.log(6))
    assert lang.expected_length() == pytest.approx(14.0)
    lang = fl.load("anbmcndm")
    assert lang.prob("aabccd") == pytest.approx(1 / 36) and lang.prob("aabccdd") == 0.0
    assert [r.name for r in lang.rules] == ["R1", "R2", "R3"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ft.pfsas(deterministic=True, min_halt=0.3))
def test_random_pdfas_conform(lang):
    check_language(lang, 8, n_samples=800)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ft.pfsas(deterministic=False, min_halt=0.3))
def test_random_nondeterministic_pfsas_conform(lang):
    check_language(lang, 8, n_samples=800)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ft.pcfgs())
def test_random_pcfgs_conform(lang):
    check_language(lang, 7, n_samples=800)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 4), st.integers(0, 10_000), st.sampled_from([0.5, 1.0]))
def test_random_pdfa_generator(n_states, seed, density):
    lang = fl.random_pdfa(n_states, ("a", "b"), seed=seed, density=density,
                          stop_prob=(0.4, 0.7))
    assert lang.deterministic
    check_language(lang, 8, n_samples=500)


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.booleans())
def test_random_dyck_languages_conform(lo, width, nested):
    pairs = [("(", ")"), ("[", "]")] if not nested or lo % 2 else [("(", ")")]
    lang = fl.DyckLanguage("d", pairs, fl.Uniform(lo, lo + width), nested=nested or len(pairs) == 1)
    check_language(lang, 8 if len(pairs) == 1 else 6, n_samples=500)



@pytest.mark.parametrize("name", ["anbn", "dyck2", "parity", "arith"])
def test_next_token_probs_rejects_rows_without_bos(name):
    lang = fl.load(name)
    ids = lang.vocab.batch([lang.sample(1, seed=0)[0]])
    with pytest.raises(fl.FormalLMError, match="does not start with BOS"):
        lang.next_token_probs(ids[:, 1:])


@pytest.mark.parametrize("name", sorted(fl.shipped()))
def test_sample_checks_its_arguments(name):
    """sample is one template for every family: n, seed and length checked before any work."""
    lang = fl.load(name)
    assert lang.sample(0) == [] and lang.sample(0, seed=5) == []
    assert lang.sample(2, seed=np.int64(3)) == lang.sample(2, seed=3)
    for bad in (dict(n=-1), dict(n=True), dict(n=1.0), dict(n="2"), dict(n=2, seed=-1),
                dict(n=2, seed=0.5), dict(n=2, length=-1), dict(n=2, length=2.5),
                dict(n=2, length=True)):
        n = bad.pop("n")
        with pytest.raises(fl.FormalLMError):
            lang.sample(n, **bad)


@pytest.mark.parametrize("name", sorted(fl.shipped()))
def test_impossible_lengths_say_so(name):
    lang = fl.load(name)
    dist = lang.length_distribution(12)
    for L in range(13):
        if dist[L] == 0:
            with pytest.raises(fl.FormalLMError, match="length"):
                lang.sample(2, seed=0, length=L)
        else:
            assert all(len(s) == L for s in lang.sample(2, seed=0, length=L))


# ----- languages conditioned on a length range (lang.restrict) -------------------------------------
def _range_inside(lang, L):
    """A sub-range of the lengths 0..L with mass: from the second length with mass (the first
    when there are two or fewer) to the last length with mass up to L."""
    support = np.flatnonzero(lang.length_distribution(L) > 0)
    return int(support[1] if len(support) > 2 else support[0]), int(support[-1])


@pytest.mark.parametrize("name", sorted(fl.shipped()))
def test_shipped_grammar_restrictions_conform(name):
    base = fl.load(name)
    L = _length(base)
    lo, hi = _range_inside(base, L)
    lang = base.restrict(lo, hi)
    assert lang.name == f"{base.name}[{lo}..{hi}]" and lang.rules == base.rules
    assert lang.entropy_is_exact == base.entropy_is_exact
    check_language(lang, L, n_samples=600)


def test_an_ambiguous_restriction_conforms():
    """arith on lengths 3..5, where x+x*x has two derivations: exact probabilities, an entropy
    that bounds the string entropy from above, an estimated floor."""
    lang = fl.load("arith").restrict(3, 5)
    assert not lang.entropy_is_exact
    check_language(lang, 5, n_samples=600)


def _check_restricted(lang, lo, hi, L, n_samples=400):
    """The oracle on ``lang.restrict(lo, hi)``, or the error of an empty range."""
    if not lang.length_distribution(hi)[lo: hi + 1].sum() > 0:
        with pytest.raises(fl.FormalLMError, match=rf"\[{lo}, {hi}\]"):
            lang.restrict(lo, hi)
        return
    check_language(lang.restrict(lo, hi), L, n_samples=n_samples)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ft.counter_languages(), st.integers(0, 4), st.integers(0, 4))
def test_random_restricted_counter_languages_conform(lang, lo, width):
    _check_restricted(lang, lo, lo + width, 7)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ft.counter_languages(linear=True, max_blocks=3, max_count=3), st.integers(0, 4),
       st.integers(0, 3))
def test_random_restricted_linear_counter_languages_conform(lang, lo, width):
    _check_restricted(lang, lo, lo + width, 7)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ft.pfsas(deterministic=True, min_halt=0.3), st.integers(0, 4), st.integers(0, 4))
def test_random_restricted_pdfas_conform(lang, lo, width):
    _check_restricted(lang, lo, lo + width, 8)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ft.pfsas(deterministic=False, min_halt=0.3), st.integers(0, 4), st.integers(0, 4))
def test_random_restricted_nondeterministic_pfsas_conform(lang, lo, width):
    _check_restricted(lang, lo, lo + width, 8)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ft.pcfgs(), st.integers(0, 4), st.integers(0, 3))
def test_random_restricted_pcfgs_conform(lang, lo, width):
    _check_restricted(lang, lo, lo + width, 7)


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.booleans(), st.integers(0, 6), st.integers(0, 4))
def test_random_restricted_dyck_languages_conform(lo_pairs, width, nested, lo, span):
    pairs = [("(", ")"), ("[", "]")] if not nested or lo_pairs % 2 else [("(", ")")]
    lang = fl.DyckLanguage("d", pairs, fl.Uniform(lo_pairs, lo_pairs + width),
                           nested=nested or len(pairs) == 1)
    _check_restricted(lang, lo, lo + span, 8 if len(pairs) == 1 else 6)
