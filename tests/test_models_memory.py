"""The memory and sub-quadratic models: Stack-RNN, Tape-RNN, Mamba and linear attention.

The conformance checks of tests/test_models.py (causality, batch slots, decoding, parameter
counts, seeds, dropout, configs) on a table of the four models, and one known-answer test per
model: hand-set memory actions with a known result, and each model's logits against its
equations written out in numpy from the module's own weights.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from formal_lm.errors import FormalLMError
from formal_lm.models import (CONFIGS, count_params, make, make_from_config, memory_rnn,
                              param_count_formula)
from test_models import V, assert_close, random_ids

TINY = {  # one layer for most tests (compilation dominates their time)
    "stack_rnn": dict(d_model=8, hidden=8, stack_size=4, stack_width=3, n_layers=1),
    "tape_rnn": dict(d_model=8, hidden=8, tape_size=4, tape_width=3, n_layers=1),
    "mamba": dict(d_model=8, d_state=3, expand=2, d_conv=3, n_layers=1),
    "linear_attention": dict(d_model=8, n_heads=2, d_ff=16, n_layers=1),
}
TWO = {name: dict(kw, n_layers=2) for name, kw in TINY.items()}  # decoding, known answers
names = pytest.mark.parametrize("name", list(TINY))
_MODELS: dict = {}


def shared(name: str, seed: int = 0, layers: int = 1):
    """A model built once per (name, seed, layers) for tests that never mutate it."""
    if (name, seed, layers) not in _MODELS:
        kw = TINY[name] if layers == 1 else TWO[name]
        _MODELS[name, seed, layers] = make(name, vocab_size=V, seed=seed, **kw)
    return _MODELS[name, seed, layers]


@functools.lru_cache(maxsize=None)
def _jitted(graphdef):
    return jax.jit(lambda params, ids: nnx.merge(graphdef, params, copy=True)(ids))


def forward(model, ids):
    """model(ids) as one jitted program (compiled once per graph and shape: eager calls of
    scanned layers retrace at every call)."""
    graphdef, params = nnx.split(model)
    return _jitted(graphdef)(params, ids)


# --------------------------------------------------------------------------- conformance


@names
def test_causality_and_independent_batch_slots(name):
    model = shared(name)
    ids = random_ids(1, 4, 9)
    t = 4
    changed = ids.at[:, t + 1:].set((ids[:, t + 1:] + 1) % V)
    a, b = forward(model, ids), forward(model, changed)
    assert_close(a[:, :t + 1], b[:, :t + 1], atol=1e-6)
    assert not np.allclose(a[:, t + 1:], b[:, t + 1:])  # later logits did change
    perm = jnp.array([2, 0, 3, 1])
    assert_close(forward(model, ids[perm]), a[perm], atol=1e-6)
    other = ids.at[0, 1:].set((ids[0, 1:] + 2) % V)  # another row 0 leaves rows 1.. alone
    c = forward(model, other)
    assert_close(c[1:], a[1:], atol=1e-6)
    assert not np.allclose(c[0, 1:], a[0, 1:])


@names
def test_step_by_step_decoding_matches_the_full_pass(name):
    model = shared(name, layers=2)
    ids = random_ids(3, 4, 9)
    full = forward(model, ids)
    assert full.shape == (4, 9, V) and full.dtype == jnp.float32
    graphdef, params = nnx.split(model)

    @jax.jit
    def decode(params, ids):  # lax.scan over step, as the decoder does
        m = nnx.merge(graphdef, params, copy=True)

        def body(state, tok):
            logits, state = m.step(tok, state)
            return state, logits

        state, out = jax.lax.scan(body, m.init_state(ids.shape[0], 16), ids.T)
        return jnp.swapaxes(out, 0, 1), state["pos"]

    out, pos = decode(params, ids)
    assert int(pos) == 9
    assert_close(out, full, atol=1e-5)


PARAM_SHAPES = [
    ("stack_rnn", dict(d_model=5, hidden=7, stack_size=6, stack_width=2, n_layers=3)),
    ("tape_rnn", dict(d_model=5, hidden=7, tape_size=3, tape_width=5, n_layers=1)),
    ("mamba", dict(d_model=20, d_state=5, expand=3, d_conv=1, n_layers=1)),  # dt_rank 2
    ("mamba", dict(d_model=6, d_state=4, expand=1, d_conv=4, dt_rank=3, n_layers=2)),
    ("linear_attention", dict(d_model=12, n_heads=3, d_ff=20, n_layers=3)),
]


@pytest.mark.parametrize("name,kw", PARAM_SHAPES + [(n, TINY[n]) for n in TINY])
def test_param_count_matches_formula(name, kw):
    model = nnx.eval_shape(lambda: make(name, vocab_size=11, **kw))  # shapes only
    assert count_params(model) == param_count_formula(name, model.config)


@names
def test_dropout_only_in_train_mode(name):
    model = make(name, vocab_size=V, seed=0, **TINY[name], dropout=0.3)
    ids = random_ids(1, 4, 9)
    first = forward(model, ids)
    assert_close(first, forward(shared(name), ids), atol=0)  # eval: the dropout-free model
    model.train()
    graphdef, params = nnx.split(model)

    @jax.jit
    def run(params, key):
        m = nnx.merge(graphdef, params, copy=True)
        logits, _ = m.step(ids[:, 0], m.init_state(4, 8), rngs=key)
        return m(ids, rngs=key), logits

    (x, step), (y, _), (z, _) = (run(params, jax.random.key(k)) for k in (3, 3, 4))
    assert_close(x, y, atol=0)
    assert not np.allclose(x, z) and not np.allclose(x, first)
    assert step.shape == (4, V)
    model.eval()
    assert_close(forward(model, ids), first, atol=0)


@pytest.mark.parametrize("name,kw,fields", [
    ("stack_rnn", dict(vocab_size=3, hidden=0, stack_size=0, stack_width=2.5, dropout=1.0),
     ["vocab_size=3", "hidden=0", "stack_size=0", "stack_width=2.5", "dropout=1.0"]),
    ("tape_rnn", dict(vocab_size=V, tape_size=-1, tape_width=True, n_layers=0),
     ["tape_size=-1", "tape_width=True", "n_layers=0"]),
    ("mamba", dict(vocab_size=V, d_state=0, expand=0, d_conv=0, dt_rank=0),
     ["d_state=0", "expand=0", "d_conv=0", "dt_rank=0"]),
    ("linear_attention", dict(vocab_size=V, d_model=10, n_heads=3, d_ff=0),
     ["d_model=10 is not divisible by n_heads=3", "d_ff=0"]),
])
def test_config_lists_every_bad_field(name, kw, fields):
    with pytest.raises(ValueError) as info:
        CONFIGS[name](**kw)
    for field in fields:
        assert field in str(info.value), (field, str(info.value))
    with pytest.raises(ValueError, match=r"unknown config key 'stack_depth' for 'stack_rnn'"):
        make("stack_rnn", vocab_size=V, stack_depth=3)


# The Tape-RNN shares every line of its layer and LM with the Stack-RNN but the memory update
# (checked above and below), so its training run only comes with the slow tests (time budget).
@pytest.mark.parametrize("name", [n if n != "tape_rnn" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in TINY])
def test_vmapped_init_over_seeds_and_five_training_steps(name, tmp_path):
    """The trainer's init, ``make_from_config`` vmapped over seeds, gives each seed the model
    built alone; then ``train`` runs 5 steps (reusing that compiled init)."""
    import formal_lm as fl
    from formal_lm.training import DataConfig, TrainConfig, programs, train

    lang = fl.CounterLanguage("anbn-tiny", [fl.Block("a", 1, "n"), fl.Block("b", 1, "n")],
                              {"n": fl.Uniform(1, 3)})
    model_config = dict(TINY[name], dropout=0.1)
    cfg = TrainConfig(language=lang, steps=5, seeds=(0, 1), batch_size=4, lr=1e-2, eval_every=5,
                      checkpoint_every=5, model=name, model_config=model_config,
                      data=DataConfig(max_length=8, bucket=8, eval_size=8))
    prog = programs.programs(cfg, lang.vocab.size)
    seeds = np.array([7, 8], np.int32)
    params, rest = prog.init_fn(seeds, seeds)[:2]  # vmapped over seeds, jitted
    config = CONFIGS[name](vocab_size=lang.vocab.size, **model_config)
    alone = [make_from_config(config, int(s)) for s in seeds]
    ids = random_ids(1, 4, 9) % lang.vocab.size
    logits = [forward(nnx.merge(prog.graphdef_eval, *jax.tree.map(lambda x: x[i], (params, rest)),
                                copy=True), ids) for i in range(2)]
    assert not np.allclose(logits[0], logits[1])  # the seeds really differ
    for i, model in enumerate(alone):
        assert_close(logits[i], forward(model, ids), atol=1e-5)
        got = jax.tree.leaves(jax.tree.map(lambda x: x[i], params))
        want = jax.tree.leaves(nnx.state(model, nnx.Param))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_close(g, w, atol=1e-6)
    res = train(cfg, tmp_path / "run", progress=False)
    assert res.step == 5
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["val_loss"]) for r in res.final)


def test_experiment_files_accept_the_new_names():
    from formal_lm.experiments.loader import experiment_from_dict

    raw = {"experiment": {"name": "x", "languages": ["anbn-short"]}, "train": {"steps": 2},
           "models": {n: dict(TINY[n], name=n) for n in TINY},
           "objectives": {"normal": {"name": "nll"}}}
    ex = experiment_from_dict(raw)
    assert {ex.train_config(n, language="anbn-short", objective=ex.study.objectives["normal"]
                            ).model for n in TINY} == set(TINY)
    raw["models"]["mamba"]["d_sate"] = 4
    with pytest.raises(FormalLMError, match="d_sate"):
        experiment_from_dict(raw)


# --------------------------------------------------------------------------- known answers


def test_stack_push_push_pop_leaves_the_first_value_on_top():
    s = jnp.zeros((1, 3, 2))
    a, b, c = jnp.array([[1.0, 2.0]]), jnp.array([[3.0, 4.0]]), jnp.array([[9.0, 9.0]])
    push, pop, noop = (jnp.eye(3)[i][None] for i in range(3))
    s = memory_rnn.stack_update(s, push, a)
    s = memory_rnn.stack_update(s, push, b)
    np.testing.assert_array_equal(s[0], [[3, 4], [1, 2], [0, 0]])
    s = memory_rnn.stack_update(s, pop, c)  # the value is ignored by a pop
    np.testing.assert_array_equal(s[0], [[1, 2], [0, 0], [0, 0]])
    np.testing.assert_array_equal(memory_rnn.stack_update(s, noop, c)[0], s[0])
    for _ in range(4):  # pushes beyond the depth fall off the bottom
        s = memory_rnn.stack_update(s, push, c)
    np.testing.assert_array_equal(s[0], [[9, 9]] * 3)


def test_tape_writes_and_moves_on_a_circular_tape():
    t = jnp.zeros((1, 4, 1))
    stay, left, right, noop = (jnp.eye(4)[i][None] for i in range(4))
    val = lambda v: jnp.array([[float(v)]])  # noqa: E731
    t = memory_rnn.tape_update(t, left, val(1))  # write 1, head onto cell 1
    t = memory_rnn.tape_update(t, left, val(2))  # write 2, head onto the next cell
    np.testing.assert_array_equal(t[0, :, 0], [0, 0, 1, 2])
    t = memory_rnn.tape_update(t, right, val(3))  # write 3, back onto the cell holding 2
    np.testing.assert_array_equal(t[0, :, 0], [2, 3, 0, 1])
    t = memory_rnn.tape_update(t, stay, val(5))
    np.testing.assert_array_equal(t[0, :, 0], [5, 3, 0, 1])
    np.testing.assert_array_equal(memory_rnn.tape_update(t, noop, val(7))[0], t[0])


def np_stack(s, a, v):
    """Deletang et al.'s per-cell stack equations, cell by cell (s [B, S, W], a [B, 3])."""
    out = np.zeros_like(s)
    size = s.shape[1]
    for i in range(size):
        above = v if i == 0 else s[:, i - 1]
        below = s[:, i + 1] if i + 1 < size else np.zeros_like(v)
        out[:, i] = a[:, :1] * above + a[:, 1:2] * below + a[:, 2:3] * s[:, i]
    return out


