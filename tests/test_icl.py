"""In-context learning study: data layout, the exact oracle, n-gram baselines, scoring, the
training data (``ICLData``) of the one training loop, a tiny experiment end to end, and a run
killed with SIGKILL that resumes bit for bit."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from formal_lm.analysis import measures as M
from formal_lm.errors import FormalLMError
from formal_lm.experiments import load_experiment, run_experiment
from formal_lm.experiments import report as R
from formal_lm.seeding import SHARED, Stream, derive, rng
from formal_lm.studies.icl import (
    ICLBatch,
    ICLData,
    PDFAFamily,
    icl_batch,
    icl_training_pool,
    ngram_in_context,
    oracle_table,
)
from formal_lm.studies.icl_scores import ICLScores, baseline_scores, reference, score_predictor
from formal_lm.training import checkpoint as ckpt
from formal_lm.training import fit, load_models
from formal_lm.training.data import EpochOrder
from formal_lm.vocab import BOS_ID, EOS, EOS_ID, PAD_ID

ROOT = Path(__file__).resolve().parents[1]
FAM = PDFAFamily(n_states=(2, 4), alphabet_size=3, density=0.6, strings_per_sequence=3,
                 max_length=64)


def _segments(fam, ids):
    """Per position t (input token), (t, string index, prefix of the current string)."""
    inv = dict(enumerate(fam.vocab.tokens))
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


def _decode_strings(fam, row) -> list[tuple[str, ...]]:
    """The strings of one (possibly cut) sequence, split at the delimiter."""
    inv = dict(enumerate(fam.vocab.tokens))
    out, cur = [], []
    for tok in row[1:]:
        if tok in (PAD_ID, EOS_ID):
            break
        if tok == fam.delimiter_id:
            out.append(tuple(cur))
            cur = []
        else:
            cur.append(inv[int(tok)])
    out.append(tuple(cur))
    return out


def _walk(pdfa, prefix) -> dict:
    """Brute force: follow the automaton's own arcs (its transition tensor) from the start
    state along ``prefix``; the next-token distribution is that state's outgoing mass."""
    state = int(np.argmax(pdfa.init))
    for a in prefix:
        nxt = np.flatnonzero(pdfa.T[pdfa.alphabet.index(a), state])
        assert len(nxt) == 1, "a PDFA has one successor per (state, symbol)"
        state = int(nxt[0])
    out = {a: float(pdfa.T[i, state].sum()) for i, a in enumerate(pdfa.alphabet)}
    out[EOS] = float(pdfa.rho[state])
    return out


# ----------------------------------------------------------------------------- layout, oracle
def test_layout_and_every_string_is_accepted_by_its_automaton():
    b = icl_batch(FAM, 20, seed=3)
    assert b.ids.shape == (20, 64) and b.oracle.shape == (20, 63, FAM.vocab.size)
    assert b.ids.dtype == np.int32 and b.string_index.shape == (20, 63)
    for j in range(20):
        seq = b.ids[j]
        assert seq[0] == BOS_ID
        assert len(b.strings[j]) == FAM.strings_per_sequence
        assert all(b.automata[j].accepts(s) for s in b.strings[j])
        L = int((seq != PAD_ID).sum())
        assert (seq[:L] != PAD_ID).all() and not seq[L:].any()  # right-padded
        full = 1 + sum(len(s) + 1 for s in b.strings[j])
        if full <= 64:  # not cut: k-1 delimiters then EOS last
            assert L == full and seq[L - 1] == EOS_ID
            assert (seq == FAM.delimiter_id).sum() == FAM.strings_per_sequence - 1
        else:  # cut: no EOS
            assert L == 64 and EOS_ID not in seq


def test_sequence_j_draws_from_its_own_stream():
    """Sequence j of a set drawn with ``seed`` takes its automaton from rng(seed, ICL_TASK, j):
    a set is the concatenation of its parts, and ``start`` shifts the index."""
    a = icl_batch(FAM, 6, seed=11)
    b = icl_batch(FAM, 2, seed=11, start=4)
    np.testing.assert_array_equal(a.ids[4:], b.ids)
    np.testing.assert_array_equal(a.oracle[4:], b.oracle)
    for j in range(6):
        pdfa = FAM.automaton(rng(11, Stream.ICL_TASK, j))
        np.testing.assert_array_equal(pdfa.T, a.automata[j].T)
        np.testing.assert_array_equal(pdfa.rho, a.automata[j].rho)
    np.testing.assert_array_equal(icl_training_pool(FAM, 6, seed=11), a.ids)
    assert not np.array_equal(icl_batch(FAM, 6, seed=12).ids, a.ids)


