"""Grammar and automata operations against brute force: parsing, CNF, DFA operations, PFSA
products and the Bar-Hillel intersection.

Brute force here means enumeration: leftmost derivations expanded up to a step bound, every string
up to a length, and for normalising constants Z the enumerated part plus an exact bound on the
part the enumeration cannot see (sum over the next length's prefixes u of P(u...) products).
"""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import formal_lm as fl
from formal_lm.automata import (DFA, complement, complete, condition_pfsa, intersect_dfas,
                                intersect_pfsas, minimize, product_mass, trim)
from formal_lm.language import enumerate_strings
from formal_lm.pcfg import (PCFG, acceptance_probability, intersect, parses, to_cnf,
                            tree_log_prob, viterbi_parse)
from formal_lm.testing import pcfgs, pfsas

FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CYCLIC = PCFG.from_nltk("""
S -> S S [0.3] | 'a' [0.3] | [0.2] | A [0.2]
A -> S [0.5] | 'b' [0.5]
""", name="cyclic")
# the shipped toy-english, dyck1-pcfg and arith grammars, written out (independent of grammar files)
TOY_ENGLISH = PCFG.from_nltk("""
S -> NP VP [1.0]
NP -> Det N [0.55] | NP PP [0.15] | 'she' [0.3]
VP -> V NP [0.75] | VP PP [0.25]
PP -> P NP [1.0]
Det -> 'the' [0.7] | 'a' [0.3]
N -> 'dog' [0.4] | 'man' [0.35] | 'telescope' [0.25]
V -> 'saw' [0.6] | 'liked' [0.4]
P -> 'with' [0.7] | 'near' [0.3]
""", name="toy-english")
DYCK1 = PCFG.from_nltk("S -> '(' S ')' S [0.4] | [0.6]", name="dyck1")
ARITH = PCFG.from_nltk(
    "E -> E '+' E [0.15] | E '*' E [0.15] | '(' E ')' [0.1] | 'x' [0.4] | 'y' [0.2]", name="arith")
NULLABLE = PCFG.from_nltk("""
S -> A B [0.6] | 'a' B [0.4]
A -> 'a' [0.7] | [0.3]
B -> 'b' [0.5] | A 'b' [0.5]
""", name="nullable")


# ----- brute force -------------------------------------------------------------------------------
def min_yield(g) -> dict:
    nts = set(g.nonterminals)
    m = {A: math.inf for A in nts}
    changed = True
    while changed:
        changed = False
        for lhs, rhs, _ in g.productions:
            v = sum(m[x] if x in nts else 1 for x in rhs)
            if v < m[lhs]:
                m[lhs], changed = v, True
    return m


def leftmost_derivations(g, s, max_steps: int):
    """Every leftmost derivation of ``s`` with at most ``max_steps`` rule uses:
    ``[(rules used, probability)]``."""
    nts = set(g.nonterminals)
    m = min_yield(g)
    rules: dict = {}
    for lhs, rhs, p in g.productions:
        rules.setdefault(lhs, []).append((rhs, p))
    out = []
    stack = [(0, (g.start,), 1.0, ())]
    while stack:
        pos, rest, p, used = stack.pop()
        while rest and rest[0] not in nts:
            if pos < len(s) and rest[0] == s[pos]:
                pos, rest = pos + 1, rest[1:]
            else:
                break
        if rest and rest[0] not in nts:
            continue
        if not rest:
            if pos == len(s):
                out.append((used, p))
            continue
        if len(used) >= max_steps:
            continue
        A = rest[0]
        for rhs, q in rules[A]:
            new = rhs + rest[1:]
            if pos + sum(m[x] if x in nts else 1 for x in new) <= len(s):
                stack.append((pos, new, p * q, used + ((A, rhs),)))
    return out


def bracketed(used, nts) -> str:
    """The bracketed tree of a leftmost derivation (written independently of ``Tree``)."""
    it = iter(used)

    def build():
        lhs, rhs = next(it)
        kids = [build() if x in nts else x for x in rhs]
        return f"({lhs} {' '.join(kids)})"

    return build()


def acyclic_steps(g, n: int) -> int:
    """With no epsilon rules, a tree that repeats no item on a path has at most (2n - 1) spans,
    each under at most one nonterminal node per nonterminal."""
    return (2 * n - 1) * len(g.nonterminals)


