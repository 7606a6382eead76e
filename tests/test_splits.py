"""Compositional splits (``formal_lm.splits``, ``formal_lm.count_splits``) against brute force.

The reference is independent of the construction: PCFG splits are checked against every parse
tree of every enumerated string (``pcfg.parses``), filtered by whether the tree uses the excluded
production (under its parent); counter splits against the enumerated assignments of the priors,
filtered and renormalised. The conformance oracle (``oracles.check_language``) then checks every
other exact quantity of both sides against enumeration.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import formal_lm as fl
import formal_lm.testing as ft
from formal_lm.count_splits import exclude_counts, held_out_combinations
from formal_lm.language import enumerate_strings
from formal_lm.pcfg import PCFG, parses
from formal_lm.splits import exclude_production
from oracles import check_language

FAST = settings(max_examples=15, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# ----- brute force ----------------------------------------------------------------------------
def uses(tree, lhs, rhs, parent, above=None) -> bool:
    """Does the tree apply ``lhs -> rhs`` at a node whose parent is labelled ``parent``?"""
    kids = tuple(c if isinstance(c, str) else c.label for c in tree.children)
    if tree.label == lhs and kids == tuple(rhs) and (parent is None or above == parent):
        return True
    return any(uses(c, lhs, rhs, parent, tree.label) for c in tree.children
               if not isinstance(c, str))


def filtered(g, lhs, rhs, parent, L):
    """{s: (P(s, no tree step is the production), P(s, some step is))} over strings <= L."""
    out = {}
    for s in enumerate_strings(g.alphabet, L):
        if not g.accepts(s):
            continue
        avoid = used = 0.0
        for tree, p in parses(g, s):
            if uses(tree, lhs, rhs, parent):
                used += p
            else:
                avoid += p
        out[s] = (avoid, used)
    return out


def check_pcfg_split(g, lhs, rhs, parent, L):
    sp = exclude_production(g, lhs, rhs, parent=parent)
    table = filtered(g, lhs, rhs, parent, L)
    M = sp.held_out_mass
    tail = 1 - sum(a + u for a, u in table.values())  # P(|s| > L): what enumeration misses
    seen_used = sum(u for _, u in table.values())
    assert seen_used - 1e-12 <= M <= seen_used + tail + 1e-12
    for s in enumerate_strings(g.alphabet, L):
        avoid, used = table.get(s, (0.0, 0.0))
        assert sp.train.prob(s) == pytest.approx(avoid / (1 - M), rel=1e-9, abs=1e-14), s
        assert sp.held_out.prob(s) == pytest.approx(used / M, rel=1e-9, abs=1e-14), s
    return sp, table


# ----- PCFG splits ---------------------------------------------------------------------------
FINITE = PCFG.from_nltk("""
S -> A B [0.6] | B A [0.4]
A -> 'a' [0.5] | 'a' 'a' [0.3] | 'b' [0.2]
B -> 'b' [0.7] | 'a' 'b' [0.3]
""", name="finite")


@pytest.mark.parametrize("lhs, rhs, parent", [("A", ("a",), None), ("A", ("a",), "S"),
                                              ("B", ("a", "b"), None)])
def test_finite_grammar_split_is_exact_filtering(lhs, rhs, parent):
    """A finite (and ambiguous) grammar: enumeration sees every string, so the next-token rows
    and the held-out mass are compared with no tail at all."""
    sp, table = check_pcfg_split(FINITE, lhs, rhs, parent, 4)
    M = sum(u for _, u in table.values())
    assert sp.held_out_mass == pytest.approx(M, abs=1e-12)
    for lang, k, z in ((sp.train, 0, 1 - M), (sp.held_out, 1, M)):
        pre: dict = {}
        for s, pair in table.items():
            for t in range(len(s) + 1):
                pre[s[:t]] = pre.get(s[:t], 0.0) + pair[k] / z
        for q, mass in pre.items():
            if mass <= 1e-15:
                continue
            dist = lang.next_token_dist(q)
            assert dist[fl.EOS] == pytest.approx(table.get(q, (0, 0))[k] / z / mass, abs=1e-9)
            for a in FINITE.alphabet:
                assert dist[a] == pytest.approx(pre.get(q + (a,), 0.0) / mass, abs=1e-9)


def test_mixture_identity_on_an_ambiguous_grammar():
    """toy-english attaches PPs ambiguously: (1 - M) p_train + M p_held = p holds string by
    string, and both sides match parse-tree filtering."""
    g = fl.load("toy-english")
    assert not g.entropy_is_exact
    sp, _ = check_pcfg_split(g, "NP", ("NP", "PP"), "VP", 0)
    # the splits stay ambiguous (a subject "the dog near the man with a telescope" attaches its
    # last PP in two ways), so their entropy is only the derivation entropy's bound
    assert not sp.train.entropy_is_exact and not sp.held_out.entropy_is_exact
    for s in g.sample(40, seed=1):
        mix = (1 - sp.held_out_mass) * sp.train.prob(s) + sp.held_out_mass * sp.held_out.prob(s)
        assert mix == pytest.approx(g.prob(s), rel=1e-9)
        avoid = sum(p for t, p in parses(g, s) if not uses(t, "NP", ("NP", "PP"), "VP"))
        assert sp.train.prob(s) == pytest.approx(avoid / (1 - sp.held_out_mass), rel=1e-9)


def test_recursive_split_conforms_and_keeps_exact_entropy():
    g = PCFG.from_nltk("S -> 'a' S 'b' [0.3] | 'c' S [0.2] | 'c' [0.3] | 'd' [0.2]", name="rec")
    sp, _ = check_pcfg_split(g, "S", ("c",), "S", 6)  # 'c' as the last step under an S
    assert sp.train.entropy_is_exact and sp.held_out.entropy_is_exact
    check_language(sp.train, 5, n_samples=600)
    check_language(sp.held_out, 5, n_samples=600)
    # the entropy splits exactly: H(full) = h(M) + (1 - M) H_train + M H_held
    M = sp.held_out_mass
    h = -M * math.log(M) - (1 - M) * math.log(1 - M)
    assert g.entropy() == pytest.approx(h + (1 - M) * sp.train.entropy()
                                        + M * sp.held_out.entropy(), rel=1e-9)


@FAST
@given(ft.pcfgs(max_nonterminals=3, max_rules=3), st.data())
def test_random_grammar_split_matches_parse_filtering(g, data):
    k = data.draw(st.integers(0, len(g.productions) - 1))
    lhs, rhs, _ = g.productions[k]
    parents = [None] + sorted({A for A, r, _ in g.productions if lhs in r})
    parent = data.draw(st.sampled_from(parents))
    try:
        check_pcfg_split(g, lhs, rhs, parent, 5)
    except fl.FormalLMError as e:
        # a production every derivation uses (or none), or a unary cycle: infinitely many
        # parse trees, which the brute force cannot list
        assert "M=" in str(e) or "infinitely many parses" in str(e)
        assume(False)


def test_pcfg_split_errors_name_the_problem():
    with pytest.raises(fl.FormalLMError, match="no production A -> 'c'"):
        exclude_production(FINITE, "A", ("c",))
    with pytest.raises(fl.FormalLMError, match="lhs='X'"):
        exclude_production(FINITE, "X", ("a",))
    with pytest.raises(fl.FormalLMError, match="parent='A' never has 'B'"):
        exclude_production(FINITE, "B", ("b",), parent="A")
    g = PCFG.from_nltk("S -> 'a' [1.0]")
    with pytest.raises(fl.FormalLMError, match="nothing is left to train on"):
        exclude_production(g, "S", ("a",))


# ----- counter splits ------------------------------------------------------------------------
def assignments(lang):
    ranges = [range(lang.priors[v].min, lang.priors[v].largest() + 1) for v in lang.vars]
    for c in itertools.product(*ranges):
        lp = sum(float(lang.priors[v].log_pmf(x)) for v, x in zip(lang.vars, c))
        if lp > -math.inf:
            yield c, math.exp(lp)


def brute_counter_split(lang, combos):
    """The template's assignments enumerated, strings built here, filtered and renormalised."""
    keep, gone = {}, {}
    for c, p in assignments(lang):
        counts = dict(zip(lang.vars, c))
        s = tuple(x for b in lang.blocks for x in [b.symbol] * (
            sum(k * counts[v] for v, k in b.terms()) if b.var else b.coef))
        side = gone if c in combos else keep
        side[s] = side.get(s, 0.0) + p
    M = sum(gone.values())
    return ({s: p / (1 - M) for s, p in keep.items()}, {s: p / M for s, p in gone.items()}, M)


