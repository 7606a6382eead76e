"""Supervised tasks on the one training loop: targets other than the next token, token classes
(restricted softmax), class weights, packing of such targets, and a task learnt end to end."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from formal_lm import models
from formal_lm.errors import FormalLMError
from formal_lm.tasks.data import TaskData, one_hot_rows
from formal_lm.tasks.encoding import QUERY, SEP, TaskVocab, answers, encode
from formal_lm.training import fit, losses
from formal_lm.training.config import config_from_dict
from formal_lm.training.packing import pack_classes
from formal_lm.training.programs import Programs
from formal_lm.vocab import BOS_ID, EOS_ID, PAD_ID

V2 = TaskVocab(("0", "1"), ("=0", "=1"))


def test_encoding_layout_by_hand():
    ids, tgt = encode(V2, [(("0", "1", "1"), ("=1", "=1", "=0"))])
    s, q, o0, o1 = (V2.vocab.id(t) for t in (SEP, QUERY, "=0", "=1"))
    assert ids.tolist() == [[BOS_ID, 3, 4, 4, s, q, q, PAD_ID]]
    assert tgt.tolist() == [[0, 0, 0, 0, o1, o1, o0]]
    ids, tgt = encode(V2, [(("1",), ("=0",))], lm=True)
    assert ids.tolist() == [[BOS_ID, 4, s, PAD_ID]]
    assert tgt.tolist() == [[4, EOS_ID, o0]]  # the symbols, EOS, then the answer
    pred = tgt.copy()
    pred[0, -1] = o1
    assert answers(V2, tgt, pred).tolist() == [[False, False, False]]


def test_encoding_errors():
    with pytest.raises(FormalLMError, match="empty output"):
        encode(V2, [(("0",), ())])
    with pytest.raises(FormalLMError, match="not one of"):
        encode(V2, [(("0",), ("0",))])
    with pytest.raises(FormalLMError, match="length=3"):
        encode(V2, [(("0", "1"), ("=0",))], length=3)
    with pytest.raises(FormalLMError, match="listed twice"):
        TaskVocab(("0", "1"), ("1",))


def test_restricted_loss_on_two_labels_is_binary_cross_entropy():
    logits = jax.random.normal(jax.random.key(0), (5, V2.size)) * 3
    tgt = jnp.array([V2.vocab.id("=1")] * 3 + [V2.vocab.id("=0")] * 2)
    got = losses.token_nll(losses.restrict(logits, tgt, jnp.asarray(V2.token_classes())), tgt)
    z = np.asarray(logits[:, V2.vocab.id("=1")] - logits[:, V2.vocab.id("=0")], np.float64)
    y = np.array([1, 1, 1, 0, 0])
    bce = -(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 / (1 + np.exp(z))))
    np.testing.assert_allclose(np.asarray(got), bce, rtol=1e-5)
    # without classes: the softmax runs over every token, and the loss is larger
    assert float(jnp.sum(losses.token_nll(logits, tgt))) > float(jnp.sum(got))


def _config(model="lstm", **train):
    mc = {"name": model, "d_model": 16}
    if model == "transformer":
        mc.update(n_heads=2, d_ff=32, n_layers=1, max_len=64)
    return config_from_dict({"language": None, "steps": 1, "seeds": 1, "batch_size": 8,
                             "model": mc, **train}, require_language=False)


def test_class_weights_give_the_weighted_mean_of_the_class_means():
    """loss = w0 * mean NLL of symbol targets + w1 * mean NLL of answers, against numpy."""
    rec = TaskVocab(("a", "b"), ("reject", "accept"))
    ex = [(("a", "b"), ("accept",)), (("b",), ("reject",)), (("a", "a", "b"), ("accept",))]
    ids, tgt = encode(rec, ex, lm=[True, False, True])
    prog = Programs(_config(), rec.size, rec.token_classes(), (0.3, 1.0))
    params, rest, key, _ = prog._init(0, 1)
    # eval graph: no dropout, so the numpy reference sees the same logits
    from flax import nnx
    model = nnx.merge(prog.graphdef_eval, params, rest)
    logits = np.asarray(model(jnp.asarray(ids[:, :-1])), np.float64)
    cls = rec.token_classes()
    nll = []
    for b, t in zip(*np.nonzero(tgt != PAD_ID)):
        row = logits[b, t][cls == cls[tgt[b, t]]]
        z = logits[b, t, tgt[b, t]]
        nll.append((cls[tgt[b, t]], -(z - np.log(np.exp(row).sum()))))
    mean = {c: np.mean([v for k, v in nll if k == c]) for c in (0, 1)}
    prog.graphdef_train = prog.graphdef_eval
    got, aux = prog._loss(params, rest, (jnp.asarray(ids), jnp.asarray(tgt)), None, key)
    np.testing.assert_allclose(float(got), 0.3 * mean[0] + mean[1], rtol=1e-5)


def test_packing_keeps_every_scored_target_once():
    ex = [(("0",) * n, tuple("=1" for _ in range(m))) for n, m in ((3, 2), (1, 5), (6, 1))]
    ids, tgt = encode(V2, ex)
    parts = pack_classes(ids, 2, targets=tgt)
    packed = sorted(int(t) for p in parts for t in p["tgt"][: int(p["rows"])].ravel() if t)
    assert packed == sorted(int(t) for t in tgt.ravel() if t)
    # each sequence's inputs run to its last scored target: every model input is there
    n_inputs = sum(int((p["seg"][: int(p["rows"])] > 0).sum()) for p in parts)
    assert n_inputs == sum(len(x) + len(y) + 1 for x, y in ex)


def test_packed_loss_equals_the_padded_loss_of_task_targets():
    ex = [(("0", "1") * k, ("=1",) * (k + 1)) for k in range(1, 6)]
    ids, tgt = encode(V2, ex)
    m = models.make("transformer", vocab_size=V2.size, seed=0, d_model=8, n_heads=2, d_ff=16,
                    n_layers=1, max_len=64)
    s, n = losses.target_nll(m(jnp.asarray(ids[:, :-1])), jnp.asarray(tgt))
    s2 = 0.0
    for p in pack_classes(ids, 2, targets=tgt):
        lg = m._packed(jnp.asarray(p["inp"]), jnp.asarray(p["pos"]), jnp.asarray(p["seg"]))
        s2 += float(jnp.sum(losses.token_nll(lg, jnp.asarray(p["tgt"])) * (p["tgt"] != 0)))
    np.testing.assert_allclose(s2, float(s), rtol=1e-5)


def _reverse(seed, count):
    g = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = tuple(g.choice(["0", "1"], int(g.integers(1, 5))))
        out.append((x, tuple("=" + c for c in reversed(x))))
    return out


def test_validation_rows_are_the_answers_so_kl_is_the_loss():
    data = TaskData("reverse", V2, _reverse, 8, 12, eval_size=16)
    v = data.validation()
    assert np.array_equal(v.p_true.sum(-1), (v.targets != PAD_ID).astype(np.float32))
    assert np.array_equal(v.p_true.argmax(-1)[v.targets != PAD_ID], v.targets[v.targets != 0])
    assert one_hot_rows(np.zeros((1, 2), np.int32), 4).sum() == 0
    assert data.floor == 0.0 and data.identity()["validation"] == \
        TaskData("reverse", V2, _reverse, 8, 12, eval_size=16).identity()["validation"]


@pytest.mark.parametrize("model", ["lstm", "transformer"])
def test_a_task_is_learnt_on_the_training_loop(tmp_path, model):
    data = TaskData("reverse", V2, _reverse, 32, 12, eval_size=64)
    cfg = _config(model, steps=250, eval_every=250, batch_size=32, optimizer={"lr": 1e-2})
    r = fit(cfg, data, tmp_path / "run", progress=False)
    line = r.final[0]
    assert line["val_accuracy"] > 0.95, line
    assert abs(line["kl"] - line["val_loss"]) < 1e-4  # one-hot rows: KL is the loss


def test_next_symbol_bce_against_numpy():
    logits = np.asarray(jax.random.normal(jax.random.key(1), (2, 3, 6)), np.float64) * 2
    sets = np.array([[0b000110, 0, 0b101000], [0b000100, 0b011000, 0]], np.int32)
    tokens = np.array([False, False, True, True, True, False])
    s, n = losses.next_symbol_bce(jnp.asarray(logits, jnp.float32), jnp.asarray(sets),
                                  jnp.asarray(tokens))
    want, count = 0.0, 0
    for b in range(2):
        for t in range(3):
            if sets[b, t] == 0:
                continue
            for v in np.flatnonzero(tokens):
                p = 1 / (1 + np.exp(-logits[b, t, v]))
                y = (sets[b, t] >> v) & 1
                want -= np.log(p) if y else np.log(1 - p)
                count += 1
    assert int(n) == count == 12
    np.testing.assert_allclose(float(s), want, rtol=1e-5)


def test_next_symbol_sets_are_the_exact_viable_continuations():
    from formal_lm.grammar_files import load
    from formal_lm.tasks.data import next_symbol_sets
    lang = load("anbn")
    ex = [(("a", "a", "b", "b"), ("accept",)), (("a", "b", "b"), ("reject",))]
    sets = next_symbol_sets(lang, ex, 8)
    assert sets[1].tolist() == [0] * 8  # a non-member gets no next-symbol targets
    a, b = lang.vocab.id("a"), lang.vocab.id("b")
    x = ex[0][0]
    for t in range(len(x) + 1):  # brute force: which tokens keep the prefix viable
        want = 0
        for tok, sym in ((a, "a"), (b, "b")):
            if lang.is_viable(x[:t] + (sym,)):
                want |= 1 << tok
        if lang.accepts(x[:t]):
            want |= 1 << EOS_ID
        assert sets[0, t] == want, t
    assert sets[0, len(x) + 1:].tolist() == [0] * (8 - len(x) - 1)


@pytest.mark.parametrize("model", ["lstm", "transformer"])
def test_a_recognizer_trains_with_the_next_symbol_loss(tmp_path, model):
    from formal_lm.grammar_files import load
    from formal_lm.tasks.draws import recognition_draw
    lang = load("anbn")
    vocab = TaskVocab(lang.alphabet, ("reject", "accept"))
    data = TaskData("rec", vocab, recognition_draw(lang, 2, 8, "both"), 16, 12, eval_size=32,
                    language=lang, next_symbol_weight=0.5)
    cfg = _config(model, steps=30, eval_every=15, optimizer={"lr": 1e-2})
    fit(cfg, data, tmp_path / "run", progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ns = [json.loads(x)["ns_loss"] for x in lines]
    assert len(ns) == 2 and all(np.isfinite(ns)), ns
    assert ns[1] < ns[0], ns  # the next-symbol loss is learnt


def test_packed_step_losses_equal_the_padded_ones_with_next_symbols():
    """The Transformer's packed step reports the same answer loss and next-symbol loss as the
    padded computation on the same parameters (no dropout)."""
    from formal_lm.tasks.draws import recognition_draw
    from formal_lm.grammar_files import load
    from formal_lm.tasks.data import next_symbol_sets
    from formal_lm.training.loop import _Run
    lang = load("anbn")
    vocab = TaskVocab(lang.alphabet, ("reject", "accept"))
    data = TaskData("rec", vocab, recognition_draw(lang, 2, 12, "both"), 8, 16, eval_size=8,
                    language=lang, next_symbol_weight=0.7, lm_weight=0.3)
    run = _Run(_config("transformer"), data, None, None)
    assert run.prog.packed
    params = jax.tree.map(lambda a: a[0], run.params)
    rest = jax.tree.map(lambda a: a[0], run.rest)
    ids, tgt = data.train_ids(0, 0), data.train_targets(0, 0)
    ns = next_symbol_sets(lang, data._last_examples(0, 0), tgt.shape[1])
    assert ns.any()
    _, want = run.prog._loss(params, rest, (jnp.asarray(ids), jnp.asarray(tgt), jnp.asarray(ns)),
                             None, jax.random.key(0))
    run.train_step(0)
    got = jax.device_get(run.acc)
    np.testing.assert_allclose(got["ns_loss"][0], float(want["ns_loss"]), rtol=2e-5)
    np.testing.assert_allclose(got["loss"][0], float(want["loss"]), rtol=2e-5)
    np.testing.assert_allclose(got["loss_per_seq"][0], float(want["loss_per_seq"]), rtol=2e-5)


def test_the_last_answer_is_kept_when_the_bucket_is_tight():
    """A batch whose real tokens fill a bucket exactly still keeps its last answer step."""
    from formal_lm.training.loop import _Run

    def draw(seed, count):  # n = 12, m = 3: BOS x SEP Q Q is 16 real tokens = one bucket
        return [(("0",) * 12, ("=1", "=0", "=1"))] * count

    data = TaskData("t", V2, draw, 4, 17, eval_size=4, bucket=16)
    run = _Run(_config(), data, None, None)
    (batch, _), T = run.batch(0)
    ids, tgt = (np.asarray(a) for a in batch)
    assert T == 17 and ids.shape[-1] == 17
    assert (tgt[0, :, 13:16] == [V2.vocab.id(y) for y in ("=1", "=0", "=1")]).all()
