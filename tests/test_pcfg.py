"""PCFG: every exact quantity against brute force written here, plus bad-input and file checks.

The oracle (``naive_tables``) never builds the binary grammar: it iterates the textbook
definitions of p_A(w) and P(A derives a string starting with w) on the original rules (epsilon and
unary rules included) to their least fixed point, by plain value iteration from 0.
"""
from __future__ import annotations

import itertools
import math
import pathlib
import tomllib

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from formal_lm.errors import FormalLMError, GrammarError, Location
from formal_lm.language import Language, enumerate_strings
from formal_lm.pcfg import PCFG, partition_functions
from formal_lm.vocab import EOS_ID

GRAMMARS = pathlib.Path(__file__).resolve().parents[1] / "grammars"
FALSE_ALARM = 1e-4  # per chi-square test: a correct sampler fails one with this probability
FAST = settings(max_examples=50, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# ----- random grammars ---------------------------------------------------------------------------
def _spectral_radius(rules, nts):
    idx = {A: i for i, A in enumerate(nts)}
    M = np.zeros((len(nts), len(nts)))
    for lhs, rhs, p in rules:
        for x in rhs:
            if x in idx:
                M[idx[lhs], idx[x]] += p
    return float(np.max(np.abs(np.linalg.eigvals(M))))


def _make_tight(rules, base, nts, max_rho=0.7):
    """Normalises per LHS, then shrinks the non-base rules until rho <= max_rho (base absorbs)."""
    totals = {}
    for lhs, _, w in rules:
        totals[lhs] = totals.get(lhs, 0.0) + w
    rules = [(lhs, rhs, w / totals[lhs]) for lhs, rhs, w in rules]
    rho = _spectral_radius(rules, nts)
    f = min(1.0, max_rho / rho) if rho > 0 else 1.0
    out = []
    for k, (lhs, rhs, p) in enumerate(rules):
        if k not in base:
            out.append((lhs, rhs, p * f))
    for k in base:
        lhs, rhs, _ = rules[k]
        out.append((lhs, rhs, 1.0 - math.fsum(p for l2, _, p in out if l2 == lhs)))
    return out


@st.composite
def small_pcfgs(draw):
    """2-3 nonterminals, 1-2 terminals, epsilon and unary rules, duplicates allowed; tight."""
    nts = ["S", "A", "B"][: draw(st.integers(2, 3))]
    terms = ["a", "b"][: draw(st.integers(1, 2))]
    syms = nts + terms
    weight = st.floats(0.05, 1.0)
    rules, base = [], []
    for i, A in enumerate(nts):
        base.append(len(rules))
        rules.append((A, draw(st.sampled_from([(), ("a",), (terms[-1],), ("a", terms[-1])])),
                      draw(weight)))
        if i + 1 < len(nts):  # keeps every nonterminal reachable
            nxt = nts[i + 1]
            rules.append((A, draw(st.sampled_from([(nxt,), ("a", nxt), (nxt, terms[-1])])),
                          draw(weight)))
        for _ in range(draw(st.integers(0, 2))):
            rhs = tuple(draw(st.lists(st.sampled_from(syms), min_size=0, max_size=3)))
            rules.append((A, rhs, draw(weight)))
    rules = _make_tight(rules, base, nts)
    try:
        return PCFG(rules, start="S", alphabet=tuple(terms))
    except GrammarError:
        assume(False)


@st.composite
def simple_deterministic_pcfgs(draw):
    """Each nonterminal's alternatives start with distinct terminals: unambiguous (LL(1))."""
    nts = ["S", "A", "B"][: draw(st.integers(2, 3))]
    terms = ["a", "b", "c"]
    rules, base = [], []
    for i, A in enumerate(nts):
        firsts = draw(st.permutations(terms))[: draw(st.integers(2, 3))]
        for j, t in enumerate(firsts):
            if j == 0:
                base.append(len(rules))
                tail = tuple(draw(st.lists(st.sampled_from(terms), max_size=1)))
            elif j == 1 and i + 1 < len(nts):
                tail = (nts[i + 1],) + tuple(draw(st.lists(st.sampled_from(nts + terms),
                                                           max_size=1)))
            else:
                tail = tuple(draw(st.lists(st.sampled_from(nts + terms), max_size=2)))
            rules.append((A, (t,) + tail, draw(st.floats(0.05, 1.0))))
    rules = _make_tight(rules, base, nts)
    try:
        return PCFG(rules, start="S", alphabet=tuple(terms))
    except GrammarError:
        assume(False)


# ----- the naive oracle --------------------------------------------------------------------------
def naive_tables(g: PCFG, K: int, tol=1e-15, max_iter=5000):
    """p[A][w] = P(A derives w) and pre[A][w] = P(A derives a string starting with w), |w| <= K.

    Value iteration from 0 on the defining equations (least fixed point), one length at a time.
    """
    nts = set(g.nonterminals)
    prods = g.productions
    P = {(A, w): 0.0 for A in nts for w in enumerate_strings(g.alphabet, K)}

    def val(x, w):
        return P[(x, w)] if x in nts else float(w == (x,))

    def split(rhs, w):  # sum over cuts of w into len(rhs) pieces
        if not rhs:
            return float(not w)
        if len(rhs) == 1:
            return val(rhs[0], w)
        return sum(val(rhs[0], w[:i]) * split(rhs[1:], w[i:]) for i in range(len(w) + 1))

    pre = {}

    def preval(x, v):
        return pre[(x, v)] if x in nts else float(v == (x,))

    def presplit(rhs, v):  # v non-empty: some symbol's yield covers the end of v
        if not rhs:
            return 0.0
        out = preval(rhs[0], v)
        for i in range(len(v)):
            out += val(rhs[0], v[:i]) * presplit(rhs[1:], v[i:])
        return out

    for table, fn, lengths in ((P, split, range(K + 1)), (pre, presplit, range(1, K + 1))):
        for L in lengths:
            ws = list(itertools.product(g.alphabet, repeat=L))
            for A in nts:
                for w in ws:
                    table[(A, w)] = 0.0
            for _ in range(max_iter):
                delta = 0.0
                for A in nts:
                    for w in ws:
                        new = sum(p * fn(rhs, w) for lhs, rhs, p in prods if lhs == A)
                        delta = max(delta, abs(new - table[(A, w)]))
                        table[(A, w)] = new
                if delta < tol:
                    break
    p = {w: P[(g.start, w)] for w in enumerate_strings(g.alphabet, K)}
    prefix = {w: pre[(g.start, w)] for w in enumerate_strings(g.alphabet, K) if w}
    prefix[()] = 1.0
    return p, prefix


def derivation_weights(g: PCFG, w) -> list[float]:
    """The weights of every leftmost derivation of ``w``, by brute-force search over the
    original productions (no CNF). Assumes no unary cycles; the pruning is sound without epsilon
    rules (true of the shipped grammars), and a missed derivation would show as a sum < p(w)."""
    out = []

    def expand(stack, pos, weight):  # stack: symbols still to derive, leftmost first
        if not stack:
            if pos == len(w):
                out.append(weight)
            return
        if len(stack) > 2 * (len(w) - pos) + 2:  # far more symbols than input left: prune
            return
        head, rest = stack[0], stack[1:]
        if head not in g.nonterminals:
            if pos < len(w) and w[pos] == head:
                expand(rest, pos + 1, weight)
            return
        for lhs, rhs, p in g.productions:
            if lhs == head:
                expand(tuple(rhs) + rest, pos, weight * p)

    expand((g.start,), 0, 1.0)
    return out


def close(a, b, rel=1e-9, abs_=1e-12):
    return abs(a - b) <= abs_ + rel * max(abs(a), abs(b))


# ----- differential tests against brute force ----------------------------------------------------
@FAST
@given(small_pcfgs())
def test_probabilities_match_brute_force(g):
    K = 4 if len(g.alphabet) == 1 else 3
    p, pre = naive_tables(g, K)
    st_ = g.length_stats(K)
    for w, pw in p.items():
        lp = g.log_prob(w)
        assert close(math.exp(lp), pw), (w, math.exp(lp), pw)
        assert (lp == -math.inf) == (pw == 0.0)
    # P(|s| = L) exactly, and the tail
    by_len = np.zeros(K + 1)
    for w, pw in p.items():
        by_len[len(w)] += pw
    np.testing.assert_allclose(st_.prob, by_len, rtol=1e-9, atol=1e-12)
    assert close(st_.tail, max(0.0, 1 - sum(p.values())), abs_=1e-9)
    # prefix probabilities: the naive recursion, and sandwiched by enumeration + exact tail
    for w, pw in pre.items():
        assert close(math.exp(g.prefix_log_prob(w)), pw), (w, pw)
        seen = sum(q for s, q in p.items() if s[: len(w)] == w)
        assert seen <= pw + 1e-12 and pw - seen <= st_.tail + 1e-12
    # next-token tables are the ratios, and their rows sum to 1
    for w in enumerate_strings(g.alphabet, K - 1):
        table = g.next_token_table(w)
        assert table.shape == (len(w) + 1, len(g.alphabet) + 3)
        for t in range(len(w) + 1):
            q = w[:t]
            if pre[q] == 0:
                assert not table[t:].any()
                break
            assert close(table[t, EOS_ID], p[q] / pre[q], abs_=1e-10)
            for i, a in enumerate(g.alphabet):
                assert close(table[t, 3 + i], pre[q + (a,)] / pre[q], abs_=1e-10)
            assert abs(table[t].sum() - 1) < 1e-9
    # derivational entropy bounds the string entropy, which bounds the enumerated part
    partial = -sum(q * math.log(q) for q in p.values() if q > 0)
    assert partial <= g.entropy() + 1e-9


@FAST
@given(small_pcfgs())
def test_expected_length_and_length_distribution(g):
    st_ = g._stats_to_tail()
    assume(st_.tail < 1e-12)
    assert abs(st_.prob.sum() - 1) < 1e-9
    mean = float((st_.prob * np.arange(len(st_.prob))).sum())
    assert close(mean, g.expected_length(), rel=1e-7)
    assert close(g.partition_function()[g.start], 1.0, rel=1e-9)


@FAST
@given(simple_deterministic_pcfgs())
def test_entropy_exact_for_unambiguous_grammars(g):
    assert g.entropy_is_exact and g.ambiguity_witness is None
    K = 4
    p, _ = naive_tables(g, K)
    st_ = g.length_stats(K)
    by_len = np.zeros(K + 1)
    for w, pw in p.items():
        if pw > 0:
            by_len[len(w)] -= pw * math.log(pw)
    np.testing.assert_allclose(st_.surprisal, by_len, rtol=1e-9, atol=1e-12)
    full = g._stats_to_tail()
    assume(full.tail < 1e-12)
    assert close(full.surprisal.sum(), g.entropy(), rel=1e-8)


@FAST
@given(small_pcfgs(), st.integers(0, 2**31 - 1))
def test_batched_tables_match_generic_derivation(g, seed):
    rng = np.random.default_rng(seed)
    strings = [tuple(rng.choice(g.alphabet, size=rng.integers(0, 6))) for _ in range(3)]
    strings += g.sample(3, seed=seed)
    ids = g.vocab.batch(strings, length=10) if max(map(len, strings)) <= 8 else None
    assume(ids is not None)
    probs = g.next_token_probs(ids)  # [B, T, V]
    for b, s in enumerate(strings):
        generic = Language.next_token_table(g, s)  # from prefix_log_prob and log_prob
        np.testing.assert_allclose(g.next_token_table(s), generic, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(probs[b, : len(s) + 1], generic, rtol=1e-9, atol=1e-12)
        assert not probs[b, len(s) + 1:].any()


# ----- known closed forms -------------------------------------------------------------------------
def catalan_log(n):
    return math.lgamma(2 * n + 1) - math.lgamma(n + 1) - math.lgamma(n + 2)


def test_ambiguous_binary_grammar_closed_form():
    # S -> S S | a | b: a^n has Catalan(n-1) derivations of probability p^(n-1) q^n
    g = PCFG([("S", ("S", "S"), 0.45), ("S", ("a",), 0.05), ("S", ("b",), 0.5)], start="S")
    assert not g.entropy_is_exact and g.ambiguity_witness == ("a", "a", "a")
    for n in (1, 2, 3, 7):
        want = catalan_log(n - 1) + (n - 1) * math.log(0.45) + n * math.log(0.05)
        assert close(g.log_prob("a" * n), want, rel=1e-12)
    assert g.length_stats(5).surprisal is None


def test_no_underflow_at_length_500():
    n = 500
    g = PCFG([("S", ("S", "S"), 0.45), ("S", ("a",), 0.05), ("S", ("b",), 0.5)], start="S")
    want = catalan_log(n - 1) + (n - 1) * math.log(0.45) + n * math.log(0.05)
    assert want < -1000  # exp(want) underflows float64
    assert close(g.log_prob("a" * n), want, rel=1e-12)
    # a right-linear grammar, where prefix probabilities also have a closed form
    h = PCFG([("S", ("a", "S"), 0.2), ("S", ("b", "S"), 0.7), ("S", ("a",), 0.1)], start="S")
    assert close(h.log_prob("a" * n), (n - 1) * math.log(0.2) + math.log(0.1), rel=1e-12)
    # the first n-1 a's continue (0.2 each); the n-th continues or stops (0.2 + 0.1)
    assert close(h.prefix_log_prob("a" * n), (n - 1) * math.log(0.2) + math.log(0.3), rel=1e-12)
    table = h.next_token_table("a" * n)
    assert np.all(np.isfinite(table)) and np.allclose(table.sum(1), 1.0)
    assert close(table[-1, 3], 0.2, rel=1e-9) and close(table[-1, EOS_ID], 0.1 / 0.3, rel=1e-9)


def test_weighted_epsilon_and_unary_removal():
    # S -> A A, A -> 'a' | eps: unweighted removal would change these
    g = PCFG([("S", ("A", "A"), 1.0), ("A", ("a",), 0.3), ("A", (), 0.7)], start="S")
    assert close(g.prob(""), 0.49) and close(g.prob("a"), 2 * 0.21) and close(g.prob("aa"), 0.09)
    assert close(math.exp(g.prefix_log_prob("a")), 0.51)
    # a unary cycle S -> B -> S
    h = PCFG([("S", ("B",), 0.5), ("S", ("a",), 0.3), ("S", ("b",), 0.2), ("B", ("S",), 1.0)],
             start="S")
    assert close(h.prob("a"), 0.6) and close(h.prob("b"), 0.4)
    assert not h.entropy_is_exact  # infinitely many derivations of "a"


def test_newton_partition_function_near_criticality():
    rules = [("S", ("S", "S"), 0.4999), ("S", ("a",), 0.5001)]
    p, q = 0.4999, 0.5001
    closed = (1 - math.sqrt(1 - 4 * p * q)) / (2 * p)  # = 1: the least root of p z^2 - z + q
    assert close(partition_functions(rules)["S"], closed, rel=1e-9)
    g = PCFG(rules, start="S")
    assert close(g.partition_function()["S"], 1.0, rel=1e-9)
    z = 0.0  # plain fixed-point iteration is far off after as many steps
    for _ in range(1000):
        z = p * z * z + q
    assert 1 - z > 1e-3
    # non-tight: Z < 1 is the least root
    assert close(partition_functions([("S", ("S", "S"), 0.6), ("S", ("a",), 0.4)])["S"], 2 / 3,
                 rel=1e-12)


# ----- sampling -----------------------------------------------------------------------------------
def _chi_square(samples, probs):
    """p-value of the sample counts against ``probs`` (a dict; the rest pooled into one bin)."""
    counts = {}
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
    keys = [s for s, q in probs.items() if q * len(samples) >= 5]
    obs = [counts.get(s, 0) for s in keys]
    exp = [probs[s] * len(samples) for s in keys]
    rest = len(samples) - sum(obs)
    rest_exp = len(samples) - sum(exp)
    if rest_exp >= 5:
        obs.append(rest)
        exp.append(rest_exp)
    else:
        assert rest <= 5 + 3 * math.sqrt(max(rest_exp, 1))
    exp = np.array(exp) * sum(obs) / sum(exp)
    return stats.chisquare(obs, exp).pvalue


SAMPLED = [
    [("S", ("a", "S", "b"), 0.3), ("S", ("S", "S"), 0.2), ("S", (), 0.3), ("S", ("b",), 0.2)],
    [("S", ("A", "B"), 1.0), ("A", ("a", "A"), 0.4), ("A", (), 0.6), ("B", ("A",), 0.5),
     ("B", ("b",), 0.5)],
]


@pytest.mark.parametrize("rules", SAMPLED)
def test_sample_frequencies(rules):
    # fixed seeds: deterministic; a correct sampler fails each check with probability FALSE_ALARM
    g = PCFG(rules, start="S")
    samples = g.sample(20000, seed=1)
    exact = {w: g.prob(w) for w in enumerate_strings(g.alphabet, 5)}
    assert _chi_square(samples, exact) > FALSE_ALARM
    for L in (2, 4):
        cond = g.sample(4000, seed=2, length=L)
        assert all(len(s) == L for s in cond)
        pl = g.length_stats(L).prob[L]
        exact_l = {w: g.prob(w) / pl for w in itertools.product(g.alphabet, repeat=L)}
        assert abs(sum(exact_l.values()) - 1) < 1e-9
        assert _chi_square(cond, exact_l) > FALSE_ALARM
    assert g.sample(5, seed=3) == g.sample(5, seed=3)


def test_sample_impossible_length_raises():
    g = PCFG.from_nltk("S -> '(' S ')' S [0.4] | [0.6]")
    assert g.sample(3, length=0) == [(), (), ()]
    with pytest.raises(FormalLMError, match="length=3"):
        g.sample(3, length=3)
    h = PCFG([("S", ("a", "S"), 0.5), ("S", ("a",), 0.5)], start="S")
    with pytest.raises(FormalLMError, match="length=0"):
        h.sample(1, length=0)


def test_impossible_prefix_rows_are_zero():
    g = PCFG.from_nltk("S -> '(' S ')' S [0.4] | [0.6]")
    table = g.next_token_table("())(")
    assert table[:3].sum(1) == pytest.approx([1, 1, 1]) and not table[3:].any()
    assert g.prefix_log_prob("())") == -math.inf and g.log_prob("())") == -math.inf


# ----- parsing and bad input ----------------------------------------------------------------------
def test_from_nltk_notation():
    g = PCFG.from_nltk("""
    # comment line
    S -> "a" S 'b' [0.25]   # trailing comment
       | A [0.25]
       | [0.5]
    A -> 'c' [1.0]
    """, name="t")
    assert g.start == "S" and g.alphabet == ("a", "b", "c")
    assert ("S", (), 0.5) in g.productions and ("S", ("A",), 0.25) in g.productions
    assert close(g.prob("acb"), 0.25 * 0.25)
    assert close(g.prob(""), 0.5)


def _error(text, **kw) -> str:
    with pytest.raises(GrammarError) as e:
        PCFG.from_nltk(text, path="g.toml", **kw)
    return str(e.value)


def test_syntax_errors_all_reported_with_locations():
    msg = _error("""S -> 'a' S [0.5] | 'b'
X 'a' [0.3]
  | 'c' [zz] 'd'
S -> 'open [0.5]
S -> 'a' [0.1] 'b'
""", line_offset=10)
    assert "g.toml:11:20" in msg and "has no probability" in msg
    assert "g.toml:12:3" in msg and "expected '->'" in msg
    assert "g.toml:13:9" in msg and "probability=[zz]" in msg
    assert "g.toml:14:6" in msg and "unterminated quote" in msg
    assert "g.toml:15:16" in msg and "symbol=\"'b'\"" in msg


@pytest.mark.parametrize("text, where, value", [
    ("S -> 'a' S [0.5] | 'b' [0.4]", "g.toml:1:1", "sum=0.9"),
    ("S -> 'a' [1.2] | 'b' [-0.2]", "g.toml:1:18", "prob=-0.2"),
    ("S -> 'a' [nan] | 'b' [1.0]", "g.toml:1:6", "prob=nan"),
    ("S -> 'a' [1.0]\nA -> 'b' [1.0]", "g.toml:2:1", "nonterminal=A is unreachable"),
    ("S -> 'a' [0.5] | A [0.5]\nA -> A 'b' [1.0]", "g.toml:2:1", "nonterminal=A is unproductive"),
    ("S -> S 'a' [1.0]", "g.toml:1:1", "the language is empty"),
    ("S -> S S [0.6] | 'a' [0.4]", "g.toml:1:6", "spectral_radius=1.2"),
    ("S -> S S [0.5] | 'a' [0.5]", "g.toml:1:6", "spectral_radius=1"),
    ("S -> 'EOS' [1.0]", "g.toml:1:6", "symbol='EOS'"),
    ("S -> 'a' B [1.0]", "g.toml:1:10", "nonterminal=B is used but has no rules"),
])
def test_bad_grammar(text, where, value):
    msg = _error(text)
    assert where in msg and value in msg, msg
    if "spectral" in value:
        assert "not tight" in msg and "lower the probabilities" in msg


def test_several_problems_all_reported():
    msg = _error("""S -> 'a' S [0.5] | 'b' [0.4]
A -> 'a' [1.0]
B -> B 'x' [1.0]
C -> 'c' [-1.0] | 'd' [2.0]
""")
    for part in ["g.toml:1:1", "sum=0.9", "g.toml:2:1", "nonterminal=A is unreachable",
                 "g.toml:3:1", "nonterminal=B is unproductive", "g.toml:4:6", "prob=-1.0"]:
        assert part in msg, part


def test_constructor_problems():
    loc = {0: Location("x.py", 7, 3)}
    with pytest.raises(GrammarError) as e:
        PCFG([("S", ("a",), 0.5)], start="T", locations=loc)
    msg = str(e.value)
    assert "x.py:7:3" in msg and "sum=0.5" in msg and "start='T'" in msg
    with pytest.raises(GrammarError, match="terminal='b' is not in alphabet"):
        PCFG([("S", ("b",), 1.0)], start="S", alphabet=("a",))
    with pytest.raises(GrammarError, match="alphabet=\\(\\) is empty"):
        PCFG([("S", (), 1.0)], start="S")
    g = PCFG([("S", (), 1.0)], start="S", alphabet=("a",))
    assert g.prob("") == 1.0 and g.next_token_table("")[0, EOS_ID] == 1.0
    # a reserved terminal that is also in the given alphabet is reported once, not twice
    with pytest.raises(GrammarError) as info:
        PCFG([("S", ("EOS",), 1.0)], start="S", alphabet=("EOS",))
    assert sum("reserved" in p.message for p in info.value.problems) == 1


# ----- shipped grammar files ----------------------------------------------------------------------
@pytest.mark.parametrize("name, ambiguous", [("arith", True), ("toy-english", True),
                                             ("dyck1-pcfg", False)])
def test_shipped_grammars(name, ambiguous):
    doc = tomllib.loads((GRAMMARS / f"{name}.toml").read_text())
    assert doc["kind"] == "pcfg" and doc["name"] == name
    g = PCFG.from_nltk(doc["productions"], name=name, start=doc.get("start"))
    assert close(g.partition_function()[g.start], 1.0, rel=1e-9)
    st_ = g._stats_to_tail()
    assert st_.tail < 1e-12 and g.expected_length() < 10
    assert (g.ambiguity_witness is not None) == ambiguous
    assert g.entropy_is_exact == (not ambiguous)
    if ambiguous:  # the witness really has two derivations: its derivational weight exceeds p(s)
        w = g.ambiguity_witness
        assert g.accepts(w)
        weights = derivation_weights(g, w)
        assert len(weights) >= 2
        assert close(sum(weights), g.prob(w), rel=1e-9)  # p(s) sums every derivation's weight
        assert sum(weights) > max(weights)
    w = max(g.sample(200, seed=0), key=len)
    table = g.next_token_table(w)
    assert np.allclose(table.sum(1), 1.0)


def test_toy_english_pp_attachment():
    doc = tomllib.loads((GRAMMARS / "toy-english.toml").read_text())
    g = PCFG.from_nltk(doc["productions"])
    s = ("she", "saw", "the", "dog", "with", "the", "telescope")
    # two parses: [saw [the dog with the telescope]] and [[saw the dog] with the telescope]
    vp_pp = 0.25 * 0.75 * 0.6 * 0.55 * 0.7 * 0.4 * 1.0 * 0.7 * 0.55 * 0.7 * 0.25
    np_pp = 0.75 * 0.6 * 0.15 * 0.55 * 0.7 * 0.4 * 1.0 * 0.7 * 0.55 * 0.7 * 0.25
    assert close(g.prob(s), 0.3 * (vp_pp + np_pp), rel=1e-12)


def test_size_limits_are_checked_before_any_work():
    """One rule of 300 terminals would build a 600-nonterminal binary grammar (minutes, GBs):
    refused at once, at the rule, naming the limit."""
    import time

    from formal_lm import limits

    text = "S -> " + " ".join(f"'t{i}'" for i in range(300)) + " [0.5] | [0.5]"
    start = time.perf_counter()
    with pytest.raises(GrammarError, match="MAX_RULE_LENGTH") as info:
        PCFG.from_nltk(text, path="g.toml")
    assert time.perf_counter() - start < 1 and info.value.problems[0].location.line == 1
    wide = "S -> " + " | ".join(" ".join(f"'t{i}{j}'" for j in range(10)) + f" [{1 / 20}]"
                                for i in range(20))
    with pytest.raises(GrammarError, match="MAX_BINARY_NONTERMINALS"):
        PCFG.from_nltk(wide)
    assert limits.MAX_BINARY_NONTERMINALS == 128


def test_long_strings_and_length_tables_are_refused_not_run_out_of_memory(monkeypatch):
    from formal_lm import limits

    g = PCFG.from_nltk("S -> 'a' S [0.5] | 'a' [0.5]")
    monkeypatch.setattr(limits, "MAX_CHART_CELLS", 100)
    with pytest.raises(FormalLMError, match="MAX_CHART_CELLS"):
        g.log_prob("a" * 20)
    with pytest.raises(FormalLMError, match="MAX_CHART_CELLS"):
        g.next_token_probs(g.vocab.batch(["a" * 20]))
    assert g.log_prob("a" * 5) == pytest.approx(5 * math.log(0.5))
    with pytest.raises(FormalLMError, match="MAX_LENGTH_TABLE"):
        g.length_stats(limits.MAX_LENGTH_TABLE + 1)
    with pytest.raises(FormalLMError, match="MAX_LENGTH_TABLE"):
        g.sample(1, length=limits.MAX_LENGTH_TABLE + 1)
