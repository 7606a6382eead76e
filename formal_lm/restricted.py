"""A language conditioned on a length range: ``lang.restrict(min_length, max_length)``.

With lo = min_length, hi = max_length and Z = P(lo <= |s| <= hi) under the base language,

    p_r(s) = p(s) / Z  for lo <= |s| <= hi  (0 otherwise),
    P_r(a string starts with p) = sum_{L = max(lo, |p|)}^{hi} P(starts with p, |s| = L) / Z.

Everything is exact, from two primitives of the base (``formal_lm.language.Language``):

- ``prefix_length_log_probs(p, max_length)``: ln P(a string starts with p and has length L), for
  L = 0..max_length. Families compute it in closed form (counter languages: the prior mass of
  the counts that give length L; Dyck: the completion counts by length; PFSA: the forward vector
  times powers of the transition matrix into the halting vector; PCFG: the Jelinek-Lafferty
  forward pass with every unseen right sibling's length tracked, ``pcfg._lengths``). The generic
  default (:func:`enumerated_prefix_lengths`) enumerates completions and refuses past
  ``MAX_ENUMERATED_COMPLETIONS``.
- ``_window_next_token_probs(ids, lo, hi)``: the batched next-token tables of the base
  conditioned on lo <= |s| <= hi (the normaliser cancels in the rows). Families compute it
  directly (vectorised); the generic default (:func:`window_next_token_probs`) goes through the
  first primitive.

This module holds the restricted language's behaviour as a mixin (:class:`Restriction`);
``formal_lm.language.RestrictedLanguage`` is it on top of ``Language``.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from formal_lm.errors import FormalLMError, Problem
from formal_lm.vocab import EOS_ID, PAD_ID

MAX_ENUMERATED_COMPLETIONS = 200_000
"""Strings the generic ``prefix_length_log_probs`` may visit (a family without its own exact
length-aware prefix probabilities is refused past it)."""


def lse(values) -> float:
    """ln sum exp of ``values`` (-inf when empty or all -inf)."""
    a = np.asarray(values, float)
    if a.size == 0 or not np.isfinite(a).any():
        return -math.inf
    top = float(a.max())
    return top + math.log(float(np.exp(a - top).sum()))


def logsumexp(a, axis=None):
    """ln sum exp of ``a`` along ``axis`` (-inf where every term is -inf), without warnings."""
    a = np.asarray(a, float)
    top = np.max(a, axis=axis, keepdims=True) if a.size else np.full((1,) * a.ndim, -np.inf)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - top), axis=axis, keepdims=True)) + top
    return out.squeeze(axis) if axis is not None else float(out.reshape(()))


def enumerated_prefix_lengths(lang, p, max_length: int,
                              limit: int | None = None) -> np.ndarray:
    """``prefix_length_log_probs`` by enumeration: every viable completion of ``p`` up to
    ``max_length`` symbols (pruned by ``prefix_log_prob``), summed by length. Exact, but refused
    past ``limit`` (default ``MAX_ENUMERATED_COMPLETIONS``) visited strings."""
    limit = MAX_ENUMERATED_COMPLETIONS if limit is None else limit
    terms: list[list[float]] = [[] for _ in range(max_length + 1)]
    stack = [p] if len(p) <= max_length and lang.prefix_log_prob(p) > -math.inf else []
    visited = 0
    while stack:
        q = stack.pop()
        visited += 1
        if visited > limit:
            raise FormalLMError(Problem(
                f"{lang.name!r} ({type(lang).__name__}) has no exact length-aware prefix "
                f"probabilities of its own, and enumerating the completions of {p!r} up to "
                f"length {max_length} visits more than {limit} strings",
                "use a smaller max_length, implement prefix_length_log_probs for this family, "
                "or raise formal_lm.restricted.MAX_ENUMERATED_COMPLETIONS"))
        lq = lang.log_prob(q)
        if lq > -math.inf:
            terms[len(q)].append(lq)
        if len(q) < max_length:
            stack += [q + (a,) for a in lang.alphabet
                      if lang.prefix_log_prob(q + (a,)) > -math.inf]
    return np.array([lse(t) for t in terms])


def _row_lengths(ids: np.ndarray) -> np.ndarray:
    """Per row of [B, T] ids, the number of symbols before the first EOS or PAD."""
    body = ids[:, 1:]
    if body.shape[1] == 0:
        return np.zeros(len(ids), int)
    stop = (body == EOS_ID) | (body == PAD_ID)
    return np.where(stop.any(1), stop.argmax(1), body.shape[1])


def rows_from_tables(lang, ids, table) -> np.ndarray:
    """[B, T, V] from ``table(s)`` ([len(s) + 1, V] rows of one string), row by row (as
    ``Language.next_token_probs`` does with ``next_token_table``)."""
    ids, out = lang._probs_buffer(ids)
    for b, n in enumerate(_row_lengths(ids)):
        rows = table(tuple(lang.vocab.tokens[i] for i in ids[b, 1: n + 1]))
        out[b, : n + 1] = rows[: min(n + 1, ids.shape[1])]
    return out


def window_next_token_probs(lang, ids, lo: int, hi: int) -> np.ndarray:
    """[B, T, V] next-token rows of ``lang`` conditioned on lo <= |s| <= hi, from its
    ``prefix_length_log_probs`` (the generic default; families override it for speed)."""
    ids, out = lang._probs_buffer(ids)
    for b, n in enumerate(_row_lengths(ids)):
        syms = tuple(lang.vocab.tokens[i] for i in ids[b, 1: n + 1])
        for t in range(min(int(n), hi) + 1):
            p = syms[:t]
            logs = [lse(lang.prefix_length_log_probs(p + (a,), hi)[max(lo, t + 1):])
                    for a in lang.alphabet]
            eos = lang.log_prob(p) if lo <= t else -math.inf
            total = lse(logs + [eos])
            if total == -math.inf:
                break  # no string of the window starts so: this row and the later ones are 0
            out[b, t, EOS_ID] = math.exp(eos - total)
            out[b, t, 3:] = np.exp(np.array(logs) - total)
    return out


def log_window(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``values`` (indexed by length) with -inf outside [lo, hi]."""
    out = np.array(values, float)
    out[:lo] = -np.inf
    out[hi + 1:] = -np.inf
    return out


