"""The training loop: K seeds together, determinism, checkpoints, resume, stale runs,
divergence, starting from given parameters, data other than a language."""
from __future__ import annotations

import json
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

import formal_lm as fl
from formal_lm.analysis import as_predictor
from formal_lm.errors import FormalLMError
from formal_lm.training import (DataConfig, ObjectiveConfig, TrainConfig, Validation, fit,
                                load_checkpoint, load_models, stacked_params, train)
from formal_lm.training import checkpoint as ckpt
from formal_lm.training import data as tdata
from formal_lm.training.loop import RunChanged

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = dict(d_model=8, n_heads=2, d_ff=16, n_layers=1)


def tiny_lang(hi: int = 4):
    return fl.CounterLanguage("anbn-tiny", [fl.Block("a", 1, "n"), fl.Block("b", 1, "n")],
                              {"n": fl.Uniform(1, hi)})


def tiny_config(**kw):
    base = dict(language=tiny_lang(), steps=20, seeds=(0, 1, 2), batch_size=8, lr=1e-2,
                eval_every=10, checkpoint_every=10, model_config=TINY_MODEL,
                data=DataConfig(max_length=16, bucket=8, eval_size=32))
    base.update(kw)
    return TrainConfig(**base)


def metrics(run_dir) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    d = tmp_path_factory.mktemp("run3")
    return train(tiny_config(), d, progress=False), d


def test_metrics_lines(run3):
    res, d = run3
    lines = metrics(d)
    assert [(m["step"], m["seed"]) for m in lines] == [(s, k) for s in (10, 20) for k in (0, 1, 2)]
    for m in lines:
        assert {"loss", "val_loss", "kl", "optimal_loss", "loss_per_seq"} <= set(m)
        assert m["kl"] >= -1e-6
        assert m["val_loss"] >= m["optimal_loss"] - 0.05
    assert res.final == lines[-3:] and res.step == 20


def test_one_seed_alone_matches_the_batch(run3, tmp_path):
    _, d = run3
    train(tiny_config(seeds=(1,)), tmp_path, progress=False)
    together = [m for m in metrics(d) if m["seed"] == 1]
    for a, b in zip(metrics(tmp_path), together, strict=True):
        for key in ("loss", "val_loss", "kl"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)


def test_loss_per_seq_uses_this_configs_batch_size(tmp_path):
    """Two configs that differ only in batch size, trained in one process: each one's
    loss_per_seq is its loss sum over its own batch size (one step, so exactly
    loss * real targets / B)."""
    for B in (8, 4):
        cfg = tiny_config(seeds=(0,), steps=1, eval_every=1, batch_size=B, lr=0.0321)
        train(cfg, tmp_path / str(B), progress=False)
        m, = metrics(tmp_path / str(B))
        strings = tdata.Strings(cfg.language, cfg.data, 0, B).strings(0)
        n_targets = sum(len(x) + 1 for x in strings)  # symbols and EOS
        assert m["loss_per_seq"] == pytest.approx(m["loss"] * n_targets / B, rel=1e-5)


def test_same_seed_same_metrics_file(run3, tmp_path):
    _, d = run3
    train(tiny_config(), tmp_path, progress=False)
    assert (tmp_path / "metrics.jsonl").read_text() == (d / "metrics.jsonl").read_text()


def test_refuses_to_overwrite_a_run(run3):
    _, d = run3
    with pytest.raises(FormalLMError, match="resume"):
        train(tiny_config(), d, progress=False)


def test_compiles_once_per_bucket(tmp_path):
    lang = fl.load("anbn-short")  # lengths up to 32 symbols
    cfg = tiny_config(language=lang, steps=12, seeds=(0,), batch_size=2, eval_every=12,
                      lr=0.0123,  # a signature no other test compiled
                      data=DataConfig(max_length=16, bucket=8, eval_size=8))
    res = train(cfg, tmp_path, progress=False)
    assert len(res.buckets) > 1  # several lengths were seen ...
    assert res.compiles == len(res.buckets)  # ... and each compiled exactly once


