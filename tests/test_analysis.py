"""Analyzer tests against hand-built model functions whose answers are known exactly."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

import formal_lm as fl

from formal_lm.analysis import (
    FunctionPredictor,
    IncrementalPredictor,
    JaxModel,
    Measure,
    NGramModel,
    Predictor,
    as_predictor,
    call_model,
    compare_groups,
    complete,
    constant_model_fn,
    eos_model_fn,
    exact_model_fn,
    length_generalization,
    next_symbol_sets,
    permutation_test,
    prompt_set,
    rule_extrapolation,
    saturation,
    target_mask,
    token_kl,
)
from formal_lm.analysis import measures as M
from formal_lm.analysis.metrics import PositionScores
from formal_lm.analysis.saturation import kl_and_nll
from formal_lm.errors import FormalLMError
from formal_lm.language import Language, LengthStats
from formal_lm.rules import Balanced, CountEqual, Pattern
from formal_lm.seeding import Stream, derive, rng
from formal_lm.vocab import BOS_ID, EOS, EOS_ID, PAD_ID


class AnBn(Language):
    """a^n b^n with n uniform over 1..N: small, exact, independent of the shipped loader."""

    name = "anbn-test"
    alphabet = ("a", "b")
    rules = (CountEqual("R1", "#a == #b", symbols=("a", "b")),
             Pattern("R2", "a before b", pattern="a*b*"))

    def __init__(self, N: int = 32):
        self.N = N

    def _split(self, s):
        s = "".join(self._s(s))
        i = len(s) - len(s.lstrip("a"))
        rest = s[i:]
        if rest.strip("b"):
            return None
        return i, len(rest)

    def log_prob(self, s):
        ij = self._split(s)
        if ij is None or ij[0] != ij[1] or not 1 <= ij[0] <= self.N:
            return -math.inf
        return -math.log(self.N)

    def prefix_log_prob(self, p):
        ij = self._split(p)
        if ij is None:
            return -math.inf
        i, j = ij
        if i == 0 and j == 0:
            return 0.0
        if i > self.N or j > i or i == 0:
            return -math.inf
        if j == 0:
            return math.log((self.N - i + 1) / self.N)
        return -math.log(self.N)

    def sample(self, n, *, seed=0, length=None):
        rng = np.random.default_rng(seed)
        if length is not None:
            if length % 2 or not 1 <= length // 2 <= self.N:
                raise ValueError("no strings of that length")
            ks = [length // 2] * n
        else:
            ks = rng.integers(1, self.N + 1, size=n)
        return [("a",) * int(k) + ("b",) * int(k) for k in ks]

    def entropy(self):
        return math.log(self.N)

    def expected_length(self):
        return self.N + 1.0

    def length_stats(self, max_length):
        prob = np.zeros(max_length + 1)
        for k in range(1, self.N + 1):
            if 2 * k <= max_length:
                prob[2 * k] = 1 / self.N
        return LengthStats(prob, prob * math.log(self.N), np.zeros_like(prob),
                           max(0.0, 1 - prob.sum()))


class Dyck1(Language):
    """Balanced parentheses with geometric-ish continuation: p(open) = 0.4 when depth > 0."""

    name = "dyck1-test"
    alphabet = ("(", ")")
    rules = (Balanced("R1", "balanced", open="(", close=")"),)

    def _walk(self, s):
        """ln P(prefix) or -inf; then depth."""
        lp, d = 0.0, 0
        for x in s:
            if d == 0:
                if x != "(":
                    return -math.inf, 0
                lp += math.log(0.5)  # vs EOS at depth 0
            else:
                lp += math.log(0.4 if x == "(" else 0.6)
            d += 1 if x == "(" else -1
        return lp, d

    def prefix_log_prob(self, p):
        return self._walk(self._s(p))[0]

    def log_prob(self, s):
        lp, d = self._walk(self._s(s))
        return lp + math.log(0.5) if d == 0 and lp > -math.inf else -math.inf

    def sample(self, n, *, seed=0, length=None):
        rng = np.random.default_rng(seed)
        out = []
        while len(out) < n:
            s, d = [], 0
            while True:
                if d == 0:
                    if rng.random() < 0.5:
                        break
                    s.append("(")
                    d = 1
                else:
                    up = rng.random() < 0.4
                    s.append("(" if up else ")")
                    d += 1 if up else -1
                if length is not None and len(s) > length:
                    break
            if length is None or len(s) == length:
                out.append(tuple(s))
        return out

    def entropy(self):
        raise NotImplementedError

    def expected_length(self):
        raise NotImplementedError

    def length_stats(self, max_length):
        prob = np.zeros(max_length + 1)
        prob[0::2] = 1.0  # only even lengths exist; values are not used as probabilities here
        return LengthStats(prob, None, None, 0.0)


class RecordingAnBn(AnBn):
    """AnBn that records every ``sample`` call as (n, seed, length): which stream an analyzer
    drew its strings from."""

    def __init__(self, N: int = 32):
        super().__init__(N)
        self.calls = []

    def sample(self, n, *, seed=0, length=None):
        self.calls.append((n, seed, length))
        return super().sample(n, seed=seed, length=length)


@pytest.fixture(scope="module")
def anbn():
    return AnBn(32)


def exact_row(lang, prefix) -> np.ndarray:
    """p(. | prefix) [V] from the per-prefix ``Language.next_token_dist`` (not the batched
    table the analyzers use)."""
    p = np.zeros(lang.vocab.size)
    for tok, pr in lang.next_token_dist(prefix).items():
        p[lang.vocab.tokens.index(tok)] = pr
    return p


def uniform_kl_of_string(lang, s) -> float:
    """Summed KL(p || uniform over V) over the len(s) + 1 targets of s: ln V - H(p) each."""
    V = lang.vocab.size
    return sum(np.log(V) + sum(p * np.log(p) for p in lang.next_token_dist(s[:t]).values()
                               if p > 0) for t in range(len(s) + 1))


UNITS = {"fraction", "count", "flag", "nats/token", "nats/string"}  # what reports know


def check_measures(result) -> dict[str, Measure]:
    """Every measure of an analyzer result is well typed; returns them by name."""
    ms = result.measures()
    assert isinstance(ms, tuple) and ms and all(isinstance(m, Measure) for m in ms)
    names = [m.name for m in ms]
    assert len(set(names)) == len(names), names
    for m in ms:
        assert m.scope in M.SCOPES and m.unit in UNITS and m.description.strip(), m
        v = m.value
        assert v is None or (isinstance(v, float) and math.isfinite(v)), m
        if m.unit == "fraction":  # a percentage: a share in [0, 1], higher is better
            assert m.percent and m.higher_is_better is True, m
            assert v is None or 0.0 <= v <= 1.0, m
            assert m.formatted().endswith("%") or v is None
        elif m.unit == "count":
            assert m.scope == M.REFERENCE and m.higher_is_better is None, m
            assert v is not None and v >= 0 and v == int(v), m
        elif m.unit == "flag":
            assert m.higher_is_better is None and v in (0.0, 1.0), m
        else:  # nats: losses and divergences are lower-is-better; floors have no direction
            assert m.higher_is_better is (None if m.scope == M.REFERENCE else False), m
            if m.name != "excess_loss":  # a difference of two losses may be negative
                assert v is None or v >= 0, m
        if m.tested:  # group comparisons test behaviours, not counts, flags or floors
            assert m.scope != M.REFERENCE and m.unit not in ("count", "flag"), m
            assert m.higher_is_better is not None, m
    return {m.name: m for m in ms}


def minority_then_eos(lang):
    """Completes any prefix with the minority symbol until #a == #b, then EOS (a perfect R1 model)."""
    a, b = lang.vocab.id("a"), lang.vocab.id("b")

    def fn(ids):
        ids = np.asarray(ids)
        na = np.cumsum(ids == a, axis=1)
        nb = np.cumsum(ids == b, axis=1)
        out = np.full(ids.shape + (lang.vocab.size,), -10.0)
        tok = np.where(na > nb, b, np.where(nb > na, a, EOS_ID))
        np.put_along_axis(out, tok[..., None], 10.0, axis=-1)
        return out
    return fn


