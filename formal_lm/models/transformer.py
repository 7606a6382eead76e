"""Decoder-only causal transformer language model.

Shape glossary (used in the ``# [..]`` comments below):

  B  batch size                     T  sequence length (positions 0..T-1)
  D  d_model                        V  vocab_size
  H  n_heads                        K  head dim = D // H
  F  d_ff                           L  n_layers
  S  KV-cache length (``max_len`` given to ``init_state``)

Positions always come from the index of a token inside its sequence
(``jnp.arange(T)`` in the full pass, ``state["pos"]`` when stepping), never from
its slot in the batch. The trainer's packed pass (``_packed``) puts several
sequences in one row: there positions are per token ([B, T], restarting at 0 for
each sequence) and attention stays inside a sequence (same segment id).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from formal_lm.models._common import (_as_rngs, _dropout, _dropout_problems, _int_problems, _is_int,
                                      _ModelConfig)
from formal_lm.models._hidden import _check_layer, _hit, _overwrite

POS_ENCODINGS = ("learned", "sinusoidal", "rope", "alibi", "none")
NORMS = ("pre", "post")
ACTIVATIONS = {"gelu": jax.nn.gelu, "relu": jax.nn.relu}
_NEG = -1e30  # additive mask value; exp() of it underflows to exactly 0 in float32
CAUSAL_BLOCK = 32  # full-pass attention splits queries into blocks of about this many


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class TransformerConfig(_ModelConfig):
    """Hyper-parameters of :class:`TransformerLM` (validated at construction).

    Args:
      vocab_size: number of token ids (PAD=0, BOS=1, EOS=2, symbols from 3).
      d_model: residual width D; must be divisible by ``n_heads``.
      n_heads: attention heads H; head dim K = d_model // n_heads (even for rope).
      d_ff: hidden width of the MLP.
      n_layers: number of blocks.
      max_len: size of the learned position table; default KV-cache length.
      pos_encoding: one of "learned", "sinusoidal", "rope", "alibi", "none".
      norm: "pre" (LayerNorm before each sublayer, plus a final norm) or "post".
      dropout: rate on embeddings and on each sublayer output (train mode only).
      activation: the MLP's nonlinearity, "gelu" (tanh approximation) or "relu" (what
        PyTorch's nn.Transformer, used by the papers' released code, defaults to).

    Example:
      >>> TransformerConfig(vocab_size=8, d_model=10, n_heads=5).d_model
      10
    """

    n_heads: int = 2
    d_ff: int = 64
    n_layers: int = 2
    max_len: int = 512
    pos_encoding: str = "learned"
    norm: str = "pre"
    dropout: float = 0.0
    activation: str = "gelu"

    def _problems(self) -> list[str]:
        problems = _int_problems(
            self,
            {"vocab_size": 4, "d_model": 1, "n_heads": 1, "d_ff": 1, "n_layers": 1, "max_len": 1},
        )
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation={self.activation!r}: must be one of {tuple(ACTIVATIONS)}")
        problems += _dropout_problems(self)
        if self.pos_encoding not in POS_ENCODINGS:
            problems.append(f"pos_encoding={self.pos_encoding!r}: must be one of {POS_ENCODINGS}")
        if self.norm not in NORMS:
            problems.append(f"norm={self.norm!r}: must be one of {NORMS}")
        if _is_int(self.d_model) and _is_int(self.n_heads) and self.n_heads >= 1:
            if self.d_model % self.n_heads:
                problems.append(
                    f"d_model={self.d_model!r} is not divisible by n_heads={self.n_heads!r}"
                )
            elif self.pos_encoding == "rope" and (self.d_model // self.n_heads) % 2:
                problems.append(
                    f"pos_encoding='rope' needs an even head dim, got d_model // n_heads = "
                    f"{self.d_model // self.n_heads}; change d_model or n_heads"
                )
        return problems


# --------------------------------------------------------------------------- positional


def _sinusoid(pos: jax.Array, d: int) -> jax.Array:
    """Fixed sin/cos table rows for ``pos`` [T] (or [B, T]) -> [T, D] (or [B, T, D])."""
    i = np.arange(d)
    inv_freq = 1.0 / (10000.0 ** (2 * (i // 2) / d))  # [D]
    ang = pos.astype(jnp.float32)[..., None] * inv_freq.astype(np.float32)
    return jnp.where(i % 2 == 0, jnp.sin(ang), jnp.cos(ang))


def _rope(x: jax.Array, pos: jax.Array) -> jax.Array:
    """Rotates the two halves of each head of ``x`` [B, T, H, K] by angles pos * freq.

    ``pos`` is [T] (shared by all rows) or [B, T] (per token, packed rows).
    """
    half = x.shape[-1] // 2
    inv_freq = (1.0 / (10000.0 ** (np.arange(half) * 2.0 / x.shape[-1]))).astype(np.float32)
    ang = pos.astype(jnp.float32)[..., None] * inv_freq  # [(B,) T, K/2]
    cos = jnp.cos(ang)[..., None, :]  # [(B,) T, 1, K/2]
    sin = jnp.sin(ang)[..., None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def _alibi_slopes(n_heads: int) -> np.ndarray:
    """Per-head ALiBi slopes: a geometric sequence starting at 2^(-8/n).

    For a head count that is not a power of two, take the slopes of the nearest
    smaller power of two and fill up with every other slope of twice that count.
    """

    def geometric(n: int) -> list[float]:
        first = 2.0 ** (-8.0 / n)
        return [first ** (k + 1) for k in range(n)]

    p = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = geometric(p)
    if p != n_heads:
        slopes += geometric(2 * p)[0::2][: n_heads - p]
    return np.asarray(slopes, dtype=np.float32)


def _attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_pos: jax.Array,
    k_pos: jax.Array,
    slopes: np.ndarray | None,
    q_seg: jax.Array | None = None,
    k_seg: jax.Array | None = None,
) -> jax.Array:
    """Causal attention: query i sees key j iff k_pos[j] <= q_pos[i] (and k_seg[j] == q_seg[i]).

    q: [B, T, H, K]; k, v: [B, S, H, K]; q_pos: [T]; k_pos: [S] -> [B, T, H, K].
    Packed rows pass per-token positions q_pos [B, T], k_pos [B, S] and segment ids q_seg
    [B, T], k_seg [B, S]: a query then sees the keys of its own segment at positions <= its own.
    """
    with jax.named_scope("scores"):
        weights = _attention_probs(q, k, q_pos, k_pos, slopes, q_seg, k_seg)  # [B, H, T, S]
    with jax.named_scope("mix"):
        return jnp.einsum("bhts,bshk->bthk", weights, v.astype(jnp.float32))


def _causal_attend(q, k, v, pos, slopes=None, seg=None) -> jax.Array:
    """``_attend`` of a full pass (queries and keys are the same T slots) in query blocks.

    q, k, v: [B, T, H, K]; pos: [T] (or [B, T] with seg [B, T] for packed rows) -> [B, T, H, K].
    Key slot j > query slot i is always masked (also in packed rows, where segments are
    contiguous), so query block i only scores keys [0, end_i): ~(n+1)/2n of the [T, T] scores
    for n blocks of about ``CAUSAL_BLOCK`` queries, same result.
    """
    t = q.shape[1]
    n = min(max(t // CAUSAL_BLOCK, 1), 32)
    bounds = [round(t * i / n) for i in range(n + 1)]

    def cut(a, lo, hi):  # segment ids of slots lo..hi-1 (None when not packed)
        return None if a is None else a[:, lo:hi]

    outs = [_attend(q[:, lo:hi], k[:, :hi], v[:, :hi], pos[..., lo:hi], pos[..., :hi], slopes,
                    cut(seg, lo, hi), cut(seg, 0, hi))
            for lo, hi in zip(bounds[:-1], bounds[1:])]
    return outs[0] if n == 1 else jnp.concatenate(outs, axis=1)  # [B, T, H, K]


def _attention_probs(q, k, q_pos, k_pos, slopes, q_seg=None, k_seg=None) -> jax.Array:
    """The causal attention weights of ``_attend``: float32 [B, H, T, S], rows sum to 1."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = jnp.einsum("bthk,bshk->bhts", q, k).astype(jnp.float32) * scale  # [B, H, T, S]
    dist = (q_pos[..., :, None] - k_pos[..., None, :]).astype(jnp.float32)  # [(B,) T, S]
    mask = k_pos[..., None, :] <= q_pos[..., :, None]  # [(B,) T, S]
    if q_seg is not None:
        mask = mask & (k_seg[:, None, :] == q_seg[:, :, None])  # [B, T, S]
    if dist.ndim == 3:
        dist = dist[:, None]  # [B, 1, T, S]
    if mask.ndim == 3:
        mask = mask[:, None]
    if slopes is not None:
        scores = scores - jnp.asarray(slopes)[:, None, None] * dist  # ALiBi
    scores = jnp.where(mask, scores, _NEG)
    return jax.nn.softmax(scores, axis=-1)  # [B, H, T, S] float32


