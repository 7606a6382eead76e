"""Grammar transformations that return a new, exactly equivalent or conditioned ``PCFG``.

- ``to_cnf(g)``: Chomsky normal form with the same string distribution. It is the internal binary
  grammar of ``_normal_form`` (binarisation, then weighted epsilon and unary removal) made a proper
  PCFG: the binary grammar's weights are unnormalised masses, so each nonterminal X is
  renormalised by z_X = P(X derives a non-empty string) (weight pushing: p(X -> B C) =
  w z_B z_C / z_X, p(X -> a) = w / z_X), and the start gets S -> epsilon with the original
  P(epsilon).
- ``intersect(g, dfa)``: the Bar-Hillel product grammar (Bar-Hillel, Perles & Shamir 1961), whose
  nonterminals ``A_q_r`` derive the strings of A that take the DFA from state q to state r,
  renormalised so that p'(s) = p(s) 1[dfa accepts s] / Z, Z = P_g(dfa accepts). The product
  productions carry the original probabilities as weights; their partition functions Z_X come
  from Newton's method (``newton_lfp``, as for every PCFG here), and each rule becomes
  p Z_children / Z_lhs. ``acceptance_probability(g, dfa)`` is Z.
"""
from __future__ import annotations

import math
import re

import numpy as np

from formal_lm.automata import DFA, minimize
from formal_lm.errors import FormalLMError, Problem
from formal_lm.pcfg._grammar import PCFG
from formal_lm.pcfg._normal_form import (_binarise, _remove_empty_and_unary, _useful_order,
                                         newton_lfp)

MAX_PRODUCT_RULES = 200_000


def _unique(base: str, taken: set) -> str:
    name = base
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _cnf_names(g: PCFG, order, Bn: np.ndarray, Lx: np.ndarray) -> dict[int, str]:
    """Names of the binary grammar's nonterminals: the grammar's own for its own, ``T_a`` for the
    preterminal of terminal a, ``C<i>`` for the links of a binarised long rule."""
    nts = g.nonterminals
    taken = set(nts) | set(g.alphabet)
    names = {}
    for X in order:
        if X < len(nts):
            names[X] = nts[X]
        elif not Bn[X].any() and np.count_nonzero(Lx[X]) == 1:
            a = g.alphabet[int(np.flatnonzero(Lx[X])[0])]
            names[X] = _unique(f"T_{a}" if re.fullmatch(r"\w+", a) else f"T{X}", taken)
        else:
            names[X] = _unique(f"C{X}", taken)
    return names


def to_cnf(g: PCFG, *, name: str | None = None) -> PCFG:
    """An equivalent PCFG in Chomsky normal form: the same probability for every string.

    Every rule is ``A -> B C`` or ``A -> 'a'``, plus ``start -> (empty)`` when the empty string
    has positive probability (the start then appears on no right-hand side: a fresh start
    ``<start>_`` is made when needed). Nonterminals keep their names; each now derives its
    original non-empty strings with their probabilities conditioned on being non-empty. New ones
    are ``T_a`` (emits a) and ``C<i>`` (links of a binarised long rule). Unused ones are dropped.

    Example:
        >>> g = PCFG.from_nltk("S -> 'a' S 'b' [0.4] | A [0.6]\\nA -> 'c' [0.5] | [0.5]")
        >>> cnf = to_cnf(g)
        >>> all(len(rhs) == 2 or (len(rhs) == 1 and rhs[0] in cnf.alphabet)
        ...     for lhs, rhs, _ in cnf.productions if rhs)
        True
        >>> [round(x.prob(s), 6) for x in (g, cnf) for s in ("", "acb")]
        [0.3, 0.12, 0.3, 0.12]
    """
    nt = {A: i for i, A in enumerate(g.nonterminals)}
    term = {a: i for i, a in enumerate(g.alphabet)}
    eps, lex, un, bi, N0 = _binarise(g.productions, nt, term)
    e, Bn, Lx = _remove_empty_and_unary(eps, lex, un, bi, N0, len(g.alphabet))
    # z_X: the mass of X's non-empty strings, the least fixed point of the binary grammar
    mons = [(int(X), (int(B), int(C)), float(Bn[X, B, C])) for X, B, C in zip(*np.nonzero(Bn))]
    mons += [(X, (), float(Lx[X].sum())) for X in range(N0) if Lx[X].sum() > 0]
    z = newton_lfp(N0, mons)
    S = nt[g.start]
    order = _useful_order(Bn, z > 0, S)
    names = _cnf_names(g, order, Bn, Lx)
    rules = []
    for X in order:
        out = [((names[int(B)], names[int(C)]), Bn[X, B, C] * z[B] * z[C])
               for B, C in zip(*np.nonzero(Bn[X])) if z[B] > 0 and z[C] > 0]
        out += [((g.alphabet[a],), Lx[X, a]) for a in np.flatnonzero(Lx[X])]
        total = math.fsum(w for _, w in out)
        rules += [(names[X], rhs, float(w / total)) for rhs, w in out]
    start = g.start
    p_eps = float(min(max(e[S], 0.0), 1.0))
    if p_eps > 0:
        on_rhs = any(start in rhs for _, rhs, _ in rules)
        if on_rhs:
            start = _unique(f"{g.start}_", set(names.values()) | set(g.alphabet))
            rules += [(start, rhs, p) for lhs, rhs, p in rules if lhs == g.start]
        rules = [(lhs, rhs, p * (1 - p_eps) if lhs == start else p) for lhs, rhs, p in rules]
        rules = [r for r in rules if r[2] > 0] + [(start, (), p_eps)]
    return PCFG(rules, start=start, name=name or f"{g.name}-cnf", alphabet=g.alphabet,
                description=f"Chomsky normal form of {g.name!r}")


