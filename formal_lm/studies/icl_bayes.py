"""The Bayes-optimal in-context predictor of a :class:`~formal_lm.studies.icl.PDFAFamily`.

The best a learner that does not know the sequence's automaton can do: p(x_{t+1} | x_{<=t}) =
sum_A p(A | x_{<=t}) p_A(x_{t+1} | x_{<=t}) under the family's prior.

Derivation. An automaton is a structure (n; per state q a symbol subset S_q of size
k = max(1, round(density |A|)); a target delta(q, a) per arc) and parameters (per state a halting
probability h_q ~ U(lo, hi) and symbol weights (1 - h_q) w_q, w_q ~ Dirichlet(1_k) over S_q).

1. Paths. Deterministic, restarting in state 0 after every delimiter: given the structure every
   string's path is known. Per state q: H_q halts, counts c_qa, C_q = sum_a c_qa, O_q = {c_qa > 0}.
2. Parameters integrate out per state: the likelihood is prod_q P(O_q <= S_q) *
   J(H_q, C_q) * Gamma(k) prod_a Gamma(1 + c_qa) / Gamma(k + C_q), where J(H, C) =
   int_lo^hi h^H (1 - h)^C dh / (hi - lo) = B(H+1, C+1) [I_hi - I_lo](H+1, C+1) / (hi - lo)
   (regularized incomplete beta I) and P(O <= S) = binom(|A| - |O|, k - |O|) / binom(|A|, k) (the
   likelihood depends on S_q only through O_q <= S_q). Unvisited states and arcs integrate to 1.
3. Lazy structures. So only the targets of visited arcs matter. Label states in order of
   discovery (state 0 first): a lazy structure is the map of the r visited arcs into the m
   discovered states; unvisited states are exchangeable, so all their labellings merge into one.
   With n explicit its prior is P(n) prod_arcs (1/n for an old target, (n - m')/n for a new one,
   m' = states known then) = P(n) n^{-r} (n-1)!/(n-m)!, and n sums out in closed form:
   g(r, m) = sum_{n >= m} P(n) n^{-r} (n-1)!/(n-m)!. An arc seen for the first time goes to each
   known state with probability g(r+1, m)/g(r, m) and to a new state with g(r+1, m+1)/g(r, m)
   (these sum to 1; a new state has no data, so its subset is uniform).
4. Predictive of a lazy structure in state q (ratios of 2.): halt with E[h] = J(H+1, C)/J(H, C)
   (to the delimiter, or EOS after the k-th string); symbol a with (1 - E[h]) times
   (c_qa + 1)/(k + C_q) if a in O_q, else P(a in S_q | O_q <= S_q) / (k + C_q) with
   P(a in S | O <= S) = (k - |O|)/(|A| - |O|). The posterior weight of a lazy structure is its
   prior g(r, m) times the product of the predictive probabilities of the context tokens.

Computation. Lazy structures step along the sequence. A symbol on an unvisited arc leaves its
target pending for one step: the next row mixes the candidate targets' rows with the weights of
3.; the next token then splits the structure into one child per target giving it positive
probability. Rows are weighted means of closed-form rows (parameters are never sampled).
``exact=True`` keeps every child (at most hi^(hi k) per sequence; more than ``max_structures``
raises); ``exact=None`` is exact iff hi^(hi k) <= max_structures. ``exact=False`` runs ``runs``
independent particle filters of at most ``particles`` structures per sequence (exact while there
are no more), cut back by Fearnhead-Clifford resampling (JRSS B 65, 2003): with c solving
sum_i min(1, w_i / c) = particles, structures with w_i >= c stay, the others survive with
probability w_i / c and weight c (stratified; unbiased; no duplicates). For an ICLBatch the
sequence's true lazy structure is always kept, with its own weight (keep probability 1: still
unbiased, the same Bayes predictive is estimated), so no filter loses every structure consistent
with its sequence, nor gives a token its own automaton allows probability 0; the posterior's
tail (hypotheses of weight 1e-7 that the data later favour) needs this. Chunk i (sequences from
i) draws from ``rng(seed, Stream.ICL_BAYES, i)``.

Monte Carlo error: ``BayesRows.rows`` is the mean of the alive runs; ``BayesRows.jackknife``
gives any scalar of the rows with its standard error (leave-one-run-out). Precision at the defaults
(512 particles x 8 runs, true structure kept), on experiments/icl-pdfa.toml's family (n 3-6, 4
symbols, 96 tokens): mean CE and KL(oracle || Bayes) within 1.5e-4 nats/token of exact
enumeration (63 sequences; standard error ~1e-4), within 2.5e-4 of 32768 particles (256
sequences, 12 s); n 10-14: within 4e-4 of 8192 particles (45 s). An O(1/particles) bias that
the standard error does not cover dominates below ~256 particles (-2e-3 at 64).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
from scipy.special import betainc, betaincc, betaln, gammaln, logsumexp

from formal_lm.analysis.metrics import token_kl
from formal_lm.errors import FormalLMError, Problem
from formal_lm.seeding import Stream, rng
from formal_lm.studies.icl import ICLBatch, PDFAFamily
from formal_lm.vocab import BOS_ID, EOS_ID, PAD_ID

MAX_STRUCTURES = 20_000
"""Default bound on the lazy structures per sequence of exact enumeration."""
_BUDGET = 1 << 19  # particles (or structures) stepped together; longer batches go in chunks


@dataclasses.dataclass(frozen=True)
class BayesRows:
    """The Bayes-optimal in-context next-token rows of a batch.

    Attributes:
        rows: float [N, T-1, V], aligned with ``ICLBatch.oracle`` (zero rows where the target is
            PAD): the exact posterior predictive, or the mean of the runs alive at each position.
        runs: float [R, N, T-1, V]: each particle filter's rows (R = 1 if exact); zero (the run
            is dead, does not count) from where it lost every structure consistent with the data.
        exact: whether ``rows`` is exact (enumeration) rather than a particle estimate.
        particles: particles per sequence and run (0 if exact).
        kept_true: whether every filter kept its sequence's true lazy structure.
    """

    rows: np.ndarray
    runs: np.ndarray
    exact: bool
    particles: int
    kept_true: bool = False

    def _loo(self) -> np.ndarray:
        """[R, N, T-1, V] leave-one-run-out means (nan where no other run is alive)."""
        total, alive = self.runs.sum(0), (self.runs.sum(-1) > 0)
        n = (alive.sum(0) - alive)[..., None]
        with np.errstate(invalid="ignore", divide="ignore"):
            loo = (total - self.runs) / n
        return np.where((n == 0) & (total.sum(-1) == 0)[..., None], 0.0, loo)

    @property
    def se(self) -> np.ndarray:
        """[N, T-1, V] per-entry Monte Carlo standard error of ``rows`` (zero if exact)."""
        R = len(self.runs)
        if self.exact or R < 2:
            return np.zeros_like(self.rows)
        loo = self._loo()
        return np.sqrt((R - 1) / R * ((loo - loo.mean(0)) ** 2).sum(0))

    def jackknife(self, stat: Callable[[np.ndarray], float]) -> tuple[float, float]:
        """(stat(rows), its Monte Carlo standard error), by the leave-one-run-out jackknife
        (inf where a position has a single alive run, or a replicate is not finite)."""
        value, R = float(stat(self.rows)), len(self.runs)
        if self.exact or R < 2:
            return value, 0.0
        loo = np.array([stat(rows) for rows in self._loo()])
        if not np.isfinite(loo).all():
            return value, math.inf
        return value, float(math.sqrt((R - 1) / R * ((loo - loo.mean()) ** 2).sum()))


@dataclasses.dataclass(frozen=True)
class _Tables:
    A: int  # alphabet size
    k: int  # symbols per state
    M: int  # most states (n_states hi)
    ph: np.ndarray  # [T+1, T+1] E[h | H halts, C symbols]
    lpi_old: np.ndarray  # [rmax+1, M+2] log g(r+1, m) / g(r, m)
    lpi_new: np.ndarray  # [rmax+1, M+2] log g(r+1, m+1) / g(r, m)


def _tables(family: PDFAFamily, T: int) -> _Tables:
    lo, hi = family.stop_prob
    A = family.alphabet_size
    k = max(1, int(round(family.density * A)))  # exactly as random_pdfa
    H, C = np.meshgrid(np.arange(T + 2.0), np.arange(T + 2.0), indexing="ij")
    if lo == hi:  # log J(H, C) (without 1/(hi-lo)); a point mass: h^H (1-h)^C
        lj = H * math.log(lo) + C * math.log1p(-lo)
    else:
        i_lo = betainc(H + 1, C + 1, lo)
        diff = np.where(i_lo < 0.5, betainc(H + 1, C + 1, hi) - i_lo,
                        betaincc(H + 1, C + 1, lo) - betaincc(H + 1, C + 1, hi))
        with np.errstate(divide="ignore"):  # underflow only for counts in the hundreds
            lj = betaln(H + 1, C + 1) + np.log(diff)
    with np.errstate(invalid="ignore"):
        ph = np.exp(lj[1:, :-1] - lj[:-1, :-1])[: T + 1, : T + 1]
    # where the integrals underflow, the mass sits at the end of [lo, hi] nearest the mode
    mode = np.clip(H / np.maximum(H + C, 1), lo, hi)[: T + 1, : T + 1]
    ph = np.where(np.isfinite(ph), np.clip(ph, lo, hi), mode)
    nlo, nhi = family.n_states
    M, rmax = nhi, nhi * k
    n = np.arange(nlo, nhi + 1.0)
    r = np.arange(rmax + 2.0)[:, None, None]
    m = np.arange(M + 3.0)[None, :, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(n >= m, -r * np.log(n) + gammaln(n) - gammaln(np.maximum(n - m + 1, 1)),
                         -np.inf) - math.log(len(n))
        lg = logsumexp(terms, axis=-1)  # [rmax+2, M+3] log g(r, m)
        old = np.where(np.isfinite(lg[:-1, :-1]), lg[1:, :-1] - lg[:-1, :-1], -np.inf)
        new = np.where(np.isfinite(lg[:-1, :-1]), lg[1:, 1:] - lg[:-1, :-1], -np.inf)
    return _Tables(A, k, M, ph, old, new)


def _rows(tb: _Tables, halt, tot, seen, cnt) -> np.ndarray:
    """[..., 1+A] predictive (halt, symbols) of states with ``halt`` halts, ``tot`` symbols of
    which ``seen`` distinct, and symbol counts ``cnt`` [..., A] (derivation step 4)."""
    ph = tb.ph[halt, tot]
    per = (1.0 - ph) / (tb.k + tot)
    free = np.maximum(tb.k - seen.astype(np.int64), 0) / np.maximum(tb.A - seen, 1)
    sym = np.where(cnt > 0, cnt + 1.0, free[..., None]) * per[..., None]
    return np.concatenate([ph[..., None], sym], -1)


_SCALARS = ("m", "r", "q", "pend", "truth")


@dataclasses.dataclass
class _Pop:
    """Lazy structures, contiguous by group ``grp`` (one sequence and run). Per structure one
    packed row of unsigned ints ``s`` [I, W]: arc targets [M, A] (UNK = unvisited), symbol counts
    [M, A], per state halts, symbols and distinct symbols [M] each, discovered states m, arcs
    with a known target r, current state q (the pending arc's source, if any), the pending arc's
    symbol (UNK = none), and whether it is the true automaton's lazy structure."""

    s: np.ndarray
    logw: np.ndarray  # float [I]
    grp: np.ndarray  # int [I]
    M: int
    A: int

    @classmethod
    def start(cls, groups: int, M: int, A: int, T: int, truth: bool) -> _Pop:
        small = max(T, M * A) < 255  # counts < T, targets < M, arcs <= M * A
        s = np.zeros((groups, 2 * M * A + 3 * M + 5), np.uint8 if small else np.uint16)
        s[:, :M * A] = s[:, -2] = np.iinfo(s.dtype).max
        s[:, -5], s[:, -1] = 1, truth
        return cls(s, np.zeros(groups), np.arange(groups), M, A)

    def take(self, idx: np.ndarray) -> _Pop:
        return _Pop(self.s[idx], self.logw[idx], self.grp[idx], self.M, self.A)

    UNK = property(lambda self: np.iinfo(self.s.dtype).max)

    def _off(self, name: str) -> tuple[int, bool]:
        """(first column in s, whether per state and symbol) of a per-state field."""
        MA, M = self.M * self.A, self.M
        return {"delta": (0, True), "cnt": (MA, True), "halt": (2 * MA, False),
                "tot": (2 * MA + M, False), "seen": (2 * MA + 2 * M, False)}[name]

    def __getattr__(self, name):  # views into s: writes go through
        if name in _SCALARS:
            return self.s[:, _SCALARS.index(name) - len(_SCALARS)]
        if name not in ("delta", "cnt", "halt", "tot", "seen"):
            raise AttributeError(name)
        off, wide = self._off(name)
        v = self.s[:, off:off + (self.M * self.A if wide else self.M)]
        return v.reshape(len(v), self.M, self.A) if wide else v

    def ix(self, name: str, i, q=0, a=0) -> np.ndarray:
        """Flat indices into ``s`` of field ``name`` at state q (symbol a) of structures i."""
        off, wide = self._off(name)
        q = np.asarray(q, np.int64)
        return np.asarray(i, np.int64) * self.s.shape[1] + off + (q * self.A + a if wide else q)


def _predict(tb: _Tables, pop: _Pop):
    """Per particle the predictive [I, 1+A]; for pending particles also their candidate
    targets' rows [Ip, M+1, 1+A] (slot M = a new state) and log prior weights [Ip, M+1]."""
    f, ar, q = pop.s.reshape(-1), np.arange(len(pop.s)), pop.q
    cnt = f[pop.ix("cnt", ar[:, None], q[:, None], np.arange(tb.A))]
    rows = _rows(tb, f[pop.ix("halt", ar, q)], f[pop.ix("tot", ar, q)],
                 f[pop.ix("seen", ar, q)], cnt)
    pend = np.flatnonzero(pop.pend != pop.UNK)
    cand = logpi = None
    if len(pend):  # candidate states, and slot M: a fresh state
        cand = _rows(tb, *(np.concatenate([v, np.zeros_like(v[:, :1])], 1) for v in
                           (pop.halt[pend], pop.tot[pend], pop.seen[pend], pop.cnt[pend])))
        r, m = pop.r[pend], pop.m[pend]  # r <= M k, m <= M: impossible structures are dropped
        logpi = np.where(np.arange(tb.M + 1) < m[:, None], tb.lpi_old[r, m][:, None], -np.inf)
        logpi[:, -1] = tb.lpi_new[r, m]
        rows[pend] = np.einsum("pj,pjv->pv", np.exp(logpi), cand)
    return rows, pend, cand, logpi


def _resolve(pop: _Pop, idx: np.ndarray, j: np.ndarray, M: int) -> None:
    """Sets the pending arcs of particles ``idx`` to candidate slots ``j`` (M = new state)."""
    tgt = np.where(j == M, pop.m[idx], j)
    pop.s.reshape(-1)[pop.ix("delta", idx, pop.q[idx], pop.pend[idx])] = tgt
    pop.m[idx] += j == M
    pop.r[idx] += 1
    pop.q[idx], pop.pend[idx] = tgt, pop.UNK


def _emit(pop: _Pop, x: np.ndarray) -> None:
    """Every particle's current state emits local token x (0 = halt, 1 + a = symbol a)."""
    f, h = pop.s.reshape(-1), np.flatnonzero(x == 0)
    f[pop.ix("halt", h, pop.q[h])] += 1
    pop.q[h] = 0
    s = np.flatnonzero(x > 0)
    a, q = x[s] - 1, pop.q[s]
    c = pop.ix("cnt", s, q, a)
    f[pop.ix("seen", s, q)] += f[c] == 0
    f[c] += 1
    f[pop.ix("tot", s, q)] += 1
    d = f[pop.ix("delta", s, q, a)]
    pop.q[s] = np.where(d != pop.UNK, d, q)
    pop.pend[s] = np.where(d != pop.UNK, pop.UNK, a)


def _children(tb: _Tables, pop: _Pop, x: np.ndarray, pred):
    """The structures after observing x: (parent [K], slot [K], log weight [K]) where slot is
    -1 for a structure without a pending arc, else the target slot of its pending arc (M = a new
    state); one child per possible target, exact weights, impossible ones left out."""
    rows, pend, cand, logpi = pred
    sc = np.zeros((len(x), tb.M + 1 if len(pend) else 1))
    sc[:, 0] = rows[np.arange(len(x)), x]
    if len(pend):
        sc[pend] = np.exp(logpi) * cand[np.arange(len(pend)), :, x[pend]]
    parent, slot = np.nonzero(sc > 0)
    return parent, np.where(pop.pend[parent] != pop.UNK, slot, -1), \
        pop.logw[parent] + np.log(sc[parent, slot])


def _grow(tb: _Tables, pop: _Pop, x: np.ndarray, parent, slot, logw) -> _Pop:
    """The chosen children of ``_children``, with their arcs resolved and x emitted."""
    pop = pop.take(parent)
    pop.logw = logw
    res = np.flatnonzero(slot >= 0)
    _resolve(pop, res, slot[res], tb.M)
    _emit(pop, x[parent])
    return pop


def _targets(family: PDFAFamily, ids: np.ndarray):
    """(local targets int [N, T-1]: 0 = halt, 1 + a = symbol a, -1 = PAD; halt token ids
    [N, T-1]); raises on sequences that are not laid out as ``family``'s."""
    A, k, dlm = family.alphabet_size, family.strings_per_sequence, family.delimiter_id
    if ids.ndim != 2 or ids.shape[1] < 2:
        raise FormalLMError(f"ids must be [N, T] with T >= 2 (got shape {ids.shape})")
    y = ids[:, 1:]
    done = np.cumsum(ids[:, :-1] == dlm, 1)  # delimiters among the inputs 0..t
    halt_tok = np.where(done < k - 1, dlm, EOS_ID)
    x = np.where(y == PAD_ID, -1, np.where(y == halt_tok, 0, y - 2))
    ended = np.cumsum((ids[:, :-1] == EOS_ID) | (ids[:, :-1] == PAD_ID), 1) > 0
    bad = ((y != PAD_ID) & (y != halt_tok) & ((y < 3) | (y >= 3 + A))) | (ended & (y != PAD_ID))
    bad |= (ids[:, :1] != BOS_ID) | (done > k - 1) & (y != PAD_ID)
    if bad.any():
        j, t = np.argwhere(bad)[0]
        raise FormalLMError(Problem(f"sequence {j} is not a sequence of this family at position "
                                    f"{t + 1} ({int(bad.any(1).sum())} bad sequences)",
                                    "pass ids of icl_batch for the same PDFAFamily"))
    return x.astype(np.int64), halt_tok


def _groups(grp: np.ndarray):
    """(starts, sizes) of the runs of equal values of ``grp``."""
    starts = np.flatnonzero(np.r_[True, grp[1:] != grp[:-1]])
    return starts, np.diff(np.r_[starts, len(grp)])


def _weights(logw: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Weights summing to 1 per group."""
    w = np.exp(logw - np.repeat(np.maximum.reduceat(logw, starts), sizes))
    return w / np.repeat(np.add.reduceat(w, starts), sizes)


def _reduce(logw: np.ndarray, grp: np.ndarray, P: int, gen, forced: np.ndarray):
    """Fearnhead-Clifford resampling (module docstring) of every group of more than P structures
    down to P; ``forced`` ones are kept whole. Returns (indices kept, in order; log weights)."""
    starts, sizes = _groups(grp)
    big = np.repeat(sizes > P, sizes)
    if not big.any():
        return np.arange(len(logw)), logw
    w = _weights(logw, starts, sizes)
    g = np.repeat(np.arange(len(sizes)), sizes)
    idx = np.flatnonzero(big)  # forced, then heaviest first within each group, by one sort:
    key = np.where(forced[idx], -1.0, np.minimum(-np.log(w[idx] + 1e-300), 1e4))
    idx = idx[np.argsort(g[idx] * 2e4 + key)]
    g, ws, fixed = g[idx], w[idx], forced[idx]
    bs = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    n = sizes[g[bs]]
    rank = np.arange(len(idx)) - np.repeat(bs, n)
    excl = np.cumsum(ws) - ws
    tail = 1.0 - (excl - np.repeat(excl[bs], n))  # weight of this and the lighter ones
    cond = ~fixed & ((rank == P - 1) | (rank < P) & (ws * (P - rank) <= tail))
    K = np.minimum.reduceat(np.where(cond, rank, P), bs)  # kept whole (heaviest first)
    c = np.maximum(tail[bs + K], 1e-300) / np.maximum(P - K, 1)
    whole = rank < np.repeat(K, n)
    prob = np.where(whole, 0.0, ws / np.repeat(c, n))
    cp = np.cumsum(prob)
    cp -= np.repeat(cp[bs] - prob[bs], n)  # within-group inclusive cumsum
    u = np.repeat(gen.random(len(bs)), n)
    chosen = whole | (np.floor(cp - u) > np.floor(cp - prob - u))
    logw = logw.copy()
    logw[idx[chosen]] = np.log(np.where(whole, ws, np.repeat(c, n))[chosen])
    keep = np.sort(np.r_[np.flatnonzero(~big), idx[chosen]])
    return keep, logw[keep]


def _run(tb: _Tables, x: np.ndarray, ts, runs: int, P: int, exact: bool, gen, cap: int):
    """Local predictive rows [runs, N, T-1, 1+A] of the targets ``x`` [N, T-1] (zero from where
    a run lost every structure: it gave an observed token probability 0). ``ts`` [N, T-1]: the
    true automaton's slot for the arc pending at each step (None: not known)."""
    N, T1 = x.shape
    out = np.zeros((N * runs, T1, tb.A + 1))
    pop = _Pop.start(N * runs, tb.M, tb.A, T1 + 1, ts is not None)
    for t in range(T1):
        xt = x[pop.grp // runs, t]
        if (xt < 0).any():
            pop, xt = pop.take(np.flatnonzero(xt >= 0)), xt[xt >= 0]
        if not len(xt):
            break
        pred = _predict(tb, pop)
        starts, sizes = _groups(pop.grp)
        w = _weights(pop.logw, starts, sizes)
        out[pop.grp[starts], t] = np.add.reduceat(w[:, None] * pred[0], starts)
        parent, slot, logw = _children(tb, pop, xt, pred)
        truth = pop.truth[parent] > 0
        if ts is not None:
            truth &= (slot < 0) | (slot == ts[pop.grp[parent] // runs, t])
        if not exact:
            keep, logw = _reduce(logw, pop.grp[parent], P, gen, truth)
            parent, slot, truth = parent[keep], slot[keep], truth[keep]
        pop = _grow(tb, pop, xt, parent, slot, logw)
        pop.truth[:] = truth
        if exact and len(pop.grp) and _groups(pop.grp)[1].max() > cap:
            raise FormalLMError(Problem(f"exact enumeration needs more than max_structures={cap} "
                                        f"lazy structures (position {t + 1})", "pass exact=False"
                                        " for the particle-filter estimate, or a larger bound"))
    return out.reshape(N, runs, T1, tb.A + 1).transpose(1, 0, 2, 3)


def _true_slots(automata, x: np.ndarray, M: int) -> np.ndarray:
    """[N, T-1]: per step, the slot (derivation 3, discovery labels; M = new) the sequence's own
    automaton gives the arc pending then (-1: none). Raises if an automaton cannot emit x."""
    out = np.full(x.shape, -1)
    for j, pdfa in enumerate(automata):
        T, q0 = pdfa.T, int(np.argmax(pdfa.init))
        label, arcs, q, pend = {q0: 0}, set(), q0, -1
        for t in np.flatnonzero(x[j] >= 0):
            out[j, t], pend, a = pend, -1, x[j, t] - 1
            if a < 0:
                q = q0
                continue
            if not T[a, q].any():
                raise FormalLMError(f"sequence {j}: its automaton cannot emit token {t + 1}")
            nxt = int(np.argmax(T[a, q]))
            if (q, a) not in arcs:  # first traversal: the arc is revealed, resolved next step
                arcs.add((q, a))
                pend = label.get(nxt, M)
                label.setdefault(nxt, len(label))
            q = nxt
    return out


def bayes_rows(family: PDFAFamily, batch: ICLBatch | np.ndarray, *, particles: int = 512,
               runs: int = 8, seed: int = 0, exact: bool | None = None,
               max_structures: int = MAX_STRUCTURES, keep_true: bool = True) -> BayesRows:
    """The Bayes-optimal in-context next-token rows of ``batch`` (or its ids) under ``family``.

    ``exact``: True enumerates lazy structures (raises :class:`FormalLMError` beyond
    ``max_structures`` per sequence); False runs ``runs`` particle filters of ``particles``
    particles (seeded by ``seed``); None picks exact iff hi^(hi k) <= max_structures.
    ``keep_true`` (for an ICLBatch): every filter keeps its sequence's true lazy structure (see
    the module docstring); without it a run can lose every structure consistent with its
    sequence (it is dead from there and stops counting; if all are, this raises).

    Example:
        >>> from formal_lm.studies.icl import icl_batch
        >>> fam = PDFAFamily(n_states=(1, 2), alphabet_size=2, strings_per_sequence=2,
        ...                  max_length=16)
        >>> b = icl_batch(fam, 2, seed=0)
        >>> bay = bayes_rows(fam, b)
        >>> bay.exact, bool(np.allclose(bay.rows.sum(-1), b.ids[:, 1:] != 0))
        (True, True)
        >>> bay.rows[0, 0, 3:5].round(4).tolist()  # first symbol: a and b alike
        [0.43, 0.43]
    """
    ids = np.asarray(getattr(batch, "ids", batch))
    x, halt_tok = _targets(family, ids)
    tb = _tables(family, ids.shape[1])
    if exact is None:
        exact = tb.M ** (tb.M * tb.k) <= max_structures
    if not exact and (particles < 1 or runs < 1):
        raise FormalLMError(f"particles={particles} and runs={runs} must be >= 1")
    R, P = (1, 1) if exact else (runs, particles)
    autos = getattr(batch, "automata", None) if keep_true and not exact else None
    ts = None if autos is None else _true_slots(autos, x, tb.M)
    chunk = max(1, _BUDGET // (max_structures if exact else R * P))
    local = np.concatenate([_run(tb, x[i:i + chunk], None if ts is None else ts[i:i + chunk], R,
                                 P, exact, rng(seed, Stream.ICL_BAYES, i), max_structures)
                            for i in range(0, len(x), chunk)], axis=1)
    lost = ((x >= 0) & (local.sum(-1) == 0).all(0)).any(1)  # [N]: no run alive somewhere
    if lost.any():
        raise FormalLMError(Problem(
            f"sequences {np.flatnonzero(lost).tolist()} have probability 0 under the family"
            + ("" if exact else ", or every run lost the structures consistent with them"),
            "pass the ICLBatch (keep_true) or more particles"))
    N, T1 = x.shape
    out = np.zeros((R, N, T1, family.vocab.size))
    out[..., 3:3 + tb.A] = local[..., 1:]
    np.put_along_axis(out, np.broadcast_to(halt_tok[None, ..., None], out.shape[:3] + (1,)),
                      local[..., :1], -1)
    rows = out.sum(0) / np.maximum((out.sum(-1) > 0).sum(0), 1)[..., None]  # alive runs' mean
    return BayesRows(rows, out, bool(exact), 0 if exact else particles, ts is not None)


# ----------------------------------------------------------------------------- scores
def _mask(batch, where):
    mask = np.asarray(getattr(batch, "ids", batch))[:, 1:] != PAD_ID
    return mask if where is None else mask & where


def kl_to_bayes(batch, logq: np.ndarray, bayes: BayesRows, *, where=None) -> tuple[float, float]:
    """(mean KL(bayes || q) per real target token, its Monte Carlo standard error) for a
    predictor's log-probabilities ``logq`` [N, T-1, V]; ``where`` [N, T-1] restricts the tokens."""
    mask = _mask(batch, where)
    with np.errstate(invalid="ignore"):
        return bayes.jackknife(lambda p: token_kl(p, logq)[mask].mean())


def bayes_ce(batch, bayes: BayesRows, *, where=None) -> tuple[float, float]:
    """(the Bayes predictor's NLL per real target token, its standard error): the lowest
    expected loss any in-context predictor can reach on the family."""
    mask, ids = _mask(batch, where), np.asarray(getattr(batch, "ids", batch))
    with np.errstate(divide="ignore"):
        return bayes.jackknife(
            lambda p: -np.log(np.take_along_axis(p, ids[:, 1:, None], -1)[..., 0][mask]).mean())


def oracle_gap(batch: ICLBatch, bayes: BayesRows, *, where=None) -> tuple[float, float]:
    """(mean KL(oracle || bayes) per real target token, its standard error): what even a perfect
    in-context learner loses against the per-automaton oracle."""
    mask = _mask(batch, where)
    with np.errstate(divide="ignore", invalid="ignore"):
        return bayes.jackknife(lambda p: token_kl(batch.oracle, np.log(p))[mask].mean())
