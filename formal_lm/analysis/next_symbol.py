"""Next-symbol-set accuracy (Bhattamishra et al. 2020).

At each position of a string of the language, the model's predicted set is the tokens it gives
probability > ``threshold``; the legal set is the tokens with exact probability > 0 (symbols and
EOS). A position is correct when the sets are equal; a string is correct when all its positions are.
Positions whose prefix is impossible under the language have no legal set and are not scored;
nor are positions where a legal token's exact probability is at most ``threshold`` (there the
exact language itself would fail; their share is reported as ``nss_unscored``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from formal_lm.analysis import measures as M
from formal_lm.analysis.metrics import set_terms
from formal_lm.analysis.predictor import call_model


@dataclasses.dataclass(frozen=True)
class SetAccuracy:
    """Next-symbol-set accuracy on a group of strings (NaN when the group is empty)."""

    n_strings: int
    n_positions: int
    per_position: float
    per_string: float
    n_unscored: int = 0  # positions left out: a legal token has exact probability <= threshold


@dataclasses.dataclass(frozen=True)
class NextSymbolResult:
    """Next-symbol-set accuracy, in distribution and out of it.

    ``in_distribution`` holds strings no longer than ``train_max_length`` (all strings when it is
    None); ``out_of_distribution`` the longer ones.
    """

    threshold: float
    train_max_length: int | None
    in_distribution: SetAccuracy
    out_of_distribution: SetAccuracy
    string_correct: tuple[bool, ...]  # per input string, in input order

    def measures(self) -> tuple[M.Measure, ...]:
        out = []
        for where, acc, scope in (("", self.in_distribution, M.IN_DISTRIBUTION),
                                  ("_longer", self.out_of_distribution, M.OUT_OF_DISTRIBUTION)):
            if not acc.n_strings:
                continue
            what = ("strings up to the training length" if not where else
                    "strings longer than the training length")
            out += [M.fraction(f"nss_per_string{where}", acc.per_string, scope,
                               f"share of {what} whose every next-symbol set is right",
                               headline=not where),
                    M.fraction(f"nss_per_position{where}", acc.per_position, scope,
                               f"share of positions of {what} with the right next-symbol set"),
                    M.fraction(f"nss_unscored{where}",
                               acc.n_unscored / max(acc.n_positions + acc.n_unscored, 1), scope,
                               f"share of positions of {what} not scored: a legal token's exact "
                               "probability is at most the threshold")]
        return tuple(out)


def set_correct(predictor, lang, ids: np.ndarray, threshold: float, *,
                batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(correct, scored, unscored), each [B, T], for ids [B, T] (see ``metrics.set_terms``)."""
    logits = call_model(predictor, ids, batch_size=batch_size)  # [B, T, V]
    return set_terms(logits, lang.next_token_probs(ids), ids, threshold)


def _accuracy(correct, scored, unscored) -> SetAccuracy:
    n = len(correct)
    if n == 0:
        return SetAccuracy(0, 0, float("nan"), float("nan"))
    n_pos = int(scored.sum())
    per_string = np.all(correct | ~scored, axis=1)
    return SetAccuracy(n, n_pos, float(correct.sum() / max(n_pos, 1)), float(per_string.mean()),
                       int(unscored.sum()))


def next_symbol_sets(predictor, lang, strings: Sequence, *, threshold: float,
                     train_max_length: int | None = None,
                     batch_size: int = 256) -> NextSymbolResult:
    """Next-symbol-set accuracy of ``predictor`` on ``strings`` of ``lang``.

    Args:
        predictor: ids [B, T] -> logits [B, T, V] (anything ``as_predictor`` accepts).
        lang: the language.
        strings: strings of the language.
        threshold: a token is predicted when its model probability exceeds this.
        train_max_length: strings longer than this count as out of distribution.
    """
    strings = [lang.vocab.as_string(s) for s in strings]
    if not strings:
        empty = _accuracy(*[np.zeros((0, 1), bool)] * 3)
        return NextSymbolResult(threshold, train_max_length, empty, empty, ())
    correct_rows = []
    order = np.argsort([len(s) for s in strings], kind="stable")  # similar lengths share a batch
    for i in range(0, len(strings), batch_size):
        idx = order[i: i + batch_size]
        ids = lang.vocab.batch([strings[j] for j in idx])
        c, s, u = set_correct(predictor, lang, ids, threshold, batch_size=batch_size)
        for k, j in enumerate(idx):
            correct_rows.append((j, c[k], s[k], u[k]))
    correct_rows.sort(key=lambda r: r[0])
    T = max(len(r[1]) for r in correct_rows)
    C, S, U = (np.zeros((len(strings), T), bool) for _ in range(3))
    for j, c, s, u in correct_rows:
        C[j, : len(c)], S[j, : len(s)], U[j, : len(u)] = c, s, u
    long = np.array([train_max_length is not None and len(s) > train_max_length for s in strings])
    per_string = np.all(C | ~S, axis=1)
    return NextSymbolResult(threshold, train_max_length, _accuracy(C[~long], S[~long], U[~long]),
                            _accuracy(C[long], S[long], U[long]),
                            tuple(bool(x) for x in per_string))
