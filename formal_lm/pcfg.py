"""Probabilistic context-free grammars, exactly: inside, prefix and next-token probabilities.

A ``PCFG`` is built from ``(lhs, rhs, prob)`` productions (or NLTK's text notation) and checked at
construction: probabilities, symbols, reachability, productivity and tightness. Epsilon and unary
rules are allowed; internally the grammar is turned into an equivalent *weighted* binary grammar
(``_CNF``) on which the chart algorithms run.

Shape glossary (``# [..]`` comments):

  n  string length                 N  nonterminals of the binary grammar (``_CNF``)
  A  alphabet size (terminals)     V  vocab size = A + 3 (PAD, BOS, EOS first)

Algorithms:

- partition functions: Newton's method on the polynomial system Z = F(Z) from Z = 0, which
  converges monotonically to the least fixed point (Etessami & Yannakakis 2009, "Recursive Markov
  chains, stochastic grammars, and monotone systems of nonlinear equations"; Esparza, Kiefer &
  Luttenberger 2010, "Computing the least fixed point of positive polynomial systems").
- weighted epsilon and unary removal (the nullable weights e_A come from Newton too; unary
  chains are summed by (I - U)^-1), after binarisation, so that the string distribution is kept.
- ``log_prob``: the inside algorithm (Baker 1979) with one log-scale per span, so long strings do
  not underflow.
- ``prefix_log_prob`` and ``next_token_table``: Jelinek & Lafferty (1991), "Computation of the
  probability of initial substring generation by stochastic context-free grammars", with the
  left-corner closure R_L = (I - P_L)^-1. Their recursion is unrolled into a forward pass:
  G_t[Z] = sum_{k<t} G_k R_L Bin beta[k, t], so pi(w[:t] a) = G_t R_L Lex[:, a] for every a at
  once, sharing one inside chart across all prefixes.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import final

import numpy as np

from formal_lm.errors import FormalLMError, Location, Problem, raise_if
from formal_lm.language import Language, LengthStats
from formal_lm.vocab import BOS_ID, EOS_ID, PAD_ID, RESERVED, String, check_symbols

Production = tuple[str, tuple[str, ...], float]

TIGHT_TOLERANCE = 1e-10  # spectral radius at or above 1 - this is treated as not tight
SUM_TOLERANCE = 1e-9


# ----- Newton's method for least fixed points ---------------------------------------------------
def _newton_lfp(n: int, monomials: Sequence[tuple[int, tuple[int, ...], float]],
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
    x = _newton_lfp(len(nts), mons)
    return {A: float(x[i]) for A, i in index.items()}


# ----- the binary grammar ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _CNF:
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


def _to_cnf(productions, nts, alphabet, start) -> _CNF:
    nt = {A: i for i, A in enumerate(nts)}
    term = {a: i for i, a in enumerate(alphabet)}
    count = [len(nts)]

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
    N0 = count[0]
    # nullable weights e_A = P(A =>* epsilon)
    mons = ([(A, (), p) for A, p in eps] + [(A, (B,), p) for A, B, p in un]
            + [(A, (B, C), p) for A, B, C, p in bi])
    e = np.minimum(_newton_lfp(N0, mons), 1.0)
    U = np.zeros((N0, N0))
    Bn = np.zeros((N0, N0, N0))
    Lx = np.zeros((N0, len(alphabet)))
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
    z = np.clip(1.0 - e, 0.0, 1.0)  # mass of non-empty strings (the grammar is tight)
    # keep what is reachable from the start through useful (z > 0) nonterminals
    S = nt[start]
    useful = z > 0
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
    order = [S] + sorted(keep - {S})
    Bn = Bn[np.ix_(order, order, order)]
    Lx = Lx[order]
    z = z[order]
    N = len(order)
    PL = np.einsum("abc,c->ab", Bn, z)  # left-corner relation, right child marginalised
    RL = np.linalg.inv(np.eye(N) - PL)
    RL[RL < 0] = 0.0
    bin_r = np.einsum("ax,xyz->ayz", RL, Bn)
    pb, pc = np.nonzero(Bn.any(0))
    return _CNF(0, float(e[S]), Bn, Lx, Bn.reshape(N, N * N), bin_r.reshape(N, N * N), RL @ Lx,
                pb, pc, Bn[:, pb, pc])


def _inside_chart(cnf: _CNF, ids: np.ndarray):
    """Scaled inside charts of a batch ``ids`` [B, n] (n >= 1; -1 pads: no span covers one).

    Returns ``(b, c, e, ce)``: beta_b[i, i+d, X] = exp(c[b, i, d]) * b[b, i, d, X] indexed by start
    and width, and the same values indexed by end and width in ``e``/``ce``
    (e[:, j, d] = b[:, j-d, d]), so that both halves of every split are plain slices.
    """
    B, n = ids.shape
    N = cnf.n
    b = np.zeros((B, n + 1, n + 1, N))  # [B, start, width, N]
    c = np.full((B, n + 1, n + 1), -np.inf)  # [B, start, width]
    e = np.zeros((B, n + 1, n + 1, N))  # [B, end, width, N]
    ce = np.full((B, n + 1, n + 1), -np.inf)  # [B, end, width]
    lex = np.concatenate([cnf.lex, np.zeros((N, 1))], 1)  # column -1: padding
    x = lex.T[ids]  # [B, n, N]
    with np.errstate(divide="ignore", invalid="ignore"):
        for d in range(1, n + 1):
            I = n - d + 1
            if d == 1:
                raw, smax = x, np.zeros((B, n))
            else:
                left = b[:, :I, 1:d]  # [B, I, d-1, N]   span (i, i+m), m = 1..d-1
                right = e[:, d:, d - 1:0:-1]  # [B, I, d-1, N]   span (i+m, i+d)
                s = c[:, :I, 1:d] + ce[:, d:, d - 1:0:-1]  # [B, I, d-1]
                smax = s.max(2)  # [B, I]
                if not np.isfinite(smax).any():
                    continue
                w = np.exp(s - np.where(np.isfinite(smax), smax, 0.0)[..., None])
                lw = left[..., cnf.pair_b] * w[..., None]  # [B, I, d-1, P]
                X = np.einsum("bimp,bimp->bip", lw, right[..., cnf.pair_c])  # [B, I, P]
                raw = X @ cnf.bin_pairs.T  # [B, I, N]
            mx = raw.max(2)  # [B, I]
            good = np.isfinite(smax) & (mx > 0)
            vals = np.where(good[..., None], raw / np.where(good, mx, 1.0)[..., None], 0.0)
            scales = np.where(good, smax + np.log(np.where(good, mx, 1.0)), -np.inf)
            b[:, :I, d], c[:, :I, d] = vals, scales
            e[:, d:, d], ce[:, d:, d] = vals, scales
    return b, c, e, ce


def _forward(cnf: _CNF, e, ce, n: int):
    """ln pi(w[:t] a) for t = 0..n and every terminal a: [B, n+1, A] (charts cover w[:n])."""
    B, N = e.shape[0], cnf.n
    G = np.zeros((B, n + 1, N))  # scaled G_t
    g = np.full((B, n + 1), -np.inf)
    U = np.zeros((B, n + 1, N, N))  # G_t @ R_L Bin
    G[:, 0, cnf.start] = 1.0
    g[:, 0] = 0.0
    U[:, 0] = cnf.bin_r[cnf.start].reshape(N, N)
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in range(1, n + 1):
            s = g[:, :t] + ce[:, t, t:0:-1]  # [B, t]  spans (k, t), k = 0..t-1
            smax = s.max(1)  # [B]
            fin = np.isfinite(smax)
            if not fin.any():
                break
            w = np.exp(s - np.where(fin, smax, 0.0)[:, None])
            bt = e[:, t, t:0:-1] * w[..., None]  # [B, t, N]
            vec = np.einsum("bky,bkyz->bz", bt, U[:, :t])  # [B, N]
            mx = vec.max(1)
            # an exact 0 means w[:t] is not viable (all terms are non-negative products)
            good = fin & (mx > 0)
            G[:, t] = np.where(good[:, None], vec / np.where(good, mx, 1.0)[:, None], 0.0)
            g[:, t] = np.where(good, smax + np.log(np.where(good, mx, 1.0)), -np.inf)
            U[:, t] = (G[:, t] @ cnf.bin_r).reshape(B, N, N)
        return g[..., None] + np.log(G @ cnf.lc1)


# ----- NLTK text notation ------------------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#.*)
  | (?P<arrow>->)
  | (?P<bar>\|)
  | (?P<prob>\[[^\]]*\])
  | (?P<openprob>\[[^\]]*$)
  | (?P<quoted>'[^']*'|"[^"]*")
  | (?P<badquote>['"].*)
  | (?P<name>(?:[^\s'"\[\]|\#\-]|-(?!>))+)
  | (?P<other>.)
""", re.X)


