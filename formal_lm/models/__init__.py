"""Neural sequence models for formal languages (flax NNX).

Every model maps token ids int32 [B, T] to logits float32 [B, T, V] and decodes
incrementally with ``state = model.init_state(B, max_len)`` and
``logits, state = model.step(tokens, state)``. See README.md in this folder.

Example:
  >>> import jax.numpy as jnp
  >>> model = make("lstm", vocab_size=6, d_model=4, hidden=8, seed=0)
  >>> model(jnp.array([[1, 3, 4, 2]], dtype=jnp.int32)).shape
  (1, 4, 6)
  >>> count_params(model) == param_count_formula("lstm", model.config)
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Union

import jax
from flax import nnx

from formal_lm.models.linear_attention import LinearAttentionConfig, LinearAttentionLM
from formal_lm.models.lru import LRUConfig, LRULM
from formal_lm.models.mamba import MambaConfig, MambaLM
from formal_lm.models.memory_rnn import StackRNNConfig, StackRNNLM, TapeRNNConfig, TapeRNNLM
from formal_lm.models.recurrent import LSTMConfig, LSTMLM, RNNConfig, RNNLM
from formal_lm.models.transformer import TransformerConfig, TransformerLM

__all__ = [
    "CONFIGS",
    "LinearAttentionConfig",
    "LinearAttentionLM",
    "LRUConfig",
    "LRULM",
    "LSTMConfig",
    "LSTMLM",
    "MambaConfig",
    "MambaLM",
    "RNNConfig",
    "RNNLM",
    "StackRNNConfig",
    "StackRNNLM",
    "TapeRNNConfig",
    "TapeRNNLM",
    "TransformerConfig",
    "TransformerLM",
    "count_params",
    "make",
    "make_from_config",
    "param_count_formula",
]

ModelConfig = Union[TransformerConfig, LSTMConfig, RNNConfig, LRUConfig, StackRNNConfig,
                    TapeRNNConfig, MambaConfig, LinearAttentionConfig]
"""Any of the model config dataclasses."""

CONFIGS: dict[str, type] = {
    "transformer": TransformerConfig,
    "lstm": LSTMConfig,
    "rnn": RNNConfig,
    "lru": LRUConfig,
    "stack_rnn": StackRNNConfig,
    "tape_rnn": TapeRNNConfig,
    "mamba": MambaConfig,
    "linear_attention": LinearAttentionConfig,
}
"""Registry: model name -> config dataclass."""

_MODELS: dict[type, type] = {
    TransformerConfig: TransformerLM,
    LSTMConfig: LSTMLM,
    RNNConfig: RNNLM,
    LRUConfig: LRULM,
    StackRNNConfig: StackRNNLM,
    TapeRNNConfig: TapeRNNLM,
    MambaConfig: MambaLM,
    LinearAttentionConfig: LinearAttentionLM,
}


def _name_of(config: Any) -> str:
    for name, cls in CONFIGS.items():
        if type(config) is cls:
            return name
    raise ValueError(
        f"config={config!r} is not a model config; expected one of "
        f"{', '.join(c.__name__ for c in CONFIGS.values())}"
    )


def make_from_config(config: ModelConfig, seed: int | jax.Array = 0) -> nnx.Module:
    """Builds the model for ``config`` with parameters drawn from ``seed``.

    ``seed`` may be a Python int or an integer jax array (so the call can be
    vmapped over seeds). Parameters use ``fold_in(key(seed), 0)``, the dropout
    stream ``fold_in(key(seed), 1)``. The model starts in eval mode (dropout off);
    call ``model.train()`` to enable dropout.

    Example:
      >>> model = make_from_config(RNNConfig(vocab_size=5, d_model=4, hidden=4), seed=1)
      >>> type(model).__name__
      'RNNLM'
    """
    _name_of(config)
    if isinstance(seed, bool) or not isinstance(seed, (int, jax.Array)):
        raise ValueError(f"seed={seed!r}: must be an int or an integer jax array")
    key = jax.random.key(seed)
    rngs = nnx.Rngs(params=jax.random.fold_in(key, 0), dropout=jax.random.fold_in(key, 1))
    return _MODELS[type(config)](config, rngs=rngs)


def make(
    name: str,
    *,
    vocab_size: int | None = None,
    seed: int | jax.Array = 0,
    config: ModelConfig | None = None,
    **overrides: Any,
) -> nnx.Module:
    """Builds model ``name`` (a key of ``CONFIGS``: "transformer", "lstm", "rnn", "lru",
    "stack_rnn", "tape_rnn", "mamba" or "linear_attention").

    Either pass ``vocab_size`` and config fields as keywords, or an already-built
    ``config=`` dataclass (keywords, if any, then override its fields). Unknown
    keys and bad values raise ``ValueError`` naming them.

    Example:
      >>> m = make("transformer", vocab_size=7, d_model=10, n_heads=5, n_layers=1)
      >>> m.config.n_heads
      5
      >>> make("transformer", vocab_size=7, d_modle=8)
      Traceback (most recent call last):
      ...
      ValueError: unknown config key 'd_modle' for 'transformer'; known keys: vocab_size, d_model, n_heads, d_ff, n_layers, max_len, pos_encoding, norm, dropout, activation
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown model name {name!r}; known names: {', '.join(CONFIGS)}")
    cls = CONFIGS[name]
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in overrides if k not in known]
    if unknown:
        keys = ", ".join(repr(k) for k in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise ValueError(
            f"unknown config key{plural} {keys} for {name!r}; known keys: {', '.join(known)}"
        )
    if vocab_size is not None:
        overrides["vocab_size"] = vocab_size
    if config is None:
        if "vocab_size" not in overrides:
            raise ValueError(f"vocab_size is required to make {name!r} (or pass config=)")
        config = cls(**overrides)
    else:
        if type(config) is not cls:
            raise ValueError(
                f"config={type(config).__name__} does not match name={name!r}; "
                f"expected a {cls.__name__}"
            )
        config = dataclasses.replace(config, **overrides)
    return make_from_config(config, seed)


def count_params(model: nnx.Module) -> int:
    """Number of scalar parameters (``nnx.Param`` leaves) in ``model``.

    Example:
      >>> count_params(make("rnn", vocab_size=4, d_model=2, hidden=3))
      42
    """
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def param_count_formula(name: str, config: ModelConfig) -> int:
    """Closed-form parameter count of model ``name`` built from ``config``.

    Written from the architecture description, independently of the module code,
    so tests can check one against the other.

    Example:
      >>> param_count_formula("rnn", RNNConfig(vocab_size=4, d_model=2, hidden=3))
      42
    """
    if name not in CONFIGS or type(config) is not CONFIGS[name]:
        raise ValueError(f"name={name!r} and config={type(config).__name__} do not match")
    if name in _FORMULAS:
        return _FORMULAS[name](config)
    c = config
    v = c.vocab_size
    if name == "transformer":
        d, f = c.d_model, c.d_ff
        attention = 4 * (d * d + d)  # q, k, v, out projections with biases
        mlp = (d * f + f) + (f * d + d)
        norms = 2 * (2 * d)  # two LayerNorms (scale + bias)
        total = v * d + c.n_layers * (attention + mlp + norms) + (d * v + v)
        total += c.max_len * d if c.pos_encoding == "learned" else 0
        total += 2 * d if c.norm == "pre" else 0  # final LayerNorm
        return total
    if name in ("lstm", "rnn"):
        gates = 4 if name == "lstm" else 1
        h = c.hidden
        layers = 0
        for i in range(c.n_layers):
            d_in = c.d_model if i == 0 else h
            layers += gates * h * (d_in + 1) + gates * h * h  # W x + b, U h (no bias)
        return v * c.d_model + layers + (h * v + v)
    # lru
    d, n = c.d_model, c.d_state
    per_layer = 3 * n + 2 * n * d + 2 * d * n + d  # nu, theta, gamma; B, C (re, im); D
    per_layer += 2 * d + (d * 2 * d + 2 * d)  # LayerNorm; GLU linear
    return v * d + c.n_layers * per_layer + 2 * d + (d * v + v)


def _memory_rnn_count(c, w: int, n_actions: int) -> int:
    """Stack-RNN / Tape-RNN: per layer W_x x + b, U h, R read, value (with bias), actions."""
    n = c.hidden
    layers = 0
    for i in range(c.n_layers):
        d_in = c.d_model if i == 0 else n
        layers += (d_in * n + n) + n * n + w * n + (n * w + w) + (n * n_actions + n_actions)
    return c.vocab_size * c.d_model + layers + (n * c.vocab_size + c.vocab_size)


def _mamba_count(c) -> int:
    """Mamba: per block RMSNorm, in/out projections, conv, x/dt projections, A_log, D."""
    d, n, k = c.d_model, c.d_state, c.d_conv
    r = c.dt_rank if c.dt_rank is not None else -(-d // 16)
    e = c.expand * d
    per_layer = d + d * 2 * e + (k * e + e) + e * (r + 2 * n) + (r * e + e) + e * n + e + e * d
    return c.vocab_size * d + c.n_layers * per_layer + d + (d * c.vocab_size + c.vocab_size)


def _linear_attention_count(c) -> int:
    """Linear attention: per block q/k/v/out with biases, the MLP, two LayerNorms."""
    d, f = c.d_model, c.d_ff
    per_layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * (2 * d)
    return c.vocab_size * d + c.n_layers * per_layer + 2 * d + (d * c.vocab_size + c.vocab_size)


_FORMULAS = {
    "stack_rnn": lambda c: _memory_rnn_count(c, c.stack_width, 3),  # push, pop, no-op
    "tape_rnn": lambda c: _memory_rnn_count(c, c.tape_width, 4),  # write-stay, -left, -right, no-op
    "mamba": _mamba_count,
    "linear_attention": _linear_attention_count,
}