def prefix_tail(lang, L, keep=lambda u: True) -> float:
    """An upper bound on the mass of strings longer than L (restricted by ``keep``)."""
    longer = [u for u in enumerate_strings(lang.alphabet, L + 1) if len(u) == L + 1 and keep(u)]
    return math.fsum(math.exp(lang.prefix_log_prob(u)) for u in longer)


# ----- parsing -----------------------------------------------------------------------------------
@FAST
@given(pcfgs())
def test_viterbi_and_parses_match_leftmost_derivations(g):
    nts = set(g.nonterminals)
    for s in enumerate_strings(g.alphabet, 3):
        derivs = leftmost_derivations(g, s, acyclic_steps(g, max(len(s), 1)))
        best = viterbi_parse(g, s)
        if not derivs:
            assert best is None and parses(g, s) == [] and g.prob(s) == 0
            continue
        top = max(p for _, p in derivs)
        assert best.tree.leaves() == s and best.tree.label == g.start
        assert best.prob == pytest.approx(top, rel=1e-12)
        assert math.exp(tree_log_prob(g, best.tree)) == pytest.approx(best.prob, rel=1e-12)
        assert str(best.tree) in {bracketed(u, nts) for u, p in derivs}
        try:
            found = parses(g, s)
        except fl.FormalLMError as e:  # a unary cycle: derivations longer than any acyclic tree
            assert "infinitely many" in str(e)
            event("a string with infinitely many parses")
            longer = leftmost_derivations(g, s, 2 * acyclic_steps(g, len(s)) + len(nts))
            assert max(len(u) for u, _ in longer) > acyclic_steps(g, len(s))
            continue
        brute = sorted((bracketed(u, nts), p) for u, p in derivs)
        event(f"parses: {min(len(brute), 3)}{'+' if len(brute) >= 3 else ''}")
        mine = sorted((str(t), p) for t, p in found)
        assert [t for t, _ in mine] == [t for t, _ in brute]
        np.testing.assert_allclose([p for _, p in mine], [p for _, p in brute], rtol=1e-12)
        assert math.fsum(p for _, p in found) == pytest.approx(g.prob(s), rel=1e-10, abs=1e-300)


@st.composite
def epsilon_pcfgs(draw):
    """Tight grammars with epsilon rules (so nullable cycles), built like ``pcfgs()``."""
    n = draw(st.integers(1, 3))
    names = ["S"] + [f"N{i}" for i in range(1, n)]
    rules: dict = {}
    for i, A in enumerate(names):
        p_end = draw(st.sampled_from([0.6, 0.75, 0.9]))
        alts = []
        for j in range(draw(st.integers(1 if i + 1 < n else 0, 2))):
            rhs = draw(st.lists(st.sampled_from(["a", "b", *names]), min_size=1, max_size=3))
            if j == 0 and i + 1 < n:
                rhs[0] = names[i + 1]
            while sum(x in names for x in rhs) > 2:
                rhs[max(k for k, x in enumerate(rhs) if x in names)] = "a"
            alts.append(tuple(rhs))
        ends = [(draw(st.sampled_from([(), ("a",), ("b",)])), p_end if alts else 1.0)]
        for rhs, p in ends + [(rhs, (1 - p_end) / len(alts)) for rhs in alts]:
            rules[(A, rhs)] = rules.get((A, rhs), 0.0) + p
    return PCFG([(A, rhs, p) for (A, rhs), p in rules.items()], start="S", alphabet=("a", "b"))


