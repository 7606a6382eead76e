"""Named rules: a language is the intersection of its rules (and the support of its prior).

Each rule answers two questions about strings over the alphabet (tuples of symbols):
``holds(s)``: does the finished string satisfy it?  ``can_complete(p)``: can the prefix still be
extended into a string that satisfies it?  Rule extrapolation labels a prompt by the rules it
breaks (``not can_complete``) and asks whether a model keeps the others.

Rule kinds (the ``kind`` of a ``[rules.NAME]`` table in a grammar file):

- ``count_equal``: ``weights[i] * #symbols[i]`` is the same for every i (default weights 1).
- ``parity``: the number of ``symbol`` (after the last ``after_last``, if given) is even (or odd).
- ``pattern``: the string fully matches a regular expression over one-character symbols.
- ``starts_with``: the first symbol is ``symbol``.
- ``runs_equal``: maximal runs number ``runs[0]`` and ``runs[1]`` (0-based) have equal length.
- ``balanced``: ``open``/``close`` form a balanced bracket sequence (other symbols ignored).
- ``nested``: brackets of different ``pairs`` nest inside each other (each close matches the
  innermost open bracket); balance itself is left to ``balanced``.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import regex

String = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
    """Base of every rule kind; subclasses are final dataclasses."""

    name: str
    description: str

    def holds(self, s: Sequence[str]) -> bool:
        raise NotImplementedError

    def can_complete(self, p: Sequence[str]) -> bool:
        raise NotImplementedError

    def symbols_used(self) -> tuple[str, ...]:
        """Symbols the rule names (checked against the alphabet when a grammar is built)."""
        return ()


@dataclasses.dataclass(frozen=True)
class CountEqual(Rule):
    symbols: tuple[str, ...] = ()
    weights: tuple[int, ...] | None = None

    def _w(self):
        return self.weights or (1,) * len(self.symbols)

    def holds(self, s):
        values = {w * sum(1 for x in s if x == sym) for sym, w in zip(self.symbols, self._w())}
        return len(values) <= 1

    def can_complete(self, p):
        return True  # any symbol can be appended until the weighted counts meet

    def symbols_used(self):
        return self.symbols


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
        return True  # one more `symbol` fixes the parity

    def symbols_used(self):
        return (self.symbol,) + ((self.after_last,) if self.after_last else ())


@dataclasses.dataclass(frozen=True)
class Pattern(Rule):
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
    runs: tuple[int, int] = (0, 1)

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


RULE_KINDS: dict[str, type[Rule]] = {
    "count_equal": CountEqual,
    "parity": Parity,
    "pattern": Pattern,
    "starts_with": StartsWith,
    "runs_equal": RunsEqual,
    "balanced": Balanced,
    "nested": Nested,
}
