"""Automata operations: DFAs (trim, minimise, complement, intersect) and PFSA products.

``DFA`` is a small frozen value (states, alphabet, partial transitions, start, accepting); it turns
into a distribution with ``DFA.to_pfsa`` (``dfa_to_pfsa``: halt with ``stop_prob`` where
accepting, spread the rest uniformly over symbols that can still reach acceptance).

PFSA products are exact distributions, not only supports: ``intersect_pfsas(m1, m2)`` is
p(s) = p1(s) p2(s) / Z with Z = sum_s p1(s) p2(s), the probability that two independent draws, one
from each, are the same string (so the result is the distribution of that common string given
that they agree); ``condition_pfsa(m, dfa)`` is p(s) 1[dfa accepts s] / Z with Z = P_m(dfa
accepts). Z is the product automaton's partition function, init (I - M)^-1 halt, solved exactly
(one linear solve), and the product is weight-pushed into a locally normalised PFSA
(Mohri 2009, "Weighted automata algorithms"): arc q -a-> r gets w(q, a, r) beta(r) / beta(q) with
beta = (I - M)^-1 halt. ``product_mass`` returns Z.
"""
from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from types import MappingProxyType

import numpy as np

from formal_lm.errors import FormalLMError, Problem
from formal_lm.pfsa import PFSA, dfa_to_pfsa
from formal_lm.vocab import check_symbols


@dataclasses.dataclass(frozen=True)
class DFA:
    """A deterministic finite automaton; missing transitions go to an implicit dead state.

    Args:
        states: every state (any hashable values but None, which stands for the dead state).
        alphabet: the symbols.
        transitions: ``{(state, symbol): state}`` (stored read-only).
        start: the start state.
        accepting: the accepting states.

    Raises:
        FormalLMError: states or symbols that are not declared, or a bad alphabet.

    Example:
        >>> d = DFA.from_transitions({(0, "a"): 1, (1, "b"): 0}, start=0, accepting={0})
        >>> d.accepts("abab"), d.accepts("aba")
        (True, False)
        >>> round(d.to_pfsa("ab*", stop_prob=0.5).prob("ab"), 6)
        0.25
    """

    states: tuple
    alphabet: tuple[str, ...]
    transitions: Mapping
    start: Hashable
    accepting: frozenset

    def __post_init__(self):
        states = tuple(dict.fromkeys(self.states))
        alphabet = tuple(self.alphabet)
        transitions = dict(self.transitions)
        accepting = frozenset(self.accepting)
        known = set(states)
        problems = check_symbols(alphabet)
        if None in known:
            problems.append(Problem("None is a state; it stands for the dead state here",
                                    "name the states with other values"))
        if self.start not in known:
            problems.append(Problem(f"start={self.start!r} is not a state",
                                    "list the start among the states"))
        problems += [Problem(f"accepting state {q!r} is not a state", "list it among the states")
                     for q in accepting - known]
        for (q, a), r in transitions.items():
            if q not in known or r not in known or a not in alphabet:
                problems.append(Problem(
                    f"transition ({q!r}, {a!r}) -> {r!r} uses an undeclared state or symbol",
                    "declare every state and symbol a transition uses"))
        if problems:
            raise FormalLMError(problems)
        object.__setattr__(self, "states", states)
        object.__setattr__(self, "alphabet", alphabet)
        object.__setattr__(self, "transitions", MappingProxyType(transitions))
        object.__setattr__(self, "accepting", accepting)

    def __hash__(self) -> int:
        return hash((self.states, self.alphabet, frozenset(self.transitions.items()),
                     self.start, self.accepting))

    def __reduce__(self):  # pickle and copy through the constructor (a mappingproxy cannot)
        return (type(self), (self.states, self.alphabet, dict(self.transitions), self.start,
                             self.accepting))

    @classmethod
    def from_transitions(cls, transitions: Mapping, start, accepting: Iterable, *,
                         alphabet: Iterable[str] | None = None) -> DFA:
        """A DFA from what ``dfa_to_pfsa`` takes: the states are those mentioned, the alphabet
        defaults to the symbols of the transitions in order of first use."""
        states = dict.fromkeys([start, *[q for q, _ in transitions], *transitions.values(),
                                *accepting])
        if alphabet is None:
            alphabet = dict.fromkeys(a for _, a in transitions)
        return cls(tuple(states), tuple(alphabet), transitions, start, frozenset(accepting))

    @classmethod
    def from_pfsa(cls, m: PFSA) -> DFA:
        """The support of a deterministic PFSA: arcs with positive probability, halting states
        accepting.

        Raises:
            FormalLMError: ``m`` is not deterministic.

        Example:
            >>> from formal_lm.pfsa import random_pdfa
            >>> d = DFA.from_pfsa(random_pdfa(3, "ab", seed=0))
            >>> len(d.states), d.accepts("")
            (3, True)
        """
        if not m.deterministic:
            raise FormalLMError(Problem(f"{m.name!r} is not deterministic",
                                        "only a PDFA's support is a DFA"))
        a_idx, q_idx, r_idx = np.nonzero(m.T)
        trans = {(m.states[q], m.alphabet[a]): m.states[r] for a, q, r in zip(a_idx, q_idx, r_idx)}
        accepting = {m.states[q] for q in np.flatnonzero(m.rho)}
        return cls(m.states, m.alphabet, trans, m.states[int(np.argmax(m.init))],
                   frozenset(accepting))

    def run(self, s):
        """The state after reading ``s`` from the start, or None (the dead state)."""
        q = self.start
        for a in tuple(s):
            q = self.transitions.get((q, a))
            if q is None:
                return None
        return q

    def accepts(self, s) -> bool:
        """Membership (a ``str`` is read one character per symbol; unknown symbols reject)."""
        return self.run(s) in self.accepting

    def to_pfsa(self, name: str = "dfa", *, stop_prob: float = 0.2, **kwargs) -> PFSA:
        """The distribution of ``dfa_to_pfsa`` on this DFA (same keyword arguments).

        Raises:
            FormalLMError: the DFA accepts nothing, or ``stop_prob`` is not in (0, 1).
        """
        return dfa_to_pfsa(name, dict(self.transitions), self.start, set(self.accepting),
                           alphabet=self.alphabet, stop_prob=stop_prob, **kwargs)


