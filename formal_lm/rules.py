"""Named rules: a language is the intersection of its rules (and the support of its prior).

Each rule answers two questions about strings over the alphabet (tuples of symbols):
``holds(s)``: does the finished string satisfy it?  ``can_complete(p)``: can the prefix still be
extended into a string that satisfies it?  Rule extrapolation labels a prompt by the rules it
breaks (``not can_complete``) and asks whether a model keeps the others. ``can_complete`` is
exact, never a heuristic: a rule judges a prefix on its own (other rules and the language's
prior play no part), and any symbol of the alphabet may still be appended, any number of times.

Rule kinds (the ``kind`` of a ``[rules.NAME]`` table in a grammar file; ``RULE_KINDS``):

- ``linear``: one linear constraint over symbol counts, ``expr = "2*#a = #b"``,
  ``"#a + #b = #c"``, ``"#a <= #b"``, ``"#a - #b >= 1"`` (operators ``= <= >= < >``, integer
  coefficients and constants; ``#'('`` quotes a symbol that is not a word).
- ``count_equal``: ``weights[i] * #symbols[i]`` is the same for every i (default weights 1); a
  special case of ``linear`` (two symbols: ``"w0*#s0 = w1*#s1"``; more: one such rule per pair).
- ``forbidden``: the ``substring`` (a list of symbols) never occurs.
- ``parity``: the number of ``symbol`` (after the last ``after_last``, if given) is even (or odd).
- ``pattern``: the string fully matches a regular expression over one-character symbols.
- ``starts_with``: the first symbol is ``symbol``.
- ``runs_equal``: maximal runs number ``runs[0]`` and ``runs[1]`` (0-based) have equal length.
- ``balanced``: ``open``/``close`` form a balanced bracket sequence (other symbols ignored).
- ``nested``: brackets of different ``pairs`` nest inside each other (each close matches the
  innermost open bracket); balance itself is left to ``balanced``.
- ``in_grammar``: the string is one of grammar ``grammar`` (a shipped name or a path, in a file
  relative to that file), whose alphabet must be part of this one's.

A rule written in Python subclasses ``Rule`` (see its docstring); in ``RULE_KINDS`` it is a kind.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import operator
import re
from collections.abc import Sequence
from typing import Any

import regex

from formal_lm.errors import FormalLMError, GrammarError, Problem

String = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
    """Base of every rule kind: a frozen dataclass with a ``name`` and a ``description``.

    The contract of a subclass:

    - It is a ``@dataclasses.dataclass(frozen=True)``: immutable and hashable, its fields after
      ``name`` and ``description`` are its parameters (with defaults), which are the keys of its
      ``[rules.NAME]`` table when the class is in ``RULE_KINDS``. Check parameters in
      ``__post_init__`` and raise ``GrammarError`` for bad ones (a grammar file reports it at the
      rule's line).
    - ``holds(s)``: whether the finished string ``s`` (a tuple of symbols) satisfies the rule.
    - ``can_complete(p)``: whether SOME string that starts with ``p`` satisfies the rule, any
      symbol of the alphabet being appendable any number of times. Exact: a prompt is labelled
      as breaking the rule exactly when this is False. ``tests/test_rules.py``'s
      ``check_rule`` compares it with brute force.
    - ``symbols_used()``: the symbols the rule names; a language whose alphabet lacks one is an
      error when it is built (``problems(alphabet)``, which a subclass may extend).

    Example, a custom rule:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class EndsWith(Rule):
        ...     symbol: str = ""
        ...
        ...     def holds(self, s):
        ...         return len(s) > 0 and s[-1] == self.symbol
        ...
        ...     def can_complete(self, p):
        ...         return True  # appending `symbol` always works
        ...
        ...     def symbols_used(self):
        ...         return (self.symbol,)
        >>> r = EndsWith("R9", "ends with b", symbol="b")
        >>> r.holds(("a", "b")), r.holds(("b", "a")), r.can_complete(("b", "a"))
        (True, False, True)
        >>> [p.message for p in r.problems(("a", "c"))]
        ["rule R9 names symbol='b' outside the alphabet"]
    """

    name: str
    description: str

    def holds(self, s: Sequence[str]) -> bool:
        raise NotImplementedError

    def can_complete(self, p: Sequence[str]) -> bool:
        raise NotImplementedError

    def symbols_used(self) -> tuple[str, ...]:
        """Symbols the rule names (checked against the alphabet when a grammar is built)."""
        return ()

    def problems(self, alphabet: Sequence[str]) -> list[Problem]:
        """What is wrong with this rule in a language over ``alphabet`` (default: symbols the
        rule names that the alphabet lacks)."""
        return [Problem(f"rule {self.name} names symbol={s!r} outside the alphabet",
                        "use the alphabet's symbols")
                for s in dict.fromkeys(self.symbols_used()) if s not in alphabet]

    def _fail(self, message: str, fix: str):
        raise GrammarError(Problem(f"rule {self.name}: {message}", fix))


def alphabet_problems(rules: Sequence[Rule], alphabet: Sequence[str]) -> list[Problem]:
    """Every rule's problems in a language over ``alphabet``."""
    return [p for r in rules for p in r.problems(tuple(alphabet))]


# ----- linear count constraints -------------------------------------------------------------------
_TOKEN = re.compile(r"""(?P<ws>\s+)|(?P<int>\d+)|(?P<sym>\#(?:'[^'\s]+'|"[^"\s]+"|\w+))
                        |(?P<op><=|>=|==|=|<|>)|(?P<pm>[+-])|(?P<star>\*)|(?P<bad>.)""", re.X)


def parse_linear(expr: str, rule: str = "linear") -> tuple[tuple[tuple[str, int], ...], str, int]:
    """``expr`` as ``(((symbol, coef), ...), op, const)``: sum of coef * #symbol OP const, with
    op one of ``<=``, ``>=``, ``=`` (strict inequalities shift the constant by one).

    >>> parse_linear("2*#a + 1 < #b")
    ((('a', 2), ('b', -1)), '<=', -2)

    Raises:
        GrammarError: naming the expression and the (1-based) column of the problem.
    """
    def fail(col, what):
        raise GrammarError(Problem(f"rule {rule}: linear expression {expr!r}: column {col + 1}: "
                                   f"{what}", "write e.g. '2*#a = #b', '#a + #b = #c' or "
                                   "'#a - #b >= 1'"))

    if not isinstance(expr, str):
        fail(0, f"{expr!r} is not a string")
    toks = [(m.lastgroup, m.group(), m.start()) for m in _TOKEN.finditer(expr)
            if m.lastgroup != "ws"] + [("end", "", len(expr))]
    coefs: dict[str, int] = {}
    const, op, side, pos = 0, None, 1, 0
    while True:  # a term per pass: [+|-] (INT [*] #SYM | INT | #SYM), then +, -, a comparison
        kind, text, col = toks[pos]
        if pos and kind not in ("pm", "end") and toks[pos - 1][0] != "op":
            fail(col, f"expected +, - or a comparison before {text!r}")
        sign = -side if text == "-" else side
        pos += kind == "pm"
        k, (kind, text, col) = 1, toks[pos]
        if kind == "int":
            k, pos = int(text), pos + 1 + (toks[pos + 1][0] == "star")
            if toks[pos][0] != "sym":
                if toks[pos - 1][0] == "star":
                    fail(toks[pos][2], "expected #symbol after '*'")
                const, pos = const - sign * k, pos - 1
        elif kind != "sym":
            fail(col, "the expression ends early" if kind == "end" else
                 f"expected a count such as #a, 2*#a or a number, not {text!r}")
        if toks[pos][0] == "sym":
            sym = toks[pos][1][1:]
            sym = sym[1:-1] if sym[0] in "'\"" else sym
            coefs[sym] = coefs.get(sym, 0) + sign * k
        kind, text, col = toks[pos + 1]
        if kind == "bad":
            fail(col, f"unexpected {text!r}")
        pos += 1 + (kind == "op")
        if kind == "op":
            if op is not None:
                fail(col, f"a second comparison {text!r}")
            op, side = text, -1
        elif kind == "end":
            break
    if op is None:
        fail(len(expr), "no comparison (one of = <= >= < >)")
    terms = tuple((s, c) for s, c in coefs.items() if c)
    if not terms:
        fail(0, "no symbol count is left once both sides are combined")
    op, const = {"<": ("<=", const - 1), ">": (">=", const + 1),
                 "==": ("=", const)}.get(op, (op, const))
    return terms, op, const


_COMPARE = {"<=": operator.le, ">=": operator.ge, "=": operator.eq}


def _representable(r: int, gens: list[int]) -> bool:
    """Whether r is a sum of non-negative multiples of the positive integers ``gens``."""
    g = math.gcd(*gens)
    if r < 0 or r % g:
        return False
    r, gens = r // g, sorted({x // g for x in gens})
    if gens[0] == 1 or r > (gens[0] - 1) * (gens[-1] - 1):  # Schur's bound on the Frobenius number
        return True
    reach = [True] + [False] * r
    for v in range(1, r + 1):
        reach[v] = any(v >= x and reach[v - x] for x in gens)
    return reach[r]


@dataclasses.dataclass(frozen=True)
class Linear(Rule):
    """``expr``: sum of integer multiples of symbol counts, compared (= <= >= < >) with another.

    ``can_complete``: with the prefix's counts fixed and additions y >= 0 free, the question is
    whether sum c_i y_i OP r has a solution (r: the constant less the prefix's share). ``<=``: yes
    when r >= 0 or some c_i < 0; ``>=`` likewise; ``=`` with coefficients of both signs: yes iff
    gcd(c) divides r (they generate the group gcd(c) * Z); of one sign: iff |r| is a sum of the
    |c_i| (gcd, then Schur's bound on the Frobenius number, else a small table).

    >>> r = Linear("R1", "#a + #b = #c", expr="#a + #b = #c")
    >>> r.holds(("a", "b", "c", "c")), r.can_complete(("c", "c")), r.can_complete(("a",))
    (True, True, True)
    >>> Linear("R2", "", expr="2*#a + 3*#b = 1").can_complete(())
    False
    """

    expr: str = ""
    terms: tuple = dataclasses.field(init=False, repr=False, compare=False, default=())
    op: str = dataclasses.field(init=False, repr=False, compare=False, default="=")
    const: int = dataclasses.field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self):
        for key, value in zip(("terms", "op", "const"), parse_linear(self.expr, self.name)):
            object.__setattr__(self, key, value)

    def _value(self, s) -> int:
        s = tuple(s)
        return sum(c * s.count(sym) for sym, c in self.terms)

    def holds(self, s):
        return _COMPARE[self.op](self._value(s), self.const)

    def can_complete(self, p):
        r = self.const - self._value(p)
        pos = [c for _, c in self.terms if c > 0]
        neg = [-c for _, c in self.terms if c < 0]
        if self.op == "<=":
            return r >= 0 or bool(neg)
        if self.op == ">=":
            return r <= 0 or bool(pos)
        if pos and neg:
            return r % math.gcd(*pos, *neg) == 0
        return _representable(r, pos) if pos else _representable(-r, neg)

    def symbols_used(self):
        return tuple(s for s, _ in self.terms)


