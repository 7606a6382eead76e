"""The compositionality analyzers (``analysis.compositional``, ``analysis.substitution``) on
hand-built numpy predictors with known answers: a model that is the full language (it computes
the rule), one that is the training language (it memorised the seen combinations), mixtures of
the two, and a model whose behaviour depends on the parity of the position.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings

import formal_lm as fl
import formal_lm.testing as ft
from formal_lm.analysis import (FunctionPredictor, constituents, localism, overgeneralisation,
                                productivity, substitutivity, summarize, summarize_seeds,
                                systematicity)
from formal_lm.pcfg import PCFG
from formal_lm.seeding import Stream, derive

EOS_ID = fl.EOS_ID


def rows_of(lang, ids):
    """The exact rows, with all-zero rows (impossible prefixes) put on EOS."""
    p = lang.next_token_probs(np.asarray(ids))
    empty = p.sum(-1) == 0
    p[empty, EOS_ID] = 1.0
    return p


def table_predictor(*langs, weights=(1.0,)):
    """A numpy predictor: logits = ln of a mixture of exact rows of ``langs`` (same vocab)."""
    def fn(ids):
        p = sum(w * rows_of(lang, ids) for w, lang in zip(weights, langs))
        return np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), -1e4)
    return FunctionPredictor(fn)


# ----- systematicity ---------------------------------------------------------------------------
ANBMCNM = fl.load("anbmcnm")


def test_rule_scores_one_and_memoriser_zero_on_counter_split():
    sp = fl.exclude_counts(ANBMCNM, [(1, 2), (3, 3), (6, 1)])
    rule = systematicity(table_predictor(sp.full), sp, n=24)
    memo = systematicity(table_predictor(sp.train), sp, n=24)
    assert rule.set_accuracy_per_string == 1.0 and rule.kl_per_token < 1e-9
    assert rule.train_set_accuracy_per_string == 1.0 and rule.n_strings == 24
    assert memo.set_accuracy_per_string == 0.0 and memo.kl_per_token > 1.0
    assert rule.held_out_mass == pytest.approx(3 / 36)
    names = {m.name for m in rule.measures()}
    assert {"systematicity_set_acc", "systematicity_kl"} <= names


def test_rule_scores_one_and_memoriser_zero_on_pcfg_split():
    g = PCFG.from_nltk("S -> 'a' S 'b' [0.3] | 'c' S [0.2] | 'c' [0.3] | 'd' [0.2]")
    sp = fl.exclude_production(g, "S", ("c",), parent="S")
    assert systematicity(table_predictor(g), sp, n=16).set_accuracy_per_string == 1.0
    assert systematicity(table_predictor(sp.train), sp, n=16).set_accuracy_per_string == 0.0


SMALL = fl.CounterLanguage("anbmcnm-small", [fl.Block("a", 1, "n"), fl.Block("b", 1, "m"),
                                             fl.Block("c", 1, "n", ((1, "m"),))],
                           {"n": fl.Uniform(1, 3), "m": fl.Uniform(1, 3)})


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ft.count_splits(SMALL, max_size=3))
def test_the_rule_is_systematic_for_every_split(sp):
    """A property over drawn splits: the model that computes the rule scores 1 on every one."""
    assert systematicity(table_predictor(SMALL), sp, n=8).set_accuracy_per_string == 1.0


def test_a_failing_property_shrinks_to_the_one_forgotten_combination():
    """A model that never learned (2, 2): the smallest split where it is not systematic is the
    one that holds out exactly (2, 2)."""
    forgot = table_predictor(fl.exclude_counts(SMALL, [(2, 2)]).train)
    smallest = find(ft.held_out_counts(SMALL, max_size=3), lambda combos: systematicity(
        forgot, fl.exclude_counts(SMALL, combos), n=8).set_accuracy_per_string < 1,
        settings=settings(max_examples=200, deadline=None, database=None))
    assert smallest == [(2, 2)]


# ----- productivity ----------------------------------------------------------------------------
def test_productivity_names_the_bins_beyond_training():
    lang = fl.load("anbn")
    kw = dict(train_max_length=10, test_lengths=range(11, 21), bins=[(1, 10), (11, 20)],
              per_bin=6, threshold=1e-4)
    exact = productivity(table_predictor(lang), lang, **kw)
    short = productivity(table_predictor(lang.restrict(0, 10)), lang, **kw)
    assert exact.beyond == ((11, 20),) and exact.beyond_set_accuracy == 1.0
    assert exact.beyond_kl_per_token < 1e-9
    assert short.beyond_set_accuracy == 0.0 and short.beyond_kl_per_token > 1.0
    assert exact.measures()[0].name == "productivity_set_acc"
    with pytest.raises(fl.FormalLMError, match="beyond"):
        productivity(table_predictor(lang), lang, train_max_length=20, test_lengths=[4])


# ----- substitutivity --------------------------------------------------------------------------
BASE = PCFG.from_nltk("""
S -> A [0.5] | B [0.5]
A -> 'a' 'p' E [1.0]
B -> 'b' 'p' E [1.0]
E -> 'e' [0.6] | 'e' E [0.4]
""", name="twins")


def test_substitutivity_known_answers():
    sp = fl.twin_split(BASE, "p", "q", parent="B")
    kw = dict(contexts=sp.held_out, train=sp.train, n=12)
    same = substitutivity(table_predictor(sp.full), sp.full, ("p", "q"), **kw)
    memo = substitutivity(table_predictor(sp.train), sp.full, ("p", "q"), **kw)
    assert same.scores.set_agreement_per_pair == 1.0 and same.scores.kl_per_position < 1e-9
    assert memo.scores.set_agreement_per_pair == 0.0
    assert memo.scores.set_agreement_per_position == 0.0
    assert memo.scores.kl_per_position > 10  # one-hot rows on different tokens, 1e-4 logits
    # every held-out string is b q e^k, with one twin each: the rows after q are scored
    strings = sp.held_out.sample(12, seed=derive(0, Stream.COMPOSITIONAL, 2))
    assert all(s[:2] == ("b", "q") for s in strings)
    assert same.scores.n_pairs == 12
    assert same.scores.n_positions == sum(len(s) - 1 for s in strings)


def test_substitutivity_refuses_symbols_that_are_not_twins():
    g = PCFG.from_nltk("S -> 'p' 'e' [0.5] | 'q' 'f' [0.5]")
    with pytest.raises(fl.FormalLMError, match="exact rows"):
        substitutivity(table_predictor(g), g, ("p", "q"), contexts=["pe", "qf"])
    with pytest.raises(fl.FormalLMError, match="twins="):
        substitutivity(table_predictor(g), g, ("p", "z"), contexts=["pe"])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ft.twin_splits(BASE))
def test_the_exact_model_is_substitutive_for_every_twin_split(drawn):
    sp, twins = drawn
    got = substitutivity(table_predictor(sp.full), sp.full, twins, contexts=sp.held_out, n=6)
    assert got.scores.set_agreement_per_pair == 1.0 and got.scores.kl_per_position < 1e-9


# ----- localism --------------------------------------------------------------------------------
def parity_predictor(lang):
    """Exact rows at even positions, all mass on EOS at odd ones."""
    def fn(ids):
        p = rows_of(lang, ids)
        p[:, 1::2] = np.eye(p.shape[-1])[EOS_ID]
        return np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), -1e4)
    return FunctionPredictor(fn)


def test_localism_known_answers():
    g = fl.load("arith")
    pairs = [(c, w) for c, w in constituents(g, g.sample(30, seed=4), "E") if c]
    even = [(c, w) for c, w in pairs if len(c) % 2 == 0]
    odd = [(c, w) for c, w in pairs if len(c) % 2 == 1]
    exact = localism(table_predictor(g), g, pairs)
    assert exact.scores.n_positions > 0
    assert exact.scores.set_agreement_per_position == 1.0
    assert exact.scores.kl_per_position < 1e-9
    assert localism(parity_predictor(g), g, even).scores.set_agreement_per_position == 1.0
    res = localism(parity_predictor(g), g, odd)
    assert res.scores.n_positions > 0 and res.scores.set_agreement_per_position == 0.0
    assert res.scores.kl_per_position > 10
    assert {m.name for m in res.measures()} >= {"localism_kl", "localism_set_agreement"}


def test_constituents_are_the_parse_nodes():
    g = PCFG.from_nltk("S -> 'a' S 'b' [0.5] | 'c' [0.5]")
    assert constituents(g, ["aacbb"], "S") == [((), tuple("aacbb")), (("a",), tuple("acb")),
                                               (("a", "a"), ("c",))]


# ----- overgeneralisation ----------------------------------------------------------------------
SYMS = ("a", "b", "c", "d", "x", "y")
IRREGULAR = PCFG.from_nltk("S -> R 'x' [0.75] | 'd' 'y' [0.25]\n"
                           "R -> 'a' [0.4] | 'b' [0.3] | 'c' [0.3]", alphabet=SYMS)
REGULAR = PCFG.from_nltk("S -> R 'x' [1.0]\nR -> 'a' [0.3] | 'b' [0.2] | 'c' [0.2] | 'd' [0.3]",
                         alphabet=SYMS)


def test_overgeneralisation_over_checkpoints():
    exact, rule = table_predictor(IRREGULAR), table_predictor(REGULAR)
    mix = table_predictor(REGULAR, IRREGULAR, weights=(0.7, 0.3))
    res = overgeneralisation([exact, rule, mix, exact], IRREGULAR, [("d", "x")],
                             checkpoints=[0, 100, 200, 300])
    assert res.rule_rate == (0.0, 1.0, 1.0, 0.0)
    assert res.rule_prob[1] == pytest.approx(1.0) and res.rule_prob[2] == pytest.approx(0.7)
    assert res.rule_prob[0] < 1e-12 and res.exception_rate == (1.0, 0.0, 0.0, 1.0)
    by_name = {m.name: m.value for m in res.measures()}
    assert by_name["overgeneralisation_peak_rate"] == 1.0
    assert by_name["overgeneralisation_rate[100]"] == 1.0
    assert by_name["overgeneralisation_rate"] == 0.0


def test_overgeneralisation_refuses_what_is_not_an_exception():
    with pytest.raises(fl.FormalLMError, match="not an exception"):
        overgeneralisation(table_predictor(IRREGULAR), IRREGULAR, [("a", "x")])
    with pytest.raises(fl.FormalLMError, match="probability 0"):
        overgeneralisation(table_predictor(IRREGULAR), IRREGULAR, [("x", "x")])
    with pytest.raises(fl.FormalLMError, match="labels"):
        overgeneralisation([table_predictor(IRREGULAR)], IRREGULAR, [("d", "x")],
                           checkpoints=[1, 2])


# ----- over seeds ------------------------------------------------------------------------------
def test_summarize_seeds_goes_through_stats_summarize():
    sp = fl.exclude_counts(ANBMCNM, [(2, 5)])
    results = [systematicity(table_predictor(sp.full), sp, n=6),
               systematicity(table_predictor(sp.train), sp, n=6),
               systematicity(table_predictor(sp.full, sp.train, weights=(0.5, 0.5)), sp, n=6)]
    out = summarize_seeds(results)
    # the half-memoriser puts half its mass on EOS where the training language has none
    assert out["systematicity_set_acc"] == summarize([1.0, 0.0, 0.0])
    assert out["systematicity_held_out_mass"].values == pytest.approx((1 / 36,) * 3)
    with pytest.raises(fl.FormalLMError, match="no results"):
        summarize_seeds([])


def test_the_compositionality_page_runs(tmp_path):
    from test_docs import run_page
    run_page("compositionality.md", tmp_path)


def test_bad_inputs_are_named():
    g = fl.load("arith")
    with pytest.raises(fl.FormalLMError, match="not a formal_lm.Split"):
        systematicity(table_predictor(g), g)
    with pytest.raises(fl.FormalLMError, match="not a \\(prefix, rule token\\) pair"):
        overgeneralisation(table_predictor(IRREGULAR), IRREGULAR, ["dx"])
    with pytest.raises(fl.FormalLMError, match="not a \\(context, part\\) pair"):
        localism(table_predictor(g), g, ["x+x"])
    with pytest.raises(fl.FormalLMError, match="no \\(context, part\\) pairs"):
        localism(table_predictor(g), g, [])
    with pytest.raises(fl.FormalLMError, match="not a PCFG"):
        fl.exclude_production(fl.load("anbn"), "S", ("a",))
    with pytest.raises(fl.FormalLMError, match="not a PCFG"):
        fl.twin_split(fl.load("anbn"), "a", "z", parent="S")
