"""Builds models by name: ``formal_lm.models.make`` when it exists, else the model classes."""
from __future__ import annotations

import dataclasses

from flax import nnx

from formal_lm.errors import FormalLMError, Problem


def _classes():
    from formal_lm.models.lru import LRUConfig, LRULM
    from formal_lm.models.recurrent import LSTMLM, LSTMConfig, RNNLM, RNNConfig
    from formal_lm.models.transformer import TransformerConfig, TransformerLM
    return {"transformer": (TransformerConfig, TransformerLM), "lstm": (LSTMConfig, LSTMLM),
            "rnn": (RNNConfig, RNNLM), "lru": (LRUConfig, LRULM)}


def config_class(name: str) -> type:
    try:
        from formal_lm.models import CONFIGS
        return CONFIGS[name]
    except ImportError:
        return _classes()[name][0]


def make_model(name: str, *, vocab_size: int, seed: int, config: dict) -> nnx.Module:
    """A freshly initialised model (eval mode) whose init depends only on ``seed``."""
    try:
        from formal_lm.models import make
    except ImportError:
        make = None
    if make is not None:
        try:
            model = make(name, vocab_size=vocab_size, seed=seed, **config)
        except ValueError as e:
            raise FormalLMError(Problem(f"model {name!r}: {e}", "fix the [model] table")) from None
    else:
        cfg_cls, cls = _classes()[name]
        model = cls(cfg_cls(vocab_size=vocab_size, **config), rngs=nnx.Rngs(seed))
    model.eval()
    return model


def config_dict(model: nnx.Module) -> dict:
    cfg = getattr(model, "config", None)
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}
