"""Analyzers of how a model trained on a formal language generalizes.

Every analyzer takes a *model function* ``model_fn(ids [B, T] int) -> logits [B, T, V]`` (JAX or
NumPy) and a ``Language``, and returns a frozen dataclass. Metrics come from whatever single
checkpoint the model function wraps; the experiment runner selects it (lowest validation loss).

- ``saturation``: exact per-token KL(true || model) and cross-entropy vs the loss floor.
- ``complete``: batched greedy/sampled completion with finish flags.
- ``rule_extrapolation``: completions of OOD prompts judged rule by rule, with the "emit EOS
  immediately" and n-gram baselines.
- ``next_symbol_sets``: Bhattamishra et al.'s next-symbol-set accuracy.
- ``length_generalization``: KL and set accuracy per length (and nesting-depth) bin.
- ``non_identifiability``: per-group statistics and tests over seeds.
"""
from formal_lm.analysis._common import (
    JaxModel,
    ModelFn,  # noqa: F401  (the model-function type, for annotations)
    bootstrap_ci,
    call_model,
    constant_model_fn,
    exact_model_fn,
    log_softmax,
    target_mask,
)
from formal_lm.analysis.completion import Completions, complete
from formal_lm.analysis.length import BinResult, LengthGeneralizationResult, length_generalization
from formal_lm.analysis.next_symbol import NextSymbolResult, SetAccuracy, next_symbol_sets
from formal_lm.analysis.ngram import NGramModel
from formal_lm.analysis.rule_extrapolation import (
    ClassResult,
    ExtrapolationScores,
    RuleExtrapolationResult,
    eos_model_fn,
    label_prompts,
    prompt_set,
    rule_extrapolation,
    score_completions,
)
from formal_lm.analysis.saturation import SaturationResult, saturation, token_kl
from formal_lm.analysis.stats import (
    MetricSummary,
    MetricTest,
    NonIdentifiabilityResult,
    PairComparison,
    non_identifiability,
    permutation_test,
)

__all__ = [
    "BinResult", "ClassResult", "Completions", "ExtrapolationScores", "JaxModel",
    "LengthGeneralizationResult", "MetricSummary", "MetricTest", "NGramModel",
    "NextSymbolResult", "NonIdentifiabilityResult", "PairComparison", "RuleExtrapolationResult",
    "SaturationResult", "SetAccuracy", "bootstrap_ci", "call_model", "complete",
    "constant_model_fn", "eos_model_fn", "exact_model_fn", "label_prompts", "length_generalization",
    "log_softmax", "next_symbol_sets", "non_identifiability", "permutation_test", "prompt_set",
    "rule_extrapolation", "saturation", "score_completions", "target_mask", "token_kl",
]