@dataclasses.dataclass(frozen=True)
class CountEqual(Rule):
    """``weights[i] * #symbols[i]`` equal for every i: the chain of linear equalities
    ``w0*#s0 = w1*#s1 = ...`` (``linear`` writes one link; this writes the chain)."""

    symbols: tuple[str, ...] = ()
    weights: tuple[int, ...] | None = None

    def __post_init__(self):
        if len(set(self.symbols)) != len(self.symbols):
            self._fail(f"symbols={list(self.symbols)} lists a symbol twice",
                       "list each symbol once")
        if self.weights is not None and (
                len(self.weights) != len(self.symbols)
                or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0
                           for w in self.weights)):
            self._fail(f"weights={list(self.weights)} must be one positive integer per symbol",
                       "write weights = [1, 2] for symbols = ['a', 'b'] (2*#b = #a)")

    def _w(self):
        return self.weights or (1,) * len(self.symbols)

    def holds(self, s):
        s = tuple(s)
        values = {w * s.count(sym) for sym, w in zip(self.symbols, self._w())}
        return len(values) <= 1

    def can_complete(self, p):
        return True  # distinct symbols, positive weights: append until all meet at a multiple

    def symbols_used(self):
        return self.symbols


@dataclasses.dataclass(frozen=True)
class Forbidden(Rule):
    """The ``substring`` (a sequence of symbols) never occurs; a prefix can be completed exactly
    when it does not contain it yet (the prefix itself is then a witness)."""

    substring: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.substring, str) or not isinstance(self.substring, Sequence) or \
                not self.substring or not all(isinstance(x, str) for x in self.substring):
            self._fail(f"substring={self.substring!r} must be a non-empty list of symbols",
                       "write substring = ['b', 'b']")
        object.__setattr__(self, "substring", tuple(self.substring))

    def holds(self, s):
        s, k = tuple(s), len(self.substring)
        return not any(s[i:i + k] == self.substring for i in range(len(s) - k + 1))

    def can_complete(self, p):
        return self.holds(p)

    def symbols_used(self):
        return tuple(self.substring)


