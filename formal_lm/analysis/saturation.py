"""Saturation: how close a model's next-token distributions are to the exact ones.

KL(true || model) is computed from the exact next-token tables (``lang.next_token_probs``), per
real target position (PAD and everything after EOS masked); it is never negative. The model's
cross-entropy on the same held-out samples is set beside the exact loss floor.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from formal_lm.analysis import measures as M
from formal_lm.analysis.metrics import position_scores
from formal_lm.analysis.predictor import call_model
from formal_lm.seeding import Stream, derive


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

    def measures(self) -> tuple[M.Measure, ...]:
        ind = M.IN_DISTRIBUTION
        return (
            M.nats("kl", self.kl_per_token, ind, "exact KL(true || model) per real target token "
                   "on held-out samples", headline=True),
            M.nats("cross_entropy", self.cross_entropy, ind, "model NLL per real target token on "
                   "the same samples", headline=True),
            M.nats("excess_loss", self.excess_loss, ind, "cross_entropy minus the exact NLL of "
                   "the same samples"),
            M.nats("sample_entropy", self.sample_entropy, M.REFERENCE, "exact NLL of the scored "
                   "samples: the floor of cross_entropy on them", higher_is_better=None),
            M.nats("loss_floor", self.loss_floor, M.REFERENCE, "the language's exact expected "
                   "loss floor", higher_is_better=None),
            M.Measure("saturated", float(self.saturated), "flag", None, ind,
                      f"kl below the threshold {self.threshold:g}"),
            M.count("n_tokens", self.n_tokens, "real target tokens scored"),
        )


def kl_and_nll(predictor, lang, ids: np.ndarray, *, batch_size: int = 256):
    """Per-position scores (:class:`metrics.PositionScores`) of a predictor on ids [B, T]."""
    logits = call_model(predictor, ids, batch_size=batch_size)  # [B, T, V]
    return position_scores(logits, lang.next_token_probs(ids), ids)


def saturation(predictor, lang, *, n: int = 512, seed: int = 12345,
               threshold: float = 1e-2, strings=None, batch_size: int = 256) -> SaturationResult:
    """Exact per-token KL and cross-entropy of ``model_fn`` on ``n`` samples of ``lang``.

    Args:
        predictor: ids [B, T] -> logits [B, T, V] (anything ``as_predictor`` accepts).
        lang: the language.
        n: number of held-out samples, drawn from ``derive(seed, Stream.SATURATION)``.
        seed: the analysis seed.
        threshold: ``saturated`` is ``kl_per_token < threshold``.
        strings: score these strings instead of sampling.

    Example:
        >>> import formal_lm as fl
        >>> from formal_lm.analysis.baselines import exact_model_fn
        >>> lang = fl.load("anbn-short")
        >>> saturation(exact_model_fn(lang), lang, n=32).saturated  # the language itself: KL 0
        True
    """
    if strings is None:
        strings = lang.sample(n, seed=derive(seed, Stream.SATURATION))
    strings = list(strings)
    ids = lang.vocab.batch(strings)
    sc = kl_and_nll(predictor, lang, ids, batch_size=batch_size)
    n_tok = sc.n_tokens
    kl_tok = float(sc.kl.sum() / max(n_tok, 1))
    ce = float(sc.nll.sum() / max(n_tok, 1))
    h = float(sc.true_nll.sum() / max(n_tok, 1))
    return SaturationResult(
        kl_per_token=kl_tok, kl_per_sequence=float(sc.kl.sum(1).mean()) if len(ids) else 0.0,
        cross_entropy=ce, sample_entropy=h, loss_floor=float(lang.optimal_loss().per_token),
        excess_loss=ce - h, n_strings=len(strings), n_tokens=n_tok, threshold=threshold,
        saturated=kl_tok < threshold)