class Restriction:
    """The behaviour of a language conditioned on lo <= |s| <= hi (see the module docstring).

    A mixin: ``formal_lm.language.RestrictedLanguage`` puts it on top of ``Language``, and
    ``Language.restrict`` checks the arguments and builds one.

    Raises:
        FormalLMError: when no string of the base has a length in the range (naming the range
            and the language), or the base cannot compute length-aware prefix probabilities up
            to ``max_length`` (a PCFG past ``pcfg._lengths.MAX_RESTRICT_LENGTH``, a language
            without its own beyond ``MAX_ENUMERATED_COMPLETIONS`` enumerated strings).
    """

    def __init__(self, base, min_length: int, max_length: int):
        lo, hi = min_length, max_length
        self.base, self.min_length, self.max_length = base, lo, hi
        self.name = f"{base.name}[{lo}..{hi}]"
        self.alphabet, self.rules = tuple(base.alphabet), tuple(base.rules)
        self.description = (f"{base.description}; conditioned on {lo} <= |s| <= {hi}"
                            if base.description else f"conditioned on {lo} <= |s| <= {hi}")
        stats = base.length_stats(hi)
        prob = np.asarray(stats.prob, float)
        mass = math.fsum(prob[lo: hi + 1])
        if not mass > 0:
            raise FormalLMError(Problem(
                f"{base.name!r} has no strings with length in [{lo}, {hi}] (probability 0), so "
                f"its restriction {self.name!r} is empty",
                "pick a range where lang.length_distribution(max_length) has mass"))
        self._log_z, self._base_stats = math.log(mass), stats
        base.prefix_length_log_probs((), hi)  # refused here when the base cannot (its bounds)
        # the string entropy is known wherever the base's per-length surprisal is
        self.entropy_is_exact = stats.surprisal is not None

    # ----- probabilities ----------------------------------------------------------------------
    def log_prob(self, s) -> float:
        s = self._s(s)
        lp = self.base.log_prob(s)
        if not self.min_length <= len(s) <= self.max_length or lp == -math.inf:
            return -math.inf
        return lp - self._log_z

    def prefix_log_prob(self, p) -> float:
        p = self._s(p)
        if not p:
            return 0.0
        if len(p) > self.max_length:
            return -math.inf
        by_length = self.base.prefix_length_log_probs(p, self.max_length)
        return lse(by_length[max(self.min_length, len(p)):]) - self._log_z

    def prefix_length_log_probs(self, p, max_length: int) -> np.ndarray:
        if isinstance(max_length, (bool, np.bool_)) or not isinstance(
                max_length, (int, np.integer)) or max_length < 0:
            raise FormalLMError(Problem(f"max_length={max_length!r} must be an integer >= 0",
                                        "pass an int >= 0"))
        top = min(max_length, self.max_length)
        out = np.full(max_length + 1, -np.inf)
        if len(self._s(p)) <= top:
            base = self.base.prefix_length_log_probs(p, top)
            out[: top + 1] = log_window(base, self.min_length, top) - self._log_z
        return out

    def _window_next_token_probs(self, ids, lo: int, hi: int) -> np.ndarray:
        lo, hi = max(lo, self.min_length), min(hi, self.max_length)
        if lo > hi:  # no string of this language is in the window
            return self._probs_buffer(ids)[1]
        return self.base._window_next_token_probs(ids, lo, hi)

    def next_token_table(self, s) -> np.ndarray:
        s = self._s(s)
        return self.next_token_probs(self.vocab.batch([s], eos=False))[0]

    def next_token_probs(self, ids) -> np.ndarray:
        """Exact [B, T, V] next-token rows of the restricted language (see
        ``Language.next_token_probs``), from the base's window tables."""
        return self.base._window_next_token_probs(ids, self.min_length, self.max_length)

    # ----- sampling ---------------------------------------------------------------------------
    def _sample(self, n: int, *, seed: int, length: int | None):
        """Exact: a length from the restricted length distribution, then the base's exact
        samples conditioned on that length (one sub-seed per length, drawn from ``seed``)."""
        prob = self._length_probs()
        if length is not None:
            if length > self.max_length or prob[length] == 0:
                raise FormalLMError(Problem(f"{self.name!r} has no strings of length={length}",
                                            "pick a length with P(|s| = length) > 0 "
                                            "(see lang.length_distribution)"))
            return self.base.sample(n, seed=seed, length=length)
        rng = np.random.default_rng(seed)
        lengths = rng.choice(len(prob), size=n, p=prob / prob.sum())
        sub_seeds = rng.integers(0, 2 ** 31 - 1, size=len(prob))
        out: list = [None] * n
        for L in np.unique(lengths):
            idx = np.flatnonzero(lengths == L)
            got = self.base.sample(len(idx), seed=int(sub_seeds[L]), length=int(L))
            for i, s in zip(idx, got):
                out[i] = s
        return out

    # ----- expectations -----------------------------------------------------------------------
    def _length_probs(self) -> np.ndarray:
        """P_r(|s| = L) for L = 0..max_length."""
        prob = np.asarray(self._base_stats.prob, float).copy()
        prob[: self.min_length] = 0.0
        return prob / math.exp(self._log_z)

    def _restricted_surprisal(self, surprisal: np.ndarray) -> np.ndarray:
        """E_r[-ln p_r(x); |s| = L] from the base's E[-ln p(x); |s| = L] (x a string, or a
        derivation or path): -ln p_r = -ln p + ln Z on the range."""
        s = np.asarray(surprisal, float)[: self.max_length + 1].copy()
        s[: self.min_length] = 0.0
        return (s + np.asarray(self._base_stats.prob)[: len(s)] * self._log_z
                * (np.arange(len(s)) >= self.min_length)) / math.exp(self._log_z)

    def entropy(self) -> float:
        """The string entropy where ``entropy_is_exact``; otherwise an upper bound: the entropy
        of the base's derivations (paths) conditioned on the range when the family reports them
        by length, else ln of the number of strings over the alphabet with lengths in the
        range that have mass."""
        if self._base_stats.surprisal is not None:
            return float(self._restricted_surprisal(self._base_stats.surprisal).sum())
        upper = self.base._derivation_surprisal(self.max_length)
        if upper is not None:
            return float(self._restricted_surprisal(upper).sum())
        lengths = np.flatnonzero(self._length_probs() > 0)
        return lse(lengths * math.log(max(len(self.alphabet), 1)))

    def expected_length(self) -> float:
        prob = self._length_probs()
        return float((prob * np.arange(len(prob))).sum())

    def length_stats(self, max_length: int):
        """Exact per-length statistics; ``eos_surprisal`` is None (the restricted
        E[-ln p_r(EOS | s)] needs length-aware prefix masses the base's figure does not hold)."""
        L = int(max_length)
        top = min(L, self.max_length)
        prob = np.zeros(L + 1)
        prob[: top + 1] = self._length_probs()[: top + 1]
        surprisal = None
        if self._base_stats.surprisal is not None:
            surprisal = np.zeros(L + 1)
            surprisal[: top + 1] = self._restricted_surprisal(self._base_stats.surprisal)[: top + 1]
        return dataclasses.replace(self._base_stats, prob=prob, surprisal=surprisal,
                                   eos_surprisal=None, tail=max(0.0, 1.0 - math.fsum(prob)))

    def _definition(self) -> dict:
        return {"restriction_of": self.base.fingerprint(), "min_length": self.min_length,
                "max_length": self.max_length}
