"""Supervised tasks on the one training loop: targets other than the next token, token classes
(restricted softmax), class weights, packing of such targets, and a task learnt end to end."""
from __future__ import annotations

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
    cfg = _config(model, steps=250, eval_every=250, optimizer={"lr": 1e-2})
    cfg = config_from_dict({**cfg.to_dict(), "batch_size": 32}, require_language=False)
    r = fit(cfg, data, tmp_path / "run", progress=False)
    line = r.final[0]
    assert line["val_accuracy"] > 0.95, line
    assert abs(line["kl"] - line["val_loss"]) < 1e-4  # one-hot rows: KL is the loss
