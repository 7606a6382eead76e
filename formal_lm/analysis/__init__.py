"""Analyzers of how a model trained on a formal language generalizes.

Every analyzer takes a *predictor* (``ids [B, T] -> logits [B, T, V]``: a flax model, a run
directory with a seed, or any callable; see :func:`as_predictor`) and a ``Language``, and
returns a frozen dataclass whose ``measures()`` are typed numbers with their unit and
direction. Metrics come from whatever single checkpoint the predictor wraps; the experiment
runner selects it (lowest validation loss).

- ``saturation``: exact per-token KL(true || model) and cross-entropy vs the loss floor.
- ``complete``: batched greedy/sampled completion with finish flags (the one decoder).
- ``rule_extrapolation``: completions of OOD prompts judged rule by rule, with the "emit EOS
  immediately" and n-gram baselines.
- ``next_symbol_sets``: Bhattamishra et al.'s next-symbol-set accuracy.
- ``length_generalization``: KL and set accuracy per length (and nesting-depth) bin.
- ``probe``: linear / MLP probes for a language's exact latent variables, per layer, in and
  off distribution, with control tasks; ``interchange``: interchange interventions scored
  against the exact counterfactual next-token distribution (see docs/probing.md).
- ``compare_groups``: statistics over seeds: equivalence at a margin, differences with power.
- ``systematicity``, ``productivity``, ``substitutivity``, ``localism``,
  ``overgeneralisation``: Hupkes et al.'s compositionality tests against the exact language
  (see docs/compositionality.md); ``summarize_seeds``: their measures over seeds.
"""
from formal_lm.analysis.activations import (FunctionActivations, ModelActivations,
                                            as_activations, collect_states)
from formal_lm.analysis.interventions import InterventionLayer, InterventionResult, interchange
from formal_lm.analysis.probing import LayerProbe, ProbeFit, ProbeResult, probe
from formal_lm.analysis.baselines import NGramModel, constant_model_fn, eos_model_fn, exact_model_fn
from formal_lm.analysis.decoding import Completions, complete
from formal_lm.analysis.length import BinResult, LengthGeneralizationResult, length_generalization
from formal_lm.analysis.measures import Measure
from formal_lm.analysis.metrics import log_softmax, position_scores, target_mask, token_kl
from formal_lm.analysis.next_symbol import NextSymbolResult, SetAccuracy, next_symbol_sets
from formal_lm.analysis.predictor import (FunctionPredictor, IncrementalPredictor, JaxModel,
                                          Predictor, as_predictor, call_model)
from formal_lm.analysis.rule_extrapolation import (
    ClassResult,
    ExtrapolationScores,
    RuleExtrapolationResult,
    label_prompts,
    prompt_set,
    rule_extrapolation,
    score_completions,
)
from formal_lm.analysis.saturation import SaturationResult, saturation
from formal_lm.analysis.comparison import GroupComparison, compare_groups
from formal_lm.analysis.compositional import (ProductivityResult, SystematicityResult,
                                              productivity, summarize_seeds, systematicity)
from formal_lm.analysis.substitution import (LocalismResult, OvergeneralisationResult, PairScores,
                                             SubstitutivityResult, constituents, localism,
                                             overgeneralisation, substitutivity, twin_pairs)
from formal_lm.analysis.equivalence import EquivalenceTest, default_margin, equivalence_test
from formal_lm.analysis.stats import (
    DifferenceTest,
    Summary,
    difference_test,
    min_attainable_p,
    paired_sign_flip_test,
    permutation_test,
    summarize,
)

__all__ = [
    "LocalismResult", "OvergeneralisationResult", "PairScores", "ProductivityResult",
    "SubstitutivityResult", "SystematicityResult", "constituents", "localism",
    "overgeneralisation", "productivity", "substitutivity", "summarize_seeds", "systematicity",
    "twin_pairs",
    "FunctionActivations", "InterventionLayer", "InterventionResult", "LayerProbe",
    "ModelActivations", "ProbeFit", "ProbeResult", "as_activations", "collect_states",
    "interchange", "probe",
    "BinResult", "ClassResult", "Completions", "DifferenceTest", "EquivalenceTest",
    "ExtrapolationScores", "FunctionPredictor", "GroupComparison", "IncrementalPredictor",
    "JaxModel", "LengthGeneralizationResult", "Measure", "NGramModel", "NextSymbolResult",
    "Predictor", "RuleExtrapolationResult", "SaturationResult", "SetAccuracy", "Summary",
    "as_predictor", "call_model", "compare_groups", "complete", "constant_model_fn",
    "default_margin", "difference_test", "eos_model_fn", "equivalence_test", "exact_model_fn",
    "label_prompts", "length_generalization", "log_softmax", "min_attainable_p",
    "next_symbol_sets", "paired_sign_flip_test", "permutation_test", "position_scores",
    "prompt_set", "rule_extrapolation", "saturation", "score_completions", "summarize",
    "target_mask", "token_kl",
]
