"""Mamba: a selective state-space language model in pure JAX (no custom kernels).

After Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces".

Shape glossary:

  B  batch size        T  sequence length        V  vocab_size
  D  d_model           E  inner width = expand * D
  N  d_state           R  dt_rank                K  d_conv (causal conv width)
  L  n_layers

One block (pre-norm residual), for input x [B, T, D]:

  [u, z] = W_in RMSNorm(x)                                  u, z [B, T, E]
  u      = silu(causal depthwise conv_K(u) + b_conv)        [B, T, E]
  [r, B_t, C_t] = W_x u                                     r [B, T, R]; B_t, C_t [B, T, N]
  Delta  = softplus(W_dt r + b_dt)                          [B, T, E]   (input-dependent)
  A      = -exp(A_log)                                      [E, N]      (diagonal, real < 0)
  h_t    = exp(Delta_t A) * h_{t-1} + (Delta_t u_t) B_t     h [B, E, N], h_{-1} = 0
  y_t    = h_t C_t + D_skip * u_t                           [B, T, E]
  x     <- x + dropout(W_out (y * silu(z)))

A is discretised by zero-order hold (exp(Delta A)), B by Euler (Delta B). A_log starts at
log(1..N) for every channel (S4D-real), b_dt so that softplus(b_dt) is log-uniform in
[0.001, 0.1], D_skip at 1. The model is embedding -> dropout -> L blocks -> RMSNorm ->
linear to V. The full pass runs the recurrence with ``jax.lax.associative_scan`` over
time (each output combines only steps at or before it); ``step`` applies it once per token,
keeping the last K-1 conv inputs.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from formal_lm.models._common import (_dropout, _dropout_problems, _int_problems, _is_int,
                                      _ModelConfig, _StackedLM)
from formal_lm.models._hidden import _HiddenStates

DT_MIN, DT_MAX = 0.001, 0.1  # the range of the initial step sizes softplus(b_dt)


@dataclasses.dataclass(frozen=True)
class MambaConfig(_ModelConfig):
    """Hyper-parameters of :class:`MambaLM`, checked when built.

    Args:
      vocab_size: number of token ids (PAD=0, BOS=1, EOS=2, symbols from 3).
      d_model: residual width D.
      d_state: state size N per inner channel.
      expand: inner width E = expand * d_model.
      d_conv: width K of the causal depthwise convolution (1: a per-channel scale).
      dt_rank: rank R of the Delta projection; None: ceil(d_model / 16).
      n_layers: number of blocks.
      dropout: rate on the embeddings and on each block's output (train mode only).

    Example:
      >>> MambaConfig(vocab_size=8, d_model=40).rank
      3
    """

    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int | None = None
    n_layers: int = 2
    dropout: float = 0.0

    def _problems(self) -> list[str]:
        problems = _int_problems(self, {"vocab_size": 4, "d_model": 1, "d_state": 1, "expand": 1,
                                        "d_conv": 1, "n_layers": 1})
        if self.dt_rank is not None and not (_is_int(self.dt_rank) and self.dt_rank >= 1):
            problems.append(f"dt_rank={self.dt_rank!r}: must be an integer >= 1 (or omitted)")
        return problems + _dropout_problems(self)

    @property
    def rank(self) -> int:
        """The Delta projection's rank R (``dt_rank``, or ceil(d_model / 16))."""
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.d_model / 16)


def _dt_bias_init(key, shape, dtype=jnp.float32):
    """b_dt with softplus(b_dt) log-uniform in [DT_MIN, DT_MAX] (inverse softplus of dt)."""
    lo, hi = math.log(DT_MIN), math.log(DT_MAX)
    dt = jnp.exp(jax.random.uniform(key, shape, dtype) * (hi - lo) + lo)
    return dt + jnp.log(-jnp.expm1(-dt))


def _combine(left, right):
    """Associative operator for h_t = a_t h_{t-1} + b_t: (a1, b1) then (a2, b2)."""
    a1, b1 = left
    a2, b2 = right
    return a1 * a2, a2 * b1 + b2


