"""Scores of an in-context learner against the Bayes-optimal in-context predictor.

The reference is the best any predictor can do from the context alone: the Bayes-optimal
in-context predictor under the family's prior over automata (``icl_bayes.bayes_rows``; exact
for small families, otherwise an estimate whose Monte Carlo error is reported). A model's
``kl_bayes`` is its excess loss over that predictor, the attainable part of its gap. The
sequence's own automaton (the per-automaton oracle) is kept as a second, labelled reference:
no in-context learner can reach it (it knows the automaton before seeing any string).

Shape glossary:  N sequences   T tokens   V vocab
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from formal_lm.analysis import measures as M
from formal_lm.analysis.metrics import log_softmax, token_kl
from formal_lm.analysis.predictor import call_model
from formal_lm.studies.icl import ICLBatch, PDFAFamily, ngram_in_context
from formal_lm.studies.icl_bayes import BayesRows, bayes_rows, kl_to_bayes
from formal_lm.vocab import PAD_ID


@dataclasses.dataclass(frozen=True)
class Reference:
    """An evaluation set with its references.

    Attributes:
        set_name: "heldout" (held-out automata of the training family) or "larger".
        batch: the sequences and their per-automaton oracle.
        bayes: the Bayes-optimal in-context rows (exact or estimated, with their runs).
        bigram_kl: KL(Bayes || in-context bigram) per real token: ``gap_closed``'s baseline.
    """

    set_name: str
    batch: ICLBatch
    bayes: BayesRows
    bigram_kl: float


def reference(set_name: str, family: PDFAFamily, batch: ICLBatch, *, particles: int = 512,
              runs: int = 8, seed: int = 0, ngram_k: float = 0.5) -> Reference:
    """The Bayes-optimal rows of ``batch`` and the in-context bigram's KL to them."""
    bayes = bayes_rows(family, batch, particles=particles, runs=runs, seed=seed)
    with np.errstate(divide="ignore"):
        bigram = np.log(ngram_in_context(batch.ids, 2, family.vocab.size, k=ngram_k))
    return Reference(set_name, batch, bayes, kl_to_bayes(batch, bigram, bayes)[0])


@dataclasses.dataclass(frozen=True)
class ICLScores:
    """One predictor on one evaluation set.

    Attributes:
        set_name: the evaluation set.
        ce: nats per real target token (the observed next token).
        kl_bayes: mean KL(Bayes-optimal || predictor) per real token: the excess loss that an
            in-context learner could still remove.
        kl_bayes_se: its Monte Carlo standard error (0 when the reference is exact).
        kl_oracle: mean KL(per-automaton oracle || predictor): a second reference, out of any
            in-context learner's reach.
        gap_closed: 1 - kl_bayes / kl_bayes(in-context bigram): 0 = the bigram, 1 = the
            Bayes-optimal predictor (None for the references themselves).
        valid_mass: mean probability on tokens the oracle allows.
        argmax_valid: share of positions whose most likely token the oracle allows.
        kl_by_string: kl_bayes per string index in context (0 = the first string).
        kl_by_position: kl_bayes per position bin.
    """

    set_name: str
    ce: float
    kl_bayes: float
    kl_bayes_se: float
    kl_oracle: float
    gap_closed: float | None
    valid_mass: float
    argmax_valid: float
    kl_by_string: tuple[float, ...]
    kl_by_position: tuple[float, ...]

    def measures(self) -> tuple[M.Measure, ...]:
        heldout = self.set_name == "heldout"
        scope = M.IN_DISTRIBUTION if heldout else M.OUT_OF_DISTRIBUTION
        what = ("held-out automata of the training family" if heldout
                else "automata of the larger family")
        return (
            M.nats("ce", self.ce, scope, f"NLL per real target token on {what}", headline=True),
            M.nats("kl_bayes", self.kl_bayes, scope, "KL(Bayes-optimal in-context predictor || "
                   f"model) per real target token on {what}", headline=True, tested=not heldout),
            M.Measure("gap_closed", self.gap_closed, "ratio", True, scope, "1 - kl_bayes / "
                      f"kl_bayes(in-context bigram) on {what} (1: Bayes-optimal; below 0: worse "
                      "than the bigram)", headline=True),
            M.nats("kl_oracle", self.kl_oracle, scope, "KL(the sequence's own automaton || "
                   f"model) on {what}: a second reference no in-context learner can reach"),
            M.fraction("valid_mass", self.valid_mass, scope,
                       f"mean probability on tokens the oracle allows, {what}"),
            M.fraction("argmax_valid", self.argmax_valid, scope,
                       f"share of positions whose most likely token is allowed, {what}"),
            M.nats("kl_first_string", self.kl_by_string[0], scope,
                   f"kl_bayes on the first string of each sequence, {what}"),
            M.nats("kl_last_string", self.kl_by_string[-1], scope,
                   f"kl_bayes on the last string of each sequence, {what}"),
        )