def test_load_models_and_predictor(run3):
    res, d = run3
    models = load_models(d, "best")
    assert len(models) == 3
    ids = jnp.array([[1, 3, 4, 2]], jnp.int32)
    # jitted vs op-by-op: float tolerance (small logits need an absolute one)
    np.testing.assert_allclose(as_predictor(d, seed=2)(ids), models[2](ids), rtol=1e-6,
                               atol=1e-6)
    last, meta = load_checkpoint(res.last_checkpoint)
    assert meta["step"] == 20 and meta["seeds"] == [0, 1, 2]
    # best per seed is the step of its lowest val_loss
    for k, s in enumerate(res.seeds):
        lines = [m for m in metrics(d) if m["seed"] == s]
        assert res.best[k]["step"] == min(lines, key=lambda m: m["val_loss"])["step"]
    with pytest.raises(FormalLMError):
        load_models(d, "worst")


def test_extrapolation_objective_and_split_export(tmp_path):
    cfg = tiny_config(language=fl.load("anbn-short"), steps=10, seeds=(0,), eval_every=10,
                      objective=ObjectiveConfig(name="extrapolation", batch_size=4),
                      data=DataConfig(max_length=40, bucket=40, eval_size=16))
    res = train(cfg, tmp_path, progress=False)
    split = json.loads((tmp_path / "ood_split.json").read_text())
    assert len(split["train"]) == 125 and len(split["heldout"]) == 126
    assert {"ood_loss", "ood_heldout_loss"} <= set(res.final[0])


def test_sgd_lstm_fixed_data(tmp_path):
    cfg = tiny_config(model="lstm", model_config=dict(d_model=8, hidden=8), optimizer="sgd",
                      lr=0.1, schedule="cosine", warmup_steps=3, seeds=(0, 1), steps=10,
                      data=DataConfig(mode="fixed", per_length=1, lo=2, hi=8, max_length=12,
                                      eval_size=16))
    res = train(cfg, tmp_path, progress=False)
    assert all(np.isfinite(m["loss"]) for m in res.final)


# ----------------------------------------------------------------------------- kill + resume
KILL_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from test_loop import tiny_config
from formal_lm.training import train
train(tiny_config(steps={steps}, checkpoint_every=5, eval_every=5), sys.argv[1],
      resume=len(sys.argv) > 2, progress=False)