# ----------------------------------------------------------------------------------- helpers
def test_public_names_have_docstrings():
    import formal_lm.analysis as A
    import formal_lm.experiments as E
    for mod in (A, E):
        for name in mod.__all__:
            assert getattr(mod, name).__doc__, f"{mod.__name__}.{name} has no docstring"


def test_target_mask_excludes_pad_and_after_eos():
    ids = np.array([[BOS_ID, 3, 4, EOS_ID, PAD_ID, PAD_ID]])
    assert target_mask(ids).tolist() == [[True, True, True, False, False, False]]


def test_token_kl_matches_scipy():
    rng_ = np.random.default_rng(0)
    p = rng_.dirichlet(np.ones(5), size=4)
    p[0, [1, 3]] = 0.0
    p[0] /= p[0].sum()
    q = rng_.dirichlet(np.ones(5), size=4)
    got = token_kl(np.vstack([p, np.zeros(5)]), np.log(np.vstack([q, q[:1]])))
    assert got[:4] == pytest.approx([stats.entropy(a, b) for a, b in zip(p, q)], rel=1e-12)
    assert got[4] == 0.0  # a row with no exact distribution


# ---------------------------------------------------------------------------------- predictors
def test_as_predictor_wraps_what_it_is_given(anbn):
    from formal_lm.models import make
    V = anbn.vocab.size

    def fn(ids):
        return np.zeros(np.shape(ids) + (V,))
    p = as_predictor(fn)
    assert isinstance(p, FunctionPredictor) and isinstance(p, Predictor) and p.max_len is None
    assert not isinstance(p, IncrementalPredictor)
    assert as_predictor(fn, max_len=12).max_len == 12
    assert as_predictor(p) is p
    ng = NGramModel(2).fit(["ab"], anbn.vocab)
    assert as_predictor(ng) is ng and ng.max_len is None
    for baseline in (exact_model_fn(anbn), eos_model_fn(anbn), constant_model_fn(V, 3)):
        assert isinstance(baseline, FunctionPredictor)  # and still called like a function:
        assert np.shape(baseline(anbn.vocab.batch(["ab"]))) == (1, 4, V)
    # A flax model: its max_len is the config's (a learned position table), or None.
    tf = as_predictor(make("transformer", vocab_size=V, seed=0, d_model=8, n_heads=2, d_ff=16,
                           n_layers=1, max_len=40))
    assert isinstance(tf, JaxModel) and isinstance(tf, IncrementalPredictor) and tf.max_len == 40
    assert as_predictor(tf) is tf
    lstm = as_predictor(make("lstm", vocab_size=V, seed=0))
    assert isinstance(lstm, JaxModel) and lstm.max_len is None
    with pytest.raises(FormalLMError, match="needs a seed"):
        as_predictor("some/run/dir")
    with pytest.raises(FormalLMError, match="int is not a predictor"):
        as_predictor(3)


def test_call_model_pads_to_buckets_but_not_past_max_len():
    """Rows are padded to a power of two (at most batch_size), columns to a multiple of 32 but
    never past the predictor's max_len; the logits read back are those of the unpadded ids."""
    V = 4
    seen = []

    def causal(ids):  # logits at t depend on ids[:, :t+1] only
        ids = np.asarray(ids)
        seen.append(ids.shape)
        c = np.cumsum(ids, axis=1)
        return np.stack([c * (k + 1.0) for k in range(V)], axis=-1)

    ids = np.random.default_rng(0).integers(3, 5, size=(5, 7)).astype(np.int32)
    ids[:, 0] = BOS_ID
    want = causal(ids)
    seen.clear()
    np.testing.assert_array_equal(call_model(causal, ids), want)
    assert seen == [(8, 32)]
    seen.clear()
    np.testing.assert_array_equal(call_model(FunctionPredictor(causal, max_len=10), ids,
                                             batch_size=2), want)
    assert seen == [(2, 10)] * 3
    seen.clear()
    long = np.full((1, 12), 3, np.int32)  # longer than max_len: passed on as it is
    call_model(FunctionPredictor(causal, max_len=10), long)
    assert seen == [(1, 12)]
    with pytest.raises(FormalLMError, match="logits of shape"):
        call_model(lambda x: np.zeros((len(x), 1, V)), ids)


