"""Hidden states of any model, through one interface, for probes and interventions.

An *activation source* has

- ``hidden_states(ids)``: ids int [B, T] (``[BOS, s_1, ..., EOS, PAD, ...]``) -> L + 1 arrays
  [B, T, D_l] (a sequence of arrays, or one [L + 1, B, T, D] array): entry 0 is the embedding
  output, entry l the output of layer l; position t is the state after reading ``ids[:, :t+1]``.
- optionally ``patched_logits(ids, layer, pos, value)``: logits [B, T, V] of a run in which
  the hidden state of ``layer`` at position ``pos[b]`` of row b is replaced by ``value[b]``
  ([B, D_layer]); interventions need it.

Every model of ``formal_lm.models`` has both (see models/README.md, "Hidden states");
:func:`as_activations` wraps one (jitted), a run directory with a seed, an object with those
methods, or plain functions: ``FunctionActivations(hidden_fn, patched_logits_fn)`` probes a
model from anywhere (PyTorch, Hugging Face: convert its tensors to numpy in the function).

Example:
    >>> import numpy as np
    >>> acts = as_activations(lambda ids: [np.eye(5)[np.asarray(ids)]])
    >>> [h.shape for h in collect_states(acts, np.array([[1, 3, 2]]))]
    [(1, 3, 5)]
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from formal_lm.analysis.predictor import SHAPE_BUCKET, as_predictor, jitted_for
from formal_lm.errors import FormalLMError, Problem
from formal_lm.vocab import BOS_ID, PAD_ID



class FunctionActivations:
    """Plain functions as an activation source.

    Args:
        hidden_fn: ids [B, T] -> L + 1 arrays [B, T, D_l] (or one [L + 1, B, T, D] array).
        patched_logits_fn: optional (ids [B, T], layer int, pos int [B], value [B, D_layer])
            -> logits [B, T, V].
        max_len: the longest sequence the functions accept (None: any).
    """

    def __init__(self, hidden_fn: Callable, patched_logits_fn: Callable | None = None,
                 max_len: int | None = None):
        self.hidden_fn, self.patched_logits_fn, self.max_len = hidden_fn, patched_logits_fn, max_len

    def hidden_states(self, ids):
        return self.hidden_fn(ids)

    def patched_logits(self, ids, layer, pos, value):
        if self.patched_logits_fn is None:
            raise FormalLMError(Problem("this activation source has no patched_logits_fn",
                                        "pass FunctionActivations(hidden_fn, patched_logits_fn)"))
        return self.patched_logits_fn(ids, layer, pos, value)


class ModelActivations:
    """A flax NNX model with ``hidden_states`` / ``patched_logits``, both jitted."""

    def __init__(self, module):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        for need in ("hidden_states", "patched_logits"):
            if not callable(getattr(module, need, None)):
                raise FormalLMError(Problem(f"{type(module).__name__} has no {need} method",
                                            "see formal_lm/models/README.md, 'Hidden states'"))
        self.module = module
        self.max_len = getattr(getattr(module, "config", None), "max_len", None)
        graphdef, self._state = nnx.split(module)
        self._hidden, self._patched = jitted_for(graphdef, "activations", lambda: (
            jax.jit(lambda st, ids: nnx.merge(graphdef, st, copy=True).hidden_states(
                jnp.asarray(ids, jnp.int32))),
            jax.jit(lambda st, ids, layer, pos, value: nnx.merge(graphdef, st, copy=True)
                    .patched_logits(jnp.asarray(ids, jnp.int32), layer, pos, value),
                    static_argnums=2)))

    def hidden_states(self, ids):
        return self._hidden(self._state, ids)

    def patched_logits(self, ids, layer, pos, value):
        return self._patched(self._state, ids, int(layer), np.asarray(pos, np.int32),
                             np.asarray(value, np.float32))


def as_activations(x, *, seed: int | None = None, which: str = "best"):
    """An activation source from a flax model, a run directory (with ``seed``), an object with
    ``hidden_states`` (returned as it is) or a function ids -> hidden states.

    Raises:
        FormalLMError: anything else, or a model without the interface.
    """
    if isinstance(x, (str, Path)):
        x = as_predictor(x, seed=seed, which=which).module
    try:
        from flax import nnx
        if isinstance(x, nnx.Module):
            return ModelActivations(x)
    except ImportError:  # pragma: no cover - flax is a dependency
        pass
    if callable(getattr(x, "hidden_states", None)):
        return x
    if callable(x):
        return FunctionActivations(x)
    raise FormalLMError(Problem(f"{type(x).__name__} is not an activation source",
                                "pass a flax model, a run directory with seed=, an object with "
                                "hidden_states(ids), or a function ids -> hidden states"))


def _as_layers(out) -> list[np.ndarray]:
    layers = [np.asarray(h, np.float64) for h in out]
    if not layers or any(h.ndim != 3 for h in layers):
        raise FormalLMError(Problem(
            f"hidden_states returned shapes {[h.shape for h in layers]}",
            "return L + 1 arrays [B, T, D_l] (or one [L + 1, B, T, D] array)"))
    return layers


def _padded_shape(acts, B: int, T: int, batch_size: int) -> tuple[int, int]:
    Tp = -(-T // SHAPE_BUCKET) * SHAPE_BUCKET if T else T
    max_len = getattr(acts, "max_len", None)
    if isinstance(max_len, int):
        Tp = max(T, min(Tp, max_len))
    return min(batch_size, 1 << max(0, (B - 1).bit_length())), Tp


def collect_states(acts, ids, *, batch_size: int = 256) -> list[np.ndarray]:
    """Every layer's hidden states for ids [B, T]: L + 1 float64 arrays [B, T, D_l].

    Rows are run in chunks padded to a power of two and columns to a multiple of 32 (a jitted
    model compiles for a few shapes); a causal model's states do not depend on the padding.
    """
    acts = as_activations(acts)
    ids = np.asarray(ids, np.int32)
    if ids.ndim != 2:
        raise FormalLMError(Problem(f"ids.shape={ids.shape} is not [B, T]", "pass a 2-D array"))
    B, T = ids.shape
    Bp, Tp = _padded_shape(acts, B, T, batch_size)
    chunks = []
    for i in range(0, B, Bp):
        chunk = ids[i: i + Bp]
        padded = np.full((Bp, Tp), PAD_ID, np.int32)
        padded[: len(chunk), :T] = chunk
        padded[len(chunk):, 0] = BOS_ID
        chunks.append([h[: len(chunk), :T] for h in _as_layers(acts.hidden_states(padded))])
    return [np.concatenate([c[layer] for c in chunks]) for layer in range(len(chunks[0]))]


def patched_next_logits(acts, ids, layer: int, pos, value, *,
                        batch_size: int = 256) -> np.ndarray:
    """float64 [B, V]: the logits at position ``pos[b]`` of row b of ``ids`` [B, T] when the
    state of ``layer`` at that position is replaced by ``value[b]``."""
    acts = as_activations(acts)
    ids, pos = np.asarray(ids, np.int32), np.asarray(pos, np.int32)
    value = np.asarray(value, np.float32)
    B, T = ids.shape
    Bp, Tp = _padded_shape(acts, B, T, batch_size)
    out = []
    for i in range(0, B, Bp):
        n = len(ids[i: i + Bp])
        padded = np.full((Bp, Tp), PAD_ID, np.int32)
        padded[:n, :T] = ids[i: i + Bp]
        padded[n:, 0] = BOS_ID
        p = np.zeros(Bp, np.int32)
        p[:n] = pos[i: i + Bp]
        v = np.zeros((Bp, value.shape[1]), np.float32)
        v[:n] = value[i: i + Bp]
        logits = np.asarray(acts.patched_logits(padded, layer, p, v), np.float64)
        out.append(logits[np.arange(n), p[:n]])
    return np.concatenate(out)
