"""Saturation: how close a model's next-token distributions are to the exact ones.

KL(true || model) is computed from the exact next-token tables (``lang.next_token_probs``), per
real target position (PAD and everything after EOS masked); it is never negative. The model's
cross-entropy on the same held-out samples is set beside the exact loss floor.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from formal_lm.analysis._common import ModelFn, call_model, log_softmax, target_mask


@dataclasses.dataclass(frozen=True)
class SaturationResult:
    """Exact KL and cross-entropy of a model on ``n`` held-out samples.

    Attributes:
        kl_per_token: mean over real target positions of KL(p_true(.|prefix) || p_model(.|prefix)),
            nats. Never negative.
        kl_per_sequence: mean over strings of the summed KL, nats per string.
        cross_entropy: model NLL of the samples, nats per real target token (EOS included).
        sample_entropy: exact NLL of the same samples under the language, nats per token: the
            floor of ``cross_entropy`` on this very sample.
        loss_floor: ``lang.optimal_loss().per_token``, the expected floor over the language.
        excess_loss: cross_entropy - sample_entropy.
        n_strings, n_tokens: what was scored.
        threshold: the saturation threshold on ``kl_per_token``.
        saturated: ``kl_per_token < threshold``.
    """

    kl_per_token: float
    kl_per_sequence: float
    cross_entropy: float
    sample_entropy: float
    loss_floor: float
    excess_loss: float
    n_strings: int
    n_tokens: int
    threshold: float
    saturated: bool


def token_kl(p_true: np.ndarray, logp_model: np.ndarray) -> np.ndarray:
    """Row-wise KL(p_true || model) [...]; rows where p_true is all zero give 0. Never negative."""
    safe = np.where(p_true > 0, p_true, 1.0)
    terms = np.where(p_true > 0, p_true * (np.log(safe) - logp_model), 0.0)
    return np.maximum(terms.sum(-1), 0.0)


def kl_and_nll(model_fn: ModelFn, lang, ids: np.ndarray, *, batch_size: int = 256):
    """Per-position KL, model NLL and exact NLL for ids [B, T]; plus the real-target mask [B, T]."""
    logits = call_model(model_fn, ids, batch_size=batch_size)  # [B, T, V]
    return kl_terms(logits, lang.next_token_probs(ids), ids)


def kl_terms(logits: np.ndarray, p: np.ndarray, ids: np.ndarray):
    """:func:`kl_and_nll` from the model's logits and the exact table p [B, T, V] of ids."""
    logq = log_softmax(logits)
    mask = target_mask(ids) & (p.sum(-1) > 0)
    kl = np.where(mask, token_kl(p, logq), 0.0)
    tgt = np.concatenate([ids[:, 1:], np.zeros((len(ids), 1), ids.dtype)], axis=1)  # [B, T]
    nll = -np.take_along_axis(logq, tgt[..., None], -1)[..., 0]
    ptgt = np.take_along_axis(p, tgt[..., None], -1)[..., 0]
    true_nll = -np.log(np.where(ptgt > 0, ptgt, 1.0))
    return kl, np.where(mask, nll, 0.0), np.where(mask, true_nll, 0.0), mask


def saturation(model_fn: ModelFn, lang, *, n: int = 512, seed: int = 12345,
               threshold: float = 1e-2, strings=None, batch_size: int = 256) -> SaturationResult:
    """Exact per-token KL and cross-entropy of ``model_fn`` on ``n`` samples of ``lang``.

    Args:
        model_fn: ids [B, T] -> logits [B, T, V].
        lang: the language.
        n: number of held-out samples (drawn with ``seed``; use a seed the training data never used).
        seed: sampling seed.
        threshold: ``saturated`` is ``kl_per_token < threshold``.
        strings: score these strings instead of sampling.

    Example:
        >>> import formal_lm as fl
        >>> from formal_lm.analysis import exact_model_fn
        >>> lang = fl.load("anbn-short")
        >>> saturation(exact_model_fn(lang), lang, n=32).saturated  # the language itself: KL 0
        True
    """
    strings = lang.sample(n, seed=seed) if strings is None else list(strings)
    ids = lang.vocab.batch(strings)
    kl, nll, true_nll, mask = kl_and_nll(model_fn, lang, ids, batch_size=batch_size)
    n_tok = int(mask.sum())
    kl_tok = float(kl.sum() / max(n_tok, 1))
    ce = float(nll.sum() / max(n_tok, 1))
    h = float(true_nll.sum() / max(n_tok, 1))
    return SaturationResult(
        kl_per_token=kl_tok, kl_per_sequence=float(kl.sum(1).mean()) if len(ids) else 0.0,
        cross_entropy=ce, sample_entropy=h, loss_floor=float(lang.optimal_loss().per_token),
        excess_loss=ce - h, n_strings=len(strings), n_tokens=n_tok, threshold=threshold,
        saturated=kl_tok < threshold)
