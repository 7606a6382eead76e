"""A small, self-contained training loop shared by the case studies.

The case studies need things ``formal_lm.training.train`` does not do: start from given
parameters (fine-tuning), train on token sequences that are not samples of one ``Language``
(in-context learning), and record a loss curve per step. This loop is deliberately plain:
one model, one jitted AdamW step, PAD-masked next-token NLL (nats per real target token).

Shape glossary:  B batch   T tokens   V vocab
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from formal_lm.models import make
from formal_lm.training.engine import masked_nll
from formal_lm.vocab import PAD_ID


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Optimiser settings of one training phase.

    Attributes:
        steps: optimizer steps.
        lr: peak learning rate (AdamW, linear warm-up then constant).
        warmup_steps: linear warm-up length.
        grad_clip: global-norm clipping (0 disables).
        weight_decay: AdamW weight decay.
        log_every: record the mean training loss every this many steps.
    """

    steps: int
    lr: float = 3e-3
    warmup_steps: int = 0
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    log_every: int = 10


def build_model(name: str, vocab_size: int, seed: int, config: dict) -> nnx.Module:
    """``formal_lm.models.make`` (models are built in eval mode; the case studies use no
    dropout)."""
    return make(name, vocab_size=vocab_size, seed=seed, **dict(config))


def _optimizer(cfg: FitConfig) -> optax.GradientTransformation:
    sched = optax.constant_schedule(cfg.lr)
    if cfg.warmup_steps:
        sched = optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), sched], [cfg.warmup_steps])
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.adamw(sched, weight_decay=cfg.weight_decay))
    return optax.chain(*parts)


_STEPS: dict = {}


def _step_fn(graphdef, cfg: FitConfig):
    """A jitted AdamW step for one graph definition and optimiser (cached)."""
    key = (graphdef, cfg.lr, cfg.warmup_steps, cfg.grad_clip, cfg.weight_decay)
    if key in _STEPS:
        return _STEPS[key]
    tx = _optimizer(cfg)

    def loss_fn(params, rest, ids):
        model = nnx.merge(graphdef, params, rest, copy=True)
        s, n = masked_nll(model(ids[:, :-1]), ids)
        return s / jnp.maximum(n, 1.0)

    @jax.jit
    def step(params, opt_state, rest, ids):
        loss, grads = jax.value_and_grad(loss_fn)(params, rest, ids)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    _STEPS[key] = (tx, step)
    return tx, step


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        model: the trained model (a new object).
        curve: [(step, mean training loss over the last log_every steps), ...].
        first_loss: the loss of the starting parameters on the first batch (before any update),
            so a caller can check where training started.
    """

    model: nnx.Module
    curve: list[tuple[int, float]]
    first_loss: float


def fit(model: nnx.Module, batches: Callable[[int], np.ndarray] | Iterator, cfg: FitConfig
        ) -> FitResult:
    """Trains ``model`` (a copy; the argument is not changed) on ``batches(step) -> ids [B, T]``.

    Example:
        >>> import numpy as np
        >>> m = build_model("lstm", 5, 0, dict(d_model=4, hidden=8))
        >>> r = fit(m, lambda t: np.array([[1, 3, 4, 2]] * 4), FitConfig(steps=3, log_every=1))
        >>> len(r.curve), r.curve[0][1] == r.first_loss
        (3, True)
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = jax.tree.map(jnp.array, params)  # a copy: the caller's model stays as it was
    tx, step = _step_fn(graphdef, cfg)
    opt_state = tx.init(params)
    curve, acc, n, first = [], 0.0, 0, float("nan")
    for t in range(cfg.steps):
        ids = batches(t) if callable(batches) else next(batches)
        params, opt_state, loss = step(params, opt_state, rest, jnp.asarray(ids, jnp.int32))
        acc, n = acc + loss, n + 1  # a device scalar: no host sync until it is logged
        if t == 0:
            first = float(loss)
        if (t + 1) % cfg.log_every == 0 or t + 1 == cfg.steps:
            curve.append((t + 1, float(acc) / n))
            acc, n = 0.0, 0
    return FitResult(nnx.merge(graphdef, params, rest), curve, first)


_LOGPROBS: dict = {}


def logits_fn(model: nnx.Module) -> Callable[[np.ndarray], np.ndarray]:
    """A jitted ``ids [B, T] -> log-probabilities [B, T, V]`` (float32 numpy).

    The jitted program is cached per graph definition, so models of one architecture share it.
    """
    graphdef, state = nnx.split(model)
    f = _LOGPROBS.get(graphdef)
    if f is None:
        @jax.jit
        def f(state, ids):
            out = nnx.merge(graphdef, state, copy=True)(ids)
            return jax.nn.log_softmax(out.astype(jnp.float32))

        _LOGPROBS[graphdef] = f
    def fn(ids):
        return np.asarray(f(state, jnp.asarray(ids, jnp.int32)))

    fn.module = model  # analysis.call_model reads module.config.max_len (no padding past it)
    return fn


def mean_nll(model: nnx.Module, ids: np.ndarray, batch: int = 128) -> float:
    """PAD-masked nats per real target token of ``model`` on ``ids [N, T]``."""
    lp_fn = logits_fn(model)
    s = n = 0.0
    for i in range(0, len(ids), batch):
        x = ids[i:i + batch]
        lp = lp_fn(x[:, :-1])
        tgt = x[:, 1:]
        m = tgt != PAD_ID
        s += float(-np.take_along_axis(lp, tgt[..., None], -1)[..., 0][m].sum())
        n += float(m.sum())
    return s / max(n, 1.0)
