"""Every rule kind against brute force.

``check_rule(rule, alphabet, max_len, horizon)`` takes ``holds`` as the rule's definition (the
kinds that have a simpler independent definition are also compared with it) and checks
``can_complete`` on every prefix p of length <= max_len against "some string of length
<= horizon that starts with p satisfies holds", found by enumerating every string up to the
horizon:

- False is never wrong within the horizon: a witness found means can_complete(p) is True;
- True is witnessed within the horizon: each kind's test picks a horizon at least the longest
  shortest witness its drawn parameters can need (stated beside it), so the check is two-sided.

Rule parameters are drawn by hypothesis (derandomized, a few dozen examples per kind).
"""
from __future__ import annotations

import itertools
import math
import operator
import re
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import formal_lm as fl
from formal_lm.language import enumerate_strings
from formal_lm.rules import (RULE_KINDS, Balanced, CountEqual, Forbidden, InGrammar, Linear,
                             Nested, Parity, Pattern, Rule, RunsEqual, StartsWith)

RULES = settings(max_examples=30, derandomize=True, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow])


def completable(rule: Rule, alphabet, max_len: int, horizon: int) -> set:
    """Prefixes (up to max_len) of the strings up to ``horizon`` that satisfy the rule."""
    out = set()
    for s in enumerate_strings(alphabet, horizon):
        if rule.holds(s):
            out.update(s[:t] for t in range(min(len(s), max_len) + 1))
    return out


def check_rule(rule: Rule, alphabet, max_len: int, horizon: int | None = None, *,
               reference=None) -> None:
    """Brute-force check of ``rule`` over ``alphabet`` (see the module docstring).

    ``horizon`` (default ``max_len``) bounds the witnesses searched; ``reference``, when given,
    is an independent definition of ``holds`` compared on every string up to ``max_len``.
    """
    horizon = max_len if horizon is None else horizon
    assert horizon >= max_len
    for s in enumerate_strings(alphabet, max_len):
        held = rule.holds(s)
        assert isinstance(held, bool), (rule, s, held)
        if reference is not None:
            assert held == reference(s), (rule, s)
    witnessed = completable(rule, alphabet, max_len, horizon)
    for p in enumerate_strings(alphabet, max_len):
        claim = rule.can_complete(p)
        assert isinstance(claim, bool), (rule, p, claim)
        if p in witnessed:
            assert claim, f"{rule}: can_complete({p}) is False, but a witness exists"
        else:
            assert not claim, f"{rule}: can_complete({p}) is True, no witness up to {horizon}"


def counts(s, sym):
    return sum(1 for x in s if x == sym)


# ----- linear ----------------------------------------------------------------------------------
OPS = {"=": operator.eq, "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


@st.composite
def linear_rules(draw, symbols, max_coef, max_const):
    """A random linear constraint written in varied ways, with its reference meaning."""
    sides = {0: [], 1: []}  # per side: (coef, symbol) terms and constants
    coefs = {s: draw(st.integers(-max_coef, max_coef)) for s in symbols}
    if not any(coefs.values()):
        coefs[symbols[0]] = 1
    for s, c in coefs.items():
        if c:
            side = draw(st.integers(0, 1))
            sides[side].append((c if side == 0 else -c, f"#{s}"))
    const = draw(st.integers(-max_const, max_const))
    if const:
        side = draw(st.integers(0, 1))
        sides[side].append((-const if side == 0 else const, ""))
    op = draw(st.sampled_from(sorted(OPS)))

    def term(c, sym):
        if not sym:
            return str(abs(c))
        if abs(c) == 1:
            return sym
        return f"{abs(c)}{draw(st.sampled_from(['*', '', ' * ']))}{sym}"

    def text(terms):
        if not terms:
            return "0"
        out = [("- " if c < 0 else "") + term(c, sym) if i == 0 else
               ("- " if c < 0 else "+ ") + term(c, sym) for i, (c, sym) in enumerate(terms)]
        return " ".join(out)

    expr = f"{text(sides[0])} {op} {text(sides[1])}"
    lin = {s: c for s, c in coefs.items() if c}

    def reference(s):
        return OPS[op](sum(c * counts(s, sym) for sym, c in lin.items()), const)

    return expr, reference


# With |coefficients| <= C = 2 and |constant| <= K, a prefix of length l leaves r with
# |r| <= K + 1 + C*l (the 1 from a strict inequality), and a completable constraint is then
# completed with at most |r| + 1 more symbols (one symbol of the right sign |r| times; for an
# equality with both signs and gcd 1 a coefficient +-1 exists or +-2 meets an odd r with one
# -+1). Horizon: l + K + 2 + C*l.
@RULES
@given(st.data(), st.sampled_from([("a", "b"), ("a", "b", "c")]))
def test_linear_rules_against_brute_force(data, alphabet):
    max_len, K = (3, 2) if len(alphabet) == 2 else (2, 1)
    expr, reference = data.draw(linear_rules(alphabet, 2, K))
    rule = Linear("R", expr, expr=expr)
    check_rule(rule, alphabet, max_len, max_len + K + 2 + 2 * max_len, reference=reference)


def _achievable(coefs, n):
    """Values sum c_i y_i over y >= 0 with sum y_i <= n (a count-level brute force)."""
    values = {0}
    for _ in range(n):
        values |= {v + c for v in values for c in coefs}
    return values


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=3), st.integers(-10, 10),
       st.sampled_from(["=", "<=", ">="]), st.lists(st.integers(0, 4), min_size=3, max_size=3))
