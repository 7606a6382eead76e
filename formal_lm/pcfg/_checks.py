"""The checks a grammar passes at construction: rule shapes, probabilities, symbols,
reachability, productivity and tightness. Every problem found is reported at once."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from formal_lm import limits
from formal_lm.errors import Location, Problem, raise_if
from formal_lm.pcfg._normal_form import Production, partition_functions
from formal_lm.vocab import RESERVED, check_symbols

TIGHT_TOLERANCE = 1e-10  # spectral radius at or above 1 - this is treated as not tight
SUM_TOLERANCE = 1e-9


@dataclasses.dataclass(frozen=True)
class Rules:
    """Well-formed productions, their locations, and their nonterminals and terminals."""

    prods: list[Production]
    locs: dict[int, Location | None]
    nts: tuple[str, ...]  # in order of first appearance as a left-hand side
    terminals: tuple[str, ...]
    by_lhs: dict[str, list[int]]  # nonterminal -> indices of its rules
    where: dict[str, Location | None]  # where a problem of a nonterminal points

    def show(self, k: int) -> str:
        lhs, rhs, _ = self.prods[k]
        return f"{lhs} -> {' '.join(rhs) if rhs else '(empty)'}"


def _well_formed(rules, locations, problems: list[Problem]):
    """The rules that are ``(lhs, rhs, prob)`` with string symbols, and their locations."""
    prods: list[Production] = []
    locs: dict[int, Location | None] = {}
    for i, r in enumerate(rules):
        loc = locations.get(i)
        try:
            lhs, rhs, p = r
            rhs = tuple(rhs)
            p = float(p)
        except (TypeError, ValueError):
            problems.append(Problem(f"rule {i}={r!r} is not (lhs, rhs, prob)",
                                    "write rules as ('S', ('a', 'S'), 0.5)", loc))
            continue
        if not isinstance(lhs, str) or not all(isinstance(x, str) for x in rhs):
            problems.append(Problem(f"rule {i}={r!r} has symbols that are not strings",
                                    "write rules as ('S', ('a', 'S'), 0.5)", loc))
            continue
        locs[len(prods)] = loc
        prods.append((lhs, rhs, p))
    return prods, locs


def _index(prods, locs, lhs_locations) -> Rules:
    nts = tuple(dict.fromkeys(lhs for lhs, _, _ in prods))
    ntset = set(nts)
    terminals = tuple(dict.fromkeys(x for _, rhs, _ in prods for x in rhs if x not in ntset))
    by_lhs: dict[str, list[int]] = {A: [] for A in nts}
    for k, (lhs, _, _) in enumerate(prods):
        by_lhs[lhs].append(k)
    where = {A: lhs_locations.get(A) or locs.get(by_lhs[A][0]) for A in nts}
    return Rules(prods, locs, nts, terminals, by_lhs, where)


def _probability_problems(g: Rules) -> list[Problem]:
    problems = []
    for k, (lhs, rhs, p) in enumerate(g.prods):
        if not (math.isfinite(p) and p > 0):
            problems.append(Problem(
                f"rule {g.show(k)} has prob={p!r}; probabilities must be positive and finite",
                "give it a probability in (0, 1], or delete the rule if it is never used",
                g.locs.get(k)))
    for A in g.nts:
        total = math.fsum(g.prods[k][2] for k in g.by_lhs[A] if math.isfinite(g.prods[k][2]))
        if abs(total - 1.0) > SUM_TOLERANCE:
            problems.append(Problem(
                f"the probabilities of {A}'s rules sum to sum={total!r}, not 1 (lhs={A})",
                f"rescale them so they sum to 1 (divide each by {total:.6g})", g.where[A]))
    return problems


def _symbol_problems(g: Rules, alphabet) -> tuple[list[Problem], tuple[str, ...]]:
    """Problems of the nonterminals' names, the terminals and the alphabet; and the alphabet
    (the terminals in order of first use when ``alphabet`` is None)."""
    problems = []
    for A in g.nts:
        if not A or any(ch.isspace() for ch in A) or A in RESERVED:
            problems.append(Problem(
                f"nonterminal={A!r} is a reserved name or holds spaces",
                f"rename it; {sorted(RESERVED)} are reserved", g.where[A]))
    first_use = {}
    for k, (_, rhs, _) in enumerate(g.prods):
        for x in rhs:
            first_use.setdefault(x, g.locs.get(k))
    if alphabet is None:  # the terminals are the alphabet: check each where it is first used
        for t in g.terminals:
            for pr in check_symbols([t]):
                problems.append(dataclasses.replace(pr, location=first_use.get(t)))
        alphabet = g.terminals
    else:  # check the alphabet once; terminals must be in it
        alphabet = tuple(alphabet)
        if alphabet:
            problems += check_symbols(alphabet)
        for t in g.terminals:
            if t not in alphabet:
                problems.append(Problem(f"terminal={t!r} is not in alphabet={alphabet}",
                                        "add it to the alphabet", first_use.get(t)))
    if not alphabet:
        problems.append(Problem(
            "the grammar has no terminals, so alphabet=() is empty (its only string is the "
            "empty one)", "add terminal rules, or pass alphabet=(...)",
            g.locs.get(0)))
    return problems, alphabet


def _reachable(g: Rules, start: str) -> set[str]:
    ntset = set(g.nts)
    reach = {start}
    todo = [start]
    while todo:
        A = todo.pop()
        for k in g.by_lhs[A]:
            for x in g.prods[k][1]:
                if x in ntset and x not in reach:
                    reach.add(x)
                    todo.append(x)
    return reach


def _productive(g: Rules) -> set[str]:
    ntset = set(g.nts)
    productive: set[str] = set()
    changed = True
    while changed:
        changed = False
        for lhs, rhs, p in g.prods:
            if lhs not in productive and all(x in productive or x not in ntset for x in rhs):
                productive.add(lhs)
                changed = True
    return productive


def _structure_problems(g: Rules, start: str, probs_ok: bool) -> list[Problem]:
    """Start, reachability, productivity and (when the probabilities are fine) tightness."""
    if start not in set(g.nts):
        return [Problem(f"start={start!r} is not the left-hand side of any rule",
                        f"use one of the nonterminals {list(g.nts)}, or add rules for {start!r}")]
    problems = []
    reach = _reachable(g, start)
    for A in g.nts:
        if A not in reach:
            problems.append(Problem(
                f"nonterminal={A} is unreachable from start={start}",
                f"use {A} on the right-hand side of a reachable rule, or delete its rules",
                g.where[A]))
    productive = _productive(g)
    if start not in productive:
        problems.append(Problem(
            f"the language is empty: start={start} derives no finite string",
            f"add a rule for {start} that finishes, e.g. {start} -> 'a' [p]", g.where[start]))
    for A in g.nts:
        if A not in productive and A != start:
            problems.append(Problem(
                f"nonterminal={A} is unproductive: it derives no finite string "
                "(each of its rules uses a nonterminal that never finishes)",
                f"add a rule for {A} that finishes, e.g. {A} -> 'a' [p]", g.where[A]))
    useful = reach & productive
    if probs_ok and start in useful:
        problems += _tightness_problems(g.prods, g.locs, g.by_lhs, useful)
    return problems


def _tightness_problems(prods, locs, by_lhs, useful) -> list[Problem]:
    order = [A for A in by_lhs if A in useful]
    idx = {A: i for i, A in enumerate(order)}
    M = np.zeros((len(order), len(order)))
    for lhs, rhs, p in prods:
        if lhs in idx:
            for x in rhs:
                if x in idx:
                    M[idx[lhs], idx[x]] += p
    vals, vecs = np.linalg.eig(M)
    j = int(np.argmax(np.abs(vals)))
    rho = float(np.abs(vals[j]))
    if rho < 1 - TIGHT_TOLERANCE:
        return []
    # point at the first recursive rule of the dominant component
    weight = np.abs(vecs[:, j])
    dom = {A for A in order if weight[idx[A]] > 1e-9 * weight.max()}
    loc = None
    rec = []
    for k, (lhs, rhs, _) in enumerate(prods):
        if lhs in dom and any(x in dom for x in rhs):
            rec.append(f"{lhs} -> {' '.join(rhs)}")
            loc = loc or locs.get(k)
    z = partition_functions([r for r in prods if r[0] in useful])
    start_z = min(z.values()) if z else 1.0
    return [Problem(
        f"the grammar is not tight: the spectral radius of its expected-count matrix is "
        f"spectral_radius={rho:.9g} >= 1, so derivations are not finite with probability 1 "
        f"(or have infinite expected length); smallest Z={start_z:.6g}",
        f"lower the probabilities of the recursive rules ({'; '.join(rec[:4])}) and raise "
        "those of the rules that finish", loc)]


def _size_problems(prods, locs) -> list[Problem]:
    """Limits on the grammar's size, checked before any work that grows with it."""
    def limit(what, value, top, name, loc=None):
        return [Problem(f"{what} {value}, more than the limit of {top}",
                        f"make the grammar smaller, or raise formal_lm.limits.{name}", loc)]

    out = []
    long = [k for k, (_, rhs, _) in enumerate(prods) if len(rhs) > limits.MAX_RULE_LENGTH]
    for k in long[:5]:
        out += limit("a right-hand side of", f"{len(prods[k][1])} symbols", limits.MAX_RULE_LENGTH,
                     "MAX_RULE_LENGTH", locs.get(k))
    if len(prods) > limits.MAX_PRODUCTIONS:
        out += limit("the grammar has", f"{len(prods)} productions", limits.MAX_PRODUCTIONS,
                     "MAX_PRODUCTIONS")
    nts = {lhs for lhs, _, _ in prods}
    terminals = {x for _, rhs, _ in prods for x in rhs if x not in nts}
    if len(terminals) > limits.MAX_TERMINALS:
        out += limit("the grammar has", f"{len(terminals)} terminals", limits.MAX_TERMINALS,
                     "MAX_TERMINALS")
    inner = {x for _, rhs, _ in prods if len(rhs) >= 2 for x in rhs if x not in nts}
    size = len(nts) + len(inner) + sum(len(rhs) - 2 for _, rhs, _ in prods if len(rhs) > 2)
    if size > limits.MAX_BINARY_NONTERMINALS and not out:
        out += limit("the internal binary grammar would have", f"{size} nonterminals",
                     limits.MAX_BINARY_NONTERMINALS, "MAX_BINARY_NONTERMINALS")
    return out


def checked_rules(rules, start, alphabet, locations, lhs_locations,
                  problems) -> tuple[Rules, tuple[str, ...]]:
    """The rules and the alphabet of a valid grammar.

    Raises:
        GrammarError: with ``problems`` and every problem the checks find.
    """
    problems = list(problems)
    prods, locs = _well_formed(rules, locations, problems)
    if size := _size_problems(prods, locs):  # before any work that grows with the size
        raise_if(problems + size)
    g = _index(prods, locs, lhs_locations)
    prob_problems = _probability_problems(g)
    symbol_problems, alphabet = _symbol_problems(g, alphabet)
    problems += prob_problems + symbol_problems
    problems += _structure_problems(g, start, probs_ok=not prob_problems)
    raise_if(problems)
    return g, alphabet