"""


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    steps = 400
    ref = train(tiny_config(steps=steps, checkpoint_every=5, eval_every=5), tmp_path / "ref",
                progress=False)
    run = tmp_path / "killed"
    script = KILL_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), steps=steps)
    proc = subprocess.Popen([sys.executable, "-c", script, str(run)],
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    last = run / "checkpoints" / "last.msgpack"
    deadline = time.time() + 120
    try:
        while not last.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert last.exists()
    killed_at = ckpt.read(last)[0]["step"]
    assert killed_at < steps, "the run finished before it was killed; make it longer"
    res = train(tiny_config(steps=steps, checkpoint_every=5, eval_every=5), run, resume=True,
                progress=False)
    assert (run / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()
    for which in ("last", "best"):
        a = ckpt.read(run / "checkpoints" / f"{which}.msgpack")[1]["params"]
        b = ckpt.read(tmp_path / "ref" / "checkpoints" / f"{which}.msgpack")[1]["params"]
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])  # bit for bit, as the README says
    assert res.final == ref.final


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoints_are_keyed_by_parameter_path(run3):
    res, _ = run3
    meta, trees = ckpt.read(res.last_checkpoint)
    assert {"params", "opt_state", "acc", "best_params", "rest"} == set(trees)
    assert "blocks/0/query/kernel" in trees["params"]
    assert trees["params"]["blocks/0/query/kernel"].shape[0] == 3  # stacked over the seeds
    # restoring does not depend on the order the arrays come in
    models = load_models(res.run_dir, "last")
    graph_params = jax.tree.leaves(jax.tree.map(lambda *x: jnp.stack(x),
                                                *[fl_params(m) for m in models]))
    shuffled = dict(reversed(list(trees["params"].items())))
    again = ckpt.restore(stacked_params(res.run_dir, res.seeds, "last"), shuffled)
    for a, b in zip(graph_params, jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def fl_params(model):
    from flax import nnx
    return nnx.state(model, nnx.Param)


def test_damaged_checkpoints_are_clear_errors(run3, tmp_path):
    res, _ = run3
    raw = res.last_checkpoint.read_bytes()
    cases = {"flipped": bytearray(raw), "truncated": raw[: len(raw) // 2], "random": b"\x93xyz",
             "empty": b""}
    cases["flipped"][len(raw) // 2] ^= 1
    for name, data in cases.items():
        p = tmp_path / f"{name}.msgpack"
        p.write_bytes(bytes(data))
        with pytest.raises(FormalLMError, match="damaged") as e:
            ckpt.read(p)
        assert str(p) in str(e.value) and "delete it" in str(e.value)


def test_an_old_format_checkpoint_says_what_to_do(tmp_path):
    from flax import serialization
    p = tmp_path / "old.msgpack"
    p.write_bytes(serialization.msgpack_serialize({"format": "formal_lm.training/1",
                                                   "meta": "{}", "trees": {}}))
    with pytest.raises(FormalLMError, match="old format") as e:
        ckpt.read(p)
    assert "retrain" in str(e.value)


def test_interrupted_writes_leave_no_temporary_files(tmp_path):
    cfg = tiny_config(steps=2, eval_every=2, seeds=(0,))
    (tmp_path / "checkpoints").mkdir(parents=True)
    stale = tmp_path / "checkpoints" / ".last.msgpack.tmp12345"
    stale.write_bytes(b"half")
    train(cfg, tmp_path, progress=False)
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.msgpack",
                                                                            "last.msgpack"]


# ----------------------------------------------------------------------------- run identity
def test_resume_refuses_a_changed_language_or_config(tmp_path):
    train(tiny_config(steps=10, seeds=(0,)), tmp_path, progress=False)
    with pytest.raises(RunChanged, match="data"):
        train(tiny_config(steps=10, seeds=(0,), language=tiny_lang(hi=5)), tmp_path,
              resume=True, progress=False)
    with pytest.raises(RunChanged, match="config"):
        train(tiny_config(steps=10, seeds=(0,), lr=0.5), tmp_path, resume=True, progress=False)
    ident = json.loads((tmp_path / "run.json").read_text())
    assert ident["config"]["optimizer"]["lr"] == 1e-2 and ident["init"] is None


# ----------------------------------------------------------------------------- divergence
def test_divergence_stops_the_run_with_strict_json_and_no_best(tmp_path):
    cfg = tiny_config(steps=10, eval_every=5, seeds=(0,), lr=1e30, grad_clip=0.0,
                      optimizer="sgd", b1=0.0)
    with pytest.raises(FormalLMError, match="diverged"):
        train(cfg, tmp_path, progress=False)

    def no_constants(name):
        raise AssertionError(f"{name} in metrics.jsonl is not JSON")

    lines = [json.loads(x, parse_constant=no_constants)
             for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines and lines[-1]["val_loss"] is None
    assert not (tmp_path / "checkpoints" / "best.msgpack").exists()


# ----------------------------------------------------------------------------- fit
def test_fit_starts_from_given_parameters(run3, tmp_path):
    res, d = run3
    init = stacked_params(d, res.seeds, "best")
    # SGD with a learning rate of 1e-30: one step leaves the parameters where they started
    cfg = tiny_config(steps=1, eval_every=1, optimizer="sgd", b1=0.0, lr=1e-30, grad_clip=0.0)
    out = train(cfg, tmp_path, init=init, progress=False)
    for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(stacked_params(tmp_path, res.seeds,
                                                                          "last"))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ident = json.loads((tmp_path / "run.json").read_text())
    assert ident["init"] is not None
    # the same start, judged by the validation loss of the source run's best checkpoint
    for k in range(3):
        assert out.final[k]["val_loss"] == pytest.approx(res.best[k]["val_loss"], rel=1e-5)


class FixedIds:
    """A TrainingData that is not a language: fixed token rows, no exact reference."""

    vocab_size, floor, floor_stderr, bucket, max_tokens = 5, None, 0.0, 8, 8

    def __init__(self):
        self.ids = np.array([[1, 3, 4, 2, 0, 0], [1, 3, 3, 4, 4, 2]] * 4, np.int32)

    def train_ids(self, seed, step):
        return self.ids

    def ood_batch(self, seed, step):
        return None

    def validation(self):
        return Validation(self.ids, None)

    def identity(self):
        return {"kind": "fixed"}

    def files(self):
        return {}


def test_fit_on_data_that_is_not_a_language(tmp_path):
    cfg = TrainConfig(language=None, steps=30, seeds=(0, 1), model="lstm", lr=0.05,
                      model_config=dict(d_model=8, hidden=8), eval_every=30)
    res = fit(cfg, FixedIds(), tmp_path, progress=False)
    assert res.optimal_loss is None
    for m in res.final:
        assert "kl" not in m and "optimal_loss" not in m
        assert m["val_loss"] < np.log(3)  # learned something about 'ab' vs 'aabb'


# ----------------------------------------------------------------------------- one writer
def test_a_second_writer_is_refused_and_a_dead_owner_does_not_block(tmp_path):
    from formal_lm.training.lock import hold
    run = tmp_path / "run"
    script = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); "
              "from formal_lm.training.lock import hold; "
              f"cm = hold({str(run)!r}); cm.__enter__(); print('held', flush=True); "
              "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(FormalLMError, match=f"in use by process {proc.pid}"):
            train(tiny_config(steps=2, eval_every=2, seeds=(0,)), run, progress=False)
        with pytest.raises(FormalLMError, match="in use"):
            with hold(run):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the owner died without unlocking: its lock file is left behind but binds nobody
    assert (run / ".lock").read_text() == str(proc.pid)
    train(tiny_config(steps=2, eval_every=2, seeds=(0,)), run, progress=False)
    assert not list(run.glob("metrics.jsonl.*"))


def test_an_unwritable_run_directory_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FormalLMError, match="cannot write to the run directory"):
        train(tiny_config(steps=2, eval_every=2, seeds=(0,)), tmp_path / "file", progress=False)


def test_resuming_a_finished_run_without_its_metrics_file(run3, tmp_path):
    res, d = run3
    import shutil
    shutil.copytree(d, tmp_path / "copy")
    (tmp_path / "copy" / "metrics.jsonl").unlink()
    again = train(tiny_config(), tmp_path / "copy", resume=True, progress=False)
    assert again.final == res.final and again.best == res.best and again.step == 20


def test_resuming_on_another_device_layout_is_refused(tmp_path):
    """A checkpoint records its device layout; another layout would not end bit for bit where
    an uninterrupted run would, so the resume says so instead of going on."""
    cfg = tiny_config(steps=2, eval_every=2, seeds=(0,))
    train(cfg, tmp_path, progress=False)
    meta, trees = ckpt.read(tmp_path / "checkpoints" / "last.msgpack")
    assert meta["devices"] == {"devices": 1, "seeds": 1, "rows": 1}
    meta["devices"] = {"devices": 2, "seeds": 1, "rows": 2}
    ckpt.save_arrays(tmp_path / "checkpoints" / "last.msgpack", meta, trees)
    with pytest.raises(FormalLMError, match="device layout") as e:
        train(cfg, tmp_path, resume=True, progress=False)
    assert "--cpu-devices 2" in str(e.value)


# ----------------------------------------------------------------------------- stopping
def test_saturation_aware_stopping_freezes_seeds_and_ends_the_run(tmp_path):
    """With stopping.kl, a seed whose validation KL stays below it for `patience` evaluations
    is frozen (its parameters no longer move), and the run ends when every seed is frozen."""
    from formal_lm.training.config import StopConfig
    kl = 0.05
    cfg = tiny_config(steps=400, eval_every=10, checkpoint_every=50, lr=3e-2,
                      stopping=StopConfig(kl=kl, patience=2))
    res = train(cfg, tmp_path, progress=False)
    lines = metrics(tmp_path)
    assert all(s is not None for s in res.saturated_at) and res.step < 400
    assert res.step == max(res.saturated_at)
    for k, seed in enumerate(cfg.seeds):
        mine = [m for m in lines if m["seed"] == seed]
        at = res.saturated_at[k]
        # the first evaluation that completes `patience` in a row below kl
        below = [m["step"] for m in mine if m["kl"] < kl]
        firsts = [s for s in below if s - cfg.eval_every in below]
        assert at == firsts[0]
        after = [m for m in mine if m["step"] >= at]
        assert len({m["val_loss"] for m in after}) == 1  # frozen: the same model after
    # resuming a finished stopped run changes nothing; the config records the stopping rule
    again = train(cfg, tmp_path, resume=True, progress=False)
    assert again.saturated_at == res.saturated_at and again.step == res.step
    assert json.loads((tmp_path / "run.json").read_text())["config"]["stopping"]["kl"] == kl


def test_stopping_needs_an_exact_reference(tmp_path):
    from formal_lm.training.config import StopConfig
    cfg = TrainConfig(language=None, steps=4, seeds=(0,), model="lstm", eval_every=2,
                      model_config=dict(d_model=8, hidden=8), stopping=StopConfig(kl=0.01))
    with pytest.raises(FormalLMError, match="exact reference"):
        fit(cfg, FixedIds(), tmp_path, progress=False)
