"""Builds the trainer's models through ``formal_lm.models`` (its registry and factory), turning
its config errors into ``FormalLMError``."""
from __future__ import annotations

from flax import nnx

from formal_lm import models
from formal_lm.errors import FormalLMError, Problem


def config_class(name: str) -> type:
    return models.CONFIGS[name]


def make_model(name: str, *, vocab_size: int, seed: int, config: dict) -> nnx.Module:
    """A freshly initialised model (eval mode) whose init depends only on ``seed``."""
    try:
        return models.make(name, vocab_size=vocab_size, seed=seed, **config)
    except ValueError as e:
        raise FormalLMError(Problem(f"model {name!r}: {e}", "fix the [model] table")) from None
