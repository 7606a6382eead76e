"""Tests of formal_lm.testing: strategies keep their promises, arguments are checked at draw
time, assertions pass on exact models and fail (with the shortest counterexample) on broken ones.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

import formal_lm as fl
import formal_lm.testing as flt
from formal_lm.analysis import constant_model_fn, eos_model_fn, exact_model_fn
from formal_lm.language import enumerate_strings
from formal_lm.seeding import Stream, rng
from formal_lm.vocab import BOS_ID, EOS_ID, PAD_ID

FAST = settings(max_examples=25, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
LANGS = ["anbn-short", "anbncn", "baN", "bbaN", "dyck1", "dyck2", "cs-dyck2", "parity",
         "tomita3", "tomita5"] + (["dyck1-pcfg"] if "dyck1-pcfg" in fl.shipped() else [])


@pytest.fixture(scope="module")
def langs():
    return {name: fl.load(name) for name in LANGS}


# ----------------------------------------------------------------------------- strategies
@pytest.mark.parametrize("name", LANGS)
def test_strings_are_in_the_language(name, langs):
    lang = langs[name]

    @FAST
    @given(flt.strings(lang, max_size=12))
    def check(s):
        assert isinstance(s, tuple) and len(s) <= 12
        assert lang.accepts(s), s

    check()


@pytest.mark.parametrize("name", LANGS)
def test_prefixes_are_viable(name, langs):
    lang = langs[name]

    @FAST
    @given(flt.prefixes(lang, min_size=1, max_size=10))
    def check(p):
        assert 1 <= len(p) <= 10
        assert lang.is_viable(p), p

    check()


@pytest.mark.parametrize("name", LANGS)
def test_non_strings_are_rejected(name, langs):
    lang = langs[name]

    @FAST
    @given(flt.non_strings(lang, max_size=12))
    def check(s):
        assert len(s) <= 12 and set(s) <= set(lang.alphabet)
        assert not lang.accepts(s), s

    check()


def test_non_strings_include_near_misses():
    lang = fl.load("anbn-short")
    near = {("a", "a", "b"), ("a", "b", "b"), ("b", "a"), ("a",), ("b",)}
    seen = set()

    @settings(max_examples=300, deadline=None, database=None)
    @given(flt.non_strings(lang, max_size=30))
    def collect(s):
        seen.add(s)

    collect()
    assert seen & near
    assert any(len(s) > 12 and s.count("a") == s.count("b") + 1 for s in seen) or \
        any(len(s) > 12 and lang.accepts(s[:-1]) for s in seen)


@pytest.mark.parametrize("name,breaks,keeps", [
    ("anbn-short", ("R2",), ("R1",)),
    ("anbncn", ("R2",), ("R1",)),
    ("dyck2", ("R3",), ("R1", "R2")),
    ("dyck2", ("R1",), ("R3",)),
    ("cs-dyck2", ("R2",), ("R1",)),
])
@pytest.mark.parametrize("max_size", [6, 20])
def test_ood_prompts_break_and_keep_what_they_say(name, breaks, keeps, max_size, langs):
    lang = langs[name]
    rules = {r.name: r for r in lang.rules}

    @FAST
    @given(flt.ood_prompts(lang, breaks=breaks, keeps=keeps, max_size=max_size))
    def check(p):
        assert len(p) <= max_size
        for b in breaks:
            assert not rules[b].can_complete(p), (b, p)
        for k in keeps:
            assert rules[k].can_complete(p), (k, p)
        assert not lang.is_viable(p)  # breaking a rule of the language leaves it

    check()


def test_ood_prompts_can_satisfy_kept_rules():
    """The completion that balances a^n b^n counts exists for every prompt drawn."""
    lang = fl.load("anbn-short")
    r1 = lang.rules[0]

    @FAST
    @given(flt.ood_prompts(lang, max_size=15))
    def check(p):
        na, nb = p.count("a"), p.count("b")
        completion = ("a",) * (nb - na) + ("b",) * (na - nb)
        assert r1.holds(p + completion)

    check()


def test_strings_shrink_to_the_shortest_and_first():
    lang = fl.load("anbn")
    assert find(flt.strings(lang), lambda s: len(s) > 4) == tuple("aaabbb")
    assert find(flt.prefixes(lang), lambda p: "b" in p) == ("a", "b")
    dyck = fl.load("dyck2")
    o, c = dyck.pairs[0]  # symbols shrink toward alphabet order
    assert find(flt.strings(dyck), lambda s: len(s) >= 4) == (o, o, c, c)
    assert find(flt.ood_prompts(lang, max_size=20), lambda p: len(p) >= 3) == tuple("aba")


# ----------------------------------------------------------------------------- validation
def _draw(strategy):
    return find(strategy, lambda x: True)


@pytest.mark.parametrize("make, pieces", [
    (lambda L: flt.strings(L, min_size=5, max_size=3), ["min_size=5 > max_size=3"]),
    (lambda L: flt.strings(L, min_size=3, max_size=3), ["no string", "min_size=3", "max_size=3"]),
    (lambda L: flt.strings(L, min_size=-1), ["min_size=-1"]),
    (lambda L: flt.prefixes(L, max_size="x"), ["max_size='x'"]),
    (lambda L: flt.non_strings(L, max_size=-2), ["max_size=-2"]),
    (lambda L: flt.ood_prompts(L, breaks=("R9",), keeps=("R1",)), ["rule='R9'", "['R1', 'R2']"]),
    (lambda L: flt.ood_prompts(L, breaks=("R2",), keeps=("R2", "R7")),
     ["rule='R2' is in both", "rule='R7'"]),
    (lambda L: flt.ood_prompts(L, breaks="R2", keeps=()), ["breaks='R2'", "('R2',)"]),
    (lambda L: flt.ood_prompts(L, breaks=("R1",), keeps=(), max_size=6), ["no prompt", "R1"]),
])
def test_bad_arguments_raise_at_draw_time(make, pieces):
    lang = fl.load("anbn-short")
    strategy = make(lang)  # building the strategy does not raise
    for error in (fl.FormalLMError, InvalidArgument):
        with pytest.raises(error) as info:
            _draw(strategy)
        for piece in pieces:
            assert piece in str(info.value)


def test_non_strings_of_a_range_with_none():
    lang = fl.load("parity")  # the empty string has an even number of 1s
    with pytest.raises(flt.InvalidStrategyArgument, match="no non-string"):
        _draw(flt.non_strings(lang, max_size=0))


def test_language_generator_arguments_are_checked():
    with pytest.raises(InvalidArgument, match="min_states=3 > max_states=2"):
        _draw(flt.pfsas(min_states=3, max_states=2))
    with pytest.raises(InvalidArgument, match="symbol=''"):
        _draw(flt.counter_languages(alphabet=("a", "")))


# ----------------------------------------------------------------------------- languages
def _check_valid(lang, max_length=8):
    total = sum(lang.prob(s) for s in enumerate_strings(lang.alphabet, max_length))
    stats = lang.length_stats(max_length)
    assert total <= 1 + 1e-9
    assert math.isclose(total, 1 - stats.tail, abs_tol=1e-9)
    assert math.isclose(total, float(stats.prob.sum()), abs_tol=1e-9)
    s = lang.sample(5, seed=0)
    assert all(lang.accepts(x) for x in s)


@FAST
@given(flt.pfsas(min_states=1, max_states=4))
def test_generated_pfsas_are_valid(lang):
    _check_valid(lang)
    assert lang.deterministic


@FAST
@given(flt.pfsas(alphabet=("x", "y", "z"), deterministic=False, max_states=3))
def test_generated_nondeterministic_pfsas_are_valid(lang):
    _check_valid(lang, max_length=5)


@FAST
@given(flt.counter_languages())
def test_generated_counter_languages_are_valid(lang):
    _check_valid(lang, max_length=7)


def test_generated_pcfgs_are_valid():

    @FAST
    @given(flt.pcfgs())
    def check(lang):
        _check_valid(lang, max_length=6)

    check()


@FAST
@given(st.data())
def test_strategies_work_on_generated_languages(data):
    lang = data.draw(flt.pfsas(max_states=3) | flt.counter_languages())
    s = data.draw(flt.strings(lang))
    assert lang.accepts(s)
    p = data.draw(flt.prefixes(lang, max_size=6))
    assert lang.is_viable(p)


# ----------------------------------------------------------------------------- assertions
def leading_b_model(k: int):
    """Keeps #a = #b (emits the rarer symbol until the counts meet, then EOS), except that a
    sequence starting with k b's ends at once: only prompts of >= k symbols can break R1."""
    def fn(ids):
        ids = np.asarray(ids)
        B, T = ids.shape
        out = np.full((B, T, 5), -10.0)
        a, b = 3, 4
        for i in range(B):
            for t in range(T):
                seq = ids[i, 1: t + 1]
                na, nb = int((seq == a).sum()), int((seq == b).sum())
                if len(seq) >= k and (seq[:k] == b).all():
                    tok = EOS_ID
                else:
                    tok = b if na > nb else a if nb > na else EOS_ID
                out[i, t, tok] = 10.0
        return out
    return fn


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("max_size", [8, 16])
def test_completion_failures_shrink_to_k_symbols(k, max_size):
    lang = fl.load("anbn-short")
    prompts = flt.ood_prompts(lang, breaks=("R2",), keeps=("R1",), max_size=max_size)
    with pytest.raises(AssertionError) as info:
        flt.assert_completions_keep(leading_b_model(k), lang, "R1", prompts=prompts,
                                    max_new_tokens=20, max_examples=200)
    msg = str(info.value)
    assert f"prompt:     {'b' * k!r} ({k} symbols" in msg, msg
    assert "R1 (#a = #b)" in msg


