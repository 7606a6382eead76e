"""Training, validation and test data: exact samples, drawn statelessly from (seed, stream, step).

Every random draw goes through :func:`derive`, which maps ``(seed, stream, *indices)`` to a
32-bit seed with numpy's ``SeedSequence``. The batch of step ``t`` for seed ``s`` is a pure
function of ``(s, t)``, so the "data RNG state" of a run is its step counter: a run resumed from
a checkpoint draws exactly the batches an uninterrupted run would have drawn.

Streams: TRAIN (each seed its own), VAL and TEST (shared by all seeds, so seeds are compared on
the same held-out strings and a seed trained alone sees what it sees among others), MODEL (init),
DROPOUT, OOD (objective prompts).
"""
from __future__ import annotations

import math

import numpy as np

from formal_lm.errors import FormalLMError, Problem
from formal_lm.training.config import DataConfig

TRAIN, VAL, TEST, MODEL, DROPOUT, OOD = range(6)
SHARED = 0  # seed used for the VAL and TEST streams


def derive(seed: int, stream: int, *indices: int) -> int:
    """A 31-bit seed for ``(seed, stream, *indices)``; distinct tuples give independent seeds.

    Example:
        >>> derive(0, TRAIN, 5) == derive(0, TRAIN, 5), derive(0, TRAIN, 5) == derive(0, VAL, 5)
        (True, False)
    """
    words = [int(seed), int(stream), *[2 * i if i >= 0 else -2 * i - 1 for i in map(int, indices)]]
    return int(np.random.SeedSequence(words).generate_state(1)[0] >> 1)


def bucket_length(n: int, bucket: int, max_length: int) -> int:
    """``n`` tokens rounded up to a multiple of ``bucket``, capped at ``max_length``."""
    return min(max_length, bucket * math.ceil(n / bucket))


