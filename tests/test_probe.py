"""Probes, interventions and the hidden-state interface, on hand-built models with known answers.

The hand-built models are numpy functions over the ids of a^n b^n: their hidden state *is* the
count (#a - #b), so a probe must recover it (and the rounded count, also on longer strings) and
must not recover the control task; a model that predicts from that state must follow an
interchange of it exactly (accuracy 1), one that computes the same predictions while ignoring
its state must not (accuracy 0). The exact counterfactuals are checked on pairs written out here.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import formal_lm as fl
from formal_lm.analysis import (FunctionActivations, as_activations, collect_states,
                                interchange, probe)
from formal_lm.errors import FormalLMError
from formal_lm.models import make

A, B, V = 3, 4, 5  # ids of a and b in anbn's vocabulary (PAD, BOS, EOS, a, b)
LANG = fl.load("anbn")
TRAIN = ["a" * n + "b" * n for n in range(1, 9)]
LONGER = ["a" * n + "b" * n for n in range(10, 14)]


def count_states(ids):
    """(one-hot of the token read [B, T, V], [count, seen b] [B, T, 2])."""
    oh = np.eye(V)[np.asarray(ids)]
    d = np.cumsum(oh[..., A] - oh[..., B], axis=1)
    seen = np.maximum.accumulate(oh[..., B], axis=1)
    return oh, np.stack([d, seen], -1)


def head(h):
    """Logits from [count, seen b]: before any b, a (or b); after, b while count > 0, else EOS."""
    d, seen = h[..., 0], h[..., 1]
    logits = np.full(h.shape[:-1] + (V,), -30.0)
    logits[..., A] = 5 * (1 - seen) - 30 * seen
    logits[..., B] = 30 * seen * (d - 0.5)
    logits[..., 2] = -30 * (1 - seen)
    return logits


def patched(ids, layer, pos, value, *, uses_state=True):
    oh, h = count_states(ids)
    hit = (np.arange(np.shape(ids)[1])[None] == np.asarray(pos)[:, None])[..., None]
    if layer == 1:
        h = np.where(hit, np.asarray(value)[:, None], h)
    return head(h if uses_state else count_states(ids)[1])


COUNTER = FunctionActivations(lambda ids: [count_states(ids)[0], count_states(ids)[1][..., :1]])
USES = FunctionActivations(lambda ids: list(count_states(ids)), patched)
IGNORES = FunctionActivations(lambda ids: list(count_states(ids)),
                              lambda *a: patched(*a, uses_state=False))
POOL = [("a",) * n + ("b",) * k for n in range(1, 9) for k in range(n + 1)]


# ----------------------------------------------------------------------------------- probes
def test_probe_recovers_the_count_and_not_the_control_task():
    r = probe(COUNTER, LANG, "diff:a-b", TRAIN, ood_strings=LONGER, seeds=range(3))
    token, count = r.layers
    assert count.score.mean > 0.999 and count.rounded.mean == 1.0  # R^2, rounded accuracy
    assert count.score_ood.mean > 0.99 and count.rounded_ood.mean == 1.0  # longer strings
    assert count.control.mean < 0.5 and count.selectivity.mean > 0.5
    assert token.score.mean < 0.5  # the token just read does not give the count
    assert count.score.n == 3 and count.score.ci_low <= count.score.mean <= count.score.ci_high
    assert all(x == 1.0 for x in count.by_position if x == x)
    names = {m.name for m in r.measures()}
    assert {"probe_diff:a-b_L1", "probe_diff:a-b_L1_ood", "probe_diff:a-b_L1_control",
            "probe_diff:a-b_L1_selectivity", "probe_diff:a-b_L1_rounded_ood"} <= names
    np.testing.assert_allclose(np.abs(r.fits[1][0].subspace()), [[1.0]])


def test_categorical_probe_and_control():
    """block (start / a / b) is linear in [count, seen b]; the MLP probe gets it too; the
    control labels are a function of the token read, which the one-hot layer holds."""
    r = probe(USES, LANG, "block", TRAIN, ood_strings=["ba", "abab"], seeds=range(3))
    token, state = r.layers
    assert state.score.mean == 1.0 and token.control.mean == 1.0
    assert state.rounded is None  # accuracy only, for a categorical feature
    assert token.score_ood.mean < 1.0  # "ba": the b token, but the prefix is off template
    mlp = probe(USES, LANG, "block", TRAIN, kind="mlp", layers=[1], seeds=range(3))
    assert mlp.layers[0].score.mean == 1.0 and mlp.probe_kind == "mlp"


def test_probe_rejects_bad_arguments():
    with pytest.raises(FormalLMError, match="probe kind"):
        probe(COUNTER, LANG, "diff:a-b", TRAIN, kind="forest")
    with pytest.raises(FormalLMError, match="not a latent"):
        probe(COUNTER, LANG, "depth", TRAIN)
    with pytest.raises(FormalLMError, match="layers"):
        probe(COUNTER, LANG, "diff:a-b", TRAIN, layers=[5])
    with pytest.raises(FormalLMError, match="column"):
        probe(COUNTER, fl.load("dyck2"), "stack", ["[]", "()", "[()]"])
    with pytest.raises(FormalLMError, match="at least 2"):
        probe(COUNTER, LANG, "diff:a-b", ["ab"])


# ----------------------------------------------------------------------------------- interventions
def test_interchange_on_a_counter_model_that_uses_its_count():
    whole = interchange(USES, LANG, POOL, feature="diff:a-b", keep=("block",), layers=[1])
    fit = probe(USES, LANG, "diff:a-b", TRAIN, layers=[1], seeds=range(3)).fits[0][0]
    sub = interchange(USES, LANG, POOL, feature="diff:a-b", keep=("block",), layers=[1],
                      subspace={1: fit.subspace()})
    for r in (whole, sub):
        (layer,) = r.layers
        assert layer.n_pairs == 256 and r.n_ambiguous == 0
        assert layer.accuracy == 1.0 and layer.support_accuracy == 1.0 and layer.kl < 1e-3
        assert layer.base_accuracy == 0.0  # informative pairs: the unpatched answer is wrong
    assert sub.subspace == "probe" and whole.subspace == "whole state"
    assert {"iia_diff:a-b_L1", "iia_diff:a-b_L1_kl"} <= {m.name for m in sub.measures()}


def test_interchange_on_a_model_that_ignores_its_state():
    r = interchange(IGNORES, LANG, POOL, feature="diff:a-b", keep=("block",), layers=[1])
    assert r.layers[0].accuracy == 0.0 and r.layers[0].kl > 10


def test_counterfactual_pairs_written_out():
    """Base aaab (count 2, b next), source aabb (count 0, EOS next): the counterfactual is EOS.
    Swapping to aaabb (count 1, b next) is not informative; a^3 (other block) is not a source."""
    pool = ["aaab", "aabb", "aaabb", "aaa"]
    r = interchange(USES, LANG, pool, feature="diff:a-b", keep=("block",), layers=[1])
    # informative (base, source): (aaab, aabb), (aabb, aaab), (aabb, aaabb), (aaabb, aabb)
    assert r.n_candidates == 4 and r.layers[0].accuracy == 1.0
    wrong = FunctionActivations(USES.hidden_fn,
                                lambda ids, layer, pos, value: head(count_states(ids)[1]))
    assert interchange(wrong, LANG, pool, feature="diff:a-b", keep=("block",),
                       layers=[1]).layers[0].accuracy == 0.0
    allp = interchange(USES, LANG, pool, feature="diff:a-b", keep=("block",), layers=[1],
                       informative_only=False)
    assert allp.n_candidates == 6  # + (aaab, aaabb), (aaabb, aaab): both predict b


def test_subspace_swap_moves_only_the_projection():
    """Base aaab (state [count 2, seen b 1, #a 3]), source aabb ([0, 1, 2]): swapping the span
    of (1, 0, 0) gives [0, 1, 3]; of (1, 1, 0), h_b + P(h_s - h_b) = [2, 1, 3] + (-1, -1, 0);
    the whole state gives the source's."""
    seen = []

    def states(ids):
        oh, h = count_states(ids)
        return [oh, np.concatenate([h, np.cumsum(oh[..., A:A + 1], axis=1)], -1)]

    def spy(ids, layer, pos, value):
        seen.append(np.asarray(value)[: len(pos)])
        return head(states(ids)[1])

    acts = FunctionActivations(states, spy)
    for basis, want in (([[1.0, 0, 0]], [0, 1, 3]), ([[2.0, 2.0, 0]], [1, 0, 3]),
                        (None, [0, 1, 2])):
        seen.clear()
        interchange(acts, LANG, ["aaab", "aabb"], feature="diff:a-b", keep=("block",),
                    layers=[1], subspace=None if basis is None else {1: np.array(basis)})
        np.testing.assert_allclose(seen[0][0], want, atol=1e-12)  # pair (aaab <- aabb)


# ----------------------------------------------------------------------------------- models
CASES = {"transformer": dict(d_model=8, n_heads=2, d_ff=16, n_layers=1, max_len=32),
         "lstm": dict(d_model=4, hidden=8, n_layers=2), "lru": dict(d_model=8, d_state=4),
         "stack_rnn": dict(d_model=4, hidden=8, n_layers=2, stack_size=4, stack_width=2),
         "tape_rnn": dict(d_model=4, hidden=8, n_layers=1, tape_size=4, tape_width=2),
         "mamba": dict(d_model=8, d_state=4, n_layers=2),
         "linear_attention": dict(d_model=8, n_heads=2, d_ff=16, n_layers=2)}


@functools.partial(jax.jit, static_argnums=0)
def every_pass(graphdef, state, ids, pos, values):
    """One compiled program per model: states, logits, and per layer the logits patched with
    the state itself and with ``values[l]``."""
    m = nnx.merge(graphdef, state)
    hs = m.hidden_states(ids)
    rows = jnp.arange(ids.shape[0])
    same = [m.patched_logits(ids, layer, pos, h[rows, pos]) for layer, h in enumerate(hs)]
    moved = [m.patched_logits(ids, layer, pos, v) for layer, v in enumerate(values)]
    return hs, m(ids), m._head(hs[-1]), same, moved


@pytest.mark.parametrize("case", list(CASES))
def test_model_hidden_states_and_patching(case):
    m = make(case, vocab_size=V, seed=0, **CASES[case])
    ids = jnp.array([[1, 3, 3, 4, 4, 2], [1, 3, 4, 2, 0, 0]], jnp.int32)
    pos = jnp.array([2, 1])
    n = m.config.n_layers + 1
    widths = [m.config.d_model] + [getattr(m.config, "hidden", m.config.d_model)] * (n - 1)
    rng = np.random.default_rng(0)
    values = [jnp.asarray(rng.normal(size=(2, w)) * 3, jnp.float32) for w in widths]
    hs, logits, head_of_last, same, moved = every_pass(*nnx.split(m), ids, pos, values)
    assert [h.shape for h in hs] == [(2, 6, w) for w in widths]
    np.testing.assert_allclose(head_of_last, logits, atol=1e-5)
    for layer in range(n):
        np.testing.assert_allclose(same[layer], logits, atol=1e-5)
        change = np.abs(np.asarray(moved[layer] - logits)).max(-1)  # [B, T]
        assert change[0, :2].max() < 1e-5 and change[1, :1].max() < 1e-5  # causal
        assert change[0, 2] > 1e-4  # the patched position itself moves
        if layer < n - 1 or case == "lstm":  # later positions read it (an LSTM: its carry)
            assert change[0, 3] > 1e-4
    with pytest.raises(ValueError, match="layer"):
        m.patched_logits(ids, n, pos, hs[0][:, 0])


def test_attention_weights_match_a_softmax_written_here():
    m = make("transformer", vocab_size=V, seed=1, d_model=8, n_heads=2, d_ff=16, n_layers=2,
             max_len=32)
    ids = jnp.array([[1, 3, 4, 3, 2]], jnp.int32)
    w = np.asarray(m.attention_weights(ids))  # [L, B, H, T, T]
    assert w.shape == (2, 1, 2, 5, 5)
    x = np.asarray(m.hidden_states(ids)[1])[0]  # block 2's input
    blk = m.blocks[1]
    h = np.asarray(blk.ln1(jnp.asarray(x)))
    q = (h @ np.asarray(blk.query.kernel[...]) + np.asarray(blk.query.bias[...])).reshape(5, 2, 4)
    k = (h @ np.asarray(blk.key.kernel[...]) + np.asarray(blk.key.bias[...])).reshape(5, 2, 4)
    scores = np.einsum("thk,shk->hts", q, k) / 2.0
    scores = np.where(np.tril(np.ones((5, 5), bool)), scores, -np.inf)
    want = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(w[1, 0], want / want.sum(-1, keepdims=True), atol=1e-5)


def test_probe_and_interchange_run_on_a_model():
    m = make("lstm", vocab_size=V, seed=0, d_model=4, hidden=8)
    ids = LANG.vocab.batch(TRAIN[:3])
    states = collect_states(as_activations(m), ids)  # jitted, padded to 32 columns
    np.testing.assert_allclose(states[-1], m.hidden_states(jnp.asarray(ids))[-1], atol=1e-5)
    r = probe(m, LANG, "diff:a-b", TRAIN, ood_strings=LONGER, seeds=range(3))
    assert [lp.layer for lp in r.layers] == [0, 1] and len(r.measures()) == 12
    iv = interchange(m, LANG, POOL, feature="diff:a-b", keep=("block",), layers=[0, 1],
                     n_pairs=16)
    assert [x.n_pairs for x in iv.layers] == [16, 16]
    assert all(0 <= x.accuracy <= 1 for x in iv.layers)


def test_the_docs_example_runs():
    text = (Path(__file__).resolve().parent.parent / "docs" / "probing.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert blocks
    for code in blocks:
        exec(compile(code, "docs/probing.md", "exec"), {})


# ----------------------------------------------------------------------------------- experiment
def test_correlation_matches_scipy():
    from scipy import stats

    from formal_lm.experiments.probing import correlation
    x, y = [0.1, 0.4, 0.35, 0.8, 0.9, 0.2], [0.2, 0.5, 0.3, 0.9, 0.7, 0.1]
    c = correlation("g", "x", "y", x, y)
    ref = stats.pearsonr(x, y)
    ci = ref.confidence_interval(0.95)  # Fisher z, as documented by scipy
    assert c.n == 6 and c.r == pytest.approx(ref.statistic, abs=1e-12)
    assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert correlation("g", "x", "y", x[:3], y[:3]).r is None  # below 4 seeds: no interval
    assert correlation("g", "x", "y", [1, 1, 1, 1], [1, 2, 3, 4]).r is None


def test_probing_experiment_file_is_checked():
    from formal_lm.experiments.loader import experiment_from_dict, load_experiment
    path = Path(__file__).resolve().parent.parent / "experiments" / "probing.toml"
    ex = load_experiment(path)
    assert ex.kind == "probing" and ex.study.languages == ("anbn-short", "dyck2")
    assert ex.study.probing["languages"]["dyck2"]["intervene"] == "top"
    raw = {"experiment": {"name": "p", "kind": "probing", "languages": ["anbn-short"]},
           "train": {"steps": 10, "data": {"max_length": 34}},
           "models": {"lstm": {"name": "lstm"}}, "objectives": {"normal": {"name": "nll"}},
           "probing": {"strings": 1, "languages": {"anbn-short": {
               "feature": "depth", "intervene": "diff:a-b", "keep": ["block"]}}}}
    with pytest.raises(FormalLMError) as e:
        experiment_from_dict(raw)
    text = str(e.value)
    assert "probing.strings=1" in text and "['depth'] are not features" in text
    raw["probing"] = {}
    with pytest.raises(FormalLMError, match="needs"):
        experiment_from_dict(raw)


@pytest.mark.slow
def test_probing_experiment_runs(tmp_path):
    """The shipped experiment end to end (about 3-10 minutes on 2 cores)."""
    from formal_lm.experiments.run import run_experiment
    path = Path(__file__).resolve().parent.parent / "experiments" / "probing.toml"
    res = run_experiment(path, tmp_path, progress=False)
    assert len(res["records"]) == 4 * 5  # 2 languages x 2 models x 5 seeds
    assert {c["group"] for c in res["correlations"]} == set(res["cells"])
    for rec in res["records"]:
        m = {k: v for r in rec["results"].values() for k, v in r["measures"].items()}
        iia = [v for k, v in m.items() if k.startswith("iia_") and k.count("_") == 2]
        assert iia and all(0 <= v <= 1 for v in iia)
    report = (tmp_path / "report.md").read_text()
    assert "OOD probe accuracy vs R1 extrapolation" in report


TINY_PROBING = """
[experiment]
name = "tiny-probing"
kind = "probing"
languages = ["anbn-short"]
eval_seed = 3

[train]
steps = 30
seeds = 4
batch_size = 8
eval_every = 15
checkpoint_every = 15

[train.optimizer]
lr = 1e-2

[train.data]
max_length = 34
bucket = 34
eval_size = 16

[models.lstm]
name = "lstm"
d_model = 4
hidden = 8

[objectives.normal]
name = "nll"

[analysis.saturation]
n = 16

[analysis.rule_extrapolation]
max_new_tokens = 20
max_prompts = 32

[statistics]
saturation = SATURATION

[probing]
strings = 16
probe_seeds = 1
steps = 30
ood_prompts = 8
n_pairs = 16

[probing.languages.anbn-short]
feature = "diff:a-b"
intervene = "diff:a-b"
keep = ["block"]
"""


def test_tiny_probing_experiment_claims_only_saturated_seeds(tmp_path):
    """End to end in seconds: with a regime every seed is in, the correlation uses the 4 seeds
    and matches analysis.correlation of the per-seed values in results.json; with a strict one
    (a tiny run is far from saturated) no seed is in and no correlation is claimed."""
    import json

    from formal_lm.analysis.correlation import correlation as pearson
    from formal_lm.experiments.run import run_experiment
    path = tmp_path / "p.toml"
    path.write_text(TINY_PROBING.replace("SATURATION", "10.0"))
    res = run_experiment(path, tmp_path / "out", progress=False)
    (c,) = res["correlations"]
    vals = {r["seed"]: {f"{k}.{m}": v for k, x in r["results"].items()
                        for m, v in x["measures"].items()} for r in res["records"]}
    want = pearson([vals[s][c["x"]] for s in range(4)], [vals[s][c["y"]] for s in range(4)])
    assert c["n"] == 4
    assert c["r"] is None if want.r is None else c["r"] == pytest.approx(want.r, abs=1e-12)
    assert len(res["regime"]["in_regime"]) == 4
    for f in ("report.md", "results.csv", "results.json", "probe_by_layer.png",
              "probe_vs_r1.png"):
        assert (tmp_path / "out" / f).is_file(), f
    path.write_text(TINY_PROBING.replace("SATURATION", "0.01"))
    strict = run_experiment(path, tmp_path / "out", progress=False)
    assert strict["regime"]["in_regime"] == [] and len(strict["regime"]["left_out"]) == 4
    assert strict["correlations"] == []
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Regime: saturated seeds only" in report and "0/4" in report
    assert json.loads((tmp_path / "out" / "results.json").read_text())["correlations"] == []
