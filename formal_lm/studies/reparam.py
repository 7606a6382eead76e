"""A function-preserving reparametrisation, for the fine-tuning study (Reizinger et al. 2024,
case study 3: do models with equal pre-training loss fine-tune alike?).

:func:`rescale_params` multiplies one layer's weights by ``c`` and divides the next linear map's
weights by ``c``:

- transformer: in every block, the value projection (kernel and bias) times c and the attention
  output kernel divided by c (attention output is linear in the values);
- lstm / rnn: the token embedding times c and the first layer's input kernel divided by c.

The function is exactly the same (so the pre-training loss is identical, not just close), but
the gradients with respect to the two layers scale by 1/c and c and Adam's per-coordinate steps
do not, so fine-tuning follows a different trajectory. This is not the no-op of the published
script (relu(c x)/c inside the forward pass, which leaves both the function and its gradients
unchanged); tests/test_finetune.py checks both halves of the claim.
"""
from __future__ import annotations

import re

import jax
from flax import nnx

from formal_lm import models
from formal_lm.errors import FormalLMError, Problem
from formal_lm.training.checkpoint import path_of

# model name -> ((parameter path pattern, power of c), ...)
RULES: dict[str, tuple[tuple[str, int], ...]] = {
    "transformer": ((r"blocks/\d+/value/(kernel|bias)", 1), (r"blocks/\d+/attn_out/kernel", -1)),
    "lstm": ((r"embed/embedding", 1), (r"layers/0/w_in/kernel", -1)),
    "rnn": ((r"embed/embedding", 1), (r"layers/0/w_in/kernel", -1)),
}


def rescale_params(params, model: str, c: float):
    """``params`` (a tree of parameters, stacked over seeds or not) reparametrised by ``c`` > 0.

    Raises:
        FormalLMError: for models without a rule or c <= 0.
    """
    if isinstance(c, bool) or not (isinstance(c, (int, float)) and c > 0):
        raise FormalLMError(Problem(f"rescale={c!r} must be a number > 0"))
    if model not in RULES:
        raise FormalLMError(Problem(f"rescale does not know model {model!r}",
                                    f"use one of {sorted(RULES)}"))
    touched = set()

    def scale(path, x):
        name = path_of(path)
        for pattern, power in RULES[model]:
            if re.fullmatch(pattern, name):
                touched.add(pattern)
                return x * (c ** power)
        return x

    out = jax.tree_util.tree_map_with_path(scale, params)
    if len(touched) != len(RULES[model]):
        raise FormalLMError(Problem(f"the {model} parameters lack the paths "
                                    f"{sorted(set(p for p, _ in RULES[model]) - touched)}",
                                    "rescale works on the package's own models"))
    return out


def rescale(model: nnx.Module, c: float) -> nnx.Module:
    """A copy of a package model reparametrised by ``c`` (see :func:`rescale_params`)."""
    names = {cls: name for name, cls in models.CONFIGS.items()}
    name = names.get(type(getattr(model, "config", None)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return nnx.merge(graphdef, rescale_params(params, name, c), rest)
