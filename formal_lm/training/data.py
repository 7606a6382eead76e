"""What the training loop trains and validates on: a :class:`TrainingData`.

The loop asks a ``TrainingData`` for the token ids of seed ``s`` at step ``t`` (a pure function
of ``(s, t)`` through ``derive(s, Stream.TRAIN, t)``, so a resumed run draws exactly the batches
an uninterrupted run would have drawn), for the objective's extra batch, and for one validation
set shared by every seed. :class:`LanguageData` is the one for exact samples of a ``Language``;
the in-context-learning study supplies its own (``formal_lm.studies.icl``).

Shape glossary:  B batch   T tokens   V vocab   N validation strings
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Protocol

import numpy as np

from formal_lm.errors import FormalLMError, Problem
from formal_lm.seeding import SHARED, Stream, derive, rng
from formal_lm.training import objectives
from formal_lm.training.config import DataConfig, ObjectiveConfig
from formal_lm.vocab import PAD_ID


def bucket_length(n: int, bucket: int, max_length: int) -> int:
    """``n`` tokens rounded up to a multiple of ``bucket``, capped at ``max_length``."""
    return min(max_length, bucket * math.ceil(n / bucket))


def encode(lang, strings: list, length: int) -> np.ndarray:
    """int32 [B, length] right-padded ``[BOS, s..., EOS, PAD...]``."""
    return lang.vocab.batch(strings, length=length)


def digest(*parts) -> str:
    """A short content hash of arrays and JSON values (what a run records to tie itself to its
    data). Floating arrays are rounded to 6 decimals first, so the last bits of a platform's
    arithmetic do not count."""
    h = hashlib.sha256()
    for a in parts:
        if isinstance(a, np.ndarray):
            if a.dtype.kind == "f":
                a = np.round(a.astype(np.float64), 6)
            a = np.ascontiguousarray(a)
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
        else:
            h.update(json.dumps(a, sort_keys=True).encode())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Validation:
    """The validation set of a run, shared by every seed.

    Attributes:
        ids: int32 [N, T] right-padded token ids.
        p_true: float32 [N, T-1, V] exact next-token rows of ``ids`` (zero rows where nothing is
            known), or None when there is no exact reference (no KL is reported then).
        ood: the objective's held-out completion batch (ids, weights), or None.
        floor: the exact NLL of these very strings per real target token (the floor of
            ``val_loss`` on this sample, beside the population floor), or None.
        targets: int32 [N, T-1] what is scored at each step (PAD: nothing); None (the default)
            means the next tokens, ``ids[:, 1:]``.
    """

    ids: np.ndarray
    p_true: np.ndarray | None
    ood: tuple[np.ndarray, np.ndarray] | None = None
    floor: float | None = None
    targets: np.ndarray | None = None

    def __post_init__(self):
        if self.targets is None:
            object.__setattr__(self, "targets", np.asarray(self.ids)[:, 1:])


def sample_floor(ids: np.ndarray, p_true: np.ndarray) -> float:
    """The exact NLL of ``ids`` [N, T] per real target token, from its rows [N, T-1, V]."""
    tgt = ids[:, 1:]
    mask = tgt != PAD_ID
    p = np.take_along_axis(p_true, tgt[..., None], -1)[..., 0]
    return float(-np.log(np.where(mask, p, 1.0).astype(np.float64)).sum() / max(mask.sum(), 1))


class TrainingData(Protocol):
    """What :func:`formal_lm.training.fit` needs to know about its data.

    Language-modelling data gives token ids only: the target of each step is the next token.
    A supervised task (``formal_lm.tasks``) also has ``train_targets(seed, step)`` (int32
    [B, T-1], PAD where nothing is scored), ``token_classes`` (int [V]: each target is scored
    against the tokens of its class only) and ``class_weights`` (the loss is ``sum_c w_c *
    mean NLL of class c``); it may add ``next_symbols`` = (weight, scored tokens bool [V]) and
    ``train_next_symbols(seed, step)`` (int32 [B, T-1] bitmasks of the tokens that may come
    next, 0 where not scored) for a next-symbol-set loss. :func:`train_batch` and
    :func:`task_classes` read them.
    """

    vocab_size: int
    floor: float | None  # the loss floor (nats per real token), None when unknown
    floor_stderr: float  # its standard error: 0.0 when exact, > 0 for a Monte Carlo estimate
    bucket: int  # batches are padded to a multiple of this many tokens ...
    max_tokens: int  # ... but not beyond this (the longest sequence a batch may hold)

    def train_ids(self, seed: int, step: int) -> np.ndarray:
        """int32 [B, T] token ids of ``seed``'s batch at ``step`` (any T; the loop pads)."""

    def ood_batch(self, seed: int, step: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The objective's (ids [Bo, To], weights [Bo, To-1]) at ``step``, or None."""

    def validation(self) -> Validation:
        """The validation set (computed once)."""

    def identity(self) -> dict:
        """JSON facts that define the data (a run refuses to resume when they change)."""

    def files(self) -> dict[str, str]:
        """{file name: text} stored in the run directory (e.g. the objective's prompt split)."""


def train_batch(data, seed: int, step: int) -> tuple:
    """(ids [B, T], targets [B, T-1], next-symbol bitmasks [B, T-1] or None) of ``seed`` at
    ``step``: the data's targets when it has them, else the next tokens."""
    ids = data.train_ids(seed, step)
    targets = getattr(data, "train_targets", None)
    ns = getattr(data, "train_next_symbols", None) if getattr(data, "next_symbols", None) \
        else None
    return (ids, ids[:, 1:] if targets is None else targets(seed, step),
            None if ns is None else ns(seed, step))


def tokens_needed(ids: np.ndarray, targets: np.ndarray) -> int:
    """The padded length a batch needs: its most real tokens, and room for its last scored
    target (a task's answers end in query steps that may be followed by PAD)."""
    cols = np.flatnonzero((targets != PAD_ID).any(0))
    return max(int((ids != PAD_ID).sum(1).max()), int(cols[-1]) + 2 if len(cols) else 0)


def task_classes(data) -> tuple:
    """(token classes [V], class weights, next_symbols) of a supervised task's data (see
    :class:`TrainingData`); (None, None, None) otherwise."""
    return (getattr(data, "token_classes", None), getattr(data, "class_weights", None),
            getattr(data, "next_symbols", None))


class EpochOrder:
    """Which item of a fixed data set of ``n`` items each batch slot takes: every item once per
    epoch, in an order drawn per epoch from ``derive(seed, stream, -2, epoch)``.

    Example:
        >>> order = EpochOrder(4, seed=0)
        >>> sorted(order.indices(0, 4).tolist())  # one epoch: every item once
        [0, 1, 2, 3]
    """

    def __init__(self, n: int, seed: int, stream: Stream = Stream.TRAIN):
        self.n, self.seed, self.stream = n, seed, stream
        self._epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._epoch != epoch:  # kept for the current epoch only
            perm = rng(self.seed, self.stream, -2, epoch).permutation(self.n)
            self._epoch, self._perm = epoch, perm
        return self._perm

    def indices(self, step: int, batch_size: int) -> np.ndarray:
        """The items of the batch of ``step``."""
        out = np.empty(batch_size, np.int64)
        for k, i in enumerate(range(step * batch_size, (step + 1) * batch_size)):
            epoch, j = divmod(i, self.n)
            out[k] = self._permutation(epoch)[j]
        return out


class Strings:
    """Exact samples of a language for one seed: ``strings(step)`` is that step's batch.

    Args:
        lang: the language.
        cfg: the data config.
        seed: the run seed.
        batch_size: strings per step.
        stream: TRAIN for training data; VAL/TEST build held-out sets with :func:`held_out`.
    """

    def __init__(self, lang, cfg: DataConfig, seed: int, batch_size: int,
                 stream: Stream = Stream.TRAIN):
        self.lang, self.cfg, self.seed, self.batch_size, self.stream = (
            lang, cfg, seed, batch_size, stream)
        self.max_symbols = cfg.max_length - 2
        if cfg.lo is not None:
            self.lengths, self.length_p = _length_probs(lang, cfg.lo, cfg.hi)
        self.dataset = self._fixed_dataset() if cfg.mode == "fixed" else None
        if self.dataset is not None:
            self.order = EpochOrder(len(self.dataset), seed, stream)

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
        ls = rng(self.seed, self.stream, *key).choice(self.lengths, size=n, p=self.length_p)
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

    def strings(self, step: int) -> list:
        """The training strings of optimizer step ``step`` (0-based)."""
        B = self.batch_size
        if self.cfg.mode == "fresh":
            return self._fresh(B, (step,))
        if self.cfg.mode == "length_range":
            return self._in_range(B, (step,))
        return [self.dataset[i] for i in self.order.indices(step, B)]


def _length_probs(lang, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(lang.length_distribution(hi), float)[lo: hi + 1]
    lengths = np.arange(lo, hi + 1)
    keep = p > 0
    if not keep.any():
        raise FormalLMError(Problem(f"the language {lang.name!r} has no strings with length in "
                                    f"[lo={lo}, hi={hi}]", "change data.lo / data.hi"))
    return lengths[keep], p[keep] / p[keep].sum()


def held_out(lang, cfg: DataConfig, stream: Stream = Stream.VAL, n: int | None = None) -> list:
    """A held-out set from the VAL (or TEST) stream, drawn like the training data.

    "fresh" and "fixed" with ``dataset_size`` draw fresh samples; "length_range" and per-length
    "fixed" draw lengths in [lo, hi]. Shared by all seeds.
    """
    n = cfg.eval_size if n is None else n
    if cfg.lo is not None:
        fresh = dataclasses.replace(cfg, mode="length_range", dataset_size=None, per_length=None)
    else:
        fresh = dataclasses.replace(cfg, mode="fresh", dataset_size=None, per_length=None,
                                    lo=None, hi=None)
    src = Strings(lang, fresh, SHARED, n, stream=stream)
    return src._in_range(n, (0,)) if cfg.lo is not None else src._fresh(n, (0,))


def _tail(lang, longest: int) -> float:
    """P(|s| > longest) under ``lang`` (0 when no string is longer)."""
    return max(0.0, 1.0 - float(np.sum(lang.length_distribution(longest))))


def training_target(lang, data: DataConfig):
    """The distribution training strings are drawn from: ``lang`` conditioned on the length
    range [lo, hi] when the data has one; else, when the language has strings longer than
    ``max_length - 2`` (which "fresh" data redraws), ``lang`` restricted to [0, max_length - 2];
    else ``lang`` itself. The loss floor and the exact KL of training are judged against it."""
    if data.lo is not None:
        return lang.restrict(data.lo, data.hi)
    longest = data.max_length - 2
    return lang.restrict(0, longest) if _tail(lang, longest) > 0 else lang


class LanguageData:
    """Exact samples of a language (per seed), its exact validation table and the objective.

    With lengths in [lo, hi] (``length_range``, or per-length ``fixed`` data), the validation
    strings come from the language conditioned on that range (``lang.restrict(lo, hi)``, kept as
    ``target``), and so do the loss floor and the exact next-token rows behind the KL. Without
    a range, strings longer than ``max_length - 2`` symbols are redrawn, so when the language
    has such strings the target is the language restricted to ``[0, max_length - 2]``.

    Args:
        lang: the language.
        data: how training strings are drawn.
        batch_size: strings per step and seed.
        objective: the training objective (a completion objective adds OOD prompt batches).
        split: the objective's OOD prompt split ({"train", "heldout"}); computed with
            :func:`objectives.ood_split` when None.
    """

    def __init__(self, lang, data: DataConfig, batch_size: int,
                 objective: ObjectiveConfig = ObjectiveConfig(), split: dict | None = None):
        self.lang, self.data, self.batch_size, self.objective = lang, data, batch_size, objective
        self.vocab_size = lang.vocab.size
        self.bucket, self.max_tokens = data.bucket, data.max_length
        # what the strings are drawn from: with lengths in [lo, hi], the language conditioned on
        # that range, whose floor and next-token rows the loss and KL are judged against
        self.target = training_target(lang, data)
        loss_floor = self.target.optimal_loss()  # exact, or an estimate (ambiguity)
        self.floor, self.floor_stderr = float(loss_floor.per_token), float(loss_floor.stderr)
        self._sources: dict[int, Strings] = {}
        self.split = None
        if objective.name in objectives.COMPLETION_OBJECTIVES:
            ob = objective
            self.split = split or objectives.ood_split(lang, ob.prompt_length, ob.split_seed)
            longest = ob.prompt_length * 2 + 3
            self._ood_T = bucket_length(longest, data.bucket, max(longest, data.bucket))
            self._ood_train = objectives.completion_batch(lang, self.split["train"], ob.name,
                                                          self._ood_T)
        self._validation = None

    def train_ids(self, seed: int, step: int) -> np.ndarray:
        return self.lang.vocab.batch(self.train_strings(seed, step))

    def train_strings(self, seed: int, step: int) -> list:
        """The training strings of ``seed`` at ``step`` (what ``train_ids`` encodes)."""
        if seed not in self._sources:
            self._sources[seed] = Strings(self.lang, self.data, seed, self.batch_size)
        return self._sources[seed].strings(step)

    def ood_batch(self, seed: int, step: int):
        if self.split is None:
            return None
        ids, weights = self._ood_train
        idx = rng(seed, Stream.OOD, step).integers(len(ids), size=self.objective.batch_size)
        return ids[idx], weights[idx]

    def validation(self) -> Validation:
        if self._validation is None:
            val = held_out(self.lang, self.data, Stream.VAL)
            T = bucket_length(max(len(s) for s in val) + 2, self.data.bucket, self.data.max_length)
            ids = encode(self.lang, val, T)  # [N, T]
            p_true = self.target.next_token_probs(ids)[:, :-1].astype(np.float32)  # [N, T-1, V]
            ood = None
            if self.split is not None:
                ood = objectives.completion_batch(self.lang, self.split["heldout"],
                                                  self.objective.name, self._ood_T)
            self._validation = Validation(ids, p_true, ood, sample_floor(ids, p_true))
        return self._validation

    def files(self) -> dict[str, str]:
        if self.split is None:
            return {}
        ob = self.objective
        return {objectives.SPLIT_FILE: objectives.split_text(self.split, ob.prompt_length,
                                                              ob.split_seed)}

    def identity(self) -> dict:
        v = self.validation()
        return {"kind": "language", "language": self.lang.name,
                "fingerprint": self.lang.fingerprint(),
                "validation": digest(v.ids, v.p_true),
                "ood_split": None if self.split is None else digest(
                    {k: [list(p) for p in ps] for k, ps in self.split.items()})}
