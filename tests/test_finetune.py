"""Fine-tuning study: the reparametrisation keeps the function but not the training trajectory,
fine-tuning on the one training loop starts from the pre-trained parameters and changes them,
the loop's KL is exact, a tiny experiment end to end, and a run killed with SIGKILL that resumes
bit for bit."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import formal_lm as fl
from formal_lm import models
from formal_lm.analysis import log_softmax, paired_sign_flip_test
from formal_lm.errors import FormalLMError
from formal_lm.experiments import load_experiment, run_experiment
from formal_lm.studies.reparam import RULES, rescale, rescale_params
from formal_lm.training import (DataConfig, LanguageData, TrainConfig, fit, load_models,
                                stacked_params, train)
from formal_lm.training import checkpoint as ckpt
from formal_lm.training.losses import masked_nll

ROOT = Path(__file__).resolve().parents[1]
ANBN = fl.load("anbn-short")
# the model tables of the TOML below: the unit tests then reuse the programs it compiles
MODELS = {"transformer": dict(d_model=8, n_heads=2, d_ff=16, n_layers=1, max_len=34),
          "lstm": dict(d_model=8, hidden=16),
          "rnn": dict(d_model=8, hidden=16)}
DATA = DataConfig(max_length=34, bucket=34, eval_size=16)


def _model(name, seed=0, vocab_size=None, **kw):
    return models.make(name, vocab_size=vocab_size or ANBN.vocab.size, seed=seed,
                       **{**MODELS[name], **kw})


def _params(model) -> dict[str, np.ndarray]:
    return ckpt.flatten(nnx.state(model, nnx.Param))


def _logits(model, ids) -> np.ndarray:
    return np.asarray(model(jnp.asarray(ids, jnp.int32)))


def _stack(*trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _metrics(run_dir) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _batch(n=16, seed=0):
    return ANBN.vocab.batch(ANBN.sample(n, seed=seed), length=34)


class _SameBatches:
    """A TrainingData whose every seed trains on seed 0's batches (so two seeds that start from
    different parameters see the same data): ``fit`` takes any TrainingData."""

    def __init__(self, inner):
        self.inner = inner
        self.vocab_size, self.floor, self.floor_stderr = inner.vocab_size, inner.floor, 0.0
        self.bucket, self.max_tokens = inner.bucket, inner.max_tokens

    def train_ids(self, seed, step):
        return self.inner.train_ids(0, step)

    def ood_batch(self, seed, step):
        return None

    def validation(self):
        return self.inner.validation()

    def identity(self):
        return {"same_batches": self.inner.identity()}

    def files(self):
        return {}


# ----------------------------------------------------------------------------- reparametrisation
@pytest.mark.parametrize("name", ["transformer", "lstm"])
def test_rescale_keeps_the_function_but_changes_parameters_gradients_and_training(name, tmp_path):
    model = _model(name)
    re = rescale(model, 10.0)
    x = _batch()
    # same function at the start ...
    np.testing.assert_allclose(_logits(model, x), _logits(re, x), atol=2e-5)
    # ... but different parameters (not the relu(c x)/c no-op, which changes no parameter)
    a, b = _params(model), _params(re)
    powers = ({"blocks/0/value/kernel": 1, "blocks/0/value/bias": 1, "blocks/0/attn_out/kernel": -1}
              if name == "transformer" else {"embed/embedding": 1, "layers/0/w_in/kernel": -1})
    for k in a:  # exactly c and 1/c on the rule's two layers, nothing else touched
        if k in powers:
            np.testing.assert_allclose(b[k], a[k] * 10.0 ** powers[k], rtol=1e-6)
        else:
            np.testing.assert_array_equal(b[k], a[k])
    assert sum(not np.allclose(a[k], b[k]) for k in powers) >= 2  # (a zero bias stays zero)
    assert all(np.array_equal(a[k], _params(model)[k]) for k in a)  # the original is untouched

    # gradients differ: w.r.t. the scaled-up weights they shrink by 1/c
    def grads(m):
        gd, p, rest = nnx.split(m, nnx.Param, ...)

        def loss(p):
            s, n = masked_nll(nnx.merge(gd, p, rest, copy=True)(x[:, :-1]), jnp.asarray(x))
            return s / n
        return ckpt.flatten(jax.grad(loss)(p))

    g0, g1 = grads(model), grads(re)
    key = "blocks/0/value/kernel" if name == "transformer" else "embed/embedding"
    np.testing.assert_allclose(g1[key], g0[key] / 10.0, rtol=1e-3, atol=1e-7)

    # training dynamics differ: the one training loop, the same batches for both starts (seed 0:
    # the model, seed 1: its reparametrisation), the same optimiser -> different functions
    cfg = TrainConfig(language=None, steps=15, seeds=(0, 1), batch_size=8, lr=1e-2, model=name,
                      model_config=MODELS[name], data=DATA, eval_every=1, checkpoint_every=15)
    data = _SameBatches(LanguageData(ANBN, DATA, 8))
    init = _stack(nnx.state(model, nnx.Param), nnx.state(re, nnx.Param))
    fit(cfg, data, tmp_path / "run", init=init, progress=False)
    first = [m for m in _metrics(tmp_path / "run") if m["step"] == 1]
    assert first[0]["loss"] == pytest.approx(first[1]["loss"], abs=1e-5)  # same start
    m0, m1 = load_models(tmp_path / "run", "last")
    diff = np.abs(_logits(m0, x) - _logits(m1, x)).max()
    assert diff > 1e-2
    # mapped back to the original parametrisation, the trained parameters still differ
    back = _params(rescale(m1, 0.1))
    assert any(not np.allclose(v, back[k], atol=1e-4) for k, v in _params(m0).items())


@pytest.mark.parametrize("name,kw", [("rnn", {}), ("lstm", dict(n_layers=2)),
                                     ("transformer", dict(n_layers=2))])
def test_rescale_keeps_the_function_of_every_rule(name, kw):
    model, x = _model(name, seed=3, **kw), _batch(seed=1)
    for c in (0.1, 7.0):
        np.testing.assert_allclose(_logits(model, x), _logits(rescale(model, c), x), atol=3e-5)
    n_changed = sum(not np.array_equal(v, _params(rescale(model, 7.0))[k])
                    for k, v in _params(model).items())
    assert n_changed == {"rnn": 2, "lstm": 2, "transformer": 4}[name]  # kernels (zero biases stay)


def test_rescale_params_on_any_tree_stacked_or_flat():
    ms = [_model("transformer", seed=s) for s in (0, 1)]
    stacked = _stack(*[nnx.state(m, nnx.Param) for m in ms])
    out = ckpt.flatten(rescale_params(stacked, "transformer", 4.0))
    for k, m in enumerate(ms):  # stacked over seeds: each slice as if rescaled alone
        one = _params(rescale(m, 4.0))
        for p, v in one.items():
            np.testing.assert_array_equal(out[p][k], v)
    # a checkpoint's {path: array} form works too
    flat = ckpt.flatten(stacked)
    again = rescale_params(flat, "transformer", 4.0)
    for p in flat:
        np.testing.assert_array_equal(again[p], out[p])
    # c then 1/c is the identity (the runner maps fine-tuned parameters back this way)
    back = rescale_params(again, "transformer", 0.25)
    for p in flat:
        np.testing.assert_allclose(back[p], flat[p], rtol=1e-6)
    # c = 1 changes nothing, bit for bit
    same = rescale_params(flat, "transformer", 1.0)
    assert all(np.array_equal(same[p], flat[p]) for p in flat)
    assert set(RULES) == {"transformer", "lstm", "rnn"}


def test_rescale_rejects_bad_input():
    for c in (0.0, -1.0, True, "2", float("nan")):
        with pytest.raises(FormalLMError):
            rescale(_model("lstm"), c)
    with pytest.raises(FormalLMError, match="lru"):
        rescale(models.make("lru", vocab_size=5, seed=0, d_model=8, d_state=8, n_layers=1), 2.0)
    with pytest.raises(FormalLMError, match="lack the paths"):
        rescale_params({"embed/embedding": np.ones((3, 2))}, "lstm", 2.0)


def test_paired_sign_flip_test_exact():
    assert paired_sign_flip_test([1.0, 1.0, 1.0]) == pytest.approx(2 / 8)  # all + or all -
    assert paired_sign_flip_test([1.0, -1.0]) == 1.0
    assert paired_sign_flip_test([0.1, 0.2, 0.3]) == pytest.approx(0.25)
    with pytest.raises(FormalLMError):
        paired_sign_flip_test([])


# ----------------------------------------------------------------------------- end to end
OOD = """
name = "anbnan-ood"
kind = "counter"
alphabet = ["a", "b"]
blocks = [["a", "n"], ["b", "n"], ["a", "n"]]
[prior.n]
kind = "uniform"
min = 7
max = 8
"""

TINY = """
[experiment]
name = "ft-tiny"
kind = "finetune"
checkpoint = "best"
eval_seed = 7

