"""An add-k smoothed n-gram language model, usable wherever a model function is.

Contexts are the previous ``n - 1`` tokens including BOS (missing positions before BOS are a
distinct filler), so an n-gram model knows where a string starts. It never puts mass on PAD or BOS.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from formal_lm.errors import FormalLMError, Problem
from formal_lm.vocab import BOS_ID, PAD_ID, Vocab


@dataclasses.dataclass
class NGramModel:
    """Add-k smoothed n-gram model over a vocabulary.

    Example:
        >>> from formal_lm.vocab import Vocab
        >>> m = NGramModel(2, k=0.01).fit(["ab", "aabb"], Vocab(("a", "b")))
        >>> m(Vocab(("a", "b")).batch(["ab"])).shape
        (1, 4, 5)
    """

    n: int
    k: float = 0.1
    table: np.ndarray | None = None  # [V ** (n - 1), V] log-probabilities
    vocab_size: int = 0

    def __post_init__(self):
        problems = []
        if not (isinstance(self.n, int) and self.n >= 1):
            problems.append(Problem(f"n={self.n!r} must be an int >= 1"))
        if not self.k > 0:
            problems.append(Problem(f"k={self.k!r} must be > 0", "add-k smoothing needs k > 0"))
        if problems:
            raise FormalLMError(problems)

    def _context_index(self, ids: np.ndarray) -> np.ndarray:
        """int [B, T]: index of the (n-1)-token context ending at each position."""
        B, T = ids.shape
        V = self.vocab_size
        idx = np.zeros((B, T), np.int64)
        for j in range(self.n - 1):  # token at t - j, filler (PAD) before the start
            shifted = np.zeros((B, T), np.int64)
            if j < T:
                shifted[:, j:] = ids[:, : T - j]
            idx += shifted * V ** j
        return idx

    def fit(self, strings, vocab: Vocab) -> "NGramModel":
        """Counts n-grams of ``[BOS, s..., EOS]`` for each string; returns self."""
        self.vocab_size = V = vocab.size
        ids = vocab.batch(list(strings))  # [B, T]
        ctx = self._context_index(ids)[:, :-1]
        nxt = ids[:, 1:]
        ok = nxt != PAD_ID
        counts = np.zeros((V ** (self.n - 1), V))
        np.add.at(counts, (ctx[ok], nxt[ok]), 1.0)
        counts += self.k
        counts[:, [PAD_ID, BOS_ID]] = 0.0
        probs = counts / counts.sum(1, keepdims=True)
        with np.errstate(divide="ignore"):
            self.table = np.log(probs)
        self.table[:, [PAD_ID, BOS_ID]] = -1e9
        return self

    def __call__(self, ids) -> np.ndarray:
        """ids [B, T] -> logits (log-probabilities) [B, T, V]."""
        if self.table is None:
            raise FormalLMError(Problem("the n-gram model is not fitted", "call .fit(strings, vocab)"))
        ids = np.asarray(ids, np.int64)
        return self.table[self._context_index(ids)]