def test_jax_model_max_len_bounds_the_padding(anbn):
    """A Transformer with a 40-row learned position table: a 35-column batch is padded to 40
    (not 64, which it would reject), and its logits equal those of the unpadded call."""
    from formal_lm.models import make
    module = make("transformer", vocab_size=anbn.vocab.size, seed=1, d_model=8, n_heads=2,
                  d_ff=16, n_layers=1, max_len=40)
    ids = anbn.vocab.batch([("a",) * 16 + ("b",) * 16, ("a", "b")])  # [2, 34]
    ids = np.concatenate([ids, np.zeros((2, 1), ids.dtype)], axis=1)  # [2, 35]
    got = call_model(module, ids)
    np.testing.assert_allclose(got, np.asarray(module(ids)), rtol=1e-5, atol=1e-5)


def test_call_model_rejects_logits_without_a_vocabulary_axis():
    with pytest.raises(FormalLMError, match="logits of shape"):
        call_model(lambda ids: np.zeros(np.shape(ids)), np.ones((2, 3), np.int32))


def test_complete_rejects_logits_without_a_vocabulary_axis(anbn):
    with pytest.raises(FormalLMError, match="logits"):
        complete(lambda ids: np.zeros(np.shape(ids)), anbn, ["ab"], max_new_tokens=3)


# ---------------------------------------------------------------------------------- measures
def test_measure_values_and_formatting():
    m = Measure("kl", 0.01, "nats/token", False, M.IN_DISTRIBUTION, "exact KL")
    assert m.formatted() == "0.01" and not m.percent
    f = M.fraction("acc", 0.275, M.OUT_OF_DISTRIBUTION, "a share")
    assert f.percent and f.higher_is_better is True and f.formatted() == "27.5%"
    for bad in (math.nan, math.inf, -math.inf, None):  # undefined numbers are None
        u = Measure("x", bad, "count", None, M.REFERENCE, "d")
        assert u.value is None and u.formatted() == "–"
    c = M.count("n", 3, "items")
    assert c.value == 3.0 and isinstance(c.value, float) and c.scope == M.REFERENCE
    with pytest.raises(ValueError, match="scope"):
        Measure("x", 1.0, "count", None, "test set", "d")


def test_saturation_measures(anbn):
    uniform = constant_model_fn(anbn.vocab.size, EOS_ID, margin=0.0)
    r = saturation(uniform, anbn, n=16, seed=2)
    ms = check_measures(r)
    assert {k: m.value for k, m in ms.items()} == {
        "kl": r.kl_per_token, "cross_entropy": r.cross_entropy, "excess_loss": r.excess_loss,
        "sample_entropy": r.sample_entropy, "loss_floor": r.loss_floor, "saturated": 0.0,
        "n_tokens": float(r.n_tokens)}
    assert {k for k, m in ms.items() if m.headline} == {"kl", "cross_entropy"}
    assert ms["loss_floor"].scope == ms["sample_entropy"].scope == M.REFERENCE
    # Uniform over V = 5 tokens: the NLL of every target is ln 5.
    assert r.cross_entropy == pytest.approx(math.log(5))
    exact = check_measures(saturation(exact_model_fn(anbn), anbn, n=16, seed=2))
    assert exact["saturated"].value == 1.0


# ---------------------------------------------------------------------------------- saturation
def test_exact_model_is_saturated(anbn):
    r = saturation(exact_model_fn(anbn), anbn, n=64, seed=1, threshold=1e-6)
    assert r.saturated and 0 <= r.kl_per_token < 1e-6
    assert r.cross_entropy == pytest.approx(r.sample_entropy, abs=1e-6)
    assert r.loss_floor == pytest.approx(math.log(32) / 34)  # E|s| + 1 = 33 + 1 tokens
    # The held-out strings come from the SATURATION stream of the seed; every string of
    # a^n b^n (n uniform in 1..32) has probability 1/32.
    strings = anbn.sample(64, seed=derive(1, Stream.SATURATION))
    assert r.n_strings == 64 and r.n_tokens == sum(len(s) + 1 for s in strings)
    assert r.sample_entropy == pytest.approx(64 * math.log(32) / r.n_tokens, rel=1e-12)


def test_saturation_samples_come_from_the_saturation_stream():
    lang = RecordingAnBn(32)
    uniform = constant_model_fn(lang.vocab.size, EOS_ID, margin=0.0)
    r = saturation(uniform, lang, n=16, seed=5)
    assert lang.calls == [(16, derive(5, Stream.SATURATION), None)]
    strings = AnBn(32).sample(16, seed=derive(5, Stream.SATURATION))
    assert r == saturation(uniform, lang, strings=strings)
    assert r.kl_per_token == pytest.approx(
        sum(uniform_kl_of_string(lang, s) for s in strings) / sum(len(s) + 1 for s in strings))


def test_kl_is_positive_and_pad_independent(anbn):
    """A wrong model has KL > 0, and the figure does not depend on how far rows are padded."""
    uniform = constant_model_fn(anbn.vocab.size, EOS_ID, margin=0.0)
    strings = anbn.sample(16, seed=2)
    longest = ("a",) * 32 + ("b",) * 32
    r = saturation(uniform, anbn, strings=strings)
    r2 = saturation(uniform, anbn, strings=strings + [longest])
    assert r.kl_per_token > 0.1 and not r.saturated
    # Per real token: uniform over 5 tokens vs the exact rows, computed by hand.
    ids = anbn.vocab.batch(strings)
    p = anbn.next_token_probs(ids)
    m = target_mask(ids)
    logq = np.log(1 / 5)
    kl = sum(float(np.sum(np.where(row > 0, row * (np.log(np.where(row > 0, row, 1)) - logq), 0)))
             for row in p[m])
    assert r.kl_per_token == pytest.approx(kl / m.sum())
    assert r2.n_tokens == r.n_tokens + 65
    # The 16 strings padded to 66 columns score what they scored padded to their own length.
    extra = uniform_kl_of_string(anbn, longest)
    assert r2.kl_per_token * r2.n_tokens == pytest.approx(r.kl_per_token * r.n_tokens + extra)


