"""Probes: is a language's exact latent variable decodable from a model's hidden states?

``probe(acts, lang, feature, strings)`` trains, for each layer and each probe seed, a linear
(or one-hidden-layer MLP) probe with optax on the hidden states at every position of
in-distribution strings (train / test split of *strings*, so no string is in both), and scores
it on the held-out strings and on out-of-distribution strings (OOD prompts, longer strings),
whose labels are exact too (``formal_lm.latents``).

Control task (Hewitt & Liang 2019): each token type gets a fixed random label, drawn from the
feature's distribution on the training positions; a position's control label is that of the
token just read. A probe of the same kind is trained on the control labels; *selectivity* is
the feature's score minus the control score. A high score with low selectivity says the probe,
not the representation, did the work.

Scores: accuracy for a categorical feature; R^2 (1 - SSE / SST around the scored set's mean)
for a numeric one, plus the accuracy of the rounded prediction (every column right). Each is
summarised over the probe seeds with ``formal_lm.analysis.stats.summarize``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np

from formal_lm.analysis import measures as M
from formal_lm.analysis.activations import as_activations, collect_states
from formal_lm.analysis.stats import Summary, summarize
from formal_lm.errors import FormalLMError, Problem
from formal_lm.latents import CATEGORICAL, latents
from formal_lm.seeding import Stream, derive, rng

PROBE_KINDS = ("linear", "mlp")


@dataclasses.dataclass(frozen=True)
class ProbeFit:
    """One trained probe (one layer, one seed), in the hidden state's own coordinates.

    ``weights`` [D, H] is the first linear map applied to the raw state (standardisation folded
    in): a linear probe's output directions, an MLP's hidden layer. ``subspace()`` is its row
    space, the directions interventions overwrite.
    """

    layer: int
    seed: int
    kind: str
    weights: np.ndarray

    def subspace(self) -> np.ndarray:
        """[r, D]: an orthonormal basis of the directions the probe reads."""
        u, s, vt = np.linalg.svd(self.weights.T, full_matrices=False)
        return vt[s > s.max() * 1e-8] if s.size and s.max() > 0 else vt[:0]


@dataclasses.dataclass(frozen=True)
class LayerProbe:
    """Scores of the probes of one layer over seeds (``None`` where there is nothing to score
    or the score is undefined, e.g. R^2 of a constant).

    ``by_position[t]`` is the mean over seeds of the held-out score of positions t (accuracy;
    for a numeric feature the rounded accuracy), NaN where no held-out position has that t.
    """

    layer: int
    score: Summary | None
    score_ood: Summary | None
    control: Summary | None
    selectivity: Summary | None
    rounded: Summary | None
    rounded_ood: Summary | None
    by_position: tuple[float, ...]
    by_position_ood: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Probes of one feature at every layer requested.

    ``score`` is accuracy (categorical) or R^2 (numeric); ``fits[i]`` are the probes of
    ``layers[i]``, one per seed (for interventions).
    """

    feature: str
    column: int | None
    feature_kind: str
    probe_kind: str
    seeds: tuple[int, ...]
    layers: tuple[LayerProbe, ...]
    n_train_strings: int
    n_test_strings: int
    n_ood_strings: int
    fits: tuple[tuple[ProbeFit, ...], ...] = dataclasses.field(default=(), repr=False)

    def measures(self) -> tuple[M.Measure, ...]:
        name = f"{self.feature}" + ("" if self.column is None else f"[{self.column}]")
        what = "accuracy" if self.feature_kind == CATEGORICAL else "R^2"
        unit = "fraction" if self.feature_kind == CATEGORICAL else "R^2"
        out = []
        for lp in self.layers:
            tag = f"probe_{name}_L{lp.layer}"
            rows = [("", lp.score, M.IN_DISTRIBUTION, f"{self.probe_kind} probe {what} of {name} "
                     f"at layer {lp.layer}, held-out strings", unit),
                    ("_ood", lp.score_ood, M.OUT_OF_DISTRIBUTION, "the same on "
                     "out-of-distribution strings", unit),
                    ("_control", lp.control, M.REFERENCE, f"control-task {what} (random label "
                     "per token type)", unit),
                    ("_selectivity", lp.selectivity, M.IN_DISTRIBUTION, f"{what} minus "
                     "control-task " + what, unit)]
            if self.feature_kind != CATEGORICAL:
                rows += [("_rounded", lp.rounded, M.IN_DISTRIBUTION, "accuracy of the rounded "
                          "prediction, held-out strings", "fraction"),
                         ("_rounded_ood", lp.rounded_ood, M.OUT_OF_DISTRIBUTION, "accuracy of "
                          "the rounded prediction, out-of-distribution strings", "fraction")]
            for suffix, summary, scope, text, u in rows:
                if summary is not None:
                    out.append(M.Measure(tag + suffix, summary.mean, u, True if scope !=
                                         M.REFERENCE else None, scope, text,
                                         headline=suffix in ("", "_ood")))
        return tuple(out)