# --------------------------------------------------------------------------- modules


def _drop(drop: nnx.Dropout, x: jax.Array, rngs) -> jax.Array:
    """``drop(x)``, its ops labelled "dropout" (the embedding's and every sublayer's)."""
    with jax.named_scope("dropout"):
        return drop(x, rngs=rngs)


class _Block(nnx.Module):
    """One attention + MLP block, pre- or post-LayerNorm."""

    def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.norm = cfg.norm
        self.activation = cfg.activation
        self.pos_encoding = cfg.pos_encoding
        self.query = nnx.Linear(d, d, rngs=rngs)
        self.key = nnx.Linear(d, d, rngs=rngs)
        self.value = nnx.Linear(d, d, rngs=rngs)
        self.attn_out = nnx.Linear(d, d, rngs=rngs)
        self.fc1 = nnx.Linear(d, cfg.d_ff, rngs=rngs)
        self.fc2 = nnx.Linear(cfg.d_ff, d, rngs=rngs)
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.drop = _dropout(cfg.dropout, rngs)

    def _attention(self, h, pos, cache, seg=None):
        """h: [B, T, D], pos: [T] (or [B, T] with seg [B, T]) -> ([B, T, D], cache).

        ``cache`` is None (attend within h) or (k_cache, v_cache), each [B, S, H, K]:
        the new keys/values are written at positions pos[0]..pos[0]+T-1 and the
        queries attend over the whole cache (unwritten slots are masked out).
        """
        b, t, d = h.shape
        shape = (b, t, self.n_heads, d // self.n_heads)
        with jax.named_scope("project"):
            q = self.query(h).reshape(shape)  # [B, T, H, K]
            k = self.key(h).reshape(shape)
            v = self.value(h).reshape(shape)
        if self.pos_encoding == "rope":
            q, k = _rope(q, pos), _rope(k, pos)
        if cache is None:
            k_all, v_all, k_pos = k, v, pos
        else:
            start = (0, pos[0], 0, 0)
            k_all = jax.lax.dynamic_update_slice(cache[0], k, start)  # [B, S, H, K]
            v_all = jax.lax.dynamic_update_slice(cache[1], v, start)
            k_pos = jnp.arange(k_all.shape[1])
            cache = (k_all, v_all)
        slopes = _alibi_slopes(self.n_heads) if self.pos_encoding == "alibi" else None
        if cache is not None:
            o = _attend(q, k_all, v_all, pos, k_pos, slopes)
        else:
            o = _causal_attend(q, k, v, pos, slopes, seg)
        o = o.reshape(b, t, d)  # [B, T, D]
        with jax.named_scope("project"):
            return self.attn_out(o), cache

    def attention_weights(self, x, pos):
        """The block's attention weights on its input x [B, T, D]: float32 [B, H, T, T]."""
        h = self.ln1(x) if self.norm == "pre" else x
        b, t, d = h.shape
        shape = (b, t, self.n_heads, d // self.n_heads)
        q, k = self.query(h).reshape(shape), self.key(h).reshape(shape)  # [B, T, H, K]
        if self.pos_encoding == "rope":
            q, k = _rope(q, pos), _rope(k, pos)
        slopes = _alibi_slopes(self.n_heads) if self.pos_encoding == "alibi" else None
        return _attention_probs(q, k, pos, pos, slopes)

    def _mlp(self, h):
        with jax.named_scope("mlp"):
            return self.fc2(ACTIVATIONS[self.activation](self.fc1(h)))  # [B, T, D]

    def _norm(self, ln, x):
        with jax.named_scope("norm"):
            return ln(x)

    def __call__(self, x, pos, cache, rngs, seg=None):
        # The named scopes label the compiled ops by component (benchmarks/profile_step.py).
        if self.norm == "pre":
            with jax.named_scope("attention"):
                a, cache = self._attention(self._norm(self.ln1, x), pos, cache, seg)
            x = x + _drop(self.drop, a, rngs)
            x = x + _drop(self.drop, self._mlp(self._norm(self.ln2, x)), rngs)
        else:
            with jax.named_scope("attention"):
                a, cache = self._attention(x, pos, cache, seg)
            x = self._norm(self.ln1, x + _drop(self.drop, a, rngs))
            x = self._norm(self.ln2, x + _drop(self.drop, self._mlp(x), rngs))
        return x, cache


class TransformerLM(nnx.Module):
    """Decoder-only causal transformer LM; build it with ``make("transformer", ...)``.

    Call ``model(ids)`` with ids int32 [B, T] for logits float32 [B, T, V], or
    decode one token at a time with ``init_state`` / ``step`` (KV cache).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> cfg = TransformerConfig(vocab_size=6, d_model=8, n_heads=2, d_ff=16, n_layers=1)
      >>> model = TransformerLM(cfg, rngs=nnx.Rngs(0))
      >>> model(jnp.array([[1, 3, 4, 2]], dtype=jnp.int32)).shape
      (1, 4, 6)
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.config = config
        d = config.d_model
        self.embed = nnx.Embed(config.vocab_size, d, rngs=rngs)
        if config.pos_encoding == "learned":
            self.pos_embed = nnx.Embed(config.max_len, d, rngs=rngs)
        else:
            self.pos_embed = None
        self.blocks = nnx.List([_Block(config, rngs) for _ in range(config.n_layers)])
        self.final_norm = nnx.LayerNorm(d, rngs=rngs) if config.norm == "pre" else None
        self.drop = _dropout(config.dropout, rngs)
        self.unembed = nnx.Linear(d, config.vocab_size, rngs=rngs)

    def _embed(self, ids, pos, rngs):
        with jax.named_scope("embed"):
            x = self.embed(ids)  # [B, T, D]
            if self.config.pos_encoding == "learned":
                x = x + self.pos_embed(pos)  # [T, D] (or [B, T, D] for packed rows)
            elif self.config.pos_encoding == "sinusoidal":
                x = x + _sinusoid(pos, self.config.d_model)
        return _drop(self.drop, x, rngs)

    def _head(self, x):
        with jax.named_scope("head"):
            if self.final_norm is not None:
                x = self.final_norm(x)
            return self.unembed(x).astype(jnp.float32)  # [B, T, V]

    def __call__(self, ids: jax.Array, *, rngs: nnx.Rngs | jax.Array | None = None) -> jax.Array:
        """ids int32 [B, T] -> logits float32 [B, T, V]."""
        rngs = _as_rngs(rngs)
        t = ids.shape[1]
        if self.config.pos_encoding == "learned" and t > self.config.max_len:
            raise ValueError(
                f"sequence length T={t} exceeds max_len={self.config.max_len} of the learned "
                "position table; build the model with a larger max_len"
            )
        pos = jnp.arange(t)  # [T]: position within each sequence, shared by all rows
        x = self._embed(ids, pos, rngs)
        for block in self.blocks:
            x, _ = block(x, pos, None, rngs)
        return self._head(x)

    def _residuals(self, ids, patch=None) -> list[jax.Array]:
        """The residual stream [B, T, D] after the embedding and after each block (eval mode);
        ``patch`` = (layer, hit [B, T], value) overwrites one of them where ``hit``."""
        t = ids.shape[1]
        if self.config.pos_encoding == "learned" and t > self.config.max_len:
            raise ValueError(f"sequence length T={t} exceeds max_len={self.config.max_len}")
        pos = jnp.arange(t)  # [T]
        x = self._embed(ids, pos, None)
        out = []
        for i in range(len(self.blocks) + 1):
            if i:
                x, _ = self.blocks[i - 1](x, pos, None, None)
            if patch is not None and patch[0] == i:
                x = _overwrite(x, patch[1], patch[2])
            out.append(x)
        return out

    def hidden_states(self, ids: jax.Array) -> tuple[jax.Array, ...]:
        """ids int32 [B, T] -> L + 1 arrays [B, T, D]: the residual stream after the embedding
        (positions added) and after each block, before the final norm (eval mode)."""
        return tuple(self._residuals(ids))

    def attention_weights(self, ids: jax.Array) -> jax.Array:
        """ids int32 [B, T] -> float32 [L, B, H, T, T]: weights[l, b, h, i, j] is how much
        query i attends to key j in block l (0 for j > i; rows sum to 1)."""
        xs = self._residuals(ids)
        pos = jnp.arange(ids.shape[1])
        return jnp.stack([blk.attention_weights(x, pos) for blk, x in zip(self.blocks, xs)])

    def patched_logits(self, ids: jax.Array, layer: int, pos, value) -> jax.Array:
        """Logits [B, T, V] with the residual stream after ``layer`` (0: the embedding) at
        position ``pos`` (int or int [B]) replaced by ``value`` [B, D] (or [D]) in each row;
        later blocks (at that position and, through attention, after it) see the new value."""
        layer = _check_layer(layer, len(self.blocks))
        return self._head(self._residuals(ids, (layer, _hit(ids.shape, pos), value))[-1])

    def _packed(self, ids: jax.Array, pos: jax.Array, seg: jax.Array,
                *, rngs: nnx.Rngs | jax.Array | None = None) -> jax.Array:
        """Full pass over packed rows (private; used by the trainer).

        ids, pos, seg: int32 [B, T]. Each row holds several sequences one after another;
        ``seg`` numbers them within the row and ``pos`` is each token's position inside its
        own sequence (restarting at 0). A token attends only to earlier tokens of its own
        segment, so every sequence gets exactly the logits ``model(ids)`` gives it alone
        (float tolerance; dropout masks differ). Returns logits float32 [B, T, V].
        """
        rngs = _as_rngs(rngs)
        x = self._embed(ids, pos, rngs)  # [B, T, D]
        for block in self.blocks:
            x, _ = block(x, pos, None, rngs, seg)
        return self._head(x)

    def init_state(self, batch_size: int, max_len: int | None = None) -> dict[str, jax.Array]:
        """Empty KV cache: {"pos": int32 [], "k", "v": float32 [L, B, S, H, K]}.

        ``S = max_len`` (default ``config.max_len``) bounds how many tokens can be fed
        to ``step``; writing past it is not checked inside jit and gives wrong logits.
        """
        cfg = self.config
        s = cfg.max_len if max_len is None else max_len
        if cfg.pos_encoding == "learned" and s > cfg.max_len:
            raise ValueError(f"max_len={s} exceeds the learned position table size {cfg.max_len}")
        shape = (cfg.n_layers, batch_size, s, cfg.n_heads, cfg.d_model // cfg.n_heads)
        zeros = jnp.zeros(shape, jnp.float32)
        return {"pos": jnp.zeros((), jnp.int32), "k": zeros, "v": zeros}

    def step(
        self,
        tokens: jax.Array,
        state: dict[str, jax.Array],
        *,
        rngs: nnx.Rngs | jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Feeds tokens int32 [B] at position ``state["pos"]``; returns ([B, V], new state)."""
        rngs = _as_rngs(rngs)
        pos = state["pos"][None]  # [1]
        x = self._embed(tokens[:, None], pos, rngs)  # [B, 1, D]
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            x, (k, v) = block(x, pos, (state["k"][i], state["v"][i]), rngs)
            ks.append(k)
            vs.append(v)
        logits = self._head(x)[:, 0]  # [B, V]
        return logits, {"pos": state["pos"] + 1, "k": jnp.stack(ks), "v": jnp.stack(vs)}