def test_kl_and_nll_match_a_per_prefix_reference(anbn):
    """kl_and_nll returns PositionScores: KL, model NLL and exact NLL of the observed target at
    each real target position (zero elsewhere), against per-prefix rows and scipy's KL."""
    V = anbn.vocab.size
    table = np.random.default_rng(1).normal(size=(64, V))  # position-dependent logits
    model = FunctionPredictor(lambda ids: np.broadcast_to(table[: np.shape(ids)[1]],
                                                          np.shape(ids) + (V,)))
    strings = [("a", "b"), ("a",) * 5 + ("b",) * 5, ("a", "a", "b", "b")]
    ids = anbn.vocab.batch(strings)
    sc = kl_and_nll(model, anbn, ids)
    assert isinstance(sc, PositionScores) and sc.n_tokens == sum(len(s) + 1 for s in strings)
    for b, s in enumerate(strings):
        targets = list(s) + [EOS]
        for t in range(ids.shape[1]):
            if t > len(s):  # PAD targets, after EOS, the last column
                assert not sc.mask[b, t]
                assert sc.kl[b, t] == sc.nll[b, t] == sc.true_nll[b, t] == 0.0
                continue
            q = np.exp(table[t] - table[t].max())
            q /= q.sum()
            p = exact_row(anbn, s[:t])
            k = anbn.vocab.tokens.index(targets[t])
            assert sc.mask[b, t]
            assert sc.kl[b, t] == pytest.approx(stats.entropy(p, q), rel=1e-9)
            assert sc.nll[b, t] == pytest.approx(-np.log(q[k]), rel=1e-9)
            assert sc.true_nll[b, t] == pytest.approx(-np.log(p[k]), rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------------- completions
def test_greedy_completion_stops_at_eos(anbn):
    c = complete(minority_then_eos(anbn), anbn, ["aab", "abbb", "ab"], max_new_tokens=10)
    assert c.completions == (("b",), ("a", "a"), ())
    assert c.finished == (True, True, True) and c.finish_rate == 1.0


def test_unfinished_completions_are_flagged(anbn):
    always_a = constant_model_fn(anbn.vocab.size, anbn.vocab.id("a"))
    c = complete(always_a, anbn, ["ab"], max_new_tokens=5)
    assert c.completions == (("a",) * 5,) and c.finished == (False,) and c.finish_rate == 0.0


def test_pad_and_bos_are_never_emitted(anbn):
    """A model that prefers PAD and BOS still emits only EOS or symbols."""
    V = anbn.vocab.size

    def fn(ids):
        out = np.zeros(np.shape(ids) + (V,))
        out[..., PAD_ID] = out[..., BOS_ID] = 50.0
        out[..., EOS_ID] = 1.0
        return out
    for decoding in ("greedy", "sample"):
        c = complete(fn, anbn, ["a"] * 20, max_new_tokens=3, decoding=decoding)
        # A PAD would end the decoded completion early without finishing it.
        assert all(f or len(comp) == 3 for f, comp in zip(c.finished, c.completions))
    assert c.finish_rate > 0


def test_sampled_frequencies_match_softmax(anbn):
    """Chi-square test of sampled first tokens against the model's softmax over the vocabulary.

    The logits vary along the sequence axis, so normalising over positions would fail.
    """
    V = anbn.vocab.size
    base = np.array([0.0, 0.0, 0.3, 1.0, -0.5])

    def fn(ids):
        ids = np.asarray(ids)
        T = ids.shape[1]
        out = np.broadcast_to(base, ids.shape + (V,)).copy()
        out += np.arange(T)[None, :, None] * np.array([0, 0, 1.0, -1.0, 0.5])  # position-dependent
        return out
    n = 6000
    c = complete(fn, anbn, ["ab"] * n, max_new_tokens=1, decoding="sample", seed=7)
    t = 2  # logits read at the prompt's last position (BOS a b -> index 2)
    logits = base + t * np.array([0, 0, 1.0, -1.0, 0.5])
    logits[[PAD_ID, BOS_ID]] = -np.inf
    p = np.exp(logits - logits.max())
    p /= p.sum()
    counts = np.zeros(V)
    for comp, fin in zip(c.completions, c.finished):
        counts[EOS_ID if fin else anbn.vocab.id(comp[0])] += 1
    keep = p > 0
    chi = stats.chisquare(counts[keep], n * p[keep])
    assert chi.pvalue > 0.01, (counts, n * p)
    assert counts[PAD_ID] == counts[BOS_ID] == 0


def test_jax_model_is_jitted_and_matches_numpy(anbn):
    import jax.numpy as jnp
    np_fn = minority_then_eos(anbn)
    a, b = anbn.vocab.id("a"), anbn.vocab.id("b")

    def jax_fn(ids):
        na = jnp.cumsum(ids == a, axis=1)
        nb = jnp.cumsum(ids == b, axis=1)
        tok = jnp.where(na > nb, b, jnp.where(nb > na, a, EOS_ID))
        return jnp.where(jnp.arange(anbn.vocab.size) == tok[..., None], 10.0, -10.0)
    prompts = ["abab", "bbba", "a"]
    jitted = complete(jax_fn, anbn, prompts, max_new_tokens=8, jit=True)
    assert jitted == complete(np_fn, anbn, prompts, max_new_tokens=8)
    assert jitted.completions == ((), ("a", "a"), ("b",)) and all(jitted.finished)


@pytest.mark.parametrize("name", ["transformer", "lstm"])
def test_incremental_decoding_matches_full_recompute(anbn, name):
    """A real model decoded step by step (KV cache / carried state) gives the same greedy and
    sampled completions as re-running the whole prefix."""
    from formal_lm.analysis import JaxModel
    from formal_lm.models import make
    small = dict(d_model=8, n_heads=2, d_ff=16, n_layers=1, max_len=64) if name == "transformer" \
        else {}
    model = JaxModel(make(name, vocab_size=anbn.vocab.size, seed=3, **small))
    prompts = ["abba", "bbbb", "aaab", "baba", "abab"]
    for decoding in ("greedy", "sample"):
        inc = complete(model, anbn, prompts, max_new_tokens=12, decoding=decoding, seed=1,
                       batch_size=4)
        full = complete(lambda ids: model(ids), anbn, prompts, max_new_tokens=12,
                        decoding=decoding, seed=1, batch_size=4)
        if decoding == "greedy":
            assert inc == full
        assert len(inc.completions) == 5
        # sampling too: one uniform per (prompt, new token), whatever the path and batch size
        assert inc.completions == full.completions and inc.finished == full.finished
    one = complete(model, anbn, prompts, max_new_tokens=12, decoding="sample", seed=1,
                   batch_size=1)
    assert one.completions == inc.completions


def test_sampled_decoding_draws_from_the_decode_stream(anbn):
    """Row i's j-th new token is the inverse CDF, over EOS and the symbols, of the uniform
    rng(seed, Stream.DECODE).random((N, max_new_tokens))[i, j]."""
    V = anbn.vocab.size
    logits = np.array([5.0, 5.0, 0.0, np.log(2.0), np.log(3.0)])  # EOS, a, b: 1/6, 2/6, 3/6
    fn = FunctionPredictor(lambda ids: np.broadcast_to(logits, np.shape(ids) + (V,)))
    N, K, seed = 200, 3, 11
    c = complete(fn, anbn, ["ab"] * N, max_new_tokens=K, decoding="sample", seed=seed)

    def expected(u):
        out = []
        for x in u:
            tok = EOS if x < 1 / 6 else "a" if x < 1 / 2 else "b"
            if tok == EOS:
                return tuple(out), True
            out.append(tok)
        return tuple(out), False

    want = [expected(u) for u in rng(seed, Stream.DECODE).random((N, K))]
    assert list(zip(c.completions, c.finished)) == want
    old = [expected(u) for u in np.random.default_rng(seed).random((N, K))]
    assert want != old  # the test tells the streams apart


def test_bad_decoding_is_rejected(anbn):
    with pytest.raises(FormalLMError, match="decoding='beam'"):
        complete(eos_model_fn(anbn), anbn, ["a"], max_new_tokens=1, decoding="beam")


# -------------------------------------------------------------------------- rule extrapolation
def independent_eos_baseline():
    """Among the length-8 strings over {a,b} that cannot be completed into a^n b^n, the fraction
    with #a == #b (counted without the package's rules)."""
    ood = [s for s in itertools.product("ab", repeat=8)
           if not ("".join(s).rstrip("b").count("b") == 0 and s.count("b") <= s.count("a"))]
    return len(ood), sum(s.count("a") == s.count("b") for s in ood) / len(ood)


def test_eos_baseline_reproduces_published_27_5(anbn):
    n_ood, expected = independent_eos_baseline()
    assert n_ood == 251 and round(100 * expected, 1) == 27.5
    r = rule_extrapolation(eos_model_fn(anbn), anbn, prompt_length=8, max_new_tokens=4,
                           ngram_n=None)
    assert r.enumerated and r.n_ood == 251 and r.n_id == 5
    assert r.model.headline == pytest.approx(expected)
    assert r.eos_baseline.headline == pytest.approx(expected)
    assert r.model.finish_rate == 1.0


def test_minority_model_gets_all_of_r1(anbn):
    r = rule_extrapolation(minority_then_eos(anbn), anbn, prompt_length=8, max_new_tokens=16,
                           ngram_n=2)
    assert r.model.headline == 1.0 and r.model.finish_rate == 1.0
    assert r.model.id_accuracy == 1.0
    # OOD prompts either break R2 or (like aabbbb..) break no single rule, only their conjunction.
    assert {c.broken for c in r.model.classes} == {(), ("R2",)}
    assert sum(c.n_prompts for c in r.model.classes) == 251
    assert all(c.rule_accuracy["R1"] == 1.0 and c.finish_rate == 1.0 for c in r.model.classes)
    # A bigram model cannot count: after 'a' its argmax is 'a' (n - 1 a->a transitions per
    # string against one a->b), after 'b' it is 'b' (n - 1 against one b->EOS), so its greedy
    # completions repeat the prompt's last symbol and never end.
    ng = r.ngram_baseline
    assert ng.headline == 0.0 and ng.finish_rate == 0.0 and ng.id_finish_rate == 0.0
    assert all(c == (p[-1],) * 16 for p, c in zip(ng.completions.prompts,
                                                  ng.completions.completions))


def test_ngram_baseline_trains_on_the_ngram_stream():
    lang = RecordingAnBn(32)
    rule_extrapolation(eos_model_fn(lang), lang, prompt_length=3, max_new_tokens=2, ngram_n=2,
                       ngram_train=50, seed=4)
    assert lang.calls == [(50, derive(4, Stream.NGRAM), None)]
    lang.calls.clear()
    rule_extrapolation(eos_model_fn(lang), lang, prompt_length=3, max_new_tokens=2, ngram_n=2,
                       train_strings=[("a", "b")], seed=4)
    assert lang.calls == []  # given training strings: nothing sampled


def test_unfinished_completions_count_as_failures(anbn):
    always_b = constant_model_fn(anbn.vocab.size, anbn.vocab.id("b"))
    r = rule_extrapolation(always_b, anbn, prompt_length=4, max_new_tokens=3, ngram_n=None)
    assert r.model.finish_rate == 0.0 and r.model.headline == 0.0
    assert math.isnan(r.model.headline_finished)
    ms = check_measures(r)
    assert ms["ood_R1_finished"].value is None  # undefined, not 0: nothing finished
    assert ms["ood_R1"].value == 0.0 and ms["ood_finish_rate"].value == 0.0


def test_prompt_labels_break_the_rules_they_name(anbn):
    r = rule_extrapolation(eos_model_fn(anbn), anbn, prompt_length=6, max_new_tokens=1,
                           ngram_n=None)
    for p in r.model.completions.prompts:
        broken = not anbn.rules[1].can_complete(p)
        assert broken == (("b", "a") in set(zip(p, p[1:])))  # R2 breaks exactly when some b precedes an a
        if broken:
            assert not anbn.is_viable(p)
    labels = [c.broken for c in r.model.classes]
    assert ("R2",) in labels


def test_rule_extrapolation_measures(anbn):
    r = rule_extrapolation(eos_model_fn(anbn), anbn, prompt_length=8, max_new_tokens=4,
                           ngram_n=None)
    ms = check_measures(r)
    head = ms[f"ood_{r.model.headline_rule}"]
    assert head.name == "ood_R1" and head.value == r.model.headline
    assert head.headline and head.tested and head.scope == M.OUT_OF_DISTRIBUTION
    assert head.formatted() == "27.5%"
    assert [m.name for m in ms.values() if m.tested] == ["ood_R1"]
    assert ms["ood_finish_rate"].value == 1.0 and ms["n_ood"].value == 251
    # Emitting EOS at once completes an in-distribution prompt into the language only when the
    # prompt is a string already: aaaabbbb, one of the 5 viable prompts of length 8.
    assert ms["id_accuracy"].value == pytest.approx(1 / 5)
    assert ms["id_accuracy"].scope == ms["id_finish_rate"].scope == M.IN_DISTRIBUTION
    # Per class, counted without the package: prompts breaking R2 contain "ba"; the others
    # (a^i b^j with j > i) keep a*b* but never #a = #b.
    ood = [p for p in itertools.product("ab", repeat=8) if "ba" in "".join(p)]
    assert ms["ood[R2]_R1"].value == pytest.approx(
        sum(p.count("a") == p.count("b") for p in ood) / len(ood))
    assert ms["ood[none]_R1"].value == 0.0 and ms["ood[none]_R2"].value == 1.0
    assert "ood[R2]_R2" not in ms  # a broken rule is not scored
    assert check_measures(r.eos_baseline)["ood_R1"].value == head.value


def test_sampled_prompts_are_distinct_uniform_and_seeded(anbn):
    prompts, enumerated = prompt_set(anbn, 20, max_prompts=300, seed=3)
    assert not enumerated and len(prompts) == 300 == len(set(prompts))
    assert all(len(p) == 20 and set(p) <= {"a", "b"} for p in prompts)
    assert prompts == sorted(prompts)
    for i in (0, 10, 19):  # uniform over {a,b}^20: 'b' at each place w.p. 1/2 (sd 8.7 of 300)
        assert 100 <= sum(p[i] == "b" for p in prompts) <= 200
    # The codes are 300 distinct draws of the PROMPTS stream, written in base 2 (a = 0, b = 1).
    codes = rng(3, Stream.PROMPTS).choice(2 ** 20, size=300, replace=False)
    assert prompts == sorted(tuple("ab"[int(d)] for d in format(int(c), "020b")) for c in codes)
    assert prompt_set(anbn, 20, max_prompts=300, seed=3) == (prompts, False)
    assert prompt_set(anbn, 20, max_prompts=300, seed=4)[0] != prompts


def test_sampled_prompts_are_uniform_for_huge_prompt_spaces(anbn):
    prompts, enumerated = prompt_set(anbn, 64, max_prompts=200, seed=0)
    assert not enumerated and len(set(prompts)) == 200
    assert 50 <= sum(p[0] == "b" for p in prompts) <= 150  # Binomial(200, 1/2): > 7 sd


def test_ngram_model_probabilities():
    lang = AnBn(4)
    m = NGramModel(2, k=1.0).fit(["ab"], lang.vocab)
    lp = m(lang.vocab.batch(["ab"]))  # [1, 4, V]
    p = np.exp(lp[0, 0])  # after BOS: a seen once, EOS and b unseen, add-1 over 3 tokens
    assert p[[PAD_ID, BOS_ID]].sum() < 1e-12
    assert p[lang.vocab.id("a")] == pytest.approx(2 / 4)
    assert p.sum() == pytest.approx(1.0)


# --------------------------------------------------------------------------- next-symbol sets
def test_next_symbol_sets_exact_model(anbn):
    strings = anbn.sample(32, seed=3)
    r = next_symbol_sets(exact_model_fn(anbn), anbn, strings, threshold=0.01, train_max_length=20)
    assert r.in_distribution.per_position == 1.0 and r.in_distribution.per_string == 1.0
    assert r.out_of_distribution.per_string == 1.0
    assert r.in_distribution.n_strings + r.out_of_distribution.n_strings == 32


def test_next_symbol_measures(anbn):
    strings = anbn.sample(32, seed=3)
    n_short = sum(len(s) <= 20 for s in strings)
    assert 0 < n_short < 32
    r = next_symbol_sets(exact_model_fn(anbn), anbn, strings, threshold=0.01, train_max_length=20)
    ms = check_measures(r)
    assert set(ms) == {"nss_per_string", "nss_per_position", "nss_unscored",
                       "nss_per_string_longer", "nss_per_position_longer", "nss_unscored_longer"}
    assert ms["nss_per_string"].headline and not ms["nss_per_string_longer"].headline
    assert ms["nss_per_string"].scope == ms["nss_per_position"].scope == M.IN_DISTRIBUTION
    assert ms["nss_per_string_longer"].scope == M.OUT_OF_DISTRIBUTION
    assert r.in_distribution.n_strings == n_short
    assert all(m.value == (0.0 if "unscored" in k else 1.0) for k, m in ms.items())
    uniform = constant_model_fn(anbn.vocab.size, EOS_ID, margin=0.0)
    ms = check_measures(next_symbol_sets(uniform, anbn, strings, threshold=0.1))
    assert set(ms) == {"nss_per_string", "nss_per_position", "nss_unscored"}  # no OOD group
    assert ms["nss_per_string"].value == ms["nss_per_position"].value == 0.0


def test_next_symbol_sets_leave_out_positions_the_threshold_cannot_judge():
    """bbaN = b^m a^(2n), m ~ U{1..16}, n ~ U{0..24}: after b^k (k < 16) EOS is legal with
    probability P(m = k | m >= k) P(n = 0) = 1 / (25 (17 - k)) < 0.01, so at threshold 0.01 even
    the exact language's set misses EOS there. Those positions are left out (and counted), and
    the exact model scores 1; at a threshold below every legal probability all are scored."""
    import formal_lm as fl
    lang = fl.load("bbaN")
    s = ("b", "b", "a", "a")
    r = next_symbol_sets(exact_model_fn(lang), lang, [s], threshold=0.01)
    # targets: after BOS (b only), after b (b, a, EOS: EOS 1/400), after bb (EOS 1/375), after
    # bba (a only), after bbaa (a, EOS 1/24 > 0.01)
    assert (r.in_distribution.n_positions, r.in_distribution.n_unscored) == (3, 2)
    assert r.in_distribution.per_string == r.in_distribution.per_position == 1.0
    fine = next_symbol_sets(exact_model_fn(lang), lang, [s], threshold=1e-4)
    assert (fine.in_distribution.n_positions, fine.in_distribution.n_unscored) == (5, 0)
    assert fine.in_distribution.per_string == 1.0


def test_next_symbol_sets_wrong_model(anbn):
    # Always predicting {a, b, EOS}: right only where all three are legal -- never in a^n b^n.
    uniform = constant_model_fn(anbn.vocab.size, EOS_ID, margin=0.0)
    r = next_symbol_sets(uniform, anbn, anbn.sample(8, seed=4), threshold=0.1)
    assert r.in_distribution.per_position == 0.0 and r.in_distribution.per_string == 0.0


# ------------------------------------------------------------------------ length generalization
def test_length_generalization_exact_model(anbn):
    r = length_generalization(exact_model_fn(anbn), anbn, train_max_length=20,
                              test_lengths=range(21, 65), per_bin=8)
    assert r.length_bins[0].in_training_range and not r.length_bins[-1].in_training_range
    assert all(b.set_accuracy_per_string == 1.0 and b.kl_per_token < 1e-6 for b in r.length_bins)
    assert r.skipped_lengths > 0  # odd lengths have no strings
    assert r.depth_bins == ()
    # group comparisons test the set accuracy beyond the training lengths, nothing else
    tested = {m.name for m in r.measures() if m.tested}
    assert tested == {f"len[{b.lo}-{b.hi}]_set_acc" for b in r.length_bins
                      if not b.in_training_range} != set()


def test_length_bins_draw_from_the_length_stream():
    lang = RecordingAnBn(8)  # strings of every even length 2..16
    length_generalization(exact_model_fn(lang), lang, train_max_length=6,
                          test_lengths=range(7, 17), per_bin=3, bins=[(1, 6), (7, 16)], seed=5)
    pick = rng(5, Stream.LENGTH)
    want = []
    for Ls in ([2, 4, 6], [8, 10, 12, 14, 16]):
        picks = sorted(int(x) for x in pick.choice(Ls, size=3, replace=len(Ls) < 3))
        want += [(1, derive(5, Stream.LENGTH, L, k), L) for k, L in enumerate(picks)]
    assert lang.calls == want


def test_length_generalization_measures():
    lang = Dyck1()
    r = length_generalization(exact_model_fn(lang), lang, train_max_length=8,
                              test_lengths=range(9, 17), per_bin=6, bins=[(1, 8), (9, 16)])
    ms = check_measures(r)
    assert r.depth_bins and len(ms) == 2 * (len(r.length_bins) + len(r.depth_bins))
    for kind, bins in (("len", r.length_bins), ("depth", r.depth_bins)):
        for b in bins:
            acc, kl = ms[f"{kind}[{b.lo}-{b.hi}]_set_acc"], ms[f"{kind}[{b.lo}-{b.hi}]_kl"]
            assert acc.value == b.set_accuracy_per_string == 1.0
            assert kl.value == pytest.approx(b.kl_per_token) and kl.unit == "nats/token"
            scope = M.IN_DISTRIBUTION if b.in_training_range else M.OUT_OF_DISTRIBUTION
            assert acc.scope == kl.scope == scope
    assert ms["len[1-8]_kl"].scope == M.IN_DISTRIBUTION
    assert ms["len[9-16]_kl"].scope == M.OUT_OF_DISTRIBUTION


def test_length_generalization_depth_bins():
    lang = Dyck1()
    r = length_generalization(exact_model_fn(lang), lang, train_max_length=8,
                              test_lengths=range(9, 17), per_bin=6, bins=[(1, 8), (9, 16)])
    assert r.depth_bins and all(b.set_accuracy_per_position == 1.0 for b in r.depth_bins)


# ---------------------------------------------------------------------------- group comparison
# compare_groups replaces non_identifiability: {group: {metric: per-seed values}}, a required
# margin, and "the same loss" shown by TOST at that margin (not CI overlap or a tolerance).
def test_compare_groups_detects_equal_loss_different_ood():
    groups = {
        "normal": {"kl": [0.010 + 0.001 * (i % 3) for i in range(8)],
                   "ood_R1": [0.4 + 0.01 * i for i in range(8)]},
        "extrapolation": {"kl": [0.011 + 0.001 * (i % 2) for i in range(8)],
                          "ood_R1": [0.85 - 0.01 * i for i in range(8)]},
        "adversarial": {"kl": [0.5] * 8, "ood_R1": [0.0] * 8},
    }
    r = compare_groups(groups, loss_metric="kl", ood_metrics=["ood_R1"], margin=0.002,
                       percent_metrics=("ood_R1",))
    assert r.found and r.ood_metrics == ("ood_R1",) and r.margin == 0.002
    found = r.statement.split("Same kl, different behaviour is found for ")[1].split(". ")[0]
    assert found == "'normal' vs 'extrapolation'"  # not the adversarial group: its loss differs
    for other in ("normal", "extrapolation"):
        q = r.pair(other, "adversarial")
        assert q.verdict == "loss_not_equivalent" and not q.finding and not q.loss_equivalent
    s = r.summary("adversarial", "ood_R1")
    assert s.mean == 0.0 and s.std == 0.0 and s.ci_low == s.ci_high == 0.0
    pair = r.pair("normal", "extrapolation")
    assert pair.verdict == "finding" and pair.loss_equivalent and pair.differing == ("ood_R1",)
    # The 90% Welch interval of the kl difference (scipy) lies inside the margin ...
    ci = stats.ttest_ind(groups["normal"]["kl"], groups["extrapolation"]["kl"],
                         equal_var=False).confidence_interval(0.90)
    assert -0.002 < ci.low < ci.high < 0.002
    assert (pair.loss.ci_low, pair.loss.ci_high) == pytest.approx((ci.low, ci.high))
    # ... and the OOD values are fully separated: of the C(16, 8) relabellings only the two
    # extreme ones are as far apart.
    assert pair.ood[0].permutation_p == pytest.approx(2 / math.comb(16, 8))
    assert pair.ood[0].permutation_p < 0.01


def test_compare_groups_is_seeded_and_reports_absence():
    # 10 vs 10 seeds: C(20, 10) relabellings are too many to enumerate, so p is sampled.
    z = np.linspace(-1.0, 1.0, 10)
    groups = {"x": {"kl": 0.1 + 0.001 * z, "m": 0.5 + 0.1 * z},
              "y": {"kl": 0.1 + 0.001 * z[::-1], "m": 0.52 + 0.1 * z[::-1]}}

    def run(seed):
        return compare_groups(groups, loss_metric="kl", ood_metrics=["m"], margin=0.001,
                              seed=seed)
    r1 = run(3)
    assert r1 == run(3)
    p1 = r1.pairs[0].ood[0].permutation_p
    assert p1 == permutation_test(groups["x"]["m"], groups["y"]["m"], seed=3)
    assert run(4).pairs[0].ood[0].permutation_p != p1  # the seed is used
    assert not r1.found and r1.pairs[0].verdict == "no_ood_difference"
    assert "No pair of groups is shown to have the same kl and different behaviour." in \
        r1.statement


def test_compare_groups_rejects_missing_loss_and_the_old_call():
    with pytest.raises(FormalLMError, match="lacks metric 'kl'"):
        compare_groups({"g": {"ood": [1.0, 2.0]}, "h": {"ood": [1.0, 2.0]}}, loss_metric="kl",
                       ood_metrics=["ood"], margin=0.1)
    with pytest.raises(FormalLMError, match="is a list, not a mapping"):  # the old records
        compare_groups({"g": [{"kl": 1.0, "ood": 1.0}], "h": [{"kl": 1.0, "ood": 1.0}]},
                       loss_metric="kl", ood_metrics=["ood"], margin=0.1)
    groups = {g: {"kl": [1.0, 2.0], "ood": [1.0, 2.0]} for g in ("g", "h")}
    with pytest.raises(TypeError, match="margin"):  # no default margin, no tolerance
        compare_groups(groups, loss_metric="kl", ood_metrics=["ood"])
    with pytest.raises(TypeError, match="ood_metrics"):  # OOD metrics are not auto-detected
        compare_groups(groups, loss_metric="kl", margin=0.1)


def test_permutation_test_exact():
    # 3 vs 3 fully separated: the 2 extreme splits of 20 are as extreme -> p = 2/20.
    assert permutation_test([0, 0, 0], [1, 1, 1]) == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["anbn", "anbn-short"])