@dataclasses.dataclass(frozen=True)
class Parity(Rule):
    symbol: str = ""
    even: bool = True
    after_last: str | None = None

    def holds(self, s):
        s = tuple(s)
        if self.after_last is not None and self.after_last in s:
            s = s[len(s) - s[::-1].index(self.after_last):]
        return (sum(1 for x in s if x == self.symbol) % 2 == 0) == self.even

    def can_complete(self, p):
        # one more `symbol` fixes the parity, unless `symbol` is `after_last` (count always 0)
        return self.even or self.symbol != self.after_last

    def symbols_used(self):
        return (self.symbol,) + ((self.after_last,) if self.after_last else ())


@dataclasses.dataclass(frozen=True)
class Pattern(Rule):
    """A regular expression over the symbols joined into text (one character each).

    ``can_complete`` is the ``regex`` module's partial match, which is exact for regular
    constructs (no lookaround or backreference) whose matches only use the alphabet's
    characters (no ``.`` or negated classes).
    """

    pattern: str = ""

    def holds(self, s):
        return regex.fullmatch(self.pattern, "".join(s)) is not None

    def can_complete(self, p):
        return regex.fullmatch(self.pattern, "".join(p), partial=True) is not None


@dataclasses.dataclass(frozen=True)
class StartsWith(Rule):
    symbol: str = ""

    def holds(self, s):
        return len(s) > 0 and s[0] == self.symbol

    def can_complete(self, p):
        return len(p) == 0 or p[0] == self.symbol

    def symbols_used(self):
        return (self.symbol,)


