"""Probabilistic finite-state automata (PFSA); a deterministic one (PDFA) is the common case.

Arrays: ``T[a]`` is the [S, S] matrix of arc probabilities for symbol a, ``rho`` the [S] halting
probabilities, ``init`` the [S] start distribution; every state's arcs and halting sum to 1.
M = sum_a T[a]. The automaton is tight (halts with probability 1) iff the spectral radius of M
is below 1 on its reachable part (unreachable states are kept but never run, so they need not
be tight). Expected state visits are init (I - M)^-1, over the reachable states.

Construction is cubic in the number of states S (a linear solve and the eigenvalues of [S, S]
matrices; the unambiguity check explores pairs of states, at most 40,000) and the arc table is
A x S x S floats: ``limits.MAX_PFSA_STATES`` and ``limits.MAX_PFSA_TABLE`` bound both.
"""
from __future__ import annotations

import math

import networkx as nx
import numpy as np

from formal_lm import limits
from formal_lm.errors import FormalLMError, GrammarError, Location, Problem, raise_if
from formal_lm.language import Language, LengthStats, check_count, rules_definition
from formal_lm.restricted import logsumexp
from formal_lm.rules import Rule
from formal_lm.vocab import EOS_ID, check_symbols

_TOL = 1e-9


def _xlogx(p):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


