"""Packing a padded batch into rows of a few static lengths, so a Transformer does work only on
real tokens (several sequences per row, positions restarting at 0, attention kept inside each
sequence), and dealing the rows over devices.

Shape glossary:  B batch   T padded tokens   L packed row length
"""
from __future__ import annotations

import math

import numpy as np

from formal_lm.vocab import PAD_ID


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


def pack_classes(ids: np.ndarray, classes: int = 2, fill: bool = True,
                 targets: np.ndarray | None = None,
                 extras: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Like :func:`pack`, but into rows of several static lengths (see :func:`row_lengths`).

    A sequence with m inputs belongs to the shortest row length ``L >= m``; it is placed
    first-fit decreasing into the open rows of its own length (or, with ``fill``, into those of
    any longer length too, as a filler), else opens a row of its own length. So short sequences
    do not pay ``T x T`` attention. Returns one dict per row length, each as :func:`pack`
    returns (arrays [B, L], ``rows`` the used rows, rows ``0..rows-1``). Every real target of
    ``ids`` appears exactly once over all of them; the layout is a pure function of ``ids``.

    ``targets`` [B, T-1] (None: the next tokens ``ids[:, 1:]``) are what is scored at each
    input, PAD where nothing is; a sequence's inputs run up to its last scored target.
    ``extras`` are further int arrays [B, T-1] aligned with the targets, packed like them.
    """
    ids = np.asarray(ids)
    B, T = ids.shape
    targets = ids[:, 1:] if targets is None else np.asarray(targets)
    lengths = row_lengths(T, classes)
    scored = targets != PAD_ID
    # inputs per sequence: up to the last scored target (for next tokens: real tokens - 1)
    n = np.where(scored.any(axis=1), T - 1 - np.argmax(scored[:, ::-1], axis=1), 0)
    order = np.argsort(-n, kind="stable")
    extras = dict(extras or {})
    out = [{"inp": np.zeros((B, L), np.int32), "tgt": np.zeros((B, L), np.int32),
            "pos": np.zeros((B, L), np.int32), "seg": np.zeros((B, L), np.int32),
            **{k: np.zeros((B, L), np.int32) for k in extras},
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
        p["tgt"][i, o:o + m] = targets[b, :m]
        for k, a in extras.items():
            p[k][i, o:o + m] = a[b, :m]
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
                 for k in part if k != "rows"}
        for j, idx in enumerate(rows_of):
            for k in dealt:
                dealt[k][j * C:j * C + len(idx)] = part[k][idx]
        dealt["rows"] = np.array([len(idx) for idx in rows_of], np.int32)
        out.append(dealt)
    return out