_BAD = "<bad rule>"  # the left-hand side of a line that did not parse


def _tokens(line: str):
    for m in _TOKEN.finditer(line):
        if m.lastgroup not in ("ws", "comment"):
            yield m.lastgroup, m.group(), m.start() + 1


def _parse_nltk(text: str, path: str, line_offset: int):
    """Productions, their locations, the LHS locations, and every syntax problem."""
    problems: list[Problem] = []
    prods: list[Production] = []
    locs: dict[int, Location] = {}
    lhs_locs: dict[str, Location] = {}
    nt_uses: dict[str, Location] = {}
    term_uses: dict[str, Location] = {}
    lhs = None
    for lineno, line in enumerate(text.splitlines(), 1):
        toks = list(_tokens(line))
        if not toks:
            continue
        where = lambda col: Location(path, lineno + line_offset, col)  # noqa: E731
        if toks[0][0] == "bar":
            if lhs is None:
                problems.append(Problem(
                    f"a continuation line starts with '|' but no rule came before it (line={line!r})",
                    "start the grammar with a line 'LHS -> ... [p]'", where(toks[0][2])))
                continue
            alts = toks[1:]
            start_col = toks[0][2]
        elif len(toks) >= 2 and toks[0][0] == "name" and toks[1][0] == "arrow":
            lhs = toks[0][1]
            lhs_locs.setdefault(lhs, where(toks[0][2]))
            alts = toks[2:]
            start_col = toks[1][2]
        else:
            kind, val, col = toks[0]
            if kind == "quoted":
                msg, fix = (f"left-hand side={val} is quoted, so it is a terminal",
                            "write the nonterminal bare, e.g. S -> 'a' S [0.5]")
            elif kind == "name":
                bad = toks[1] if len(toks) > 1 else None
                col = bad[2] if bad else col + len(val)
                msg = (f"expected '->' after the left-hand side {val}, found "
                       f"{bad[1] if bad else 'the end of the line'!r}")
                fix = "write rules as LHS -> 'a' B [0.5] | [0.5]"
            else:
                msg, fix = (f"expected a rule 'LHS -> ...' or a continuation '| ...', found {val!r}",
                            "write rules as LHS -> 'a' B [0.5] | [0.5]")
            problems.append(Problem(msg, fix, where(col)))
            lhs = _BAD  # still check the syntax of continuation lines
            continue
        # split into alternatives on '|'
        groups: list[tuple[int, list]] = [(start_col, [])]
        for tok in alts:
            if tok[0] == "bar":
                groups.append((tok[2], []))
            else:
                groups[-1][1].append(tok)
        for col0, alt in groups:
            if not alt:
                problems.append(Problem(
                    f"an empty alternative of {lhs} (no symbols and no probability)",
                    "give every alternative a probability, e.g. '| [0.5]' for an empty one",
                    where(col0)))
                continue
            rhs: list[str] = []
            prob = None
            bad = False
            for kind, val, col in alt:
                if prob is not None:
                    problems.append(Problem(
                        f"symbol={val!r} comes after the probability of an alternative of {lhs}",
                        "put the probability last: A -> 'a' B [0.5]; separate alternatives with '|'",
                        where(col)))
                    bad = True
                    break
                if kind == "prob":
                    body = val[1:-1].strip()
                    try:
                        prob = (float(body), col)
                    except ValueError:
                        problems.append(Problem(f"probability={val} of {lhs} is not a number",
                                                "write a decimal such as [0.25]", where(col)))
                        bad = True
                        break
                elif kind == "name":
                    rhs.append(val)
                    nt_uses.setdefault(val, where(col))
                elif kind == "quoted":
                    if len(val) == 2:
                        problems.append(Problem(f"terminal={val} is empty",
                                                "an empty alternative is written with no symbols: "
                                                "A -> [0.5]", where(col)))
                        bad = True
                        break
                    rhs.append(val[1:-1])
                    term_uses.setdefault(val[1:-1], where(col))
                elif kind == "badquote":
                    problems.append(Problem(f"unterminated quote in {val!r}",
                                            "close the terminal with the same quote", where(col)))
                    bad = True
                    break
                elif kind == "openprob":
                    problems.append(Problem(f"unclosed probability bracket {val!r}",
                                            "close it: [0.5]", where(col)))
                    bad = True
                    break
                else:
                    problems.append(Problem(f"unexpected token={val!r} in an alternative of {lhs}",
                                            "alternatives are symbols then [p], separated by '|'",
                                            where(col)))
                    bad = True
                    break
            if bad:
                continue
            if prob is None:
                shown = " ".join(rhs)
                problems.append(Problem(
                    f"the alternative {lhs} -> {shown} has no probability",
                    "append its probability in brackets, e.g. [0.5]", where(alt[0][2])))
                continue
            if lhs is not _BAD:
                locs[len(prods)] = where(alt[0][2])
                prods.append((lhs, tuple(rhs), prob[0]))
    # references: bare names are nonterminals and need rules; terminals must not shadow them
    refs: list[Problem] = []
    defined = {p[0] for p in prods} | set(lhs_locs)
    for name, loc in nt_uses.items():
        if name not in defined:
            refs.append(Problem(
                f"nonterminal={name} is used but has no rules",
                f"add rules for {name}, or quote it ('{name}') if it is a terminal", loc))
    for name, loc in term_uses.items():
        if name in defined:
            refs.append(Problem(f"terminal='{name}' has the same name as the nonterminal {name}",
                                "rename one of them", loc))
    return prods, locs, lhs_locs, problems, refs