# ----- Bar-Hillel intersection ------------------------------------------------------------------
def _state_paths(rhs, q: int, r: int, delta: dict, reach: list[set], nts) -> list[tuple]:
    """The children of every product rule ``(A, q, r) -> rhs``: for each way the DFA can run
    from q to r over ``rhs``, terminals as themselves and nonterminals as ``(B, q', r')``."""
    paths = [((), q)]
    for x in rhs:
        nxt = []
        for kids, cur in paths:
            if x in nts:
                nxt += [(kids + ((x, cur, m),), m) for m in reach[cur] if r in reach[m]]
            elif (cur, x) in delta and r in reach[delta[(cur, x)]]:
                nxt.append((kids + (x,), delta[(cur, x)]))
        paths = nxt
    return [kids for kids, cur in paths if cur == r]


def _product_rules(g: PCFG, d: DFA) -> tuple[list, list]:
    """The weighted product rules reachable from ``(start, q0, f)`` for accepting f, and those
    roots: rules are ``((A, q, r), children, p)``."""
    idx = {q: i for i, q in enumerate(d.states)}
    delta = {(idx[q], a): idx[r] for (q, a), r in d.transitions.items()}
    reach = []
    for i in range(len(d.states)):
        seen, todo = {i}, [i]
        while todo:
            cur = todo.pop()
            for a in d.alphabet:
                nxt = delta.get((cur, a))
                if nxt is not None and nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach.append(seen)
    by_lhs: dict = {}
    for lhs, rhs, p in g.productions:
        by_lhs.setdefault(lhs, []).append((rhs, p))
    q0 = idx[d.start]
    roots = [(g.start, q0, idx[f]) for f in d.accepting if idx[f] in reach[q0]]
    seen, todo, rules = set(roots), list(roots), []
    nts = set(g.nonterminals)
    while todo:
        key = todo.pop()
        A, q, r = key
        for rhs, p in by_lhs[A]:
            for kids in _state_paths(rhs, q, r, delta, reach, nts):
                rules.append((key, kids, p))
                for c in kids:
                    if isinstance(c, tuple) and c not in seen:
                        seen.add(c)
                        todo.append(c)
        if len(rules) > MAX_PRODUCT_RULES:
            raise FormalLMError(Problem(
                f"the product grammar has more than {MAX_PRODUCT_RULES} rules (a rule with k "
                f"nonterminals has up to n^(k+1) state sequences; the DFA has n="
                f"{len(d.states)} states after minimisation)",
                "intersect to_cnf(g) instead (at most two nonterminals per rule)"))
    return rules, roots


def pushed_rules(rules, z: dict, roots) -> tuple[dict, list]:
    """Weight pushing of ``rules`` [(key, children, p)] (nonterminal children are tuples):
    ({key: [(children, p prod Z(children))]}, the keys reachable from ``roots``, roots first).
    Each key's weights, divided by their sum Z(key), are a proper PCFG's probabilities."""
    grouped: dict = {}
    for key, kids, p in rules:
        w = p * math.prod(z[c] for c in kids if isinstance(c, tuple))
        if w > 0 and z[key] > 0:
            grouped.setdefault(key, []).append((kids, w))
    keep, todo = list(roots), list(roots)
    while todo:
        for kids, _ in grouped[todo.pop()]:
            for c in kids:
                if isinstance(c, tuple) and c not in keep:
                    keep.append(c)
                    todo.append(c)
    return grouped, keep