def test_shipped_anbn_eos_baseline_and_perfect_r1(name):
    """On the shipped grammars: 251 OOD prompts, the EOS baseline equals the independent count
    (27.5%), and completing with the minority symbol satisfies R1 on every OOD prompt."""
    lang = fl.load(name)
    n_ood, expected = independent_eos_baseline()
    r = rule_extrapolation(minority_then_eos(lang), lang, prompt_length=8, max_new_tokens=12,
                           ngram_n=None)
    assert r.n_ood == n_ood
    assert r.eos_baseline.headline == pytest.approx(expected)
    assert r.model.headline == 1.0 and r.model.finish_rate == 1.0


def test_exact_model_on_shipped_grammars():
    for name in ("baN", "dyck2", "parity"):
        lang = fl.load(name)
        strings = lang.sample(16, seed=5)
        s = saturation(exact_model_fn(lang), lang, strings=strings, threshold=1e-5)
        assert s.saturated, (name, s)
        r = next_symbol_sets(exact_model_fn(lang), lang, strings, threshold=1e-4)
        assert r.in_distribution.per_string == 1.0, name


def test_length_bins_kl_of_a_uniform_model_in_closed_form(anbn):
    """A model with equal logits over V tokens has KL(p || uniform) = ln V - H(p) at every
    position; the per-string sums behind the length and depth bins must equal that, with H
    from the per-prefix Language.next_token_dist (not the batched table they use)."""
    from formal_lm.analysis.length import _bin, _per_string

    V = anbn.vocab.size
    strings = anbn.sample(6, seed=3)
    rows = _per_string(lambda ids: np.zeros(ids.shape + (V,)), anbn, strings, 0.01, 4)
    for s, row in zip(strings, rows):
        want = sum(np.log(V) + sum(p * np.log(p) for p in anbn.next_token_dist(s[:t]).values()
                                   if p > 0) for t in range(len(s) + 1))
        assert row[0] == pytest.approx(want, rel=1e-9) and row[1] == len(s) + 1
    kl, _, _ = _bin(rows)
    assert kl == pytest.approx(rows[:, 0].sum() / sum(len(s) + 1 for s in strings))


