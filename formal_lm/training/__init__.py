"""Training many small language models on exact formal languages, K seeds in one program.

Stable API: :class:`TrainConfig` (+ :class:`DataConfig`, :class:`ObjectiveConfig`),
:func:`load_config`, :func:`train` (the loop on a language's exact samples), :func:`fit` (the
loop on any :class:`TrainingData`), :class:`TrainResult`, :class:`Callback`,
:func:`load_models`. ``formal_lm.training.distributed`` runs one config as several processes.
See README.md in this folder for the design and cluster launching.
"""
from formal_lm.training.config import DataConfig, ObjectiveConfig, TrainConfig, load_config
from formal_lm.training.data import LanguageData, TrainingData, Validation
from formal_lm.training.loop import Callback, TrainResult, fit
from formal_lm.training.saved import load_checkpoint, load_models, stacked_params
from formal_lm.training.train import train

__all__ = ["Callback", "DataConfig", "LanguageData", "ObjectiveConfig", "TrainConfig",
           "TrainResult", "TrainingData", "Validation", "fit", "load_checkpoint", "load_config",
           "load_models", "stacked_params", "train"]
