"""Length-aware completion oracles: can prefix ``p`` be completed into a string of length ``L``?

Strategies walk symbol by symbol and only take steps this oracle allows, so every drawn string
is in the language and every choice is a hypothesis primitive that shrinks (the length toward
the shortest allowed, each symbol toward the first allowed one in alphabet order).

Families with closed forms (PFSA, counter, Dyck) get exact, fast oracles. Any other
``Language`` (PCFGs included) gets a conservative one: a trie of strings known to have length L
(exact samples ``lang.sample(64, seed=L, length=L)``, a fixed pool, never a drawn seed) grown by a
small depth-first search for witnesses, so walks never dead-end.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

DFS_BUDGET = 24
POOL_SIZE = 64


def make_oracle(lang, max_length: int):
    """A function ``(prefix tuple, L) -> bool`` for strings up to ``max_length`` symbols."""
    from formal_lm.counter import CounterLanguage
    from formal_lm.dyck import DyckLanguage
    from formal_lm.pfsa import PFSA

    if isinstance(lang, PFSA):
        return _pfsa_oracle(lang, max_length)
    if isinstance(lang, DyckLanguage):
        return _dyck_oracle(lang, max_length)
    if isinstance(lang, CounterLanguage):
        return _counter_oracle(lang, max_length)
    return _search_oracle(lang, max_length)


def _pfsa_oracle(lang, max_length):
    beta = lang._log_backward(max_length)  # beta[k][q]: ln P(exactly k more symbols, halt | q)
    sym = {a: i for i, a in enumerate(lang.alphabet)}

    @lru_cache(maxsize=65536)
    def support(p):
        if not p:
            return lang.init > 0
        prev = support(p[:-1])
        if prev is None:
            return None
        nxt = (prev.astype(float) @ lang.T[sym[p[-1]]]) > 0
        return nxt if nxt.any() else None

    def ok(p, L):
        r = L - len(p)
        if r < 0:
            return False
        s = support(tuple(p))
        return s is not None and bool(np.isfinite(beta[r][s]).any())

    return ok


def _dyck_oracle(lang, max_length):
    def ok(p, L):
        p = tuple(p)
        if L % 2 or L < len(p):
            return False
        n = L // 2
        if not (lang.prior.min <= n <= lang.prior.support_max) or \
                lang._log_prior[n - lang.prior.min] == -np.inf:
            return False
        walk, _ = lang._walk(p)
        if len(walk) < len(p) + 1:
            return False
        i, state = walk[-1]
        return float(lang._count(L - i, state)) > -math.inf

    return ok


def _counter_oracle(lang, max_length):
    prefixes: dict[int, set] = {}

    def of_length(L):
        if L not in prefixes:
            out = set()
            for counts, lp in lang._assignments(L):
                if lp > -math.inf and lang._length_of(counts) == L:
                    s = lang._string(counts)
                    out.update(s[:k] for k in range(L + 1))
            prefixes[L] = out
        return prefixes[L]

    def ok(p, L):
        return L >= len(p) and tuple(p) in of_length(L)

    return ok


def _search_oracle(lang, max_length):
    """Generic oracle: a trie of known strings per length, seeded with exact samples of that
    length and grown by a small depth-first search for witnesses. It never claims a prefix that
    no known string extends, so a walk never dead-ends; the DFS adds variety beyond the pool."""
    known: dict[int, set] = {}
    failed: set = set()

    def trie(L):
        if L not in known:
            out: set = set()
            try:
                pool = lang.sample(POOL_SIZE, seed=L, length=L)
            except Exception:  # noqa: BLE001 - a family that cannot sample by length
                pool = []
            for x in pool:
                x = tuple(x)
                out.update(x[:k] for k in range(len(x) + 1))
            known[L] = out
        return known[L]

    def search(p, L, budget):
        """p extended toward a witness: a string of length L in the language, or a prefix the
        trie already knows; None when there is none or the budget ran out."""
        if len(p) == L:
            return p if lang.accepts(p) else None
        for c in lang.alphabet:
            q = p + (c,)
            if q in known[L]:
                return q
        for c in lang.alphabet:
            if budget[0] <= 0:
                return None
            budget[0] -= 1
            q = p + (c,)
            if lang.is_viable(q):
                w = search(q, L, budget)
                if w is not None:
                    return w
        return None

    def ok(p, L):
        p = tuple(p)
        if L < len(p):
            return False
        t = trie(L)
        if p in t:
            return True
        if (p, L) in failed or not lang.is_viable(p):
            return False
        w = search(p, L, [DFS_BUDGET])
        if w is None:
            failed.add((p, L))
            return False
        t.update(w[:k] for k in range(len(w) + 1))  # w extends to a string of length L
        return True

    return ok