def np_tape(s, a, v):
    """Write v under the head, then move: cell i of the result, read from the written tape."""
    w = s.copy()
    w[:, 0] = v
    size = s.shape[1]
    out = np.zeros_like(s)
    for i in range(size):
        out[:, i] = (a[:, :1] * w[:, i] + a[:, 1:2] * w[:, (i + 1) % size]
                     + a[:, 2:3] * w[:, (i - 1) % size] + a[:, 3:4] * s[:, i])
    return out


def np_linear(layer, x):
    out = x @ np.asarray(layer.kernel[...])
    return out + np.asarray(layer.bias[...]) if layer.bias is not None else out


def np_memory_rnn(model, ids, update):
    """The whole Stack-/Tape-RNN, one step at a time in numpy from the module's weights."""
    x = np.asarray(model.embed.embedding[...])[ids]  # [B, T, D]
    for layer in model.layers:
        h = np.zeros((len(ids), layer.hidden))
        mem = np.zeros((len(ids), *layer.memory_shape))
        ys = []
        for t in range(ids.shape[1]):
            h = np.tanh(np_linear(layer.w_in, x[:, t]) + h @ np.asarray(layer.w_rec.kernel[...])
                        + mem[:, 0] @ np.asarray(layer.w_read.kernel[...]))
            logits = np_linear(layer.w_action, h)
            a = np.exp(logits - logits.max(-1, keepdims=True))
            mem = update(mem, a / a.sum(-1, keepdims=True), np_linear(layer.w_value, h))
            ys.append(h)
        x = np.stack(ys, axis=1)
    return np_linear(model.unembed, x)