# ----- the class ---------------------------------------------------------------------------------
@final
class PCFG(Language):
    """A probabilistic context-free grammar, with exact string, prefix and next-token probabilities.

    Args:
        rules: ``(lhs, rhs, prob)`` productions. A symbol that is some rule's left-hand side is a
            nonterminal; every other right-hand-side symbol is a terminal. ``rhs=()`` is epsilon.
        start: the start nonterminal.
        name: the language's name.
        alphabet: the terminals in vocabulary order (default: order of first appearance).
        locations: rule index -> ``Location``, so that errors point into a grammar file.
        description: one line for listings.

    Raises:
        GrammarError: with every problem found (probabilities, symbols, reachability,
            productivity, an empty language, or a grammar that is not tight).

    Example:
        >>> g = PCFG.from_nltk("S -> '(' S ')' S [0.4] | [0.6]", name="dyck")
        >>> round(g.prob("()"), 6)
        0.144
        >>> round(g.next_token_dist("(")[")"], 6)
        0.6
        >>> g.entropy_is_exact, round(g.expected_length(), 6)
        (True, 4.0)
    """

    def __init__(self, rules: Sequence[Production], *, start: str, name: str = "pcfg",
                 alphabet: Sequence[str] | None = None,
                 locations: Mapping[int, Location] | None = None,
                 description: str | None = None):
        self._setup(rules, start, name, alphabet, dict(locations or {}), {}, [], description)

    @classmethod
    def from_nltk(cls, text: str, *, name: str = "pcfg", start: str | None = None,
                  path: str = "<string>", line_offset: int = 0,
                  alphabet: Sequence[str] | None = None,
                  description: str | None = None) -> PCFG:
        """Parses NLTK's PCFG notation.

        Lines read ``S -> 'a' S 'b' [0.4] | [0.6]``: quoted terminals, bare nonterminals,
        alternatives separated by ``|``, each followed by its probability in brackets (an
        alternative with no symbols is epsilon). ``#`` starts a comment; a line starting with ``|``
        continues the previous rule. Quotes have no escapes. The start defaults to the first
        left-hand side.

        Raises:
            GrammarError: syntax problems, all of them, at ``path:line:column`` (line numbers
                shifted by ``line_offset``); or, when the syntax is fine, every problem of the
                grammar, at the rules' locations.

        Example:
            >>> g = PCFG.from_nltk('''
            ... S -> 'a' S 'b' [0.4]   # nested
            ...    | [0.6]
            ... ''')
            >>> round(g.prob(("a", "b")), 6)
            0.24
        """
        prods, locs, lhs_locs, syntax, refs = _parse_nltk(text, path, line_offset)
        raise_if(syntax)
        if start is None:
            start = prods[0][0] if prods else ""
        obj = cls.__new__(cls)
        obj._setup(prods, start, name, alphabet, locs, lhs_locs, refs, description)
        return obj

    # ----- construction ---------------------------------------------------------------------------
    def _setup(self, rules, start, name, alphabet, locations, lhs_locations, problems,
               description):
        problems = list(problems)
        prods: list[Production] = []
        locs: dict[int, Location] = {}
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
        nts = tuple(dict.fromkeys(lhs for lhs, _, _ in prods))
        ntset = set(nts)
        terminals = tuple(dict.fromkeys(x for _, rhs, _ in prods for x in rhs if x not in ntset))
        by_lhs: dict[str, list[int]] = {A: [] for A in nts}
        for k, (lhs, _, _) in enumerate(prods):
            by_lhs[lhs].append(k)
        where = {A: lhs_locations.get(A) or locs.get(by_lhs[A][0]) for A in nts}

        def show(k):
            lhs, rhs, _ = prods[k]
            return f"{lhs} -> {' '.join(rhs) if rhs else '(empty)'}"

        # probabilities
        probs_ok = True
        for k, (lhs, rhs, p) in enumerate(prods):
            if not (math.isfinite(p) and p > 0):
                probs_ok = False
                problems.append(Problem(
                    f"rule {show(k)} has prob={p!r}; probabilities must be positive and finite",
                    "give it a probability in (0, 1], or delete the rule if it is never used",
                    locs.get(k)))
        for A in nts:
            total = math.fsum(prods[k][2] for k in by_lhs[A] if math.isfinite(prods[k][2]))
            if abs(total - 1.0) > SUM_TOLERANCE:
                probs_ok = False
                problems.append(Problem(
                    f"the probabilities of {A}'s rules sum to sum={total!r}, not 1 (lhs={A})",
                    f"rescale them so they sum to 1 (divide each by {total:.6g})", where[A]))
        # symbols
        for A in nts:
            if not A or any(ch.isspace() for ch in A) or A in RESERVED:
                problems.append(Problem(
                    f"nonterminal={A!r} is a reserved name or holds spaces",
                    f"rename it; {sorted(RESERVED)} are reserved", where[A]))
        first_use = {}
        for k, (_, rhs, _) in enumerate(prods):
            for x in rhs:
                first_use.setdefault(x, locs.get(k))
        if alphabet is None:  # the terminals are the alphabet: check each where it is first used
            for t in terminals:
                for pr in check_symbols([t]):
                    problems.append(dataclasses.replace(pr, location=first_use.get(t)))
            alphabet = terminals
        else:  # check the alphabet once; terminals must be in it
            alphabet = tuple(alphabet)
            if alphabet:
                problems += check_symbols(alphabet)
            for t in terminals:
                if t not in alphabet:
                    problems.append(Problem(f"terminal={t!r} is not in alphabet={alphabet}",
                                            "add it to the alphabet", first_use.get(t)))
        if not alphabet:
            problems.append(Problem(
                "the grammar has no terminals, so alphabet=() is empty (its only string is the "
                "empty one)", "add terminal rules, or pass alphabet=(...)",
                locs.get(0)))
        # structure
        useful = set()
        if start not in ntset:
            problems.append(Problem(
                f"start={start!r} is not the left-hand side of any rule",
                f"use one of the nonterminals {list(nts)}, or add rules for {start!r}"))
        else:
            reach = {start}
            todo = [start]
            while todo:
                A = todo.pop()
                for k in by_lhs[A]:
                    for x in prods[k][1]:
                        if x in ntset and x not in reach:
                            reach.add(x)
                            todo.append(x)
            for A in nts:
                if A not in reach:
                    problems.append(Problem(
                        f"nonterminal={A} is unreachable from start={start}",
                        f"use {A} on the right-hand side of a reachable rule, or delete its rules",
                        where[A]))
            productive: set[str] = set()
            changed = True
            while changed:
                changed = False
                for lhs, rhs, p in prods:
                    if lhs not in productive and all(x in productive or x not in ntset
                                                     for x in rhs):
                        productive.add(lhs)
                        changed = True
            if start not in productive:
                problems.append(Problem(
                    f"the language is empty: start={start} derives no finite string",
                    f"add a rule for {start} that finishes, e.g. {start} -> 'a' [p]",
                    where[start]))
            for A in nts:
                if A not in productive and A != start:
                    problems.append(Problem(
                        f"nonterminal={A} is unproductive: it derives no finite string "
                        "(each of its rules uses a nonterminal that never finishes)",
                        f"add a rule for {A} that finishes, e.g. {A} -> 'a' [p]", where[A]))
            useful = reach & productive
            if probs_ok and start in useful:
                problems += self._tightness(prods, locs, by_lhs, useful)
        raise_if(problems)

        self.name = name
        self.alphabet = tuple(alphabet)
        self.start = start
        self.nonterminals = nts
        self.productions: tuple[Production, ...] = tuple(prods)
        self.description = description or (
            f"PCFG with {len(nts)} nonterminals and {len(prods)} rules, start={start}")
        self._by_lhs = {A: tuple(v) for A, v in by_lhs.items()}
        self._cache: dict = {}
        self._cnf = _to_cnf(prods, nts, self.alphabet, start)
        self.entropy_is_exact = self._is_ll1()
        self.ambiguity_witness: String | None = None
        if not self.entropy_is_exact:
            self.ambiguity_witness = self._find_ambiguity()

    @staticmethod
    def _tightness(prods, locs, by_lhs, useful) -> list[Problem]:
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

    # ----- ambiguity ---------------------------------------------------------------------------
    def _is_ll1(self) -> bool:
        """Sufficient for unambiguity: every nonterminal's alternatives have disjoint predict sets."""
        nts = set(self.nonterminals)
        prods = self.productions
        nullable: set[str] = set()
        first: dict[str, set] = {A: set() for A in nts}

        def first_seq(seq):
            out = set()
            for x in seq:
                if x not in nts:
                    out.add(x)
                    return out, False
                out |= first[x]
                if x not in nullable:
                    return out, False
            return out, True

        changed = True
        while changed:
            changed = False
            for lhs, rhs, _ in prods:
                f, nul = first_seq(rhs)
                if not f <= first[lhs]:
                    first[lhs] |= f
                    changed = True
                if nul and lhs not in nullable:
                    nullable.add(lhs)
                    changed = True
        end = object()
        follow: dict[str, set] = {A: set() for A in nts}
        follow[self.start].add(end)
        changed = True
        while changed:
            changed = False
            for lhs, rhs, _ in prods:
                for i, x in enumerate(rhs):
                    if x in nts:
                        f, nul = first_seq(rhs[i + 1:])
                        new = f | (follow[lhs] if nul else set())
                        if not new <= follow[x]:
                            follow[x] |= new
                            changed = True
        for A, ks in self._by_lhs.items():
            seen: set = set()
            for k in ks:
                f, nul = first_seq(prods[k][1])
                pred = f | (follow[A] if nul else set())
                if pred & seen:
                    return False
                seen |= pred
        return True

    def _find_ambiguity(self, max_length: int = 8, budget: int = 30000) -> String | None:
        """The shortest string found with two leftmost derivations (a bounded brute-force search)."""
        nts = set(self.nonterminals)
        minlen = {A: math.inf for A in nts}
        changed = True
        while changed:
            changed = False
            for lhs, rhs, _ in self.productions:
                m = sum(minlen[x] if x in nts else 1 for x in rhs)
                if m < minlen[lhs]:
                    minlen[lhs] = m
                    changed = True
        alts = {A: [self.productions[k][1] for k in ks] for A, ks in self._by_lhs.items()}
        level = {(self.start,): 1}
        done: dict[String, int] = {}
        spent = 0
        while level and spent < budget:
            nxt: dict[tuple, int] = {}
            for form, cnt in level.items():
                k = next((i for i, x in enumerate(form) if x in nts), None)
                if k is None:
                    done[form] = min(2, done.get(form, 0) + cnt)
                    continue
                for rhs in alts[form[k]]:
                    new = form[:k] + rhs + form[k + 1:]
                    if (len(new) > max_length + 4
                            or sum(minlen[x] if x in nts else 1 for x in new) > max_length):
                        continue
                    nxt[new] = min(2, nxt.get(new, 0) + cnt)
                    spent += 1
            level = nxt
        found = [s for s, c in done.items() if c >= 2]
        return min(found, key=lambda s: (len(s), s)) if found else None

    # ----- exact quantities --------------------------------------------------------------------
    def partition_function(self) -> dict[str, float]:
        """Z_A = P(A derives a finite string), by Newton's method (all 1 for a valid grammar)."""
        if "Z" not in self._cache:
            self._cache["Z"] = partition_functions(self.productions)
        return dict(self._cache["Z"])

    def _ids(self, s) -> np.ndarray:
        index = self._term_index
        return np.array([index[x] for x in self._s(s)], dtype=np.int64)

    @property
    def _term_index(self) -> dict[str, int]:
        if "term" not in self._cache:
            self._cache["term"] = {a: i for i, a in enumerate(self.alphabet)}
        return self._cache["term"]

    def log_prob(self, s) -> float:
        """Exact ln p(s) by the inside algorithm; ``-inf`` outside the language."""
        ids = self._ids(s)
        cnf = self._cnf
        n = len(ids)
        if n == 0:
            return math.log(cnf.eps) if cnf.eps > 0 else -math.inf
        b, c, _, _ = _inside_chart(cnf, ids[None])
        v = b[0, 0, n, cnf.start]
        return float(c[0, 0, n] + math.log(v)) if v > 0 else -math.inf

    def prefix_log_prob(self, p) -> float:
        """Exact ln P(a string starts with p) (Jelinek & Lafferty 1991)."""
        ids = self._ids(p)
        n = len(ids)
        if n == 0:
            return 0.0
        cnf = self._cnf
        if n == 1:
            v = cnf.lc1[cnf.start, ids[0]]
            return math.log(v) if v > 0 else -math.inf
        _, _, e, ce = _inside_chart(cnf, ids[None, :-1])
        return float(_forward(cnf, e, ce, n - 1)[0, n - 1, ids[-1]])

    def next_token_table(self, s) -> np.ndarray:
        """[len(s) + 1, V] exact next-token probabilities after each prefix ``s[:t]``.

        One inside chart of ``s`` serves every prefix, and one forward pass gives
        pi(s[:t] a) for every t and a: O(n^3 N^2) in all.
        """
        ids = self._ids(s)
        return self._tables(ids[None], np.array([len(ids)]))[0]

    def next_token_probs(self, ids) -> np.ndarray:
        """Exact next-token probabilities for a batch of token ids: [B, T] -> [B, T, V].

        Same contract as ``Language.next_token_probs``; the charts of the batch are computed
        together (in chunks that bound memory).
        """
        ids = np.asarray(ids)
        B, T = ids.shape
        V = self.vocab.size
        out = np.zeros((B, T, V))
        if B == 0:
            return out
        if T == 0 or np.any(ids[:, 0] != BOS_ID):
            b = 0 if T == 0 else int(np.flatnonzero(ids[:, 0] != BOS_ID)[0])
            raise FormalLMError(f"row {b} of ids does not start with BOS ({BOS_ID})")
        body = ids[:, 1:]
        stop = (body == EOS_ID) | (body == PAD_ID)
        lengths = np.where(stop.any(1), stop.argmax(1), T - 1)  # [B]
        n = int(lengths.max())
        syms = np.full((B, n), -1, np.int64)  # terminal indices, -1 padding
        for r in range(B):
            row = body[r, : lengths[r]].astype(np.int64) - 3
            if np.any((row < 0) | (row >= V - 3)):
                raise FormalLMError(f"row {r} of ids holds ids outside 3..{V - 1} before EOS")
            syms[r, : lengths[r]] = row
        chunk = max(1, int(4e6 // ((n + 1) ** 2 * max(self._cnf.n, 1))))
        for lo in range(0, B, chunk):
            hi = min(B, lo + chunk)
            tables = self._tables(syms[lo:hi], lengths[lo:hi])  # [b, n+1, V]
            for r in range(lo, hi):
                k = min(int(lengths[r]) + 1, T)
                out[r, :k] = tables[r - lo, :k]
        return out

    def _tables(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Next-token tables [B, n+1, V] for terminal ids [B, n] (-1 pads past ``lengths``)."""
        B, n = ids.shape
        cnf = self._cnf
        out = np.zeros((B, n + 1, self.vocab.size))  # [B, n+1, V]
        if n:
            b, c, e, ce = _inside_chart(cnf, ids)
        else:
            e, ce = np.zeros((B, 1, 1, cnf.n)), np.full((B, 1, 1), -np.inf)
        nxt = _forward(cnf, e, ce, n)  # [B, n+1, A] ln pi(s[:t] a)
        with np.errstate(divide="ignore", invalid="ignore"):
            logp = np.full((B, n + 1), -np.inf)  # ln p(s[:t])
            logp[:, 0] = math.log(cnf.eps) if cnf.eps > 0 else -np.inf
            if n:
                logp[:, 1:] = c[:, 0, 1:] + np.log(b[:, 0, 1:, cnf.start])
            logpi = np.zeros((B, n + 1))  # ln pi(s[:t])
            if n:
                prev = np.take_along_axis(nxt[:, :n], np.maximum(ids, 0)[..., None], 2)[..., 0]
                logpi[:, 1:] = np.where(ids >= 0, prev, -np.inf)
            alive = np.isfinite(logpi) & (np.arange(n + 1)[None] <= lengths[:, None])
            base = np.where(alive, logpi, 0.0)[..., None]
            out[..., EOS_ID] = np.where(alive, np.exp(logp - base[..., 0]), 0.0)
            out[..., 3:] = np.where(alive[..., None], np.exp(nxt - base), 0.0)
        return out

    # ----- by length ---------------------------------------------------------------------------
    def _inside_by_length(self, L: int, expectation: bool = False):
        """Scaled I[l, X] = P(X derives a length-l string) (and J[l, X] = E[-ln p(d); l])."""
        cnf = self._cnf
        N = cnf.n
        I = np.zeros((L + 1, N))  # [L+1, N]
        J = np.zeros((L + 1, N)) if expectation else None
        cs = np.full(L + 1, -np.inf)
        if L < 1:
            return I, J, cs
        with np.errstate(divide="ignore"):
            neg_lex = np.where(cnf.lex > 0, -np.log(np.where(cnf.lex > 0, cnf.lex, 1)), 0.0)
            neg_bin = np.where(cnf.bin_flat > 0,
                               -np.log(np.where(cnf.bin_flat > 0, cnf.bin_flat, 1)), 0.0)
        x = cnf.lex.sum(1)
        mx = x.max()
        if mx > 0:
            I[1] = x / mx
            cs[1] = math.log(mx)
            if expectation:
                J[1] = (cnf.lex * neg_lex).sum(1) / mx
        for ln in range(2, L + 1):
            s = cs[1:ln] + cs[ln - 1:0:-1]  # [ln-1]
            smax = s.max()
            if not np.isfinite(smax):
                continue
            w = np.exp(s - smax)
            left, right = I[1:ln] * w[:, None], I[ln - 1:0:-1]
            X = (left.T @ right).ravel()  # [N*N]
            raw = cnf.bin_flat @ X
            mx = raw.max()
            if not mx > 0:
                continue
            I[ln] = raw / mx
            cs[ln] = smax + math.log(mx)
            if expectation:
                Y = (J[1:ln] * w[:, None]).T @ right + left.T @ J[ln - 1:0:-1]
                J[ln] = ((cnf.bin_flat * neg_bin) @ X + cnf.bin_flat @ Y.ravel()) / mx
        return I, J, cs

    def length_stats(self, max_length: int) -> LengthStats:
        """Exact P(|s| = L) and, for unambiguous grammars, E[-ln p(s); |s| = L], L <= max_length.

        ``eos_surprisal`` is None (not computed for PCFGs).
        """
        if max_length < 0:
            raise FormalLMError(f"max_length={max_length} must be >= 0")
        cnf = self._cnf
        exact = self.entropy_is_exact
        I, J, cs = self._inside_by_length(max_length, expectation=exact)
        with np.errstate(over="ignore", invalid="ignore"):
            scale = np.exp(cs)
            prob = scale * I[:, cnf.start]
            prob[0] = cnf.eps
            surprisal = None
            if exact:
                surprisal = scale * J[:, cnf.start]
                surprisal[0] = -cnf.eps * math.log(cnf.eps) if cnf.eps > 0 else 0.0
        prob = np.nan_to_num(prob)
        if surprisal is not None:
            surprisal = np.nan_to_num(surprisal)
        tail = max(0.0, 1.0 - math.fsum(prob))
        return LengthStats(prob, surprisal, None, tail)

    # ----- sampling ----------------------------------------------------------------------------
    def sample(self, n: int, *, seed: int = 0, length: int | None = None) -> list[String]:
        """``n`` exact samples; with ``length=L``, exact samples conditioned on ``|s| = L``.

        Raises:
            FormalLMError: when no string has length ``L``.
        """
        rng = np.random.default_rng(seed)
        if length is not None:
            return self._sample_length(n, int(length), rng)
        table = self._cache.get("top_down")
        if table is None:
            table = {}
            for A, ks in self._by_lhs.items():
                cum = np.cumsum([self.productions[k][2] for k in ks])
                table[A] = (cum / cum[-1], [tuple(reversed(self.productions[k][1])) for k in ks])
            self._cache["top_down"] = table
        out = []
        for _ in range(n):
            s: list[str] = []
            stack = [self.start]
            while stack:
                x = stack.pop()
                entry = table.get(x)
                if entry is None:
                    s.append(x)
                    continue
                cum, rhss = entry
                j = min(int(np.searchsorted(cum, rng.random(), side="right")), len(rhss) - 1)
                stack.extend(rhss[j])
            out.append(tuple(s))
        return out

    def _sample_length(self, n: int, L: int, rng) -> list[String]:
        cnf = self._cnf
        if L < 0:
            raise FormalLMError(f"length={L} must be >= 0")
        if L == 0:
            if cnf.eps <= 0:
                raise FormalLMError(Problem(
                    f"length=0 has probability 0 under {self.name!r}: the empty string is not in "
                    "the language", "pick a length with lang.length_distribution(L)[L] > 0"))
            return [()] * n
        I, _, cs = self._inside_by_length(L)
        if not I[L, cnf.start] > 0:
            raise FormalLMError(Problem(
                f"length={L} has probability 0 under {self.name!r}: no string has that length",
                "pick a length with lang.length_distribution(L)[L] > 0"))
        N = cnf.n
        dists: dict[tuple[int, int], np.ndarray] = {}

        def dist(X, ln):
            key = (X, ln)
            d = dists.get(key)
            if d is None:
                if ln == 1:
                    w = cnf.lex[X]
                else:
                    s = cs[1:ln] + cs[ln - 1:0:-1]
                    fin = np.isfinite(s)
                    sc = np.where(fin, np.exp(s - s[fin].max()), 0.0)  # [ln-1]
                    w = (sc[:, None, None] * I[1:ln, :, None] * I[ln - 1:0:-1, None, :]
                         * cnf.bin[X][None]).ravel()  # [(ln-1)*N*N]
                d = np.cumsum(w)
                d /= d[-1]
                dists[key] = d
            return d

        out = []
        for _ in range(n):
            s = []
            stack = [(cnf.start, L)]
            while stack:
                X, ln = stack.pop()
                d = dist(X, ln)
                j = min(int(np.searchsorted(d, rng.random(), side="right")), len(d) - 1)
                if ln == 1:
                    s.append(self.alphabet[j])
                    continue
                m, rest = divmod(j, N * N)
                B, C = divmod(rest, N)
                stack.append((C, ln - m - 1))
                stack.append((B, m + 1))
            out.append(tuple(s))
        return out

    # ----- expectations over derivations ----------------------------------------------------------
    def _moment_system(self):
        nts = self.nonterminals
        idx = {A: i for i, A in enumerate(nts)}
        M = np.zeros((len(nts), len(nts)))
        h = np.zeros(len(nts))
        t = np.zeros(len(nts))
        for lhs, rhs, p in self.productions:
            i = idx[lhs]
            h[i] -= p * math.log(p)
            for x in rhs:
                if x in idx:
                    M[i, idx[x]] += p
                else:
                    t[i] += p
        return np.eye(len(nts)) - M, h, t, idx[self.start]

    def entropy(self) -> float:
        """Derivational entropy in nats: H_A = local entropy + expected children's entropies.

        Equal to the string entropy when ``entropy_is_exact`` (the grammar passed an LL(1) check,
        so it is unambiguous). Otherwise it is an upper bound on the string entropy
        (H(derivation) = H(string) + H(derivation | string)); ``ambiguity_witness`` then holds a
        string with two derivations when the bounded search found one.
        """
        if "H" not in self._cache:
            A, h, _, s = self._moment_system()
            self._cache["H"] = float(np.linalg.solve(A, h)[s])
        return self._cache["H"]

    def expected_length(self) -> float:
        """E[|s|], by a linear solve of expected terminal counts."""
        if "EL" not in self._cache:
            A, _, t, s = self._moment_system()
            self._cache["EL"] = float(np.linalg.solve(A, t)[s])
        return self._cache["EL"]