def test_completions_keep_passes_on_the_exact_language():
    lang = fl.load("anbn-short")
    flt.assert_completions_keep(exact_model_fn(lang), lang, ("R1", "R2"),
                                prompts=flt.prefixes(lang, min_size=1, max_size=8),
                                max_new_tokens=40, max_examples=15)
    dyck = fl.load("dyck1")
    flt.assert_completions_keep(exact_model_fn(dyck), dyck, "R1",
                                prompts=flt.prefixes(dyck, max_size=6), max_new_tokens=80,
                                max_examples=10)


def test_completions_keep_fails_on_a_model_that_stops_at_once():
    lang = fl.load("anbn-short")
    with pytest.raises(AssertionError, match=r"prompt:     'b' \(1 symbols"):
        flt.assert_completions_keep(eos_model_fn(lang), lang, "R1",
                                    prompts=flt.ood_prompts(lang), max_examples=50)
    never_ends = constant_model_fn(lang.vocab.size, 3)  # always 'a'
    with pytest.raises(AssertionError, match="no EOS"):
        flt.assert_completions_keep(never_ends, lang, "R1", max_new_tokens=5, max_examples=20)


def position_model(lang, k: int):
    """The exact language, but all mass on PAD after prefixes of >= k symbols."""
    exact = exact_model_fn(lang)

    def fn(ids):
        out = np.array(exact(ids))  # out[:, t] follows the prefix of t symbols
        out[:, k:] = 0.0
        out[:, k:, PAD_ID] = 50.0
        return out
    return fn


