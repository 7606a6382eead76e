"""Throughput of the vmapped training step: K seeds of one config in one program.

Prints, per (shape, K): compile time, program steps/s, per-seed optimizer steps/s, tokens/s
(all seeds), achieved GFLOP/s (XLA cost analysis of the compiled step) next to a matmul peak
measured in the same run, and peak memory per seed (XLA memory analysis).

    python benchmarks/bench_training.py            # paper + cpu shapes, K = 1, 8, 32
    python benchmarks/bench_training.py --quick    # cpu shape K = 1, 8; paper shape K = 1

Shapes: "paper" is the ICML 2024 a^n b^n Transformer (d=10, 5 heads, d_ff 1024, 5 layers,
258 tokens, batch 128, dropout 0.1); "cpu" is a small CPU shape (d=16, 2 heads, d_ff 64,
2 layers, 64 tokens, batch 32).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from formal_lm.training import TrainConfig
from formal_lm.training.engine import Engine

SHAPES = {
    "paper": dict(model=dict(d_model=10, n_heads=5, d_ff=1024, n_layers=5, max_len=258,
                             dropout=0.1), T=258, B=128),
    "cpu": dict(model=dict(d_model=16, n_heads=2, d_ff=64, n_layers=2, max_len=64), T=64, B=32),
}


def matmul_peak(n: int = 1024, reps: int = 5) -> float:
    """GFLOP/s of an n x n float32 matmul on the default device."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        a = f(a)
    a.block_until_ready()
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def bench(shape: str, K: int, steps: int, vocab_size: int = 5) -> dict:
    spec = SHAPES[shape]
    cfg = TrainConfig(language="anbn", steps=1000, seeds=K, batch_size=spec["B"],
                      model_config=spec["model"])
    eng = Engine(cfg, vocab_size, mesh=None)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab_size, size=(K, spec["B"], spec["T"])).astype(np.int32)
    ids[:, :, 0], ids[:, :, -1] = 1, 2  # BOS ... EOS, every token real
    ids = jnp.asarray(ids)
    args = (eng.params, eng.opt_state, eng.zero_acc(), eng.rest, ids, None, eng.keys,
            np.int32(0))
    t = time.perf_counter()
    compiled = eng.step_fn.lower(*args).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    mem = compiled.memory_analysis()
    peak = float("nan")
    if mem is not None:
        peak = (mem.temp_size_in_bytes + mem.argument_size_in_bytes
                + mem.output_size_in_bytes) / K / 2 ** 20
    params, opt, acc = eng.params, eng.opt_state, eng.zero_acc()
    params, opt, acc = compiled(params, opt, acc, eng.rest, ids, None, eng.keys, np.int32(0))
    jax.block_until_ready(params)
    t = time.perf_counter()
    for i in range(steps):
        params, opt, acc = compiled(params, opt, acc, eng.rest, ids, None, eng.keys,
                                    np.int32(i + 1))
    jax.block_until_ready(params)
    dt = (time.perf_counter() - t) / steps
    return {"shape": shape, "K": K, "compile_s": compile_s, "step_s": dt,
            "seed_steps_s": 1 / dt, "tokens_s": K * spec["B"] * spec["T"] / dt,
            "gflops": flops / dt / 1e9, "mib_per_seed": peak}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small subset (about a minute)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per case")
    ap.add_argument("--shape", choices=sorted(SHAPES), help="only this shape")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 8, 32], help="values of K")
    args = ap.parse_args(argv)
    if args.quick:
        cases = [("cpu", 1), ("cpu", 8), ("paper", 1)]
    else:
        cases = [(s, k) for s in ("cpu", "paper") for k in args.seeds]
    if args.shape:
        cases = [(s, k) for s, k in cases if s == args.shape]
    peak = matmul_peak()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}   "
          f"matmul peak (1024^2 f32): {peak:.1f} GFLOP/s")
    head = (f"{'shape':6} {'K':>3} {'compile s':>9} {'step s':>8} {'seed-steps/s':>12} "
            f"{'tokens/s':>10} {'GFLOP/s':>8} {'% peak':>6} {'MiB/seed':>8}")
    print(head)
    print("-" * len(head))
    for shape, K in cases:
        steps = args.steps or (3 if shape == "paper" else 10)
        r = bench(shape, K, steps)
        # seed-steps/s: optimizer steps per second of each seed (all K advance together)
        print(f"{r['shape']:6} {r['K']:>3} {r['compile_s']:>9.1f} {r['step_s']:>8.3f} "
              f"{r['seed_steps_s']:>12.2f} {r['tokens_s']:>10.0f} {r['gflops']:>8.1f} "
              f"{100 * r['gflops'] / peak:>6.1f} {r['mib_per_seed']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
