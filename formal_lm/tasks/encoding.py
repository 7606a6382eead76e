"""Supervised examples (input string -> output string) as token ids the training loop reads.

A task has an input alphabet and an output alphabet; its vocabulary is
``PAD BOS EOS, inputs..., SEP, QUERY, outputs...`` (:class:`TaskVocab`). An example ``x -> y``
(``n = |x|``, ``m = |y|``, ``m >= 1``) is read as in Deletang et al. (ICLR 2023): the model reads
the whole input, then one step per output symbol, and answers at those steps; it never reads its
own answers::

    model reads  BOS x_1 ... x_n SEP Q ... Q        (n + 1 + m tokens; m - 1 query tokens Q)
    targets      PAD ... PAD     y_1 ... y_m        (the answer to y_t is due at step n + t)

``ids`` holds what the model reads plus one trailing PAD (the loop feeds ``ids[:, :-1]``), and
``targets`` [B, T-1] are the answers, PAD where nothing is scored. Output tokens form their own
class (:meth:`TaskVocab.token_classes`): the loss and the accuracy compare a target with the
model's scores over the tokens of its own class only, so a recognizer's loss on its label is
exactly binary cross-entropy.

A recognizer (membership of ``x``) is the task with outputs ``("reject", "accept")`` and
``m = 1``. Its language-modelling auxiliary loss also scores ``x_1 ... x_n EOS`` at steps
``0 .. n`` (:func:`encode` with ``lm=True``): the next symbol while reading, EOS at the last one.

Shape glossary:  B batch   T padded tokens
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from formal_lm.errors import FormalLMError, Problem
from formal_lm.vocab import EOS_ID, PAD_ID, Vocab

SEP = "<sep>"
QUERY = "<q>"

String = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TaskVocab:
    """Token ids of a task: ``PAD BOS EOS, inputs..., SEP, QUERY, outputs...``.

    Example:
        >>> v = TaskVocab(("0", "1"), ("=0", "=1"))
        >>> v.vocab.tokens[3:]
        ('0', '1', '<sep>', '<q>', '=0', '=1')
        >>> v.token_classes().tolist()
        [0, 0, 0, 0, 0, 0, 0, 1, 1]
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if not self.outputs:
            raise FormalLMError(Problem("a task needs at least one output symbol",
                                        "list the output alphabet"))
        self.vocab  # checks the names: distinct, not reserved, no spaces

    @property
    def vocab(self) -> Vocab:
        return Vocab(self.inputs + (SEP, QUERY) + self.outputs)

    @property
    def size(self) -> int:
        return self.vocab.size

    @property
    def first_output(self) -> int:
        """The id of the first output symbol (outputs take ids first_output .. size-1)."""
        return 3 + len(self.inputs) + 2

    def token_classes(self) -> np.ndarray:
        """int32 [V]: 1 for output symbols, 0 for every other token."""
        c = np.zeros(self.size, np.int32)
        c[self.first_output:] = 1
        return c

    def output_id(self, y: str) -> int:
        if y not in self.outputs:
            raise FormalLMError(Problem(f"output symbol {y!r} is not one of {self.outputs}",
                                        "use the task's output alphabet"))
        return self.vocab.id(y)


def width(n: int, m: int) -> int:
    """The ``ids`` width of an example with ``n`` input and ``m`` output symbols."""
    return n + m + 2


def encode(vocab: TaskVocab, examples: Sequence[tuple[Sequence[str], Sequence[str]]],
           length: int | None = None, lm: Sequence[bool] | bool = False):
    """(ids int32 [B, T], targets int32 [B, T-1]) of ``(x, y)`` examples (see the module doc).

    Args:
        vocab: the task's vocabulary.
        examples: pairs of input and output strings (tuples of symbols; ``len(y) >= 1``).
        length: T (None: the widest example); every example must fit.
        lm: per example (or for all), also score ``x_1 .. x_n EOS`` at steps ``0 .. n``.
    """
    lms = [bool(lm)] * len(examples) if isinstance(lm, bool) else [bool(v) for v in lm]
    if len(lms) != len(examples):
        raise FormalLMError(Problem(f"lm has {len(lms)} flags for {len(examples)} examples",
                                    "pass one flag per example, or one bool"))
    v = vocab.vocab
    sep, q = v.id(SEP), v.id(QUERY)
    rows = []
    for x, y in examples:
        xi = [v.id(s) for s in v.as_string(tuple(x))] if x else []
        if any(i >= vocab.first_output or i in (sep, q) for i in xi):
            raise FormalLMError(Problem(f"input {tuple(x)!r} holds a symbol outside the input "
                                        f"alphabet {vocab.inputs}", "use input symbols only"))
        if len(y) < 1:
            raise FormalLMError(Problem(f"example {tuple(x)!r} has an empty output",
                                        "every example needs at least one output symbol"))
        rows.append((xi, [vocab.output_id(s) for s in y]))
    T = max((width(len(x), len(y)) for x, y in rows), default=2) if length is None else length
    ids = np.full((len(rows), T), PAD_ID, np.int32)
    targets = np.full((len(rows), T - 1), PAD_ID, np.int32)
    for b, ((x, y), with_lm) in enumerate(zip(rows, lms)):
        n, m = len(x), len(y)
        if width(n, m) > T:
            raise FormalLMError(Problem(f"an example of {n} input and {m} output symbols needs "
                                        f"{width(n, m)} tokens, more than length={T}",
                                        "pass a larger length"))
        ids[b, :n + 2 + m - 1] = [v.id("<s>")] + x + [sep] + [q] * (m - 1)
        targets[b, n + 1:n + 1 + m] = y
        if with_lm:
            targets[b, :n + 1] = x + [EOS_ID]
    return ids, targets


def answers(vocab: TaskVocab, targets: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """bool [B, T-1]: where ``targets`` holds an output symbol, whether ``predicted`` (ids of the
    model's best output symbol at each step) equals it; False elsewhere."""
    scored = targets >= vocab.first_output
    return scored & (predicted == targets)