def _fresh(taken: Iterable, base: str = "sink") -> str:
    taken = set(taken)
    name = base
    while name in taken:
        name += "'"
    return name


def _reachable(d: DFA) -> set:
    seen, todo = {d.start}, [d.start]
    succ: dict = {}
    for (q, _), r in d.transitions.items():
        succ.setdefault(q, []).append(r)
    while todo:
        for r in succ.get(todo.pop(), ()):
            if r not in seen:
                seen.add(r)
                todo.append(r)
    return seen


def trim(d: DFA) -> DFA:
    """The same language with only useful states: reachable from the start and able to reach an
    accepting state (the start is always kept).

    Example:
        >>> d = DFA.from_transitions({(0, "a"): 1, (0, "b"): 2, (2, "a"): 2}, 0, {1})
        >>> trim(d).states
        (0, 1)
    """
    reach = _reachable(d)
    pred: dict = {}
    for (q, _), r in d.transitions.items():
        pred.setdefault(r, []).append(q)
    live, todo = set(d.accepting), list(d.accepting)
    while todo:
        for q in pred.get(todo.pop(), ()):
            if q not in live:
                live.add(q)
                todo.append(q)
    keep = (reach & live) | {d.start}
    trans = {(q, a): r for (q, a), r in d.transitions.items() if q in keep and r in keep}
    return DFA(tuple(q for q in d.states if q in keep), d.alphabet, trans, d.start,
               d.accepting & keep)


