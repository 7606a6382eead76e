"""Fine-tuning case study: the reparametrisation is function-preserving but not a no-op, fine-tuning
starts from the pre-trained parameters and changes them, exact KL, and a tiny end-to-end run."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import formal_lm as fl
from formal_lm.casestudies import (
    ANBNAN_SHORT,
    FitConfig,
    build_model,
    epoch_batches,
    exact_kl,
    fit,
    language_batch,
    load_finetune_spec,
    mean_nll,
    rescale,
    run_finetune_experiment,
)
from formal_lm.casestudies._fit import logits_fn
from formal_lm.training.engine import masked_nll
from formal_lm.errors import FormalLMError

ANBN = fl.load("anbn-short")
MODELS = {"transformer": dict(d_model=8, n_heads=2, d_ff=16, n_layers=1, max_len=64),
          "lstm": dict(d_model=8, hidden=16)}


def _params(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def _batches(seed=0, n=64):
    data = language_batch(ANBN, n, seed=seed, max_length=34)
    return data, epoch_batches(data, 16, seed=seed)


@pytest.mark.parametrize("name", list(MODELS))
def test_rescale_keeps_the_function_but_changes_parameters_gradients_and_training(name):
    model = build_model(name, ANBN.vocab.size, 0, MODELS[name])
    re = rescale(model, 10.0)
    data, batches = _batches()
    x = data[:16]
    # same function at the start ...
    np.testing.assert_allclose(logits_fn(model)(x), logits_fn(re)(x), atol=2e-5)
    # ... but different parameters (not the relu(c x)/c no-op, which changes no parameter)
    assert any(not np.allclose(a, b) for a, b in zip(_params(model), _params(re)))

    # gradients differ: w.r.t. the scaled-up weights they shrink by 1/c
    def grads(m):
        gd, p, rest = nnx.split(m, nnx.Param, ...)

        def loss(p):
            s, n = masked_nll(nnx.merge(gd, p, rest, copy=True)(x[:, :-1]), jnp.asarray(x))
            return s / n
        return jax.grad(loss)(p)

    g0, g1 = grads(model), grads(re)
    if name == "transformer":
        a, b = g0["blocks"][0]["value"]["kernel"][...], g1["blocks"][0]["value"]["kernel"][...]
    else:
        a, b = g0["embed"]["embedding"][...], g1["embed"]["embedding"][...]
    np.testing.assert_allclose(np.asarray(b), np.asarray(a) / 10.0, rtol=1e-3, atol=1e-7)

    # training dynamics differ: same data, same optimiser, different functions after training
    cfg = FitConfig(steps=15, lr=1e-2, log_every=5)
    t0, t1 = fit(model, batches, cfg), fit(re, batches, cfg)
    assert t0.first_loss == pytest.approx(t1.first_loss, abs=1e-5)  # same start
    diff = np.abs(logits_fn(t0.model)(x) - logits_fn(t1.model)(x)).max()
    assert diff > 1e-2
    # control: c = 1 reproduces the unscaled trajectory
    t2 = fit(rescale(model, 1.0), batches, cfg)
    np.testing.assert_allclose(logits_fn(t0.model)(x), logits_fn(t2.model)(x), atol=1e-5)


def test_rescale_rejects_bad_input():
    with pytest.raises(FormalLMError):
        rescale(build_model("lstm", 5, 0, MODELS["lstm"]), 0.0)
    with pytest.raises(FormalLMError):
        rescale(build_model("lru", 5, 0, dict(d_model=8, d_state=8, n_layers=1)), 2.0)


def test_finetuning_starts_from_the_pretrained_parameters_and_changes_them():
    _, pre_batches = _batches(seed=1)
    pre = fit(build_model("transformer", ANBN.vocab.size, 0, MODELS["transformer"]), pre_batches,
              FitConfig(steps=10, lr=1e-2)).model
    before = _params(pre)
    target = fl.loads(ANBNAN_SHORT)
    assert target.alphabet == ANBN.alphabet  # same vocabulary: no new rows needed
    data = language_batch(target, 32, seed=2, max_length=32)
    batches = epoch_batches(data, 8, seed=2)
    zero = fit(pre, batches, FitConfig(steps=0))
    for a, b in zip(before, _params(zero.model)):
        np.testing.assert_array_equal(a, b)  # starts exactly at the pre-trained parameters
    res = fit(pre, batches, FitConfig(steps=5, lr=1e-2, log_every=1))
    # the first step's loss is the pre-trained model's loss on that batch
    assert res.first_loss == pytest.approx(mean_nll(pre, batches(0)), abs=1e-5)
    assert res.curve[0][1] == res.first_loss
    after = _params(res.model)
    assert any(not np.allclose(a, b) for a, b in zip(before, after))  # fine-tuning changed them
    for a, b in zip(before, _params(pre)):
        np.testing.assert_array_equal(a, b)  # and the pre-trained model itself is untouched
    # fresh init is a different starting point
    fresh = fit(build_model("transformer", ANBN.vocab.size, 0, MODELS["transformer"]), batches,
                FitConfig(steps=1))
    assert abs(fresh.first_loss - res.first_loss) > 1e-3


def test_exact_kl_is_nonnegative_and_consistent_with_nll():
    model = build_model("lstm", ANBN.vocab.size, 0, MODELS["lstm"])
    ids = language_batch(ANBN, 32, seed=4, max_length=34)
    kl, nll = exact_kl(model, ANBN, ids)
    assert kl > 0 and nll == pytest.approx(mean_nll(model, ids), rel=1e-5)
    # NLL - KL is the sample estimate of the per-token entropy of the true next-token rows,
    # which is at most log(3) nats (EOS, a, b)
    assert 0 <= nll - kl <= np.log(3) + 1e-6
    for row in ids:
        L = int((row != 0).sum())
        assert ANBN.accepts(tuple(ANBN.vocab.decode(row))) and L <= 34
    # KL from scratch: the per-prefix exact distribution (Language.next_token_dist, not the
    # batched table) against the model's softmax, one position at a time
    lq = logits_fn(model)(ids[:4, :-1])
    total = count = 0.0
    for b, row in enumerate(ids[:4]):
        s = ANBN.vocab.decode(row)
        for t in range(len(s) + 1):
            dist = ANBN.next_token_dist(s[:t])
            total += sum(p * (np.log(p) - lq[b, t, ANBN.vocab.id(sym)])
                         for sym, p in dist.items() if p > 0)
            count += 1
    assert exact_kl(model, ANBN, ids[:4])[0] == pytest.approx(total / count, rel=1e-4)


TINY = """
[experiment]
name = "ft-tiny"
kind = "finetune"
seeds = 2
[pretrain]
language = "anbn-short"
steps = 15
batch_size = 8
max_length = 34
log_every = 5
[finetune]
grammar = '''
name = "anbnan-short"
kind = "counter"
alphabet = ["a", "b"]
blocks = [["a", "n"], ["b", "n"], ["a", "n"]]
[prior.n]
kind = "uniform"
min = 1
max = 6
'''
data_size = 16
steps = 10
batch_size = 8
lr = 1e-3
log_every = 5
max_length = 20
[ood]
grammar = '''
name = "anbnan-longer"
kind = "counter"
alphabet = ["a", "b"]
blocks = [["a", "n"], ["b", "n"], ["a", "n"]]
[prior.n]
kind = "uniform"
min = 7
max = 8
'''
max_length = 26
[models.transformer]
name = "transformer"
d_model = 8
n_heads = 2
d_ff = 16
n_layers = 1
max_len = 40
[models.lstm]
name = "lstm"
d_model = 8
hidden = 16
[groups.transformer]
model = "transformer"
[groups.transformer-x10]
model = "transformer"
rescale = 10.0
[groups.lstm]
model = "lstm"
[analysis]
eval_size = 16
"""


def test_spec_rejects_bad_files(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(TINY.replace('language = "anbn-short"', 'language = "dyck1"')
                 .replace("data_size = 16\n", "").replace("rescale = 10.0", "rescale = -1"))
    with pytest.raises(FormalLMError) as e:
        load_finetune_spec(p)
    msg = str(e.value)
    assert "alphabet" in msg and "finetune.data_size" in msg and "rescale" in msg


def test_tiny_finetune_experiment_end_to_end(tmp_path):
    p = tmp_path / "ft.toml"
    p.write_text(TINY)
    res = run_finetune_experiment(p, tmp_path / "out", progress=False)
    out = tmp_path / "out"
    for f in ("report.md", "results.json", "results.csv", "finetune_curves.png",
              "finetune_scatter.png"):
        assert (out / f).exists(), f
    recs = {(r["group"], r["seed"]): r for r in res["records"]}
    assert len(recs) == 6
    for s in (0, 1):
        a, b = recs[("transformer", s)], recs[("transformer-x10", s)]
        # the reparametrised group has the identical pre-training loss (same function) ...
        assert a["pre_loss"] == pytest.approx(b["pre_loss"], abs=1e-5)
        # ... but ends fine-tuning elsewhere
        assert a["ft_kl"] != pytest.approx(b["ft_kl"], abs=1e-6)
    for r in recs.values():
        assert r["start_loss_gap"] < 1e-4 and r["param_change"] > 0
        assert min(r["pre_kl"], r["ft_kl"], r["ood_kl"], r["retain_kl"]) >= 0
    report = (out / "report.md").read_text()
    assert "## Pre-training loss per group" in report and "Stated tolerance" in report


def test_sign_flip_p_exact():
    from formal_lm.casestudies.experiments import sign_flip_p
    assert sign_flip_p([1.0, 1.0, 1.0]) == pytest.approx(2 / 8)  # all-positive or all-negative
    assert sign_flip_p([1.0, -1.0]) == 1.0


def test_grid_experiment_files_are_not_dispatched(tmp_path):
    from pathlib import Path

    from formal_lm.casestudies import experiment_kind
    from formal_lm.experiments.casestudies import run_case_study
    root = Path(__file__).resolve().parent.parent / "experiments"
    assert experiment_kind(root / "anbn-rule-extrapolation.toml") is None
    assert run_case_study(root / "anbn-rule-extrapolation.toml", tmp_path) is None
    assert experiment_kind(root / "icl-pdfa.toml") == "icl"
    assert experiment_kind(root / "finetune-transfer.toml") == "finetune"


@pytest.mark.parametrize("name", ["icl-pdfa", "finetune-transfer"])
def test_shipped_case_study_files_are_valid(name):
    from pathlib import Path

    from formal_lm.casestudies import load_icl_spec
    path = Path(__file__).resolve().parent.parent / "experiments" / f"{name}.toml"
    spec = (load_icl_spec if name == "icl-pdfa" else load_finetune_spec)(path)
    assert len(spec["seeds"]) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["icl-pdfa", "finetune-transfer"])
def test_shipped_case_study_runs(name, tmp_path):
    from pathlib import Path

    from formal_lm.experiments import run_experiment
    path = Path(__file__).resolve().parent.parent / "experiments" / f"{name}.toml"
    res = run_experiment(path, tmp_path, progress=False)
    assert (tmp_path / "report.md").exists() and res["records"]