def _binned_means(values: np.ndarray, mask: np.ndarray, bins: np.ndarray, n: int):
    return tuple(float(values[mask & (bins == i)].mean()) if (mask & (bins == i)).any()
                 else float("nan") for i in range(n))


def score_logq(ref: Reference, logq: np.ndarray, *, position_bins: Sequence[int],
               gap: bool = True) -> ICLScores:
    """Scores log-probabilities ``logq`` [N, T-1, V] against ``ref`` (``gap=False`` for the
    references and baselines themselves: no gap_closed)."""
    batch = ref.batch
    mask = batch.ids[:, 1:] != PAD_ID  # [N, T-1] real targets
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # a predictor with no mass on a token its reference allows is infinitely far from it
        ce = float(-np.take_along_axis(logq, batch.ids[:, 1:, None], -1)[..., 0][mask].mean())
        per_pos = token_kl(ref.bayes.rows, logq)  # [N, T-1]
        kl_b, se = kl_to_bayes(batch, logq, ref.bayes)
        kl_o = float(token_kl(batch.oracle, logq)[mask].mean())
        q, allowed = np.exp(logq), batch.oracle > 0
    arg = np.take_along_axis(allowed, q.argmax(-1)[..., None], -1)[..., 0]
    pos = np.broadcast_to(np.arange(per_pos.shape[1]), per_pos.shape)
    edges = np.asarray(list(position_bins) + [per_pos.shape[1]])
    return ICLScores(
        ref.set_name, ce, float(kl_b), float(se), kl_o,
        1.0 - kl_b / ref.bigram_kl if gap else None,
        float((q * allowed).sum(-1)[mask].mean()), float(arg[mask].mean()),
        _binned_means(per_pos, mask, batch.string_index, int(batch.string_index.max()) + 1),
        _binned_means(per_pos, mask, np.searchsorted(edges, pos, side="right") - 1,
                      len(edges) - 1))


def baseline_scores(ref: Reference, vocab_size: int, *, position_bins: Sequence[int],
                    k: float = 0.5) -> dict[str, ICLScores]:
    """The references (Bayes-optimal, per-automaton oracle) and the in-context unigram, bigram
    and trigram, scored on ``ref``."""
    with np.errstate(divide="ignore"):
        logs = {"bayes": np.log(ref.bayes.rows), "oracle": np.log(ref.batch.oracle)}
        for n, name in ((1, "unigram"), (2, "bigram"), (3, "trigram")):
            logs[name] = np.log(ngram_in_context(ref.batch.ids, n, vocab_size, k=k))
    return {name: score_logq(ref, lq, position_bins=position_bins, gap=False)
            for name, lq in logs.items()}


def score_predictor(predictor, ref: Reference, *, position_bins: Sequence[int]) -> ICLScores:
    """Scores a predictor (anything ``as_predictor`` accepts) on ``ref``."""
    logq = log_softmax(call_model(predictor, ref.batch.ids))[:, :-1]  # [N, T-1, V]
    return score_logq(ref, logq, position_bins=position_bins)