def check_counter_split(lang, combos):
    sp = exclude_counts(lang, combos)
    train, held, M = brute_counter_split(lang, set(combos))
    assert sp.held_out_mass == pytest.approx(M, rel=1e-12)
    L = max(len(s) for s in list(train) + list(held))
    for lang_, ref in ((sp.train, train), (sp.held_out, held)):
        pre: dict = {}
        for s, p in ref.items():
            for t in range(len(s) + 1):
                pre[s[:t]] = pre.get(s[:t], 0.0) + p
        for s in set(ref) | set(pre):
            assert lang_.prob(s) == pytest.approx(ref.get(s, 0.0), rel=1e-9, abs=1e-13), s
        for q, mass in pre.items():
            if mass <= 1e-13:
                continue
            dist = lang_.next_token_dist(q)
            assert dist[fl.EOS] == pytest.approx(ref.get(q, 0.0) / mass, abs=1e-9), q
            for a in lang.alphabet:
                assert dist[a] == pytest.approx(pre.get(q + (a,), 0.0) / mass, abs=1e-9), q
        assert lang_.expected_length() == pytest.approx(
            sum(p * len(s) for s, p in ref.items()), rel=1e-9)
        h = -sum(p * math.log(p) for p in ref.values() if p > 0)
        assert lang_.entropy_is_exact and lang_.entropy() == pytest.approx(h, rel=1e-9)
        lengths = np.zeros(L + 1)
        for s, p in ref.items():
            lengths[len(s)] += p
        np.testing.assert_allclose(lang_.length_distribution(L), lengths, atol=1e-12)
    return sp