@pytest.mark.parametrize("name", ["stack_rnn", "tape_rnn"])
def test_memory_rnn_logits_match_numpy_equations(name):
    update = {"stack_rnn": np_stack, "tape_rnn": np_tape}[name]
    rs = np.random.RandomState(0)
    s, v = rs.randn(3, 5, 2), rs.randn(3, 2)
    a = rs.dirichlet(np.ones(3 if name == "stack_rnn" else 4), size=3)
    jax_update = memory_rnn.stack_update if name == "stack_rnn" else memory_rnn.tape_update
    np.testing.assert_allclose(jax_update(jnp.asarray(s), jnp.asarray(a), jnp.asarray(v)),
                               update(s, a, v), rtol=1e-5, atol=1e-6)
    model = make(name, vocab_size=V, seed=4, **TWO[name])
    ids = np.asarray(random_ids(5, 4, 9))
    np.testing.assert_allclose(forward(model, jnp.asarray(ids)), np_memory_rnn(model, ids, update),
                               rtol=1e-4, atol=1e-5)


def _randomise(layer, rs, names):
    """Gives parameters that start at constants (zeros, ones) random values."""
    for n in names:
        p = getattr(layer, n)
        p[...] = jnp.asarray(rs.uniform(0.5, 1.5, p[...].shape) * rs.choice([-1, 1], p[...].shape),
                             jnp.float32)


