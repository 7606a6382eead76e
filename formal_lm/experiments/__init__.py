"""Experiment runner: train a grid of models on formal languages over seeds, analyse one selected
checkpoint per seed, and write a report with tables, plots, results.json and results.csv.

Example:
    >>> from formal_lm.experiments import run_experiment  # doctest: +SKIP
    >>> results = run_experiment("experiments/anbn-rule-extrapolation.toml", "out/anbn")  # doctest: +SKIP
"""
from formal_lm.experiments.report import write_report
from formal_lm.experiments.runner import analyze_seed, baselines, run_experiment
from formal_lm.experiments.spec import Experiment, experiment_from_dict, load_experiment

__all__ = ["Experiment", "analyze_seed", "baselines", "experiment_from_dict", "load_experiment",
           "run_experiment", "write_report"]