# ------------------------------------------------------------------------------ training (jax)
@functools.lru_cache(maxsize=None)
def _trainer(kind: str, categorical: bool, n_out: int, hidden: int, steps: int, lr: float):
    """A jitted, seed-vmapped fit: (X [N, D], Y [S, N(, k)], mask [S, N], keys [S]) -> params."""
    import jax
    import jax.numpy as jnp
    import optax

    def init(key, d):
        k1, k2 = jax.random.split(key)
        if kind == "linear":
            return {"w": jax.random.normal(k1, (d, n_out)) * 0.01, "b": jnp.zeros(n_out)}
        return {"w1": jax.random.normal(k1, (d, hidden)) / jnp.sqrt(d), "b1": jnp.zeros(hidden),
                "w": jax.random.normal(k2, (hidden, n_out)) / jnp.sqrt(hidden),
                "b": jnp.zeros(n_out)}

    def fit_one(X, y, m, key):
        w = m / m.sum()
        mu = w @ X
        sd = jnp.sqrt(w @ (X - mu) ** 2) + 1e-6
        Xs = (X - mu) / sd
        if categorical:
            ymu, ysd = jnp.zeros(()), jnp.ones(())
        else:
            ymu = w @ y
            ysd = jnp.sqrt(w @ (y - ymu) ** 2) + 1e-6
        params = init(key, X.shape[1])
        opt = optax.adam(lr)

        def loss(p):
            out = _apply(p, Xs)
            if categorical:
                per = optax.softmax_cross_entropy_with_integer_labels(out, y)
            else:
                per = (((out - (y - ymu) / ysd)) ** 2).sum(-1)
            return (w * per).sum()

        def step(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
        return params, mu, sd, ymu, ysd

    return jax.jit(jax.vmap(fit_one, in_axes=(None, 0, 0, 0)))


def _apply(params, x):
    """The probe's output for standardised states x [N, D]: logits or standardised values."""
    import jax
    if "w1" in params:
        x = jax.nn.relu(x @ params["w1"] + params["b1"])
    return x @ params["w"] + params["b"]


def _predict(fitted, i: int, X: np.ndarray, categorical: bool) -> np.ndarray:
    params, mu, sd, ymu, ysd = (_tree_index(f, i) for f in fitted)
    X = np.pad(X, ((0, 0), (0, len(mu) - X.shape[1])))
    out = np.asarray(_apply(params, (X - mu) / sd))
    return out.argmax(-1) if categorical else out * ysd + ymu


def _tree_index(tree, i: int):
    """Entry ``i`` (a seed) of every leaf of a vmapped result, as numpy."""
    if isinstance(tree, dict):
        return {k: np.asarray(v[i]) for k, v in tree.items()}
    return np.asarray(tree[i])


def _weights(params, sd) -> np.ndarray:
    first = params["w1"] if "w1" in params else params["w"]
    return first / sd[:, None]  # [D, H] in raw coordinates


# ------------------------------------------------------------------------------ scoring
def _score(pred, y, categorical: bool) -> tuple[float, float]:
    """(score, rounded accuracy): accuracy, or R^2 and the rounded prediction's accuracy."""
    if len(y) == 0:
        return math.nan, math.nan
    if categorical:
        acc = float((pred == y).mean())
        return acc, acc
    sst = float(((y - y.mean(0)) ** 2).sum())
    r2 = 1.0 - float(((pred - y) ** 2).sum()) / sst if sst > 0 else math.nan
    return r2, float(np.all(np.round(pred) == np.round(y), axis=-1).mean())


def _summary(values) -> Summary | None:
    v = [x for x in values if math.isfinite(x)]
    return summarize(v) if v and len(v) == len(values) else None


def _by_position(correct_per_seed, t) -> tuple[float, ...]:
    if len(t) == 0:
        return ()
    acc = np.mean(correct_per_seed, axis=0)  # [N]
    sums = np.bincount(t, weights=acc, minlength=t.max() + 1)
    counts = np.bincount(t, minlength=t.max() + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return tuple(float(x) for x in sums / counts)


# ------------------------------------------------------------------------------ the analyzer
def _labels(lang, strings, feature: str, column: int | None, max_stack: int):
    z = latents(lang, strings, max_stack=max_stack)
    f = z.feature(feature)
    y = z.stacked(feature)
    if f.width and f.kind == CATEGORICAL:
        if column is None or not 0 <= column < f.width:
            raise FormalLMError(Problem(f"feature={feature!r} has {f.width} columns; "
                                        f"column={column!r}", f"pass column= in 0..{f.width - 1}"))
    if column is not None:
        if not f.width or not 0 <= column < f.width:
            raise FormalLMError(Problem(f"column={column!r} but feature={feature!r} has "
                                        f"{f.width or 'no'} columns", "pass column=None"))
        y = y[:, column]
    if f.kind != CATEGORICAL:
        y = y.reshape(len(y), -1).astype(np.float64)
    return f, y, z.positions()


def _states(acts, lang, strings) -> list[np.ndarray]:
    """L + 1 arrays [N, D_l]: the state at every position 0..len(s) of every string."""
    if not strings:
        return []
    ids = lang.vocab.batch(strings)
    layers = collect_states(acts, ids)
    return [np.concatenate([h[i, : len(s) + 1] for i, s in enumerate(strings)]) for h in layers]


def _control_labels(seed: int, y: np.ndarray, tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Hewitt & Liang's control task: token type -> a label drawn from the labels' distribution."""
    g = rng(seed, Stream.PROBE_CONTROL)
    table = y[g.integers(0, len(y), size=vocab_size)]
    return table[tokens]


def _check(kind, strings, seeds, test_fraction):
    problems = []
    if kind not in PROBE_KINDS:
        problems.append(Problem(f"kind={kind!r} is not a probe kind", f"use one of {PROBE_KINDS}"))
    if len(strings) < 2:
        problems.append(Problem(f"{len(strings)} in-distribution strings: a train / test split "
                                "needs at least 2", "pass more strings"))
    if not seeds or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0
                        for s in seeds):
        problems.append(Problem(f"seeds={seeds!r} must be a non-empty list of ints >= 0",
                                "e.g. seeds=range(5)"))
    if not (isinstance(test_fraction, float) and 0 < test_fraction < 1):
        problems.append(Problem(f"test_fraction={test_fraction!r} must be a float in (0, 1)",
                                "e.g. 0.25"))
    if problems:
        raise FormalLMError(problems)


def probe(acts, lang, feature: str, strings: Sequence, *, ood_strings: Sequence = (),
          layers: Sequence[int] | None = None, kind: str = "linear", column: int | None = None,
          seeds: Sequence[int] = range(5), test_fraction: float = 0.25, steps: int = 300,
          lr: float = 0.05, hidden: int = 32, max_stack: int = 4) -> ProbeResult:
    """Probes for ``feature`` of ``lang`` at each layer of ``acts``, in and off distribution.

    Args:
        acts: an activation source (anything :func:`as_activations` accepts: a model, ...).
        lang: a language with latent features (``formal_lm.latents.latents``).
        feature: a feature name, e.g. ``"diff:a-b"``, ``"depth"``, ``"state"``.
        strings: in-distribution strings; split by string into train and held-out test sets.
        ood_strings: strings scored but never trained on (OOD prompts, longer strings).
        layers: which layers (0 = embedding output); default all.
        kind: ``"linear"`` or ``"mlp"`` (one hidden layer of ``hidden`` ReLUs).
        column: the column of a [T, k] feature (required for a categorical one).
        seeds: probe seeds: split and initialisation (``Stream.PROBE``), control map
            (``Stream.PROBE_CONTROL``).
        steps, lr: full-batch Adam steps and learning rate.

    Raises:
        FormalLMError: bad arguments, an unknown feature or layer, a language without latents.
    """
    strings = [lang.vocab.as_string(s) for s in strings]
    ood = [lang.vocab.as_string(s) for s in ood_strings]
    seeds = tuple(int(s) for s in seeds)
    _check(kind, strings, seeds, test_fraction)
    f, y, (row, t) = _labels(lang, strings, feature, column, max_stack)
    _, y_ood, (_, t_ood) = _labels(lang, ood, feature, column, max_stack) if ood else \
        (None, y[:0], (None, t[:0]))
    acts = as_activations(acts)
    states, states_ood = _states(acts, lang, strings), _states(acts, lang, ood)
    layers = tuple(range(len(states))) if layers is None else tuple(layers)
    bad = [layer for layer in layers if not (isinstance(layer, (int, np.integer))
                                             and 0 <= layer < len(states))]
    if bad or not layers:
        raise FormalLMError(Problem(f"layers={list(layers)}: the source has layers "
                                    f"0..{len(states) - 1}", "pick layers in that range"))
    categorical = f.kind == CATEGORICAL
    tokens = np.concatenate([lang.vocab.batch([s])[0, : len(s) + 1] for s in strings])
    n_test = max(1, int(round(test_fraction * len(strings))))
    test_rows = [rng(s, Stream.PROBE, 0).permutation(len(strings))[:n_test] for s in seeds]
    test = np.stack([np.isin(row, r) for r in test_rows])  # [S, N]
    control = np.stack([_control_labels(s, y, tokens, lang.vocab.size) for s in seeds])
    fit = _trainer(kind, categorical, len(f.classes) if categorical else y.shape[1], hidden,
                   steps, lr)
    keys = _keys(seeds)
    results, fits = [], []
    n_pad = max(64, 1 << (len(y) - 1).bit_length()) - len(y)  # few shapes: few compilations
    train = np.pad((~test).astype(np.float32), ((0, 0), (0, n_pad)))  # padding never trains
    ys = _pad_rows(np.broadcast_to(y, (len(seeds),) + y.shape), n_pad, axis=1)
    control_p = _pad_rows(control, n_pad, axis=1)
    for layer in layers:
        X = states[layer].astype(np.float32)
        Xo = states_ood[layer] if ood else np.zeros((0, X.shape[1]))
        d_pad = -X.shape[1] % 8  # zero columns: widths share a compiled trainer
        Xp = np.pad(X, ((0, n_pad), (0, d_pad)))
        task, ctrl = fit(Xp, ys, train, keys), fit(Xp, control_p, train, keys)
        lp, layer_fits = _score_layer(layer, seeds, task, ctrl, X, Xo, y, y_ood, control, test,
                                      t, t_ood, categorical, kind)
        results.append(lp)
        fits.append(layer_fits)
    return ProbeResult(feature, column, f.kind, kind, seeds, tuple(results),
                       len(strings) - n_test, n_test, len(ood), tuple(fits))


def _pad_rows(a: np.ndarray, n: int, axis: int) -> np.ndarray:
    width = [(0, 0)] * a.ndim
    width[axis] = (0, n)
    return np.pad(a, width)


def _keys(seeds):
    import jax
    import jax.numpy as jnp
    return jnp.stack([jax.random.key(derive(s, Stream.PROBE, 1)) for s in seeds])


def _score_layer(layer, seeds, task, ctrl, X, Xo, y, y_ood, control, test, t, t_ood,
                 categorical, kind):
    scores, ood_scores, ctrl_scores, rounded, rounded_ood = [], [], [], [], []
    correct, correct_ood, fits = [], [], []
    for i, seed in enumerate(seeds):
        pred = _predict(task, i, X, categorical)
        m = test[i]
        sc, rd = _score(pred[m], y[m], categorical)
        scores.append(sc)
        rounded.append(rd)
        ok = pred == y if categorical else np.all(np.round(pred) == np.round(y), axis=-1)
        correct.append(np.where(m, ok, np.nan))
        cpred = _predict(ctrl, i, X, categorical)
        ctrl_scores.append(_score(cpred[m], control[i][m], categorical)[0])
        if len(Xo):
            po = _predict(task, i, Xo, categorical)
            so, ro = _score(po, y_ood, categorical)
            ood_scores.append(so)
            rounded_ood.append(ro)
            correct_ood.append(po == y_ood if categorical else
                               np.all(np.round(po) == np.round(y_ood), axis=-1))
        params, _, sd, _, _ = (_tree_index(f, i) for f in task)
        fits.append(ProbeFit(layer, seed, kind, _weights(params, sd)[: X.shape[1]]))
    sel = [a - b for a, b in zip(scores, ctrl_scores)]
    by_pos = _nan_by_position(np.array(correct), t)
    lp = LayerProbe(layer, _summary(scores), _summary(ood_scores) if ood_scores else None,
                    _summary(ctrl_scores), _summary(sel),
                    None if categorical else _summary(rounded),
                    None if categorical or not rounded_ood else _summary(rounded_ood),
                    by_pos, _by_position(correct_ood, t_ood) if correct_ood else ())
    return lp, tuple(fits)


def _nan_by_position(correct: np.ndarray, t: np.ndarray) -> tuple[float, ...]:
    """Mean over seeds and held-out positions of each t (NaN entries are training positions)."""
    if correct.size == 0:
        return ()
    out = []
    for pos in range(int(t.max()) + 1):
        v = correct[:, t == pos]
        v = v[np.isfinite(v)]
        out.append(float(v.mean()) if v.size else math.nan)
    return tuple(out)
