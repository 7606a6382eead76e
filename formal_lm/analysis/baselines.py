"""Baselines and references, each a predictor: the exact language itself, a constant token
("emit EOS immediately"), and an add-k smoothed n-gram model.

The n-gram model's contexts are the previous ``n - 1`` tokens including BOS (missing positions
before BOS are a distinct filler), so it knows where a string starts. It never puts mass on PAD
or BOS.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from formal_lm.analysis.predictor import FunctionPredictor
from formal_lm.errors import FormalLMError, Problem
from formal_lm.vocab import BOS_ID, EOS_ID, PAD_ID, Vocab


def exact_model_fn(lang, *, floor: float = 1e-9) -> FunctionPredictor:
    """The language itself as a predictor: logits = ln max(p_exact, floor).

    Rows with no exact distribution (after EOS, impossible prefixes) become uniform over EOS and
    the symbols. Useful as an oracle in tests: it scores ~0 KL and 100% on exact checks.
    """
    def fn(ids):
        p = lang.next_token_probs(np.asarray(ids))  # [B, T, V]
        empty = p.sum(-1, keepdims=True) == 0
        uniform = np.zeros(p.shape[-1])
        uniform[EOS_ID:] = 1.0 / (p.shape[-1] - EOS_ID)
        p = np.where(empty, uniform, p)
        return np.log(np.maximum(p, floor))
    return FunctionPredictor(fn)


def constant_model_fn(vocab_size: int, token: int, *, margin: float = 20.0) -> FunctionPredictor:
    """A predictor that puts (almost) all its mass on one token at every position."""
    def fn(ids):
        ids = np.asarray(ids)
        out = np.zeros(ids.shape + (vocab_size,))
        out[..., token] = margin
        return out
    return FunctionPredictor(fn)


def eos_model_fn(lang) -> FunctionPredictor:
    """The "emit EOS immediately" baseline."""
    return constant_model_fn(lang.vocab.size, EOS_ID)


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
    max_len = None  # any length (the predictor protocol)

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
