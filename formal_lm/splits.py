"""Compositional splits of a grammar: a training language that never uses a chosen production
(optionally only under a chosen parent), and the held-out language of what uses it.

Both sides are ``PCFG`` s, so every quantity of either (p(s), prefix and next-token
probabilities, samples, length tables, restrictions) is exact. With r the excluded production
and D the derivations of the grammar g,

    p_train(d) = p(d) 1[r not in d] / (1 - M),   p_held(d) = p(d) 1[r in d] / M,
    M = P_g(a derivation uses r),

and a string's probability is the sum over its derivations: p_train(s) = P_g(s, no derivation
step is r) / (1 - M). For an unambiguous grammar this is plain filtering of strings
(p_train(s) = p(s) / (1 - M) for the strings whose derivation avoids r); for an ambiguous one it
is the grammar conditioned on its derivations, and always (1 - M) p_train + M p_held = p.

Construction. "r under parent P" first copies r's left-hand side B into ``B@P`` for the
occurrences of B as a child of P (the copy has B's rules, so the distribution is unchanged);
r is then ``B@P -> rhs``. Each nonterminal X is split into X- (derivations from X that avoid r),
X+ (that use r at least once) and X (any): X- keeps X's rules but r, children X-; X+ has r with
children "any", and, for every other rule and each nonterminal child j, the children before j
"avoid", child j "uses", the children after j "any" (each derivation is counted once: j is its
first child that uses r). The weights are g's probabilities; the partition functions Z (Newton's
method, as for every PCFG here) give M = Z(S+), and every rule becomes p prod Z(children) / Z(lhs)
(weight pushing, as in ``pcfg.intersect``).

Counter templates (excluded combinations of counts) are in ``formal_lm.count_splits``.
"""
from __future__ import annotations

import dataclasses
import math

from formal_lm.errors import FormalLMError, Problem
from formal_lm.language import Language
from formal_lm.pcfg import PCFG
from formal_lm.pcfg._transforms import _unique, product_masses, pushed_rules


@dataclasses.dataclass(frozen=True)
class Split:
    """A language cut into a training language and the held-out language of what it excludes.

    Attributes:
        full: the language that was split.
        train: ``full`` conditioned on never producing the excluded part.
        held_out: ``full`` conditioned on producing it.
        held_out_mass: M = P_full(the excluded part); (1 - M) p_train + M p_held = p_full.
        excluded: what was excluded, in words.
    """

    full: Language
    train: Language
    held_out: Language
    held_out_mass: float
    excluded: str


def _find_rule(g: PCFG, lhs: str, rhs, parent: str | None) -> tuple[str, tuple]:
    """``(lhs, rhs)`` checked against ``g``; every problem at once."""
    problems = []
    rhs = (rhs,) if isinstance(rhs, str) else tuple(rhs)
    if lhs not in g.nonterminals:
        problems.append(Problem(f"lhs={lhs!r} is not a nonterminal of {g.name!r}",
                                f"use one of {list(g.nonterminals)}"))
    elif not any(A == lhs and tuple(r) == rhs for A, r, _ in g.productions):
        alts = [" ".join(r) or "(empty)" for A, r, _ in g.productions if A == lhs]
        problems.append(Problem(f"{g.name!r} has no production {lhs} -> {' '.join(rhs)!r}",
                                f"pick one of {lhs}'s: {alts}"))
    if parent is not None and lhs in g.nonterminals and not any(
            A == parent and lhs in r for A, r, _ in g.productions):
        problems.append(Problem(f"parent={parent!r} never has {lhs!r} as a child in "
                                f"{g.name!r}", "pass a nonterminal with a rule that "
                                f"mentions {lhs!r}, or parent=None"))
    if problems:
        raise FormalLMError(problems)
    return lhs, rhs


