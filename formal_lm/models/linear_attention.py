"""Causal linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").

Shape glossary:

  B  batch size        T  sequence length        V  vocab_size
  D  d_model           H  n_heads                K  head dim = D // H
  F  d_ff              L  n_layers

Attention with the feature map phi(x) = elu(x) + 1 (positive), per head:

  S_t = sum_{j <= t} phi(k_j) v_j^T        [K, K]
  z_t = sum_{j <= t} phi(k_j)              [K]
  o_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps)

One block (pre-norm): x <- x + dropout(W_o o(LN(x))); x <- x + dropout(MLP(LN(x))), the MLP
being Linear(D, F) -> GELU -> Linear(F, D). The model is embedding -> dropout -> L blocks ->
LayerNorm -> linear to V. There is no positional encoding: order reaches the model only
through the causal prefix sums. The full pass computes S_t, z_t for all t with cumulative
sums over time (memory O(T H K^2) per sequence); ``step`` keeps the running (S, z), so the
work per token is O(D K + D F) whatever the position.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from formal_lm.models._common import (_dropout, _dropout_problems, _int_problems, _is_int,
                                      _ModelConfig, _StackedLM)
from formal_lm.models._hidden import _HiddenStates

EPS = 1e-6  # added to the normaliser phi(q)^T z


@dataclasses.dataclass(frozen=True)
class LinearAttentionConfig(_ModelConfig):
    """Hyper-parameters of :class:`LinearAttentionLM`, checked when built.

    Args:
      vocab_size: number of token ids (PAD=0, BOS=1, EOS=2, symbols from 3).
      d_model: residual width D; must be divisible by ``n_heads``.
      n_heads: attention heads H; head dim K = d_model // n_heads.
      d_ff: hidden width of the MLP.
      n_layers: number of blocks.
      dropout: rate on the embeddings and on each sublayer output (train mode only).

    Example:
      >>> LinearAttentionConfig(vocab_size=8, d_model=12, n_heads=3).n_heads
      3
    """

    n_heads: int = 2
    d_ff: int = 64
    n_layers: int = 2
    dropout: float = 0.0

    def _problems(self) -> list[str]:
        problems = _int_problems(self, {"vocab_size": 4, "d_model": 1, "n_heads": 1, "d_ff": 1,
                                        "n_layers": 1})
        problems += _dropout_problems(self)
        if _is_int(self.d_model) and _is_int(self.n_heads) and self.n_heads >= 1:
            if self.d_model % self.n_heads:
                problems.append(
                    f"d_model={self.d_model!r} is not divisible by n_heads={self.n_heads!r}")
        return problems


def _phi(x):
    return jax.nn.elu(x) + 1.0


class _LinearAttentionLayer(nnx.Module):
    carry_names = ("s", "z")

    def __init__(self, cfg: LinearAttentionConfig, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.d_ff
        self.heads = (cfg.n_heads, d // cfg.n_heads)
        self.norm1 = nnx.LayerNorm(d, rngs=rngs)
        self.qkv = nnx.Linear(d, 3 * d, rngs=rngs)
        self.out = nnx.Linear(d, d, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d, rngs=rngs)
        self.ff1 = nnx.Linear(d, f, rngs=rngs)
        self.ff2 = nnx.Linear(f, d, rngs=rngs)
        self.drop = _dropout(cfg.dropout, rngs)

    def zero_carry(self, b):
        h, k = self.heads
        return (jnp.zeros((b, h, k, k), jnp.float32), jnp.zeros((b, h, k), jnp.float32))

    def _qkv(self, x):  # [..., D] -> phi(q), phi(k), v [..., H, K]
        q, k, v = jnp.split(self.qkv(self.norm1(x)), 3, axis=-1)
        split = lambda a: a.reshape(*a.shape[:-1], *self.heads)  # noqa: E731
        return _phi(split(q)), _phi(split(k)), split(v)

    def _finish(self, x, o, rngs):  # x [..., D], o [..., H, K]
        x = x + self.drop(self.out(o.reshape(x.shape)), rngs=rngs)
        return x + self.drop(self.ff2(jax.nn.gelu(self.ff1(self.norm2(x)))), rngs=rngs)

    def __call__(self, x, rngs):  # [B, T, D] -> [B, T, D]
        q, k, v = self._qkv(x)  # [B, T, H, K]
        s = jnp.cumsum(jnp.einsum("bthk,bthm->bthkm", k, v), axis=1)  # [B, T, H, K, K]
        z = jnp.cumsum(k, axis=1)  # [B, T, H, K]
        num = jnp.einsum("bthk,bthkm->bthm", q, s)  # [B, T, H, K]
        den = jnp.einsum("bthk,bthk->bth", q, z)[..., None] + EPS  # [B, T, H, 1]
        return self._finish(x, num / den, rngs)

    def step(self, x, s, z, rngs):  # x [B, D], s [B, H, K, K], z [B, H, K]
        q, k, v = self._qkv(x)  # [B, H, K]
        s = s + jnp.einsum("bhk,bhm->bhkm", k, v)
        z = z + k
        num = jnp.einsum("bhk,bhkm->bhm", q, s)  # [B, H, K]
        den = jnp.einsum("bhk,bhk->bh", q, z)[..., None] + EPS  # [B, H, 1]
        return self._finish(x, num / den, rngs), s, z


class LinearAttentionLM(_HiddenStates, _StackedLM):
    """Causal linear-attention language model; build it with ``make("linear_attention", ...)``.

    Decoding state: {"pos": int32 [], "s": [L, B, H, K, K], "z": [L, B, H, K]}.

    Example:
      >>> from flax import nnx
      >>> cfg = LinearAttentionConfig(vocab_size=6, d_model=4)
      >>> m = nnx.eval_shape(lambda: LinearAttentionLM(cfg, rngs=nnx.Rngs(0)))  # shapes only
      >>> {k: v.shape for k, v in m.init_state(3).items()}
      {'pos': (), 's': (2, 3, 2, 2, 2), 'z': (2, 3, 2, 2)}
    """

    def __init__(self, config: LinearAttentionConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed = nnx.Embed(config.vocab_size, config.d_model, rngs=rngs)
        self.layers = nnx.List([_LinearAttentionLayer(config, rngs)
                                for _ in range(config.n_layers)])
        self.final_norm = nnx.LayerNorm(config.d_model, rngs=rngs)
        self.drop = _dropout(config.dropout, rngs)
        self.unembed = nnx.Linear(config.d_model, config.vocab_size, rngs=rngs)

    def _sequence(self, layer, x, rngs):
        return layer(x, rngs)  # [B, T, D]

    def _cell(self, layer, x, carry, rngs):
        x, s, z = layer.step(x, carry[0], carry[1], rngs)
        return x, (s, z)

    def _head(self, x):
        return self.unembed(self.final_norm(x)).astype(jnp.float32)

    def init_state(self, batch_size: int, max_len: int | None = None) -> dict[str, jax.Array]:
        """Zero running sums; ``max_len`` is accepted for interface parity and ignored."""
        carries = [layer.zero_carry(batch_size) for layer in self.layers]
        return {"pos": jnp.zeros((), jnp.int32),
                "s": jnp.stack([c[0] for c in carries]),
                "z": jnp.stack([c[1] for c in carries])}