def test_oracle_matches_brute_force_and_the_automatons_own_probabilities():
    b = icl_batch(FAM, 12, seed=5)
    k_last = FAM.strings_per_sequence - 1
    checked = 0
    for j in range(12):
        pdfa = b.automata[j]
        assert pdfa.deterministic
        for t, k, prefix in _segments(FAM, b.ids[j]):
            if t >= 63:
                continue
            row = b.oracle[j, t]
            hand = _walk(pdfa, prefix)  # brute force from the transition tensor
            want = pdfa.next_token_dist(prefix)  # the automaton's own distribution
            for i, a in enumerate(FAM.alphabet):
                assert row[3 + i] == pytest.approx(hand[a], abs=1e-12)
                assert row[3 + i] == pytest.approx(want[a], abs=1e-12)
                # differential: the same from prefix probabilities
                pa = math.exp(pdfa.prefix_log_prob(prefix + (a,)) - pdfa.prefix_log_prob(prefix))
                assert row[3 + i] == pytest.approx(pa, abs=1e-9)
            halt = row[EOS_ID] if k == k_last else row[FAM.delimiter_id]
            other = row[FAM.delimiter_id] if k == k_last else row[EOS_ID]
            assert halt == pytest.approx(hand[EOS], abs=1e-12)
            assert halt == pytest.approx(want[EOS], abs=1e-12) and other == 0.0
            # the halting mass is P(string = prefix) / P(prefix ...)
            stop = math.exp(pdfa.log_prob(prefix) - pdfa.prefix_log_prob(prefix))
            assert halt == pytest.approx(stop, abs=1e-9)
            assert row[PAD_ID] == row[BOS_ID] == 0.0
            assert row.sum() == pytest.approx(1.0, abs=1e-12)
            assert b.string_index[j, t] == k
            checked += 1
        L = int((b.ids[j] != PAD_ID).sum())
        assert not b.oracle[j, L - 1:].any()  # no rows after the last real input
        # the observed next token always has positive oracle probability
        tgt = b.ids[j, 1:L]
        assert (b.oracle[j, np.arange(L - 1), tgt] > 0).all()
    assert checked > 100


def test_oracle_table_is_the_batch_oracle_of_an_uncut_sequence():
    long = dataclasses.replace(FAM, max_length=400)
    b = icl_batch(long, 6, seed=8)
    for j in range(6):
        tab, which = oracle_table(long, b.automata[j], b.strings[j])
        L = int((b.ids[j] != PAD_ID).sum())
        assert L == 1 + sum(len(s) + 1 for s in b.strings[j]) and b.ids[j, L - 1] == EOS_ID
        assert tab.shape == (L - 1, long.vocab.size) and which.shape == (L - 1,)
        np.testing.assert_array_equal(b.oracle[j, :L - 1], tab)
        np.testing.assert_array_equal(b.string_index[j, :L - 1], which)
        np.testing.assert_allclose(tab.sum(-1), 1.0, atol=1e-12)


def test_cutting_does_not_change_the_oracle():
    long = dataclasses.replace(FAM, max_length=400)
    short = dataclasses.replace(FAM, max_length=24)
    a, b = icl_batch(long, 8, seed=1), icl_batch(short, 8, seed=1)
    assert (b.ids[:, -1] != PAD_ID).any(), "no sequence was cut; lower max_length"
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
    # the counts come from this sequence only: another row in the batch changes nothing
    two = ngram_in_context(np.array([[1, 3, 4, 5, 3, 4, 2], [1, 4, 4, 4, 4, 2, 0]]), 2, 6, k=k)
    np.testing.assert_array_equal(two[0], bi[0])


# ----------------------------------------------------------------------------- scoring
def _bigram_predictor(V):
    """A predictor (ids -> log-probabilities [B, T, V]) of the in-context bigram, from ids alone."""
    def fn(ids):
        ids = np.asarray(ids)
        ext = np.concatenate([ids, np.zeros((len(ids), 1), ids.dtype)], 1)
        return np.log(np.maximum(ngram_in_context(ext, 2, V), 1e-300))
    return fn


