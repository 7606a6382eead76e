"""Draw-time validation shared by the strategies and assertions."""
from __future__ import annotations

import math

from hypothesis.errors import InvalidArgument

from formal_lm.errors import FormalLMError, Problem

DEFAULT_MAX_SIZE = 32
"""Longest string a strategy draws when ``max_size`` is not given (see ``default_max_size``)."""


class InvalidStrategyArgument(FormalLMError, InvalidArgument):
    """Bad arguments to a ``formal_lm.testing`` strategy or assertion.

    Both a :class:`formal_lm.FormalLMError` and a :class:`hypothesis.errors.InvalidArgument`, so
    either ``except`` clause catches it. Raised when the strategy is first drawn from, as
    hypothesis's own strategies do.
    """


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def size_problems(min_size, max_size) -> list[Problem]:
    out = []
    if not (_is_int(min_size) and min_size >= 0):
        out.append(Problem(f"min_size={min_size!r} must be an integer >= 0"))
    if max_size is not None and not (_is_int(max_size) and max_size >= 0):
        out.append(Problem(f"max_size={max_size!r} must be None or an integer >= 0"))
    if not out and max_size is not None and min_size > max_size:
        out.append(Problem(f"min_size={min_size} > max_size={max_size}: no size fits",
                           "make min_size <= max_size"))
    return out


def check(problems: list[Problem]) -> None:
    """Raises every problem at once (house style: gather, then raise)."""
    if problems:
        raise InvalidStrategyArgument(problems)


def default_max_size(lang, min_size: int) -> int:
    """A cap for ``max_size=None``: the length below which all but 1e-6 of the mass lies, at most
    ``DEFAULT_MAX_SIZE`` (but never below ``min_size``, nor below the shortest string)."""
    stats = lang.length_stats(DEFAULT_MAX_SIZE)
    cum = 0.0
    cap = DEFAULT_MAX_SIZE
    for L, p in enumerate(stats.prob):
        cum += p
        if cum >= 1 - 1e-6:
            cap = L
            break
    cap = max(cap, min_size)
    if not any(p > 0 for p in stats.prob[min_size: cap + 1]):
        # the language has no strings up to the cap: look further, so sizes stay satisfiable
        longer = lang.length_stats(max(4 * DEFAULT_MAX_SIZE, min_size + DEFAULT_MAX_SIZE))
        nz = [L for L, p in enumerate(longer.prob) if p > 0 and L >= min_size]
        if nz:
            cap = nz[0]
    return cap


def rule_problems(lang, names, argname: str) -> list[Problem]:
    known = [r.name for r in lang.rules]
    out = []
    if isinstance(names, str):
        return [Problem(f"{argname}={names!r} must be a sequence of rule names",
                        f"write {argname}=({names!r},)")]
    for n in names:
        if n not in known:
            out.append(Problem(f"{argname} names rule={n!r}, which {lang.name!r} does not have",
                               f"use the language's rules: {known}" if known else
                               f"{lang.name!r} has no named rules"))
    return out


def lengths_with_strings(lang, min_size: int, max_size: int) -> list[int]:
    """Lengths in [min_size, max_size] that have positive probability."""
    prob = lang.length_distribution(max_size)
    return [L for L in range(min_size, max_size + 1) if prob[L] > 0 and not math.isnan(prob[L])]
