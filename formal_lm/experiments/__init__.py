"""Experiments: a file of any kind (a grid of languages x models x objectives, in-context
learning, fine-tuning) -> training runs -> one checkpoint per seed -> analyses -> typed records
-> statistics -> report.md, results.csv, results.json and plots.

Example:
    >>> from formal_lm.experiments import run_experiment  # doctest: +SKIP
    >>> results = run_experiment("experiments/anbn-rule-extrapolation.toml", "out/anbn")  # doctest: +SKIP
"""
from formal_lm.experiments.loader import experiment_from_dict, load_experiment
from formal_lm.experiments.records import SeedRecord
from formal_lm.experiments.run import run_experiment
from formal_lm.experiments.spec import Experiment

__all__ = ["Experiment", "SeedRecord", "experiment_from_dict", "load_experiment",
           "run_experiment"]