def _oracle_predictor(batch: ICLBatch):
    """A predictor that looks each row up in ``batch`` and returns its exact oracle."""
    T, V = batch.ids.shape[1], batch.oracle.shape[-1]
    rows = {batch.ids[j].tobytes(): j for j in range(len(batch.ids))}

    def fn(ids):
        ids = np.asarray(ids, np.int32)
        out = np.zeros(ids.shape + (V,))
        for b, row in enumerate(ids):
            j = rows.get(np.ascontiguousarray(row[:T]).tobytes())
            if j is not None:
                out[b, :T - 1] = np.log(np.maximum(batch.oracle[j], 1e-300))
        return out
    return fn


def _rows_predictor(batch, rows):
    """A predictor that looks each row of ``batch`` up and returns ``rows`` [N, T-1, V]."""
    T, V = batch.ids.shape[1], rows.shape[-1]
    index = {batch.ids[j].tobytes(): j for j in range(len(batch.ids))}

    def fn(ids):
        ids = np.asarray(ids, np.int32)
        out = np.zeros(ids.shape + (V,))
        for b, row in enumerate(ids):
            j = index.get(np.ascontiguousarray(row[:T]).tobytes())
            if j is not None:
                out[b, :T - 1] = np.log(np.maximum(rows[j], 1e-300))
        return out
    return fn


def test_scores_references_and_baselines():
    b = icl_batch(FAM, 16, seed=2)
    V = FAM.vocab.size
    ref = reference("heldout", FAM, b)  # estimated rows (their exactness: test_icl_bayes.py)
    sc = baseline_scores(ref, V, position_bins=[0, 8, 16])
    assert set(sc) == {"bayes", "oracle", "unigram", "bigram", "trigram"}
    assert sc["bayes"].kl_bayes == pytest.approx(0.0, abs=1e-9)
    assert sc["oracle"].kl_oracle == pytest.approx(0.0, abs=1e-12)
    assert sc["oracle"].valid_mass == pytest.approx(1.0) and sc["oracle"].argmax_valid == 1.0
    assert sc["bayes"].kl_oracle > 0  # no in-context learner reaches the oracle
    # the oracle gives no mass to symbols the Bayes predictor still allows: infinitely far
    assert sc["oracle"].kl_bayes == np.inf
    assert all(s.set_name == "heldout" and s.gap_closed is None for s in sc.values())
    for n in ("unigram", "bigram", "trigram"):
        assert sc[n].kl_bayes > 0 and sc[n].kl_oracle > 0 and sc[n].ce > sc["oracle"].ce
        assert len(sc[n].kl_by_string) == FAM.strings_per_sequence
        assert len(sc[n].kl_by_position) == 3
    assert sc["bigram"].kl_bayes == pytest.approx(ref.bigram_kl, rel=1e-9)
    bins = [0]
    bi = score_predictor(_bigram_predictor(V), ref, position_bins=bins)
    assert bi.kl_bayes == pytest.approx(ref.bigram_kl, rel=1e-9)
    assert bi.gap_closed == pytest.approx(0.0, abs=1e-9)
    best = score_predictor(_rows_predictor(b, ref.bayes.rows), ref, position_bins=bins)
    assert best.kl_bayes == pytest.approx(0.0, abs=1e-9) and best.gap_closed == pytest.approx(1.0)
    assert best.ce == pytest.approx(sc["bayes"].ce, abs=1e-9)
    orc = score_predictor(_oracle_predictor(b), ref, position_bins=bins)
    assert orc.kl_oracle == pytest.approx(0.0, abs=1e-9)
    assert orc.ce == pytest.approx(sc["oracle"].ce, abs=1e-9)


def test_scores_measures_name_scope_and_values():
    b = icl_batch(FAM, 8, seed=4)
    for set_name, scope in (("heldout", M.IN_DISTRIBUTION), ("larger", M.OUT_OF_DISTRIBUTION)):
        ref = reference(set_name, FAM, b)
        s = baseline_scores(ref, FAM.vocab.size, position_bins=[0, 8])["unigram"]
        ms = {m.name: m for m in s.measures()}
        assert set(ms) == {"ce", "kl_bayes", "gap_closed", "kl_oracle", "valid_mass",
                           "argmax_valid", "kl_first_string", "kl_last_string"}
        assert {m.scope for m in ms.values()} == {scope}
        assert ms["kl_bayes"].tested == (set_name == "larger")  # OOD behaviour is what differs
        assert ms["kl_bayes"].value == s.kl_bayes and ms["ce"].value == s.ce
        assert ms["kl_first_string"].value == s.kl_by_string[0]
        assert ms["kl_last_string"].value == s.kl_by_string[-1]
        assert ms["gap_closed"].value is None  # a baseline is not compared to itself