def _relabel(prods, lhs: str, rhs: tuple, parent: str, taken: set):
    """The productions with ``lhs`` copied to ``lhs@parent`` where ``parent`` is its parent;
    the target production renamed accordingly."""
    copy = _unique(f"{lhs}@{parent}", taken)

    def under(rhs_, owner_is_parent):
        return tuple(copy if x == lhs and owner_is_parent else x for x in rhs_)

    out = [(A, under(r, A == parent), p) for A, r, p in prods]
    out += [(copy, under(r, lhs == parent), p) for A, r, p in prods if A == lhs]
    return out, (copy, under(rhs, lhs == parent))


def _annotated(prods, target, nts) -> list:
    """The weighted rules over ("-", X), ("+", X), ("*", X): avoid, use, any (module docstring)."""
    out = []
    for A, rhs, p in prods:
        is_target = (A, tuple(rhs)) == target
        out.append((("*", A), tuple(("*", x) if x in nts else x for x in rhs), p))
        if is_target:
            out.append((("+", A), tuple(("*", x) if x in nts else x for x in rhs), p))
            continue
        out.append((("-", A), tuple(("-", x) if x in nts else x for x in rhs), p))
        for j, x in enumerate(rhs):
            if x in nts:
                kids = tuple(("-", y) if (y in nts and k < j) else ("+", y) if k == j else
                             ("*", y) if y in nts else y for k, y in enumerate(rhs))
                out.append((("+", A), kids, p))
    return out


def _pushed(rules, root, z: dict, names: dict, g: PCFG, name: str, description: str) -> PCFG:
    """The PCFG of ``rules`` reachable from ``root``, each rule p prod Z(children) / Z(lhs)."""
    grouped, keep = pushed_rules(rules, z, [root])
    out = []
    for key in [root] + sorted(set(keep) - {root}, key=lambda k: names[k]):
        total = math.fsum(w for _, w in grouped[key])
        out += [(names[key], tuple(names[c] if isinstance(c, tuple) else c for c in kids),
                 w / total) for kids, w in grouped[key]]
    return PCFG(out, start=names[root], name=name, alphabet=g.alphabet, description=description)


def exclude_production(g: PCFG, lhs: str, rhs, *, parent: str | None = None,
                       name: str | None = None) -> Split:
    """``g`` split on the production ``lhs -> rhs`` (only where ``lhs`` is a child of
    ``parent``, when given): the training PCFG never uses it, the held-out PCFG uses it at
    least once (see the module docstring for the exact construction).

    Args:
        g: the grammar.
        lhs, rhs: the production (``rhs`` a tuple of symbols, ``()`` for epsilon).
        parent: a nonterminal: exclude the production only under it (a (parent, production)
            pair, e.g. an adjective in object position but not in subject position).
        name: the base name of the two languages (default ``g.name``).

    Raises:
        FormalLMError: an unknown production or parent, a production no derivation uses
            (nothing to hold out) or one every derivation uses (nothing to train on).

    Example:
        >>> g = PCFG.from_nltk("S -> 'a' S [0.5] | 'b' [0.25] | 'c' [0.25]")
        >>> sp = exclude_production(g, "S", ("c",))
        >>> round(sp.held_out_mass, 6), round(sp.train.prob("ab"), 6), sp.train.prob("ac")
        (0.5, 0.25, 0.0)
        >>> round(sp.held_out.prob("ac"), 6)
        0.25
    """
    if not isinstance(g, PCFG):
        raise FormalLMError(Problem(f"{getattr(g, 'name', g)!r} is a {type(g).__name__}, not "
                                    "a PCFG", "split a counter template with "
                                    "formal_lm.count_splits.exclude_counts"))
    lhs, rhs = _find_rule(g, lhs, rhs, parent)
    taken = set(g.nonterminals) | set(g.alphabet)
    prods, target = list(g.productions), (lhs, rhs)
    if parent is not None:
        prods, target = _relabel(prods, lhs, rhs, parent, taken)
    nts = {A for A, _, _ in prods}
    rules = _annotated(prods, target, nts)
    z = product_masses(rules)
    S = g.start
    M, free = z.get(("+", S), 0.0), z.get(("-", S), 0.0)
    where = f"{lhs} -> {' '.join(rhs) or '(empty)'}" + (f" under {parent}" if parent else "")
    if not M > 0 or not free > 0:
        raise FormalLMError(Problem(
            f"in {g.name!r} the production {where} is used by a share M={M:.6g} of the "
            f"derivations: {'nothing would be held out' if not M > 0 else 'nothing is left to train on'}",
            "pick a production that some but not all derivations use"))
    names = {}
    for sign, X in sorted({k for k in z}, key=lambda k: (k[1], k[0])):
        base = X if sign == "*" else f"{X}{sign}"
        names[(sign, X)] = _unique(base, set(names.values()) | set(g.alphabet))
    train_names = {("-", X): X for (sign, X) in names if sign == "-"}
    base = name or g.name
    train = _pushed(rules, ("-", S), z, train_names, g, f"{base}-train",
                    f"{g.name!r} never using {where}")
    held = _pushed(rules, ("+", S), z, names, g, f"{base}-held-out",
                   f"{g.name!r} using {where} at least once")
    if g.entropy_is_exact:
        # the split's derivations are g's (a bijection that keeps the yield), so an unambiguous
        # g gives unambiguous splits: their derivation entropy is the string entropy
        for lang in (train, held):
            lang.entropy_is_exact, lang.ambiguity_witness = True, None
    return Split(g, train, held, M, where)


