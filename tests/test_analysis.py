"""Analyzer tests against hand-built model functions whose answers are known exactly."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

import formal_lm as fl

from formal_lm.analysis import (
    NGramModel,
    complete,
    constant_model_fn,
    eos_model_fn,
    exact_model_fn,
    length_generalization,
    next_symbol_sets,
    non_identifiability,
    permutation_test,
    rule_extrapolation,
    saturation,
    target_mask,
)
from formal_lm.errors import FormalLMError
from formal_lm.language import Language, LengthStats
from formal_lm.rules import Balanced, CountEqual, Pattern
from formal_lm.vocab import BOS_ID, EOS_ID, PAD_ID


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


@pytest.fixture(scope="module")
def anbn():
    return AnBn(32)


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


# ---------------------------------------------------------------------------------- saturation
def test_exact_model_is_saturated(anbn):
    r = saturation(exact_model_fn(anbn), anbn, n=64, seed=1, threshold=1e-6)
    assert r.saturated and 0 <= r.kl_per_token < 1e-6
    assert r.cross_entropy == pytest.approx(r.sample_entropy, abs=1e-6)
    assert r.loss_floor == pytest.approx(math.log(32) / 34)  # E|s| + 1 = 33 + 1 tokens


def test_kl_is_positive_and_pad_independent(anbn):
    """A wrong model has KL > 0, and the figure does not depend on how far rows are padded."""
    uniform = constant_model_fn(anbn.vocab.size, EOS_ID, margin=0.0)
    strings = anbn.sample(16, seed=2)
    r = saturation(uniform, anbn, strings=strings)
    r2 = saturation(uniform, anbn, strings=strings + [("a",) * 32 + ("b",) * 32])
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
    assert complete(jax_fn, anbn, prompts, max_new_tokens=8, jit=True) == \
        complete(np_fn, anbn, prompts, max_new_tokens=8)


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
    assert r.ngram_baseline is not None and 0 <= r.ngram_baseline.headline <= 1


def test_unfinished_completions_count_as_failures(anbn):
    always_b = constant_model_fn(anbn.vocab.size, anbn.vocab.id("b"))
    r = rule_extrapolation(always_b, anbn, prompt_length=4, max_new_tokens=3, ngram_n=None)
    assert r.model.finish_rate == 0.0 and r.model.headline == 0.0
    assert math.isnan(r.model.headline_finished)


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


def test_length_generalization_depth_bins():
    lang = Dyck1()
    r = length_generalization(exact_model_fn(lang), lang, train_max_length=8,
                              test_lengths=range(9, 17), per_bin=6, bins=[(1, 8), (9, 16)])
    assert r.depth_bins and all(b.set_accuracy_per_position == 1.0 for b in r.depth_bins)


# ---------------------------------------------------------------------------- non-identifiability
def test_non_identifiability_detects_equal_loss_different_ood():
    groups = {
        "normal": [{"seed": i, "kl": 0.010 + 0.001 * (i % 3), "ood_R1": 0.4 + 0.01 * i} for i in range(8)],
        "extrapolation": [{"seed": i, "kl": 0.011 + 0.001 * (i % 2), "ood_R1": 0.85 - 0.01 * i}
                          for i in range(8)],
        "adversarial": [{"seed": i, "kl": 0.5, "ood_R1": 0.0} for i in range(8)],
    }
    r = non_identifiability(groups, loss_metric="kl", percent_metrics=("ood_R1",))
    assert r.found and r.ood_metrics == ("ood_R1",)
    assert "'normal' and 'extrapolation' are indistinguishable in kl" in r.statement
    assert "adversarial" not in r.statement  # its loss differs
    s = r.summary("adversarial", "ood_R1")
    assert s.mean == 0.0 and s.std == 0.0 and s.ci_low == s.ci_high == 0.0
    pair = next(p for p in r.pairs if {p.a, p.b} == {"normal", "extrapolation"})
    assert pair.loss_equivalent and pair.ood[0].permutation_p < 0.01


def test_non_identifiability_is_seeded_and_reports_absence():
    groups = {"x": [{"kl": 0.1, "m": 0.5}, {"kl": 0.1, "m": 0.6}],
              "y": [{"kl": 0.1, "m": 0.55}, {"kl": 0.1, "m": 0.5}]}
    r1 = non_identifiability(groups, seed=3)
    assert r1 == non_identifiability(groups, seed=3)
    assert not r1.found and r1.statement.startswith("No pair")


def test_non_identifiability_rejects_missing_loss():
    with pytest.raises(FormalLMError, match="loss_metric='kl'"):
        non_identifiability({"g": [{"ood": 1.0}]})


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
