"""The training loop: K seeds of one configuration in one jitted program.

Shape glossary:  K seeds   B batch   T tokens (bucketed)   V vocab   N validation strings

Each seed has its own model (initialised from ``derive(seed, MODEL)``), its own optax state
(built inside the vmap, so global-norm clipping is per seed), its own data stream and dropout
keys. Nothing couples the seeds, so a seed trained alone matches the same seed trained among
others to float tolerance. The seeds axis (and a Transformer's packed rows) can be sharded over a
device mesh (:func:`default_mesh`, ``_Programs.step_fn``).

Run directory layout::

    RUN_DIR/metrics.jsonl            one JSON object per seed every eval_every steps
    RUN_DIR/config.json              the config (file layout)
    RUN_DIR/checkpoints/last.msgpack everything needed to resume (see checkpoint.py)
    RUN_DIR/checkpoints/best.msgpack per seed, the parameters at its lowest validation loss
    RUN_DIR/ood_split.json           OOD prompt split (objectives other than "nll")
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from formal_lm.errors import FormalLMError, Problem
from formal_lm.training import checkpoint as ckpt
from formal_lm.training import objectives
from formal_lm.training._models import config_class, make_model
from formal_lm.training.config import TrainConfig, config_from_dict
from formal_lm.training.data import (DROPOUT, MODEL, OOD, VAL, Source, bucket_length, derive,
                                     deal_rows, encode, held_out, pack_classes)
from formal_lm.vocab import PAD_ID

KL_TOLERANCE = 1e-6
# Packed rows per gradient micro-batch, summed over the seeds of one program: small enough that
# a micro-batch's activations stay in cache, large enough to amortise per-iteration overhead.
MICRO_ROWS = 4
# Packed row lengths per batch (data.pack_classes): rows of T-1 slots and shorter ones down to
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


def _one_at_a_time() -> bool:
    if SEEDS_ONE_AT_A_TIME is None:
        return jax.default_backend() == "cpu"
    return SEEDS_ONE_AT_A_TIME


def micro_rows(local_seeds: int) -> int:
    """Packed rows per micro-batch for a device with ``local_seeds`` seeds: vmapped seeds share
    the budget MICRO_ROWS; seeds run one at a time each get all of it."""
    return MICRO_ROWS if _one_at_a_time() else max(1, MICRO_ROWS // local_seeds)


def row_classes(T: int) -> int:
    """How many packed row lengths a bucket of padded length T uses."""
    return ROW_CLASSES if T >= ROW_CLASSES_MIN_T else 1


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run directory.
        seeds: the seeds, in the order of every per-seed list.
        step: optimizer steps done.
        final: per seed, the last metrics object written.
        best: per seed, the metrics object of its lowest validation loss (its best checkpoint).
        last_checkpoint, best_checkpoint: checkpoint paths.
        optimal_loss: the exact loss floor (nats per real token).
        wall_time: seconds spent in this call.
        compiles: how many times the train step was compiled (one per sequence-length bucket).
        buckets: the padded batch lengths T seen in this call.
    """

    run_dir: Path
    seeds: tuple[int, ...]
    step: int
    final: list[dict]
    best: list[dict]
    last_checkpoint: Path
    best_checkpoint: Path
    optimal_loss: float
    wall_time: float
    compiles: int
    buckets: tuple[int, ...] = ()


def resolve_language(config: TrainConfig):
    if not isinstance(config.language, str):
        return config.language
    import formal_lm
    return formal_lm.load(config.language)