[train]
seeds = 2
batch_size = 8
eval_every = 10
checkpoint_every = 20

[train.optimizer]
lr = 1e-2

[train.data]
max_length = 34
bucket = 34
eval_size = 16

[pretrain]
language = "anbn-short"
steps = 40

[finetune]
language = "anbnan-short"
steps = 120

[finetune.data]
mode = "fixed"
dataset_size = 16

[analysis.transfer]
ood_language = "ood.toml"
eval_size = 16

[statistics]
saturation = 10.0   # tiny pre-training is far from saturated: let every seed into the tests

[models.transformer]
name = "transformer"
d_model = 8
n_heads = 2
d_ff = 16
n_layers = 1
max_len = 34

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

[groups.lstm-x4]
model = "lstm"
rescale = 4.0
"""
GROUPS = {"transformer": 1.0, "transformer-x10": 10.0, "lstm": 1.0, "lstm-x4": 4.0}
PAIRS = (("transformer", "transformer-x10"), ("lstm", "lstm-x4"))


def _write(folder: Path, text: str = TINY) -> Path:
    (folder / "ood.toml").write_text(OOD)
    path = folder / "ft.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def ft_run(tmp_path_factory):
    """The tiny experiment run once, uninterrupted: (file, output folder, results, seconds)."""
    root = tmp_path_factory.mktemp("ft")
    path = _write(root)
    t0 = time.perf_counter()
    res = run_experiment(path, root / "out", progress=False)
    return path, root / "out", res, time.perf_counter() - t0


def _measures(res) -> dict:
    return {(r["group"], r["seed"]): {f"{label}.{k}": v for label, x in r["results"].items()
                                      for k, v in x["measures"].items()}
            for r in res["records"]}


def test_tiny_finetune_experiment_end_to_end(ft_run):
    path, out, res, seconds = ft_run
    for f in ("report.md", "results.json", "results.csv", "finetune_curves.png",
              "finetune_scatter.png"):
        assert (out / f).exists(), f
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        ["pretrain.transformer", "pretrain.lstm"] + [f"finetune.{g}" for g in GROUPS])
    ms = _measures(res)
    assert sorted(ms) == sorted((g, s) for g in GROUPS for s in (0, 1))
    for s in (0, 1):
        for a, b in PAIRS:
            # the reparametrised group starts from the identical function ...
            assert ms[a, s]["start.cross_entropy"] == pytest.approx(
                ms[b, s]["start.cross_entropy"], abs=1e-5)
            assert ms[a, s]["start.kl"] == pytest.approx(ms[b, s]["start.kl"], abs=1e-5)
            # ... but ends fine-tuning elsewhere
            assert abs(ms[a, s]["finetuned.kl"] - ms[b, s]["finetuned.kl"]) > 1e-6
    for (g, s), m in ms.items():
        # the start computes the pre-trained function: exactly for c = 1, to float error else
        if GROUPS[g] == 1.0:
            assert m["transfer.start_gap"] == 0.0
        else:
            assert m["transfer.start_gap"] < 1e-5
        assert m["transfer.param_change"] > 0  # fine-tuning moved the parameters
        assert min(m["start.kl"], m["finetuned.kl"], m["ood.kl"], m["retained.kl"]) >= 0
        assert 10 <= m["checkpoint.step"] <= 120  # the best fine-tuning checkpoint
    assert res["languages"] == {"pretrain": "anbn-short", "finetune": "anbnan-short",
                                "ood": "anbnan-ood"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["records"] == res["records"] and saved["kind"] == "finetune"
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 8 and "transfer.param_change" in rows[0]
    report = (out / "report.md").read_text()
    assert "## Every seed" in report and "Paired by seed" in report
    assert "transformer vs transformer-x10" in report and "lstm vs lstm-x4" in report
    print(f"finetune end to end: {seconds:.1f} s")


def test_finetuning_starts_from_the_pretrained_parameters_and_changes_them(ft_run, tmp_path):
    path, out, _, _ = ft_run
    ex = load_experiment(path)
    pre_dir = out / "runs" / "pretrain.transformer"
    pre_file = pre_dir / "checkpoints" / "best.msgpack"
    pre_bytes = pre_file.read_bytes()
    pre = load_models(pre_dir, "best")  # seeds (0, 1)
    init = stacked_params(pre_dir, (1, 0), which="best")  # stacked in the order asked for
    flat = ckpt.flatten(init)
    for slot, seed in enumerate((1, 0)):
        for p, v in _params(pre[seed]).items():
            np.testing.assert_array_equal(flat[p][slot], v)
    with pytest.raises(FormalLMError, match="seeds"):
        stacked_params(pre_dir, (0, 5))

    target = fl.load("anbnan-short")
    assert target.alphabet == ANBN.alphabet  # same vocabulary: no new rows needed
    cfg = dataclasses.replace(ex.train_config("transformer", table=ex.study.finetune,
                                              language="anbnan-short"),
                              seeds=(1, 0), steps=3, eval_every=1, checkpoint_every=1)
    res = train(cfg, tmp_path / "ft", init=init, progress=False)
    first = {m["seed"]: m for m in _metrics(tmp_path / "ft") if m["step"] == 1}
    data = LanguageData(target, cfg.data, cfg.batch_size)
    for seed in (1, 0):
        # the first step's loss is seed's own pre-trained model's loss on that seed's batch
        ids = data.train_ids(seed, 0)
        s, n = masked_nll(pre[seed](jnp.asarray(ids[:, :-1])), jnp.asarray(ids))
        assert first[seed]["loss"] == pytest.approx(float(s / n), abs=1e-5)
    after = load_models(tmp_path / "ft", "last")
    for k, seed in enumerate(res.seeds):
        a, b = _params(pre[seed]), _params(after[k])
        assert any(not np.allclose(a[p], b[p]) for p in a)  # fine-tuning changed them
    assert pre_file.read_bytes() == pre_bytes  # and the pre-trained run itself is untouched
    assert json.loads((tmp_path / "ft" / "run.json").read_text())["init"] is not None
    # a fresh start is another starting point
    train(cfg, tmp_path / "fresh", progress=False)
    fresh = {m["seed"]: m for m in _metrics(tmp_path / "fresh") if m["step"] == 1}
    assert all(abs(fresh[s]["loss"] - first[s]["loss"]) > 1e-3 for s in (0, 1))
    assert json.loads((tmp_path / "fresh" / "run.json").read_text())["init"] is None


def test_validation_kl_of_the_loop_is_exact(ft_run):
    """The loop's validation KL and loss after fine-tuning equal a from-scratch computation from
    the language's per-prefix distributions (``Language.next_token_dist``)."""
    path, out, _, _ = ft_run
    ex = load_experiment(path)
    cfg = ex.train_config("lstm", table=ex.study.finetune, language="anbnan-short")
    lang = fl.load("anbnan-short")
    ids = LanguageData(lang, cfg.data, cfg.batch_size).validation().ids
    run = out / "runs" / "finetune.lstm-x4"
    last = {m["seed"]: m for m in _metrics(run) if m["step"] == 120}
    for k, model in enumerate(load_models(run, "last")):
        lq = log_softmax(_logits(model, ids[:, :-1]).astype(np.float64))
        kl = nll = count = 0.0
        for b, row in enumerate(ids):
            s = lang.vocab.decode(row)
            assert lang.accepts(tuple(s))
            for t in range(len(s) + 1):
                dist = lang.next_token_dist(s[:t])
                kl += sum(p * (math.log(p) - lq[b, t, lang.vocab.id(sym)])
                          for sym, p in dist.items() if p > 0)
                nxt = s[t] if t < len(s) else fl.vocab.EOS
                nll -= lq[b, t, lang.vocab.id(nxt)]
                count += 1
        assert kl / count == pytest.approx(last[k]["kl"], rel=1e-4)
        assert nll / count == pytest.approx(last[k]["val_loss"], rel=1e-4)
        assert last[k]["kl"] > 0