def _length_probs(lang, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(lang.length_distribution(hi), float)[lo: hi + 1]
    lengths = np.arange(lo, hi + 1)
    keep = p > 0
    if not keep.any():
        raise FormalLMError(Problem(f"the language {lang.name!r} has no strings with length in "
                                    f"[lo={lo}, hi={hi}]", "change data.lo / data.hi"))
    return lengths[keep], p[keep] / p[keep].sum()


class Source:
    """Strings for one seed: ``strings(step)`` is the training batch of that optimizer step.

    Args:
        lang: the language.
        cfg: the data config.
        seed: the run seed (the data stream derives from it).
        batch_size: strings per step.
        stream: TRAIN for training data; VAL/TEST build held-out sets with :func:`held_out`.
    """

    def __init__(self, lang, cfg: DataConfig, seed: int, batch_size: int, stream: int = TRAIN):
        self.lang, self.cfg, self.seed, self.batch_size, self.stream = (
            lang, cfg, seed, batch_size, stream)
        self.max_symbols = cfg.max_length - 2
        if cfg.lo is not None:
            self.lengths, self.length_p = _length_probs(lang, cfg.lo, cfg.hi)
        self.dataset = self._fixed_dataset() if cfg.mode == "fixed" else None
        self._perm_epoch, self._perm_cache = None, None

    # -- drawing ----------------------------------------------------------------------------
    def _fresh(self, n: int, key: tuple) -> list:
        """``n`` samples no longer than max_length (too long ones are redrawn)."""
        out, attempt = [], 0
        while len(out) < n:
            got = self.lang.sample(n - len(out), seed=derive(self.seed, self.stream, *key, attempt))
            out += [s for s in got if len(s) <= self.max_symbols]
            attempt += 1
            if attempt > 1000:
                raise FormalLMError(Problem(
                    f"could not draw strings of at most {self.max_symbols} symbols from "
                    f"{self.lang.name!r}", "raise data.max_length"))
        return out

    def _in_range(self, n: int, key: tuple) -> list:
        """``n`` samples with lengths drawn from the length distribution restricted to [lo, hi]."""
        rng = np.random.default_rng(derive(self.seed, self.stream, *key))
        ls = rng.choice(self.lengths, size=n, p=self.length_p)
        out: list = [None] * n
        for L in np.unique(ls):
            idx = np.flatnonzero(ls == L)
            got = self.lang.sample(len(idx), seed=derive(self.seed, self.stream, *key, int(L)),
                                   length=int(L))
            for i, s in zip(idx, got):
                out[i] = s
        return out

    def _fixed_dataset(self) -> list:
        cfg = self.cfg
        if cfg.per_length is not None:
            out = []
            for L in self.lengths:
                out += self.lang.sample(cfg.per_length,
                                        seed=derive(self.seed, self.stream, -1, int(L)),
                                        length=int(L))
            return out
        return self._fresh(cfg.dataset_size, (-1,))

    def _perm(self, epoch: int) -> np.ndarray:
        """This epoch's order of the fixed dataset (kept for the current epoch only)."""
        if self._perm_epoch != epoch:
            rng = np.random.default_rng(derive(self.seed, self.stream, -2, epoch))
            self._perm_epoch, self._perm_cache = epoch, rng.permutation(len(self.dataset))
        return self._perm_cache

    def strings(self, step: int) -> list:
        """The training strings of optimizer step ``step`` (0-based)."""
        B = self.batch_size
        if self.cfg.mode == "fresh":
            return self._fresh(B, (step,))
        if self.cfg.mode == "length_range":
            return self._in_range(B, (step,))
        N, out = len(self.dataset), []
        for i in range(step * B, (step + 1) * B):
            epoch, j = divmod(i, N)
            out.append(self.dataset[self._perm(epoch)[j]])
        return out


def held_out(lang, cfg: DataConfig, stream: int = VAL, n: int | None = None) -> list:
    """A held-out set from the VAL (or TEST) stream, drawn like the training data.

    "fresh" and "fixed" with ``dataset_size`` draw fresh samples; "length_range" and per-length
    "fixed" draw lengths in [lo, hi]. Shared by all seeds.
    """
    n = cfg.eval_size if n is None else n
    src = Source(lang, _as_fresh(cfg), SHARED, n, stream=stream)
    return src._in_range(n, (0,)) if cfg.lo is not None else src._fresh(n, (0,))


def _as_fresh(cfg: DataConfig) -> DataConfig:
    import dataclasses
    if cfg.lo is not None:
        return dataclasses.replace(cfg, mode="length_range", dataset_size=None, per_length=None)
    return dataclasses.replace(cfg, mode="fresh", dataset_size=None, per_length=None, lo=None,
                               hi=None)


def encode(lang, strings: list, length: int) -> np.ndarray:
    """int32 [B, length] right-padded ``[BOS, s..., EOS, PAD...]``."""
    return lang.vocab.batch(strings, length=length)


def pack(ids: np.ndarray) -> dict[str, np.ndarray]:
    """Packs the model inputs/targets of a padded batch into as few rows as fit (transformer).

    ``ids`` int32 [B, T] right-padded ``[BOS, s..., EOS, PAD...]``. Sequence b of L real tokens
    contributes inputs ``ids[b, :L-1]`` and targets ``ids[b, 1:L]``; these are placed first-fit
    decreasing into rows of T-1 slots. Returns int32 arrays (the order of rows is fixed by the
    lengths, so the packing is a pure function of ``ids``):

    * ``inp``, ``tgt`` [B, T-1]: packed inputs and targets (PAD in unused slots),
    * ``pos`` [B, T-1]: each token's position inside its own sequence (restarts at 0),
    * ``seg`` [B, T-1]: segment number inside the row (1, 2, ...; 0 in unused slots),
    * ``rows`` []: how many rows are used (rows ``rows..B-1`` are empty).

    The sum of the per-target NLL over ``tgt != PAD`` equals the one of the unpacked batch.
    """
    return pack_classes(ids, 1)[0]


def row_lengths(T: int, classes: int) -> tuple[int, ...]:
    """Row lengths of :func:`pack_classes` for a padded length ``T``: ``T-1`` and then
    ``classes - 1`` more, evenly spaced down to about half of it (none under 8, no repeats)."""
    top = T - 1
    if classes <= 1:
        return (top,)
    step = max(1, math.ceil(top / (2 * (classes - 1))))
    return tuple(sorted({max(top - i * step, min(8, top)) for i in range(classes)},
                        reverse=True))


def pack_classes(ids: np.ndarray, classes: int = 2, fill: bool = True) -> list[dict]:
    """Like :func:`pack`, but into rows of several static lengths (see :func:`row_lengths`).

    A sequence with m inputs belongs to the shortest row length ``L >= m``; it is placed
    first-fit decreasing into the open rows of its own length (or, with ``fill``, into those of
    any longer length too, as a filler), else opens a row of its own length. So short sequences
    do not pay ``T x T`` attention. Returns one dict per row length, each as :func:`pack`
    returns (arrays [B, L], ``rows`` the used rows, rows ``0..rows-1``). Every real target of
    ``ids`` appears exactly once over all of them; the layout is a pure function of ``ids``.
    """
    ids = np.asarray(ids)
    B, T = ids.shape
    from formal_lm.vocab import PAD_ID
    lengths = row_lengths(T, classes)
    n = (ids != PAD_ID).sum(axis=1) - 1  # inputs per sequence
    order = np.argsort(-n, kind="stable")
    out = [{"inp": np.zeros((B, L), np.int32), "tgt": np.zeros((B, L), np.int32),
            "pos": np.zeros((B, L), np.int32), "seg": np.zeros((B, L), np.int32),
            "rows": np.int32(0)} for L in lengths]
    open_rows: list[list[int]] = []  # [class, row index in that class, free slots, segments]
    for b in order:
        m = int(n[b])
        if m <= 0:
            continue
        c = max(i for i, L in enumerate(lengths) if L >= m)
        for r in open_rows:
            if r[2] >= m and (r[0] == c or (fill and r[0] < c)):
                break
        else:
            r = [c, int(out[c]["rows"]), lengths[c], 0]
            out[c]["rows"] = np.int32(r[1] + 1)
            open_rows.append(r)
        p, i, o = out[r[0]], r[1], lengths[r[0]] - r[2]
        p["inp"][i, o:o + m] = ids[b, :m]
        p["tgt"][i, o:o + m] = ids[b, 1:m + 1]
        p["pos"][i, o:o + m] = np.arange(m)
        r[3] += 1
        p["seg"][i, o:o + m] = r[3]
        r[2] -= m
    return out


def deal_rows(parts: list[dict], shards: int, block: int = 1) -> list[dict]:
    """Deals the used rows of packed row lengths (:func:`pack_classes` dicts, or one
    :func:`pack` dict in a list) over ``shards`` slices, in blocks of ``block`` consecutive rows
    of one length, so that the slices' work is about equal.

    Blocks go, costliest first (rows x L^2, attention's share of the work), to the slice with
    the least work so far. With ``block`` the trainer's micro-batch size, a slice's rows of one
    length fill whole micro-batches but for at most one block. Returns, per row length, arrays
    [shards * C, L] (slice ``j`` is rows ``j*C .. j*C + C - 1``, its used rows first; C =
    ``block`` times ceil(ceil(B / block) / shards), room for any B used rows) and ``rows`` int32
    [shards], the used rows of each slice. ``shards=1`` keeps the layout (``rows`` becomes
    [1]). Every row appears exactly once.

    Example:
        >>> part = pack(np.array([[1, 3, 4, 2], [1, 3, 2, 0], [1, 4, 2, 0]]))
        >>> int(part["rows"]), deal_rows([part], 2)[0]["rows"].tolist()
        (3, [2, 1])
    """
    blocks = []  # (cost, part index, first row, rows)
    for i, part in enumerate(parts):
        L, used = part["inp"].shape[1], int(part["rows"])
        blocks += [(min(block, used - b) * L * L, i, b, min(block, used - b))
                   for b in range(0, used, block)]
    load = np.zeros(shards)
    mine: list[list[list[int]]] = [[[] for _ in range(shards)] for _ in parts]
    for cost, i, first, n in sorted(blocks, key=lambda b: (-b[0], b[1], b[2])):
        j = int(np.argmin(load))
        load[j] += cost
        mine[i][j] += range(first, first + n)
    out = []
    for part, rows_of in zip(parts, mine):
        B = part["inp"].shape[0]
        n_blocks = -(-B // block)  # the most blocks B rows can fill
        C = block * -(-n_blocks // shards)
        dealt = {k: np.zeros((shards * C,) + part[k].shape[1:], part[k].dtype)
                 for k in ("inp", "tgt", "pos", "seg")}
        for j, idx in enumerate(rows_of):
            for k in dealt:
                dealt[k][j * C:j * C + len(idx)] = part[k][idx]
        dealt["rows"] = np.array([len(idx) for idx in rows_of], np.int32)
        out.append(dealt)
    return out
