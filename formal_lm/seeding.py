"""Every random draw of the package comes from ``derive(seed, Stream.X, *indices)``.

A stream names what the randomness is for; ``derive`` maps ``(seed, stream, *indices)`` to an
independent 31-bit seed with numpy's ``SeedSequence``. Because the batch of step ``t`` for seed
``s`` is ``f(derive(s, Stream.TRAIN, t))``, a run's "RNG state" is its step counter, and a run
resumed from a checkpoint draws exactly what an uninterrupted run would have drawn.

Streams are numbered once, here; a number is never reused for another purpose (results recorded
under it would silently change meaning). The exact samplers (``Language.sample(seed=...)``,
``random_pdfa(seed=...)``) take a plain seed, like numpy: the package always passes them one
derived from a stream.
"""
from __future__ import annotations

import enum

import numpy as np


class Stream(enum.IntEnum):
    """The random streams of the package (the value is part of every derived seed)."""

    TRAIN = 0          # training data of one seed, per step
    VAL = 1            # validation strings, shared by every seed of a run
    TEST = 2           # test strings, shared by every seed of a run
    MODEL = 3          # parameter initialisation of one seed
    DROPOUT = 4        # dropout keys of one seed (folded with the step)
    OOD = 5            # which completion-objective prompts a seed sees at a step
    OOD_SPLIT = 6      # the fixed train / held-out split of the out-of-distribution prompts
    ICL_TASK = 7       # one in-context-learning sequence: its automaton and its strings
    ICL_EVAL = 8       # the held-out in-context-learning evaluation sets
    SATURATION = 9     # held-out samples of the saturation analyzer
    PROMPTS = 10       # prompts sampled when there are too many to enumerate
    DECODE = 11        # sampled decoding: one uniform per (prompt, new token)
    NGRAM = 12         # training strings of the n-gram baseline
    NEXT_SYMBOL = 13   # strings of the next-symbol-set analyzer
    LENGTH = 14        # strings of the length-generalization analyzer, per length
    FINETUNE = 15      # the fixed fine-tuning data set of one seed
    BOOTSTRAP = 16     # bootstrap resamples and Monte Carlo permutations of the statistics
    PLOT = 17          # jitter of strip plots
    FLOOR = 18         # samples of the Monte Carlo loss floor of an ambiguous language
    ICL_BAYES = 19     # particle filters of the Bayes-optimal in-context predictor
    PROBE = 20         # a probe's initialisation and its train / test split of strings
    PROBE_CONTROL = 21  # the random token-type -> label map of a probe's control task
    INTERVENTION = 22  # the pairing of base and source prefixes of interchange interventions
    SPLIT = 23         # random choice of held-out combinations of a compositional split
    COMPOSITIONAL = 24  # samples of the compositional-generalization analyzers
    TASK = 25          # inputs of a supervised task (transduction or recognition), per length


SHARED = 0
"""The seed of streams shared by every seed of a run (VAL, TEST, evaluation sets)."""


def derive(seed: int, stream: Stream, *indices: int) -> int:
    """A 31-bit seed for ``(seed, stream, *indices)``; distinct tuples give independent seeds.

    Example:
        >>> derive(0, Stream.TRAIN, 5) == derive(0, Stream.TRAIN, 5)
        True
        >>> derive(0, Stream.TRAIN, 5) == derive(0, Stream.VAL, 5)
        False
    """
    if not isinstance(stream, Stream):
        raise TypeError(f"stream={stream!r} must be a formal_lm.seeding.Stream")
    words = [int(seed), int(stream), *[2 * i if i >= 0 else -2 * i - 1 for i in map(int, indices)]]
    return int(np.random.SeedSequence(words).generate_state(1)[0] >> 1)


def rng(seed: int, stream: Stream, *indices: int) -> np.random.Generator:
    """A numpy Generator seeded with :func:`derive`."""
    return np.random.default_rng(derive(seed, stream, *indices))