def test_bad_finetune_files_name_every_problem(tmp_path):
    path = _write(tmp_path, TINY.replace('language = "anbn-short"', 'language = "dyck1"')
                  .replace("rescale = 10.0", "rescale = -1").replace('model = "lstm"\n\n',
                                                                     'model = "gru"\n\n')
                  .replace("steps = 120", "steps = 120\nbogus = 1"))
    with pytest.raises(FormalLMError) as e:
        load_experiment(path)
    msg = str(e.value)
    assert "alphabet" in msg and "rescale" in msg and "gru" in msg and "finetune.bogus" in msg


def test_shipped_finetune_file_is_valid():
    ex = load_experiment(ROOT / "experiments" / "finetune-transfer.toml")
    assert ex.kind == "finetune"
    assert ex.study.groups["transformer-x10"] == ("transformer", 10.0)
    for g, (m, _) in ex.study.groups.items():
        assert len(ex.train_config(m, table=ex.study.finetune).seeds) >= 3
    assert fl.load(ex.study.pretrain["language"]).alphabet == \
        fl.load(ex.study.finetune["language"]).alphabet


# ----------------------------------------------------------------------------- resume
def _kill_at_first_checkpoint(args, ckpt_file: Path, log: Path, timeout=180.0) -> int:
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
    assert (a / "run.json").read_text() == (b / "run.json").read_text()
    for which in ("last", "best"):
        ma, ta = ckpt.read(a / "checkpoints" / f"{which}.msgpack")
        mb, tb = ckpt.read(b / "checkpoints" / f"{which}.msgpack")
        assert ma == mb, which
        assert set(ta) == set(tb)
        for name in ta:
            assert set(ta[name]) == set(tb[name]), (which, name)
            for k in ta[name]:
                assert np.array_equal(ta[name][k], tb[name][k]), (which, name, k)