class _MambaLayer(nnx.Module):
    carry_names = ("conv", "h")

    def __init__(self, cfg: MambaConfig, rngs: nnx.Rngs):
        d, n, r, k = cfg.d_model, cfg.d_state, cfg.rank, cfg.d_conv
        e = cfg.expand * d
        self.shape = (e, n, r, k)
        self.norm = nnx.RMSNorm(d, rngs=rngs)
        self.in_proj = nnx.Linear(d, 2 * e, use_bias=False, rngs=rngs)
        bound = 1.0 / math.sqrt(k)
        self.conv_w = nnx.Param(jax.random.uniform(rngs.params(), (k, e), minval=-bound,
                                                   maxval=bound))  # [K, E]
        self.conv_b = nnx.Param(jnp.zeros((e,)))  # [E]
        self.x_proj = nnx.Linear(e, r + 2 * n, use_bias=False, rngs=rngs)
        self.dt_proj = nnx.Linear(r, e, bias_init=_dt_bias_init, rngs=rngs)
        self.a_log = nnx.Param(jnp.log(jnp.tile(jnp.arange(1, n + 1, dtype=jnp.float32), (e, 1))))
        self.d_skip = nnx.Param(jnp.ones((e,)))  # [E]
        self.out_proj = nnx.Linear(e, d, use_bias=False, rngs=rngs)
        self.drop = _dropout(cfg.dropout, rngs)

    def zero_carry(self, b):
        e, n, _, k = self.shape
        return (jnp.zeros((b, k - 1, e), jnp.float32), jnp.zeros((b, e, n), jnp.float32))

    def _selective(self, u):  # u [..., E] -> Delta [..., E], B [..., N], C [..., N]
        _, n, r, _ = self.shape
        low, b, c = jnp.split(self.x_proj(u), [r, r + n], axis=-1)
        return jax.nn.softplus(self.dt_proj(low)), b, c

    def _discretise(self, u):  # u [..., E] -> exp(Delta A), Delta u B [..., E, N]; C [..., N]
        delta, b, c = self._selective(u)
        a = -jnp.exp(self.a_log[...])  # [E, N]
        da = jnp.exp(delta[..., None] * a)  # zero-order hold
        dbu = (delta * u)[..., None] * b[..., None, :]  # Euler
        return da, dbu, c

    def _out(self, x, h, c, u, z, rngs):  # h [..., E, N], c [..., N], u z [..., E]
        y = jnp.einsum("...en,...n->...e", h, c) + self.d_skip[...] * u
        return x + self.drop(self.out_proj(y * jax.nn.silu(z)), rngs=rngs)

    def __call__(self, x, rngs):  # [B, T, D] -> [B, T, D]
        k, t = self.shape[3], x.shape[1]
        u, z = jnp.split(self.in_proj(self.norm(x)), 2, axis=-1)  # [B, T, E]
        padded = jnp.pad(u, ((0, 0), (k - 1, 0), (0, 0)))  # [B, T + K - 1, E]
        w = self.conv_w[...]
        u = sum(w[j] * padded[:, j:j + t] for j in range(k)) + self.conv_b[...]
        u = jax.nn.silu(u)  # [B, T, E]
        da, dbu, c = self._discretise(u)  # [B, T, E, N]
        _, h = jax.lax.associative_scan(_combine, (da, dbu), axis=1)  # [B, T, E, N]
        return self._out(x, h, c, u, z, rngs)

    def step(self, x, conv, h, rngs):  # x [B, D], conv [B, K-1, E], h [B, E, N]
        u, z = jnp.split(self.in_proj(self.norm(x)), 2, axis=-1)  # [B, E]
        window = jnp.concatenate([conv, u[:, None]], axis=1)  # [B, K, E], oldest first
        u = jax.nn.silu(jnp.sum(window * self.conv_w[...], axis=1) + self.conv_b[...])
        da, dbu, c = self._discretise(u)  # [B, E, N]
        h = da * h + dbu
        return self._out(x, h, c, u, z, rngs), window[:, 1:], h


class MambaLM(_HiddenStates, _StackedLM):
    """Mamba language model; build it with ``make("mamba", ...)``.

    Decoding state: {"pos": int32 [], "conv": [L, B, K-1, E], "h": [L, B, E, N]}; O(E N + D E)
    work per token.

    Example:
      >>> from flax import nnx
      >>> cfg = MambaConfig(vocab_size=6, d_model=4, d_state=3, n_layers=1)
      >>> m = nnx.eval_shape(lambda: MambaLM(cfg, rngs=nnx.Rngs(0)))  # shapes only, no compute
      >>> {k: v.shape for k, v in m.init_state(2).items()}
      {'pos': (), 'conv': (1, 2, 3, 8), 'h': (1, 2, 8, 3)}
    """

    def __init__(self, config: MambaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed = nnx.Embed(config.vocab_size, config.d_model, rngs=rngs)
        self.layers = nnx.List([_MambaLayer(config, rngs) for _ in range(config.n_layers)])
        self.final_norm = nnx.RMSNorm(config.d_model, rngs=rngs)
        self.drop = _dropout(config.dropout, rngs)
        self.unembed = nnx.Linear(config.d_model, config.vocab_size, rngs=rngs)

    def _sequence(self, layer, x, rngs):
        return layer(x, rngs)  # [B, T, D]

    def _cell(self, layer, x, carry, rngs):
        x, conv, h = layer.step(x, carry[0], carry[1], rngs)
        return x, (conv, h)

    def _head(self, x):
        return self.unembed(self.final_norm(x)).astype(jnp.float32)

    def init_state(self, batch_size: int, max_len: int | None = None) -> dict[str, jax.Array]:
        """Zero conv windows and states; ``max_len`` is accepted for interface parity and
        ignored."""
        carries = [layer.zero_carry(batch_size) for layer in self.layers]
        return {"pos": jnp.zeros((), jnp.int32),
                "conv": jnp.stack([c[0] for c in carries]),
                "h": jnp.stack([c[1] for c in carries])}