def complete(d: DFA, alphabet: Iterable[str] | None = None) -> DFA:
    """A total DFA over ``alphabet`` (default ``d.alphabet``): missing transitions go to a new
    non-accepting sink (named ``"sink"``, primed until fresh); transitions on symbols outside
    ``alphabet`` are dropped.

    Example:
        >>> c = complete(DFA.from_transitions({(0, "a"): 0}, 0, {0}, alphabet=("a", "b")))
        >>> c.states, c.transitions[(0, "b")], c.accepts("ab")
        ((0, 'sink'), 'sink', False)
    """
    alphabet = tuple(d.alphabet if alphabet is None else alphabet)
    trans = {(q, a): r for (q, a), r in d.transitions.items() if a in alphabet}
    sink = _fresh(d.states)
    states = list(d.states)
    for q in d.states:
        for a in alphabet:
            if (q, a) not in trans:
                trans[(q, a)] = sink
    if sink in trans.values():
        states.append(sink)
        trans.update({(sink, a): sink for a in alphabet})
    return DFA(tuple(states), alphabet, trans, d.start, d.accepting)


def complement(d: DFA, alphabet: Iterable[str] | None = None) -> DFA:
    """The trimmed DFA of the strings over ``alphabet`` (default ``d.alphabet``) that ``d``
    rejects. ``complement(d).to_pfsa(name, stop_prob=p)`` makes it a distribution (halt with p at
    accepting states, the rest uniform over live continuations).

    Example:
        >>> d = DFA.from_transitions({(0, "a"): 1}, 0, {1}, alphabet=("a", "b"))
        >>> c = complement(d)
        >>> [c.accepts(s) for s in ["", "a", "b", "aa", "ab"]]
        [True, False, True, True, True]
    """
    full = complete(d, alphabet)
    return trim(DFA(full.states, full.alphabet, full.transitions, full.start,
                    frozenset(full.states) - full.accepting))


def intersect_dfas(d1: DFA, d2: DFA) -> DFA:
    """The product DFA of ``L(d1) & L(d2)`` over the union of the alphabets, trimmed; its states
    are pairs ``(q1, q2)``.

    Example:
        >>> even_a = DFA.from_transitions({(0, "a"): 1, (1, "a"): 0, (0, "b"): 0, (1, "b"): 1},
        ...                               0, {0})
        >>> ends_b = DFA.from_transitions({(0, "a"): 0, (0, "b"): 1, (1, "a"): 0, (1, "b"): 1},
        ...                               0, {1})
        >>> both = intersect_dfas(even_a, ends_b)
        >>> both.accepts("aab"), both.accepts("ab")
        (True, False)
    """
    alphabet = tuple(dict.fromkeys(d1.alphabet + d2.alphabet))
    start = (d1.start, d2.start)
    seen, todo, trans = {start}, deque([start]), {}
    while todo:
        q1, q2 = q = todo.popleft()
        for a in alphabet:
            r1, r2 = d1.transitions.get((q1, a)), d2.transitions.get((q2, a))
            if r1 is None or r2 is None:
                continue
            trans[(q, a)] = r = (r1, r2)
            if r not in seen:
                seen.add(r)
                todo.append(r)
    accepting = {q for q in seen if q[0] in d1.accepting and q[1] in d2.accepting}
    return trim(DFA(tuple(seen), alphabet, trans, start, frozenset(accepting)))


