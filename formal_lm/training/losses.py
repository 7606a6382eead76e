"""The JAX losses of the package (one NLL, one KL), used by the training step and evaluation.

Shape glossary:  B batch   T tokens   V vocab
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from formal_lm.vocab import PAD_ID


def token_nll(logits, targets):
    """-log p(target): logits [..., V], targets int [...] -> [...]."""
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(lp, targets[..., None], axis=-1)[..., 0]


def masked_nll(logits, ids):
    """(sum of NLL over real targets, their count) for ids [B, T] and logits [B, T-1, V]."""
    tgt = ids[:, 1:]
    mask = (tgt != PAD_ID).astype(jnp.float32)
    return jnp.sum(token_nll(logits, tgt) * mask), jnp.sum(mask)


def weighted_nll(logits, ids, weights):
    """NLL of targets ``ids[:, 1:]`` weighted by ``weights`` [B, T-1], per unit of weight.

    The completion objectives use it with weight 1 on completion tokens only.
    """
    s = jnp.sum(token_nll(logits, ids[:, 1:]) * weights)
    return s / jnp.maximum(jnp.sum(weights), 1.0)


def kl_sum(p_true, logits):
    """Sum over positions of KL(p_true || softmax(logits)); p_true [N, T, V] (zero rows skipped)."""
    lq = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    pos = p_true > 0
    logp = jnp.log(jnp.where(pos, p_true, 1.0))
    return jnp.sum(jnp.where(pos, p_true * (logp - lq), 0.0))
