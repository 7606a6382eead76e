"""Pieces the models share: config checks, dropout rngs, the config base, and the
embedding -> stacked layers -> head skeleton of the LSTM, Elman RNN and LRU models.

Shapes: B batch, T sequence length, D d_model, N state width, L n_layers, V vocab_size.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _int_problems(cfg: Any, minimums: dict[str, int]) -> list[str]:
    """Returns one message per field of ``cfg`` that is not an int >= its minimum."""
    return [
        f"{name}={getattr(cfg, name)!r}: must be an integer >= {lo}"
        for name, lo in minimums.items()
        if not (_is_int(getattr(cfg, name)) and getattr(cfg, name) >= lo)
    ]


def _dropout_problems(cfg: Any) -> list[str]:
    p = cfg.dropout
    ok = isinstance(p, (int, float, np.floating)) and not isinstance(p, bool) and 0.0 <= p < 1.0
    return [] if ok else [f"dropout={p!r}: must be a float in [0, 1)"]


def _raise_if(problems: list[str], cfg_name: str) -> None:
    if problems:
        raise ValueError(f"invalid {cfg_name}: " + "; ".join(problems))


def _as_rngs(rngs: nnx.Rngs | jax.Array | None) -> nnx.Rngs | None:
    """Normalises the optional ``rngs`` argument of ``__call__``/``step``.

    A bare key is wrapped in ``nnx.Rngs(dropout=key)`` so that every dropout layer
    draws a different sub-key from it (passing the key itself to each
    ``nnx.Dropout`` would reuse one mask everywhere).
    """
    if rngs is None or isinstance(rngs, nnx.Rngs):
        return rngs
    if isinstance(rngs, jax.Array):
        return nnx.Rngs(dropout=rngs)
    raise TypeError(f"rngs must be None, an nnx.Rngs or a jax PRNG key, got {type(rngs).__name__}")


def _dropout(rate: float, rngs: nnx.Rngs) -> nnx.Dropout:
    # Built in eval mode: dropout only acts after ``model.train()``.
    return nnx.Dropout(rate, deterministic=True, rngs=rngs)


@dataclasses.dataclass(frozen=True)
class _ModelConfig:
    """The fields every model config starts with; a config checks itself when it is built and
    raises one ``ValueError`` listing every message of ``_problems``."""

    vocab_size: int
    d_model: int = 16

    def __post_init__(self) -> None:
        _raise_if(self._problems(), type(self).__name__)

    def _problems(self) -> list[str]:
        raise NotImplementedError


class _StackedLM(nnx.Module):
    """Embedding -> dropout -> stacked layers -> head, decoded one token at a time with
    per-layer carries.

    ``model(ids)``: ids int32 [B, T] -> logits float32 [B, T, V].
    ``step(tokens [B], state)`` -> (logits [B, V], state), O(1) per token; ``state`` holds
    ``"pos"`` and, for each name of the layers' ``carry_names``, every layer's carry [L, B, N].

    A subclass builds ``embed``, ``drop`` and ``layers`` and says what the ``_head`` is. By
    default a layer is a recurrence with ``scan(x)`` over a sequence and ``cell(x, carry)`` over
    one token, its output dropped out (the RNNs); a subclass whose layers run otherwise overrides
    ``_sequence`` and ``_cell``.
    """

    def _sequence(self, layer, x, rngs):  # [B, T, D] -> [B, T, D']
        return self.drop(layer.scan(x), rngs=rngs)

    def _cell(self, layer, x, carry, rngs):  # [B, D], carry -> ([B, D'], carry)
        y, carry = layer.cell(x, carry)
        return self.drop(y, rngs=rngs), carry

    def _head(self, x):  # [..., D] -> logits float32 [..., V]
        raise NotImplementedError

    def __call__(self, ids: jax.Array, *, rngs: nnx.Rngs | jax.Array | None = None) -> jax.Array:
        """ids int32 [B, T] -> logits float32 [B, T, V]."""
        rngs = _as_rngs(rngs)
        x = self.drop(self.embed(ids), rngs=rngs)  # [B, T, D]
        for layer in self.layers:
            x = self._sequence(layer, x, rngs)
        return self._head(x)  # [B, T, V]

    def step(self, tokens, state, *, rngs=None):
        """tokens int32 [B] -> (logits float32 [B, V], next state)."""
        rngs = _as_rngs(rngs)
        names = self.layers[0].carry_names
        x = self.drop(self.embed(tokens), rngs=rngs)  # [B, D]
        new = {name: [] for name in names}
        for i, layer in enumerate(self.layers):
            x, carry = self._cell(layer, x, tuple(state[name][i] for name in names), rngs)
            for name, c in zip(names, carry):
                new[name].append(c)
        out = {"pos": state["pos"] + 1, **{name: jnp.stack(v) for name, v in new.items()}}
        return self._head(x), out  # [B, V]
