"""Linear Recurrent Unit (LRU) language model.

After Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for Long
Sequences": a diagonal complex linear recurrence whose eigenvalues are kept
inside the unit disk by construction.

Shape glossary:

  B  batch size        T  sequence length        V  vocab_size
  D  d_model           N  d_state (complex)      L  n_layers

One layer (pre-norm residual block), for input x [B, T, D]:

  u   = LayerNorm(x)
  h_t = lambda * h_{t-1} + (gamma * B) u_t          h: complex [B, N], h_{-1} = 0
  y_t = Re(C h_t) + D * u_t                         [B, T, D]
  x  <- x + dropout(GLU(gelu(y)))                   GLU(z) = a * sigmoid(b), [a, b] = W z + c

with lambda = exp(-exp(nu_log) + i exp(theta_log)), so |lambda| = exp(-exp(nu_log)) < 1
for any parameter value, and gamma = exp(gamma_log) (initialised to sqrt(1 - |lambda|^2)).
The model is embedding -> L layers -> LayerNorm -> linear to V.

The full-sequence pass runs the recurrence with ``jax.lax.associative_scan``
(each output combines only elements at or before its time step, so it is
causal); ``step`` applies the recurrence once per token.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from formal_lm.models._common import _dropout, _dropout_problems, _int_problems, _ModelConfig, _StackedLM
from formal_lm.models._hidden import _HiddenStates


@dataclasses.dataclass(frozen=True)
class LRUConfig(_ModelConfig):
    """Hyper-parameters of :class:`LRULM`.

    Args:
      vocab_size: number of token ids (PAD=0, BOS=1, EOS=2, symbols from 3).
      d_model: residual width D.
      d_state: number of complex state dimensions N per layer.
      n_layers: number of LRU blocks.
      dropout: rate on embeddings and each block's output (train mode only).
      r_min, r_max: the eigenvalue magnitudes |lambda| are initialised uniformly on
        the ring r_min <= |lambda| <= r_max (0 <= r_min < r_max < 1).
      max_phase: eigenvalue phases are initialised uniformly in [0, max_phase].

    Example:
      >>> LRUConfig(vocab_size=8, d_state=16).d_state
      16
    """

    d_state: int = 32
    n_layers: int = 2
    dropout: float = 0.0
    r_min: float = 0.4
    r_max: float = 0.99
    max_phase: float = 2 * math.pi

    def _problems(self) -> list[str]:
        problems = _int_problems(self, {"vocab_size": 4, "d_model": 1, "d_state": 1, "n_layers": 1})
        problems += _dropout_problems(self)
        r_ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (self.r_min, self.r_max))
        if not (r_ok and 0.0 <= self.r_min < self.r_max < 1.0):
            problems.append(
                f"r_min={self.r_min!r}, r_max={self.r_max!r}: need 0 <= r_min < r_max < 1"
            )
        if not (isinstance(self.max_phase, (int, float)) and 0.0 < self.max_phase <= 2 * math.pi + 1e-9):
            problems.append(f"max_phase={self.max_phase!r}: must be in (0, 2*pi]")
        return problems


def _combine(left, right):
    """Associative operator for h_t = a_t h_{t-1} + b_t: (a1, b1) then (a2, b2)."""
    a1, b1 = left
    a2, b2 = right
    return a1 * a2, a2 * b1 + b2


class _LRULayer(nnx.Module):
    carry_names = ("h",)

    def __init__(self, cfg: LRUConfig, rngs: nnx.Rngs):
        d, n = cfg.d_model, cfg.d_state
        k_nu, k_th, k_b1, k_b2, k_c1, k_c2, k_d = jax.random.split(rngs.params(), 7)
        # |lambda|^2 uniform on [r_min^2, r_max^2] (uniform on the ring's area).
        u1 = jax.random.uniform(k_nu, (n,))
        mag = jnp.sqrt(u1 * (cfg.r_max**2 - cfg.r_min**2) + cfg.r_min**2)
        self.nu_log = nnx.Param(jnp.log(-jnp.log(mag)))  # [N]
        u2 = jax.random.uniform(k_th, (n,), minval=1e-3)
        self.theta_log = nnx.Param(jnp.log(cfg.max_phase * u2))  # [N]
        self.gamma_log = nnx.Param(jnp.log(jnp.sqrt(1.0 - mag**2)))  # [N]
        b_std = 1.0 / math.sqrt(2 * d)
        self.b_re = nnx.Param(jax.random.normal(k_b1, (n, d)) * b_std)  # [N, D]
        self.b_im = nnx.Param(jax.random.normal(k_b2, (n, d)) * b_std)
        c_std = 1.0 / math.sqrt(n)
        self.c_re = nnx.Param(jax.random.normal(k_c1, (d, n)) * c_std)  # [D, N]
        self.c_im = nnx.Param(jax.random.normal(k_c2, (d, n)) * c_std)
        self.d_skip = nnx.Param(jax.random.normal(k_d, (d,)))  # [D]
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.glu = nnx.Linear(d, 2 * d, rngs=rngs)
        self.drop = _dropout(cfg.dropout, rngs)

    def _lambda(self):  # complex64 [N]
        mag = jnp.exp(-jnp.exp(self.nu_log[...]))
        phase = jnp.exp(self.theta_log[...])
        return jax.lax.complex(mag * jnp.cos(phase), mag * jnp.sin(phase))

    def _input(self, u):  # u [..., D] -> gamma * B u, complex [..., N]
        gamma = jnp.exp(self.gamma_log[...])
        re = jnp.einsum("...d,nd->...n", u, self.b_re[...]) * gamma
        im = jnp.einsum("...d,nd->...n", u, self.b_im[...]) * gamma
        return jax.lax.complex(re, im)

    def _readout(self, h, u):  # h complex [..., N], u [..., D] -> [..., D]
        # Re(C h) = C_re Re(h) - C_im Im(h)
        y = jnp.einsum("...n,dn->...d", jnp.real(h), self.c_re[...])
        y = y - jnp.einsum("...n,dn->...d", jnp.imag(h), self.c_im[...])
        return y + self.d_skip[...] * u

    def _mix(self, x, y, rngs):
        a, b = jnp.split(self.glu(jax.nn.gelu(y)), 2, axis=-1)
        return x + self.drop(a * jax.nn.sigmoid(b), rngs=rngs)

    def __call__(self, x, rngs):  # [B, T, D] -> [B, T, D]
        u = self.norm(x)
        bu = self._input(u)  # [B, T, N]
        lam = jnp.broadcast_to(self._lambda(), bu.shape)
        _, h = jax.lax.associative_scan(_combine, (lam, bu), axis=1)  # [B, T, N]
        return self._mix(x, self._readout(h, u), rngs)

    def step(self, x, h, rngs):  # x [B, D], h complex [B, N]
        u = self.norm(x)
        h = self._lambda() * h + self._input(u)
        return self._mix(x, self._readout(h, u), rngs), h


class LRULM(_HiddenStates, _StackedLM):
    """Stacked-LRU language model; build it with ``make("lru", ...)``.

    Same interface as every model (``model(ids)``, ``init_state``, ``step``); its decoding
    state is {"pos": int32 [], "h": complex64 [L, B, N]}.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> m = LRULM(LRUConfig(vocab_size=6, d_model=4, d_state=8), rngs=nnx.Rngs(0))
      >>> logits, state = m.step(jnp.array([1], dtype=jnp.int32), m.init_state(1))
      >>> logits.shape, state["h"].dtype, int(state["pos"])
      ((1, 6), dtype('complex64'), 1)
    """

    def __init__(self, config: LRUConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed = nnx.Embed(config.vocab_size, config.d_model, rngs=rngs)
        self.layers = nnx.List([_LRULayer(config, rngs) for _ in range(config.n_layers)])
        self.final_norm = nnx.LayerNorm(config.d_model, rngs=rngs)
        self.drop = _dropout(config.dropout, rngs)
        self.unembed = nnx.Linear(config.d_model, config.vocab_size, rngs=rngs)

    def _sequence(self, layer, x, rngs):
        return layer(x, rngs)  # [B, T, D]

    def _cell(self, layer, x, carry, rngs):
        x, h = layer.step(x, carry[0], rngs)
        return x, (h,)

    def _head(self, x):
        return self.unembed(self.final_norm(x)).astype(jnp.float32)

    def init_state(self, batch_size: int, max_len: int | None = None) -> dict[str, jax.Array]:
        """Zero states; ``max_len`` is accepted for interface parity and ignored."""
        shape = (self.config.n_layers, batch_size, self.config.d_state)
        return {"pos": jnp.zeros((), jnp.int32), "h": jnp.zeros(shape, jnp.complex64)}