@pytest.mark.parametrize("k", [1, 3, 6])
def test_next_token_set_and_kl_failures_shrink_to_k_symbols(k):
    lang = fl.load("parity")  # a string of every length: the shortest failing one is 0^k
    broken = position_model(lang, k)
    with pytest.raises(AssertionError) as info:
        flt.assert_next_token_sets(broken, lang, threshold=0.01, max_examples=100)
    assert f"string: {'0' * k!r} ({k} symbols" in str(info.value), str(info.value)
    with pytest.raises(AssertionError) as info:
        flt.assert_close_to_language(broken, lang, max_kl=0.05, max_examples=100)
    assert f"string: {'0' * k!r} ({k} symbols" in str(info.value), str(info.value)
    assert "KL = " in str(info.value)


@pytest.mark.parametrize("name", ["anbn-short", "dyck2", "parity", "tomita3"])
def test_distribution_assertions_pass_on_the_exact_language(name, langs):
    lang = langs[name]
    model = exact_model_fn(lang, floor=1e-12)
    flt.assert_next_token_sets(model, lang, threshold=1e-9, max_examples=20)
    flt.assert_close_to_language(model, lang, max_kl=1e-6, max_examples=20)


def test_distribution_assertions_fail_on_a_wrong_model():
    lang = fl.load("anbn-short")
    uniform = constant_model_fn(lang.vocab.size, EOS_ID, margin=0.0)
    with pytest.raises(AssertionError, match=r"string: 'ab' \(2 symbols") as info:
        flt.assert_next_token_sets(uniform, lang, threshold=0.01, max_examples=30)
    assert "extra" in str(info.value)
    with pytest.raises(AssertionError, match=r"prefix: ''"):
        flt.assert_close_to_language(uniform, lang, max_kl=0.1, max_examples=30)


def test_assertion_arguments_are_checked():
    lang = fl.load("anbn-short")
    model = exact_model_fn(lang)
    with pytest.raises(fl.FormalLMError, match="rule='R9'"):
        flt.assert_completions_keep(model, lang, "R9")
    with pytest.raises(fl.FormalLMError, match="decoding='beam'") as info:
        flt.assert_completions_keep(model, lang, "R1", decoding="beam", max_new_tokens=0)
    assert "max_new_tokens=0" in str(info.value)  # every problem at once
    with pytest.raises(fl.FormalLMError, match="max_kl=-1"):
        flt.assert_close_to_language(model, lang, max_kl=-1)
    with pytest.raises(fl.FormalLMError, match="threshold=2"):
        flt.assert_next_token_sets(model, lang, threshold=2)


