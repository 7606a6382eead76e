"""Length generalization: exact KL and next-symbol-set accuracy per length bin (Deletang et al.
2023 protocol: train on lengths up to 40, test on 41..500), and per nesting depth for bracket
languages. Strings come from the language conditioned on their length, ``lang.sample(n, length=L)``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from formal_lm.analysis import measures as M
from formal_lm.analysis.metrics import position_scores, set_terms
from formal_lm.analysis.predictor import call_model
from formal_lm.errors import FormalLMError, Problem
from formal_lm.rules import Balanced
from formal_lm.seeding import Stream, derive, rng


@dataclasses.dataclass(frozen=True)
class BinResult:
    """Scores of strings whose length (or depth) falls in [lo, hi]."""

    lo: int
    hi: int
    n_strings: int
    kl_per_token: float
    set_accuracy_per_position: float
    set_accuracy_per_string: float
    in_training_range: bool


@dataclasses.dataclass(frozen=True)
class LengthGeneralizationResult:
    """Per-length-bin (and, for bracket languages, per-depth-bin) exact KL and set accuracy."""

    train_max_length: int
    threshold: float
    length_bins: tuple[BinResult, ...]
    depth_bins: tuple[BinResult, ...]
    skipped_lengths: int  # requested lengths with no strings in the language
    empty_bins: tuple[tuple[int, int], ...] = ()  # requested length bins with no strings at all

    def measures(self) -> tuple[M.Measure, ...]:
        out = []
        for kind, bins in (("len", self.length_bins), ("depth", self.depth_bins)):
            for b in bins:
                scope = M.IN_DISTRIBUTION if b.in_training_range else M.OUT_OF_DISTRIBUTION
                what = f"strings of {'length' if kind == 'len' else 'nesting depth'} {b.lo}-{b.hi}"
                out += [M.fraction(f"{kind}[{b.lo}-{b.hi}]_set_acc", b.set_accuracy_per_string,
                                   scope, f"share of {what} with every next-symbol set right",
                                   tested=not b.in_training_range),
                        M.nats(f"{kind}[{b.lo}-{b.hi}]_kl", b.kl_per_token, scope,
                               f"exact KL per real target token on {what}")]
        return tuple(out)


def nesting_depth(s, lang) -> int:
    """Maximum bracket nesting depth of ``s`` over the language's ``Balanced`` rules (0 if none)."""
    pairs = [(r.open, r.close) for r in lang.rules if isinstance(r, Balanced)]
    opens = {o for o, _ in pairs}
    closes = {c for _, c in pairs}
    d = best = 0
    for x in s:
        d += (x in opens) - (x in closes)
        best = max(best, d)
    return best


def _default_bins(train_max_length: int, lengths: Sequence[int]) -> list[tuple[int, int]]:
    hi = max(lengths)
    edges = [train_max_length]
    while edges[-1] < hi:
        edges.append(min(hi, edges[-1] * 2 if edges[-1] < 200 else edges[-1] + 200))
    bins = [(1, train_max_length)] + [(a + 1, b) for a, b in zip(edges, edges[1:])]
    return [(lo, h) for lo, h in bins if lo <= h]


def _per_string(predictor, lang, strings, threshold, batch_size) -> np.ndarray:
    """float [N, 5] per string: KL sum, real targets, correct sets, scored positions, all sets
    correct (0/1). One model call and one exact table per batch; bins add rows up."""
    out = np.zeros((len(strings), 5))
    order = np.argsort([len(s) for s in strings], kind="stable")  # similar lengths share a batch
    for i in range(0, len(strings), batch_size):
        idx = order[i: i + batch_size]
        ids = lang.vocab.batch([strings[j] for j in idx])
        logits = call_model(predictor, ids, batch_size=batch_size)
        p = lang.next_token_probs(ids)
        pos = position_scores(logits, p, ids)
        c, sc, _ = set_terms(logits, p, ids, threshold)
        out[idx] = np.stack([pos.kl.sum(1), pos.mask.sum(1), c.sum(1), sc.sum(1),
                             np.all(c | ~sc, axis=1)], axis=1)
    return out