def test_report_interval_of_a_negative_gap_contains_its_mean():
    scores = [ICLScores("heldout", 1.0, 0.5, 0.0, 0.9, g, 0.9, 0.9, (0.5,), (0.5,))
              for g in (-0.41, -0.40)]
    m = {m.name: m for m in scores[0].measures()}["gap_closed"]
    text = R.fmt_summary([s.gap_closed for s in scores], m.percent)
    nums = [float(x) for x in re.findall(r"-?\d+\.?\d*", text)]
    mean, lo, hi = nums[0], nums[-2], nums[-1]
    assert lo <= mean <= hi, text


def test_family_validation_gathers_every_problem():
    with pytest.raises(FormalLMError) as e:
        PDFAFamily(n_states=(5, 2), alphabet_size=0, density=2.0, stop_prob=(0.5, 0.1),
                   strings_per_sequence=0, max_length=2)
    msg = str(e.value)
    for key in ("n_states", "alphabet_size", "density", "stop_prob", "strings_per_sequence",
                "max_length"):
        assert key in msg


def test_automaton_is_a_function_of_the_generator():
    a = FAM.automaton(np.random.default_rng(5))
    b = FAM.automaton(np.random.default_rng(5))
    np.testing.assert_array_equal(a.T, b.T)
    assert FAM.n_states[0] <= len(a.states) <= FAM.n_states[1]
    assert a.alphabet == FAM.alphabet and a.deterministic


