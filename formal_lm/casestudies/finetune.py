"""Fine-tuning transfer (Reizinger et al. 2024, case study 3): do models with equal pre-training
loss fine-tune alike?

Pre-train on one language, fine-tune on another with the SAME alphabet (so no vocabulary
surgery is needed: the default pair is anbn-short -> a^n b^n a^n with n <= 10), and compare
groups that are equal in pre-training loss but differ in

- architecture (Transformer vs LSTM, trained to a similar loss), and
- parametrisation: :func:`rescale` multiplies one layer's weights by ``c`` and divides the next
  linear map's weights by ``c``. The function is exactly the same (so the pre-training loss is
  identical, not just close), but gradients w.r.t. the two layers scale by 1/c and c and Adam's
  per-coordinate steps do not, so fine-tuning follows a different trajectory. This is not the
  no-op of the published script (relu(c x)/c inside the forward pass, which leaves both the
  function and its gradients unchanged); tests/test_finetune.py checks both halves of the claim.

Shape glossary:  N strings   T tokens   V vocab
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from formal_lm.analysis.saturation import kl_and_nll
from formal_lm.casestudies._fit import logits_fn
from formal_lm.errors import FormalLMError, Problem
from formal_lm.language import Language
from formal_lm.training.data import derive

_FT_STREAM = 202

ANBNAN_SHORT = """
name = "anbnan-short"
kind = "counter"
description = "a^n b^n a^n, n ~ Uniform{1..10}: a CPU-sized anbnan"
alphabet = ["a", "b"]
blocks = [["a", "n"], ["b", "n"], ["a", "n"]]

[prior.n]
kind = "uniform"
min = 1
max = 10
"""
"""Grammar text of the default fine-tuning language (same alphabet as anbn-short)."""


def rescale(model: nnx.Module, c: float) -> nnx.Module:
    """A copy of ``model`` reparametrised by ``c`` > 0 that computes the same function.

    - transformer: in every block, the value projection (kernel and bias) times c and the
      attention output kernel divided by c (attention output is linear in the values);
    - lstm / rnn: the token embedding times c and the first layer's input kernel divided by c.

    Raises:
        FormalLMError: for other models or c <= 0.
    """
    if not (isinstance(c, (int, float)) and c > 0):
        raise FormalLMError(Problem(f"c={c!r} must be a number > 0"))
    graphdef, state = nnx.split(model)
    new = nnx.merge(graphdef, jax.tree.map(jnp.array, state))
    kind = type(new).__name__
    if hasattr(new, "blocks"):  # TransformerLM
        for blk in new.blocks:
            blk.value.kernel[...] = blk.value.kernel[...] * c
            if blk.value.bias is not None:
                blk.value.bias[...] = blk.value.bias[...] * c
            blk.attn_out.kernel[...] = blk.attn_out.kernel[...] / c
    elif hasattr(new, "layers") and hasattr(new.layers[0], "w_in"):  # LSTM / RNN
        new.embed.embedding[...] = new.embed.embedding[...] * c
        new.layers[0].w_in.kernel[...] = new.layers[0].w_in.kernel[...] / c
    else:
        raise FormalLMError(Problem(f"rescale does not know model {kind!r}",
                                    "use a transformer, lstm or rnn"))
    return new


def language_batch(lang: Language, n: int, *, seed: int, max_length: int) -> np.ndarray:
    """int32 [n, max_length] exact samples no longer than max_length tokens (longer redrawn)."""
    out, attempt = [], 0
    while len(out) < n:
        got = lang.sample(n - len(out), seed=derive(seed, _FT_STREAM, attempt))
        out += [s for s in got if len(s) + 2 <= max_length]
        attempt += 1
        if attempt > 200:
            raise FormalLMError(Problem(f"cannot draw strings of <= {max_length} tokens from "
                                        f"{lang.name!r}", "raise max_length"))
    return lang.vocab.batch(out, length=max_length)


def epoch_batches(data: np.ndarray, batch_size: int, *, seed: int):
    """``step -> ids [B, T]``: each item of ``data`` once per epoch, reshuffled per epoch."""
    N = len(data)
    perms: dict[int, np.ndarray] = {}  # epoch -> its permutation (drawn once)

    def perm(epoch: int) -> np.ndarray:
        if epoch not in perms:
            perms[epoch] = np.random.default_rng(derive(seed, _FT_STREAM, -1, epoch)).permutation(N)
        return perms[epoch]

    def get(step: int) -> np.ndarray:
        idx = [perm(i // N)[i % N] for i in range(step * batch_size, (step + 1) * batch_size)]
        return data[np.array(idx)]

    return get


def exact_kl(model: nnx.Module, lang: Language, ids: np.ndarray, batch: int = 128
             ) -> tuple[float, float]:
    """(KL(true || model) per real token, NLL per real token) on ``ids [N, T]``, exactly.

    ``analysis.saturation.kl_and_nll`` on the model's log-probabilities: the true next-token rows
    come from ``lang.next_token_probs``; KL (never negative) and NLL are summed over real target
    positions and divided by their count.
    """
    kl, nll, _, mask = kl_and_nll(logits_fn(model), lang, ids, batch_size=batch)
    n = max(int(mask.sum()), 1)
    return float(kl.sum()) / n, float(nll.sum()) / n
