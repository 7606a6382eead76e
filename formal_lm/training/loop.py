"""The training loop: K seeds of one config in one jitted program, on any :class:`TrainingData`.

``fit(config, data, run_dir)`` starts every seed from ``derive(seed, Stream.MODEL)`` or from
given parameters (fine-tuning), draws each step's batch from ``data``, evaluates every
``eval_every`` steps on ``data.validation()`` (loss, and exact KL where the data has an exact
reference), keeps each seed's best parameters (lowest validation loss) and checkpoints. An
interrupted run resumed from its last checkpoint ends bit for bit where an uninterrupted one
would (on the same device layout): data and dropout are functions of (seed, step).

Run directory::

    RUN_DIR/.lock                    held by the process that writes the run (see lock.py)
    RUN_DIR/run.json                 what defines the run: config, data identity, start
    RUN_DIR/metrics.jsonl            one strict-JSON object per seed every eval_every steps
    RUN_DIR/checkpoints/last.msgpack everything needed to resume (see checkpoint.py)
    RUN_DIR/checkpoints/best.msgpack per seed, the parameters at its lowest validation loss
                                     (and the models' other state, e.g. dropout RNG keys)

Shape glossary:  K seeds   B batch   T tokens (bucketed)   V vocab
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from formal_lm.errors import FormalLMError, Problem
from formal_lm.seeding import Stream, derive
from formal_lm.training import checkpoint as ckpt
from formal_lm.training.config import TrainConfig
from formal_lm.training.data import (TrainingData, bucket_length, digest, task_classes,
                                     tokens_needed, train_batch)
from formal_lm.training.lock import hold
from formal_lm.training.packing import deal_rows, pack_classes
from formal_lm.training.programs import (check_max_len, default_mesh, micro_rows, programs,
                                         row_classes)

KL_TOLERANCE = 1e-6
RUN_FILE = "run.json"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`fit` (and :func:`formal_lm.training.train`) returns.

    Attributes:
        run_dir: the run directory.
        seeds: the seeds, in the order of every per-seed list.
        step: optimizer steps done.
        final: per seed, the last metrics object written.
        best: per seed, the metrics object of its lowest validation loss (its best checkpoint).
        last_checkpoint, best_checkpoint: checkpoint paths.
        optimal_loss: the loss floor (nats per real token), None when the data has none.
        optimal_loss_stderr: its standard error (0.0: exact; > 0: a Monte Carlo estimate).
        wall_time: seconds spent in this call.
        compiles: how many times the train step was compiled (one per sequence-length bucket).
        buckets: the padded batch lengths T seen in this call.
        saturated_at: per seed, the step at which saturation-aware stopping froze it (None: it
            trained to the end, or stopping is off).
    """

    run_dir: Path
    seeds: tuple[int, ...]
    step: int
    final: list[dict]
    best: list[dict]
    last_checkpoint: Path
    best_checkpoint: Path
    optimal_loss: float | None
    optimal_loss_stderr: float
    wall_time: float
    compiles: int
    buckets: tuple[int, ...] = ()
    saturated_at: tuple[int | None, ...] = ()