# ----------------------------------------------------------------------------- training data
def test_epoch_order_every_item_once_per_epoch_and_pure():
    n, B, steps = 7, 3, 14  # 42 slots = 6 epochs; batches straddle epoch boundaries
    order = EpochOrder(n, seed=4)
    flat = np.concatenate([order.indices(t, B) for t in range(steps)])
    for e in range(len(flat) // n):
        block = flat[e * n:(e + 1) * n]
        assert sorted(block.tolist()) == list(range(n))
        # the documented draw: derive(seed, stream, -2, epoch)
        np.testing.assert_array_equal(block, rng(4, Stream.TRAIN, -2, e).permutation(n))
    assert len({tuple(flat[e * n:(e + 1) * n]) for e in range(6)}) > 1  # reshuffled per epoch
    # a pure function of (seed, step): a fresh instance asked in another order agrees
    fresh = EpochOrder(n, seed=4)
    for t in [13, 0, 7, 7, 2, 12, 1]:
        np.testing.assert_array_equal(fresh.indices(t, B), flat[t * B:(t + 1) * B])
    assert not np.array_equal(EpochOrder(n, seed=5).indices(0, n), flat[:n])
    assert not np.array_equal(EpochOrder(n, 4, Stream.FINETUNE).indices(0, n), flat[:n])
    # a batch larger than the data set wraps around epochs too
    big = EpochOrder(3, seed=1).indices(0, 7)
    assert sorted(big[:3].tolist()) == sorted(big[3:6].tolist()) == [0, 1, 2]


def _data(**kw):
    fam = dataclasses.replace(FAM, max_length=32)
    base = dict(batch_size=4, pool_size=10, eval_size=12, bucket=8, eval_seed=3)
    return ICLData(fam, **{**base, **kw})


def test_icl_train_ids_are_a_pure_function_of_seed_and_step():
    a, b = _data(), _data()
    want = {(s, t): a.train_ids(s, t) for s in (0, 1) for t in range(6)}
    for s, t in [(1, 5), (0, 3), (1, 0), (0, 5), (0, 0), (1, 3), (1, 5)]:  # another order
        np.testing.assert_array_equal(b.train_ids(s, t), want[s, t])
    for (s, t), x in want.items():  # asking again after the others gives the same batch
        np.testing.assert_array_equal(a.train_ids(s, t), x)
        assert x.shape == (4, 32) and x.dtype == np.int32
    assert not np.array_equal(want[0, 0], want[1, 0])  # each seed has its own pool and order
    assert a.ood_batch(0, 0) is None and a.floor is None
    assert a.vocab_size == FAM.vocab.size and a.max_tokens == 32 and a.bucket == 8


def test_icl_every_pool_item_once_per_epoch():
    d = _data()  # pool 10, batch 4: epochs end inside steps 2 and 4
    for seed in (0, 2):
        pool = icl_batch(d.family, d.pool_size, seed=seed).ids  # sequence j: (seed, ICL_TASK, j)
        flat = np.concatenate([d.train_ids(seed, t) for t in range(5)])  # 20 rows = 2 epochs
        for e in range(2):
            got = sorted(r.tobytes() for r in flat[e * 10:(e + 1) * 10])
            assert got == sorted(r.tobytes() for r in pool)
        idx = np.concatenate([EpochOrder(10, seed).indices(t, 4) for t in range(5)])
        np.testing.assert_array_equal(flat, pool[idx])


def test_icl_validation_is_the_exact_oracle_of_held_out_sequences():
    d = _data()
    v = d.validation()
    fam = d.family
    assert v.ids.shape == (12, 32) and v.p_true.shape == (12, 31, fam.vocab.size)
    assert v.p_true.dtype == np.float32 and v.ood is None
    assert d.validation() is v  # computed once
    real = v.ids[:, 1:] != PAD_ID
    np.testing.assert_allclose(v.p_true.sum(-1)[real], 1.0, atol=1e-6)
    assert not v.p_true[~real].any()
    # the observed next token is always possible
    tgt_p = np.take_along_axis(v.p_true, v.ids[:, 1:, None].astype(np.int64), -1)[..., 0]
    assert (tgt_p[real] > 0).all()
    # row j is sequence j of the set drawn with derive(eval_seed, ICL_EVAL, 0): its own
    # automaton, and p_true equals oracle_table of the strings it holds (cut or not)
    vseed = derive(3, Stream.ICL_EVAL, 0)
    k = fam.strings_per_sequence
    for j in range(12):
        pdfa = fam.automaton(rng(vseed, Stream.ICL_TASK, j))
        strings = _decode_strings(fam, v.ids[j])
        assert all(pdfa.is_viable(s) for s in strings)
        strings += [()] * (k - len(strings))  # strings cut away: rows past the end unused
        tab, _ = oracle_table(fam, pdfa, strings)
        L = int((v.ids[j] != PAD_ID).sum())
        np.testing.assert_allclose(v.p_true[j, :L - 1], tab[:L - 1], rtol=1e-6, atol=1e-7)
    # held out: not the training pool of any seed
    pools = {r.tobytes() for s in range(4) for r in icl_training_pool(fam, 10, seed=s)}
    assert not pools & {r.tobytes() for r in v.ids}
    # the eval seed chooses the set; the training seeds do not
    assert not np.array_equal(_data(eval_seed=SHARED).validation().ids, v.ids)


def test_icl_identity_names_what_defines_the_data():
    a, b = _data(), _data()
    assert a.identity() == b.identity()
    json.dumps(a.identity())  # JSON-able: it is stored in run.json and every checkpoint
    for change in (dict(pool_size=11), dict(batch_size=5), dict(eval_seed=4),
                   dict(eval_size=13)):
        assert _data(**change).identity() != a.identity(), change
    assert a.files() == {}


def test_icl_identity_survives_the_json_round_trip_of_a_checkpoint():
    ident = _data().identity()
    assert json.loads(json.dumps(ident)) == ident


# ----------------------------------------------------------------------------- end to end
TINY = """
[experiment]
name = "icl-tiny"
kind = "icl"
checkpoint = "last"
eval_seed = 7

[family]
n_states = [2, 3]
alphabet_size = 3
strings_per_sequence = 3

[ood_family]
n_states = [5, 6]

[train]
steps = 120
seeds = 2
batch_size = 8
eval_every = 10
checkpoint_every = 20

[train.optimizer]
lr = 1e-2

[train.data]
mode = "fixed"
dataset_size = 24
max_length = 32
bucket = 32
eval_size = 16

[analysis.icl]
ood_size = 16
position_bins = [0, 8, 16]

[models.transformer]
name = "transformer"
d_model = 8
n_heads = 2
d_ff = 16
n_layers = 1
max_len = 32

[models.lstm]
name = "lstm"
d_model = 8
hidden = 16
"""
GROUPS = ("transformer", "lstm")


@pytest.fixture(scope="module")
def icl_run(tmp_path_factory):
    """The tiny experiment run once, uninterrupted: (file, output folder, results)."""
    root = tmp_path_factory.mktemp("icl")
    path = root / "icl.toml"
    path.write_text(TINY)
    t0 = time.perf_counter()
    res = run_experiment(path, root / "out", progress=False)
    return path, root / "out", res, time.perf_counter() - t0


def test_tiny_icl_experiment_end_to_end(icl_run):
    path, out, res, seconds = icl_run
    for f in ("report.md", "results.json", "results.csv", "icl_kl_by_string.png",
              "icl_training.png", "icl_scatter.png"):
        assert (out / f).exists(), f
    assert res["kind"] == "icl" and res["checkpoint"] == "last"
    recs = res["records"]
    assert sorted((r["group"], r["seed"]) for r in recs) == sorted(
        (g, s) for g in GROUPS for s in (0, 1))
    for r in recs:
        m = {label: x["measures"] for label, x in r["results"].items()}
        assert set(m) == {"checkpoint", "heldout", "larger"}
        assert m["checkpoint"]["step"] == 120  # the last checkpoint
        for s in ("heldout", "larger"):
            assert m[s]["kl_bayes"] >= 0 and 0 <= m[s]["valid_mass"] <= 1
            assert m[s]["gap_closed"] <= 1 and m[s]["ce"] > m[s]["kl_bayes"]
            assert m[s]["kl_oracle"] > m[s]["kl_bayes"]  # the oracle is further than Bayes
    refs = res["references"]
    for s in ("heldout", "larger"):
        assert refs[s]["oracle"]["kl_oracle"] == pytest.approx(0.0, abs=1e-12)
        assert refs[s]["bayes"]["kl_bayes"] == pytest.approx(0.0, abs=1e-9)
        assert refs[s]["bigram"]["kl_bayes"] > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["records"] == recs and saved["experiment"] == "icl-tiny"
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("group,seed,")
    assert "heldout.kl_bayes" in rows[0] and "larger.kl_bayes" in rows[0]
    report = (out / "report.md").read_text()
    assert "## References" in report and "## Every seed" in report
    assert "Bayes-optimal" in report
    # the regime: heldout KL to the Bayes-optimal predictor (the family's floor) below 0.01
    inside = sorted([r["group"], r["seed"]] for r in recs
                    if r["results"]["heldout"]["measures"]["kl_bayes"] < 0.01)
    assert sorted(saved["regime"]["in_regime"]) == inside
    assert saved["regime"]["metric"] == "heldout.kl_bayes"
    assert "## Regime: saturated seeds only" in report
    if len(inside) < 4:  # a tiny run: too few seeds in the regime for any claim
        assert saved["statistics"] is None and "**Finding.**" not in report
    assert all((out / "runs" / g / "checkpoints" / "last.msgpack").exists() for g in GROUPS)
    print(f"icl end to end: {seconds:.1f} s")


def test_icl_validation_kl_of_the_loop_is_the_oracle_kl(icl_run):
    """The loop's validation KL (float32, on ICLData.validation()) is score_predictor's KL to the oracle of the
    same model against the oracle of the same sequences."""
    path, out, res, _ = icl_run
    ex = load_experiment(path)
    batch = icl_batch(ex.study.family, 16, seed=derive(ex.eval_seed, Stream.ICL_EVAL, 0))
    lines = [json.loads(x) for x in (out / "runs" / "lstm" / "metrics.jsonl").read_text()
             .splitlines()]
    last = {m["seed"]: m for m in lines if m["step"] == 120}
    rec = {r["seed"]: r for r in res["records"] if r["group"] == "lstm"}
    ref = reference("validation", ex.study.family, batch)
    for k, model in enumerate(load_models(out / "runs" / "lstm", "last")):
        s = score_predictor(model, ref, position_bins=[0])
        assert s.kl_oracle == pytest.approx(last[k]["kl"], rel=1e-4)
        assert s.ce == pytest.approx(last[k]["val_loss"], rel=1e-4)
        assert rec[k]["results"]["checkpoint"]["measures"]["val_kl"] == last[k]["kl"]


def test_bad_icl_files_name_every_problem(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(TINY.replace("batch_size = 8", "batch_size = 8\nbogus = 1")
                 .replace('mode = "fixed"\n', "").replace("alphabet_size = 3",
                                                           "alphabet_size = 3\ncolour = 1"))
    with pytest.raises(FormalLMError) as e:
        load_experiment(p)
    msg = str(e.value)
    assert "train.bogus" in msg and "family.colour" in msg and "mode = 'fixed'" in msg
    p.write_text(TINY.replace("hidden = 16", "hidden = 16\nwidth = 3"))
    with pytest.raises(FormalLMError, match="width"):
        load_experiment(p)
    ok = tmp_path / "ok.toml"
    ok.write_text(TINY)
    with pytest.raises(FormalLMError, match="full"):  # no [full] table in this file
        run_experiment(ok, tmp_path / "out", full=True, progress=False)
    assert not (tmp_path / "out" / "runs").exists()  # refused before training anything


def test_shipped_icl_file_is_valid():
    ex = load_experiment(ROOT / "experiments" / "icl-pdfa.toml")
    assert ex.kind == "icl" and set(ex.models) == {"transformer", "lstm", "lru"}
    for m in ex.models:
        cfg = ex.train_config(m)
        assert len(cfg.seeds) >= 3 and cfg.data.mode == "fixed"
    assert ex.study.family.max_length == ex.study.ood_family.max_length
    assert ex.study.ood_family.n_states[0] > ex.study.family.n_states[1]


# ----------------------------------------------------------------------------- resume
def _kill_at_first_checkpoint(args, ckpt_file: Path, log: Path, timeout=120.0) -> int:
    """Starts ``python args...``, SIGKILLs it once ``ckpt_file`` exists; returns its step."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, *args], env=env, stdout=f, stderr=f)
        deadline = time.time() + timeout
        try:
            while not ckpt_file.exists() and time.time() < deadline and proc.poll() is None:
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert ckpt_file.exists(), log.read_text()[-3000:]
    return ckpt.read(ckpt_file)[0]["step"]


def assert_same_run(a: Path, b: Path) -> None:
    """Two run directories hold the same run: metrics line for line, every checkpoint array
    bit for bit, the same checkpoint metadata."""
    assert (a / "metrics.jsonl").read_text().splitlines() == \
        (b / "metrics.jsonl").read_text().splitlines()
    for which in ("last", "best"):
        ma, ta = ckpt.read(a / "checkpoints" / f"{which}.msgpack")
        mb, tb = ckpt.read(b / "checkpoints" / f"{which}.msgpack")
        assert ma == mb, which
        assert set(ta) == set(tb)
        for name in ta:
            assert set(ta[name]) == set(tb[name]), (which, name)
            for k in ta[name]:
                assert np.array_equal(ta[name][k], tb[name][k]), (which, name, k)


def test_icl_sigkill_then_resume_matches_uninterrupted(icl_run, tmp_path):
    path, ref_out, _, _ = icl_run
    out = tmp_path / "out"
    run_dir = out / "runs" / "transformer"
    t0 = time.perf_counter()
    killed_at = _kill_at_first_checkpoint(
        ["-m", "formal_lm.cli", "run", str(path), "--out", str(out)],
        run_dir / "checkpoints" / "last.msgpack", tmp_path / "log.txt")
    assert killed_at < 120, "the run finished before it was killed; make it longer"
    assert not (out / "runs" / "lstm" / "checkpoints" / "last.msgpack").exists()
    # resume the killed run on the loop, with the data the runner builds
    ex = load_experiment(path)
    cfg = ex.train_config("transformer")
    d = cfg.data
    data = ICLData(ex.study.family, batch_size=cfg.batch_size, pool_size=d.dataset_size,
                   eval_size=d.eval_size, bucket=d.bucket, eval_seed=ex.eval_seed)
    res = fit(cfg, data, run_dir, resume=True, progress=False)
    assert res.step == 120
    assert_same_run(run_dir, ref_out / "runs" / "transformer")
    print(f"icl resume: killed at step {killed_at}, {time.perf_counter() - t0:.1f} s")


def test_icl_experiment_rerun_does_not_retrain_finished_runs(icl_run, tmp_path, capsys):
    path, ref_out, _, _ = icl_run
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    last = out / "runs" / "transformer" / "checkpoints" / "last.msgpack"
    before = last.stat().st_mtime_ns
    capsys.readouterr()
    run_experiment(path, out, resume=True, progress=False)
    said = capsys.readouterr().out
    assert "retraining" not in said, said
    assert last.stat().st_mtime_ns == before


@pytest.mark.slow
def test_shipped_icl_experiment_runs(tmp_path):
    res = run_experiment(ROOT / "experiments" / "icl-pdfa.toml", tmp_path, progress=False)
    assert (tmp_path / "report.md").exists() and len(res["records"]) == 9