def minimize(d: DFA) -> DFA:
    """The minimal trim DFA of ``L(d)``, with states numbered 0, 1, ... in breadth-first order
    (symbols in alphabet order), so equivalent DFAs minimise to equal values.

    Moore's partition refinement on the trimmed DFA (O(n^2 |alphabet|) at worst). Its states are
    the Myhill-Nerode classes of the live prefixes (those some accepted string starts with); the
    minimal *complete* DFA has one more state, the sink, exactly when some transition is missing
    (``complete(minimize(d))``). The empty language gives one non-accepting state.

    Example:
        >>> d = DFA.from_transitions({(0, "a"): 1, (1, "a"): 2, (2, "a"): 1}, 0, {1, 2})
        >>> m = minimize(d)
        >>> m.states, dict(m.transitions), sorted(m.accepting)
        ((0, 1), {(0, 'a'): 1, (1, 'a'): 1}, [1])
    """
    t = trim(d)
    if not t.accepting:
        return DFA((0,), t.alphabet, {}, 0, frozenset())
    block = {q: int(q in t.accepting) for q in t.states}
    n_blocks = len(set(block.values()))
    while True:
        sigs = {q: (block[q], *(block.get(t.transitions.get((q, a)), -1) for a in t.alphabet))
                for q in t.states}
        ids: dict = {}
        block = {q: ids.setdefault(sig, len(ids)) for q, sig in sigs.items()}
        if len(ids) == n_blocks:
            break
        n_blocks = len(ids)
    # number the blocks breadth-first from the start's
    number = {block[t.start]: 0}
    rep = {0: t.start}
    todo = deque([t.start])
    trans = {}
    while todo:
        q = todo.popleft()
        for a in t.alphabet:
            r = t.transitions.get((q, a))
            if r is None:
                continue
            if block[r] not in number:
                number[block[r]] = len(number)
                rep[number[block[r]]] = r
                todo.append(r)
            trans[(number[block[q]], a)] = number[block[r]]
    accepting = frozenset(i for i, q in rep.items() if q in t.accepting)
    return DFA(tuple(range(len(number))), t.alphabet, trans, 0, accepting)


# ----- weighted products --------------------------------------------------------------------
def _weights(x) -> tuple:
    """``(states, alphabet, arcs {(q, a): [(r, w)]}, halt {q: w}, init {q: w})`` of a PFSA or a
    DFA (a DFA weighs its transitions and accepting states 1)."""
    if isinstance(x, DFA):
        arcs = {(q, a): [(r, 1.0)] for (q, a), r in x.transitions.items()}
        return x.states, x.alphabet, arcs, {q: 1.0 for q in x.accepting}, {x.start: 1.0}
    if not isinstance(x, PFSA):
        raise FormalLMError(f"expected a PFSA or a DFA, got {type(x).__name__}")
    arcs: dict = {}
    for a, q, r in zip(*np.nonzero(x.T)):
        arcs.setdefault((x.states[q], x.alphabet[a]), []).append((x.states[r], float(x.T[a, q, r])))
    halt = {x.states[q]: float(x.rho[q]) for q in np.flatnonzero(x.rho)}
    init = {x.states[q]: float(x.init[q]) for q in np.flatnonzero(x.init)}
    return x.states, x.alphabet, arcs, halt, init


def _product(x, y):
    """The reachable and co-reachable part of the product of ``x`` and ``y``, with its backward
    weights beta = (I - M)^-1 halt: ``(states, arcs, halt, init, beta)``."""
    _, alpha_x, arcs_x, halt_x, init_x = _weights(x)
    _, alpha_y, arcs_y, halt_y, init_y = _weights(y)
    common = [a for a in alpha_x if a in set(alpha_y)]
    init = {(p, q): u * v for p, u in init_x.items() for q, v in init_y.items()}
    seen, todo, arcs = set(init), list(init), []
    while todo:
        p, q = src = todo.pop()
        for a in common:
            for r, u in arcs_x.get((p, a), ()):
                for t, v in arcs_y.get((q, a), ()):
                    arcs.append((src, a, (r, t), u * v))
                    if (r, t) not in seen:
                        seen.add((r, t))
                        todo.append((r, t))
    halt = {s: halt_x[s[0]] * halt_y[s[1]] for s in seen
            if s[0] in halt_x and s[1] in halt_y}
    pred: dict = {}
    for q, _, r, _ in arcs:
        pred.setdefault(r, set()).add(q)
    live, todo = set(halt), list(halt)
    while todo:
        for q in pred.get(todo.pop(), ()):
            if q not in live:
                live.add(q)
                todo.append(q)
    states = sorted(live, key=repr)
    idx = {s: i for i, s in enumerate(states)}
    arcs = [arc for arc in arcs if arc[0] in live and arc[2] in live]
    M = np.zeros((len(states), len(states)))
    for q, _, r, w in arcs:
        M[idx[q], idx[r]] += w
    h = np.array([halt.get(s, 0.0) for s in states])
    beta = np.linalg.solve(np.eye(len(states)) - M, h) if states else h
    init = {s: w for s, w in init.items() if s in live}
    return states, arcs, halt, init, dict(zip(states, np.maximum(beta, 0.0)))


