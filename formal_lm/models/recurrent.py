"""LSTM and Elman (tanh) RNN language models.

Shape glossary:

  B  batch size        T  sequence length        V  vocab_size
  D  d_model (embedding width)                   N  hidden (recurrent width)
  L  n_layers

Layout: embedding -> dropout -> L recurrent layers (dropout after each) ->
linear projection to the vocabulary. The full-sequence pass runs each layer as
one ``jax.lax.scan`` over time (input projections for all steps are computed
up front); ``step`` applies the same cell math to one token, so both paths
agree to float tolerance. All carries start at zero.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from formal_lm.models._common import _dropout, _dropout_problems, _int_problems, _ModelConfig, _StackedLM
from formal_lm.models._hidden import _HiddenStates


@dataclasses.dataclass(frozen=True)
class _RecurrentConfig(_ModelConfig):
    """Fields and checks shared by the LSTM and Elman RNN configs (distinct types, so the
    model registry can tell them apart).

    Args:
      vocab_size: number of token ids (PAD=0, BOS=1, EOS=2, symbols from 3).
      d_model: embedding width.
      hidden: recurrent state width of every layer.
      n_layers: number of stacked recurrent layers.
      dropout: rate on the embeddings and on every layer's output (train mode only).
    """

    hidden: int = 64
    n_layers: int = 1
    dropout: float = 0.0

    def _problems(self) -> list[str]:
        problems = _int_problems(self, {"vocab_size": 4, "d_model": 1, "hidden": 1, "n_layers": 1})
        return problems + _dropout_problems(self)


@dataclasses.dataclass(frozen=True)
class LSTMConfig(_RecurrentConfig):
    """Hyper-parameters of :class:`LSTMLM`, checked when built; the fields (documented on
    ``_RecurrentConfig``) are those of :class:`RNNConfig`, ``hidden`` being the width of each
    layer's h and c.

    Example:
      >>> LSTMConfig(vocab_size=8, hidden=32).hidden
      32
    """


@dataclasses.dataclass(frozen=True)
class RNNConfig(_RecurrentConfig):
    """Hyper-parameters of :class:`RNNLM` (Elman network, tanh), checked when built; the
    fields are documented on ``_RecurrentConfig``.

    Example:
      >>> RNNConfig(vocab_size=8, n_layers=2).n_layers
      2
    """


# --------------------------------------------------------------------------- cells
# A layer exposes ``carry_names``, ``zero_carry(B)``, ``scan(x) -> ys`` and
# ``cell(x_t, carry) -> (y_t, carry)``; carries are tuples of [B, N] arrays.


def _lstm_update(gates, c):
    """gates [B, 4N] (input, forget, cell, output pre-activations), c [B, N] -> (h, c)."""
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)  # forget bias +1
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return h, c


class _LSTMLayer(nnx.Module):
    carry_names = ("h", "c")

    def __init__(self, d_in: int, hidden: int, rngs: nnx.Rngs):
        self.hidden = hidden
        self.w_in = nnx.Linear(d_in, 4 * hidden, rngs=rngs)  # input -> gates, with bias
        self.w_rec = nnx.Linear(hidden, 4 * hidden, use_bias=False, rngs=rngs)  # h -> gates

    def zero_carry(self, b):
        z = jnp.zeros((b, self.hidden), jnp.float32)
        return (z, z)

    def scan(self, x):  # [B, T, D_in] -> [B, T, N]
        u = self.w_rec.kernel[...]  # [N, 4N]
        xs = jnp.swapaxes(self.w_in(x), 0, 1)  # [T, B, 4N]

        def body(carry, x_t):
            h, c = _lstm_update(x_t + carry[0] @ u, carry[1])
            return (h, c), h

        _, ys = jax.lax.scan(body, self.zero_carry(x.shape[0]), xs)
        return jnp.swapaxes(ys, 0, 1)

    def cell(self, x_t, carry):  # [B, D_in], ([B, N], [B, N])
        h, c = _lstm_update(self.w_in(x_t) + carry[0] @ self.w_rec.kernel[...], carry[1])
        return h, (h, c)


class _ElmanLayer(nnx.Module):
    carry_names = ("h",)

    def __init__(self, d_in: int, hidden: int, rngs: nnx.Rngs):
        self.hidden = hidden
        self.w_in = nnx.Linear(d_in, hidden, rngs=rngs)
        self.w_rec = nnx.Linear(hidden, hidden, use_bias=False, rngs=rngs)

    def zero_carry(self, b):
        return (jnp.zeros((b, self.hidden), jnp.float32),)

    def scan(self, x):  # [B, T, D_in] -> [B, T, N]
        u = self.w_rec.kernel[...]  # [N, N]
        xs = jnp.swapaxes(self.w_in(x), 0, 1)  # [T, B, N]

        def body(carry, x_t):
            h = jnp.tanh(x_t + carry[0] @ u)
            return (h,), h

        _, ys = jax.lax.scan(body, self.zero_carry(x.shape[0]), xs)
        return jnp.swapaxes(ys, 0, 1)

    def cell(self, x_t, carry):
        h = jnp.tanh(self.w_in(x_t) + carry[0] @ self.w_rec.kernel[...])
        return h, (h,)


# --------------------------------------------------------------------------- LMs


class _RecurrentLM(_HiddenStates, _StackedLM):
    """Embedding -> stacked recurrent layers (``_layer``), dropout after each -> unembedding;
    shared by the LSTM and the Elman RNN, which differ only in their layer."""

    _layer: type

    def __init__(self, config, *, rngs: nnx.Rngs):
        cfg = self.config = config
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs)
        dims = [cfg.d_model] + [cfg.hidden] * (cfg.n_layers - 1)
        self.layers = nnx.List([self._layer(d, cfg.hidden, rngs) for d in dims])
        self.drop = _dropout(cfg.dropout, rngs)
        self.unembed = nnx.Linear(cfg.hidden, cfg.vocab_size, rngs=rngs)

    def _patched_sequence(self, layer, x, hit, value):
        """The layer run cell by cell; at ``hit`` [B, T] its output h becomes value [B, N],
        and so does the h it carries on (an LSTM's cell c is not replaced)."""
        value = jnp.broadcast_to(jnp.asarray(value, jnp.float32), (x.shape[0], layer.hidden))

        def body(carry, inp):
            x_t, hit_t = inp  # [B, D], [B]
            y, carry = layer.cell(x_t, carry)
            y = jnp.where(hit_t[:, None], value, y)  # [B, N]
            return (y,) + tuple(carry[1:]), y

        _, ys = jax.lax.scan(body, layer.zero_carry(x.shape[0]),
                             (jnp.swapaxes(x, 0, 1), jnp.swapaxes(hit, 0, 1)))
        return self.drop(jnp.swapaxes(ys, 0, 1))  # [B, T, N]

    def _head(self, x):
        return self.unembed(x).astype(jnp.float32)

    def init_state(self, batch_size: int, max_len: int | None = None) -> dict[str, jax.Array]:
        """Zero carries; ``max_len`` is accepted for interface parity and ignored."""
        state = {"pos": jnp.zeros((), jnp.int32)}
        carries = [layer.zero_carry(batch_size) for layer in self.layers]
        for j, name in enumerate(self.layers[0].carry_names):
            state[name] = jnp.stack([c[j] for c in carries])  # [L, B, N]
        return state


class LSTMLM(_RecurrentLM):
    """Stacked-LSTM language model; build it with ``make("lstm", ...)``.

    Same interface as every model (``model(ids)``, ``init_state``, ``step``); its decoding
    state holds the h and c of every layer.

    Example:
      >>> from flax import nnx
      >>> m = LSTMLM(LSTMConfig(vocab_size=6, d_model=4, hidden=8), rngs=nnx.Rngs(0))
      >>> {k: v.shape for k, v in m.init_state(2).items()}
      {'pos': (), 'h': (1, 2, 8), 'c': (1, 2, 8)}
    """

    _layer = _LSTMLayer


class RNNLM(_RecurrentLM):
    """Stacked Elman (tanh) RNN language model; build it with ``make("rnn", ...)``.

    ``model(ids)``: ids int32 [B, T] -> logits float32 [B, T, V].
    ``init_state(B)`` -> {"pos": int32 [], "h": [L, B, N]};
    ``step(tokens [B], state)`` -> (logits [B, V], state), O(1) per token.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> m = RNNLM(RNNConfig(vocab_size=6, d_model=4, hidden=8), rngs=nnx.Rngs(0))
      >>> m(jnp.array([[1, 3, 2]], dtype=jnp.int32)).shape
      (1, 3, 6)
    """

    _layer = _ElmanLayer
