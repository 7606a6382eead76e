"""Bracket languages: n ~ prior, then a uniformly random word with n bracket pairs.

``nested=True`` is Dyck-k (brackets of all types nest properly); ``nested=False`` with two types is
the "context-sensitive Dyck" of Meszaros et al. (2024): each type is balanced on its own, types
may cross. Exactness comes from completion counts C[r, state] (words of r more symbols that close
everything from ``state``), built by a recursion in log space:
P(prefix) = sum_n prior(n) C[2n - |prefix|, state(prefix)] / C[2n, 0].

Cost, super-linear in the prior's largest number of pairs m: nested, the completion counts are
O(m^2) and the prefix table O(m^3) to build (0.9 s at m = 512); crossing (two depths), the
counts are O(m^3) floats in memory and the prefix table O(m^4) to build (2.6 s at m = 128, 38 s
and 1.4 GB at 256). ``limits.MAX_DYCK_PAIRS`` and ``limits.MAX_CROSSING_PAIRS`` bound m.
"""
from __future__ import annotations

import math

import numpy as np

from formal_lm import limits
from formal_lm.errors import FormalLMError, GrammarError, Problem, raise_if
from formal_lm.language import Language, LengthStats, check_count
from formal_lm.priors import Prior
from formal_lm.rules import Balanced, Nested
from formal_lm.vocab import EOS_ID, check_symbols


