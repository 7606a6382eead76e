"""Conformance tests for formal_lm.models, driven by one table of model cases."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import formal_lm.models as models
from formal_lm.models import (
    CONFIGS,
    TransformerConfig,
    count_params,
    make,
    make_from_config,
    param_count_formula,
)

V = 7  # PAD, BOS, EOS + 4 symbols
BOS = 1
TINY = {
    "transformer": dict(d_model=8, n_heads=2, d_ff=16, n_layers=2, max_len=16),
    "lstm": dict(d_model=8, hidden=8, n_layers=2),
    "rnn": dict(d_model=8, hidden=8, n_layers=2),
    "lru": dict(d_model=8, d_state=6, n_layers=2),
}
POS_ENCODINGS = ("learned", "sinusoidal", "rope", "alibi", "none")

# (case id) -> (model name, config overrides). Every architecture and every
# transformer positional encoding; adding a row adds it to every test below.
CASES = {f"transformer-{p}": ("transformer", dict(TINY["transformer"], pos_encoding=p)) for p in POS_ENCODINGS}
CASES["transformer-post-rope"] = ("transformer", dict(TINY["transformer"], pos_encoding="rope", norm="post"))
CASES["lstm"] = ("lstm", TINY["lstm"])
CASES["rnn"] = ("rnn", TINY["rnn"])
CASES["lru"] = ("lru", TINY["lru"])

case_ids = pytest.mark.parametrize("case", list(CASES))


def build(case: str, seed: int = 0, **extra) -> nnx.Module:
    name, kw = CASES[case]
    return make(name, vocab_size=V, seed=seed, **{**kw, **extra})


@functools.lru_cache(maxsize=None)
def shared(case: str, seed: int = 0) -> nnx.Module:
    """A model built once per (case, seed) for tests that never mutate it."""
    return build(case, seed)


def random_ids(seed: int, b: int, t: int) -> jax.Array:
    """BOS then random symbols/EOS/PAD (any id is valid input)."""
    rs = np.random.RandomState(seed)
    ids = rs.randint(0, V, size=(b, t))
    ids[:, 0] = BOS
    return jnp.asarray(ids, dtype=jnp.int32)


def assert_close(a, b, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-5)


# --------------------------------------------------------------------------- shapes / causality


@case_ids
def test_causality(case):
    model = shared(case)
    ids = random_ids(1, 3, 9)
    t = 4
    changed = ids.at[:, t + 1 :].set((ids[:, t + 1 :] + 1) % V)
    a, b = model(ids), model(changed)
    assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
    assert not np.allclose(a[:, t + 1 :], b[:, t + 1 :])  # sanity: later logits did change


@case_ids
def test_batch_permutation_invariance(case):
    model = shared(case)
    ids = random_ids(2, 4, 8)
    perm = jnp.array([2, 0, 3, 1])
    assert_close(model(ids[perm]), model(ids)[perm], atol=1e-6)
    # one row alone gives the same logits as inside a batch
    assert_close(model(ids[2:3])[0], model(ids)[2], atol=1e-5)


def padded_batch(seed: int, b: int, t: int) -> np.ndarray:
    """int32 [b, t]: BOS, random symbols, EOS, then PAD, of random lengths 2..t."""
    rs = np.random.RandomState(seed)
    ids = np.zeros((b, t), np.int32)
    for row in range(b):
        n = rs.randint(2, t + 1)
        ids[row, 0], ids[row, n - 1] = BOS, 2
        ids[row, 1 : n - 1] = rs.randint(3, V, size=n - 2)
    return ids


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("transformer")] + ["post-alibi"])
def test_packed_rows_match_one_sequence_at_a_time(case):
    """Several sequences in one row (per-sequence positions, segment mask): each sequence gets
    the logits the plain forward pass gives it alone (differential test against model(ids))."""
    from formal_lm.training.packing import pack

    if case == "post-alibi":
        model = make("transformer", vocab_size=V, seed=0,
                     **dict(TINY["transformer"], pos_encoding="alibi", norm="post"))
    else:
        model = shared(case)
    ids = padded_batch(5, 7, 16)
    p = pack(ids)
    assert int(p["rows"]) < 7  # several sequences share a row
    out = np.asarray(model._packed(jnp.asarray(p["inp"]), jnp.asarray(p["pos"]),
                                   jnp.asarray(p["seg"])))
    ref = np.asarray(model(jnp.asarray(ids[:, :-1])))
    for row in range(ids.shape[0]):
        n = int((ids[row] != 0).sum()) - 1
        # the packed slot of this sequence: where its inputs and targets were placed
        hits = [(r, o) for r in range(p["inp"].shape[0]) for o in range(p["inp"].shape[1] - n + 1)
                if p["pos"][r, o] == 0 and (p["pos"][r, o : o + n] == np.arange(n)).all()
                and (p["inp"][r, o : o + n] == ids[row, :n]).all()
                and (p["tgt"][r, o : o + n] == ids[row, 1 : n + 1]).all()]
        assert hits, f"sequence {row} not found in the packed rows"
        r, o = hits[0]
        assert_close(out[r, o : o + n], ref[row, :n], atol=1e-5)


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("transformer")])
def test_causal_query_blocks_do_not_change_logits(case, monkeypatch):
    """The full pass scores query block i only against keys before its end; any block size
    gives the logits of one [T, T] block (plain and packed rows)."""
    from formal_lm.models import transformer
    from formal_lm.training.packing import pack

    model = shared(case)
    ids = padded_batch(6, 5, 16)
    p = {k: jnp.asarray(v) for k, v in pack(ids).items()}
    monkeypatch.setattr(transformer, "CAUSAL_BLOCK", 1000)
    ref, ref_packed = model(jnp.asarray(ids)), model._packed(p["inp"], p["pos"], p["seg"])
    for block in (3, 5):
        monkeypatch.setattr(transformer, "CAUSAL_BLOCK", block)
        assert_close(model(jnp.asarray(ids)), ref, atol=1e-5)
        assert_close(model._packed(p["inp"], p["pos"], p["seg"]), ref_packed, atol=1e-5)


# --------------------------------------------------------------------------- positions


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope", "alibi"])
def test_transformer_logits_depend_on_position(pos_encoding):
    model = make("transformer", vocab_size=V, **dict(TINY["transformer"], pos_encoding=pos_encoding))
    ids = jnp.array([[BOS] + [3] * 7], dtype=jnp.int32)  # the same token at positions 1..7
    logits = np.asarray(model(ids)[0])
    for i in range(1, 8):
        for j in range(i + 1, 8):
            assert not np.allclose(logits[i], logits[j], atol=1e-5), (i, j)
    # the same sequence shifted right by one (filler BOS in front) changes the logits
    shifted = jnp.array([[BOS, BOS, 3, 4, 5, 6, 2, 0]], dtype=jnp.int32)
    plain = jnp.array([[BOS, 3, 4, 5, 6, 2, 0, 0]], dtype=jnp.int32)
    assert not np.allclose(model(shifted)[0, 6], model(plain)[0, 5], atol=1e-5)


def test_transformer_without_positions_is_blind_to_order_of_identical_tokens():
    model = make("transformer", vocab_size=V, **dict(TINY["transformer"], pos_encoding="none"))
    logits = model(jnp.full((1, 6), 3, dtype=jnp.int32))[0]
    for i in range(1, 6):
        assert_close(logits[i], logits[0], atol=1e-5)


def test_learned_positions_reject_too_long_input():
    model = make("transformer", vocab_size=V, **TINY["transformer"])
    with pytest.raises(ValueError, match="max_len=16"):
        model(jnp.ones((1, 17), dtype=jnp.int32))
    with pytest.raises(ValueError, match="max_len"):
        model.init_state(1, 32)


# --------------------------------------------------------------------------- incremental decoding


@case_ids
def test_incremental_decoding_matches_forward(case):
    model = shared(case)
    ids = random_ids(3, 2, 8)
    full = model(ids)
    state = model.init_state(2, 12)
    assert int(state["pos"]) == 0
    steps = []
    for t in range(ids.shape[1]):
        logits, state = model.step(ids[:, t], state)
        assert logits.shape == (2, V) and logits.dtype == jnp.float32
        steps.append(logits)
    assert int(state["pos"]) == ids.shape[1]
    assert full.shape == (2, 8, V) and full.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(full)))
    assert_close(jnp.stack(steps, axis=1), full)


@pytest.mark.parametrize("case", ["transformer-rope", "lstm", "lru"])
def test_decoding_state_is_a_pytree_usable_in_jit_scan_and_vmap(case):
    model = shared(case)
    ids = random_ids(4, 3, 7)
    graphdef, params = nnx.split(model)

    @jax.jit
    def decode(params, ids):  # ids [B, T] -> [B, T, V] via lax.scan over step
        m = nnx.merge(graphdef, params, copy=True)

        def body(state, tok):
            logits, state = m.step(tok, state)
            return state, logits

        state, out = jax.lax.scan(body, m.init_state(ids.shape[0], 8), ids.T)
        return jnp.swapaxes(out, 0, 1), state["pos"]

    out, pos = decode(params, ids)
    assert int(pos) == 7
    assert_close(out, model(ids))

    if case != "lstm":
        return
    # vmap over the batch with a per-row state (B=1 inside) gives the same result
    per_row = jax.vmap(lambda row: decode(params, row[None])[0][0])(ids)
    assert_close(per_row, out)


# --------------------------------------------------------------------------- parameters


@case_ids
def test_param_count_matches_formula(case):
    model = shared(case)
    assert count_params(model) == param_count_formula(CASES[case][0], model.config)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
    "name,kw",
    [
        ("transformer", dict(d_model=12, n_heads=3, d_ff=20, n_layers=3, max_len=9, norm="post")),
        ("lstm", dict(d_model=5, hidden=7, n_layers=3)),
        ("rnn", dict(d_model=5, hidden=7, n_layers=1)),
        ("lru", dict(d_model=6, d_state=3, n_layers=1)),
    ],
)
def test_param_count_matches_formula_other_shapes(name, kw):
    model = nnx.eval_shape(lambda: make(name, vocab_size=11, **kw))  # shapes only, no compute
    assert count_params(model) == param_count_formula(name, model.config)


def test_icml_transformer_shape():
    model = make(
        "transformer", vocab_size=V, d_model=10, n_heads=5, d_ff=1024, n_layers=5, max_len=258
    )
    assert count_params(model) == param_count_formula("transformer", model.config)
    ids = random_ids(5, 1, 258)
    graphdef, params = nnx.split(model)
    assert jax.jit(lambda p: nnx.merge(graphdef, p)(ids))(params).shape == (1, 258, V)


# --------------------------------------------------------------------------- dropout


@case_ids
def test_dropout_only_in_train_mode(case):
    model = build(case, dropout=0.3)
    ids = random_ids(7, 2, 6)
    # models start in eval mode: deterministic, and equal to the dropout-free model
    first = model(ids)
    assert_close(model(ids), first, atol=0)
    assert_close(build(case, dropout=0.0)(ids), first, atol=0)

    model.train()
    x, y = model(ids), model(ids)  # the stored dropout stream advances between calls
    assert not np.allclose(x, y)
    assert not np.allclose(x, first)
    key = jax.random.key(3)
    assert_close(model(ids, rngs=key), model(ids, rngs=key), atol=0)
    assert not np.allclose(model(ids, rngs=key), model(ids, rngs=jax.random.key(4)))
    logits, _ = model.step(ids[:, 0], model.init_state(2, 8), rngs=key)
    assert logits.shape == (2, V)

    model.eval()
    assert_close(model(ids), first, atol=0)


def test_train_mode_survives_split_merge_and_vmap():
    models_ = [build("rnn", seed=s, dropout=0.5) for s in range(3)]
    for m in models_:
        m.train()
    graphdef, _ = nnx.split(models_[0])
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.split(m)[1] for m in models_])
    ids = random_ids(8, 2, 5)
    keys = jax.random.split(jax.random.key(0), 3)
    out = jax.jit(jax.vmap(lambda s, k: nnx.merge(graphdef, s, copy=True)(ids, rngs=k)))(stacked, keys)
    assert out.shape == (3, 2, 5, V)
    merged = nnx.merge(graphdef, jax.tree.map(lambda x: x[0], stacked), copy=True)
    assert_close(out[0], merged(ids, rngs=keys[0]))  # train mode travels in the graphdef


# --------------------------------------------------------------------------- vmap over seeds


@case_ids
def test_vmap_over_stacked_seeds_matches_per_seed(case):
    seeds = [0, 1, 2]
    per_seed = [shared(case, s) for s in seeds]
    graphdef, _ = nnx.split(per_seed[0])
    states = [nnx.split(m)[1] for m in per_seed]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    ids = random_ids(9, 2, 7)

    @jax.jit
    def forward(state):
        return nnx.merge(graphdef, state, copy=True)(ids)

    out = jax.vmap(forward)(stacked)
    assert out.shape == (3, 2, 7, V)
    assert not np.allclose(out[0], out[1])  # the seeds really differ
    for i, m in enumerate(per_seed):
        assert_close(out[i], m(ids))


@pytest.mark.parametrize("name", ["transformer", "lru"])
def test_init_can_be_vmapped_over_seeds(name):
    config = CONFIGS[name](vocab_size=V, **dict(TINY[name], n_layers=1))
    stacked = jax.jit(jax.vmap(lambda s: nnx.split(make_from_config(config, s))[1]))(jnp.arange(2))
    for s in range(2):
        want = nnx.split(make_from_config(config, s))[1]
        got = jax.tree.map(lambda x: x[s], stacked)
        for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
            if jnp.issubdtype(w.dtype, jax.dtypes.prng_key):
                w, g = jax.random.key_data(w), jax.random.key_data(g)
            assert_close(g, w, atol=1e-6)


# --------------------------------------------------------------------------- configs


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match=r"unknown config key 'd_modle' for 'transformer'; known keys: .*d_model"):
        make("transformer", vocab_size=V, d_modle=8)
    with pytest.raises(ValueError, match=r"'foo', 'bar'"):
        make("lstm", vocab_size=V, foo=1, bar=2)
    with pytest.raises(ValueError, match=r"unknown model name 'gru'.*lstm"):
        make("gru", vocab_size=V)


@pytest.mark.parametrize(
    "name,kw,pattern",
    [
        ("transformer", dict(pos_encoding="rotary"), r"pos_encoding='rotary'.*learned"),
        ("transformer", dict(norm="sandwich"), r"norm='sandwich'.*pre"),
        ("transformer", dict(d_model=10, n_heads=3), r"d_model=10 .*n_heads=3"),
        ("transformer", dict(d_model=6, n_heads=2, pos_encoding="rope"), r"rope.*even"),
        ("transformer", dict(n_layers=0), r"n_layers=0"),
        ("transformer", dict(max_len=True), r"max_len=True"),
        ("lstm", dict(dropout=1.0), r"dropout=1.0.*\[0, 1\)"),
        ("rnn", dict(hidden=-1), r"hidden=-1"),
        ("lru", dict(d_state=2.5), r"d_state=2.5"),
        ("lru", dict(r_min=0.9, r_max=0.5), r"r_min=0.9"),
    ],
)
def test_bad_config_value_is_named(name, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        make(name, vocab_size=V, **kw)


def test_config_problems_are_gathered():
    with pytest.raises(ValueError) as info:
        TransformerConfig(vocab_size=2, d_model=0, norm="x")
    msg = str(info.value)
    assert "vocab_size=2" in msg and "d_model=0" in msg and "norm='x'" in msg


def test_make_accepts_built_config_and_overrides():
    cfg = CONFIGS["rnn"](vocab_size=V, d_model=4, hidden=5)
    assert make("rnn", config=cfg).config == cfg
    assert make("rnn", config=cfg, hidden=6).config.hidden == 6
    assert make_from_config(cfg, 3).config == cfg
    with pytest.raises(ValueError, match="LSTMConfig"):
        make("lstm", config=cfg)
    with pytest.raises(ValueError, match="vocab_size is required"):
        make("rnn")


def test_configs_are_frozen_and_hashable():
    cfg = CONFIGS["lru"](vocab_size=V)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 3  # type: ignore[misc]
    assert hash(cfg) == hash(CONFIGS["lru"](vocab_size=V))


def test_public_names_have_docstrings():
    for name in models.__all__:
        obj = getattr(models, name)
        if callable(obj) or isinstance(obj, type):
            assert (getattr(obj, "__doc__", None) or "").strip(), name


def test_transformer_activation_is_configurable():
    import jax.numpy as jnp
    from formal_lm import models
    ids = jnp.array([[1, 3, 4, 3, 2]], jnp.int32)
    gelu = models.make("transformer", vocab_size=6, seed=0, activation="gelu")(ids)
    relu = models.make("transformer", vocab_size=6, seed=0, activation="relu")(ids)
    assert gelu.shape == relu.shape and not jnp.allclose(gelu, relu)
    with pytest.raises(ValueError, match="activation='tanh'"):
        models.make("transformer", vocab_size=6, activation="tanh")


@pytest.mark.parametrize("name", ["lstm", "rnn"])
def test_recurrent_logits_match_numpy_equations(name):
    """The LSTM / Elman layers against the documented equations written out in numpy from the
    module's own weights (gates i, f, g, o; forget bias +1), so a wrong gate order or scan would
    fail here and not only in the step-vs-full comparison, which shares the update code."""
    model = models.make(name, vocab_size=V, seed=3, d_model=4, hidden=5, n_layers=2)
    ids = np.array([[1, 3, 4, 4, 5, 2], [1, 6, 3, 2, 0, 0]], np.int32)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    x = np.asarray(model.embed.embedding[...])[ids]  # [B, T, D]
    for layer in model.layers:
        W, b = np.asarray(layer.w_in.kernel[...]), np.asarray(layer.w_in.bias[...])
        U = np.asarray(layer.w_rec.kernel[...])
        h = np.zeros((len(ids), layer.hidden))
        c = np.zeros_like(h)
        ys = []
        for t in range(ids.shape[1]):
            pre = x[:, t] @ W + b + h @ U
            if name == "lstm":
                i, f, g, o = np.split(pre, 4, axis=-1)
                c = sig(f + 1.0) * c + sig(i) * np.tanh(g)
                h = sig(o) * np.tanh(c)
            else:
                h = np.tanh(pre)
            ys.append(h)
        x = np.stack(ys, axis=1)
    want = x @ np.asarray(model.unembed.kernel[...]) + np.asarray(model.unembed.bias[...])
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), want, rtol=1e-4, atol=1e-5)