def np_rms(x, scale):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * scale


def np_layer_norm(norm, x):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * np.asarray(norm.scale[...]) + np.asarray(norm.bias[...])


def softplus(x):
    return np.log1p(np.exp(x))


def silu(x):
    return x / (1 + np.exp(-x))


def np_mamba_block(layer, x):
    """One Mamba block as a plain recurrence over t (x [B, T, D])."""
    e, n, r, k = layer.shape
    zu = np_rms(x, np.asarray(layer.norm.scale[...])) @ np.asarray(layer.in_proj.kernel[...])
    u_in, z = zu[..., :e], zu[..., e:]
    w, cb = np.asarray(layer.conv_w[...]), np.asarray(layer.conv_b[...])
    a_mat = -np.exp(np.asarray(layer.a_log[...]))  # [E, N]
    h = np.zeros((x.shape[0], e, n))
    out = np.zeros_like(x)
    for t in range(x.shape[1]):
        conv = cb + sum(w[k - 1 - j] * u_in[:, t - j] for j in range(k) if t - j >= 0)
        u = silu(conv)  # [B, E]
        proj = u @ np.asarray(layer.x_proj.kernel[...])
        low, b_t, c_t = proj[:, :r], proj[:, r:r + n], proj[:, r + n:]
        delta = softplus(np_linear(layer.dt_proj, low))  # [B, E]
        h = np.exp(delta[:, :, None] * a_mat) * h + (delta * u)[:, :, None] * b_t[:, None, :]
        y = (h * c_t[:, None, :]).sum(-1) + np.asarray(layer.d_skip[...]) * u
        out[:, t] = (y * silu(z[:, t])) @ np.asarray(layer.out_proj.kernel[...])
    return x + out


