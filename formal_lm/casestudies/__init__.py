"""Case studies 2 and 3 of Reizinger et al. (ICML 2024): in-context learning of random PDFAs and
fine-tuning transfer. (Case study 1, rule extrapolation, lives in ``formal_lm.experiments``.)

Stability: experimental. The entry points ``run_icl_experiment`` / ``run_finetune_experiment``
and the TOML layouts of experiments/icl-pdfa.toml and experiments/finetune-transfer.toml are
what other code should rely on.

Example:
    >>> fam = PDFAFamily(n_states=(2, 3), alphabet_size=2, strings_per_sequence=2, max_length=24)
    >>> batch = icl_batch(fam, 2, seed=0)
    >>> batch.ids.shape, batch.oracle.shape
    ((2, 24), (2, 23, 6))
"""
from formal_lm.casestudies._fit import FitConfig, FitResult, build_model, fit, mean_nll
from formal_lm.casestudies.experiments import (
    experiment_kind,
    load_finetune_spec,
    load_icl_spec,
    run_finetune_experiment,
    run_icl_experiment,
)
from formal_lm.casestudies.finetune import (
    ANBNAN_SHORT,
    epoch_batches,
    exact_kl,
    language_batch,
    rescale,
)
from formal_lm.casestudies.icl import (
    DELIMITER,
    ICLBatch,
    ICLScores,
    PDFAFamily,
    analyze_icl,
    baseline_scores,
    icl_batch,
    icl_training_pool,
    ngram_in_context,
    oracle_table,
    score_predictor,
    sequence_tokens,
)

__all__ = [
    "ANBNAN_SHORT", "DELIMITER", "FitConfig", "FitResult", "ICLBatch", "ICLScores", "PDFAFamily",
    "analyze_icl", "baseline_scores", "build_model", "epoch_batches", "exact_kl",
    "experiment_kind", "fit", "icl_batch", "icl_training_pool", "language_batch",
    "load_finetune_spec", "load_icl_spec", "mean_nll", "ngram_in_context", "oracle_table",
    "rescale", "run_finetune_experiment", "run_icl_experiment", "score_predictor",
    "sequence_tokens",
]