def product_masses(rules) -> dict:
    """Z_X = the weight of X's finite derivations, for every product nonterminal."""
    keys = list(dict.fromkeys([k for k, _, _ in rules]
                              + [c for _, kids, _ in rules for c in kids if isinstance(c, tuple)]))
    index = {k: i for i, k in enumerate(keys)}
    mons = [(index[k], tuple(index[c] for c in kids if isinstance(c, tuple)), p)
            for k, kids, p in rules]
    z = newton_lfp(len(keys), mons)
    return {k: float(z[i]) for k, i in index.items()}


def acceptance_probability(g: PCFG, dfa: DFA) -> float:
    """P_g(dfa accepts s): the mass that ``intersect`` divides by (Newton's method on the
    Bar-Hillel product grammar).

    Example:
        >>> from formal_lm.automata import DFA
        >>> g = PCFG.from_nltk("S -> 'a' S [0.5] | 'b' [0.5]")
        >>> even = DFA.from_transitions({(0, "a"): 1, (1, "a"): 0, (0, "b"): 2}, 0, {2})
        >>> round(acceptance_probability(g, even), 6)  # sum_n 0.25 ** n * 0.5
        0.666667
    """
    rules, roots = _product_rules(g, minimize(dfa))
    z = product_masses(rules) if rules else {}
    return math.fsum(z.get(r, 0.0) for r in roots)


def intersect(g: PCFG, dfa: DFA, *, name: str | None = None) -> PCFG:
    """``g`` conditioned on ``dfa`` accepting: p'(s) = p(s) 1[s in L(dfa)] / Z, Z = P_g(L(dfa)).

    The Bar-Hillel product of ``g`` with the minimised DFA, renormalised through the product's
    partition functions (see the module docstring); nonterminal ``A_q_r`` derives A's strings
    that take the DFA from state q to r (states numbered as in ``minimize(dfa)``), and a fresh
    start ``<start>`` picks the accepting state when there are several. The alphabet stays
    ``g``'s. A rule with k nonterminals
    gives up to n^(k+1) product rules for an n-state DFA: ``intersect(to_cnf(g), dfa)`` bounds
    that by n^3 per rule.

    Raises:
        FormalLMError: Z = 0 (``g`` gives the DFA's language probability 0), or more than
            ``MAX_PRODUCT_RULES`` product rules.

    Example:
        >>> from formal_lm.automata import DFA
        >>> g = PCFG.from_nltk("S -> 'a' S [0.5] | 'b' [0.5]")
        >>> even = DFA.from_transitions({(0, "a"): 1, (1, "a"): 0, (0, "b"): 2}, 0, {2})
        >>> h = intersect(g, even)
        >>> round(h.prob("aab"), 6), h.prob("ab")  # 0.125 / (2 / 3)
        (0.1875, 0.0)
    """
    rules, roots = _product_rules(g, minimize(dfa))
    z = product_masses(rules) if rules else {}
    Z = math.fsum(z.get(r, 0.0) for r in roots)
    if not Z > 0:
        raise FormalLMError(Problem(
            f"{g.name!r} gives the DFA's language probability Z={Z!r}: there is nothing to "
            "condition on", "check that some string of the grammar is accepted by the DFA"))
    taken = set(g.alphabet)
    names: dict = {}

    def nm(key):
        if key not in names:
            names[key] = _unique(f"{key[0]}_{key[1]}_{key[2]}", taken)
        return names[key]

    live = [r for r in roots if z.get(r, 0.0) > 0]
    if len(live) == 1:
        start, out = nm(live[0]), []
    else:
        start = _unique(g.start, taken)
        out = [(start, (nm(r),), z[r] / Z) for r in live]
    grouped, keep = pushed_rules(rules, z, live)  # what the start reaches
    for key in sorted(keep, key=lambda k: (k not in live, k[1], k[0], k[2])):
        total = math.fsum(w for _, w in grouped[key])
        out += [(nm(key), tuple(nm(c) if isinstance(c, tuple) else c for c in kids), w / total)
                for kids, w in grouped[key]]
    return PCFG(out, start=start, name=name or f"{g.name}&dfa", alphabet=g.alphabet,
                description=f"{g.name!r} conditioned on a DFA (Z={Z:.6g})")
