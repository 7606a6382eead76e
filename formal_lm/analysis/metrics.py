"""The numpy metrics of the package: log-softmax, masks, exact KL, NLL and next-symbol sets.

Every analyzer computes its per-position quantities here, from a predictor's logits
[B, T, V] and the exact next-token table ``lang.next_token_probs(ids)`` [B, T, V] of the same
ids. Position t predicts ``ids[:, t+1]``; only *real targets* count (a symbol or the first
EOS; never PAD, never after EOS).

Shape glossary: B batch, T positions, V vocabulary size.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from formal_lm.vocab import BOS_ID, EOS_ID, PAD_ID


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax (over the vocabulary axis by default)."""
    m = np.max(logits, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = logits - m
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.exp(log_softmax(logits, axis))


def target_mask(ids: np.ndarray) -> np.ndarray:
    """bool [B, T]: positions whose next token is a real target (a symbol or the first EOS).

    PAD targets, positions after EOS, and the last column (which has no next token in ``ids``)
    are excluded.
    """
    ids = np.asarray(ids)
    nxt = ids[:, 1:]
    ended = np.cumsum((ids[:, :-1] == EOS_ID) | (ids[:, :-1] == PAD_ID), axis=1) > 0
    real = (nxt != PAD_ID) & ~ended
    return np.concatenate([real, np.zeros((len(ids), 1), bool)], axis=1)


def emittable_mask(vocab_size: int) -> np.ndarray:
    """bool [V]: tokens a decoder may emit (EOS and the symbols; never PAD or BOS)."""
    m = np.ones(vocab_size, bool)
    m[[PAD_ID, BOS_ID]] = False
    return m


def token_kl(p_true: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """Row-wise KL(p_true || q) [...] from log q; rows where p_true is all zero give 0. Never
    negative (float round-off is clipped)."""
    safe = np.where(p_true > 0, p_true, 1.0)
    terms = np.where(p_true > 0, p_true * (np.log(safe) - logq), 0.0)
    return np.maximum(terms.sum(-1), 0.0)


def at_targets(x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """[B, T]: ``x[b, t, ids[b, t+1]]`` for a [B, T, V] array (0 in the last column)."""
    tgt = np.concatenate([ids[:, 1:], np.zeros((len(ids), 1), ids.dtype)], axis=1)
    return np.take_along_axis(x, tgt[..., None], -1)[..., 0]


@dataclasses.dataclass(frozen=True)
class PositionScores:
    """Per-position scores of logits against an exact table; zero outside ``mask``.

    Attributes:
        kl: [B, T] KL(p_true || model).
        nll: [B, T] the model's NLL of the observed next token.
        true_nll: [B, T] the exact NLL of the observed next token.
        mask: bool [B, T] real targets whose exact row is known (sums to 1).
    """

    kl: np.ndarray
    nll: np.ndarray
    true_nll: np.ndarray
    mask: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum())


def position_scores(logits: np.ndarray, p: np.ndarray, ids: np.ndarray) -> PositionScores:
    """KL, NLL and exact NLL per position of ``ids`` [B, T] (see :class:`PositionScores`)."""
    logq = log_softmax(logits)
    mask = target_mask(ids) & (p.sum(-1) > 0)
    ptgt = at_targets(p, ids)
    true_nll = -np.log(np.where(ptgt > 0, ptgt, 1.0))
    return PositionScores(np.where(mask, token_kl(p, logq), 0.0),
                          np.where(mask, -at_targets(logq, ids), 0.0),
                          np.where(mask, true_nll, 0.0), mask)


def set_terms(logits: np.ndarray, exact: np.ndarray, ids: np.ndarray, threshold: float):
    """Next-symbol sets (Bhattamishra et al. 2020): (correct, scored, unscored), each [B, T].

    The predicted set is the tokens with model probability > ``threshold``; the legal set is
    the tokens with exact probability > 0. A scored position (a real target with a known
    exact row) is correct when the two sets are equal. A position where some legal token has
    exact probability <= ``threshold`` is *unscored*: there even the exact language's own set
    differs from the legal set, so the comparison says nothing about the model (lower the
    threshold to score it).
    """
    probs = softmax(logits)
    legal = exact > 0
    known = target_mask(ids) & legal.any(-1)
    posed = np.all(~legal | (exact > threshold), axis=-1)
    scored = known & posed
    correct = np.all((probs > threshold) == legal, axis=-1) & scored
    return correct, scored, known & ~posed


def mean_nll(predictor, ids: np.ndarray, *, batch_size: int = 256) -> float:
    """A predictor's PAD-masked NLL of ``ids`` [N, T], nats per real target token."""
    from formal_lm.analysis.predictor import call_model
    logq = log_softmax(call_model(predictor, ids, batch_size=batch_size))
    mask = target_mask(ids)
    return float(-(at_targets(logq, ids) * mask).sum() / max(int(mask.sum()), 1))
