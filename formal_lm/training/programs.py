"""The jitted programs of one model + optimizer + objective: init, train step and evaluation,
for K seeds at once, cached per signature and sharded over a device mesh.

Shape glossary:  K seeds   B batch   T tokens (bucketed)   V vocab   N validation strings
                 R packed rows   L packed row length

Each seed has its own model (initialised from ``derive(seed, Stream.MODEL)``), its own optax
state (built inside the vmap, so global-norm clipping is per seed) and its own dropout keys.
Nothing couples the seeds. Transformers train on packed rows (``packing.pack_classes``: only
real tokens do work) with the gradient accumulated over micro-batches of rows in a while loop.
"""
from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from formal_lm import models
from formal_lm.errors import FormalLMError, Problem
from formal_lm.training.config import TrainConfig
from formal_lm.training.losses import (kl_sum, next_symbol_bce, restrict, target_nll, token_nll,
                                       weighted_nll)
from formal_lm.training.optim import make_optimizer, make_schedule
from formal_lm.vocab import PAD_ID

# Packed rows per gradient micro-batch, summed over the seeds of one program: small enough that
# a micro-batch's activations stay in cache, large enough to amortise per-iteration overhead.
MICRO_ROWS = 4
# Packed row lengths per batch (packing.pack_classes): rows of T-1 slots and shorter ones down to
# about (T-1)/2, so a row's T x T attention fits its longest sequence; each length is its own
# static shape with its own micro-batch loop (one compile per bucket still). Each length adds
# loop bodies to compile (~50 s instead of ~7 s at T = 258), so short buckets, where attention
# is cheap anyway, keep one row length.
ROW_CLASSES = 5
ROW_CLASSES_MIN_T = 128
# Packed models run a device's seeds one after another (lax.map) when True, vmapped when False;
# None: one at a time on CPU, where a vmapped while loop turns into selects and gathers (10-25 %
# slower per seed), vmapped on accelerators.
SEEDS_ONE_AT_A_TIME: bool | None = None


def one_at_a_time() -> bool:
    if SEEDS_ONE_AT_A_TIME is None:
        return jax.default_backend() == "cpu"
    return SEEDS_ONE_AT_A_TIME