def product_mass(x, y) -> float:
    """Z = sum_s w_x(s) w_y(s) for two PFSAs (the probability that independent draws agree), or a
    PFSA and a DFA (the PFSA's probability of the DFA's language); exact up to one linear solve.

    Example:
        >>> d = DFA.from_transitions({(0, "a"): 0}, 0, {0})
        >>> m = d.to_pfsa("a*", stop_prob=0.5)
        >>> round(product_mass(m, m), 6)  # sum_n 0.25 ** (n + 1)
        0.333333
    """
    if isinstance(x, DFA) and isinstance(y, DFA):
        raise FormalLMError("product_mass needs at least one PFSA (two DFAs have no mass)")
    _, _, _, init, beta = _product(x, y)
    return float(sum(w * beta[s] for s, w in init.items()))


def _normalised_product(x, y, name: str, alphabet) -> PFSA:
    states, arcs, halt, init, beta = _product(x, y)
    Z = sum(w * beta[s] for s, w in init.items())
    if not Z > 0:
        raise FormalLMError(Problem(
            f"the product has total mass Z={Z!r}: no string has positive weight under both",
            "check that the two automata share a string"))
    out: dict = {s: [] for s in states}
    for q, a, r, w in arcs:
        out[q].append((a, r, w * beta[r]))
    new_arcs, final = [], {}
    for q in states:
        total = sum(w for _, _, w in out[q]) + halt.get(q, 0.0)
        final[q] = halt.get(q, 0.0) / total
        new_arcs += [(q, a, r, min(1.0, w / total)) for a, r, w in out[q] if w > 0]
    start = {s: w * beta[s] / Z for s, w in init.items() if w * beta[s] > 0}
    total = sum(start.values())
    start = {s: w / total for s, w in start.items()}
    return PFSA(name, new_arcs, final, start, alphabet=alphabet,
                description=f"conditional product, Z={Z:.6g}")


def intersect_pfsas(m1: PFSA, m2: PFSA, *, name: str | None = None) -> PFSA:
    """The product of two PFSAs renormalised: p(s) = p1(s) p2(s) / Z, Z = ``product_mass``.

    The distribution of the common string of two independent draws (one from each) given that
    they agree; its support is the intersection of the supports. States are pairs ``(q1, q2)``;
    the alphabet is ``m1``'s followed by the symbols only ``m2`` has.

    Raises:
        FormalLMError: the supports are disjoint (Z = 0).

    Example:
        >>> d = DFA.from_transitions({(0, "a"): 0}, 0, {0})
        >>> m = d.to_pfsa("a*", stop_prob=0.5)   # p(a^n) = 0.5 ** (n + 1)
        >>> sq = intersect_pfsas(m, m)           # p(a^n) = 0.75 * 0.25 ** n
        >>> round(sq.prob("a"), 6)
        0.1875
    """
    alphabet = tuple(dict.fromkeys(m1.alphabet + m2.alphabet))
    return _normalised_product(m1, m2, name or f"{m1.name}&{m2.name}", alphabet)


def condition_pfsa(m: PFSA, d: DFA, *, name: str | None = None) -> PFSA:
    """``m`` conditioned on ``d`` accepting: p(s) = p_m(s) 1[s in L(d)] / Z, Z = P_m(L(d)).

    The alphabet stays ``m``'s, so token ids do not move.

    Raises:
        FormalLMError: ``m`` gives ``L(d)`` probability 0.

    Example:
        >>> d = DFA.from_transitions({(0, "a"): 0}, 0, {0})
        >>> ab = DFA.from_transitions({(0, "a"): 0, (0, "b"): 0}, 0, {0})
        >>> m = ab.to_pfsa("ab*", stop_prob=0.5)
        >>> round(condition_pfsa(m, d).prob("aa"), 6)  # 0.25 ** 2 * 0.5 / (2 / 3)
        0.046875
    """
    return _normalised_product(m, d, name or f"{m.name}|dfa", m.alphabet)
