"""Training: configs, losses, packing, data streams, objectives, the vmapped step."""
from __future__ import annotations

import dataclasses
import json
import math
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import formal_lm as fl
from formal_lm.errors import FormalLMError
from formal_lm.seeding import Stream
from formal_lm.training import DataConfig, ObjectiveConfig, TrainConfig, load_config, train
from formal_lm.training import data as tdata
from formal_lm.training import losses, objectives, optim, packing, programs
from formal_lm.training.loop import _Run

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = dict(d_model=8, n_heads=2, d_ff=16, n_layers=1)


def tiny_lang():
    return fl.CounterLanguage("anbn-tiny", [fl.Block("a", 1, "n"), fl.Block("b", 1, "n")],
                              {"n": fl.Uniform(1, 4)})


def tiny_config(**kw):
    base = dict(language=tiny_lang(), steps=20, seeds=(0, 1, 2), batch_size=8, lr=1e-2,
                eval_every=10, checkpoint_every=10, model_config=TINY_MODEL,
                data=DataConfig(max_length=16, bucket=8, eval_size=32))
    base.update(kw)
    return TrainConfig(**base)


def metrics(run_dir) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- configs
def write(tmp_path, text) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(textwrap.dedent(text))
    return p


def test_load_config_roundtrip(tmp_path):
    p = write(tmp_path, """
        language = "anbn"
        steps = 100
        seeds = 4
        [model]
        name = "lstm"
        hidden = 16
        [optimizer]
        name = "sgd"
        lr = 0.1
        schedule = "cosine"
        warmup_steps = 10
        [data]
        mode = "fixed"
        per_length = 1
        lo = 2
        hi = 20
        max_length = 32
        [objective]
        name = "extrapolation"
        weight = 0.5
        """)
    cfg = load_config(p)
    assert cfg.seeds == (0, 1, 2, 3) and cfg.model == "lstm" and cfg.model_config == {"hidden": 16}
    assert cfg.optimizer == "sgd" and cfg.schedule == "cosine" and cfg.data.per_length == 1
    assert cfg.objective == ObjectiveConfig(name="extrapolation", weight=0.5)
    from formal_lm.training.config import config_from_dict
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("text, needle", [
    ('language="anbn"\nsteps=1\nstepz=3\n', "'stepz'"),
    ('language="anbn"\nsteps=1\n[optimizer]\nnmae="sgd"\n', "optimizer.nmae"),
    ('language="anbn"\nsteps=1\n[model]\nd_modle=3\n', "model.d_modle"),
    ('language="anbn"\nsteps=1\n[data]\nlo=3\n', "data.lo is unused"),
    ('language="anbn"\nsteps=1\n[objective]\nweight=3.0\n', "objective.weight is unused"),
    ('language="anbn"\nsteps=1\n[optimizer]\nname="adam"\n', "adamw"),
    ('language="anbn"\nsteps=1\n[optimizer]\nschedule="exp"\n', "cosine"),
    ('language="anbn"\nsteps=1\n[data]\nmode="stream"\n', "length_range"),
    ('language="anbn"\nsteps=0\n', "steps=0"),
])
def test_load_config_errors_name_key_and_file(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(FormalLMError) as e:
        load_config(p)
    assert needle in str(e.value) and str(p) in str(e.value)


def test_config_gathers_every_problem():
    with pytest.raises(FormalLMError) as e:
        TrainConfig(language="anbn", steps=-1, lr=-1.0, optimizer="adam")
    assert len(e.value.problems) == 3


# ----------------------------------------------------------------------------- losses
def test_masked_nll_counts_eos_not_pad():
    ids = jnp.array([[1, 3, 4, 2, 0, 0]])
    V = 5
    logits = jnp.zeros((1, 5, V))  # uniform: every real target costs log V
    s, n = losses.masked_nll(logits, ids)
    assert int(n) == 3  # a, b, EOS
    np.testing.assert_allclose(float(s), 3 * np.log(V), rtol=1e-6)


def test_packing_keeps_every_target_and_the_loss():
    """packing.pack: every real target once, positions restart per sequence, and the PAD-masked
    loss of the packed rows equals masked_nll of the padded batch (same model, eval mode)."""
    from formal_lm.models import make

    lang = fl.load("anbn-short")
    ids = lang.vocab.batch(lang.sample(24, seed=3), length=40)  # [24, 40], right-padded
    p = packing.pack(ids)
    real = ids[:, 1:] != 0
    assert (p["tgt"] != 0).sum() == real.sum()
    assert 0 < int(p["rows"]) < len(ids) and not p["seg"][int(p["rows"]):].any()
    starts = (p["pos"] == 0) & (p["seg"] > 0)
    assert starts.sum() == len(ids)  # one segment per sequence
    assert (p["inp"][starts] == 1).all()  # each starts with BOS at position 0
    model = make("transformer", vocab_size=lang.vocab.size, seed=0, **TINY_MODEL, max_len=40)
    s, n = losses.masked_nll(model(jnp.asarray(ids[:, :-1])), jnp.asarray(ids))
    logits = model._packed(jnp.asarray(p["inp"]), jnp.asarray(p["pos"]), jnp.asarray(p["seg"]))
    s2 = jnp.sum(losses.token_nll(logits, jnp.asarray(p["tgt"])) * (p["tgt"] != 0))
    assert int(n) == int((p["tgt"] != 0).sum())
    np.testing.assert_allclose(float(s2), float(s), rtol=1e-5)


def test_pack_classes_keeps_every_target_and_the_loss():
    """packing.pack_classes: rows of several lengths; every real target once, each sequence in a
    row at least as long, one segment per sequence, and the PAD-masked loss summed over all row
    lengths equals masked_nll of the padded batch (same model, eval mode)."""
    from formal_lm.models import make

    lang = fl.load("anbn-short")
    ids = lang.vocab.batch(lang.sample(24, seed=3), length=40)  # [24, 40], right-padded
    lengths = packing.row_lengths(40, 5)
    assert lengths[0] == 39 and len(lengths) == 5 and list(lengths) == sorted(lengths)[::-1]
    for fill in (True, False):
        parts = packing.pack_classes(ids, 5, fill=fill)
        assert [p["inp"].shape for p in parts] == [(24, L) for L in lengths]
        assert sum(int((p["tgt"] != 0).sum()) for p in parts) == int((ids[:, 1:] != 0).sum())
        assert sum(int(((p["pos"] == 0) & (p["seg"] > 0)).sum()) for p in parts) == len(ids)
        for p in parts:
            assert not p["seg"][int(p["rows"]):].any()
        model = make("transformer", vocab_size=lang.vocab.size, seed=0, **TINY_MODEL, max_len=40)
        s, n = losses.masked_nll(model(jnp.asarray(ids[:, :-1])), jnp.asarray(ids))
        s2 = sum(float(jnp.sum(losses.token_nll(model._packed(
            jnp.asarray(p["inp"]), jnp.asarray(p["pos"]), jnp.asarray(p["seg"])),
            jnp.asarray(p["tgt"])) * (p["tgt"] != 0))) for p in parts)
        np.testing.assert_allclose(s2, float(s), rtol=1e-5)
    # one class is packing.pack's layout
    one, = packing.pack_classes(ids, 1)
    for k, v in packing.pack(ids).items():
        np.testing.assert_array_equal(one[k], v)


@pytest.mark.parametrize("shards,block", [(1, 1), (2, 1), (2, 4), (3, 2), (4, 4)])
def test_deal_rows_splits_every_row_once_in_blocks(shards, block):
    """packing.deal_rows: each used row lands in exactly one slice, unchanged; a slice's used rows
    come first; whole blocks are dealt round robin, so slice counts differ by at most a block.
    Checked on a typical batch and on one whose every row is used (one sequence per row)."""
    lang = fl.load("anbn-short")
    typical = lang.vocab.batch(lang.sample(40, seed=5), length=40)
    every_row = lang.vocab.batch(lang.sample(10, seed=1, length=30), length=40)
    for ids in (typical, every_row):
        part = packing.pack(ids)
        used = int(part["rows"])
        dealt, = packing.deal_rows([part], shards, block)
        C = dealt["inp"].shape[0] // shards
        assert dealt["inp"].shape == (shards * C, 39) and C >= -(-len(ids) // shards)
        assert dealt["rows"].sum() == used and (dealt["rows"] <= C).all()
        assert dealt["rows"].max() - dealt["rows"].min() <= block
        got = []
        for j, n in enumerate(dealt["rows"]):
            assert not dealt["seg"][j * C + int(n):(j + 1) * C].any()  # the rest is empty
            got += [tuple(tuple(dealt[k][i]) for k in ("inp", "tgt", "pos", "seg"))
                    for i in range(j * C, j * C + int(n))]
        want = [tuple(tuple(part[k][i]) for k in ("inp", "tgt", "pos", "seg"))
                for i in range(used)]
        assert sorted(got) == sorted(want)
        if shards == 1:
            assert got == want
    assert int(packing.pack(every_row)["rows"]) == len(every_row)
    # several row lengths: every row once, and the slices' work (rows x L^2) within one block's
    parts = packing.pack_classes(typical, 5)
    dealt = packing.deal_rows(parts, shards, block)
    assert [d["rows"].sum() for d in dealt] == [int(p["rows"]) for p in parts]
    work = sum(d["rows"] * d["inp"].shape[1] ** 2 for d in dealt)
    assert work.max() - work.min() <= block * parts[0]["inp"].shape[1] ** 2


@pytest.mark.parametrize("one_at_a_time", [True, False])
def test_packed_step_matches_unpacked_gradient(one_at_a_time, monkeypatch):
    """One step of the packed engine (micro-batched, while loop) equals a plain full-batch
    step on the padded batch (dropout off), with the seeds vmapped or run one at a time."""
    import optax
    from flax import nnx

    monkeypatch.setattr(programs, "SEEDS_ONE_AT_A_TIME", one_at_a_time)
    monkeypatch.setattr(programs, "_PROGRAMS", {})  # trace afresh with this setting

    lang = fl.load("anbn-short")
    # plain SGD, lr 1: the update is the gradient itself (Adam would amplify float noise
    # where a gradient is ~0 into +-lr)
    cfg = tiny_config(language=lang, seeds=(0, 1), batch_size=6, lr=1.0, optimizer="sgd",
                      b1=0.0, warmup_steps=0, weight_decay=0.0, grad_clip=0.0,
                      data=DataConfig(max_length=40, bucket=8, eval_size=8))
    eng = _Run(cfg, tdata.LanguageData(lang, cfg.data, cfg.batch_size), None, None)
    assert eng.prog.packed
    ids = np.stack([lang.vocab.batch(lang.sample(6, seed=s), length=40) for s in (1, 2)])
    params, _, acc = eng.step_fn(eng.params, eng.opt_state, eng.zero_acc(), eng.rest,
                                 eng.prepare(ids), None, eng.keys, eng.active(), np.int32(0))
    prog = eng.prog

    def plain(p, rest, opt, x):
        model = nnx.merge(prog.graphdef_eval, p, rest, copy=True)
        s, n = losses.masked_nll(model(x[:, :-1]), x)
        return s / n

    for k in range(2):
        p_k, r_k, o_k = (jax.tree.map(lambda a: a[k], t)
                         for t in (eng.params, eng.rest, eng.opt_state))
        loss, g = jax.value_and_grad(plain)(p_k, r_k, o_k, jnp.asarray(ids[k]))
        upd, _ = prog.tx.update(g, o_k, p_k)
        want = optax.apply_updates(p_k, upd)
        np.testing.assert_allclose(float(acc["loss"][k]), float(loss), rtol=1e-5)
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(params)):
            np.testing.assert_allclose(np.asarray(b[k]), np.asarray(a), atol=1e-5)


def test_kl_zero_for_the_true_distribution_and_positive_otherwise():
    lang = tiny_lang()
    ids = lang.vocab.batch(lang.sample(16, seed=0), length=12)
    p = lang.next_token_probs(ids)[:, :-1]
    exact = jnp.log(jnp.maximum(jnp.asarray(p, jnp.float32), 1e-30))
    assert abs(float(losses.kl_sum(p, exact))) < 1e-5
    assert float(losses.kl_sum(p, jnp.zeros(p.shape))) > 0.1


def test_schedule_warmup_then_decay():
    cfg = tiny_config(steps=100, warmup_steps=10, schedule="linear", lr=1.0)
    s = optim.make_schedule(cfg)
    assert float(s(0)) == 0.0 and abs(float(s(10)) - 1.0) < 1e-6 and float(s(100)) < 1e-6


# ----------------------------------------------------------------------------- data
def test_data_streams_are_stateless_and_seeded():
    lang, cfg = tiny_lang(), DataConfig(max_length=16)
    a = tdata.Strings(lang, cfg, 0, 32).strings(5)
    assert a == tdata.Strings(lang, cfg, 0, 32).strings(5)
    assert a != tdata.Strings(lang, cfg, 1, 32).strings(5)
    assert a != tdata.Strings(lang, cfg, 0, 32).strings(6)


def test_validation_set_is_not_the_training_set():
    lang = fl.load("anbn-short")
    cfg = DataConfig(mode="fixed", dataset_size=64, max_length=40, eval_size=64)
    src = tdata.Strings(lang, cfg, 0, 16)
    val = tdata.held_out(lang, cfg)
    assert val != src.dataset and sorted(val) != sorted(src.dataset)
    fresh = DataConfig(max_length=40, eval_size=64)
    assert tdata.held_out(lang, fresh) != tdata.Strings(lang, fresh, 0, 64).strings(0)
    assert tdata.held_out(lang, fresh) != tdata.held_out(lang, fresh, Stream.TEST)


def test_fixed_per_length_every_length_once_per_epoch():
    lang = fl.load("anbn-short")  # n in 1..16: lengths 2, 4, ..., 32
    cfg = DataConfig(mode="fixed", per_length=1, lo=2, hi=32, max_length=34)
    src = tdata.Strings(lang, cfg, 3, 4)
    epochs = [sorted(len(s) for t in range(4 * e, 4 * e + 4) for s in src.strings(t))
              for e in range(2)]
    assert epochs[0] == epochs[1] == list(range(2, 33, 2))
    orders = [[len(s) for t in range(4 * e, 4 * e + 4) for s in src.strings(t)] for e in range(2)]
    assert orders[0] != orders[1]  # reshuffled per epoch


def test_length_range_respects_bounds():
    lang = fl.load("anbn-short")
    cfg = DataConfig(mode="length_range", lo=4, hi=10, max_length=34)
    lens = {len(s) for s in tdata.Strings(lang, cfg, 0, 64).strings(0)}
    assert lens <= {4, 6, 8, 10} and len(lens) > 1


# ----------------------------------------------------------------------------- objectives
def test_ood_split_of_anbn():
    split = objectives.ood_split(fl.load("anbn"), 8, 0)
    assert (len(split["train"]), len(split["heldout"])) == (125, 126)
    assert not set(split["train"]) & set(split["heldout"])
    assert split == objectives.ood_split(fl.load("anbn"), 8, 0)


def test_completion_targets_and_mask():
    lang = fl.load("anbn")
    p = tuple("bbbaaaab")  # 4 a, 4 b: balanced
    q = tuple("babbbbbb")  # 1 a, 7 b: 6 more a
    assert objectives.completion(lang, q, "extrapolation") == ("a",) * 6
    assert objectives.completion(lang, q, "adversarial") == ("a",) * 7
    assert objectives.completion(lang, p, "extrapolation") == ()
    ids, mask = objectives.completion_batch(lang, [p, q], "extrapolation", length=20)
    # targets ids[:, 1:]; the first completion target (EOS for p, 'a' for q) is at index 8
    assert mask[0].tolist() == [0] * 8 + [1] + [0] * 10
    assert mask[1].sum() == 7 and mask[1, 8] == 1 and ids[1, 9] == lang.vocab.id("a")


@pytest.mark.parametrize("name, prompt_length", [("anbncn", 5), ("dyck2", 5), ("baN", 6)])
def test_completion_objectives_for_any_language_with_rules(name, prompt_length):
    """The taught completions, checked by brute force: every prompt is out of distribution with
    a completable headline rule; "extrapolation" is the shortest completion that satisfies the
    headline rule, first in alphabet order among equals; "adversarial" overshoots it by one
    symbol and breaks the headline rule."""
    import itertools
    lang = fl.load(name)
    head, A = lang.rules[0], lang.alphabet
    split = objectives.ood_split(lang, prompt_length, 1)
    prompts = split["train"] + split["heldout"]
    assert prompts and not set(split["train"]) & set(split["heldout"])
    every = [p for p in itertools.product(A, repeat=prompt_length)
             if not lang.is_viable(p) and head.can_complete(p)]
    assert sorted(prompts) == sorted(every)
    for p in prompts[::max(1, len(prompts) // 12)]:
        c = objectives.completion(lang, p, "extrapolation")
        assert head.holds(p + c)
        order = {x: i for i, x in enumerate(A)}
        for n in range(len(c) + 1):
            for d in itertools.product(A, repeat=n):
                if n < len(c) or [order[x] for x in d] < [order[x] for x in c]:
                    assert not head.holds(p + d), (p, c, d)
        a = objectives.completion(lang, p, "adversarial")
        assert a[:-1] == c and len(a) == len(c) + 1 and not head.holds(p + a)


def test_completion_objective_needs_rules():
    lang = fl.load("tomita1")
    with pytest.raises(FormalLMError, match="no named rules"):
        objectives.ood_prompts(lang, 4)


# ----------------------------------------------------------------------------- shipped configs
@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert len(cfg.seeds) >= 1 and cfg.steps >= 1


@pytest.mark.slow
def test_shipped_anbn_transformer_reaches_the_floor(tmp_path):
    res = train(load_config(ROOT / "configs" / "anbn-transformer.toml"), tmp_path, progress=False)
    assert all(m["val_loss"] - m["optimal_loss"] < 0.01 for m in res.best)


def test_public_names_have_docstrings():
    import formal_lm.training as t
    for name in t.__all__:
        assert getattr(t, name).__doc__, name


def test_formal_lm_train_command(tmp_path, capsys):
    """``formal-lm train CONFIG --out RUN_DIR`` trains and prints a per-seed summary."""
    from formal_lm.cli import main

    cfg = write(tmp_path, """
        language = "anbn-short"
        seeds = 1
        steps = 2
        batch_size = 4
        eval_every = 2
        [model]
        name = "transformer"
        d_model = 8
        n_heads = 2
        d_ff = 16
        n_layers = 1
        [data]
        max_length = 36
        bucket = 36
        eval_size = 8
        """)
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert "2 steps in" in capsys.readouterr().out
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [2]
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err


# ----------------------------------------------------------------------------- length ranges
def test_length_range_data_is_judged_against_the_restricted_language():
    """The loss floor, the validation rows (and so KL) of length-range data come from
    lang.restrict(lo, hi): the strings are drawn from it, not from the whole language."""
    lang = fl.load("anbn")
    cfg = DataConfig(mode="length_range", lo=2, hi=16, max_length=18, eval_size=32)
    data = tdata.LanguageData(lang, cfg, 8)
    target = lang.restrict(2, 16)
    assert data.target.name == "anbn[2..16]"
    assert data.floor == pytest.approx(math.log(8) / 10) == pytest.approx(
        target.optimal_loss().per_token)
    assert data.floor > 2 * lang.optimal_loss().per_token  # what it used to report
    v = data.validation()
    np.testing.assert_allclose(v.p_true, target.next_token_probs(v.ids)[:, :-1], atol=1e-6)
    # the validation strings' own NLL under the rows is the exact NLL of the restricted language
    n_tokens = int((v.ids[:, 1:] != 0).sum())
    exact = -sum(target.log_prob(lang.vocab.decode(row)) for row in v.ids) / n_tokens
    assert v.floor == pytest.approx(exact, rel=1e-5)
    fixed = DataConfig(mode="fixed", per_length=1, lo=2, hi=16, max_length=18, eval_size=32)
    assert tdata.LanguageData(lang, fixed, 8).floor == pytest.approx(data.floor)
    fresh = tdata.LanguageData(lang, DataConfig(max_length=258, eval_size=8), 8)
    assert fresh.target is lang and fresh.floor == pytest.approx(lang.optimal_loss().per_token)


def test_an_empty_length_range_is_refused_naming_it():
    cfg = DataConfig(mode="length_range", lo=3, hi=3, max_length=18, eval_size=8)
    with pytest.raises(FormalLMError, match=r"\[3, 3\].*anbn\[3..3\]"):
        tdata.LanguageData(fl.load("anbn"), cfg, 8)


def test_data_identity_holds_the_grammar_fingerprint(tmp_path):
    text = (ROOT / "grammars" / "anbn-short.toml").read_text()
    path = tmp_path / "g.toml"
    path.write_text(text)
    cfg = DataConfig(max_length=36, eval_size=8)
    first = tdata.LanguageData(fl.load(path), cfg, 4).identity()
    assert first["fingerprint"] == fl.load("anbn-short").fingerprint()
    path.write_text(text.replace('pattern = "a+b+"', 'pattern = "a*b*"'))  # a rule's value
    second = tdata.LanguageData(fl.load(path), cfg, 4).identity()
    assert second["validation"] == first["validation"]  # same strings, same rows ...
    assert second["fingerprint"] != first["fingerprint"]  # ... but another grammar


def test_a_changed_grammar_is_refused_on_resume(tmp_path):
    from formal_lm.training.loop import RunChanged
    text = (ROOT / "grammars" / "anbn-short.toml").read_text()
    path = tmp_path / "g.toml"
    path.write_text(text)
    cfg = tiny_config(language=str(path), steps=2, eval_every=2, checkpoint_every=2, seeds=(0,),
                      data=DataConfig(max_length=36, bucket=36, eval_size=8))
    train(cfg, tmp_path / "run", progress=False)
    path.write_text(text.replace('pattern = "a+b+"', 'pattern = "a*b*"'))
    with pytest.raises(RunChanged, match="data"):
        train(dataclasses.replace(cfg, steps=4), tmp_path / "run", resume=True, progress=False)


def test_a_relative_grammar_path_is_read_beside_the_config(tmp_path, monkeypatch):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "mine.toml").write_text((ROOT / "grammars" / "anbn-short.toml").read_text())
    p = tmp_path / "g" / "c.toml"
    p.write_text('language = "mine.toml"\nsteps = 1\n')
    monkeypatch.chdir(ROOT)  # not the config's folder
    cfg = load_config(p)
    assert Path(cfg.language) == tmp_path / "g" / "mine.toml"
    assert fl.load(cfg.language).fingerprint() == fl.load("anbn-short").fingerprint()
    p.write_text('language = "anbn-short"\nsteps = 1\n')  # names are left alone
    assert load_config(p).language == "anbn-short"
    absolute = tmp_path / "g" / "mine.toml"
    p.write_text(f'language = "{absolute}"\nsteps = 1\n')
    assert load_config(p).language == str(absolute)


def test_training_target_is_what_the_data_draws_from():
    """The distribution training (and the grid's in-distribution KL) is judged against: the
    length range when there is one; the language cut at max_length - 2 when it has longer
    strings ("fresh" data redraws them); else the language itself."""
    import formal_lm as fl
    from formal_lm.training.config import DataConfig
    from formal_lm.training.data import training_target
    anbn = fl.load("anbn")  # n <= 128: strings up to 256 symbols
    ranged = training_target(anbn, DataConfig(mode="length_range", lo=2, hi=10, max_length=12))
    assert ranged.prob("aaaaabbbbb") == pytest.approx(1 / 5)  # n in 1..5, uniform
    cut = training_target(anbn, DataConfig(max_length=22))
    assert cut.prob("a" * 10 + "b" * 10) == pytest.approx(1 / 10)
    assert cut.prob("a" * 11 + "b" * 11) == 0
    assert training_target(anbn, DataConfig(max_length=258)) is anbn
