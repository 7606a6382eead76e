"""Compositional generalization as language-modelling tests with exact references.

Hupkes et al. (2020, "Compositionality decomposed: how do neural networks generalise?") name
five properties; each is a test here, scored against the exact next-token rows of the full
language (``lang.next_token_probs``) rather than against one correct output:

- :func:`systematicity`: on the held-out part of a split (``formal_lm.splits``,
  ``formal_lm.count_splits``: combinations never seen in training), exact KL per token and
  next-symbol-set accuracy relative to the full language.
- :func:`productivity`: ``length_generalization`` on lengths (and nesting depths) beyond the
  training range, with the bins beyond training named.
- :func:`substitutivity` and :func:`localism` (``analysis.substitution``): the model's
  predictions after a twin symbol against those after its twin, and those inside a constituent
  in isolation against those in context, where the exact language says they are equal.
- :func:`overgeneralisation` (``analysis.substitution``): how often a model applies a rule to
  its exceptions, per checkpoint.

Each returns a frozen dataclass with ``measures()``; :func:`summarize_seeds` gives per-measure
means with confidence intervals over seeds (``analysis.stats.summarize``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from formal_lm.analysis import measures as M
from formal_lm.analysis.length import (LengthGeneralizationResult, _bin, _per_string,
                                       length_generalization)
from formal_lm.analysis.stats import Summary, summarize
from formal_lm.errors import FormalLMError, Problem
from formal_lm.seeding import Stream, derive


@dataclasses.dataclass(frozen=True)
class SystematicityResult:
    """Scores on the held-out combinations of a split, against the full language's rows.

    Attributes:
        n_strings, n_tokens: held-out strings and real target tokens scored.
        kl_per_token: exact KL(full || model) per real target token on held-out strings.
        set_accuracy_per_string: share of held-out strings with every next-symbol set right.
        set_accuracy_per_position: share of their positions with the right set.
        train_kl_per_token, train_set_accuracy_per_string: the same on samples of the
            training language (what the model was trained on: the reference).
        held_out_mass: P_full(the held-out part).
        threshold: the next-symbol-set threshold.
    """

    n_strings: int
    n_tokens: int
    kl_per_token: float
    set_accuracy_per_string: float
    set_accuracy_per_position: float
    train_kl_per_token: float
    train_set_accuracy_per_string: float
    held_out_mass: float
    threshold: float

    def measures(self) -> tuple[M.Measure, ...]:
        ood, ind = M.OUT_OF_DISTRIBUTION, M.IN_DISTRIBUTION
        return (
            M.fraction("systematicity_set_acc", self.set_accuracy_per_string, ood,
                       "share of held-out combinations with every next-symbol set right "
                       "(full language)", headline=True, tested=True),
            M.nats("systematicity_kl", self.kl_per_token, ood, "exact KL(full || model) per "
                   "real target token on held-out combinations", headline=True, tested=True),
            M.fraction("systematicity_set_acc_per_position", self.set_accuracy_per_position,
                       ood, "share of held-out positions with the right next-symbol set"),
            M.fraction("systematicity_train_set_acc", self.train_set_accuracy_per_string, ind,
                       "share of training-language strings with every set right"),
            M.nats("systematicity_train_kl", self.train_kl_per_token, ind,
                   "exact KL(full || model) per token on training-language strings"),
            M.Measure("systematicity_held_out_mass", self.held_out_mass, "probability", None,
                      M.REFERENCE, "P(held-out part) under the full language"),
            M.count("systematicity_n_tokens", self.n_tokens, "held-out target tokens scored"),
        )


def systematicity(predictor, split, *, n: int = 128, seed: int = 0, threshold: float = 0.01,
                  strings: Sequence | None = None, batch_size: int = 64) -> SystematicityResult:
    """Exact KL and next-symbol-set accuracy on the held-out part of ``split``.

    Args:
        predictor: ids [B, T] -> logits [B, T, V] (anything ``as_predictor`` accepts).
        split: a ``formal_lm.splits.Split`` (its ``full``, ``train`` and ``held_out``).
        n: held-out (and training) samples, drawn with ``derive(seed, Stream.COMPOSITIONAL,
            0)`` (and ``1``).
        threshold: a token is in the predicted set when its model probability exceeds it.
        strings: score these held-out strings instead of sampling.

    A model that only memorised the training combinations gives the first token outside the
    training language probability 0, so it scores 0 on every held-out string whose training
    probability is 0; a model that computes the rule scores 1 with KL 0.

    Example:
        >>> import formal_lm as fl
        >>> from formal_lm.analysis.baselines import exact_model_fn
        >>> from formal_lm.count_splits import exclude_counts
        >>> sp = exclude_counts(fl.load("anbmcnm"), [(1, 2), (4, 4)])
        >>> systematicity(exact_model_fn(sp.full), sp, n=16).set_accuracy_per_string
        1.0
    """
    if not all(hasattr(split, k) for k in ("full", "train", "held_out", "held_out_mass")):
        raise FormalLMError(Problem(f"split={split!r} is not a formal_lm.Split",
                                    "build one with fl.exclude_production, fl.exclude_counts "
                                    "or fl.twin_split"))
    full = split.full
    held = list(strings) if strings is not None else split.held_out.sample(
        n, seed=derive(seed, Stream.COMPOSITIONAL, 0))
    if not held:
        raise FormalLMError(Problem("no held-out strings to score", "pass n >= 1"))
    train = split.train.sample(n, seed=derive(seed, Stream.COMPOSITIONAL, 1))
    rows = _per_string(predictor, full, [full.vocab.as_string(s) for s in held], threshold,
                       batch_size)
    kl, per_pos, per_string = _bin(rows)
    t_kl, _, t_string = _bin(_per_string(predictor, full, train, threshold, batch_size))
    return SystematicityResult(len(held), int(rows[:, 1].sum()), kl, per_string, per_pos,
                               t_kl, t_string, float(split.held_out_mass), threshold)


@dataclasses.dataclass(frozen=True)
class ProductivityResult:
    """``length_generalization`` with the bins beyond the training range named.

    Attributes:
        length: the length (and depth) bins, each with its exact KL and set accuracy.
        beyond: the (lo, hi) length bins past ``train_max_length``.
        beyond_set_accuracy: share of strings in those bins with every set right.
        beyond_kl_per_token: their exact KL per token (bins weighted by strings).
    """

    length: LengthGeneralizationResult
    beyond: tuple[tuple[int, int], ...]
    beyond_set_accuracy: float
    beyond_kl_per_token: float

    def measures(self) -> tuple[M.Measure, ...]:
        ood = M.OUT_OF_DISTRIBUTION
        what = ", ".join(f"{lo}-{hi}" for lo, hi in self.beyond)
        return (M.fraction("productivity_set_acc", self.beyond_set_accuracy, ood,
                           f"share of strings longer than seen (lengths {what}) with every "
                           "next-symbol set right", headline=True, tested=True),
                M.nats("productivity_kl", self.beyond_kl_per_token, ood, "exact KL per token "
                       f"on strings longer than seen (lengths {what})", tested=True),
                ) + self.length.measures()


def productivity(predictor, lang, *, train_max_length: int, test_lengths: Sequence[int],
                 per_bin: int = 32, bins: Sequence[tuple[int, int]] | None = None,
                 threshold: float = 0.01, seed: int = 0,
                 batch_size: int = 64) -> ProductivityResult:
    """Productivity: ``length_generalization`` (same arguments) with the bins past
    ``train_max_length`` summarised: strings longer (and, for bracket languages, deeper) than
    any seen in training, scored against the full language's exact rows.

    Raises:
        FormalLMError: as ``length_generalization``; or when no bin lies beyond training.
    """
    res = length_generalization(predictor, lang, train_max_length=train_max_length,
                                test_lengths=test_lengths, per_bin=per_bin, bins=bins,
                                threshold=threshold, seed=seed, batch_size=batch_size)
    past = [b for b in res.length_bins if not b.in_training_range]
    if not past:
        raise FormalLMError(Problem(f"no length bin of {lang.name!r} lies beyond "
                                    f"train_max_length={train_max_length}",
                                    "pass test_lengths above train_max_length"))
    n = np.array([b.n_strings for b in past], float)
    acc = float((n * [b.set_accuracy_per_string for b in past]).sum() / n.sum())
    kl = float((n * [b.kl_per_token for b in past]).sum() / n.sum())
    return ProductivityResult(res, tuple((b.lo, b.hi) for b in past), acc, kl)


def summarize_seeds(results: Sequence, *, level: float = 0.95) -> dict[str, Summary]:
    """Per measure name, the mean over seeds with its confidence interval
    (``analysis.stats.summarize``, Student t) from one result per seed; measures that are
    undefined (None) for some seed are left out.

    Raises:
        FormalLMError: no results.
    """
    if not results:
        raise FormalLMError(Problem("no results to summarize", "pass one result per seed"))
    values: dict[str, list] = {}
    for r in results:
        for m in r.measures():
            values.setdefault(m.name, []).append(m.value)
    return {k: summarize(v, level=level) for k, v in values.items()
            if len(v) == len(results) and all(x is not None for x in v)}
