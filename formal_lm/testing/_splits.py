"""Strategies for compositional splits: held-out combinations of a counter template, excluded
productions of a PCFG, and twin symbols seen only in some contexts.

With them "the model is systematic for this grammar" is a property test whose failures shrink
to the smallest failing split: combinations shrink toward fewer and smaller counts (the
template's assignments are listed in increasing order), productions and parents toward the
first ones of the grammar.
"""
from __future__ import annotations

import itertools
import math

from hypothesis import strategies as st

from formal_lm.errors import FormalLMError, Problem
from formal_lm.testing._languages import _checked
from formal_lm.testing._validation import size_problems


def _assignments(lang) -> list[tuple[int, ...]]:
    ranges = [range(lang.priors[v].min, lang.priors[v].largest() + 1) for v in lang.vars]
    return [c for c in itertools.product(*ranges)
            if all(lang.priors[v].log_pmf(x) > -math.inf for v, x in zip(lang.vars, c))]


def held_out_counts(lang, *, min_size: int = 1, max_size: int | None = None) -> st.SearchStrategy:
    """Lists of distinct assignments of a ``CounterLanguage``'s counts (tuples in the order of
    ``lang.vars``) to hold out, at least one assignment always left for training.

    Raises (when drawn from):
        InvalidStrategyArgument: not a counter template, bad sizes, or fewer than
            ``min_size + 1`` assignments.
    """
    def problems():
        from formal_lm.counter import CounterLanguage
        if not isinstance(lang, CounterLanguage):
            return [Problem(f"lang={getattr(lang, 'name', lang)!r} is not a CounterLanguage",
                            "pass a counter template (formal_lm.load('anbmcnm'))")]
        found = size_problems(min_size, max_size)
        if not found and len(_assignments(lang)) <= min_size:
            found.append(Problem(f"{lang.name!r} has {len(_assignments(lang))} assignments: "
                                 f"holding out min_size={min_size} leaves none to train on",
                                 "lower min_size"))
        return found

    def draw(draw):
        every = _assignments(lang)
        top = len(every) - 1 if max_size is None else min(max_size, len(every) - 1)
        return sorted(draw(st.lists(st.sampled_from(every), min_size=min_size, max_size=top,
                                    unique=True)))

    return _checked(problems, draw)


def count_splits(lang, *, min_size: int = 1, max_size: int | None = None) -> st.SearchStrategy:
    """``formal_lm.count_splits.exclude_counts`` splits of ``lang`` on combinations drawn by
    :func:`held_out_counts` (same arguments)."""
    from formal_lm.count_splits import exclude_counts
    return held_out_counts(lang, min_size=min_size, max_size=max_size).map(
        lambda combos: exclude_counts(lang, combos))


def _production_choices(g) -> list[tuple]:
    out = []
    for lhs, rhs, _ in g.productions:
        parents = sorted({A for A, r, _ in g.productions if lhs in r})
        out += [(lhs, rhs, None)] + [(lhs, rhs, P) for P in parents]
    return out


def production_splits(g) -> st.SearchStrategy:
    """``formal_lm.splits.exclude_production`` splits of the PCFG ``g``: a production, and
    either no parent or one of the nonterminals that has its left-hand side as a child;
    productions that every derivation uses (or none) are skipped.

    Raises (when drawn from):
        InvalidStrategyArgument: ``g`` is not a PCFG.
    """
    def problems():
        from formal_lm.pcfg import PCFG
        if not isinstance(g, PCFG):
            return [Problem(f"g={getattr(g, 'name', g)!r} is not a PCFG",
                            "pass a formal_lm.pcfg.PCFG")]
        return []

    def draw(draw):
        from formal_lm.splits import exclude_production
        lhs, rhs, parent = draw(st.sampled_from(_production_choices(g)))
        try:
            return exclude_production(g, lhs, rhs, parent=parent)
        except FormalLMError:
            from hypothesis import reject
            reject()

    return _checked(problems, draw)


def twin_splits(g, *, twin: str = "twin") -> st.SearchStrategy:
    """``formal_lm.splits.twin_split`` splits of the PCFG ``g``: a terminal, its new synonym
    ``twin``, and a parent of the terminal under which training never sees the twin. Draws
    ``(split, (symbol, twin))``.

    Raises (when drawn from):
        InvalidStrategyArgument: ``g`` is not a PCFG, or ``twin`` is already one of its symbols.
    """
    def problems():
        from formal_lm.pcfg import PCFG
        if not isinstance(g, PCFG):
            return [Problem(f"g={getattr(g, 'name', g)!r} is not a PCFG",
                            "pass a formal_lm.pcfg.PCFG")]
        if twin in g.alphabet or twin in g.nonterminals:
            return [Problem(f"twin={twin!r} is already a symbol of {g.name!r}",
                            "pass a fresh name")]
        return []

    def draw(draw):
        from formal_lm.splits import twin_split
        symbol = draw(st.sampled_from(g.alphabet))
        parents = sorted({A for A, r, _ in g.productions if symbol in r})
        parent = draw(st.sampled_from(parents))
        try:
            return twin_split(g, symbol, twin, parent=parent), (symbol, twin)
        except FormalLMError:  # the twin is used by every derivation under the parent
            from hypothesis import reject
            reject()

    return _checked(problems, draw)