@FAST
@given(epsilon_pcfgs())
def test_parsing_with_epsilon_rules(g):
    """Brute force sees trees of at most D rules: its best is the Viterbi one whenever that tree
    is that small, and every tree it finds is a parse (and the reverse for small trees)."""
    D = 9
    nts = set(g.nonterminals)
    for s in enumerate_strings(g.alphabet, 2):
        derivs = leftmost_derivations(g, s, D)
        best = viterbi_parse(g, s)
        if best is None:
            assert not derivs and g.prob(s) == 0
            continue
        assert math.exp(tree_log_prob(g, best.tree)) == pytest.approx(best.prob, rel=1e-12)
        assert best.tree.leaves() == s
        assert all(p <= best.prob * (1 + 1e-12) for _, p in derivs)
        if len(best.tree.productions()) <= D:
            assert max(p for _, p in derivs) == pytest.approx(best.prob, rel=1e-12)
        try:
            found = parses(g, s)
        except fl.FormalLMError as e:
            assert "infinitely many" in str(e)
            event("a string with infinitely many parses")
            continue
        mine = {str(t): p for t, p in found}
        assert len(mine) == len(found)
        for u, p in derivs:
            assert mine[bracketed(u, nts)] == pytest.approx(p, rel=1e-12)
        assert len(derivs) == sum(len(t.productions()) <= D for t, _ in found)
        assert math.fsum(mine.values()) == pytest.approx(g.prob(s), rel=1e-10)


def test_epsilon_and_unary_cycles():
    for s in ["", "a", "b", "ab", "ba", "aa", "abb"]:
        derivs = leftmost_derivations(CYCLIC, s, 12)
        best = viterbi_parse(CYCLIC, s)
        assert best.tree.leaves() == tuple(s)
        assert best.prob == pytest.approx(max(p for _, p in derivs), rel=1e-12)
        with pytest.raises(fl.FormalLMError, match="infinitely many parses"):
            parses(CYCLIC, s)
    # epsilon without cycles: finitely many parses, every one found
    nts = set(NULLABLE.nonterminals)
    for s in ["ab", "aab", "b", "abab"]:
        found = sorted((str(t), p) for t, p in parses(NULLABLE, s))
        brute = sorted((bracketed(u, nts), p) for u, p in leftmost_derivations(NULLABLE, s, 12))
        assert [t for t, _ in found] == [t for t, _ in brute]
        np.testing.assert_allclose([p for _, p in found], [p for _, p in brute], rtol=1e-12)
        assert math.fsum(p for _, p in found) == pytest.approx(NULLABLE.prob(s), abs=1e-15)
    assert str(viterbi_parse(NULLABLE, "b").tree) == "(S (A ) (B b))"
    # a unary cycle that no parse of the string can use does not make it infinite
    g = PCFG.from_nltk("S -> 'a' [0.5] | X 'b' [0.5]\nX -> X [0.5] | 'a' [0.5]")
    assert [(str(t), p) for t, p in parses(g, "a")] == [("(S a)", 0.5)]
    with pytest.raises(fl.FormalLMError, match="X derives itself"):
        parses(g, "ab")


def test_ambiguous_arithmetic_against_brute_force():
    nts = set(ARITH.nonterminals)
    for s, n_parses in [("x+x*x", 2), ("x+y+x+x", 5), ("(x)*y", 1), ("x*(y+x)*x", 2)]:
        s = tuple(s)
        derivs = leftmost_derivations(ARITH, s, acyclic_steps(ARITH, len(s)))
        found = parses(ARITH, s)
        assert len(found) == len(derivs) == n_parses
        assert sorted(str(t) for t, _ in found) == sorted(bracketed(u, nts) for u, _ in derivs)
        assert viterbi_parse(ARITH, s).prob == pytest.approx(max(p for _, p in derivs))
        assert math.fsum(p for _, p in found) == pytest.approx(ARITH.prob(s), rel=1e-12)


def test_parse_bounds_refuse_instead_of_running_long():
    g = PCFG.from_nltk("S -> S S [0.3] | 'a' [0.7]")
    found = parses(g, "a" * 8)
    assert len(found) == 429  # Catalan(7) binary trees
    assert math.fsum(p for _, p in found) == pytest.approx(g.prob("a" * 8), rel=1e-12)
    with pytest.raises(fl.FormalLMError, match="429 parses, more than max_parses=100"):
        parses(g, "a" * 8, max_parses=100)
    with pytest.raises(fl.FormalLMError, match="max_length=10"):
        viterbi_parse(g, "a" * 11, max_length=10)
    assert viterbi_parse(g, "a" * 60).prob > 0
    assert viterbi_parse(DYCK1, "(()") is None