def _size_problems(pairs: int, nested: bool) -> list[Problem]:
    """A problem when the prior's largest number of pairs exceeds the limit of its kind."""
    top, name = (limits.MAX_DYCK_PAIRS, "MAX_DYCK_PAIRS") if nested else \
        (limits.MAX_CROSSING_PAIRS, "MAX_CROSSING_PAIRS")
    if pairs <= top:
        return []
    cost = "O(max^3) time" if nested else "O(max^3) memory and O(max^4) time"
    return [Problem(f"the prior allows up to {pairs} bracket pairs, more than the limit of {top} "
                    f"for a {'nested' if nested else 'crossing'} Dyck language (its exact tables "
                    f"take {cost})", f"lower the prior's max, or raise formal_lm.limits.{name}")]


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
        try:
            self.pairs = tuple(tuple(p) for p in pairs)
        except TypeError:
            raise GrammarError(Problem(f"pairs={pairs!r} is not a list of [open, close] pairs",
                                       "write pairs = [['(', ')'], ['[', ']']]")) from None
        self.nested, self.prior = nested, prior
        self.alphabet = tuple(x for p in self.pairs for x in p)
        problems = check_symbols(self.alphabet) + prior.problems()
        if not isinstance(nested, (bool, np.bool_)):
            problems.append(Problem(f"nested={nested!r} is not true or false",
                                    "write nested = true (Dyck-k) or nested = false (crossing)"))
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
        elif not prior.problems():
            problems += _size_problems(prior.support_max, bool(nested))
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
        self._logF = self._prefix_table()

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

    def _prefix_table(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """log F[i, state]: ln P(prefix) of any prefix of length i that ends in ``state``.

        Within n pairs words are uniform, so a prefix's probability depends only on (i, state):
        F[i, state] = sum_n prior(n) C[2n - i, state] / C[2n, 0] (the n with lo <= 2n <= hi
        only, for the language conditioned on that length range).
        """
        zero = (0,) if self.nested else (0, 0)
        F = np.full((self._counts.shape[0],) + self._counts.shape[1:], -np.inf)
        for n, lp in zip(self._n, self._log_prior):
            if lp == -np.inf or not lo <= 2 * n <= (2 * n if hi is None else hi):
                continue
            L = 2 * int(n)
            i = np.arange(L + 1)
            F[: L + 1] = np.logaddexp(F[: L + 1], lp - self._counts[(L,) + zero]
                                      + self._counts[L - i])
        return F

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
        return float(self._log_prefix_vec(np.array([i]), tuple(np.array([x]) for x in state)
                                          if not self.nested else np.array([state]))[0])

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

    def _log_prefix_vec(self, i: np.ndarray, state, F=None) -> np.ndarray:
        """ln P(prefix) for arrays of (length, state): a lookup in the prefix table (``F``, by
        default the language's own)."""
        i = np.asarray(i)
        F = self._logF if F is None else F
        I, D = F.shape[0], F.shape[1]
        d = [np.asarray(state)] if self.nested else [np.asarray(x) for x in state]
        ok = (i >= 0) & (i < I)
        for x in d:
            ok = ok & (x >= 0) & (x < D)
        idx = (np.where(ok, i, 0),) + tuple(np.where(ok, x, 0) for x in d)
        return np.where(ok, F[idx], -np.inf)

    def next_token_table(self, s) -> np.ndarray:
        s = self._s(s)
        return self.next_token_probs(self.vocab.batch([s], eos=False))[0]

    def next_token_probs(self, ids) -> np.ndarray:
        """Vectorised over the batch: one scan over time for depths (and the innermost open
        bracket), then every probability is a lookup in the prefix table."""
        return self._tables(ids, self._logF, self._log_prior)

    def _window_next_token_probs(self, ids, lo: int, hi: int) -> np.ndarray:
        """Conditioned on lo <= |s| <= hi: the prior cut to the n with lo <= 2n <= hi (its
        normaliser cancels in the rows), so the tables of a cut prefix table."""
        cache = self.__dict__.setdefault("_window_tables", {})
        if (lo, hi) not in cache:
            cut = np.where((2 * self._n >= lo) & (2 * self._n <= hi), self._log_prior, -np.inf)
            cache[(lo, hi)] = (self._prefix_table(lo, hi), cut)
        return self._tables(ids, *cache[(lo, hi)])

    def prefix_length_log_probs(self, p, max_length: int) -> np.ndarray:
        """ln P(starts with p, |s| = 2n) = ln prior(n) C[2n - |p|, state(p)] / C[2n, 0]."""
        max_length = check_count("max_length", max_length, limits.MAX_SAMPLE_LENGTH)
        p = self._s(p)
        walk, _ = self._walk(p)
        out = np.full(max_length + 1, -np.inf)
        if len(walk) < len(p) + 1:
            return out
        i, state = walk[-1]
        n = self._n[(2 * self._n >= i) & (2 * self._n <= max_length)]
        lp = self._log_prior[n - self.prior.min]
        out[2 * n] = lp - self._count(2 * n, self._zero) + self._count(2 * n - i, state)
        return out

    def _definition(self) -> dict:
        return {"family": "dyck", "pairs": [list(p) for p in self.pairs],
                "nested": bool(self.nested), "prior": self.prior}

    def _tables(self, ids, F, log_prior) -> np.ndarray:
        """Next-token rows of ``ids`` from prefix table ``F`` and prior ``log_prior``."""
        ids, out = self._probs_buffer(ids)
        B, T = ids.shape
        sym = ids[:, 1:].astype(np.int64) - 3  # [B, T-1]
        real = np.cumprod(sym >= 0, axis=1).astype(bool)  # symbols up to the first EOS/PAD
        typ, opening = np.where(real, sym // 2, 0), sym % 2 == 0
        rows = np.arange(B)
        live = np.zeros((B, T), bool)
        live[:, 0] = True
        good = np.ones(B, bool)
        if self.nested:
            depth, top = np.zeros((B, T), np.int64), np.full((B, T), -1)
            stack = np.zeros((B, T + 1), np.int64)
            d, top_now = np.zeros(B, np.int64), np.full(B, -1)
            for t in range(1, T):
                r, o, ty = real[:, t - 1], opening[:, t - 1], typ[:, t - 1]
                good &= r & (o | ((d > 0) & (top_now == ty)))
                push, pop = good & o, good & ~o
                stack[rows, d] = np.where(push, ty, stack[rows, d])
                d = d + push - pop
                top_now = np.where(d > 0, stack[rows, np.maximum(d - 1, 0)], -1)
                depth[:, t], top[:, t], live[:, t] = d, top_now, good
            i = np.broadcast_to(np.arange(T), (B, T))
            lp = self._log_prefix_vec(i, depth, F)
            up = self._log_prefix_vec(i + 1, depth + 1, F)
            down = np.where(depth > 0, self._log_prefix_vec(i + 1, depth - 1, F), -np.inf)
            with np.errstate(invalid="ignore"):
                for k in range(self.k):
                    out[..., 3 + 2 * k] = np.exp(up - lp)
                    out[..., 4 + 2 * k] = np.where(top == k, np.exp(down - lp), 0.0)
            whole = depth == 0
        else:
            steps = np.where(real, np.where(opening, 1, -1), 0)
            d1 = np.concatenate([np.zeros((B, 1), np.int64),
                                 np.cumsum(np.where(typ == 0, steps, 0), axis=1)], axis=1)
            d2 = np.concatenate([np.zeros((B, 1), np.int64),
                                 np.cumsum(np.where(typ == 1, steps, 0), axis=1)], axis=1)
            live[:, 1:] = np.cumprod(real & (d1[:, 1:] >= 0) & (d2[:, 1:] >= 0), axis=1)
            i = np.broadcast_to(np.arange(T), (B, T))
            lp = self._log_prefix_vec(i, (d1, d2), F)
            moves = [((d1 + 1, d2), d1 >= 0), ((d1 - 1, d2), d1 > 0),
                     ((d1, d2 + 1), d2 >= 0), ((d1, d2 - 1), d2 > 0)]
            with np.errstate(invalid="ignore"):
                for col, (nxt, ok) in enumerate(moves):
                    nxt_lp = self._log_prefix_vec(i + 1, nxt, F)
                    out[..., 3 + col] = np.where(ok, np.exp(nxt_lp - lp), 0.0)
            whole = (d1 == 0) & (d2 == 0)
        n_pairs = i // 2
        in_prior = (i % 2 == 0) & (n_pairs >= self.prior.min) & (n_pairs <= self.prior.support_max)
        idx = np.clip(n_pairs - self.prior.min, 0, len(self._n) - 1)
        total = self._counts[2 * self._n, 0] if self.nested else self._counts[2 * self._n, 0, 0]
        log_whole = np.where(whole & in_prior, log_prior[idx] - total[idx], -np.inf)
        with np.errstate(invalid="ignore"):
            out[..., EOS_ID] = np.exp(log_whole - lp)
        out[~(live & np.isfinite(lp))] = 0.0
        return np.nan_to_num(out, nan=0.0)

    def _sample_words(self, rng, sizes: np.ndarray) -> list:
        """Uniform words of the given numbers of pairs, all samples advanced in lockstep."""
        B = len(sizes)
        L = 2 * sizes
        m = self._counts.shape[1] - 1
        out = np.full((B, int(L.max(initial=0))), -1)
        if self.nested:
            depth = np.zeros(B, int)
            stack = np.zeros((B, int(sizes.max(initial=0)) + 1), int)
        else:
            depth = np.zeros((B, 2), int)
        rows = np.arange(B)
        for t in range(out.shape[1]):
            live = t < L
            r = np.where(live, L - t - 1, 0)
            if self.nested:
                l_open = self._counts[r, np.minimum(depth + 1, m)] + math.log(self.k)
                l_close = np.where(depth > 0, self._counts[r, np.maximum(depth - 1, 0)], -np.inf)
                top = np.maximum(l_open, l_close)
                top = np.where(np.isfinite(top), top, 0.0)
                w_open, w_close = np.exp(l_open - top), np.exp(l_close - top)
                u = rng.random(B) * (w_open + w_close)
                close = u >= w_open
                typ = np.where(close, stack[rows, np.maximum(depth - 1, 0)],
                               rng.integers(self.k, size=B))
                sym = 2 * typ + close
                stack[rows, depth] = np.where(close | ~live, stack[rows, depth], typ)
                depth = np.where(live, depth + np.where(close, -1, 1), depth)
            else:
                d1, d2 = depth[:, 0], depth[:, 1]
                logw = np.stack([
                    self._counts[r, np.minimum(d1 + 1, m), d2],
                    np.where(d1 > 0, self._counts[r, np.maximum(d1 - 1, 0), d2], -np.inf),
                    self._counts[r, d1, np.minimum(d2 + 1, m)],
                    np.where(d2 > 0, self._counts[r, d1, np.maximum(d2 - 1, 0)], -np.inf)],
                    axis=1)
                top = logw.max(1, keepdims=True)
                w = np.exp(logw - np.where(np.isfinite(top), top, 0.0))
                cum = np.cumsum(w, axis=1)
                u = rng.random(B) * cum[:, -1]
                sym = (cum < u[:, None]).sum(1)
                step = np.where(sym % 2 == 0, 1, -1)
                depth = depth.copy()
                depth[rows, sym // 2] += np.where(live, step, 0)
            out[:, t] = np.where(live, sym, -1)
        return [tuple(self.alphabet[x] for x in row[row >= 0]) for row in out]

    def _sample(self, n: int, *, seed: int, length: int | None):
        rng = np.random.default_rng(seed)
        if length is not None:
            if length % 2 or not (self.prior.min <= length // 2 <= self.prior.support_max) or \
                    self._log_prior[length // 2 - self.prior.min] == -np.inf:
                raise FormalLMError(Problem(f"{self.name!r} has no strings of length={length}",
                                            "pick an even length the prior allows"))
            sizes = np.full(n, length // 2)
        else:
            sizes = self.prior.sample(rng, n)
        return self._sample_words(rng, np.asarray(sizes, int))

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