def test_assertions_reject_logits_without_a_vocabulary_axis():
    lang = fl.load("anbn-short")

    def flat(ids):  # [B, T]: the vocabulary axis is missing
        return np.zeros(np.shape(ids))

    for run in (lambda: flt.assert_next_token_sets(flat, lang, max_examples=5),
                lambda: flt.assert_close_to_language(flat, lang, max_examples=5)):
        with pytest.raises(fl.FormalLMError, match=r"logits of shape \(1, \d+\)"):
            run()


def reference_decode(model_fn, lang, prompt, max_new_tokens, *, u=None):
    """One prompt decoded by calling the model on the exact, unpadded sequence at each step:
    the argmax over EOS and the symbols, or, given uniforms ``u``, the inverse CDF at u[j]."""
    ids = [BOS_ID] + [lang.vocab.id(x) for x in prompt]
    new = []
    for j in range(max_new_tokens):
        logits = np.asarray(model_fn(np.array([ids], np.int32)), np.float64)[0, -1]
        logits[[PAD_ID, BOS_ID]] = -np.inf
        if u is None:
            tok = int(np.argmax(logits))
        else:
            p = np.exp(logits - logits.max())
            tok = int(np.searchsorted(np.cumsum(p / p.sum()), u[j], side="right"))
        if tok == EOS_ID:
            return tuple(new), True
        new.append(lang.vocab.tokens[tok])
        ids.append(tok)
    return tuple(new), False


def test_greedy_decoder_matches_an_unpadded_reference():
    from formal_lm.analysis import complete
    lang = fl.load("anbn-short")
    model = leading_b_model(3)
    prompts = ["a", "aab", "b", "bbb", "ba"]
    want = [(("b",), True), (("b",), True), (("a",), True), ((), True), ((), True)]
    assert [reference_decode(model, lang, p, 10) for p in prompts] == want
    assert [flt.greedy_complete(model, lang, p, max_new_tokens=10) for p in prompts] == want
    theirs = complete(model, lang, prompts, max_new_tokens=10, jit=False)
    assert list(zip(theirs.completions, theirs.finished)) == want
    # Sampled: the j-th new token is the inverse CDF at rng(seed, Stream.DECODE)[0, j].
    exact = exact_model_fn(lang)
    for seed in range(4):
        u = rng(seed, Stream.DECODE).random((1, 30))[0]
        for p in ["", "a", "aab"]:
            assert flt.greedy_complete(exact, lang, p, max_new_tokens=30, decoding="sample",
                                       seed=seed) == reference_decode(exact, lang, p, 30, u=u)


def test_greedy_decoder_never_emits_pad_or_bos():
    lang = fl.load("anbn-short")

    def likes_pad(ids):
        out = np.zeros(np.shape(ids) + (lang.vocab.size,))
        out[..., PAD_ID] = out[..., BOS_ID] = 100.0
        out[..., EOS_ID] = 1.0
        return out

    assert flt.greedy_complete(likes_pad, lang, "ab", max_new_tokens=3) == ((), True)


# ----------------------------------------------------------------------------- trained models
def test_trained_model_is_cached(tmp_path, monkeypatch):
    config = {"language": "anbn-short", "steps": 2, "eval_every": 1, "batch_size": 4,
              "model": {"name": "transformer", "d_model": 8, "n_heads": 2, "d_ff": 8,
                        "n_layers": 1, "max_len": 40},
              "data": {"max_length": 36, "eval_size": 4}}
    fn = flt.trained_model(config, cache_dir=tmp_path)
    ids = fl.load("anbn-short").vocab.batch(["ab", "aabb"])
    logits = np.asarray(fn(ids))
    assert logits.shape == ids.shape + (5,)
    entries = list(tmp_path.iterdir())
    assert [e.name for e in entries] == [flt.cache_key(config)]
    # A predictor that decodes incrementally, with the position table's size as its max_len.
    from formal_lm.analysis import IncrementalPredictor, as_predictor
    assert isinstance(fn, IncrementalPredictor) and fn.max_len == 40
    with pytest.raises(fl.FormalLMError, match="seed=5 is not in the run"):
        as_predictor(entries[0], seed=5)
    with pytest.raises(fl.FormalLMError, match="needs a seed"):
        as_predictor(entries[0])

    import formal_lm.training as training

    def no_training(*a, **k):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(training, "train", no_training)
    again = flt.trained_model(config, cache_dir=tmp_path)
    np.testing.assert_allclose(np.asarray(again(ids)), logits, rtol=1e-6)
    assert flt.cache_key(config) != flt.cache_key({**config, "steps": 3})
    with pytest.raises(fl.FormalLMError, match="seed=5"):
        flt.trained_model(config, cache_dir=tmp_path, seed=5)


# ----------------------------------------------------------------------------- surface
def test_every_export_has_a_docstring():
    for name in flt.__all__:
        obj = getattr(flt, name)
        assert obj.__doc__ and obj.__doc__.strip(), name
