"""A supervised task as the training loop's data (:class:`TaskData`, a ``TrainingData``).

Each step, seed ``s`` gets ``batch_size`` examples from ``draw(derive(s, Stream.TRAIN, step),
batch_size)``; validation examples come from ``draw(derive(SHARED, Stream.VAL), eval_size)``,
shared by every seed. The answers are deterministic, so the loss floor is exactly 0, and the
exact next-token rows of the validation set are the one-hot answers: the loop's validation KL
equals its validation loss, and saturation-aware stopping can use it. Only the task's answers
are scored on validation data (a recognizer's language-modelling auxiliary is a training loss).

Shape glossary:  B batch   T padded tokens   V vocab   N validation examples
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from formal_lm.errors import FormalLMError, Problem
from formal_lm.seeding import SHARED, Stream, derive
from formal_lm.tasks.encoding import TaskVocab, encode, width
from formal_lm.tasks.recognition import ACCEPT
from formal_lm.training.data import Validation, bucket_length, digest
from formal_lm.vocab import EOS_ID, PAD_ID

Example = tuple[tuple[str, ...], tuple[str, ...]]
Draw = Callable[[int, int], Sequence[Example]]  # (seed, count) -> examples


def one_hot_rows(targets: np.ndarray, vocab_size: int) -> np.ndarray:
    """float32 [N, T-1, V]: the answer's one-hot row where a target is scored, 0 elsewhere."""
    rows = np.zeros(targets.shape + (vocab_size,), np.float32)
    n, t = np.nonzero(targets != PAD_ID)
    rows[n, t, targets[n, t]] = 1.0
    return rows


def next_symbol_tokens(vocab: TaskVocab) -> np.ndarray:
    """bool [V]: the tokens a next-symbol set ranges over (EOS and the input symbols)."""
    tokens = np.zeros(vocab.size, bool)
    tokens[EOS_ID] = True
    tokens[3:3 + len(vocab.inputs)] = True
    if vocab.size > 31:
        raise FormalLMError(Problem(f"a next-symbol loss needs at most 31 tokens (bitmasks in "
                                    f"int32), this task has {vocab.size}",
                                    "use next_symbol_weight = 0 for this language"))
    return tokens


def next_symbol_sets(lang, examples: Sequence[Example], width: int) -> np.ndarray:
    """int32 [B, width]: for each member ``x`` (label accept), at steps 0..n the bitmask of the
    tokens ``v`` with p(v | x_1..x_t) > 0 under ``lang`` (token ids as in the language's
    vocabulary, which a recognizer's shares); 0 elsewhere."""
    out = np.zeros((len(examples), width), np.int32)
    members = [b for b, (_, y) in enumerate(examples) if y == ACCEPT]
    if not members:
        return out
    ids = lang.vocab.batch([examples[b][0] for b in members])  # [M, n + 2]
    probs = lang.next_token_probs(ids)  # [M, n + 2, V_lang]
    bits = (probs > 0).astype(np.int64) << np.arange(probs.shape[-1])
    masks = bits.sum(-1)
    for i, b in enumerate(members):
        n = len(examples[b][0])
        out[b, :n + 1] = masks[i, :n + 1]
    return out


class TaskData:
    """Examples of a supervised task for :func:`formal_lm.training.fit`.

    Args:
        name: the task's name (part of the run's identity).
        vocab: the task's vocabulary.
        draw: ``draw(seed, count)`` -> ``count`` examples ``(x, y)``, a pure function of seed.
        batch_size: examples per step and seed.
        max_tokens: the widest example (``encoding.width``) the draw can produce.
        eval_size: validation examples.
        lm_weight: > 0: a recognizer also learns to predict the symbols of its positive
            examples (``lm`` flag of ``encoding.encode``) with this weight; the loss is then
            ``mean NLL of the labels + lm_weight * mean NLL of the symbols``.
        bucket: batches are padded to a multiple of this many tokens.
        facts: JSON facts that define the task beyond its validation examples (the run's
            identity; e.g. the training lengths).
        language: a recognizer's language (its inputs are the language's symbols, in order).
        next_symbol_weight: > 0 (with ``language``): a recognizer also learns, at each step
            of reading a member, which of the symbols and EOS may come next (Butoi et al.'s
            next-symbol prediction loss: one binary cross-entropy per symbol, from the exact
            next-token support), with this weight.
    """

    def __init__(self, name: str, vocab: TaskVocab, draw: Draw, batch_size: int,
                 max_tokens: int, *, eval_size: int = 256, lm_weight: float = 0.0,
                 bucket: int = 16, facts: dict | None = None, language=None,
                 next_symbol_weight: float = 0.0):
        self.name, self.task_vocab, self.draw = name, vocab, draw
        self.batch_size, self.eval_size, self.lm_weight = batch_size, eval_size, lm_weight
        self.vocab_size, self.bucket, self.max_tokens = vocab.size, bucket, max_tokens
        self.token_classes = vocab.token_classes()
        self.class_weights = (float(lm_weight), 1.0) if lm_weight > 0 else (0.0, 1.0)
        self.floor = 0.0 if lm_weight == 0 else None  # symbols' floor: not computed here
        self.floor_stderr = 0.0
        self.facts = dict(facts or {})
        self.language, self.next_symbols = language, None
        if next_symbol_weight > 0:
            self.next_symbols = (float(next_symbol_weight), next_symbol_tokens(vocab))
            self.floor = None
        self._last: tuple | None = None
        self._validation: Validation | None = None

    def _encoded(self, examples):
        lm = [self.lm_weight > 0 and y == ACCEPT for _, y in examples]
        return encode(self.task_vocab, examples, lm=lm)

    def _batch(self, seed: int, step: int):
        self._last_examples(seed, step)
        return self._last[1]

    def _last_examples(self, seed: int, step: int):
        if self._last is None or self._last[0] != (seed, step):
            examples = self.draw(derive(seed, Stream.TRAIN, step), self.batch_size)
            self._last = ((seed, step), self._encoded(examples), examples)
        return self._last[2]

    def train_next_symbols(self, seed: int, step: int) -> np.ndarray:
        """int32 [B, T-1]: at the steps that read a member's prefix (BOS, x_1, ..., x_n), the
        bitmask of the tokens that may come next (EOS and symbols); 0 elsewhere."""
        examples = self._last_examples(seed, step)
        ids = self._batch(seed, step)[0]
        return next_symbol_sets(self.language, examples, ids.shape[1] - 1)

    def train_ids(self, seed: int, step: int) -> np.ndarray:
        return self._batch(seed, step)[0]

    def train_targets(self, seed: int, step: int) -> np.ndarray:
        return self._batch(seed, step)[1]

    def ood_batch(self, seed: int, step: int):
        return None

    def validation(self) -> Validation:
        if self._validation is None:
            examples = self.draw(derive(SHARED, Stream.VAL), self.eval_size)
            widest = max(width(len(x), len(y)) for x, y in examples)
            T = bucket_length(widest, self.bucket, max(self.max_tokens, widest))
            ids, tgt = encode(self.task_vocab, examples, length=T)  # answers only
            self._validation = Validation(ids, one_hot_rows(tgt, self.vocab_size), None, 0.0,
                                          tgt)
        return self._validation

    def identity(self) -> dict:
        v = self.validation()
        return {"kind": "task", "task": self.name, "vocab": list(self.task_vocab.vocab.tokens),
                "validation": digest(v.ids, v.targets), "lm_weight": self.lm_weight,
                "next_symbol_weight": self.next_symbols and self.next_symbols[0],
                "facts": self.facts}

    def files(self) -> dict[str, str]:
        return {}