def test_linear_can_complete_at_the_count_level(coefs, const, op, prefix):
    """Larger coefficients, where the gcd and Frobenius cases matter: can_complete against the
    values that up to 40 more symbols reach (ample for |coef| <= 5, |const| <= 10)."""
    if not any(coefs):
        coefs = coefs[:-1] + [3]
    syms = "abc"[: len(coefs)]
    expr = " ".join(f"{'-' if c < 0 else '+'} {abs(c)}*#{s}" for c, s in zip(coefs, syms))
    expr = expr.lstrip("+ ") + f" {op} {const}"
    rule = Linear("R", expr, expr=expr)
    p = tuple(itertools.chain.from_iterable([s] * k for s, k in zip(syms, prefix)))
    have = sum(c * k for c, k in zip(coefs, prefix))
    reach = {have + v for v in _achievable(set(coefs), 40)}
    assert rule.can_complete(p) == any(OPS[op](v, const) for v in reach), (expr, p)


def test_linear_examples_and_errors():
    r = Linear("R", "", expr="2*#a = #b")
    assert r.holds("aabbbb") and not r.holds("ab") and r.can_complete(("b", "b", "b"))
    assert not Linear("R", "", expr="2*#a + 3*#b = 1").can_complete(())  # gcd 1, not a sum
    assert Linear("R", "", expr="2*#a + 3*#b = 5").can_complete(())
    assert not Linear("R", "", expr="2*#a - 4*#b = 1").can_complete(())  # gcd 2
    assert not Linear("R", "", expr="#a - #b >= 1").holds(()) and \
        Linear("R", "", expr="#a - #b >= 1").can_complete(("b", "b"))
    assert not Linear("R", "", expr="#a <= 1").can_complete(("a", "a"))
    assert Linear("R", "", expr="#'(' = #')'").holds(("(", ")"))
    for bad, col in [("#a = = #b", 6), ("#a + #b", 8), ("2 * = #b", 5), ("#a ; #b", 4),
                     ("#a = #a", 1)]:
        with pytest.raises(fl.GrammarError, match=rf"{re.escape(repr(bad))}: column {col}:"):
            Linear("R", "", expr=bad)


