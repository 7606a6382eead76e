"""The optimizer of a training config: global-norm clipping, then AdamW or SGD, on a schedule."""
from __future__ import annotations

import optax

from formal_lm.training.config import TrainConfig


def make_schedule(config: TrainConfig) -> optax.Schedule:
    """Linear warm-up from 0 over ``warmup_steps``, then constant / cosine / linear decay to 0."""
    n = max(config.steps - config.warmup_steps, 1)
    main = {"constant": lambda: optax.constant_schedule(config.lr),
            "cosine": lambda: optax.cosine_decay_schedule(config.lr, n),
            "linear": lambda: optax.linear_schedule(config.lr, 0.0, n)}[config.schedule]()
    if not config.warmup_steps:
        return main
    warm = optax.linear_schedule(0.0, config.lr, config.warmup_steps)
    return optax.join_schedules([warm, main], [config.warmup_steps])


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping (if grad_clip > 0) then AdamW, or SGD with momentum b1."""
    sched = make_schedule(config)
    parts = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip > 0 else []
    if config.optimizer == "adamw":
        parts.append(optax.adamw(sched, b1=config.b1, b2=config.b2,
                                 weight_decay=config.weight_decay))
    else:
        if config.weight_decay:
            parts.append(optax.add_decayed_weights(config.weight_decay))
        parts.append(optax.sgd(sched, momentum=config.b1 or None))
    return optax.chain(*parts)
