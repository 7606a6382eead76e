"""Training distributions of supervised tasks: ``draw(seed, count)`` -> ``count`` examples, a
pure function of the seed (what :class:`formal_lm.tasks.data.TaskData` asks for every step).

Lengths are drawn first, then each length's examples from the exact samplers of
:mod:`formal_lm.tasks.transduction` and :mod:`formal_lm.tasks.recognition`, all from
``Stream.TASK``.
"""
from __future__ import annotations

import numpy as np

from formal_lm.errors import FormalLMError, Problem
from formal_lm.seeding import Stream, derive, rng
from formal_lm.tasks import recognition as rec
from formal_lm.tasks import transduction as trd


def _by_length(lengths: np.ndarray) -> dict[int, np.ndarray]:
    return {int(n): np.flatnonzero(lengths == n) for n in np.unique(lengths)}


def transduction_draw(name: str, lo: int, hi: int):
    """``draw(seed, count)``: inputs of lengths uniform in [lo, hi], the task's own input
    distribution at each length."""
    t = trd.task(name)

    def draw(seed: int, count: int):
        ns = rng(seed, Stream.TASK, -1).integers(lo, hi + 1, size=count)
        out: list = [None] * count
        for n, idx in _by_length(ns).items():
            for i, ex in zip(idx, t.sample(n, len(idx), derive(seed, Stream.TASK, n))):
                out[i] = ex
        return out

    return draw


def recognition_draw(lang, lo: int, hi: int, negatives: str):
    """``draw(seed, count)``: each example a member with probability 1/2 (its length uniform
    over the lengths in [lo, hi] that have members, then exact p(s | |s| = n)), else a
    non-member (its length uniform over [lo, hi]; uniform over the non-members of that length,
    or a one-edit near miss of a member, or either with probability 1/2 for "both")."""
    member_lengths = np.array([n for n in range(lo, hi + 1) if rec.has_members(lang, n)])
    if not len(member_lengths):
        raise FormalLMError(Problem(f"{lang.name!r} has no strings of length {lo}..{hi}",
                                    "draw from a length range that holds members"))

    def draw(seed: int, count: int):
        g = rng(seed, Stream.TASK, -1)
        pos = g.random(count) < 0.5
        near = (g.random(count) < 0.5) if negatives == "both" else np.full(
            count, negatives == "near_miss")
        ns = np.where(pos, g.choice(member_lengths, count),
                      np.where(near, g.choice(member_lengths, count),
                               g.integers(lo, hi + 1, size=count)))
        kind = np.where(pos, 0, np.where(near, 2, 1))
        out: list = [None] * count
        fns = {0: rec.positives, 1: rec.negatives, 2: rec.near_misses}
        for k, f in fns.items():
            for n, idx in _by_length(np.where(kind == k, ns, -1)).items():
                if n < 0:
                    continue
                label = rec.ACCEPT if k == 0 else rec.REJECT
                for i, x in zip(idx, f(lang, n, len(idx), derive(seed, Stream.TASK, k, n))):
                    out[i] = (tuple(x), label)
        return out

    return draw