class Callback:
    """Hooks of the loop; subclass and override what you need (every hook does nothing here)."""

    def on_step(self, step: int) -> None:
        """After optimizer step ``step`` (1-based count of steps done)."""

    def on_eval(self, step: int, lines: list[dict]) -> None:
        """After an evaluation: one metrics object per seed."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """After a checkpoint was written and verified."""


class ProgressBar(Callback):
    """A tqdm bar with per-seed training loss, mean validation loss and the exact floor."""

    def __init__(self, total: int, initial: int, floor: float | None, stderr: float = 0.0):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)
        self.floor = None if floor is None else (f"{floor:.4f}" if not stderr else
                                                 f"{floor:.4f} ± {stderr:.4f} (estimate)")

    def on_step(self, step):
        self.bar.update(1)

    def on_eval(self, step, lines):
        text = "loss " + " ".join(f"{m['loss']:.4f}" for m in lines if m["loss"] is not None)
        vals = [m["val_loss"] for m in lines if m["val_loss"] is not None]
        text += f" | val {np.mean(vals):.4f}" if vals else ""
        text += f" | optimal {self.floor}" if self.floor is not None else ""
        self.bar.set_postfix_str(text)

    def close(self):
        self.bar.close()


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


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
        if isinstance(obj, dict) and obj.get("step", math.inf) <= upto:
            keep.append(line)
    return keep


class _Run:
    """The stacked state of one run's seeds and the steps that change it."""

    def __init__(self, config: TrainConfig, data: TrainingData, init, mesh):
        self.config, self.data, self.seeds = config, data, config.seeds
        self.prog = prog = programs(config, data.vocab_size, *task_classes(data))
        self.mesh = mesh
        self.step_fn, self.eval_fn = prog.step_fn(mesh), prog.eval_fn
        self.row_shards = mesh.shape.get("rows", 1) if mesh is not None and prog.packed else 1
        self.seed_shards = mesh.shape["seeds"] if mesh is not None else 1
        model_seeds = np.array([derive(s, Stream.MODEL) for s in self.seeds], np.int32)
        dropout_seeds = np.array([derive(s, Stream.DROPOUT) for s in self.seeds], np.int32)
        self.params, self.rest, self.keys, self.opt_state = prog.init_fn(model_seeds,
                                                                         dropout_seeds)
        if init is not None:  # start from given parameters, with a fresh optimizer state
            self.params = ckpt.restore(self.params, ckpt.flatten(init), source="init params")
            self.opt_state = prog.opt_init_fn(self.params)
        self.acc_names = ["loss", "loss_per_seq"]
        if config.objective.name != "nll":
            self.acc_names.append("ood_loss")
        if prog.ns_weight:
            self.acc_names.append("ns_loss")
        self.params, self.opt_state, self.rest, self.keys = self.shard(
            (self.params, self.opt_state, self.rest, self.keys))
        val = data.validation()
        self.val_args = self.replicate((val.ids, val.targets, val.p_true, val.ood))
        self.val_floor = val.floor
        self.step, self.since_eval = 0, 0
        self.best_val = np.full(len(self.seeds), np.inf)
        self.best_lines: list[dict | None] = [None] * len(self.seeds)
        self.last_lines: list[dict | None] = [None] * len(self.seeds)
        # saturation-aware stopping: evaluations in a row below stopping.kl, and the step at
        # which each seed was frozen (None: still training)
        self.streak = [0] * len(self.seeds)
        self.saturated_at: list[int | None] = [None] * len(self.seeds)
        if config.stopping.kl is not None and val.p_true is None:
            raise FormalLMError(Problem("stopping.kl needs an exact reference to measure KL, and "
                                        "this data has none", "remove [stopping]"))
        self.best_params = jax.tree.map(np.array, jax.device_get(self.params))
        self.acc = self.zero_acc()

    # -- placement ---------------------------------------------------------------------------
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

    def active(self):
        """[K] float32: 1 for a seed that trains, 0 for one frozen at saturation (placed once
        per change, not once per step)."""
        key = tuple(s is None for s in self.saturated_at)
        if getattr(self, "_active", (None,))[0] != key:
            self._active = (key, self.shard(np.array(key, np.float32)))
        return self._active[1]

    def done(self) -> bool:
        """Every seed is frozen (saturation-aware stopping ends the run)."""
        return all(s is not None for s in self.saturated_at)

    def freeze_saturated(self, lines: list[dict]) -> None:
        """Counts evaluations below stopping.kl and freezes the seeds that reach the patience."""
        stop = self.config.stopping
        if stop.kl is None:
            return
        for k, m in enumerate(lines):
            if self.saturated_at[k] is not None:
                m["saturated_at"] = self.saturated_at[k]
                continue
            self.streak[k] = self.streak[k] + 1 if m.get("kl") is not None and \
                m["kl"] < stop.kl else 0
            if self.streak[k] >= stop.patience:
                self.saturated_at[k] = self.step
                m["saturated_at"] = self.step

    def layout(self) -> dict:
        """The device layout (it changes float summation order, so a resume must keep it)."""
        return {"devices": self.seed_shards * self.row_shards, "seeds": self.seed_shards,
                "rows": self.row_shards}

    def zero_acc(self):
        return self.shard({k: np.zeros(len(self.seeds), np.float32) for k in self.acc_names})

    # -- batches -----------------------------------------------------------------------------
    def prepare(self, ids: np.ndarray, targets: np.ndarray | None = None,
                ns: np.ndarray | None = None):
        """The step's batch argument for token ids [K, B, T], targets [K, B, T-1] (None:
        ``ids[..., 1:]``) and next-symbol bitmasks [K, B, T-1] (or None): packed rows for a
        transformer (a list with, per row length L of ``packing.pack_classes``, a dict of
        [K, R, L] arrays and rows [K, S], the rows dealt over S = ``row_shards`` shards in
        micro-batch blocks by ``packing.deal_rows``), else the tuple (ids, targets[, ns])."""
        targets = ids[..., 1:] if targets is None else targets
        if not self.prog.packed:
            return (ids, targets) if ns is None else (ids, targets, ns)
        block = micro_rows(len(ids) // self.seed_shards)
        packs = [deal_rows(pack_classes(x, row_classes(ids.shape[-1]), targets=t,
                                        extras=None if ns is None else {"ns": ns[k]}),
                           self.row_shards, block) for k, (x, t) in enumerate(zip(ids, targets))]
        return [{k: np.stack([p[c][k] for p in packs]) for k in packs[0][c]}
                for c in range(len(packs[0]))]

    def batch(self, step: int):
        """((batch, ood) placed for the step, the padded length T) of optimizer step ``step``."""
        per_seed = [train_batch(self.data, s, step) for s in self.seeds]
        real = max(tokens_needed(x, y) for x, y, _ in per_seed)
        T = bucket_length(real, self.data.bucket, self.data.max_tokens)
        T = max(T, real)
        K, B = len(per_seed), per_seed[0][0].shape[0]
        ids = np.zeros((K, B, T), np.int32)
        tgt = np.zeros((K, B, T - 1), np.int32)
        ns = None if per_seed[0][2] is None else np.zeros((K, B, T - 1), np.int32)
        for k, (x, y, z) in enumerate(per_seed):
            w = min(T, x.shape[1])
            ids[k, :, :w] = x[:, :w]
            tgt[k, :, :w - 1] = y[:, :w - 1]
            if ns is not None:
                ns[k, :, :w - 1] = z[:, :w - 1]
        ood = [self.data.ood_batch(s, step) for s in self.seeds]
        ood = None if ood[0] is None else tuple(np.stack(a) for a in zip(*ood))
        return self.place(ids, ood, tgt, ns), T

    def place(self, ids: np.ndarray, ood=None, targets: np.ndarray | None = None,
              ns: np.ndarray | None = None):
        """(batch, ood) of token ids [K, B, T] (and targets [K, B, T-1], None: the next
        tokens; next-symbol bitmasks or None) as the step takes them: prepared and sharded."""
        spec = ("seeds", "rows") if self.prog.packed else ("seeds",)
        return self.shard(self.prepare(ids, targets, ns), spec), self.shard(ood)

    # -- steps -------------------------------------------------------------------------------
    def train_step(self, step: int):
        (ids, ood), T = self.batch(step)
        self.params, self.opt_state, self.acc = self.step_fn(
            self.params, self.opt_state, self.acc, self.rest, ids, ood, self.keys,
            self.active(), np.int32(step))
        self.step, self.since_eval = step + 1, self.since_eval + 1
        return T

    def evaluate(self) -> tuple[list[dict], list[int]]:
        """One metrics object per seed, and the seeds (indices) whose validation loss improved."""
        ev = jax.device_get(self.eval_fn(self.params, self.rest, *self.val_args))
        tr = jax.device_get(self.acc)
        lr = float(self.prog.lr_fn(self.step - 1))
        lines, improved = [], []
        for k, s in enumerate(self.seeds):
            obj = {"step": self.step, "seed": s}
            obj.update({n: _finite_or_none(tr[n][k] / self.since_eval) for n in self.acc_names})
            obj.update({n: _finite_or_none(v[k]) for n, v in ev.items()})
            if self.data.floor is not None:
                obj["optimal_loss"] = self.data.floor
                obj["optimal_loss_stderr"] = self.data.floor_stderr  # 0: exact
            if self.val_floor is not None:
                obj["val_optimal_loss"] = self.val_floor
            obj["lr"] = lr
            if obj.get("kl") is not None and obj["kl"] < -KL_TOLERANCE:
                raise AssertionError(f"negative KL {obj['kl']} for seed {s} at {self.step}")
            lines.append(obj)
            if obj["val_loss"] is not None and obj["val_loss"] < self.best_val[k]:
                self.best_val[k], self.best_lines[k] = obj["val_loss"], obj
                improved.append(k)
        if improved:
            cur = jax.device_get(self.params)
            for b, c in zip(jax.tree.leaves(self.best_params), jax.tree.leaves(cur)):
                b[improved] = np.asarray(c)[improved]
        self.acc, self.since_eval = self.zero_acc(), 0
        self.last_lines = lines
        return lines, improved


class RunChanged(FormalLMError):
    """A run directory holds a run that another config, data or start produced."""


def _diverged(lines: list[dict]) -> list[dict]:
    return [m for m in lines if m["loss"] is None or m["val_loss"] is None]


class _Files:
    """The run directory: identity, metrics and checkpoints of one run."""

    def __init__(self, run_dir: Path, identity: dict):
        self.dir, self.identity = Path(run_dir), identity
        self.cdir = self.dir / "checkpoints"
        self.last, self.best = self.cdir / "last.msgpack", self.cdir / "best.msgpack"
        self.metrics = self.dir / "metrics.jsonl"

    def holds_run(self) -> bool:
        return self.last.exists() or self.metrics.exists() or (self.dir / RUN_FILE).exists()

    def check_same(self, meta: dict) -> None:
        """Refuses to resume a run that a different config, data or start produced."""
        stored = meta.get("identity", {})
        changed = [k for k in self.identity if stored.get(k) != self.identity[k]]
        if changed:
            raise RunChanged(Problem(
                f"{self.last} was written by a run with a different {' and '.join(changed)}",
                "resume with the same config and data, or use a new run directory"))

    def meta(self, run: _Run, extra: dict | None = None) -> dict:
        return {"identity": self.identity, "step": run.step, "since_eval": run.since_eval,
                "seeds": list(run.seeds), "vocab_size": run.data.vocab_size,
                "optimal_loss": run.data.floor, "devices": run.layout(),
                "best_val": [None if not np.isfinite(v) else float(v) for v in run.best_val],
                "best_lines": run.best_lines, "last_lines": run.last_lines,
                "streak": run.streak, "saturated_at": run.saturated_at, **(extra or {})}

    def save_last(self, run: _Run) -> None:
        ckpt.save(self.last, self.meta(run), {"params": run.params, "opt_state": run.opt_state,
                                              "acc": run.acc, "best_params": run.best_params,
                                              "rest": run.rest})

    def save_best(self, run: _Run) -> None:
        steps = [b and b["step"] for b in run.best_lines]
        ckpt.save(self.best, self.meta(run, {"best_steps": steps}),
                  {"params": run.best_params, "rest": run.rest})

    def restore(self, run: _Run) -> list[str]:
        """Loads the last checkpoint into ``run``; returns the metrics lines up to its step."""
        meta, trees = ckpt.read(self.last)
        self.check_same(meta)
        if meta.get("devices") != run.layout():
            raise FormalLMError(Problem(
                f"{self.last} was written on a device layout {meta.get('devices')}, not "
                f"{run.layout()}: resuming would not end where an uninterrupted run would",
                f"resume with the same devices (--cpu-devices "
                f"{(meta.get('devices') or {}).get('devices', 1)}), or train into a new run "
                "directory"))
        run.step, run.since_eval = meta["step"], meta["since_eval"]
        run.best_val = np.array([math.inf if v is None else v for v in meta["best_val"]])
        run.best_lines, run.last_lines = meta["best_lines"], meta["last_lines"]
        run.streak, run.saturated_at = meta["streak"], meta["saturated_at"]
        src = str(self.last)
        run.params = run.shard(ckpt.restore(run.params, trees["params"], source=src))
        run.opt_state = run.shard(ckpt.restore(run.opt_state, trees["opt_state"], source=src))
        run.acc = run.shard(ckpt.restore(run.acc, trees["acc"], source=src))
        run.best_params = jax.tree.map(np.array, ckpt.restore(run.best_params,
                                                              trees["best_params"], source=src))
        return _read_metrics(self.metrics, run.step)


def identity(config: TrainConfig, data: TrainingData, init) -> dict:
    """What defines a run: the config, the data, and the parameters it starts from."""
    start = None if init is None else digest(*[a for _, a in sorted(ckpt.flatten(init).items())])
    # as JSON reads it back (tuples become lists), so a stored identity compares equal
    return json.loads(json.dumps({"config": config.to_dict(), "data": data.identity(),
                                  "init": start}))


def fit(config: TrainConfig, data: TrainingData, run_dir: str | Path, *, init=None,
        resume: bool = False, progress: bool = True, mesh="auto",
        callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Trains every seed of ``config`` on ``data``; writes metrics and checkpoints to run_dir.

    Args:
        config: the training config (its ``language`` and ``data`` are not read here: ``data``
            supplies the batches).
        data: the batches and the validation set.
        run_dir: output directory (created). A directory that already holds a run needs
            ``resume=True``.
        init: parameters to start from, stacked over the seeds (an ``nnx.State`` with a leading
            [K] axis, in ``config.seeds`` order); None starts from ``derive(seed, MODEL)``.
        resume: continue from ``run_dir/checkpoints/last.msgpack`` when it exists (the result is
            the same as an uninterrupted run); start afresh when it does not.
        progress: show a progress bar.
        mesh: a jax Mesh with axis "seeds" (and optionally "rows"), None, or "auto"
            (:func:`programs.default_mesh` over the local devices when there are several).
        callbacks: :class:`Callback` hooks.
    """
    with hold(run_dir):
        return _fit(config, data, run_dir, init, resume, progress, mesh, callbacks)


def _fit(config, data, run_dir, init, resume, progress, mesh, callbacks) -> TrainResult:
    t0 = time.perf_counter()
    check_max_len(config, data.max_tokens)
    files = _Files(run_dir, identity(config, data, init))
    if not resume and files.holds_run():
        raise FormalLMError(Problem(f"run_dir={str(run_dir)!r} already holds a run",
                                    "pass resume=True (--resume) or use a new directory"))
    files.cdir.mkdir(parents=True, exist_ok=True)
    ckpt.clean_temporary(files.cdir)
    if mesh == "auto":
        mesh = default_mesh(len(config.seeds), rows=config.model == "transformer")
    run = _Run(config, data, init, mesh)
    lines = files.restore(run) if resume and files.last.exists() else []
    (files.dir / RUN_FILE).write_text(json.dumps(files.identity, indent=1))
    for name, text in data.files().items():
        (files.dir / name).write_text(text)
    files.metrics.write_text("".join(line + "\n" for line in lines))
    hooks = list(callbacks)
    bar = ProgressBar(config.steps, run.step, data.floor, data.floor_stderr) if progress else None
    hooks += [bar] if bar else []
    seen_T: set[int] = set()
    compiles_before = run.step_fn._cache_size()
    try:
        _loop(run, files, hooks, seen_T)
    finally:
        if bar:
            bar.close()
    if not files.best.exists():
        files.save_best(run)
    return TrainResult(files.dir, config.seeds, run.step, run.last_lines, run.best_lines,
                       files.last, files.best, data.floor, data.floor_stderr,
                       time.perf_counter() - t0,
                       run.step_fn._cache_size() - compiles_before, tuple(sorted(seen_T)),
                       tuple(run.saturated_at))


def _loop(run: _Run, files: _Files, hooks, seen_T: set) -> None:
    config = run.config
    with open(files.metrics, "a") as mf:
        while run.step < config.steps and not run.done():
            seen_T.add(run.train_step(run.step))
            for h in hooks:
                h.on_step(run.step)
            if run.step % config.eval_every == 0 or run.step == config.steps:
                lines, improved = run.evaluate()
                run.freeze_saturated(lines)
                mf.write("".join(json.dumps(m) + "\n" for m in lines))
                mf.flush()
                if bad := _diverged(lines):
                    raise FormalLMError(Problem(
                        f"training diverged: seed(s) {[m['seed'] for m in bad]} have a "
                        f"non-finite loss at step {run.step}",
                        "lower optimizer.lr (or clip gradients: optimizer.grad_clip > 0), then "
                        "train into a new run directory"))
                if improved:
                    files.save_best(run)
                for h in hooks:
                    h.on_eval(run.step, lines)
            if run.step % config.checkpoint_every == 0 or run.step == config.steps or run.done():
                files.save_last(run)
                for h in hooks:
                    h.on_checkpoint(run.step, files.last)


def finished(config: TrainConfig, data: TrainingData, run_dir: str | Path, *,
             init=None) -> TrainResult | None:
    """The result of the finished run in ``run_dir``, read from its last checkpoint without
    training (for jobs that merge what other jobs trained); None when there is no run there,
    it is unfinished, or another config, data or start produced it."""
    files = _Files(run_dir, identity(config, data, init))
    if not files.last.exists():
        return None
    meta, _ = ckpt.read(files.last)
    if meta.get("identity") != files.identity:
        return None
    saturated = meta.get("saturated_at") or [None] * len(config.seeds)
    if meta["step"] < config.steps and any(s is None for s in saturated):
        return None
    return TrainResult(files.dir, config.seeds, meta["step"], meta["last_lines"],
                       meta["best_lines"], files.last, files.best, data.floor,
                       data.floor_stderr, 0.0, 0, (), tuple(saturated))

