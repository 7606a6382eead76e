"""One training config as N processes: each trains its shard of the seeds, process 0 gathers.

Seeds never interact, so a multi-process run needs no collectives inside the training step:
process ``i`` of ``N`` trains seeds ``config.seeds[i::N]`` (sharded over its local devices as
usual) into ``RUN_DIR/process-i/``; then every process takes part in one all-gather of the final
per-seed metrics, and process 0 writes the merged ``RUN_DIR/metrics.jsonl`` (all seeds, sorted
by step then seed), ``RUN_DIR/checkpoints/{best,last}.msgpack`` (every seed, the layout of a
single-process run, so ``load_models(RUN_DIR)`` reads it) and ``RUN_DIR/result.json``. Each
process resumes from its own ``RUN_DIR/process-i/`` checkpoints.

Launch by hand on one machine (what tests/test_distributed.py does)::

    python -m formal_lm.training.distributed CONFIG RUN_DIR --num-processes 2 --process-id 0 \\
        --coordinator 127.0.0.1:12355
    python -m formal_lm.training.distributed CONFIG RUN_DIR --num-processes 2 --process-id 1 \\
        --coordinator 127.0.0.1:12355

or with :func:`launch_local`, which starts N such subprocesses and kills them all on timeout.
On a cluster, see README.md in this folder (SLURM: one task per process; process id from
``SLURM_PROCID``, count from ``SLURM_NTASKS``, coordinator = first host of the allocation).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from formal_lm.errors import FormalLMError, Problem
from formal_lm.training import checkpoint as ckpt

FIELDS = ("loss", "val_loss", "kl")


def initialize(coordinator: str, num_processes: int, process_id: int, *,
               timeout_s: int = 60, heartbeat_s: int = 10) -> None:
    """``jax.distributed.initialize`` with short timeouts (a missing peer fails fast)."""
    import jax
    host, port = coordinator.rsplit(":", 1)
    bind = f"{host}:{port}" if host in ("127.0.0.1", "localhost") else f"0.0.0.0:{port}"
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, coordinator_bind_address=bind,
                               initialization_timeout=timeout_s,
                               heartbeat_timeout_seconds=heartbeat_s,
                               shutdown_timeout_seconds=timeout_s)


def shard_seeds(seeds: tuple[int, ...], num_processes: int, process_id: int) -> tuple[int, ...]:
    """The seeds process ``process_id`` trains (round robin).

    Example:
        >>> shard_seeds((0, 1, 2, 3, 4), 2, 1)
        (1, 3)
    """
    return tuple(seeds[process_id::num_processes])


def run_process(config, run_dir: str | Path, *, coordinator: str, num_processes: int,
                process_id: int, resume: bool = False, progress: bool = False) -> dict | None:
    """Trains this process's seeds, then gathers; returns the merged result on process 0."""
    import dataclasses

    import jax
    from jax.experimental import multihost_utils

    from formal_lm.training.train import train

    initialize(coordinator, num_processes, process_id)
    mine = shard_seeds(config.seeds, num_processes, process_id)
    if not mine:
        raise FormalLMError(Problem(f"process {process_id} has no seeds",
                                    f"use at most {len(config.seeds)} processes"))
    run_dir = Path(run_dir)
    res = train(dataclasses.replace(config, seeds=mine), run_dir / f"process-{process_id}",
                resume=resume, progress=progress)
    # Fixed-size per-process table so every process contributes the same shape:
    # rows = max seeds per process, columns = (seed, *FIELDS), padded with NaN.
    rows = -(-len(config.seeds) // num_processes)
    table = np.full((rows, 1 + len(FIELDS)), np.nan)
    for r, line in enumerate(res.final):
        table[r] = [line["seed"], *(np.nan if line[f] is None else line[f] for f in FIELDS)]
    gathered = np.asarray(multihost_utils.process_allgather(table))  # [N, rows, 1 + F]
    out = None
    if jax.process_index() == 0:
        final = {}
        for row in gathered.reshape(-1, gathered.shape[-1]):
            if not np.isnan(row[0]):
                final[int(row[0])] = {"seed": int(row[0]),
                                      **{f: float(v) for f, v in zip(FIELDS, row[1:])}}
        out = {"seeds": list(config.seeds), "step": res.step,
               "final": [final[s] for s in config.seeds]}
        lines = []
        for i in range(num_processes):  # RUN_DIR is on a shared filesystem: merge the histories
            path = run_dir / f"process-{i}" / "metrics.jsonl"
            if not path.exists():
                raise FormalLMError(Problem(
                    f"{path} is missing, so the merged metrics.jsonl would lack process {i}'s "
                    "seeds", "put RUN_DIR on a filesystem that every process shares"))
            lines += [json.loads(x) for x in path.read_text().splitlines()]
        lines.sort(key=lambda m: (m["step"], config.seeds.index(m["seed"])))
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
        for which in ("best", "last"):
            merge_checkpoints([run_dir / f"process-{i}" / "checkpoints" / f"{which}.msgpack"
                               for i in range(num_processes)],
                              run_dir / "checkpoints" / f"{which}.msgpack", config.seeds)
        (run_dir / "result.json").write_text(json.dumps(out, indent=1))
    multihost_utils.sync_global_devices("formal_lm.training.done")
    return out


def merge_checkpoints(parts: list[Path], out: Path, seeds: tuple[int, ...]) -> None:
    """One checkpoint of every seed from the processes' checkpoints (each holding some seeds),
    in the layout of a single-process run, so ``load_models(RUN_DIR)`` reads it."""
    metas, trees = zip(*(ckpt.read(p) for p in parts))
    order = [s for m in metas for s in m["seeds"]]
    idx = [order.index(s) for s in seeds]
    merged = {name: {path: np.concatenate([t[name][path] for t in trees])[idx]
                     for path in trees[0][name]} for name in trees[0]}
    meta = dict(metas[0])
    meta["seeds"] = list(seeds)
    meta["identity"] = {**meta["identity"],
                        "config": {**meta["identity"]["config"], "seeds": list(seeds)}}
    for key in ("best_val", "best_lines", "best_steps"):
        if key in meta:
            values = [v for m in metas for v in m[key]]
            meta[key] = [values[i] for i in idx]
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt.save_arrays(out, meta, merged)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(config_path: str | Path, run_dir: str | Path, num_processes: int, *,
                 timeout_s: float = 120, extra_env: dict | None = None,
                 python: str = sys.executable) -> dict:
    """Runs ``num_processes`` workers on 127.0.0.1; kills all of them if any fails or time runs
    out. Returns process 0's merged result (``RUN_DIR/result.json``)."""
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(extra_env or {})}
    procs = [subprocess.Popen([python, "-m", "formal_lm.training.distributed", str(config_path),
                               str(run_dir), "--num-processes", str(num_processes),
                               "--process-id", str(i), "--coordinator", f"127.0.0.1:{port}"],
                              env=env)
             for i in range(num_processes)]
    deadline = time.monotonic() + timeout_s
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                raise FormalLMError(Problem(f"distributed run did not finish in {timeout_s}s"))
            if any(p.returncode not in (None, 0) for p in procs):
                codes = [p.returncode for p in procs]
                raise FormalLMError(Problem(f"a worker failed: return codes {codes}"))
            time.sleep(0.1)
        codes = [p.returncode for p in procs]
        if any(codes):
            raise FormalLMError(Problem(f"a worker failed: return codes {codes}"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    return json.loads((Path(run_dir) / "result.json").read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m formal_lm.training.distributed")
    ap.add_argument("config")
    ap.add_argument("run_dir")
    ap.add_argument("--num-processes", type=int, default=int(os.environ.get("SLURM_NTASKS", 1)))
    ap.add_argument("--process-id", type=int, default=int(os.environ.get("SLURM_PROCID", 0)))
    ap.add_argument("--coordinator", default=os.environ.get("FORMAL_LM_COORDINATOR"),
                    help="HOST:PORT of process 0")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    if not args.coordinator:
        ap.error("--coordinator HOST:PORT (or FORMAL_LM_COORDINATOR) is required")
    from formal_lm.training.config import load_config
    run_process(load_config(args.config), args.run_dir, coordinator=args.coordinator,
                num_processes=args.num_processes, process_id=args.process_id,
                resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
