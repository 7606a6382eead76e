"""Length generalization: exact KL and next-symbol-set accuracy per length bin (Deletang et al.
2023 protocol: train on lengths up to 40, test on 41..500), and per nesting depth for bracket
languages. Strings come from the language conditioned on their length, ``lang.sample(n, length=L)``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from formal_lm.analysis._common import ModelFn
from formal_lm.analysis.next_symbol import set_correct
from formal_lm.analysis.saturation import kl_and_nll
from formal_lm.rules import Balanced


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


def _score(model_fn, lang, strings, threshold, batch_size):
    kl_sum = n_tok = 0.0
    pos_ok = pos_n = 0
    str_ok = []
    strings = sorted(strings, key=len)
    for i in range(0, len(strings), batch_size):
        ids = lang.vocab.batch(strings[i: i + batch_size])
        kl, _, _, mask = kl_and_nll(model_fn, lang, ids, batch_size=batch_size)
        c, s = set_correct(model_fn, lang, ids, threshold, batch_size=batch_size)
        kl_sum += kl.sum()
        n_tok += mask.sum()
        pos_ok += c.sum()
        pos_n += s.sum()
        str_ok.extend(np.all(c | ~s, axis=1).tolist())
    nan = float("nan")
    return (float(kl_sum / n_tok) if n_tok else nan, float(pos_ok / pos_n) if pos_n else nan,
            float(np.mean(str_ok)) if str_ok else nan)


def length_generalization(model_fn: ModelFn, lang, *, train_max_length: int = 40,
                          test_lengths: Sequence[int] = range(41, 501), per_bin: int = 64,
                          bins: Sequence[tuple[int, int]] | None = None,
                          threshold: float = 0.01, seed: int = 0,
                          batch_size: int = 64) -> LengthGeneralizationResult:
    """Exact KL and next-symbol-set accuracy per length bin, training lengths vs longer ones.

    Args:
        model_fn: ids [B, T] -> logits [B, T, V]; it must accept sequences of the longest length.
        lang: the language; ``lang.sample(n, seed=..., length=L)`` supplies strings of length L.
        train_max_length: lengths 1..train_max_length form the in-training bin(s).
        test_lengths: longer lengths to test.
        per_bin: strings per bin, spread over the bin's available lengths.
        bins: [(lo, hi)] inclusive length bins (default: the training range, then doubling).
        threshold: next-symbol-set threshold.
    """
    wanted = sorted(set(range(1, train_max_length + 1)) | set(test_lengths))
    pl = np.asarray(lang.length_distribution(max(wanted)))
    available = [L for L in wanted if L < len(pl) and pl[L] > 0]
    skipped = len(wanted) - len(available)
    bins = list(bins) if bins is not None else _default_bins(train_max_length, wanted)
    rng = np.random.default_rng(seed)
    length_results, all_strings = [], []
    for lo, hi in bins:
        Ls = [L for L in available if lo <= L <= hi]
        if not Ls:
            continue
        picks = rng.choice(Ls, size=per_bin, replace=len(Ls) < per_bin)
        strings = []
        for k, L in enumerate(sorted(int(x) for x in picks)):
            strings.extend(lang.sample(1, seed=seed * 100003 + L * 1009 + k, length=L))
        all_strings.extend(strings)
        kl, pp, ps = _score(model_fn, lang, strings, threshold, batch_size)
        length_results.append(BinResult(lo, hi, len(strings), kl, pp, ps, hi <= train_max_length))
    depth_results = []
    if any(isinstance(r, Balanced) for r in lang.rules) and all_strings:
        depths = np.array([nesting_depth(s, lang) for s in all_strings])
        train_depth = max((nesting_depth(s, lang) for s in all_strings if len(s) <= train_max_length),
                          default=0)
        edges = [1]
        while edges[-1] < depths.max():
            edges.append(edges[-1] * 2)
        for lo, hi in [(0, 1)] + [(a + 1, b) for a, b in zip(edges, edges[1:])]:
            sel = [s for s, d in zip(all_strings, depths) if lo <= d <= hi]
            if sel:
                kl, pp, ps = _score(model_fn, lang, sel, threshold, batch_size)
                depth_results.append(BinResult(lo, hi, len(sel), kl, pp, ps, hi <= train_depth))
    return LengthGeneralizationResult(train_max_length, threshold, tuple(length_results),
                                      tuple(depth_results), skipped)