def make_schedule(config: TrainConfig) -> optax.Schedule:
    """Linear warm-up from 0 over ``warmup_steps``, then constant / cosine / linear decay to 0."""
    n = max(config.steps - config.warmup_steps, 1)
    main = {"constant": lambda: optax.constant_schedule(config.lr),
            "cosine": lambda: optax.cosine_decay_schedule(config.lr, n),
            "linear": lambda: optax.linear_schedule(config.lr, 0.0, n)}[config.schedule]()
    if not config.warmup_steps:
        return main
    warm = optax.linear_schedule(0.0, config.lr, config.warmup_steps)
    return optax.join_schedules([warm, main], [config.warmup_steps])


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping (if grad_clip > 0) then AdamW, or SGD with momentum b1."""
    sched = make_schedule(config)
    parts = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip > 0 else []
    if config.optimizer == "adamw":
        parts.append(optax.adamw(sched, b1=config.b1, b2=config.b2,
                                 weight_decay=config.weight_decay))
    else:
        if config.weight_decay:
            parts.append(optax.add_decayed_weights(config.weight_decay))
        parts.append(optax.sgd(sched, momentum=config.b1 or None))
    return optax.chain(*parts)


def token_nll(logits, targets):
    """-log p(target): logits [..., V], targets int [...] -> [...]."""
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(lp, targets[..., None], axis=-1)[..., 0]


def masked_nll(logits, ids):
    """(sum of NLL over real targets, their count) for ids [B, T] and logits [B, T-1, V]."""
    tgt = ids[:, 1:]
    mask = (tgt != PAD_ID).astype(jnp.float32)
    return jnp.sum(token_nll(logits, tgt) * mask), jnp.sum(mask)


def kl_sum(p_true, logits):
    """Sum over positions of KL(p_true || softmax(logits)); p_true [N, T, V] (zero rows skipped)."""
    lq = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    pos = p_true > 0
    logp = jnp.log(jnp.where(pos, p_true, 1.0))
    return jnp.sum(jnp.where(pos, p_true * (logp - lq), 0.0))


_PROGRAMS: dict[str, "_Programs"] = {}


def _signature(config: TrainConfig, vocab_size: int) -> str:
    """What the jitted programs depend on (not seeds, data or eval/checkpoint cadence)."""
    d = config.to_dict()
    return json.dumps({"vocab_size": vocab_size, "model": d["model"], "optimizer": d["optimizer"],
                       "steps": config.steps if config.schedule != "constant" else None,
                       "objective": d["objective"], "batch_size": config.batch_size},
                      sort_keys=True)


class _Programs:
    """Graph definitions and the jitted init / step / eval of one model + optimizer + objective.

    Cached per signature, so repeated ``train`` calls in one process (sweeps, resumes, tests)
    reuse compiled executables; jit still compiles once per new shape or sharding.
    """

    def __init__(self, config: TrainConfig, vocab_size: int):
        self.tx = tx = make_optimizer(config)
        build = functools.partial(make_model, config.model, vocab_size=vocab_size,
                                  config=config.model_config)
        # Abstract model for the graph definitions (train mode differs: dropout on).
        abstract = nnx.eval_shape(lambda: build(seed=0))
        self.graphdef_eval, self.param_template, _ = nnx.split(abstract, nnx.Param, ...)
        abstract.train()
        self.graphdef_train = gd_train = nnx.split(abstract, nnx.Param, ...)[0]
        gd_eval = self.graphdef_eval

        def init(model_seed, dropout_seed):
            _, params, rest = nnx.split(build(seed=model_seed), nnx.Param, ...)
            return params, rest, jax.random.key(dropout_seed), tx.init(params)

        weight = float(config.objective.weight)

        def ood_nll(model, ood, rngs=None):
            """Completion-only NLL per supervised token of the OOD prompts ``ood`` = (ids, mask)."""
            o_ids, o_mask = ood
            c = token_nll(model(o_ids[:, :-1], rngs=rngs), o_ids[:, 1:]) * o_mask
            return jnp.sum(c) / jnp.maximum(jnp.sum(o_mask), 1.0)

        def loss_fn(params, rest, ids, ood, key):
            model = nnx.merge(gd_train, params, rest, copy=True)
            k1, k2 = jax.random.split(key)
            s, n = masked_nll(model(ids[:, :-1], rngs=k1), ids)  # logits [B, T-1, V]
            aux = {"loss": s / jnp.maximum(n, 1.0), "loss_per_seq": s / ids.shape[0]}
            total = aux["loss"]
            if ood is not None:
                aux["ood_loss"] = ood_nll(model, ood, k2)
                total = total + weight * aux["ood_loss"]
            return total, aux

        def step(params, opt_state, acc, rest, ids, ood, key, t):
            key = jax.random.fold_in(key, t)
            (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, ids, ood,
                                                                        key)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            acc = {k: acc[k] + aux[k] for k in acc}
            return params, opt_state, acc

        def evaluate(params, rest, ids, p_true, ood):
            model = nnx.merge(gd_eval, params, rest, copy=True)
            logits = model(ids[:, :-1])  # [N, T-1, V]
            s, n = masked_nll(logits, ids)
            out = {"val_loss": s / n, "val_loss_per_seq": s / ids.shape[0],
                   "kl": kl_sum(p_true, logits) / n}
            if ood is not None:
                out["ood_heldout_loss"] = ood_nll(model, ood)
            return out

        def packed_grads(params, rest, batch, key, chunk):
            """(sum of NLL over real targets, its gradient) over the used packed rows.

            ``batch`` is a list with one dict of packed rows per row length L. For each,
            gradient accumulation over micro-batches of ``chunk`` rows in a while loop that
            stops after its ``rows`` (the last ``rows % chunk`` one row at a time): the empty
            rows cost nothing and a micro-batch's activations (scores [chunk, H, L, L], MLP
            [chunk, L, F]) stay small.
            """
            def chunk_loss(p, arrs, start, size, ckey):
                c = {k: jax.lax.dynamic_slice_in_dim(a, start, size) for k, a in arrs.items()}
                model = nnx.merge(gd_train, p, rest, copy=True)
                logits = model._packed(c["inp"], c["pos"], c["seg"],
                                       rngs=jax.random.fold_in(ckey, start))  # [size, L, V]
                mask = (c["tgt"] != PAD_ID).astype(jnp.float32)
                return jnp.sum(token_nll(logits, c["tgt"]) * mask)

            def loop(arrs, first, count, size, ckey, s, g):
                """Accumulates rows first + i * size .. + size - 1 for i < count."""
                def body(carry):
                    i, s, g = carry
                    si, gi = jax.value_and_grad(chunk_loss)(params, arrs, first + i * size,
                                                            size, ckey)
                    return i + 1, s + si, jax.tree.map(jnp.add, g, gi)

                return jax.lax.while_loop(lambda c: c[0] < count, body,
                                          (jnp.int32(0), s, g))[1:]

            s, g = jnp.float32(0.0), jax.tree.map(jnp.zeros_like, params)
            for ci, part in enumerate(batch):
                arrs = {k: part[k] for k in ("inp", "tgt", "pos", "seg")}  # [R, L]
                rows = part["rows"][0]  # this shard's used rows (data.deal_rows)
                ckey = jax.random.fold_in(key, ci)
                size = min(chunk, arrs["inp"].shape[0])
                full = rows // size
                s, g = loop(arrs, 0, full, size, ckey, s, g)
                if size > 1:  # the last rows % size rows one at a time: no empty rows
                    s, g = loop(arrs, full * size, rows - full * size, 1, ckey, s, g)
            return s, g

        def packed_step(params, opt_state, acc, rest, batch, ood, key, t, *, chunk, batch_size,
                        rows_axis):
            key = jax.random.fold_in(key, t)
            k1, k2 = jax.random.split(key)
            if rows_axis is not None:  # each rows shard draws its own dropout masks
                k1 = jax.random.fold_in(k1, jax.lax.axis_index(rows_axis))
            s, g = packed_grads(params, rest, batch, k1, chunk)
            n = sum(jnp.sum(part["tgt"] != PAD_ID) for part in batch).astype(jnp.float32)
            if rows_axis is not None:  # data parallel over the rows: sum the shards' sums
                s, g, n = jax.lax.psum((s, g, n), rows_axis)
            n = jnp.maximum(n, 1.0)
            grads = jax.tree.map(lambda x: x / n, g)
            aux = {"loss": s / n, "loss_per_seq": s / batch_size}
            if ood is not None:
                aux["ood_loss"], g_ood = jax.value_and_grad(
                    lambda p: ood_nll(nnx.merge(gd_train, p, rest, copy=True), ood, k2))(params)
                grads = jax.tree.map(lambda a, b: a + weight * b, grads, g_ood)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            acc = {k: acc[k] + aux[k] for k in acc}
            return params, opt_state, acc

        def packed_local(params, opt_state, acc, rest, batch, ood, key, t, *, rows_axis):
            f = functools.partial(packed_step, chunk=micro_rows(batch[0]["inp"].shape[0]),
                                  batch_size=config.batch_size, rows_axis=rows_axis)
            return _over_seeds(f, _one_at_a_time(), params, opt_state, acc, rest, batch, ood,
                               key, t)

        def plain_local(params, opt_state, acc, rest, ids, ood, key, t, *, rows_axis):
            return _over_seeds(step, False, params, opt_state, acc, rest, ids, ood, key, t)

        # Optimizer state is built inside the vmap: clipping's global norm is per seed.
        self.init_fn = jax.jit(jax.vmap(init))
        # Transformers train on packed rows (data.pack_classes): only real tokens do work.
        self.packed = config.model == "transformer"
        self._local = packed_local if self.packed else plain_local
        self._steps: dict = {}
        self.eval_fn = jax.jit(jax.vmap(evaluate, in_axes=(0, 0, None, None, None)))
        self.lr_fn = jax.jit(make_schedule(config))

    def step_fn(self, mesh=None):
        """The jitted train step ``(params, opt_state, acc, rest, batch, ood, keys, t) ->
        (params, opt_state, acc)`` for ``mesh`` (None: one device).

        On a mesh, ``shard_map`` gives each device its own seeds (axis "seeds") and, for
        packed models, its own share of the packed rows (axis "rows", data parallel: the
        shards' loss and gradient sums are added with ``psum`` before the update). Every device
        runs its own loops, with no collective inside them.
        """
        key = (mesh, _one_at_a_time(), MICRO_ROWS)  # read while tracing: part of the key
        if key not in self._steps:
            rows = mesh.shape.get("rows", 1) if mesh is not None else 1
            fn = functools.partial(self._local, rows_axis="rows" if rows > 1 else None)
            if mesh is not None:
                P = jax.sharding.PartitionSpec
                seeds = P("seeds")
                batch = P("seeds", "rows") if self.packed and "rows" in mesh.axis_names else seeds
                fn = jax.shard_map(fn, mesh=mesh, out_specs=seeds, check_vma=False,
                                   in_specs=(seeds, seeds, seeds, seeds, batch, seeds, seeds, P()))
            donate = (0, 1, 2) if jax.default_backend() != "cpu" else ()
            self._steps[key] = jax.jit(fn, donate_argnums=donate)
        return self._steps[key]


def _over_seeds(f, one_at_a_time: bool, params, opt_state, acc, rest, batch, ood, key, t):
    """``f(..., t)`` for every seed (leading axis of all but ``t``): vmapped, or one seed after
    another with ``lax.map`` (each seed then runs the K = 1 program; no vmapped while loops)."""
    args = (params, opt_state, acc, rest, batch, ood, key)
    if one_at_a_time:
        return jax.lax.map(lambda a: f(*a, t), args)
    return jax.vmap(lambda *a: f(*a, t))(*args)


def programs(config: TrainConfig, vocab_size: int) -> _Programs:
    key = _signature(config, vocab_size)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = _Programs(config, vocab_size)
    return _PROGRAMS[key]


class Engine:
    """Stacked per-seed state for one config's seeds, and its (cached) programs."""

    def __init__(self, config: TrainConfig, vocab_size: int, mesh=None):
        self.config = config
        self.seeds = config.seeds
        self.vocab_size = vocab_size
        self.mesh = mesh
        prog = self.programs = programs(config, vocab_size)
        self.step_fn, self.eval_fn = prog.step_fn(mesh), prog.eval_fn
        # shards of the packed rows (data parallel within a seed; see _Programs.step_fn)
        self.row_shards = mesh.shape.get("rows", 1) if mesh is not None and prog.packed else 1
        self.seed_shards = mesh.shape["seeds"] if mesh is not None else 1
        model_seeds = np.array([derive(s, MODEL) for s in self.seeds], np.int32)
        dropout_seeds = np.array([derive(s, DROPOUT) for s in self.seeds], np.int32)
        self.params, self.rest, self.keys, self.opt_state = prog.init_fn(model_seeds,
                                                                         dropout_seeds)
        self.use_ood = config.objective.name != "nll"
        self.acc_names = ["loss", "loss_per_seq"] + (["ood_loss"] if self.use_ood else [])
        if mesh is not None:
            self.params, self.opt_state, self.rest, self.keys = self.shard(
                (self.params, self.opt_state, self.rest, self.keys))

    def shard(self, tree, spec=("seeds",)):
        """Puts arrays with a leading seeds axis onto the mesh (no-op without one)."""
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, tree)
        spec = spec if set(spec) <= set(self.mesh.axis_names) else ("seeds",)
        return jax.device_put(tree, jax.sharding.NamedSharding(
            self.mesh, jax.sharding.PartitionSpec(*spec)))

    def replicate(self, tree):
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, tree)
        return jax.device_put(tree, jax.sharding.NamedSharding(self.mesh,
                                                               jax.sharding.PartitionSpec()))

    def prepare(self, ids: np.ndarray):
        """The step's batch argument for token ids [K, B, T]: packed rows for a transformer
        (a list with, per row length L of ``data.pack_classes``, a dict of [K, R, L] arrays and
        rows [K, S], the rows dealt over S = ``row_shards`` shards in micro-batch blocks by
        ``data.deal_rows``), else ids itself."""
        if not self.programs.packed:
            return ids
        block = micro_rows(len(ids) // self.seed_shards)
        packs = [deal_rows(pack_classes(x, row_classes(ids.shape[-1])), self.row_shards, block)
                 for x in ids]
        return [{k: np.stack([p[c][k] for p in packs]) for k in packs[0][c]}
                for c in range(len(packs[0]))]

    def shard_step_args(self, batch, ood):
        """(batch, ood) placed for the step: seeds over "seeds", packed rows over "rows"."""
        spec = ("seeds", "rows") if self.programs.packed else ("seeds",)
        return self.shard(batch, spec), self.shard(ood)

    def zero_acc(self):
        return self.shard({k: np.zeros(len(self.seeds), np.float32) for k in self.acc_names})


def default_mesh(n_seeds: int, rows: bool = True):
    """A ('seeds', 'rows') mesh over the local devices, or None when there is only one.

    The seeds axis gets the most devices that divide ``n_seeds``; with ``rows``, the devices
    left over split each seed's packed rows (data parallel; used by Transformers only), so
    one seed can use every device too.
    """
    devices = jax.local_devices()
    d = math.gcd(n_seeds, len(devices))
    r = len(devices) // d if rows else 1
    if d * r <= 1:
        return None
    # Auto axis types: the Explicit default breaks embeddings/RNNs on a sharded axis.
    return jax.make_mesh((d, r), ("seeds", "rows"), axis_types=(jax.sharding.AxisType.Auto,) * 2,
                         devices=devices[:d * r])


def _read_metrics(path: Path, upto: int) -> list[str]:
    """Complete metrics lines with step <= upto (a torn last line is dropped)."""
    if not path.exists():
        return []
    keep = []
    for line in path.read_text().splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if obj.get("step", math.inf) <= upto:
            keep.append(line)
    return keep


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False,
          progress: bool = True, mesh="auto") -> TrainResult:
    """Trains every seed of ``config`` together; writes metrics and checkpoints under run_dir.

    Args:
        config: the training config.
        run_dir: output directory (created). A directory that already holds a run needs
            ``resume=True``.
        resume: continue from ``run_dir/checkpoints/last.msgpack`` when it exists (the result is
            the same as an uninterrupted run); start afresh when it does not.
        progress: show a tqdm bar with per-seed loss and the optimal loss.
        mesh: a jax Mesh with axis "seeds" to shard the seeds over (and optionally "rows" to
            split a Transformer's packed rows over), None for no sharding, or "auto"
            (:func:`default_mesh` over the local devices when there are several).

    Returns:
        A :class:`TrainResult`.

    Example:
        >>> import tempfile, formal_lm as fl
        >>> cfg = TrainConfig(language=fl.load("anbn"), steps=2, seeds=2, eval_every=2,
        ...                   model_config=dict(d_model=8, n_heads=2, d_ff=16, n_layers=1))
        >>> res = train(cfg, tempfile.mkdtemp(), progress=False)  # doctest: +SKIP
        >>> res.step  # doctest: +SKIP
        2
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    cdir = run_dir / "checkpoints"
    last_path, best_path = cdir / "last.msgpack", cdir / "best.msgpack"
    metrics_path = run_dir / "metrics.jsonl"
    if not resume and (last_path.exists() or metrics_path.exists()):
        raise FormalLMError(Problem(f"run_dir={str(run_dir)!r} already holds a run",
                                    "pass resume=True (--resume) or use a new directory"))
    cdir.mkdir(parents=True, exist_ok=True)

    lang = resolve_language(config)
    V = lang.vocab.size
    fields = {f.name: f.default for f in dataclasses.fields(config_class(config.model))}
    max_len = dict(config.model_config).get("max_len", fields.get("max_len"))
    if isinstance(max_len, int) and max_len < config.data.max_length:
        raise FormalLMError(Problem(f"model.max_len={max_len} < data.max_length="
                                    f"{config.data.max_length}", "raise model.max_len"))
    if mesh == "auto":
        mesh = default_mesh(len(config.seeds), rows=config.model == "transformer")
    eng = Engine(config, V, mesh)
    K, seeds = len(config.seeds), config.seeds
    floor = float(lang.optimal_loss().per_token)
    cfg_dict = config.to_dict()
    (run_dir / "config.json").write_text(json.dumps(cfg_dict, indent=1))

    # -- data -----------------------------------------------------------------------------
    sources = [Source(lang, config.data, s, config.batch_size) for s in seeds]
    val = held_out(lang, config.data, VAL)
    val_T = bucket_length(max(len(s) for s in val) + 2, config.data.bucket, config.data.max_length)
    val_ids = encode(lang, val, val_T)  # [N, T]
    p_true = lang.next_token_probs(val_ids)[:, :-1].astype(np.float32)  # [N, T-1, V]
    val_args = eng.replicate((val_ids, p_true))
    ood_train = ood_eval = None
    if eng.use_ood:
        ob = config.objective
        split = objectives.ood_split(lang, ob.prompt_length, ob.split_seed)
        objectives.write_split(run_dir, split, ob.name, ob.prompt_length, ob.split_seed)
        longest = ob.prompt_length * 2 + 3
        oT = bucket_length(longest, config.data.bucket, max(longest, config.data.bucket))
        ood_train = objectives.completion_batch(lang, split["train"], ob.name, oT)
        ood_eval = eng.replicate(objectives.completion_batch(lang, split["heldout"], ob.name, oT))

    def batch(step: int):
        strs = [src.strings(step) for src in sources]
        longest = max(len(s) for ss in strs for s in ss) + 2
        T = bucket_length(longest, config.data.bucket, config.data.max_length)
        ids = np.stack([encode(lang, ss, T) for ss in strs])  # [K, B, T]
        ood = None
        if ood_train is not None:
            idx = np.stack([np.random.default_rng(derive(s, OOD, step)).integers(
                len(ood_train[0]), size=config.objective.batch_size) for s in seeds])  # [K, Bo]
            ood = (ood_train[0][idx], ood_train[1][idx])
        return eng.shard_step_args(eng.prepare(ids), ood), T

    # -- state ----------------------------------------------------------------------------
    step, since_eval = 0, 0
    best_val = np.full(K, np.inf)
    best_lines: list[dict | None] = [None] * K
    best_params = jax.tree.map(np.array, jax.device_get(eng.params))
    acc = eng.zero_acc()
    lines: list[str] = []
    if resume and last_path.exists():
        meta, trees = ckpt.read(last_path)
        if meta["config"] != json.loads(json.dumps(cfg_dict)):
            raise FormalLMError(Problem(f"{last_path} was written by a different config",
                                        "resume with the same config, or use a new run_dir"))
        step, since_eval = meta["step"], meta["since_eval"]
        best_val = np.array([math.inf if v is None else v for v in meta["best_val"]])
        best_lines = meta["best_lines"]
        eng.params = eng.shard(ckpt.unflatten(eng.params, trees["params"]))
        eng.opt_state = eng.shard(ckpt.unflatten(eng.opt_state, trees["opt_state"]))
        acc = eng.shard(ckpt.unflatten(acc, trees["acc"]))
        best_params = jax.tree.map(np.array, ckpt.unflatten(best_params, trees["best_params"]))
        lines = _read_metrics(metrics_path, step)
    metrics_path.write_text("".join(line + "\n" for line in lines))
    final: list[dict | None] = [None] * K
    for line in lines[-K:]:
        obj = json.loads(line)
        if obj["seed"] in seeds:
            final[seeds.index(obj["seed"])] = obj

    def meta(extra=None):
        m = {"config": cfg_dict, "step": step, "seeds": list(seeds), "vocab_size": V,
             "language": lang.name, "optimal_loss": floor, "since_eval": since_eval,
             "best_val": [None if not np.isfinite(v) else float(v) for v in best_val],
             "best_lines": best_lines, "data_rng": "stateless: derive(seed, stream, step)"}
        m.update(extra or {})
        return m

    def save_last():
        ckpt.save(last_path, meta(), {"params": eng.params, "opt_state": eng.opt_state,
                                      "acc": acc, "best_params": best_params})

    def save_best():
        ckpt.save(best_path, meta({"best_steps": [b and b["step"] for b in best_lines]}),
                  {"params": best_params})

    from tqdm.auto import tqdm
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="train",
               dynamic_ncols=True)
    seen_T: set[int] = set()
    lr_at = eng.programs.lr_fn
    compiles_before = eng.step_fn._cache_size()
    with open(metrics_path, "a") as mf:
        while step < config.steps:
            (ids, ood), T = batch(step)
            seen_T.add(T)
            eng.params, eng.opt_state, acc = eng.step_fn(
                eng.params, eng.opt_state, acc, eng.rest, ids, ood, eng.keys, np.int32(step))
            step += 1
            since_eval += 1
            bar.update(1)
            if step % config.eval_every == 0 or step == config.steps:
                ev = jax.device_get(eng.eval_fn(eng.params, eng.rest, *val_args, ood_eval))
                tr = jax.device_get(acc)
                lr = float(lr_at(step - 1))
                improved = []
                for k, s in enumerate(seeds):
                    obj = {"step": step, "seed": s}
                    obj.update({n: float(tr[n][k] / since_eval) for n in eng.acc_names})
                    obj.update({n: float(v[k]) for n, v in ev.items()})
                    obj["optimal_loss"] = floor
                    obj["lr"] = lr
                    if obj["kl"] < -KL_TOLERANCE:
                        raise AssertionError(f"negative KL {obj['kl']} for seed {s} at {step}")
                    mf.write(json.dumps(obj) + "\n")
                    final[k] = obj
                    if obj["val_loss"] < best_val[k]:
                        best_val[k], best_lines[k] = obj["val_loss"], obj
                        improved.append(k)
                mf.flush()
                if improved:
                    cur = jax.device_get(eng.params)
                    for b, c in zip(jax.tree.leaves(best_params), jax.tree.leaves(cur)):
                        b[improved] = np.asarray(c)[improved]
                    save_best()
                acc, since_eval = eng.zero_acc(), 0
                bar.set_postfix_str("loss " + " ".join(f"{f['loss']:.4f}" for f in final)
                                    + f" | val {np.mean([f['val_loss'] for f in final]):.4f}"
                                    + f" | optimal {floor:.4f}")
            if step % config.checkpoint_every == 0 or step == config.steps:
                save_last()
    bar.close()
    if not best_path.exists():
        save_best()
    return TrainResult(run_dir, seeds, step, final, best_lines, last_path, best_path, floor,
                       time.perf_counter() - t0, eng.step_fn._cache_size() - compiles_before,
                       tuple(sorted(seen_T)))


# ----------------------------------------------------------------------------- loading
def load_checkpoint(path: str | Path) -> tuple[list[nnx.Module], dict]:
    """(one eval-mode model per seed, metadata) from a checkpoint file."""
    meta, trees = ckpt.read(path)
    config = config_from_dict({**meta["config"], "language": meta["language"]},
                              source=str(path))
    prog = programs(config, meta["vocab_size"])
    seeds = meta["seeds"]
    _, rest, _, _ = prog.init_fn(np.array([derive(s, MODEL) for s in seeds], np.int32),
                                 np.array([derive(s, DROPOUT) for s in seeds], np.int32))
    models = []
    for k in range(len(seeds)):
        leaves = {i: np.asarray(v)[k] for i, v in trees["params"].items()}
        params = ckpt.unflatten(prog.param_template, leaves)
        models.append(nnx.merge(prog.graphdef_eval, params, jax.tree.map(lambda x: x[k], rest)))
    return models, meta


def load_models(run_dir: str | Path, which: str = "best") -> list[nnx.Module]:
    """Per-seed models of a run: ``which="best"`` (lowest validation loss) or ``"last"``."""
    if which not in ("best", "last"):
        raise FormalLMError(Problem(f"which={which!r} is not allowed", "use 'best' or 'last'"))
    return load_checkpoint(Path(run_dir) / "checkpoints" / f"{which}.msgpack")[0]


def model_fn(run_dir: str | Path, seed: int, which: str = "best") -> Callable:
    """A jitted ``ids [B, T] int32 -> logits [B, T, V] float32`` for one seed of a run."""
    models, meta = load_checkpoint(Path(run_dir) / "checkpoints" / f"{which}.msgpack")
    if seed not in meta["seeds"]:
        raise FormalLMError(Problem(f"seed={seed} is not in this run", f"seeds: {meta['seeds']}"))
    graphdef, state = nnx.split(models[meta["seeds"].index(seed)])

    @jax.jit
    def fn(ids):
        return nnx.merge(graphdef, state, copy=True)(jnp.asarray(ids, jnp.int32))

    return fn
