"""Rule extrapolation on a^n b^n as a property test (Reizinger et al., ICML 2024).

A tiny Transformer is trained on anbn-short (a^n b^n, n <= 16); training is cached on disk by
config (first run ~30 s on a CPU, later runs load the checkpoint). The claim "completions of
prompts that break R2 (a before b) still satisfy R1 (#a = #b)" is expected to FAIL: hypothesis
searches the out-of-distribution prompts and the AssertionError shows the shortest one it found,
the model's completion and the rule that broke, e.g.::

    anbn-short: the model's greedy completion breaks R1 (#a = #b)
      prompt:     'b' (1 symbols, the shortest failing prompt found)
      completion: ''
      full:       'b'

Run with ``pytest examples/ -s`` to see the counterexample printed. A hand-built "bigram" model,
which cannot count, fails the same way (second test).
"""
from __future__ import annotations

import numpy as np
import pytest

import formal_lm as fl
from formal_lm.testing import assert_completions_keep, ood_prompts, trained_model

CONFIG = {
    "language": "anbn-short",
    "steps": 300,
    "seeds": [0],
    "batch_size": 32,
    "eval_every": 100,
    "model": {"name": "transformer", "d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 1,
              "max_len": 64},
    "optimizer": {"name": "adamw", "lr": 3e-3},
    "data": {"max_length": 40, "eval_size": 64},
}


def bigram_model_fn(lang):
    """Next token from the last token only, with a^n b^n bigram statistics: after BOS 'a', after
    'a' mostly 'a', after 'b' mostly 'b' then EOS. It cannot count, so it breaks R1 off
    distribution."""
    V = lang.vocab.size
    a, b = lang.vocab.id("a"), lang.vocab.id("b")
    table = np.full((V, V), -20.0)
    table[fl.BOS_ID, a] = 0.0
    table[a, a], table[a, b] = 0.0, -1.0
    table[b, b], table[b, fl.EOS_ID] = -1.0, 0.0

    def fn(ids):
        return table[np.asarray(ids)]  # [B, T, V]
    return fn


@pytest.fixture(scope="module")
def model():
    return fl.load("anbn-short"), trained_model(CONFIG)


def test_rule_extrapolation_of_r1_fails(model):
    lang, model_fn = model
    prompts = ood_prompts(lang, breaks=("R2",), keeps=("R1",), max_size=12)
    with pytest.raises(AssertionError) as info:
        assert_completions_keep(model_fn, lang, "R1", prompts=prompts, max_new_tokens=40,
                                max_examples=100)
    print(info.value)  # the shrunk counterexample
    assert "breaks" in str(info.value) and "prompt:" in str(info.value)


def test_bigram_model_fails_too():
    lang = fl.load("anbn-short")
    with pytest.raises(AssertionError, match="prompt:") as info:
        assert_completions_keep(bigram_model_fn(lang), lang, "R1",
                                prompts=ood_prompts(lang, max_size=12), max_new_tokens=40)
    print(info.value)