def test_anbmcnm_split_is_exact():
    lang = fl.load("anbmcnm")
    sp = check_counter_split(lang, [(1, 2), (3, 3), (6, 1)])
    assert sp.train.prob("abbccc") == 0 and sp.held_out.prob("abbccc") == pytest.approx(1 / 3)
    check_language(sp.train, 6, n_samples=800)
    check_language(sp.held_out, 6, n_samples=300)


@FAST
@given(ft.counter_languages(max_count=3, linear=True), st.data())
def test_random_counter_split_matches_filtering(lang, data):
    every = [c for c, _ in assignments(lang)]
    assume(len(every) >= 2)
    k = data.draw(st.integers(1, min(3, len(every) - 1)))
    combos = held_out_combinations(lang, k, seed=data.draw(st.integers(0, 5)))
    assert len(set(combos)) == k and set(combos) <= set(every)
    check_counter_split(lang, combos)


def test_counter_split_samples_and_errors():
    lang = fl.load("anbmcnm")
    sp = exclude_counts(lang, [{"n": 2, "m": 2}])
    assert all(s != tuple("aabbcccc") for s in sp.train.sample(500, seed=0))
    assert held_out_combinations(lang, 3, seed=1) == held_out_combinations(lang, 3, seed=1)
    with pytest.raises(fl.FormalLMError, match="positive prior probability"):
        exclude_counts(lang, [(0, 1)])
    with pytest.raises(fl.FormalLMError, match="not a CounterLanguage"):
        exclude_counts(fl.load("dyck1-pcfg"), [(1,)])
    with pytest.raises(fl.FormalLMError, match="k=36"):
        held_out_combinations(lang, 36)


# ----- strategies --------------------------------------------------------------------------
@FAST
@given(ft.production_splits(fl.load("toy-english")))
def test_drawn_production_splits_mix_back_to_the_grammar(sp):
    M = sp.held_out_mass
    for s in sp.full.sample(5, seed=0):
        mix = (1 - M) * sp.train.prob(s) + M * sp.held_out.prob(s)
        assert mix == pytest.approx(sp.full.prob(s), rel=1e-9)


def test_split_strategies_check_their_arguments():
    from hypothesis import find
    anything = lambda x: True  # noqa: E731
    with pytest.raises(ft.InvalidStrategyArgument, match="not a CounterLanguage"):
        find(ft.held_out_counts(fl.load("dyck1-pcfg")), anything)
    with pytest.raises(ft.InvalidStrategyArgument, match="leaves none"):
        find(ft.held_out_counts(fl.load("anbmcnm"), min_size=36), anything)
    with pytest.raises(ft.InvalidStrategyArgument, match="not a PCFG"):
        find(ft.production_splits(fl.load("anbn")), anything)
    with pytest.raises(ft.InvalidStrategyArgument, match="already a symbol"):
        find(ft.twin_splits(fl.load("toy-english"), twin="dog"), anything)
    assert find(ft.held_out_counts(fl.load("anbmcnm"), min_size=2), anything) == [(1, 1), (1, 2)]


def test_epsilon_rules_split_exactly():
    """Dyck-1 with an epsilon rule: S -> ( S ) S under an S is held out, so training keeps
    only the derivations whose root's children are both empty."""
    g = fl.load("dyck1-pcfg")
    lhs, rhs = next((A, r) for A, r, _ in g.productions if r)
    sp, _ = check_pcfg_split(g, lhs, rhs, lhs, 8)
    assert sp.train.accepts("()") and sp.train.accepts("")
    assert not sp.train.accepts("()()") and not sp.train.accepts("(())")
    assert sp.held_out.accepts("(())") and sp.held_out.accepts("()()")
    assert not sp.held_out.accepts("()")
    check_language(sp.train, 8, n_samples=400)
    check_language(sp.held_out, 8, n_samples=400)


def test_twin_grammar_halves_each_occurrence():
    """Each occurrence of the symbol is it or its twin with probability 1/2: p_full(s) =
    p_g(s with every twin read as the symbol) / 2^(occurrences)."""
    g = fl.load("toy-english")
    sp = fl.twin_split(g, "dog", "hound", parent="N")
    for s in sp.full.sample(30, seed=2):
        k = sum(x in ("dog", "hound") for x in s)
        merged = tuple("dog" if x == "hound" else x for x in s)
        assert sp.full.prob(s) == pytest.approx(g.prob(merged) / 2 ** k, rel=1e-9)