def twin_split(g: PCFG, symbol: str, twin: str, *, parent: str, name: str | None = None) -> Split:
    """A grammar in which ``twin`` is a synonym of ``symbol``, split so that training sees the
    twin only outside ``parent``: every ``symbol`` of ``g`` becomes a fresh nonterminal
    ``T_<symbol>`` that derives ``symbol`` or ``twin`` with probability 1/2 each (so
    substituting one occurrence for the other never changes a string's probability), and
    ``T_<symbol> -> twin`` is excluded under ``parent`` (:func:`exclude_production`). The
    split's ``full`` is that twin grammar; its alphabet is ``g``'s plus ``twin``.

    Raises:
        FormalLMError: ``symbol`` not a terminal of ``g``, ``twin`` already a symbol, or no
            rule of ``parent`` that produces ``symbol``.

    Example:
        >>> g2 = PCFG.from_nltk("S -> A [0.5] | B [0.5]\\nA -> 'a' 'x' [1.0]\\nB -> 'b' 'x' [1.0]")
        >>> sp = twin_split(g2, "x", "y", parent="B")
        >>> sp.full.prob("ay"), sp.train.prob("by"), sp.held_out.prob("by")
        (0.25, 0.0, 1.0)
    """
    if not isinstance(g, PCFG):
        raise FormalLMError(Problem(f"{getattr(g, 'name', g)!r} is a {type(g).__name__}, not "
                                    "a PCFG", "pass a formal_lm.pcfg.PCFG"))
    problems = []
    if symbol not in g.alphabet:
        problems.append(Problem(f"symbol={symbol!r} is not a terminal of {g.name!r}",
                                f"pick one of {g.alphabet}"))
    if twin in g.alphabet or twin in g.nonterminals:
        problems.append(Problem(f"twin={twin!r} is already a symbol of {g.name!r}",
                                "pick a fresh name"))
    if not any(A == parent and symbol in rhs for A, rhs, _ in g.productions):
        problems.append(Problem(f"parent={parent!r} has no rule that produces {symbol!r}",
                                "pick a nonterminal with a rule that mentions the symbol"))
    if problems:
        raise FormalLMError(problems)
    T = _unique(f"T_{symbol}", set(g.nonterminals) | set(g.alphabet) | {twin})
    rules = [(A, tuple(T if x == symbol else x for x in rhs), p) for A, rhs, p in g.productions]
    rules += [(T, (symbol,), 0.5), (T, (twin,), 0.5)]
    full = PCFG(rules, start=g.start, name=f"{g.name}+{twin}", alphabet=g.alphabet + (twin,),
                description=f"{g.name!r} with {twin!r} a synonym of {symbol!r}")
    if g.entropy_is_exact:  # each twin choice is visible in the string: still unambiguous
        full.entropy_is_exact, full.ambiguity_witness = True, None
    return exclude_production(full, T, (twin,), parent=parent, name=name)