# ----- the other kinds --------------------------------------------------------------------------
@RULES
@given(st.sampled_from([("a", "b"), ("a", "b", "c")]), st.data())
def test_count_equal_against_brute_force(alphabet, data):
    # witness: every count meets at T, the least multiple of lcm(w) >= max_len * max(w); the
    # string then has at most max_len + sum(T / w_i) symbols
    k = len(alphabet)
    weights = tuple(data.draw(st.lists(st.integers(1, 2 if k == 2 else 1), min_size=k,
                                       max_size=k)))
    max_len = 3 if k == 2 else 2
    lcm = math.lcm(*weights)
    T = lcm * -(-max_len * max(weights) // lcm)
    rule = CountEqual("R", "", symbols=alphabet, weights=weights)
    check_rule(rule, alphabet, max_len, max_len + sum(T // w for w in weights),
               reference=lambda s: len({w * counts(s, a) for a, w in zip(alphabet, weights)}) == 1)


@RULES
@given(st.lists(st.sampled_from("ab"), min_size=1, max_size=3))
def test_forbidden_against_brute_force(sub):
    # witness: the prefix itself, when it does not contain the substring
    rule = Forbidden("R", "", substring=tuple(sub))
    check_rule(rule, ("a", "b"), 6, reference=lambda s: "".join(sub) not in "".join(s))


@RULES
@given(st.sampled_from("ab"), st.booleans(), st.sampled_from([None, "a", "b", "c"]))
def test_parity_against_brute_force(symbol, even, after_last):
    # witness: at most one more `symbol`
    rule = Parity("R", "", symbol=symbol, even=even, after_last=after_last)
    check_rule(rule, ("a", "b", "c"), 4, 5)


@st.composite
def patterns(draw):
    """Regular expressions over a, b: 1-3 atoms (a symbol, a class or a 2-symbol group) with
    quantifiers, optionally an alternative of two such sequences."""
    def seq():
        atoms = draw(st.lists(st.sampled_from(["a", "b", "[ab]", "(ab)", "(ba)", "(aa)"]),
                              min_size=1, max_size=3))
        return "".join(a + draw(st.sampled_from(["", "*", "+", "?"])) for a in atoms)

    first = seq()
    return f"{first}|{seq()}" if draw(st.booleans()) else first


@RULES
@given(patterns())
def test_pattern_against_brute_force(pattern):
    # witness: finish the current atom (<= 1 symbol) and each later atom once (<= 2 each)
    rule = Pattern("R", "", pattern=pattern)
    check_rule(rule, ("a", "b"), 4, 4 + 7,
               reference=lambda s: re.fullmatch(pattern, "".join(s)) is not None)


@RULES
@given(st.sampled_from("abc"))
def test_starts_with_against_brute_force(symbol):
    rule = StartsWith("R", "", symbol=symbol)
    check_rule(rule, ("a", "b", "c"), 4, 5, reference=lambda s: len(s) > 0 and s[0] == symbol)


@RULES
@given(st.integers(0, 2), st.integers(0, 2), st.sampled_from([("a", "b"), ("a", "b", "c")]))
def test_runs_equal_against_brute_force(i, j, alphabet):
    # witness: up to j + 1 new runs, the last as long as run i (<= max_len)
    max_len = 4 if len(alphabet) == 2 else 3
    check_rule(RunsEqual("R", "", runs=(i, j)), alphabet, max_len, 2 * max_len + 3)


@RULES
@given(st.sampled_from([("a", "b"), ("a", "b", "c")]), st.booleans())
def test_balanced_against_brute_force(alphabet, swap):
    # witness: close every open bracket (<= max_len more)
    o, c = ("b", "a") if swap else ("a", "b")
    max_len = 5 if len(alphabet) == 2 else 4
    check_rule(Balanced("R", "", o, c), alphabet, max_len, 2 * max_len)


@RULES
@given(st.permutations(["(", ")", "[", "]"]), st.booleans())
def test_nested_against_brute_force(order, one_pair):
    # holds is "no crossing so far", so the prefix itself is a witness
    pairs = ((order[0], order[1]),) if one_pair else ((order[0], order[1]), (order[2], order[3]))
    check_rule(Nested("R", "", pairs), ("(", ")", "[", "]"), 4)


# grammar, alphabet, max_len, horizon: the longest shortest completion of a viable prefix of
# length <= max_len (anbn: as many b as a; Dyck: one close per open; the Tomita DFAs: a few
# states)
GRAMMARS = [("anbn-short", ("a", "b"), 5, 10), ("dyck1", ("(", ")"), 5, 10),
            ("dyck1-pcfg", ("(", ")"), 5, 10), ("parity", ("0", "1"), 5, 6),
            ("tomita3", ("0", "1"), 5, 9), ("tomita5", ("0", "1"), 5, 9),
            ("anbn-short", ("a", "b", "c"), 3, 6), ("anbmcnm", ("a", "b", "c"), 3, 8)]


@settings(max_examples=12, derandomize=True, deadline=None, database=None)
@given(st.sampled_from(GRAMMARS))
def test_in_grammar_against_brute_force(case):
    name, alphabet, max_len, horizon = case
    lang = fl.load(name)
    rule = InGrammar("R", "", grammar=name, language=lang)
    check_rule(rule, alphabet, max_len, horizon, reference=lambda s: set(s) <= set(
        lang.alphabet) and lang.prob(s) > 0)


def test_every_kind_is_covered_here():
    tested = {Linear, CountEqual, Forbidden, Parity, Pattern, StartsWith, RunsEqual, Balanced,
              Nested, InGrammar}
    assert set(RULE_KINDS.values()) == tested


def test_parameter_checks():
    with pytest.raises(fl.GrammarError, match="lists a symbol twice"):
        CountEqual("R", "", symbols=("a", "a"))
    with pytest.raises(fl.GrammarError, match="one positive integer per symbol"):
        CountEqual("R", "", symbols=("a", "b"), weights=(1, 0))
    with pytest.raises(fl.GrammarError, match="non-empty list of symbols"):
        Forbidden("R", "", substring=())
    with pytest.raises(fl.GrammarError, match="two run numbers"):
        RunsEqual("R", "", runs=(0,))
    assert RunsEqual("R", "", runs=(0, 1)).problems(("a",))  # needs two symbols
    anbn = fl.load("anbn")
    assert InGrammar("R", "", grammar="anbn", language=anbn).problems(("a",))  # b is missing
    assert not InGrammar("R", "", grammar="anbn", language=anbn).problems(("a", "b", "c"))
    with pytest.raises(fl.FormalLMError, match="pass language="):
        InGrammar("R", "", grammar="anbn")


def test_the_custom_rule_example_works_in_a_grammar_file():
    """The open vocabulary: a Rule subclass in RULE_KINDS is a kind of grammar files."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class EndsWith(Rule):
        symbol: str = ""

        def holds(self, s):
            return len(s) > 0 and s[-1] == self.symbol

        def can_complete(self, p):
            return True

        def symbols_used(self):
            return (self.symbol,)

    check_rule(EndsWith("R", "", symbol="b"), ("a", "b"), 4, 5)
    RULE_KINDS["ends_with"] = EndsWith
    try:
        lang = fl.loads(textwrap.dedent('''
            kind = "counter"
            alphabet = ["a", "b"]
            blocks = [["a", "n"], ["b", "n"]]
            [prior.n]
            kind = "uniform"
            min = 1
            max = 3
            [rules.R1]
            kind = "ends_with"
            symbol = "b"
        '''))
        assert lang.rules[0].holds(("a", "b"))
    finally:
        del RULE_KINDS["ends_with"]