class PFSA(Language):
    """A probabilistic finite-state automaton over an alphabet.

    Args:
        arcs: ``(source, symbol, target, prob)`` tuples.
        final: ``{state: halting prob}`` (missing states halt with probability 0).
        start: the start state (or ``{state: prob}`` for a start distribution).
        locations: optional ``{arc index or ('final', state): Location}`` for error messages.

    Example:
        >>> even = PFSA("parity", [("e", "1", "o", 0.5), ("e", "0", "e", 0.25),
        ...                        ("o", "1", "e", 0.5), ("o", "0", "o", 0.5)],
        ...             final={"e": 0.25}, start="e", alphabet=("0", "1"))
        >>> round(even.prob("11"), 6), even.accepts("1")
        (0.0625, False)
    """

    def __init__(self, name: str, arcs, final: dict, start, *, alphabet=None,
                 rules: tuple[Rule, ...] = (), description: str = "", locations=None):
        self.name, self.description, self.rules = name, description, tuple(rules)
        arcs = [tuple(a) for a in arcs]
        locations = locations or {}
        if alphabet is None:
            alphabet = tuple(dict.fromkeys(a[1] for a in arcs))
        self.alphabet = tuple(alphabet)
        start = {start: 1.0} if not isinstance(start, dict) else dict(start)
        states = list(dict.fromkeys([*start, *[a[0] for a in arcs], *[a[2] for a in arcs],
                                     *final]))
        self.states = tuple(states)
        idx = {q: i for i, q in enumerate(states)}
        S, A = len(states), len(self.alphabet)
        _check_size(S, A)
        problems = check_symbols(self.alphabet)
        sym = {s: i for i, s in enumerate(self.alphabet)}
        T = np.zeros((A, S, S))
        for k, (q, a, r, p) in enumerate(arcs):
            loc = locations.get(k)
            if a not in sym:
                problems.append(Problem(f"arc {q} {a} {r}: symbol={a!r} is not in the alphabet "
                                        f"{self.alphabet}", "add it to the alphabet", loc))
                continue
            if not (isinstance(p, (int, float)) and 0 < p <= 1):
                problems.append(Problem(f"arc {q} {a} {r}: prob={p!r} is not in (0, 1]",
                                        "give each arc a probability in (0, 1]", loc))
                continue
            T[sym[a], idx[q], idx[r]] += p
        rho, unknown = np.zeros(S), set()  # unknown: halting probabilities reported as bad
        for q, p in final.items():
            if not (isinstance(p, (int, float)) and 0 <= p <= 1):
                problems.append(Problem(f"state {q}: halting prob={p!r} is not in [0, 1]",
                                        "use a probability", locations.get(("final", q))))
                unknown.add(idx[q])
            else:
                rho[idx[q]] = p
        init = np.zeros(S)
        for q, p in start.items():
            init[idx[q]] = p
        if abs(init.sum() - 1) > _TOL:
            problems.append(Problem(f"start probabilities sum to {init.sum():.6g}, not 1",
                                    "make the start distribution sum to 1"))
        out_mass = T.sum(axis=(0, 2)) + rho
        for i, q in enumerate(states):
            if abs(out_mass[i] - 1) > _TOL:
                first = next((k for k, a in enumerate(arcs) if a[0] == q), None)
                problems.append(Problem(
                    f"state {q}: arc and halting probabilities sum to {out_mass[i]:.6g}, not 1",
                    "make each state's outgoing arcs plus its halting probability sum to 1",
                    locations.get(first) or locations.get(("final", q))))
        self.T, self.rho, self.init = T, rho, init
        self.M = T.sum(0)
        self._check_graph(locations, problems, unknown)  # raises every problem, these too
        self.deterministic = bool(((T > 0).sum(axis=2) <= 1).all() and (init > 0).sum() == 1)
        # path entropy = string entropy iff no string has two paths (a PDFA never has)
        self.entropy_is_exact = self.deterministic or self._unambiguous()
        with np.errstate(divide="ignore"):
            self._logT, self._logrho = np.log(T), np.log(rho)
        self._visits = self._expected_visits()
        self._cum = None

    def _expected_visits(self) -> np.ndarray:
        """init (I - M)^-1, solved on the reachable states (the others are visited 0 times; an
        unreachable part need not be tight)."""
        S = len(self.states)
        if len(self._reach) == S:
            return np.linalg.solve((np.eye(S) - self.M).T, self.init)
        r = np.array(sorted(self._reach), dtype=int)
        out = np.zeros(S)
        out[r] = np.linalg.solve((np.eye(len(r)) - self.M[np.ix_(r, r)]).T, self.init[r])
        return out

    def _check_graph(self, locations, problems, unknown=frozenset()):
        """Adds the structural problems (no halting state reachable, states that cannot halt) to
        ``problems``, then tightness when there are none, and raises them all at once (states
        in ``unknown``, whose halting probability is already reported, count as halting)."""
        S = len(self.states)
        g = nx.DiGraph()
        g.add_nodes_from(range(S))
        g.add_edges_from(zip(*np.nonzero(self.M)))
        reach = set().union(*(nx.descendants(g, int(q)) | {int(q)} for q in np.flatnonzero(self.init)))
        halting = set(np.flatnonzero(self.rho).tolist()) | set(unknown)
        coreach = set().union(*(nx.ancestors(g, q) | {q} for q in halting)) if halting else set()
        if not reach & halting:
            problems.append(Problem(f"no string has positive probability in {self.name!r}: no "
                                    "reachable state halts", "give a reachable state a halting "
                                    "probability"))
        for q in sorted(reach - coreach):
            problems.append(Problem(
                f"state {self.states[q]} is reachable but can never halt, so probability leaks "
                "(the automaton is not tight)", "add a path from it to a halting state or remove it",
                locations.get(("state", self.states[q]))))
        self._reach = reach
        if not problems:  # tightness of the reachable part: unreachable states never run
            r = sorted(reach)
            sub = self.M if len(r) == S else self.M[np.ix_(r, r)]
            radius = max(abs(np.linalg.eigvals(sub))) if S else 0.0
            if radius >= 1 - 1e-12:
                problems.append(Problem(f"spectral radius of the transition matrix is "
                                        f"{radius:.6g} >= 1: the automaton is not tight",
                                        "raise halting probabilities"))
        raise_if(problems)

    def _unambiguous(self, max_pairs: int = 40_000) -> bool:
        """No string has two accepting paths: no pair of distinct states is reachable from two
        start states on one string and can then halt on one string (the squared automaton).
        False (not proven) above ``max_pairs`` reachable pairs."""
        succ = [[np.flatnonzero(self.T[a, q]) for q in range(len(self.states))]
                for a in range(len(self.alphabet))]
        starts = np.flatnonzero(self.init)
        seen = {(int(p), int(q)) for p in starts for q in starts}
        todo, edges = list(seen), {}
        while todo:
            pair = todo.pop()
            p, q = pair
            out = edges[pair] = [(int(r), int(t)) for a in range(len(succ))
                                 for r in succ[a][p] for t in succ[a][q]]
            for nxt in out:
                if nxt not in seen:
                    if len(seen) >= max_pairs:
                        return False
                    seen.add(nxt)
                    todo.append(nxt)
        # backwards from the pairs that both halt
        back: dict = {}
        for pair, out in edges.items():
            for nxt in out:
                back.setdefault(nxt, []).append(pair)
        live = {(p, q) for p, q in seen if self.rho[p] > 0 and self.rho[q] > 0}
        todo = list(live)
        while todo:
            for prev in back.get(todo.pop(), ()):
                if prev not in live:
                    live.add(prev)
                    todo.append(prev)
        return all(p == q for p, q in live)

    # ----- forward algorithm (scaled) -------------------------------------------------------------
    def _ids(self, s):
        sym = {a: i for i, a in enumerate(self.alphabet)}
        return [sym[x] for x in self._s(s)]

    def _forward(self, ids):
        """Scaled forward vectors and accumulated log scales after each prefix."""
        alpha, logscale = self.init.copy(), 0.0
        out = [(alpha, logscale)]
        for a in ids:
            alpha = alpha @ self.T[a]
            z = alpha.sum()
            if z == 0:
                return out, False
            alpha, logscale = alpha / z, logscale + math.log(z)
            out.append((alpha, logscale))
        return out, True

    def log_prob(self, s) -> float:
        fw, ok = self._forward(self._ids(s))
        if not ok:
            return -math.inf
        alpha, ls = fw[-1]
        z = alpha @ self.rho
        return ls + math.log(z) if z > 0 else -math.inf

    def prefix_log_prob(self, p) -> float:
        fw, ok = self._forward(self._ids(p))
        return fw[-1][1] if ok else -math.inf  # trimmed and tight: every state halts w.p. 1

    def next_token_table(self, s) -> np.ndarray:
        ids = self._ids(s)
        fw, _ = self._forward(ids)
        out = np.zeros((len(ids) + 1, self.vocab.size))
        for t, (alpha, _) in enumerate(fw):
            out[t, EOS_ID] = alpha @ self.rho
            out[t, 3:] = np.einsum("s,ast->a", alpha, self.T)
        return out

    def next_token_probs(self, ids) -> np.ndarray:
        """Vectorised over the batch: a scan of the forward vectors over time (for a PDFA, a scan
        of states and a lookup of each state's next-token row)."""
        ids, out = self._probs_buffer(ids)
        B, T = ids.shape
        if self.deterministic:
            return self._pdfa_next_token_probs(ids)
        alpha = np.tile(self.init, (B, 1))
        live = np.ones(B, bool)
        emit = self.T.sum(axis=2).T  # [S, A]: prob of emitting each symbol from each state
        for t in range(T):
            if t > 0:
                tok = ids[:, t]
                is_sym = tok >= 3
                live &= is_sym
                a = np.where(is_sym, tok - 3, 0)
                alpha = np.einsum("bs,bst->bt", alpha, self.T[a])
                z = alpha.sum(1, keepdims=True)
                live &= z[:, 0] > 0
                alpha = np.where(z > 0, alpha / np.where(z > 0, z, 1), 0.0)
            out[:, t, EOS_ID] = alpha @ self.rho
            out[:, t, 3:] = alpha @ emit
            out[~live, t] = 0.0
        return out

    def _pdfa_next_token_probs(self, ids):
        B, T = ids.shape
        S, A = len(self.states), len(self.alphabet)
        table = np.zeros((S + 1, self.vocab.size))  # state S: dead
        table[:S, EOS_ID] = self.rho
        table[:S, 3:] = self.T.sum(axis=2).T
        succ = np.full((S + 1, A), S)
        a_idx, q_idx, r_idx = np.nonzero(self.T)
        succ[q_idx, a_idx] = r_idx
        state = np.full(B, int(np.argmax(self.init)))
        states = np.empty((B, T), int)
        for t in range(T):
            if t > 0:
                tok = ids[:, t]
                state = np.where(tok >= 3, succ[state, np.clip(tok - 3, 0, A - 1)], S)
            states[:, t] = state
        return table[states]

    # ----- sampling ---------------------------------------------------------------------------------
    def _sample(self, n: int, *, seed: int, length: int | None):
        rng = np.random.default_rng(seed)
        S, A = len(self.states), len(self.alphabet)
        state = rng.choice(S, size=n, p=self.init)
        out = [[] for _ in range(n)]
        if length is None:
            # options per state: A*S arcs then halting, as one cumulative table
            table = np.concatenate([self.T.transpose(1, 0, 2).reshape(S, A * S), self.rho[:, None]],
                                   axis=1)
            cum = np.cumsum(table, axis=1)
            cum[:, -1] = 1.0 + 1e-12
            live, who, what = np.arange(n), [], []
            while len(live):
                u = rng.random(len(live))
                choice = (cum[state[live]] < u[:, None]).sum(axis=1)
                go = choice != A * S
                who.append(live[go])
                what.append(choice[go] // S)
                state[live[go]] = choice[go] % S
                live = live[go]
            who, what = np.concatenate(who), np.concatenate(what)
            order = np.argsort(who, kind="stable")  # emission order is kept within a sample
            syms = np.array(self.alphabet, dtype=object)[what[order]]
            bounds = np.cumsum(np.bincount(who, minlength=n))[:-1]
            return [tuple(x) for x in np.split(syms, bounds)]
        beta = self._log_backward(length)  # beta[k][q] = ln P(exactly k more symbols, halt | q)
        with np.errstate(divide="ignore"):
            start_w = np.where(self.init > 0, np.log(np.where(self.init > 0, self.init, 1.0))
                               + beta[length], -np.inf)
        if not np.isfinite(start_w).any():
            raise FormalLMError(Problem(f"{self.name!r} has no strings of length={length}",
                                        "pick a length with P(|s| = length) > 0"))
        w = np.exp(start_w - start_w.max()) * (self.init > 0)
        state = rng.choice(S, size=n, p=w / w.sum())
        for k in range(length, 0, -1):
            for b in range(n):
                logw = self._logT[:, state[b], :] + beta[k - 1][None, :]
                flat = np.exp(logw - logw.max()).ravel()
                c = rng.choice(A * S, p=flat / flat.sum())
                out[b].append(self.alphabet[c // S])
                state[b] = c % S
        return [tuple(x) for x in out]

    def _log_backward(self, L):
        beta = [self._logrho.copy()]
        with np.errstate(divide="ignore"):
            for _ in range(L):
                prev = beta[-1]
                m = np.max(prev[np.isfinite(prev)]) if np.isfinite(prev).any() else 0.0
                beta.append(np.log(self.M @ np.exp(prev - m)) + m)
        return beta

    # ----- exact expectations -------------------------------------------------------------------------
    def entropy(self) -> float:
        """The path entropy in nats: the string entropy where ``entropy_is_exact`` (a PDFA, or an
        automaton with at most one path per string). Where some string has two paths it is an
        upper bound on the string entropy; ``optimal_loss()`` then estimates the string entropy
        (Monte Carlo, with a standard error)."""
        local = -(_xlogx(self.T).sum(axis=(0, 2)) + _xlogx(self.rho))
        return float(self._visits @ local - _xlogx(self.init).sum())  # + the start's entropy

    def expected_length(self) -> float:
        return float(self._visits @ (1 - self.rho))

    def length_stats(self, max_length: int) -> LengthStats:
        prob, surprisal, eos = self._length_arrays(max_length, self.entropy_is_exact)
        return LengthStats(prob, surprisal, eos, max(0.0, 1.0 - prob.sum()))

    def _derivation_surprisal(self, max_length: int) -> np.ndarray:
        """E[-ln p(path); |s| = L]: the path surprisal by length (the string's where
        ``entropy_is_exact``)."""
        return self._length_arrays(max_length, True)[1]

    def _length_arrays(self, max_length: int, paths: bool):
        prob = np.zeros(max_length + 1)
        # one path per string: path surprisal = string surprisal; but E[-ln p(EOS | s)] needs the
        # state after a prefix to be known, which only a PDFA guarantees
        surprisal = np.zeros(max_length + 1) if paths else None
        eos = np.zeros(max_length + 1) if self.deterministic else None
        a, b = self.init.copy(), -_xlogx(self.init)  # mass and mass-weighted surprisal
        arc_surprisal = -_xlogx(self.T).sum(0)  # [S, S]: sum_a T_a (-ln T_a)
        halt_surprisal = -_xlogx(self.rho)
        for L in range(max_length + 1):
            prob[L] = a @ self.rho
            if surprisal is not None:
                surprisal[L] = b @ self.rho + a @ halt_surprisal
                b = b @ self.M + a @ arc_surprisal
            if eos is not None:
                eos[L] = a @ halt_surprisal
            a = a @ self.M
        return prob, surprisal, eos

    # ----- conditioned on a length range (Language.restrict) ------------------------------------
    def prefix_length_log_probs(self, p, max_length: int) -> np.ndarray:
        """ln P(starts with p, |s| = L) = ln alpha(p) M^(L - |p|) rho: the forward vector of
        ``p`` times powers of the transition matrix into the halting vector."""
        max_length = check_count("max_length", max_length, limits.MAX_SAMPLE_LENGTH)
        ids = self._ids(p)
        out = np.full(max_length + 1, -np.inf)
        fw, ok = self._forward(ids)
        if not ok or len(ids) > max_length:
            return out
        alpha, ls = fw[-1]
        with np.errstate(divide="ignore"):
            la = np.log(alpha)
        for k, beta in enumerate(self._log_backward(max_length - len(ids))):
            out[len(ids) + k] = ls + logsumexp(la + beta)
        return out

    def _window_backward(self, lo: int, hi: int) -> np.ndarray:
        """[hi + 2, S] ln R_t: R_t(q) = sum_{k = max(0, lo - t)}^{hi - t} (M^k rho)_q, the
        probability from state q after t symbols of ending with a length in [lo, hi]; by
        R_t = [t >= lo] rho + M R_{t+1} (R_{hi+1} = 0) in log space, entry by entry."""
        cache = self.__dict__.setdefault("_window_cache", {})
        if (lo, hi) not in cache:
            with np.errstate(divide="ignore"):
                logM = np.log(self.M)
            R = np.full((hi + 2, len(self.states)), -np.inf)
            for t in range(hi, -1, -1):
                R[t] = logsumexp(logM + R[t + 1][None, :], axis=1)
                if t >= lo:
                    R[t] = np.logaddexp(R[t], self._logrho)
            cache[(lo, hi)] = R
        return cache[(lo, hi)]

    def _window_next_token_probs(self, ids, lo: int, hi: int) -> np.ndarray:
        """The forward scan of ``next_token_probs``, each row weighted by ln R (above)."""
        ids, out = self._probs_buffer(ids)
        B, T = ids.shape
        R = self._window_backward(lo, hi)
        alpha, live = np.tile(self.init, (B, 1)), np.ones(B, bool)
        with np.errstate(divide="ignore", invalid="ignore"):
            for t in range(min(T, hi + 1)):
                if t > 0:
                    tok = ids[:, t]
                    live &= tok >= 3
                    alpha = np.einsum("bs,bst->bt", alpha, self.T[np.where(tok >= 3, tok - 3, 0)])
                    z = alpha.sum(1, keepdims=True)
                    live &= z[:, 0] > 0
                    alpha = np.where(z > 0, alpha / np.where(z > 0, z, 1), 0.0)
                eos = logsumexp(np.log(alpha) + self._logrho, axis=1) if t >= lo else \
                    np.full(B, -np.inf)
                emit = np.log(np.einsum("bs,ast->bat", alpha, self.T))  # [B, A, S]
                logs = np.concatenate([eos[:, None], logsumexp(emit + R[t + 1], axis=2)], 1)
                top = logs.max(1, keepdims=True)
                live &= np.isfinite(top[:, 0])
                w = np.exp(logs - np.where(live[:, None], top, 0.0))
                w = np.where(live[:, None], w / w.sum(1, keepdims=True), 0.0)
                out[:, t, EOS_ID], out[:, t, 3:] = w[:, 0], w[:, 1:]
        return out

    def _definition(self) -> dict:
        arcs = [[int(a), int(q), int(r), float(self.T[a, q, r])]
                for a, q, r in zip(*np.nonzero(self.T))]
        return {"family": "pfsa", "alphabet": list(self.alphabet), "arcs": arcs,
                "halt": self.rho.tolist(), "start": self.init.tolist(),
                "rules": rules_definition(self.rules)}

def _check_size(S: int, A: int) -> None:
    """A GrammarError when the automaton is larger than ``limits.MAX_PFSA_STATES`` or
    ``limits.MAX_PFSA_TABLE``."""
    if S > limits.MAX_PFSA_STATES:
        raise GrammarError(Problem(f"the automaton has {S} states, more than the limit of "
                                   f"{limits.MAX_PFSA_STATES}", "use fewer states, or raise "
                                   "formal_lm.limits.MAX_PFSA_STATES (construction is cubic in "
                                   "them)"))
    if A * S * S > limits.MAX_PFSA_TABLE:
        raise GrammarError(Problem(f"{A} symbols x {S} states x {S} states = {A * S * S} arc "
                                   f"table entries, more than the limit of "
                                   f"{limits.MAX_PFSA_TABLE}", "use fewer states or symbols, or "
                                   "raise formal_lm.limits.MAX_PFSA_TABLE"))


def dfa_to_pfsa(name: str, transitions: dict, start, accepting, *, alphabet, stop_prob: float,
                rules=(), description="", location: Location | None = None) -> PFSA:
    """A DFA made a distribution: at each state, halt with ``stop_prob`` where accepting and
    spread the rest uniformly over symbols that can still reach acceptance (dead states trimmed).

    ``transitions`` maps ``(state, symbol) -> state``.
    """
    g = nx.DiGraph()
    g.add_nodes_from({start, *accepting, *[q for q, _ in transitions], *transitions.values()})
    g.add_edges_from((q, r) for (q, _), r in transitions.items())
    alive = set().union(*(nx.ancestors(g, q) | {q} for q in accepting)) if accepting else set()
    if start not in alive:
        raise FormalLMError(Problem(f"the DFA {name!r} accepts no string", "check accepting states",
                                    location))
    if not 0 < stop_prob < 1:
        raise FormalLMError(Problem(f"stop_prob={stop_prob!r} is not in (0, 1)",
                                    "use e.g. stop_prob = 0.2", location))
    arcs, final = [], {}
    for q in sorted(alive, key=str):
        outs = [(a, transitions[(q, a)]) for a in alphabet
                if (q, a) in transitions and transitions[(q, a)] in alive]
        halt = q in accepting
        p_halt = (stop_prob if outs else 1.0) if halt else 0.0
        final[q] = p_halt
        arcs += [(q, a, r, (1 - p_halt) / len(outs)) for a, r in outs]
    return PFSA(name, arcs, final, start, alphabet=alphabet, rules=rules, description=description)


def random_pdfa(n_states: int, alphabet, *, seed: int = 0, density: float = 1.0,
                stop_prob: tuple[float, float] = (0.05, 0.3), name: str | None = None) -> PFSA:
    """A random probabilistic DFA: every state has arcs on about ``density`` of the symbols
    (at least one; targets uniform), halting probability uniform in ``stop_prob`` and the rest
    split by a flat Dirichlet. Always tight (every state halts with positive probability).
    """
    if n_states < 1 or not alphabet or not 0 < density <= 1:
        raise FormalLMError(f"random_pdfa needs n_states >= 1, a non-empty alphabet and "
                            f"0 < density <= 1 (got n_states={n_states}, density={density})")
    rng = np.random.default_rng(seed)
    alphabet = tuple(alphabet)
    arcs, final = [], {}
    for q in range(n_states):
        k = max(1, int(round(density * len(alphabet))))
        syms = rng.choice(len(alphabet), size=k, replace=False)
        halt = float(rng.uniform(*stop_prob))
        w = rng.dirichlet(np.ones(k)) * (1 - halt)
        final[q] = halt
        arcs += [(q, alphabet[a], int(rng.integers(n_states)), float(p)) for a, p in zip(syms, w)]
    # exact normalisation after float rounding
    return PFSA(name or f"random-pdfa-{n_states}-{seed}", arcs, final, 0, alphabet=alphabet)
