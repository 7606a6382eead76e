"""Bracket languages: n ~ prior, then a uniformly random word with n bracket pairs.

``nested=True`` is Dyck-k (brackets of all types nest properly); ``nested=False`` with two types is
the "context-sensitive Dyck" of Meszaros et al. (2024): each type is balanced on its own, types
may cross. Exactness comes from completion counts C[r, state] (words of r more symbols that close
everything from ``state``), built by a recursion in log space:
P(prefix) = sum_n prior(n) C[2n - |prefix|, state(prefix)] / C[2n, 0].
"""
from __future__ import annotations

import math

import numpy as np

from formal_lm.errors import FormalLMError, Problem, raise_if
from formal_lm.language import Language, LengthStats
from formal_lm.priors import Prior
from formal_lm.rules import Balanced, Nested
from formal_lm.vocab import EOS_ID, check_symbols


class DyckLanguage(Language):
    """Dyck-k (``nested=True``) or two crossing bracket types (``nested=False``).

    Rules: one ``balanced`` rule per pair (R1, R2, ...), plus ``nested`` (the next R) for Dyck-k
    with k > 1, so the language is exactly the intersection of its rules (and the prior's support).

    Example:
        >>> from formal_lm.priors import Uniform
        >>> d = DyckLanguage("dyck1", [("(", ")")], Uniform(1, 2))
        >>> d.prob("()"), d.prob("(())"), d.prob("()()")
        (0.5, 0.25, 0.25)
    """

    def __init__(self, name: str, pairs, prior: Prior, *, nested: bool = True,
                 description: str = ""):
        self.name, self.description = name, description
        self.pairs = tuple(tuple(p) for p in pairs)
        self.nested, self.prior = nested, prior
        self.alphabet = tuple(x for p in self.pairs for x in p)
        problems = check_symbols(self.alphabet) + prior.problems()
        if any(len(p) != 2 for p in self.pairs):
            problems.append(Problem(f"pairs={list(self.pairs)} must be [open, close] pairs",
                                    "write pairs = [['(', ')'], ['[', ']']]"))
        if not nested and len(self.pairs) != 2:
            problems.append(Problem(f"nested=false needs exactly 2 pairs, got {len(self.pairs)}",
                                    "use two bracket pairs, or nested = true"))
        if prior.support_max is None:
            problems.append(Problem("a bracket language needs a prior with a finite maximum",
                                    "set max on the prior (e.g. geometric with max = 32)"))
        elif prior.min == 0 and prior.support_max == 0:
            problems.append(Problem("the prior only allows the empty string",
                                    "give the prior a max >= 1"))
        raise_if(problems)
        self.k = len(self.pairs)
        self.rules = tuple(Balanced(f"R{i + 1}", f"{o}{c} balanced", o, c)
                           for i, (o, c) in enumerate(self.pairs))
        if nested and self.k > 1:
            self.rules += (Nested(f"R{self.k + 1}", "bracket types nest properly", self.pairs),)
        self._kind = {}
        for t, (o, c) in enumerate(self.pairs):
            self._kind[o], self._kind[c] = (t, +1), (t, -1)
        self._n = np.arange(prior.min, prior.support_max + 1)
        self._log_prior = prior.log_pmf(self._n)
        self._counts = self._completion_counts(2 * prior.support_max)

    def _completion_counts(self, R: int) -> np.ndarray:
        """log C[r, d] (nested: depth d) or log C[r, d1, d2] (two crossing types)."""
        D = R // 2 + 2
        shape = (R + 1, D) if self.nested else (R + 1, D, D)
        C = np.full(shape, -np.inf)
        with np.errstate(divide="ignore"):
            if self.nested:
                C[0, 0] = 0.0
                logk = math.log(self.k)
                for r in range(1, R + 1):
                    up = np.append(C[r - 1, 1:], -np.inf) + logk  # open one of k types
                    down = np.insert(C[r - 1, :-1], 0, -np.inf)  # close (forced type)
                    C[r] = np.logaddexp(up, down)
            else:
                C[0, 0, 0] = 0.0
                ninf_row = np.full((1, D), -np.inf)
                for r in range(1, R + 1):
                    p = C[r - 1]
                    terms = [np.vstack([p[1:], ninf_row]), np.vstack([ninf_row, p[:-1]]),
                             np.hstack([p[:, 1:], ninf_row.T]), np.hstack([ninf_row.T, p[:, :-1]])]
                    C[r] = np.logaddexp.reduce(np.stack(terms), axis=0)
        return C

    def _count(self, r, state) -> np.ndarray:
        r = np.asarray(r)
        ok = (r >= 0) & (r < self._counts.shape[0])
        rr = np.where(ok, r, 0)
        d = np.asarray(state)
        if self.nested:
            inside = d < self._counts.shape[1]
            val = self._counts[rr, np.minimum(d, self._counts.shape[1] - 1)]
        else:
            inside = (d[0] < self._counts.shape[1]) & (d[1] < self._counts.shape[1])
            m = self._counts.shape[1] - 1
            val = self._counts[rr, min(d[0], m), min(d[1], m)]
        return np.where(ok & inside, val, -np.inf)

    def _walk(self, s):
        """(length, state) after each prefix of s, or None where the prefix breaks a bracket rule."""
        stack, depths = [], [0] * self.k
        out = [(0, tuple(depths) if not self.nested else 0)]
        for t, x in enumerate(s):
            typ, step = self._kind[x]
            if step > 0:
                stack.append(typ)
                depths[typ] += 1
            else:
                if depths[typ] == 0 or (self.nested and stack[-1] != typ):
                    break
                depths[typ] -= 1
                if self.nested:
                    stack.pop()
            out.append((t + 1, len(stack) if self.nested else tuple(depths)))
        return out, stack

    def _log_prefix(self, i, state) -> float:
        terms = self._log_prior + self._count(2 * self._n - i, state) - self._count(2 * self._n,
                                                                                    self._zero)
        return float(np.logaddexp.reduce(terms))

    def _log_whole(self, i, state) -> float:
        if state != self._zero or i % 2:
            return -math.inf
        n = i // 2
        if n < self.prior.min or n > self.prior.support_max:
            return -math.inf
        j = n - self.prior.min
        return float(self._log_prior[j] - self._count(2 * n, self._zero))

    @property
    def _zero(self):
        return 0 if self.nested else (0, 0)

    def log_prob(self, s) -> float:
        s = self._s(s)
        walk, _ = self._walk(s)
        if len(walk) < len(s) + 1:
            return -math.inf
        return self._log_whole(*walk[-1])

    def prefix_log_prob(self, p) -> float:
        p = self._s(p)
        walk, _ = self._walk(p)
        return -math.inf if len(walk) < len(p) + 1 else self._log_prefix(*walk[-1])

    def _moves(self, state, stack):
        """(symbol index, next state) for every legal next bracket."""
        out = []
        for t, (o, c) in enumerate(self.pairs):
            if self.nested:
                out.append((2 * t, state + 1))
                if stack and stack[-1] == t:
                    out.append((2 * t + 1, state - 1))
            else:
                up, down = list(state), list(state)
                up[t] += 1
                out.append((2 * t, tuple(up)))
                if state[t] > 0:
                    down[t] -= 1
                    out.append((2 * t + 1, tuple(down)))
        return out

    def next_token_table(self, s) -> np.ndarray:
        s = self._s(s)
        out = np.zeros((len(s) + 1, self.vocab.size))
        stack, state = [], self._zero
        for t in range(len(s) + 1):
            lp = self._log_prefix(t, state)
            if lp == -math.inf:
                break
            out[t, EOS_ID] = math.exp(self._log_whole(t, state) - lp)
            for sym, nxt in self._moves(state, stack):
                out[t, sym + 3] = math.exp(self._log_prefix(t + 1, nxt) - lp)
            if t == len(s):
                break
            typ, step = self._kind[s[t]]
            legal = {self.alphabet[i]: nxt for i, nxt in self._moves(state, stack)}
            if s[t] not in legal:
                break
            state = legal[s[t]]
            if self.nested:
                stack = stack + [typ] if step > 0 else stack[:-1]
        return out

    def _sample_word(self, rng, n):
        out, stack, state, L = [], [], self._zero, 2 * n
        for t in range(L):
            moves = self._moves(state, stack)
            logw = np.array([self._count(L - t - 1, nxt) for _, nxt in moves])
            w = np.exp(logw - logw.max())
            i, state = moves[rng.choice(len(moves), p=w / w.sum())]
            typ = i // 2
            out.append(self.alphabet[i])
            if self.nested:
                stack = stack + [typ] if i % 2 == 0 else stack[:-1]
        return tuple(out)

    def sample(self, n: int, *, seed: int = 0, length: int | None = None):
        rng = np.random.default_rng(seed)
        if length is not None:
            if length % 2 or not (self.prior.min <= length // 2 <= self.prior.support_max) or \
                    self._log_prior[length // 2 - self.prior.min] == -np.inf:
                raise FormalLMError(Problem(f"{self.name!r} has no strings of length={length}",
                                            "pick an even length the prior allows"))
            sizes = np.full(n, length // 2)
        else:
            sizes = self.prior.sample(rng, n)
        return [self._sample_word(rng, int(m)) for m in sizes]

    def entropy(self) -> float:
        p = np.exp(self._log_prior)
        logw = np.array([float(self._count(2 * m, self._zero)) for m in self._n])
        return float(-(p * self._log_prior).sum() + (p * logw).sum())

    def expected_length(self) -> float:
        return float(2 * (np.exp(self._log_prior) * self._n).sum())

    def length_stats(self, max_length: int) -> LengthStats:
        prob, surprisal, eos = (np.zeros(max_length + 1) for _ in range(3))
        for j, m in enumerate(self._n):
            L = 2 * int(m)
            if L > max_length or self._log_prior[j] == -np.inf:
                continue
            p = math.exp(self._log_prior[j])
            whole = self._log_whole(L, self._zero)  # every word of size m has this probability
            prob[L] += p
            surprisal[L] -= p * whole
            eos[L] -= p * (whole - self._log_prefix(L, self._zero))
        return LengthStats(prob, surprisal, eos, max(0.0, 1.0 - prob.sum()))