def _run_lengths(s):
    return [len(list(g)) for _, g in itertools.groupby(s)]


@dataclasses.dataclass(frozen=True)
class RunsEqual(Rule):
    """Maximal runs ``runs[0]`` and ``runs[1]`` exist and have equal length (needs >= 2
    symbols in the alphabet, so that new runs can start)."""

    runs: tuple[int, int] = (0, 1)

    def __post_init__(self):
        if len(self.runs) != 2 or not all(isinstance(i, int) and i >= 0 for i in self.runs):
            self._fail(f"runs={list(self.runs)} must be two run numbers (0-based)",
                       "write runs = [0, 1]")

    def holds(self, s):
        r = _run_lengths(s)
        i, j = self.runs
        return max(i, j) < len(r) and r[i] == r[j]

    def can_complete(self, p):
        r = _run_lengths(p)
        i, j = sorted(self.runs)
        if j < len(r) - 1:  # both runs finished
            return r[i] == r[j]
        if j == len(r) - 1:  # the later run may still grow
            return r[j] <= r[i]
        return True

    def problems(self, alphabet):
        out = super().problems(alphabet)
        if len(alphabet) < 2 and max(self.runs) > 0:
            out.append(Problem(f"rule {self.name}: runs_equal needs two symbols to start a "
                               "second run", "use a rule that fits a one-symbol alphabet"))
        return out


