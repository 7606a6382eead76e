"""Exact latent features (formal_lm.latents) against brute force written here.

Oracles, each independent of the module's code: counts by ``str.count``; the template block by
the leftmost embedding of the prefix's runs into the template's symbols (itertools) and, on
members, by the assignment of counts that generates the string; viability by enumerating every
member (counters) or by a closed form (Dyck); the Dyck stack by deleting matched pairs until
none is left; a PFSA's state posterior by summing the probabilities of every state path.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import formal_lm as fl
from formal_lm.errors import FormalLMError
from formal_lm.language import enumerate_strings
from formal_lm.latents import CATEGORICAL, NUMERIC, latents, rule_latents
from formal_lm.testing import counter_languages, pfsas

FAST = settings(max_examples=25, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------- oracles
def members_with_spans(lang):
    """{string: block spans [(start, end), ...]} of every assignment of the counts."""
    ranges = [[x for x in range(lang.priors[v].min, lang.priors[v].support_max + 1)
               if lang.priors[v].log_pmf(x) > -math.inf] for v in lang.vars]
    out = {}
    for vals in itertools.product(*ranges):
        value = dict(zip(lang.vars, vals))
        s, spans = (), []
        for b in lang.blocks:
            n = b.coef if b.var is None else sum(c * value[v] for v, c in b.terms())
            spans.append((len(s), len(s) + n))
            s += (b.symbol,) * n
        out.setdefault(s, spans)
    return out


def leftmost_block(template, prefix):
    """Block class of the prefix: 0 empty, k+1 block k, len+1 when the runs do not embed."""
    if not prefix:
        return 0
    runs = [k for k, _ in itertools.groupby(prefix)]
    for idx in itertools.combinations(range(len(template)), len(runs)):
        if all(template[i] == r for i, r in zip(idx, runs)):
            return idx[-1] + 1
    return len(template) + 1


def reduce_brackets(prefix, pairs):
    """The unmatched opens of a bracket prefix (bottom first), or None when a close is unmatched."""
    s = "".join(prefix)
    matched = [o + c for o, c in pairs]
    while any(m in s for m in matched):
        for m in matched:
            s = s.replace(m, "")
    closes = {c for _, c in pairs}
    return None if any(ch in closes for ch in s) else s


def path_posterior(m, s):
    """P(state after s | s) by summing over every state path (no forward recursion)."""
    S = len(m.states)
    post = np.zeros(S)
    sym = [m.alphabet.index(x) for x in s]
    for path in itertools.product(range(S), repeat=len(s) + 1):
        w = m.init[path[0]]
        for a, (q, r) in zip(sym, zip(path, path[1:])):
            w *= m.T[a][q, r]
        post[path[-1]] += w
    return post / post.sum() if post.sum() > 0 else post


# ----------------------------------------------------------------------------------- counters
@FAST
@given(counter_languages(max_count=3), st.data())
def test_counter_features_match_brute_force(lang, data):
    members = members_with_spans(lang)
    prefixes = {m[:t] for m in members for t in range(len(m) + 1)}
    syms = [b.symbol for b in lang.blocks]
    strings = [data.draw(st.sampled_from(sorted(members)))] + \
        [tuple(data.draw(st.lists(st.sampled_from(lang.alphabet), max_size=7)))]
    z = latents(lang, strings)
    for s, v in zip(strings, z.values):
        for t in range(len(s) + 1):
            p = s[:t]
            for x in lang.alphabet:
                assert v[f"count:{x}"][t] == p.count(x)
            for x, y in itertools.combinations(lang.alphabet, 2):
                assert v[f"diff:{x}-{y}"][t] == p.count(x) - p.count(y)
            assert v["block"][t] == leftmost_block(syms, p)
            assert v["viable"][t] == (p in prefixes)
            for r in lang.rules:
                assert v[f"rule:{r.name}"][t] == r.can_complete(p)
        if s in members and s:  # the block is the one of the generating assignment
            spans = members[s]
            for t in range(1, len(s) + 1):
                assert v["block"][t] == 1 + next(k for k, (a, b) in enumerate(spans) if a < t <= b)


@FAST
@given(counter_languages(linear=True, max_count=3), st.data())
def test_linear_counter_features_match_brute_force(lang, data):
    members = members_with_spans(lang)
    prefixes = {m[:t] for m in members for t in range(len(m) + 1)}
    s = tuple(data.draw(st.lists(st.sampled_from(lang.alphabet), max_size=7)))
    v = latents(lang, [s]).values[0]
    for t in range(len(s) + 1):
        assert v["viable"][t] == (s[:t] in prefixes)
        assert v["block"][t] == leftmost_block([b.symbol for b in lang.blocks], s[:t])
        assert v[f"count:{lang.alphabet[0]}"][t] == s[:t].count(lang.alphabet[0])


def test_anbn_shipped_features_and_kinds():
    lang = fl.load("anbn")
    z = latents(lang, ["aabb", "abba", ""])
    assert z.names == ("viable", "count:a", "count:b", "diff:a-b", "block", "rule:R1", "rule:R2")
    assert z.feature("diff:a-b").kind == NUMERIC and z.feature("block").kind == CATEGORICAL
    assert z.feature("block").classes == ("start", "block 0 (a)", "block 1 (b)", "off template")
    assert z["diff:a-b"][0].tolist() == [0, 1, 2, 1, 0]
    assert z["block"][1].tolist() == [0, 1, 2, 2, 3]
    assert z["viable"][1].tolist() == [1, 1, 1, 0, 0]  # "ab" is a member, "abb" no prefix
    assert z["rule:R2"][1].tolist() == [1, 1, 1, 1, 0]  # a+b+ breaks at the second a
    assert z.stacked("count:a").tolist() == [0, 1, 2, 2, 2, 0, 1, 1, 1, 2, 0]
    rows, t = z.positions()
    assert rows.tolist() == [0] * 5 + [1] * 5 + [2] and t.tolist()[:6] == [0, 1, 2, 3, 4, 0]
    # a length restriction judges viability under the restriction: a^3 needs length 6 > 5
    r = latents(lang.restrict(2, 5), ["aaa"])
    assert r["viable"][0].tolist() == [1, 1, 1, 0]


# ----------------------------------------------------------------------------------- brackets
@pytest.mark.parametrize("name", ["dyck1", "dyck2", "cs-dyck2"])
def test_dyck_features_match_reduction(name):
    lang = fl.load(name)
    opens = [o for o, _ in lang.pairs]
    strings = list(enumerate_strings(lang.alphabet, 4 if len(opens) == 2 else 6))
    z = latents(lang, strings, max_stack=3)
    cap = 2 * lang.prior.support_max
    for s, v in zip(strings, z.values):
        for t in range(len(s) + 1):
            p = s[:t]
            assert v["depth"][t] == sum(p.count(o) - p.count(c) for o, c in lang.pairs)
            for o, c in lang.pairs:
                assert v[f"depth:{o}"][t] == p.count(o) - p.count(c)
            if lang.nested:
                rest = reduce_brackets(p, lang.pairs)
                want = [len(opens) + 1] * 3 if rest is None else \
                    ([opens.index(x) + 1 for x in reversed(rest)] + [0, 0, 0])[:3]
                assert v["stack"][t].tolist() == want
                assert v["top"][t] == want[0]
                # Dyck-k: a prefix completes iff nothing is unmatched and its opens fit the cap
                assert v["viable"][t] == (rest is not None and len(p) + len(rest) <= cap)
            else:
                ok = all(p[:i].count(o) >= p[:i].count(c) for o, c in lang.pairs
                         for i in range(t + 1))
                depth = sum(p.count(o) - p.count(c) for o, c in lang.pairs)
                assert v["viable"][t] == (ok and len(p) + depth <= cap)
    assert ("top" in z.names) == lang.nested


# ----------------------------------------------------------------------------------- automata
@FAST
@given(pfsas(max_states=3), st.data())
def test_deterministic_pfsa_state_matches_paths(m, data):
    s = tuple(data.draw(st.lists(st.sampled_from(m.alphabet), max_size=5)))
    v = latents(m, [s]).values[0]
    for t in range(len(s) + 1):
        post = path_posterior(m, s[:t])
        np.testing.assert_allclose(v["state_posterior"][t], post, atol=1e-12)
        assert v["state"][t] == (int(post.argmax()) if post.sum() > 0 else len(m.states))
        assert post.max() in (0.0, 1.0) or math.isclose(post.max(), 1.0)
        assert v["viable"][t] == (post.sum() > 0)


@FAST
@given(pfsas(max_states=3, deterministic=False), st.data())
def test_pfsa_posterior_matches_paths(m, data):
    s = tuple(data.draw(st.lists(st.sampled_from(m.alphabet), max_size=4)))
    z = latents(m, [s])
    for t in range(len(s) + 1):
        np.testing.assert_allclose(z.values[0]["state_posterior"][t], path_posterior(m, s[:t]),
                                   atol=1e-12)
    assert z.feature("state_posterior").width == len(m.states)


def test_tomita_state_names_and_dead_state():
    lang = fl.load("tomita1")  # 1*: a 0 kills it
    z = latents(lang, ["110"])
    f = z.feature("state")
    assert f.classes[-1] == "dead"
    assert f.classes[z["state"][0][2]] != "dead" and z["state"][0][3] == len(f.classes) - 1


# ----------------------------------------------------------------------------------- errors
def test_unsupported_family_and_bad_input_raise():
    with pytest.raises(FormalLMError, match="not supported yet"):
        latents(fl.load("arith"), ["x"])
    with pytest.raises(FormalLMError):
        latents(fl.load("anbn"), ["abc"])
    with pytest.raises(FormalLMError, match="max_stack"):
        latents(fl.load("dyck2"), ["[]"], max_stack=-1)
    with pytest.raises(FormalLMError, match="is not a latent"):
        latents(fl.load("anbn"), ["ab"]).feature("depth")
    z = rule_latents(fl.load("arith"), ["x+("])
    assert z.names == ("viable", "rule:R1", "rule:R2", "rule:R3")
    assert z["viable"][0].tolist() == [1, 1, 1, 1]
    assert latents(fl.load("anbn"), []).names[:2] == ("viable", "count:a")
