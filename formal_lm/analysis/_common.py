"""Helpers shared by the analyzers: calling a model function, log-softmax, masks, exact oracles.

A *model function* is any callable ``model_fn(ids) -> logits`` with ``ids`` int [B, T] laid out as
``[BOS, s_1, ..., EOS, PAD, ...]`` and ``logits`` float [B, T, V]: ``logits[b, t]`` scores the
token after ``ids[b, :t+1]``. JAX and NumPy callables both work; results come back as NumPy.

Shape glossary: B batch, T positions, V vocabulary size.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from formal_lm.errors import FormalLMError, Problem
from formal_lm.vocab import BOS_ID, EOS_ID, PAD_ID

ModelFn = Callable[[np.ndarray], "np.ndarray"]

DEFAULT_BATCH = 256
SHAPE_BUCKET = 32


def call_model(model_fn: ModelFn, ids: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """Runs ``model_fn`` on ``ids`` [B, T] in chunks of ``batch_size``; float64 logits [B, T, V]."""
    ids = np.asarray(ids, np.int32)
    if ids.ndim != 2:
        raise FormalLMError(Problem(f"ids.shape={ids.shape} is not [B, T]", "pass a 2-D int array"))
    B, T = ids.shape
    # Pad to a few shapes so that a jitted model compiles rarely: rows to a power of two (at
    # most batch_size), columns to a multiple of SHAPE_BUCKET. PAD columns to the right do not
    # change a causal model's logits at earlier positions.
    Tp = -(-T // SHAPE_BUCKET) * SHAPE_BUCKET if T else T
    max_len = getattr(getattr(getattr(model_fn, "module", None), "config", None), "max_len", None)
    if isinstance(max_len, int):  # a learned position table: do not pad past it
        Tp = max(T, min(Tp, max_len))
    Bp = min(batch_size, 1 << max(0, (B - 1).bit_length()))
    outs = []
    for i in range(0, B, Bp):
        chunk = ids[i: i + Bp]
        n = len(chunk)
        padded = np.full((Bp, Tp), PAD_ID, np.int32)
        padded[:n, :T] = chunk
        padded[n:, 0] = BOS_ID
        out = np.asarray(model_fn(padded), np.float64)[:n, :T]
        outs.append(out)
    logits = np.concatenate(outs) if outs else np.zeros((0,) + ids.shape[1:] + (0,))
    if logits.shape[:2] != ids.shape:
        raise FormalLMError(Problem(
            f"model_fn returned logits of shape {logits.shape} for ids of shape {ids.shape}",
            "a model function maps ids [B, T] to logits [B, T, V]"))
    return logits


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax (over the vocabulary axis by default)."""
    m = np.max(logits, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = logits - m
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.exp(log_softmax(logits, axis))


def target_mask(ids: np.ndarray) -> np.ndarray:
    """bool [B, T]: positions whose next token is a real target (a symbol or the first EOS).

    Position t predicts ``ids[:, t + 1]``; PAD targets, positions after EOS, and the last column
    (which has no next token in ``ids``) are excluded.
    """
    ids = np.asarray(ids)
    nxt = ids[:, 1:]
    ended = np.cumsum((ids[:, :-1] == EOS_ID) | (ids[:, :-1] == PAD_ID), axis=1) > 0
    real = (nxt != PAD_ID) & ~ended
    return np.concatenate([real, np.zeros((len(ids), 1), bool)], axis=1)


def exact_model_fn(lang, *, floor: float = 1e-9) -> ModelFn:
    """The language itself as a model function: logits = ln max(p_exact, floor).

    Rows with no exact distribution (after EOS, impossible prefixes) become uniform over EOS and
    the symbols. Useful as an oracle in tests: it scores ~0 KL and 100% on exact checks.
    """
    def fn(ids):
        p = lang.next_token_probs(np.asarray(ids))  # [B, T, V]
        empty = p.sum(-1, keepdims=True) == 0
        uniform = np.zeros(p.shape[-1])
        uniform[EOS_ID:] = 1.0 / (p.shape[-1] - EOS_ID)
        p = np.where(empty, uniform, p)
        return np.log(np.maximum(p, floor))
    return fn


def constant_model_fn(vocab_size: int, token: int, *, margin: float = 20.0) -> ModelFn:
    """A model that puts (almost) all its mass on one token at every position."""
    def fn(ids):
        ids = np.asarray(ids)
        out = np.zeros(ids.shape + (vocab_size,))
        out[..., token] = margin
        return out
    return fn


def bootstrap_ci(values: Sequence[float], *, seed: int = 0, n_boot: int = 2000,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded). A single value gives (v, v)."""
    v = np.asarray(values, float)
    if len(v) == 0:
        return (math.nan, math.nan)
    if len(v) == 1:
        return (float(v[0]), float(v[0]))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))


def emittable_mask(vocab_size: int) -> np.ndarray:
    """bool [V]: tokens a decoder may emit (EOS and the symbols; never PAD or BOS)."""
    m = np.ones(vocab_size, bool)
    m[[PAD_ID, BOS_ID]] = False
    return m


_JIT_CACHE: dict = {}  # graph definition -> (jitted forward, jitted step), shared across seeds


class JaxModel:
    """An ``nnx`` language model as a model function, with jitted full and incremental passes.

    ``JaxModel(module)(ids)`` gives logits [B, T, V]; ``init_state``/``step`` expose the module's
    incremental decoding (``complete`` uses it when every prompt has the same length, which
    turns an O(T^2) decode into O(T)).
    """

    def __init__(self, module):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        self.module = module
        graphdef, state = nnx.split(module)
        self._state = state
        try:
            fns = _JIT_CACHE.get(graphdef)
        except TypeError:  # an unhashable graph definition: jit per model
            fns = None
        if fns is None:
            fns = (jax.jit(lambda st, ids: nnx.merge(graphdef, st, copy=True)(
                       jnp.asarray(ids, jnp.int32))),
                   jax.jit(lambda st, tok, s: nnx.merge(graphdef, st, copy=True).step(
                       jnp.asarray(tok, jnp.int32), s)))
            try:
                _JIT_CACHE[graphdef] = fns
            except TypeError:
                pass
        self._call, self._step = fns

    def __call__(self, ids):
        return self._call(self._state, ids)

    def init_state(self, batch_size: int, max_len: int):
        return self.module.init_state(batch_size, max_len)

    def step(self, tokens, state):
        """tokens int [B] -> (logits [B, V], next state)."""
        return self._step(self._state, tokens, state)