def test_toy_english_attachment_ambiguity():
    g = TOY_ENGLISH
    s = "she saw the dog with the telescope".split()
    found = parses(g, s)
    assert len(found) == 2 and found[0].prob >= found[1].prob
    assert math.fsum(p for _, p in found) == pytest.approx(g.prob(s), rel=1e-12)
    best = viterbi_parse(g, s)
    assert best.tree == found[0].tree and best.prob == pytest.approx(found[0].prob, rel=1e-12)
    assert {t.children[1].children[0].label for t, _ in found} == {"V", "VP"}


def test_nltk_agrees():
    nltk = pytest.importorskip("nltk")
    from formal_lm.pcfg import from_nltk_grammar, nltk_text
    grammar = TOY_ENGLISH
    obj = nltk.PCFG.fromstring("\n".join(
        f"{lhs} -> {' '.join(x if x in grammar.nonterminals else repr(x) for x in rhs)} [{p!r}]"
        for lhs, rhs, p in grammar.productions))
    g = from_nltk_grammar(obj, name="from-nltk")
    assert sorted(g.productions) == sorted(grammar.productions)
    assert PCFG.from_nltk(nltk_text(obj)).productions == g.productions
    s = "she saw a man near the dog with a telescope".split()
    theirs = sorted((" ".join(str(nltk.Tree.convert(t)).split()), t.prob())
                    for t in nltk.InsideChartParser(obj).parse(s))
    ours = sorted((str(t), p) for t, p in parses(g, s))
    assert len(ours) == 5 and [t for t, _ in theirs] == [t for t, _ in ours]
    np.testing.assert_allclose([p for _, p in theirs], [p for _, p in ours], rtol=1e-12)
    best = next(nltk.ViterbiParser(obj).parse(s))
    assert viterbi_parse(g, s).prob == pytest.approx(best.prob(), rel=1e-12)
    with pytest.raises(fl.FormalLMError, match="nltk.PCFG"):
        from_nltk_grammar(nltk.CFG.fromstring("S -> 'a'"))


# ----- Chomsky normal form -----------------------------------------------------------------------
def assert_cnf_equivalent(g, L):
    cnf = to_cnf(g)
    for lhs, rhs, _ in cnf.productions:
        if len(rhs) == 0:
            assert lhs == cnf.start
        elif len(rhs) == 1:
            assert rhs[0] in cnf.alphabet and rhs[0] not in cnf.nonterminals
        else:
            assert len(rhs) == 2 and all(x in cnf.nonterminals for x in rhs)
    if any(not rhs for _, rhs, _ in cnf.productions):
        assert all(cnf.start not in rhs for _, rhs, _ in cnf.productions)
    assert cnf.alphabet == g.alphabet
    for s in enumerate_strings(g.alphabet, L):
        a, b = g.log_prob(s), cnf.log_prob(s)
        assert (a == b == -math.inf) or abs(a - b) < 1e-11, (s, a, b)
    np.testing.assert_allclose(g.length_distribution(12), cnf.length_distribution(12),
                               atol=1e-12)


@FAST
@given(pcfgs(max_nonterminals=3, max_rules=3))
def test_cnf_keeps_every_probability(g):
    assert_cnf_equivalent(g, 5)


def test_cnf_with_epsilon_unary_cycles_and_long_rules():
    for g in [CYCLIC, NULLABLE, ARITH, DYCK1,
              PCFG.from_nltk("S -> 'a' S 'b' S 'c' [0.3] | X [0.7]\nX -> [0.5] | 'a' X [0.5]"),
              PCFG.from_nltk("S -> [1.0]", alphabet=("a",))]:
        assert_cnf_equivalent(g, 6 if len(g.alphabet) <= 2 else 4)


# ----- DFA operations ----------------------------------------------------------------------------
@st.composite
def dfas(draw, max_states: int = 4, alphabet=("a", "b"), min_accepting: int = 0,
         missing: int = 4):
    """Random DFAs; each transition is missing with probability about 1 / ``missing``."""
    n = draw(st.integers(1, max_states))
    trans = {(q, a): draw(st.integers(0, n - 1)) for q in range(n) for a in alphabet
             if draw(st.integers(0, missing - 1)) > 0}
    accepting = draw(st.sets(st.integers(0, n - 1), min_size=min(min_accepting, n)))
    return DFA(tuple(range(n)), alphabet, trans, 0, frozenset(accepting))


