"""Hypothesis strategies over a language: its strings, viable prefixes, non-strings and OOD
prompts. Arguments are checked when the strategy is first drawn from (hypothesis's own style);
every strategy is built from hypothesis primitives so failures shrink toward short strings whose
symbols come early in the alphabet.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

from hypothesis import reject
from hypothesis import strategies as st

from formal_lm.errors import Problem
from formal_lm.testing._oracle import make_oracle
from formal_lm.testing._validation import (check, default_max_size, lengths_with_strings,
                                           rule_problems, size_problems)

ENUMERATION_LIMIT = 5000
"""How many short strings over the alphabet a strategy may enumerate at draw time (to check that
its arguments admit an example, and to seed OOD prompts with guaranteed hits)."""


def _lang_problems(lang) -> list[Problem]:
    from formal_lm.language import Language
    if not isinstance(lang, Language):
        return [Problem(f"lang={lang!r} is not a formal_lm.Language",
                        "pass a language, e.g. formal_lm.load('anbn')")]
    return []


def _max_size(lang, min_size: int, max_size: int | None) -> int:
    """Checks ``lang`` and the size range; returns ``max_size``, or the default when None."""
    check(_lang_problems(lang) + size_problems(min_size, max_size))
    return default_max_size(lang, min_size) if max_size is None else max_size


def _require(found, message: str) -> None:
    """Raises ``message`` as InvalidStrategyArgument when ``found`` (the lengths or sizes in range
    that have what the strategy draws) is empty."""
    check([] if found else [Problem(
        message, "widen the range; lang.length_distribution(L) shows which lengths have strings")])


def _walk(draw, lang, oracle, L: int, steps: int) -> tuple[str, ...]:
    """``steps`` symbols of a string of length ``L``, each drawn among the allowed ones."""
    p: tuple[str, ...] = ()
    for _ in range(steps):
        options = [c for c in lang.alphabet if oracle(p + (c,), L)]
        if not options:
            reject()  # only reachable when the generic oracle ran out of budget
        p += (draw(st.sampled_from(options)),)
    return p


@st.composite
def _whole_walks(draw, lang, oracle, lengths: Sequence[int]) -> tuple[str, ...]:
    """A string of a length drawn from ``lengths``, walked symbol by symbol (``_walk``)."""
    L = draw(st.sampled_from(lengths))
    return _walk(draw, lang, oracle, L, L)


def strings(lang, *, min_size: int = 0, max_size: int | None = None) -> st.SearchStrategy:
    """Strings of ``lang`` (positive probability) with ``min_size <= len(s) <= max_size``.

    Draws a length with a string (shrinks toward the shortest), then each symbol among those that
    can still finish a string of that length (shrinks toward alphabet order). With
    ``max_size=None`` lengths stop where all but 1e-6 of the mass lies, at most 32.

    Raises (when drawn from):
        InvalidStrategyArgument: bad sizes, or no string of the language in the size range (read
            from ``lang.length_distribution``).

    Example:
        >>> import formal_lm as fl
        >>> from hypothesis import find
        >>> find(strings(fl.load("anbn")), lambda s: len(s) > 4)
        ('a', 'a', 'a', 'b', 'b', 'b')
    """
    def build():
        hi = _max_size(lang, min_size, max_size)
        lengths = lengths_with_strings(lang, min_size, hi)
        _require(lengths, f"{lang.name!r} has no string with min_size={min_size} <= length <= "
                          f"max_size={hi}")
        return _whole_walks(lang, make_oracle(lang, hi), lengths)

    return st.deferred(build)


def prefixes(lang, *, min_size: int = 0, max_size: int | None = None) -> st.SearchStrategy:
    """Viable prefixes of ``lang`` (``lang.is_viable(p)``) of ``min_size..max_size`` symbols.

    A prefix is the start of a string of the language at most ``max(max_size * 2, default)``
    long, drawn as in :func:`strings`; the empty prefix is included when ``min_size == 0``.

    Example:
        >>> import formal_lm as fl
        >>> from hypothesis import find
        >>> find(prefixes(fl.load("anbn")), lambda p: "b" in p)
        ('a', 'b')
    """
    def build():
        hi = _max_size(lang, min_size, max_size)
        full = max(2 * hi, default_max_size(lang, hi))
        lengths = lengths_with_strings(lang, min_size, full)
        sizes = [k for k in range(min_size, hi + 1) if lengths and lengths[-1] >= k]
        _require(sizes, f"{lang.name!r} has no viable prefix with min_size={min_size} <= length "
                        f"<= max_size={hi} (no string up to {full} symbols is that long)")
        oracle = make_oracle(lang, full)

        @st.composite
        def draw_prefix(draw):
            k = draw(st.sampled_from(sizes))
            L = draw(st.sampled_from([L for L in lengths if L >= k]))
            return _walk(draw, lang, oracle, L, k)

        return draw_prefix()

    return st.deferred(build)


def _short_strings(alphabet, min_size: int, max_size: int, limit: int = ENUMERATION_LIMIT):
    """Every string over ``alphabet`` with length in range, shortest first, while the count stays
    under ``limit``; and whether that covered the whole range."""
    out, count = [], 0
    for L in range(min_size, max_size + 1):
        n = len(alphabet) ** L
        if count + n > limit:
            return out, False
        count += n
        out.extend(itertools.product(alphabet, repeat=L))
    return out, True


@st.composite
def _mutate(draw, base: st.SearchStrategy, alphabet):
    """A string of ``base`` with one symbol changed, inserted or deleted."""
    s = list(draw(base))
    op = draw(st.sampled_from(("delete", "change", "insert") if s else ("insert",)))
    if op == "insert":
        i = draw(st.integers(0, len(s)))
        s.insert(i, draw(st.sampled_from(alphabet)))
    else:
        i = draw(st.integers(0, len(s) - 1))
        if op == "delete":
            del s[i]
        else:
            others = [c for c in alphabet if c != s[i]]
            if not others:
                reject()
            s[i] = draw(st.sampled_from(others))
    return tuple(s)


def non_strings(lang, *, min_size: int = 0, max_size: int | None = None) -> st.SearchStrategy:
    """Strings over ``lang.alphabet`` that are NOT in the language (probability 0).

    Mixes arbitrary strings over the alphabet with near misses: a string of the language with one
    symbol changed, inserted or deleted. Shrinks toward short strings.

    Raises (when drawn from):
        InvalidStrategyArgument: bad sizes, or every string in the (small, enumerable) size range
            belongs to the language.

    Example:
        >>> import formal_lm as fl
        >>> from hypothesis import find
        >>> s = find(non_strings(fl.load("anbn")), lambda s: len(s) >= 2)
        >>> len(s), fl.load("anbn").accepts(s)
        (2, False)
    """
    def build():
        hi = _max_size(lang, min_size, max_size)
        alphabet = tuple(lang.alphabet)
        short, complete = _short_strings(alphabet, min_size, hi)
        if complete and all(lang.accepts(s) for s in short):
            check([Problem(f"every string over {alphabet} with min_size={min_size} <= length <= "
                           f"max_size={hi} is in {lang.name!r}: there is no non-string to draw",
                           "widen the size range")])

        def outside(s):
            return min_size <= len(s) <= hi and not lang.accepts(s)

        branches = [st.lists(st.sampled_from(alphabet), min_size=min_size, max_size=hi)
                    .map(tuple).filter(outside)]
        if lengths_with_strings(lang, max(0, min_size - 1), hi + 1):
            base = strings(lang, min_size=max(0, min_size - 1), max_size=hi + 1)
            branches.append(_mutate(base, alphabet).filter(outside))
        return st.one_of(branches)

    return st.deferred(build)


def ood_prompts(lang, *, breaks: Sequence[str] = ("R2",), keeps: Sequence[str] = ("R1",),
                min_size: int = 0, max_size: int | None = None) -> st.SearchStrategy:
    """Prompts that break every rule in ``breaks`` (``not rule.can_complete(p)``) while every rule
    in ``keeps`` can still be satisfied (``rule.can_complete(p)``).

    These are the out-of-distribution prompts of rule extrapolation (Reizinger et al., 2024): for
    a^n b^n, ``breaks=("R2",)`` (a before b) and ``keeps=("R1",)`` (#a = #b) gives prompts such
    as ``"ba"`` whose completion can still balance the counts. Rules named in neither are free.

    Raises (when drawn from):
        InvalidStrategyArgument: unknown rule names, a rule in both ``breaks`` and ``keeps``, bad
            sizes, or no such prompt in a size range small enough to enumerate.

    Example:
        >>> import formal_lm as fl
        >>> from hypothesis import find
        >>> find(ood_prompts(fl.load("anbn")), lambda p: True)
        ('b',)
    """
    def build():
        hi = _max_size(lang, min_size, max_size)
        problems = rule_problems(lang, breaks, "breaks") + rule_problems(lang, keeps, "keeps")
        if not isinstance(breaks, str) and not isinstance(keeps, str):
            for name in sorted(set(breaks) & set(keeps)):
                problems.append(Problem(f"rule={name!r} is in both breaks and keeps",
                                        "a prompt cannot break and keep the same rule; "
                                        "name it in one of them"))
        check(problems)
        by_name = {r.name: r for r in lang.rules}
        broken = [by_name[n] for n in breaks]
        kept = [by_name[n] for n in keeps]
        alphabet = tuple(lang.alphabet)

        def fits(p):
            return (min_size <= len(p) <= hi and all(not r.can_complete(p) for r in broken)
                    and all(r.can_complete(p) for r in kept))

        short, complete = _short_strings(alphabet, min_size, hi)
        hits = [p for p in short if fits(p)]
        if not hits and complete:
            check([Problem(
                f"no prompt over {alphabet} with min_size={min_size} <= length <= max_size={hi} "
                f"breaks {list(breaks)} while keeping {list(keeps)} in {lang.name!r}",
                "widen the size range or choose other rules (a rule such as count_equal can "
                "always be completed, so it cannot be broken)")])
        branches = []
        if hits:
            # the enumerated hits, walked symbol by symbol like strings(): shrinking a length
            # keeps the symbols before it, so 'bbbaab' can shrink to 'bbb'
            starts: dict[int, set] = {}
            for p in hits:
                starts.setdefault(len(p), set()).update(p[:k] for k in range(len(p) + 1))
            branches.append(_whole_walks(lang, lambda q, n: q in starts[n], sorted(starts)))
        if not complete:
            branches.append(st.lists(st.sampled_from(alphabet), min_size=min_size, max_size=hi)
                            .map(tuple).filter(fits))
            # a viable prefix, one wrong symbol, then anything: near the language's support
            tail = st.lists(st.sampled_from(alphabet), max_size=max(0, hi))
            near = st.tuples(prefixes(lang, max_size=hi), st.sampled_from(alphabet), tail).map(
                lambda t: t[0] + (t[1],) + tuple(t[2]))
            branches.append(near.filter(fits))
        return st.one_of(branches)

    return st.deferred(build)
