"""Training many small language models on exact formal languages.

Stable API: :class:`TrainConfig` (+ :class:`DataConfig`, :class:`ObjectiveConfig`),
:func:`load_config`, :func:`train`, :class:`TrainResult`, :func:`load_checkpoint`,
:func:`load_models`, :func:`model_fn`. ``formal_lm.training.distributed`` runs one config as
several processes. See README.md in this folder for the design and cluster launching.
"""
from formal_lm.training.config import DataConfig, ObjectiveConfig, TrainConfig, load_config
from formal_lm.training.engine import (TrainResult, load_checkpoint, load_models, model_fn,
                                       train)

__all__ = ["DataConfig", "ObjectiveConfig", "TrainConfig", "TrainResult", "load_checkpoint",
           "load_config", "load_models", "model_fn", "train"]