def nerode_classes(d: DFA, n: int) -> int:
    """Myhill-Nerode classes of the live prefixes, by brute force: prefixes up to length n - 1
    reach every reachable state, and suffixes up to length n separate every pair of
    inequivalent states and show every live state's acceptance."""
    suffixes = list(enumerate_strings(d.alphabet, n))
    sigs = {tuple(d.accepts(w + v) for v in suffixes)
            for w in enumerate_strings(d.alphabet, max(n - 1, 0))}
    return sum(any(sig) for sig in sigs)


@FAST
@given(dfas(), dfas())
def test_dfa_operations_match_brute_force(d1, d2):
    both, comp, t, m = intersect_dfas(d1, d2), complement(d1), trim(d1), minimize(d1)
    for s in enumerate_strings(("a", "b"), 6):
        assert both.accepts(s) == (d1.accepts(s) and d2.accepts(s))
        assert comp.accepts(s) == (not d1.accepts(s))
        assert t.accepts(s) == m.accepts(s) == d1.accepts(s)
        assert complete(d1).accepts(s) == d1.accepts(s)
    assert minimize(m) == m and minimize(t) == m and minimize(complete(d1)) == m
    assert minimize(complement(comp)) == m
    live = nerode_classes(d1, len(d1.states))
    assert len(m.states) == max(live, 1) <= len(t.states)
    assert all(all((q, a) in complete(d1).transitions for a in d1.alphabet)
               for q in complete(d1).states)
    if t.accepting:  # a non-empty language: to a PDFA and back
        assert minimize(DFA.from_pfsa(d1.to_pfsa(stop_prob=0.3))) == m


def test_dfa_checks_and_minimal_examples():
    with pytest.raises(fl.FormalLMError, match="undeclared"):
        DFA((0,), ("a",), {(0, "b"): 0}, 0, frozenset())
    with pytest.raises(fl.FormalLMError, match="start"):
        DFA((0,), ("a",), {}, 1, frozenset())
    # (a|b)*a(a|b) written with a redundant state: minimal has 4 states
    d = DFA.from_transitions({(0, "a"): 1, (0, "b"): 0, (1, "a"): 2, (1, "b"): 3,
                              (2, "a"): 2, (2, "b"): 3, (3, "a"): 1, (3, "b"): 0,
                              (4, "a"): 1}, 0, {2, 3})
    assert len(minimize(d).states) == 4 == nerode_classes(d, 5)
    assert len(minimize(DFA((0, 1), ("a",), {}, 0, frozenset({1}))).states) == 1
    assert hash(d) == hash(DFA.from_transitions(dict(d.transitions), 0, {2, 3}))
    assert pickle.loads(pickle.dumps(d)) == d
    with pytest.raises(TypeError):
        d.transitions[(0, "a")] = 0  # read-only


# ----- PFSA products -----------------------------------------------------------------------------
def check_product(h, p_a, p_b, Z, L, tail):
    """h(s) = p_a(s) p_b(s) / Z for every string up to L, and Z = the enumerated mass plus at
    most ``tail``."""
    strings = list(enumerate_strings(h.alphabet, L))
    num = np.array([p_a(s) * p_b(s) for s in strings])
    enum = math.fsum(num)
    assert enum - 1e-12 <= Z <= enum + tail + 1e-12, (enum, Z, tail)
    np.testing.assert_allclose([h.prob(s) for s in strings], num / Z, rtol=1e-9, atol=1e-15)


@FAST
@given(pfsas(max_states=3, deterministic=False), pfsas(max_states=3))
def test_pfsa_intersection_is_the_renormalised_product(m1, m2):
    h, Z, L = intersect_pfsas(m1, m2), product_mass(m1, m2), 6
    tail = math.fsum(math.exp(m1.prefix_log_prob(u) + m2.prefix_log_prob(u))
                     for u in enumerate_strings(m1.alphabet, L + 1) if len(u) == L + 1)
    check_product(h, m1.prob, m2.prob, Z, L, tail)
    assert product_mass(m2, m1) == pytest.approx(Z, rel=1e-12)


