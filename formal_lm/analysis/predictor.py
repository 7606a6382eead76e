"""The one predictor protocol: anything that maps token ids to next-token logits.

A *predictor* is a callable ``predictor(ids) -> logits`` with ``ids`` int [B, T] laid out as
``[BOS, s_1, ..., EOS, PAD, ...]`` and ``logits`` float [B, T, V]: ``logits[b, t]`` scores the
token after ``ids[b, :t+1]`` (any per-row additive constant: log-probabilities are logits
too). It has an attribute ``max_len``: the longest sequence it accepts (None: any). It may also
decode incrementally with ``state = init_state(B, max_len)`` and
``logits [B, V], state = step(tokens [B], state)``.

:func:`as_predictor` makes one from a flax NNX model, from a run directory and seed, or from
any callable; every analyzer calls it on what it is given.

Shape glossary: B batch, T positions, V vocabulary size.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from formal_lm.errors import FormalLMError, Problem
from formal_lm.vocab import BOS_ID, PAD_ID

DEFAULT_BATCH = 256
SHAPE_BUCKET = 32


@runtime_checkable
class Predictor(Protocol):
    """ids [B, T] -> logits [B, T, V], with ``max_len`` (None: any length)."""

    max_len: int | None

    def __call__(self, ids) -> Any: ...


@runtime_checkable
class IncrementalPredictor(Predictor, Protocol):
    """A predictor that also decodes one token at a time."""

    def init_state(self, batch_size: int, max_len: int) -> Any: ...

    def step(self, tokens, state) -> tuple[Any, Any]: ...


class FunctionPredictor:
    """A plain callable ``ids -> logits`` as a predictor."""

    def __init__(self, fn: Callable, max_len: int | None = None):
        self.fn, self.max_len = fn, max_len

    def __call__(self, ids):
        return self.fn(ids)


_JIT_CACHE: dict = {}  # (graph definition, kind) -> jitted functions, shared across seeds


def jitted_for(graphdef, kind: str, make):
    """``make()`` (a model's jitted functions), built once per graph definition and ``kind``
    and shared by every model of that graph (every seed); an unhashable graph gets its own."""
    try:
        fns = _JIT_CACHE.get((graphdef, kind))
    except TypeError:  # an unhashable graph definition: jit per model
        return make()
    if fns is None:
        fns = _JIT_CACHE[(graphdef, kind)] = make()
    return fns


class JaxModel:
    """A flax NNX language model as an incremental predictor (jitted full and one-token passes).

    ``max_len`` is the model config's ``max_len`` when it has one (a learned position table or
    a cache size), else None.
    """

    def __init__(self, module):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        self.module = module
        self.max_len = getattr(getattr(module, "config", None), "max_len", None)
        graphdef, state = nnx.split(module)
        self._state = state
        self._call, self._step = jitted_for(graphdef, "predict", lambda: (
            jax.jit(lambda st, ids: nnx.merge(graphdef, st, copy=True)(
                jnp.asarray(ids, jnp.int32))),
            jax.jit(lambda st, tok, s: nnx.merge(graphdef, st, copy=True).step(
                jnp.asarray(tok, jnp.int32), s))))

    def __call__(self, ids):
        return self._call(self._state, ids)

    def init_state(self, batch_size: int, max_len: int):
        return self.module.init_state(batch_size, max_len)

    def step(self, tokens, state):
        """tokens int [B] -> (logits [B, V], next state)."""
        return self._step(self._state, tokens, state)


def as_predictor(x, *, seed: int | None = None, which: str = "best",
                 max_len: int | None = None) -> Predictor:
    """A predictor from a flax NNX model, a run directory (with ``seed`` and ``which``
    checkpoint), a predictor (returned as it is) or any callable ids -> logits.

    Example:
        >>> import numpy as np
        >>> p = as_predictor(lambda ids: np.zeros(np.shape(ids) + (5,)))
        >>> p(np.ones((2, 3), np.int32)).shape, p.max_len
        ((2, 3, 5), None)
    """
    if isinstance(x, (str, Path)):
        if seed is None:
            raise FormalLMError(Problem(f"a run directory ({x}) needs a seed",
                                        "pass seed=, one of the run's seeds"))
        from formal_lm.training.saved import checkpoint_path, load_checkpoint
        models, meta = load_checkpoint(checkpoint_path(x, which))
        if seed not in meta["seeds"]:
            raise FormalLMError(Problem(f"seed={seed} is not in the run {x}",
                                        f"its seeds: {meta['seeds']}"))
        return JaxModel(models[meta["seeds"].index(seed)])
    if _is_nnx_module(x):
        return JaxModel(x)
    if isinstance(x, Predictor):
        return x
    if callable(x):
        return FunctionPredictor(x, max_len)
    raise FormalLMError(Problem(f"{type(x).__name__} is not a predictor",
                                "pass a flax model, a run directory with seed=, or a callable "
                                "ids [B, T] -> logits [B, T, V]"))


def _is_nnx_module(x) -> bool:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is a dependency
        return False
    return isinstance(x, nnx.Module)


def call_model(predictor, ids: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """Runs a predictor on ``ids`` [B, T] in chunks of ``batch_size``; float64 logits [B, T, V].

    Rows are padded to a power of two (at most ``batch_size``) and columns to a multiple of
    ``SHAPE_BUCKET`` (never past the predictor's ``max_len``), so a jitted model compiles for a
    few shapes only. PAD columns to the right do not change a causal model's earlier logits.
    """
    predictor = as_predictor(predictor)
    ids = np.asarray(ids, np.int32)
    if ids.ndim != 2:
        raise FormalLMError(Problem(f"ids.shape={ids.shape} is not [B, T]", "pass a 2-D int array"))
    B, T = ids.shape
    max_len = predictor.max_len
    Tp = -(-T // SHAPE_BUCKET) * SHAPE_BUCKET if T else T
    if isinstance(max_len, int):
        Tp = max(T, min(Tp, max_len))
    Bp = min(batch_size, 1 << max(0, (B - 1).bit_length()))
    outs = []
    for i in range(0, B, Bp):
        chunk = ids[i: i + Bp]
        n = len(chunk)
        padded = np.full((Bp, Tp), PAD_ID, np.int32)
        padded[:n, :T] = chunk
        padded[n:, 0] = BOS_ID
        outs.append(np.asarray(predictor(padded), np.float64)[:n, :T])
    logits = np.concatenate(outs) if outs else np.zeros((0,) + ids.shape[1:] + (0,))
    if logits.ndim != 3 or logits.shape[:2] != ids.shape:
        raise FormalLMError(Problem(
            f"the predictor returned logits of shape {logits.shape} for ids of shape {ids.shape}",
            "a predictor maps ids [B, T] to logits [B, T, V]"))
    return logits
