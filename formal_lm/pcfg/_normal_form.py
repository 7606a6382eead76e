"""Partition functions and the weighted binary grammar (``CNF``) that the charts run on.

Shapes: N nonterminals of the binary grammar, A alphabet size.

- Partition functions: Newton's method on the polynomial system Z = F(Z) from Z = 0, which
  converges monotonically to the least fixed point (Etessami & Yannakakis 2009, "Recursive Markov
  chains, stochastic grammars, and monotone systems of nonlinear equations"; Esparza, Kiefer &
  Luttenberger 2010, "Computing the least fixed point of positive polynomial systems").
- Weighted epsilon and unary removal, after binarisation, so that the string distribution is
  kept: the nullable weights e_A come from Newton too, and unary chains are summed by (I - U)^-1.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

Production = tuple[str, tuple[str, ...], float]


# ----- Newton's method for least fixed points ---------------------------------------------------
def newton_lfp(n: int, monomials: Sequence[tuple[int, tuple[int, ...], float]],
               max_iter: int = 500) -> np.ndarray:
    """Least non-negative solution of x_A = sum_{(A, children, w)} w * prod_{B in children} x_B.

    Variables whose least solution is 0 are found combinatorially first and held at 0 (Newton from
    0 converges monotonically on the remaining, clean system; Esparza, Kiefer & Luttenberger 2010).
    """
    pos = np.zeros(n, bool)
    changed = True
    while changed:
        changed = False
        for lhs, ch, w in monomials:
            if w > 0 and not pos[lhs] and all(pos[c] for c in ch):
                pos[lhs] = changed = True
    x = np.zeros(n)
    idx = np.flatnonzero(pos)
    if len(idx) == 0:
        return x
    mons = [(lhs, tuple(ch), w) for lhs, ch, w in monomials
            if w > 0 and pos[lhs] and all(pos[c] for c in ch)]
    eye = np.eye(len(idx))
    last = math.inf
    for _ in range(max_iter):
        F = np.zeros(n)
        J = np.zeros((n, n))
        for lhs, ch, w in mons:
            vals = [x[c] for c in ch]
            F[lhs] += w * math.prod(vals)
            for k, c in enumerate(ch):
                J[lhs, c] += w * math.prod(vals[:k] + vals[k + 1:])
        r = F[idx] - x[idx]
        A = eye - J[np.ix_(idx, idx)]
        try:
            dx = np.linalg.solve(A, r)
        except np.linalg.LinAlgError:
            dx = np.linalg.lstsq(A, r, rcond=None)[0]
        if not np.all(np.isfinite(dx)):
            break
        x[idx] = np.maximum(x[idx] + dx, x[idx])  # Newton from 0 only ever increases
        step = float(np.max(np.abs(dx)))
        if step <= 1e-16 * max(1.0, float(x.max())) or (step < 1e-13 and step >= last):
            break
        last = step
    return x


def partition_functions(productions: Sequence[Production]) -> dict[str, float]:
    """Z_A = P(A derives a finite string) for every left-hand side, by Newton's method.

    No validation: works on non-tight grammars too (where some Z_A < 1).

    Example:
        >>> z = partition_functions([("S", ("S", "S"), 0.6), ("S", ("a",), 0.4)])
        >>> round(z["S"], 12)  # the least root of 0.6 z^2 - z + 0.4 = 0
        0.666666666667
    """
    nts = list(dict.fromkeys(lhs for lhs, _, _ in productions))
    index = {A: i for i, A in enumerate(nts)}
    mons = [(index[lhs], tuple(index[x] for x in rhs if x in index), float(p))
            for lhs, rhs, p in productions]
    x = newton_lfp(len(nts), mons)
    return {A: float(x[i]) for A, i in index.items()}


# ----- the binary grammar ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CNF:
    """A weighted grammar with rules S -> epsilon (weight eps), A -> a (lex) and A -> B C (bin).

    Its weights are not normalised: A's rules carry the mass of A's non-empty strings.
    """

    start: int
    eps: float  # P(start derives the empty string)
    bin: np.ndarray  # [N, N, N]
    lex: np.ndarray  # [N, A]
    bin_flat: np.ndarray  # [N, N*N]
    bin_r: np.ndarray  # [N, N*N]: R_L @ bin, left-corner closure folded in
    lc1: np.ndarray  # [N, A]: R_L @ lex, P(X derives a string starting with a)
    pair_b: np.ndarray  # [P]: the (B, C) child pairs that some binary rule uses ...
    pair_c: np.ndarray  # [P]
    bin_pairs: np.ndarray  # [N, P]: ... and their weights (the chart works on these only)

    @property
    def n(self) -> int:
        return self.lex.shape[0]


def _binarise(productions, nt: dict[str, int], term: dict[str, int]):
    """Sorts the rules by arity: ``(eps, lex, un, bi, count)`` with nonterminal indices.

    A rule with two or more symbols becomes a right-branching chain of fresh nonterminals, and
    each terminal inside such a rule gets one fresh preterminal; ``count`` counts all of them.
    """
    count = [len(nt)]

    def fresh():
        count[0] += 1
        return count[0] - 1

    pre: dict[str, int] = {}
    eps, lex, un, bi = [], [], [], []
    for lhs, rhs, p in productions:
        A = nt[lhs]
        if len(rhs) == 0:
            eps.append((A, p))
        elif len(rhs) == 1:
            x = rhs[0]
            if x in nt:
                un.append((A, nt[x], p))
            else:
                lex.append((A, term[x], p))
        else:
            syms = []
            for x in rhs:
                if x in nt:
                    syms.append(nt[x])
                else:
                    if x not in pre:
                        pre[x] = fresh()
                    syms.append(pre[x])
            cur, w = A, p
            for k in range(len(syms) - 2):  # right-branching chain of fresh nonterminals
                new = fresh()
                bi.append((cur, syms[k], new, w))
                cur, w = new, 1.0
            bi.append((cur, syms[-2], syms[-1], w))
    for a, T in pre.items():
        lex.append((T, term[a], 1.0))
    return eps, lex, un, bi, count[0]


def _remove_empty_and_unary(eps, lex, un, bi, N0: int, n_terms: int):
    """Nullable weights e [N0] and the binary [N0, N0, N0] and lexical [N0, A] weights that are
    left once epsilon and unary rules are folded into them."""
    # nullable weights e_A = P(A =>* epsilon)
    mons = ([(A, (), p) for A, p in eps] + [(A, (B,), p) for A, B, p in un]
            + [(A, (B, C), p) for A, B, C, p in bi])
    e = np.minimum(newton_lfp(N0, mons), 1.0)
    U = np.zeros((N0, N0))
    Bn = np.zeros((N0, N0, N0))
    Lx = np.zeros((N0, n_terms))
    for A, B, p in un:
        U[A, B] += p
    for A, B, C, p in bi:
        Bn[A, B, C] += p
        U[A, B] += p * e[C]  # C erased
        U[A, C] += p * e[B]  # B erased
    for A, a, p in lex:
        Lx[A, a] += p
    Ustar = np.linalg.inv(np.eye(N0) - U)  # sum over unary chains
    Bn = np.einsum("ad,dbc->abc", Ustar, Bn)
    Lx = Ustar @ Lx
    Bn[Bn < 0] = 0.0
    Lx[Lx < 0] = 0.0
    return e, Bn, Lx


def _useful_order(Bn: np.ndarray, useful: np.ndarray, S: int) -> list[int]:
    """The nonterminals reachable from ``S`` through ``useful`` ones, ``S`` first."""
    keep = {S}
    todo = [S]
    while todo:
        A = todo.pop()
        for B, C in zip(*np.nonzero(Bn[A])):
            if useful[B] and useful[C]:
                for X in (B, C):
                    if X not in keep:
                        keep.add(X)
                        todo.append(X)
    return [S] + sorted(keep - {S})


def to_cnf(productions, nts, alphabet, start) -> CNF:
    """The weighted binary grammar of a validated, tight grammar, with its left-corner closure.

    O(N^4) time and O(N^3) memory in the N nonterminals of the binary grammar (the unary
    closure is folded into an [N, N, N] tensor): ``limits.MAX_BINARY_NONTERMINALS`` bounds N."""
    nt = {A: i for i, A in enumerate(nts)}
    term = {a: i for i, a in enumerate(alphabet)}
    eps, lex, un, bi, N0 = _binarise(productions, nt, term)
    e, Bn, Lx = _remove_empty_and_unary(eps, lex, un, bi, N0, len(alphabet))
    z = np.clip(1.0 - e, 0.0, 1.0)  # mass of non-empty strings (the grammar is tight)
    # keep what is reachable from the start through useful (z > 0) nonterminals
    S = nt[start]
    order = _useful_order(Bn, z > 0, S)
    Bn = Bn[np.ix_(order, order, order)]
    Lx = Lx[order]
    z = z[order]
    N = len(order)
    PL = np.einsum("abc,c->ab", Bn, z)  # left-corner relation, right child marginalised
    RL = np.linalg.inv(np.eye(N) - PL)
    RL[RL < 0] = 0.0
    bin_r = np.einsum("ax,xyz->ayz", RL, Bn)
    pb, pc = np.nonzero(Bn.any(0))
    return CNF(0, float(e[S]), Bn, Lx, Bn.reshape(N, N * N), bin_r.reshape(N, N * N), RL @ Lx,
               pb, pc, Bn[:, pb, pc])