def test_finetune_sigkill_then_resume_matches_uninterrupted(ft_run, tmp_path, capsys):
    _, ref_out, _, _ = ft_run
    path = _write(tmp_path)
    out = tmp_path / "out"
    t0 = time.perf_counter()
    # killed while fine-tuning the reparametrised group (the pre-training runs are finished)
    run_dir = out / "runs" / "finetune.transformer-x10"
    killed_at = _kill_at_first_checkpoint(
        ["-m", "formal_lm.cli", "run", str(path), "--out", str(out)],
        run_dir / "checkpoints" / "last.msgpack", tmp_path / "log.txt")
    assert killed_at < 120, "the run finished before it was killed; make it longer"
    assert not (out / "runs" / "finetune.lstm").exists()
    capsys.readouterr()
    run_experiment(path, out, resume=True, progress=False)
    said = capsys.readouterr().out
    assert "retraining" not in said, said  # resumed, not started over
    for ref in sorted((ref_out / "runs").iterdir()):
        assert_same_run(out / "runs" / ref.name, ref)
    assert (out / "results.csv").read_text() == (ref_out / "results.csv").read_text()
    print(f"finetune resume: killed at step {killed_at}, {time.perf_counter() - t0:.1f} s")


@pytest.mark.slow
def test_shipped_finetune_experiment_runs(tmp_path):
    res = run_experiment(ROOT / "experiments" / "finetune-transfer.toml", tmp_path,
                         progress=False)
    assert (tmp_path / "report.md").exists() and res["records"]
    for r in res["records"]:
        assert r["results"]["transfer"]["measures"]["start_gap"] < 1e-4
