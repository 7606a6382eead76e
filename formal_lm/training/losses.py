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
    return target_nll(logits, ids[:, 1:])


def target_nll(logits, targets):
    """(sum of NLL over the non-PAD ``targets`` [B, T-1], their count); logits [B, T-1, V]."""
    mask = (targets != PAD_ID).astype(jnp.float32)
    return jnp.sum(token_nll(logits, targets) * mask), jnp.sum(mask)


def restrict(logits, targets, classes):
    """Logits [..., V] with every token outside the class of the target at that position set
    to -inf-like (-1e30), so the softmax runs over the target's own class only; ``classes``
    int [V] (None: one class, logits unchanged). A supervised task's labels and outputs form
    their own class, which makes its loss on a two-label class binary cross-entropy."""
    if classes is None:
        return logits
    same = classes[targets][..., None] == classes  # [..., V]
    return jnp.where(same, logits.astype(jnp.float32), -1e30)


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


def next_symbol_bce(logits, sets, tokens):
    """(sum of binary cross-entropies, their count) of next-symbol-set labels.

    ``sets`` int [..., T] is a bitmask per position (bit ``v`` set: token ``v`` may come next;
    0: the position is not scored); ``tokens`` bool [V] the tokens scored at every scored
    position; each is one binary decision with logit ``logits[..., v]`` (Butoi et al.'s
    next-symbol prediction loss).
    """
    V = logits.shape[-1]
    labels = (sets[..., None] >> jnp.arange(V, dtype=sets.dtype)) & 1
    z = logits.astype(jnp.float32)
    bce = jnp.where(labels == 1, jax.nn.softplus(-z), jax.nn.softplus(z))
    mask = ((sets != 0)[..., None] & tokens).astype(jnp.float32)
    return jnp.sum(bce * mask), jnp.sum(mask)

