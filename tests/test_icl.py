"""In-context learning case study: data layout, the exact oracle, n-gram baselines, scoring, and a
tiny end-to-end experiment."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from formal_lm.casestudies import (
    PDFAFamily,
    baseline_scores,
    icl_batch,
    load_icl_spec,
    ngram_in_context,
    run_icl_experiment,
    score_predictor,
)
from formal_lm.errors import FormalLMError
from formal_lm.vocab import BOS_ID, EOS, EOS_ID, PAD_ID

FAM = PDFAFamily(n_states=(2, 4), alphabet_size=3, density=0.6, strings_per_sequence=3,
                 max_length=64)


def _segments(fam, ids):
    """Per position t (input token), (string index, prefix of the current string)."""
    inv = {i: s for i, s in enumerate(fam.vocab.tokens)}
    out, k, cur = [], 0, []
    for t, tok in enumerate(ids):
        if tok == PAD_ID or tok == EOS_ID:
            break
        if tok == fam.delimiter_id:
            k, cur = k + 1, []
        elif tok != BOS_ID:
            cur.append(inv[int(tok)])
        out.append((t, k, tuple(cur)))
    return out


def test_layout_and_every_string_is_accepted_by_its_automaton():
    b = icl_batch(FAM, 20, seed=3)
    assert b.ids.shape == (20, 64) and b.oracle.shape == (20, 63, FAM.vocab.size)
    for j in range(20):
        seq = b.ids[j]
        assert seq[0] == BOS_ID
        assert len(b.strings[j]) == FAM.strings_per_sequence
        assert all(b.automata[j].accepts(s) for s in b.strings[j])
        L = int((seq != PAD_ID).sum())
        full = 1 + sum(len(s) + 1 for s in b.strings[j])
        if full <= 64:  # not cut: k-1 delimiters then EOS last
            assert L == full and seq[L - 1] == EOS_ID
            assert (seq == FAM.delimiter_id).sum() == FAM.strings_per_sequence - 1
        else:  # cut: no EOS
            assert L == 64 and EOS_ID not in seq


def test_oracle_matches_the_automatons_own_next_token_dist_and_prefix_probabilities():
    b = icl_batch(FAM, 12, seed=5)
    k_last = FAM.strings_per_sequence - 1
    checked = 0
    for j in range(12):
        pdfa = b.automata[j]
        for t, k, prefix in _segments(FAM, b.ids[j]):
            if t >= 63:
                continue
            row = b.oracle[j, t]
            want = pdfa.next_token_dist(prefix)  # the automaton's own distribution
            for i, a in enumerate(FAM.alphabet):
                assert row[3 + i] == pytest.approx(want[a], abs=1e-12)
                # differential: the same from prefix probabilities
                pa = math.exp(pdfa.prefix_log_prob(prefix + (a,)) - pdfa.prefix_log_prob(prefix))
                assert row[3 + i] == pytest.approx(pa, abs=1e-9)
            halt = row[EOS_ID] if k == k_last else row[FAM.delimiter_id]
            other = row[FAM.delimiter_id] if k == k_last else row[EOS_ID]
            assert halt == pytest.approx(want[EOS], abs=1e-12) and other == 0.0
            assert row[PAD_ID] == row[BOS_ID] == 0.0
            assert row.sum() == pytest.approx(1.0, abs=1e-12)
            assert b.string_index[j, t] == k
            checked += 1
        L = int((b.ids[j] != PAD_ID).sum())
        assert not b.oracle[j, L - 1:].any()  # no rows after the last real input
    assert checked > 100


def test_cutting_does_not_change_the_oracle():
    long = PDFAFamily(**{**FAM.__dict__, "max_length": 400})
    short = PDFAFamily(**{**FAM.__dict__, "max_length": 24})
    a, b = icl_batch(long, 8, seed=1), icl_batch(short, 8, seed=1)
    np.testing.assert_array_equal(a.ids[:, :24] * (b.ids != PAD_ID), b.ids)
    mask = b.ids[:, :-1] != PAD_ID
    np.testing.assert_allclose(a.oracle[:, :23][mask], b.oracle[mask])


def test_ngram_baselines_against_hand_counts():
    # vocab: PAD BOS EOS a b |  (V = 6); outcomes EOS a b | (m = 4); sequence "<s> a b | a ..."
    ids = np.array([[1, 3, 4, 5, 3, 4, 2]])
    k = 1.0
    uni = ngram_in_context(ids, 1, 6, k=k)
    # at t=4 (input "a"), tokens seen after BOS: a b | a -> a:2 b:1 |:1, EOS:0
    np.testing.assert_allclose(uni[0, 4, 2:], np.array([0 + 1, 2 + 1, 1 + 1, 1 + 1]) / (4 + 4))
    np.testing.assert_allclose(uni[0, 0, 2:], np.full(4, 0.25))  # nothing seen yet
    bi = ngram_in_context(ids, 2, 6, k=k)
    # at t=4 (input "a"): earlier events after "a": a->b once
    np.testing.assert_allclose(bi[0, 4, 2:], np.array([1, 1, 2, 1]) / 5)
    # at t=3 (input "|"): no event with context "|" yet
    np.testing.assert_allclose(bi[0, 3, 2:], np.full(4, 0.25))
    tri = ngram_in_context(ids, 3, 6, k=k)
    # at t=5 (context "a b"): events with context (a, b): (a,b)->| once
    np.testing.assert_allclose(tri[0, 5, 2:], np.array([1, 1, 1, 2]) / 5)
    # at t=4 (context "| a"): none yet
    np.testing.assert_allclose(tri[0, 4, 2:], np.full(4, 0.25))
    assert not uni[..., :2].any() and not bi[..., :2].any()
    np.testing.assert_allclose(bi[0].sum(-1), 1.0)


def test_scores_oracle_zero_kl_and_baselines_nonnegative():
    b = icl_batch(FAM, 16, seed=2)
    sc = baseline_scores(b, FAM.vocab.size, position_bins=[0, 8, 16])
    assert sc["oracle"].kl == pytest.approx(0.0, abs=1e-12)
    assert sc["oracle"].valid_mass == pytest.approx(1.0) and sc["oracle"].argmax_valid == 1.0
    for n in ("unigram", "bigram", "trigram"):
        assert sc[n].kl > 0 and sc[n].ce > sc["oracle"].ce
        assert len(sc[n].kl_by_string) == FAM.strings_per_sequence
    with np.errstate(divide="ignore"):
        bi = score_predictor(b, np.log(ngram_in_context(b.ids, 2, FAM.vocab.size)),
                             position_bins=[0], bigram_kl=sc["bigram"].kl)
    assert bi.gap_closed == pytest.approx(0.0, abs=1e-12)
    with np.errstate(divide="ignore"):
        orc = score_predictor(b, np.log(b.oracle), position_bins=[0], bigram_kl=sc["bigram"].kl)
    assert orc.gap_closed == pytest.approx(1.0)


def test_family_validation_gathers_every_problem():
    with pytest.raises(FormalLMError) as e:
        PDFAFamily(n_states=(5, 2), alphabet_size=0, density=2.0)
    msg = str(e.value)
    assert "n_states" in msg and "alphabet_size" in msg and "density" in msg


TINY = """
[experiment]
name = "icl-tiny"
kind = "icl"
seeds = 2
[family]
n_states = [2, 3]
alphabet_size = 3
strings_per_sequence = 3
max_length = 32
[ood_family]
n_states = [5, 6]
[train]
steps = 20
batch_size = 8
pool_size = 64
log_every = 10
[eval]
n = 16
ood_n = 16
position_bins = [0, 8, 16]
[models.transformer]
name = "transformer"
d_model = 8
n_heads = 2
d_ff = 16
n_layers = 1
[models.lstm]
name = "lstm"
d_model = 8
hidden = 16
[models.lru]
name = "lru"
d_model = 8
d_state = 8
n_layers = 1
"""


def test_spec_rejects_unknown_keys(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(TINY.replace("pool_size = 64", "pool_size = 64\nbogus = 1").replace(
        "hidden = 16", "hidden = 16\nwidth = 3"))
    with pytest.raises(FormalLMError) as e:
        load_icl_spec(p)
    assert "train.bogus" in str(e.value) and "models.lstm.width" in str(e.value)


def test_tiny_icl_experiment_end_to_end(tmp_path):
    p = tmp_path / "icl.toml"
    p.write_text(TINY)
    res = run_icl_experiment(p, tmp_path / "out", progress=False)
    out = tmp_path / "out"
    for f in ("report.md", "results.json", "results.csv", "icl_kl_by_string.png",
              "icl_training.png", "icl_scatter.png"):
        assert (out / f).exists(), f
    recs = res["records"]
    assert sorted((r["group"], r["seed"]) for r in recs) == sorted(
        (g, s) for g in ("transformer", "lstm", "lru") for s in (0, 1))
    for r in recs:
        assert r["val_kl"] >= 0 and r["ood_kl"] >= 0 and 0 <= r["val_valid_mass"] <= 1
    report = (out / "report.md").read_text()
    assert "## Exact references" in report and "Finding" in report
    assert json.loads((out / "results.json").read_text())["seeds"] == [0, 1]


def test_runner_dispatches_case_study_files(tmp_path):
    from formal_lm.experiments import run_experiment
    p = tmp_path / "icl.toml"
    p.write_text(TINY.replace("seeds = 2", "seeds = 1").replace("steps = 20", "steps = 2")
                 .replace('[models.lstm]\nname = "lstm"\nd_model = 8\nhidden = 16\n', "")
                 .replace('[models.lru]\nname = "lru"\nd_model = 8\nd_state = 8\nn_layers = 1\n',
                          ""))
    res = run_experiment(p, tmp_path / "out", progress=False)
    assert res["experiment"]["kind"] == "icl" and (tmp_path / "out" / "report.md").exists()
    with pytest.raises(FormalLMError):
        run_experiment(p, tmp_path / "out2", full=True, progress=False)