def test_length_bins_without_strings_are_listed_not_dropped():
    """anbn-short has strings of lengths 2..32 only: a requested bin past them is listed in
    empty_bins (it used to vanish from the result, with only skipped_lengths to hint at it)."""
    lang = fl.load("anbn-short")
    r = length_generalization(exact_model_fn(lang), lang, train_max_length=8,
                              test_lengths=range(9, 61), per_bin=4,
                              bins=[(1, 8), (9, 32), (33, 40), (41, 60)])
    assert [(b.lo, b.hi) for b in r.length_bins] == [(1, 8), (9, 32)]
    assert r.empty_bins == ((33, 40), (41, 60))
    default = length_generalization(exact_model_fn(lang), lang, train_max_length=8,
                                    test_lengths=range(9, 61), per_bin=4)
    assert [(b.lo, b.hi) for b in default.length_bins] == [(1, 8), (9, 16), (17, 32)]
    assert default.empty_bins == ((33, 60),)


def test_a_test_range_without_strings_is_an_error():
    lang = fl.load("anbn-short")
    with pytest.raises(FormalLMError, match=r"no strings with a length in test_lengths \(41..60\)"):
        length_generalization(exact_model_fn(lang), lang, train_max_length=8,
                              test_lengths=range(41, 61), per_bin=4)