def test_mamba_logits_match_a_numpy_recurrence():
    model = make("mamba", vocab_size=V, seed=2, **TWO["mamba"])
    rs = np.random.RandomState(1)
    for layer in model.layers:
        _randomise(layer, rs, ["conv_b", "d_skip", "a_log"])
        _randomise(layer.norm, rs, ["scale"])
    ids = np.asarray(random_ids(6, 4, 9))
    x = np.asarray(model.embed.embedding[...])[ids].astype(np.float64)
    for layer in model.layers:
        x = np_mamba_block(layer, x)
    want = np_linear(model.unembed, np_rms(x, np.asarray(model.final_norm.scale[...])))
    np.testing.assert_allclose(forward(model, jnp.asarray(ids)), want, rtol=1e-4, atol=1e-5)


def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def np_linear_attention_block(layer, x):
    """One block with attention as the explicit O(T^2) sum over earlier positions."""
    n_heads, kd = layer.heads
    b, t, d = x.shape
    qkv = np_linear(layer.qkv, np_layer_norm(layer.norm1, x))
    q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(b, t, n_heads, kd) for i in range(3))
    phi = lambda a: np.where(a > 0, a + 1, np.exp(a))  # noqa: E731  elu(a) + 1
    o = np.zeros((b, t, n_heads, kd))
    for i in range(t):
        for hd in range(n_heads):
            sim = np.einsum("bk,bjk->bj", phi(q[:, i, hd]), phi(k[:, :i + 1, hd]))  # [B, i+1]
            o[:, i, hd] = (np.einsum("bj,bjk->bk", sim, v[:, :i + 1, hd])
                           / (sim.sum(-1, keepdims=True) + 1e-6))
    x = x + np_linear(layer.out, o.reshape(b, t, d))
    return x + np_linear(layer.ff2, gelu(np_linear(layer.ff1, np_layer_norm(layer.norm2, x))))


def test_linear_attention_logits_match_the_quadratic_sum():
    model = make("linear_attention", vocab_size=V, seed=3, **TWO["linear_attention"])
    ids = np.asarray(random_ids(8, 4, 9))
    x = np.asarray(model.embed.embedding[...])[ids].astype(np.float64)
    for layer in model.layers:
        x = np_linear_attention_block(layer, x)
    want = np_linear(model.unembed, np_layer_norm(model.final_norm, x))
    np.testing.assert_allclose(forward(model, jnp.asarray(ids)), want, rtol=1e-4, atol=1e-5)
