"""Property-based testing for code and models that handle formal languages.

Strategies (hypothesis style: keyword-only sizes, arguments checked when first drawn from,
examples that shrink toward short strings):

- over a language: :func:`strings`, :func:`prefixes`, :func:`non_strings`, :func:`ood_prompts`;
- of languages: :func:`pfsas`, :func:`counter_languages`, :func:`pcfgs`.
- of compositional splits: :func:`held_out_counts`, :func:`count_splits`,
  :func:`production_splits`, :func:`twin_splits`.

Assertions over a model function ``ids [B, T] -> logits [B, T, V]`` that search for, shrink and
report a counterexample: :func:`assert_completions_keep`, :func:`assert_next_token_sets`,
:func:`assert_close_to_language` (plus :func:`greedy_complete`, the decoder they use).

Models: :func:`trained_model` trains a tiny model once per config and caches it on disk; the
pytest plugin ``formal_lm.testing.pytest_plugin`` offers it as the ``trained_model_factory``
fixture. See docs/testing.md.

Example:
    >>> import formal_lm as fl
    >>> from hypothesis import given
    >>> lang = fl.load("anbn")
    >>> @given(strings(lang, max_size=10))
    ... def test_accepts(s):
    ...     assert lang.accepts(s)
    >>> test_accepts()
"""
from formal_lm.testing._assertions import (assert_close_to_language, assert_completions_keep,
                                           assert_next_token_sets, greedy_complete)
from formal_lm.testing._languages import counter_languages, pcfgs, pfsas
from formal_lm.testing._splits import (count_splits, held_out_counts, production_splits,
                                      twin_splits)
from formal_lm.testing._strategies import non_strings, ood_prompts, prefixes, strings
from formal_lm.testing._training import cache_key, default_cache_dir, trained_model
from formal_lm.testing._validation import InvalidStrategyArgument

__all__ = [
    "InvalidStrategyArgument",
    "assert_close_to_language",
    "assert_completions_keep",
    "assert_next_token_sets",
    "cache_key",
    "count_splits",
    "counter_languages",
    "default_cache_dir",
    "greedy_complete",
    "held_out_counts",
    "non_strings",
    "ood_prompts",
    "pcfgs",
    "pfsas",
    "prefixes",
    "production_splits",
    "strings",
    "trained_model",
    "twin_splits",
]