def micro_rows(local_seeds: int) -> int:
    """Packed rows per micro-batch for a device with ``local_seeds`` seeds: vmapped seeds share
    the budget MICRO_ROWS; seeds run one at a time each get all of it."""
    return MICRO_ROWS if one_at_a_time() else max(1, MICRO_ROWS // local_seeds)


def row_classes(T: int) -> int:
    """How many packed row lengths a bucket of padded length T uses."""
    return ROW_CLASSES if T >= ROW_CLASSES_MIN_T else 1


def build_model(config: TrainConfig, vocab_size: int, seed) -> nnx.Module:
    """A freshly initialised model of ``config`` (eval mode); its init depends only on ``seed``."""
    try:
        return models.make(config.model, vocab_size=vocab_size, seed=seed,
                           **config.model_config)
    except ValueError as e:
        raise FormalLMError(Problem(f"model {config.model!r}: {e}", "fix the [model] table")
                            ) from None


def check_max_len(config: TrainConfig, longest: int) -> None:
    """A model's ``max_len`` (a learned position table, a cache) must hold the longest sequence."""
    fields = {f.name: f.default for f in dataclasses.fields(models.CONFIGS[config.model])}
    max_len = dict(config.model_config).get("max_len", fields.get("max_len"))
    if isinstance(max_len, int) and max_len < longest:
        raise FormalLMError(Problem(f"model.max_len={max_len} < the longest sequence, "
                                    f"{longest} tokens", f"raise model.max_len to >= {longest}"))


def _over_seeds(f, one_by_one: bool, params, opt_state, acc, rest, batch, ood, key, active, t):
    """``f(..., t)`` for every seed (leading axis of all but ``t``): vmapped, or one seed after
    another with ``lax.map`` (each seed then runs the K = 1 program; no vmapped while loops)."""
    args = (params, opt_state, acc, rest, batch, ood, key, active)
    if one_by_one:
        return jax.lax.map(lambda a: f(*a, t), args)
    return jax.vmap(lambda *a: f(*a, t))(*args)


class Programs:
    """Graph definitions and the jitted init / step / eval of one model + optimizer + objective.

    Cached per signature (:func:`programs`), so repeated runs in one process (sweeps, resumes,
    tests) reuse compiled executables; jit still compiles once per new shape or sharding.

    ``classes`` (int [V], or None for one class) and ``class_weights`` (one weight per class)
    come from a supervised task's data: each target is scored against the tokens of its own
    class (``losses.restrict``) and the training loss is ``sum_c w_c * mean NLL of class c``.
    ``next_symbols`` = (weight, scored tokens bool [V]) adds ``weight *`` the mean
    next-symbol-set binary cross-entropy (``losses.next_symbol_bce``) of the batch's bitmasks.
    """

    def __init__(self, config: TrainConfig, vocab_size: int, classes=None,
                 class_weights=None, next_symbols=None):
        self.config = config
        self.ns_weight = float(next_symbols[0]) if next_symbols else 0.0
        self.ns_tokens = (jnp.asarray(np.asarray(next_symbols[1], bool)) if next_symbols
                          else None)
        self.classes = None if classes is None else jnp.asarray(np.asarray(classes, np.int32))
        self.class_weights = tuple(class_weights or (1.0,))
        self.tx = make_optimizer(config)
        self.build = functools.partial(build_model, config, vocab_size)
        # Abstract model for the graph definitions (train mode differs: dropout on).
        abstract = nnx.eval_shape(lambda: self.build(0))
        self.graphdef_eval, self.param_template, _ = nnx.split(abstract, nnx.Param, ...)
        abstract.train()
        self.graphdef_train = nnx.split(abstract, nnx.Param, ...)[0]
        self.weight = float(config.objective.weight)
        self.freezes = config.stopping.kl is not None  # saturated seeds stop moving
        # Optimizer state is built inside the vmap: clipping's global norm is per seed.
        self.init_fn = jax.jit(jax.vmap(self._init))
        self.opt_init_fn = jax.jit(jax.vmap(self.tx.init))
        self.packed = config.model == "transformer"
        self._local = self._packed_local if self.packed else self._plain_local
        self._steps: dict = {}
        self.eval_fn = jax.jit(jax.vmap(self._evaluate, in_axes=(0, 0, None, None, None, None)))
        self.lr_fn = jax.jit(make_schedule(config))

    # -- per-seed pieces ------------------------------------------------------------------
    def _init(self, model_seed, dropout_seed):
        _, params, rest = nnx.split(self.build(model_seed), nnx.Param, ...)
        return params, rest, jax.random.key(dropout_seed), self.tx.init(params)

    def _ood_nll(self, model, ood, rngs=None):
        """Completion-only NLL per supervised token of the OOD batch ``ood`` = (ids, weights)."""
        o_ids, o_w = ood
        return weighted_nll(model(o_ids[:, :-1], rngs=rngs), o_ids, o_w)

    def _counts(self, tgt):
        """Scored targets per class, float32 [C] (C = 1 without classes)."""
        real = tgt != PAD_ID
        if self.classes is None:
            return jnp.sum(real, dtype=jnp.float32)[None]
        c = self.classes[tgt]
        return jnp.stack([jnp.sum(real & (c == i), dtype=jnp.float32)
                          for i in range(len(self.class_weights))])

    def _target_weights(self, tgt, counts):
        """float32 like ``tgt``: the factor of each target's NLL such that (sum of weighted NLL)
        / (scored targets) is ``sum_c w_c * mean NLL of class c``; PAD targets get 0. One class
        of weight 1 gives exactly the PAD mask (the plain mean NLL)."""
        real = tgt != PAD_ID
        if self.classes is None and self.class_weights == (1.0,):
            return real.astype(jnp.float32)
        c = self.classes[tgt] if self.classes is not None else jnp.zeros_like(tgt)
        n = jnp.sum(counts)
        w = jnp.asarray(self.class_weights, jnp.float32) * n / jnp.maximum(counts, 1.0)
        return jnp.where(real, w[c], 0.0)

    def _nll_terms(self, logits, tgt):
        """Per-target NLL [B, T-1] of logits restricted to each target's class."""
        return token_nll(restrict(logits, tgt, self.classes), tgt)

    def _loss(self, params, rest, batch, ood, key):
        ids, tgt = batch[:2]
        model = nnx.merge(self.graphdef_train, params, rest, copy=True)
        k1, k2 = jax.random.split(key)
        logits = model(ids[:, :-1], rngs=k1)
        nll = self._nll_terms(logits, tgt)  # [B, T-1]
        counts = self._counts(tgt)
        n = jnp.sum(counts)
        s = jnp.sum(nll * self._target_weights(tgt, counts))
        aux = {"loss": s / jnp.maximum(n, 1.0), "loss_per_seq": s / ids.shape[0]}
        total = aux["loss"]
        if self.ns_weight:  # batch[2]: next-symbol-set bitmasks [B, T-1]
            ns, ns_n = next_symbol_bce(logits, batch[2], self.ns_tokens)
            aux["ns_loss"] = ns / jnp.maximum(ns_n, 1.0)
            total = total + self.ns_weight * aux["ns_loss"]
        if ood is not None:
            aux["ood_loss"] = self._ood_nll(model, ood, k2)
            total = total + self.weight * aux["ood_loss"]
        return total, aux

    def _update(self, params, opt_state, acc, grads, aux, active):
        """One optimizer update; a frozen (saturated) seed's parameters stay as they are."""
        with jax.named_scope("optimizer"):
            updates, new_state = self.tx.update(grads, opt_state, params)
            if self.freezes:
                updates = jax.tree.map(lambda u: u * active, updates)
            params = optax.apply_updates(params, updates)
            return params, new_state, {k: acc[k] + aux[k] for k in acc}

    def _plain_step(self, params, opt_state, acc, rest, batch, ood, key, active, t):
        key = jax.random.fold_in(key, t)
        (_, aux), grads = jax.value_and_grad(self._loss, has_aux=True)(params, rest, batch, ood,
                                                                       key)
        return self._update(params, opt_state, acc, grads, aux, active)

    def _evaluate(self, params, rest, ids, tgt, p_true, ood):
        model = nnx.merge(self.graphdef_eval, params, rest, copy=True)
        logits = restrict(model(ids[:, :-1]), tgt, self.classes)  # [N, T-1, V]
        s, n = target_nll(logits, tgt)
        out = {"val_loss": s / n, "val_loss_per_seq": s / ids.shape[0]}
        if self.classes is not None:  # a supervised task: how many answers are right
            right = (jnp.argmax(logits, -1) == tgt) & (tgt != PAD_ID)
            out["val_accuracy"] = jnp.sum(right) / n
        if p_true is not None:
            out["kl"] = kl_sum(p_true, logits) / n
        if ood is not None:
            out["ood_heldout_loss"] = self._ood_nll(model, ood)
        return out

    # -- packed rows (Transformers) -------------------------------------------------------
    def _packed_grads(self, params, rest, batch, key, chunk, counts, ns_scale=0.0):
        """(sum of NLL over real targets, the gradient of that sum plus ``ns_scale`` times the
        next-symbol BCE sum (when the rows carry bitmasks), the BCE sum) over the used rows.

        ``batch`` is a list with one dict of packed rows per row length L. For each, gradient
        accumulation over micro-batches of ``chunk`` rows in a while loop that stops after its
        ``rows`` (the last ``rows % chunk`` one row at a time): the empty rows cost nothing and
        a micro-batch's activations (scores [chunk, H, L, L], MLP [chunk, L, F]) stay small.
        """
        gd = self.graphdef_train

        def chunk_loss(p, arrs, start, size, ckey):
            c = {k: jax.lax.dynamic_slice_in_dim(a, start, size) for k, a in arrs.items()}
            model = nnx.merge(gd, p, rest, copy=True)
            logits = model._packed(c["inp"], c["pos"], c["seg"],
                                   rngs=jax.random.fold_in(ckey, start))  # [size, L, V]
            with jax.named_scope("loss"):
                s = jnp.sum(self._nll_terms(logits, c["tgt"]) * c["wt"])
                if "ns" not in c:
                    return s, (s, jnp.float32(0.0))
                ns = next_symbol_bce(logits, c["ns"], self.ns_tokens)[0]
                return s + ns_scale * ns, (s, ns)

        def loop(arrs, first, count, size, ckey, s, g, b):
            """Accumulates rows first + i * size .. + size - 1 for i < count."""
            def body(carry):
                i, s, g, b = carry
                (_, (si, bi)), gi = jax.value_and_grad(chunk_loss, has_aux=True)(
                    params, arrs, first + i * size, size, ckey)
                with jax.named_scope("accumulate"):
                    return i + 1, s + si, jax.tree.map(jnp.add, g, gi), b + bi

            return jax.lax.while_loop(lambda c: c[0] < count, body,
                                      (jnp.int32(0), s, g, b))[1:]

        s, g, b = jnp.float32(0.0), jax.tree.map(jnp.zeros_like, params), jnp.float32(0.0)
        for ci, part in enumerate(batch):
            arrs = {k: part[k] for k in ("inp", "tgt", "pos", "seg", "ns") if k in part}
            arrs["wt"] = self._target_weights(part["tgt"], counts)
            rows = part["rows"][0]  # this shard's used rows (packing.deal_rows)
            ckey = jax.random.fold_in(key, ci)
            size = min(chunk, arrs["inp"].shape[0])
            full = rows // size
            s, g, b = loop(arrs, 0, full, size, ckey, s, g, b)
            if size > 1:  # the last rows % size rows one at a time: no empty rows
                s, g, b = loop(arrs, full * size, rows - full * size, 1, ckey, s, g, b)
        return s, g, b

    def _packed_step(self, params, opt_state, acc, rest, batch, ood, key, active, t, *, chunk,
                     rows_axis):
        key = jax.random.fold_in(key, t)
        k1, k2 = jax.random.split(key)
        if rows_axis is not None:  # each rows shard draws its own dropout masks
            k1 = jax.random.fold_in(k1, jax.lax.axis_index(rows_axis))
        counts = sum(self._counts(part["tgt"]) for part in batch)  # [C]
        # scored (position, token) pairs: every position with a bitmask scores each ns token
        ns_n = (sum(jnp.sum(part["ns"] != 0, dtype=jnp.float32) for part in batch)
                * jnp.sum(self.ns_tokens, dtype=jnp.float32)) if self.ns_weight else jnp.float32(0.0)
        if rows_axis is not None:  # every shard weighs its targets by the global counts
            counts, ns_n = jax.lax.psum((counts, ns_n), rows_axis)
        n = jnp.maximum(jnp.sum(counts), 1.0)
        # (sum NLL + scale * sum BCE) / n = mean NLL + ns_weight * mean BCE
        scale = self.ns_weight * n / jnp.maximum(ns_n, 1.0)
        s, g, b = self._packed_grads(params, rest, batch, k1, chunk, counts, scale)
        if rows_axis is not None:  # data parallel over the rows: sum the shards' sums
            s, g, b = jax.lax.psum((s, g, b), rows_axis)
        grads = jax.tree.map(lambda x: x / n, g)
        aux = {"loss": s / n, "loss_per_seq": s / self.config.batch_size}
        if self.ns_weight:
            aux["ns_loss"] = b / jnp.maximum(ns_n, 1.0)
        if ood is not None:
            def ood_loss(p):
                return self._ood_nll(nnx.merge(self.graphdef_train, p, rest, copy=True), ood, k2)
            aux["ood_loss"], g_ood = jax.value_and_grad(ood_loss)(params)
            grads = jax.tree.map(lambda a, b: a + self.weight * b, grads, g_ood)
        return self._update(params, opt_state, acc, grads, aux, active)

    def _packed_local(self, params, opt_state, acc, rest, batch, ood, key, active, t, *,
                      rows_axis):
        f = functools.partial(self._packed_step, chunk=micro_rows(batch[0]["inp"].shape[0]),
                              rows_axis=rows_axis)
        return _over_seeds(f, one_at_a_time(), params, opt_state, acc, rest, batch, ood, key,
                           active, t)

    def _plain_local(self, params, opt_state, acc, rest, ids, ood, key, active, t, *,
                     rows_axis):
        return _over_seeds(self._plain_step, False, params, opt_state, acc, rest, ids, ood, key,
                           active, t)

    def step_fn(self, mesh=None):
        """The jitted train step ``(params, opt_state, acc, rest, batch, ood, keys, active, t)
        -> (params, opt_state, acc)`` for ``mesh`` (None: one device); ``active`` [K] is 1 for
        a seed that trains and 0 for one that saturation-aware stopping has frozen.

        On a mesh, ``shard_map`` gives each device its own seeds (axis "seeds") and, for
        packed models, its own share of the packed rows (axis "rows", data parallel: the
        shards' loss and gradient sums are added with ``psum`` before the update). Every device
        runs its own loops, with no collective inside them.
        """
        key = (mesh, one_at_a_time(), MICRO_ROWS)  # read while tracing: part of the key
        if key not in self._steps:
            rows = mesh.shape.get("rows", 1) if mesh is not None else 1
            fn = functools.partial(self._local, rows_axis="rows" if rows > 1 else None)
            if mesh is not None:
                P = jax.sharding.PartitionSpec
                seeds = P("seeds")
                batch = P("seeds", "rows") if self.packed and "rows" in mesh.axis_names else seeds
                fn = jax.shard_map(fn, mesh=mesh, out_specs=seeds, check_vma=False,
                                   in_specs=(seeds, seeds, seeds, seeds, batch, seeds, seeds,
                                             seeds, P()))
            donate = (0, 1, 2) if jax.default_backend() != "cpu" else ()
            self._steps[key] = jax.jit(fn, donate_argnums=donate)
        return self._steps[key]


_PROGRAMS: dict[str, Programs] = {}


def signature(config: TrainConfig, vocab_size: int, classes=None, class_weights=None,
              next_symbols=None) -> str:
    """What the jitted programs depend on (not seeds, data or eval/checkpoint cadence)."""
    d = config.to_dict()
    return json.dumps({"vocab_size": vocab_size, "model": d["model"], "optimizer": d["optimizer"],
                       "classes": None if classes is None else np.asarray(classes).tolist(),
                       "class_weights": None if class_weights is None else list(class_weights),
                       "next_symbols": None if not next_symbols else [
                           float(next_symbols[0]), np.asarray(next_symbols[1]).tolist()],
                       "steps": config.steps if config.schedule != "constant" else None,
                       "objective": d["objective"], "batch_size": config.batch_size,
                       "freezes": config.stopping.kl is not None},
                      sort_keys=True)


def programs(config: TrainConfig, vocab_size: int, classes=None, class_weights=None,
             next_symbols=None) -> Programs:
    """The (cached) programs of ``config`` for a vocabulary of ``vocab_size`` (and a supervised
    task's token classes and their weights, see :class:`Programs`)."""
    key = signature(config, vocab_size, classes, class_weights, next_symbols)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = Programs(config, vocab_size, classes, class_weights, next_symbols)
    return _PROGRAMS[key]


def default_mesh(n_seeds: int, rows: bool = True):
    """A ('seeds', 'rows') mesh over the local devices, or None when there is only one.

    The seeds axis gets the most devices that divide ``n_seeds``; with ``rows``, the devices
    left over split each seed's packed rows (data parallel; used by Transformers only), so
    one seed can use every device too.
    """
    devices = jax.local_devices()
    d = np.gcd(n_seeds, len(devices))
    r = len(devices) // d if rows else 1
    if d * r <= 1:
        return None
    # Auto axis types: the Explicit default breaks embeddings/RNNs on a sharded axis.
    return jax.make_mesh((int(d), int(r)), ("seeds", "rows"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices[:d * r])