@FAST
@given(pfsas(max_states=3, deterministic=False), dfas(min_accepting=1, missing=8))
def test_pfsa_conditioned_on_a_dfa(m, d):
    Z, L = product_mass(m, d), 6
    alive = trim(d)
    tail = prefix_tail(m, L, keep=lambda u: alive.run(u) is not None)
    event(f"Z = 0: {Z == 0}")
    if Z == 0:
        assert not any(d.accepts(s) and m.prob(s) > 0 for s in enumerate_strings(m.alphabet, L))
        with pytest.raises(fl.FormalLMError, match="total mass"):
            condition_pfsa(m, d)
        return
    h = condition_pfsa(m, d)
    assert h.alphabet == m.alphabet
    check_product(h, m.prob, lambda s: float(d.accepts(s)), Z, L, tail)


def test_disjoint_pfsas_are_refused():
    only_a = DFA.from_transitions({(0, "a"): 1}, 0, {1}).to_pfsa("a")
    only_b = DFA.from_transitions({(0, "b"): 1}, 0, {1}).to_pfsa("b")
    assert product_mass(only_a, only_b) == 0
    with pytest.raises(fl.FormalLMError, match="no string has positive weight under both"):
        intersect_pfsas(only_a, only_b)


# ----- Bar-Hillel --------------------------------------------------------------------------------
def kleene_mass(g, d: DFA, iters: int = 3000) -> float:
    """P_g(L(d)) by plain fixed-point iteration on state-to-state matrices (not Newton)."""
    idx = {q: i for i, q in enumerate(d.states)}
    n = len(idx)
    T = {a: np.zeros((n, n)) for a in g.alphabet}
    for (q, a), r in d.transitions.items():
        if a in T:
            T[a][idx[q], idx[r]] = 1.0
    F = {A: np.zeros((n, n)) for A in g.nonterminals}
    for _ in range(iters):
        new = {A: np.zeros((n, n)) for A in g.nonterminals}
        for lhs, rhs, p in g.productions:
            prod = np.eye(n)
            for x in rhs:
                prod = prod @ (F[x] if x in F else T[x])
            new[lhs] += p * prod
        done = max(np.abs(new[A] - F[A]).max() for A in F) < 1e-16
        F = new
        if done:
            break
    return float(sum(F[g.start][idx[d.start], idx[f]] for f in d.accepting))


@FAST
@given(pcfgs(max_nonterminals=3, max_rules=3), dfas(max_states=3, min_accepting=1, missing=8))
def test_bar_hillel_is_the_conditioned_grammar(g, d):
    Z, L = acceptance_probability(g, d), 5
    assert Z == pytest.approx(kleene_mass(g, d), abs=1e-10)
    event(f"Z = 0: {Z == 0}")
    if Z == 0:
        with pytest.raises(fl.FormalLMError, match="probability Z=0"):
            intersect(g, d)
        return
    h = intersect(g, d)
    assert h.alphabet == g.alphabet
    alive = trim(d)
    tail = prefix_tail(g, L, keep=lambda u: alive.run(u) is not None)
    check_product(h, g.prob, lambda s: float(d.accepts(s)), Z, L, tail)


def test_bar_hillel_hand_cases():
    g = DYCK1
    # balanced strings of length divisible by 4
    mod4 = DFA.from_transitions({(i, x): (i + 1) % 4 for i in range(4) for x in "()"}, 0, {0})
    h = intersect(g, mod4)
    Z = acceptance_probability(g, mod4)
    assert Z == pytest.approx(kleene_mass(g, mod4), abs=1e-12)
    for s in enumerate_strings(g.alphabet, 8):
        assert h.prob(s) == pytest.approx(g.prob(s) * mod4.accepts(s) / Z, rel=1e-9, abs=1e-15)
    # the cyclic grammar given a non-empty string, through its CNF (long rules stay small)
    non_empty = complement(DFA.from_transitions({}, 0, {0}, alphabet="ab"))
    h = intersect(to_cnf(CYCLIC), non_empty)
    for s in enumerate_strings(("a", "b"), 4):
        expect = CYCLIC.prob(s) / (1 - CYCLIC.prob("")) if s else 0.0
        assert h.prob(s) == pytest.approx(expect, rel=1e-9)
    with pytest.raises(fl.FormalLMError, match="probability Z=0"):
        intersect(g, DFA.from_transitions({(0, ")"): 1}, 0, {1}))