def _bin(rows: np.ndarray):
    """(KL per token, set accuracy per position, per string) of per-string rows."""
    kl, n, ok, scored, strings_ok = rows.sum(0)
    nan = float("nan")
    return (float(kl / n) if n else nan, float(ok / scored) if scored else nan,
            float(strings_ok / len(rows)) if len(rows) else nan)


def length_generalization(predictor, lang, *, train_max_length: int = 40,
                          test_lengths: Sequence[int] = range(41, 501), per_bin: int = 64,
                          bins: Sequence[tuple[int, int]] | None = None,
                          threshold: float = 0.01, seed: int = 0,
                          batch_size: int = 64) -> LengthGeneralizationResult:
    """Exact KL and next-symbol-set accuracy per length bin, training lengths vs longer ones.

    Args:
        predictor: ids [B, T] -> logits [B, T, V]; it must accept sequences of the longest length.
        lang: the language; ``lang.sample(n, seed=..., length=L)`` supplies strings of length L.
        train_max_length: lengths 1..train_max_length form the in-training bin(s).
        test_lengths: longer lengths to test.
        per_bin: strings per bin, spread over the bin's available lengths.
        bins: [(lo, hi)] inclusive length bins (default: the training range, then doubling).
            A bin with no strings of the language is listed in the result's ``empty_bins``.
        threshold: next-symbol-set threshold.

    KL is taken against the full language's next-token rows (a model trained on every length
    should match them); ``skipped_lengths`` counts the requested lengths without strings.

    Raises:
        FormalLMError: when no length of ``test_lengths`` has a string in the language.
    """
    wanted = sorted(set(range(1, train_max_length + 1)) | set(test_lengths))
    pl = np.asarray(lang.length_distribution(max(wanted)))
    available = [L for L in wanted if L < len(pl) and pl[L] > 0]
    skipped = len(wanted) - len(available)
    _check_test_lengths(lang, test_lengths, set(available))
    bins = list(bins) if bins is not None else _default_bins(train_max_length, wanted)
    pick = rng(seed, Stream.LENGTH)
    length_results, all_strings, all_rows, empty = [], [], [], []
    for lo, hi in bins:
        Ls = [L for L in available if lo <= L <= hi]
        if not Ls:
            empty.append((int(lo), int(hi)))  # said in the result, never dropped silently
            continue
        picks = pick.choice(Ls, size=per_bin, replace=len(Ls) < per_bin)
        strings = []
        for k, L in enumerate(sorted(int(x) for x in picks)):
            strings.extend(lang.sample(1, seed=derive(seed, Stream.LENGTH, L, k), length=L))
        rows = _per_string(predictor, lang, strings, threshold, batch_size)
        all_strings.extend(strings)
        all_rows.append(rows)
        length_results.append(BinResult(lo, hi, len(strings), *_bin(rows),
                                        hi <= train_max_length))
    depth_results = []
    if any(isinstance(r, Balanced) for r in lang.rules) and all_strings:
        depths = np.array([nesting_depth(s, lang) for s in all_strings])
        train_depth = max((nesting_depth(s, lang) for s in all_strings if len(s) <= train_max_length),
                          default=0)
        edges = [1]
        while edges[-1] < depths.max():
            edges.append(edges[-1] * 2)
        for lo, hi in [(0, 1)] + [(a + 1, b) for a, b in zip(edges, edges[1:])]:
            sel = (lo <= depths) & (depths <= hi)
            if sel.any():  # the strings were scored once, above: add up their rows
                depth_results.append(BinResult(lo, hi, int(sel.sum()),
                                               *_bin(np.concatenate(all_rows)[sel]),
                                               hi <= train_depth))
    return LengthGeneralizationResult(train_max_length, threshold, tuple(length_results),
                                      tuple(depth_results), skipped, tuple(empty))


def _check_test_lengths(lang, test_lengths, available: set) -> None:
    """A FormalLMError when no requested test length has a string in the language."""
    test = sorted(set(test_lengths))
    if test and not available.intersection(test):
        raise FormalLMError(Problem(
            f"{lang.name!r} has no strings with a length in test_lengths "
            f"({test[0]}..{test[-1]}): there is nothing to test",
            "pick test lengths with mass (see lang.length_distribution)"))