@dataclasses.dataclass(frozen=True)
class Balanced(Rule):
    open: str = "("
    close: str = ")"

    def _depths(self, s):
        d = 0
        for x in s:
            d += (x == self.open) - (x == self.close)
            if d < 0:
                return None
        return d

    def holds(self, s):
        return self._depths(s) == 0

    def can_complete(self, p):
        return self._depths(p) is not None

    def symbols_used(self):
        return (self.open, self.close)


@dataclasses.dataclass(frozen=True)
class Nested(Rule):
    pairs: tuple[tuple[str, str], ...] = ()

    def _ok(self, s):
        opens = {o: c for o, c in self.pairs}
        closes = set(opens.values())
        stack = []
        for x in s:
            if x in opens:
                stack.append(opens[x])
            elif x in closes and stack:
                if stack.pop() != x:
                    return False
        return True

    def holds(self, s):
        return self._ok(s)

    def can_complete(self, p):
        return self._ok(p)

    def symbols_used(self):
        return tuple(x for pair in self.pairs for x in pair)


@dataclasses.dataclass(frozen=True)
class InGrammar(Rule):
    """The string is one of grammar ``grammar``: ``holds`` is its ``accepts``, ``can_complete``
    its ``is_viable`` (a symbol outside its alphabet fails both).

    ``language`` is the loaded grammar (a grammar file's ``in_grammar`` rule loads ``grammar``,
    a path relative to the file, and passes it; from Python pass ``fl.load(grammar)``).

    >>> import formal_lm as fl
    >>> r = InGrammar("R1", "a^n b^n", grammar="anbn", language=fl.load("anbn"))
    >>> r.holds(("a", "b")), r.can_complete(("a", "b", "a")), r.symbols_used()
    (True, False, ('a', 'b'))
    """

    grammar: str = ""
    language: Any = dataclasses.field(default=None, compare=False, repr=False,
                                      metadata={"file": False})

    def __post_init__(self):
        if self.language is None:
            raise FormalLMError(Problem(f"rule {self.name}: in_grammar needs the loaded "
                                        f"grammar {self.grammar!r}",
                                        f"pass language=fl.load({self.grammar!r})"))
        object.__setattr__(self, "_known", frozenset(self.language.alphabet))

    def holds(self, s):
        s = tuple(s)
        return self._known.issuperset(s) and self.language.accepts(s)

    def can_complete(self, p):
        p = tuple(p)
        return self._known.issuperset(p) and self.language.is_viable(p)

    def symbols_used(self):
        return tuple(self.language.alphabet)

    def problems(self, alphabet):
        extra = [s for s in self.language.alphabet if s not in alphabet]
        return [Problem(f"rule {self.name}: grammar {self.grammar!r} has symbols {extra} "
                        f"outside this alphabet {list(alphabet)}",
                        "refer to a grammar whose alphabet is part of this one's")] if extra else []


RULE_KINDS: dict[str, type[Rule]] = {
    "linear": Linear,
    "count_equal": CountEqual,
    "forbidden": Forbidden,
    "parity": Parity,
    "pattern": Pattern,
    "starts_with": StartsWith,
    "runs_equal": RunsEqual,
    "balanced": Balanced,
    "nested": Nested,
    "in_grammar": InGrammar,
}
