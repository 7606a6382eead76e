"""Throughput of the vmapped training step: K seeds of one config in one program.

Prints, per (shape, K): compile time, seconds per program step (all K seeds advance one
optimizer step), seconds per seed-step, seed-steps/s (all seeds) and its ratio to the paper's
PyTorch code, tokens/s (padded tokens, all seeds), achieved GFLOP/s next to a matmul peak
measured in the same run, peak memory per seed (XLA memory analysis) and process CPU seconds
per program step.

    python benchmarks/bench_training.py            # paper + cpu shapes, K = 1, 8, 32
    python benchmarks/bench_training.py --quick    # cpu shape K = 1, 8; paper shape K = 1
    python benchmarks/bench_training.py --devices 2   # the CPU as 2 JAX devices: the step is
                                                      # sharded over programs.default_mesh(K)

Shapes: "paper" is the ICML 2024 a^n b^n Transformer (d=10, 5 heads, d_ff 1024, 5 layers,
258 tokens, batch 128, dropout 0.1); "cpu" is a small CPU shape (d=16, 2 heads, d_ff 64,
2 layers, 64 tokens, batch 32).

Batches are a^n b^n strings with n uniform in 1..(T-2)/2, padded to T (about half of each
padded batch is PAD, as in the paper's training data); the loop packs them (packing.pack_classes), so
only real tokens do work. GFLOP/s counts the FLOPs of the padded [B, T] step with full
T x T attention (``padded_flops``: 25.7 GFLOP per seed-step at the paper shape), i.e. the work
the PyTorch reference does per step, so it is comparable across versions; the packed step
does less arithmetic than that. The ratio column is per-seed steps/s against the paper's
released PyTorch code on this machine (REFERENCE_S seconds per step, paper shape).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from formal_lm.training import TrainConfig, Validation
from formal_lm.training.loop import _Run
from formal_lm.training.programs import default_mesh

SHAPES = {
    # as nn.Transformer in the paper's released code: post-LayerNorm, ReLU
    "paper": dict(model=dict(d_model=10, n_heads=5, d_ff=1024, n_layers=5, max_len=258,
                             dropout=0.1, norm="post", activation="relu"), T=258, B=128),
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


REFERENCE_S = 9.5  # s per optimizer step of the paper's PyTorch code, paper shape, this machine


def padded_flops(spec: dict, vocab_size: int) -> float:
    """FLOPs of one seed's fwd + bwd (3x fwd) on the padded [B, T] batch with full T x T
    attention, as the reference computes it (25.7 GFLOP at the paper shape)."""
    m, T = spec["model"], spec["T"] - 1
    D, F, L = m["d_model"], m["d_ff"], m["n_layers"]
    per_token = L * (2 * 4 * D * D + 2 * 2 * D * F + 2 * 2 * T * D) + 2 * D * vocab_size
    return 3 * per_token * spec["B"] * T


def anbn_batch(K: int, B: int, T: int, seed: int = 0) -> np.ndarray:
    """int32 [K, B, T]: BOS a^n b^n EOS PAD..., n uniform in 1..(T-2)//2 (a=3, b=4)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((K, B, T), np.int32)
    for k in range(K):
        for b, n in enumerate(rng.integers(1, (T - 2) // 2 + 1, size=B)):
            ids[k, b, 0], ids[k, b, 1:n + 1], ids[k, b, n + 1:2 * n + 1] = 1, 3, 4
            ids[k, b, 2 * n + 1] = 2
    return ids


class Batches:
    """The loop's data for the benchmark: fixed a^n b^n batches (only validation is read)."""

    floor, floor_stderr, files = None, 0.0, dict

    def __init__(self, vocab_size: int, T: int):
        self.vocab_size, self.bucket, self.max_tokens = vocab_size, T, T
        self.ids = anbn_batch(1, 8, T)[0]

    def validation(self):
        return Validation(self.ids, None)


def bench(shape: str, K: int, steps: int, vocab_size: int = 5) -> dict:
    spec = SHAPES[shape]
    cfg = TrainConfig(language=None, steps=1000, seeds=K, batch_size=spec["B"],
                      model_config=spec["model"])
    eng = _Run(cfg, Batches(vocab_size, spec["T"]), None, default_mesh(K))
    batches = [eng.place(anbn_batch(K, spec["B"], spec["T"], seed=i))[0] for i in range(2)]
    args = (eng.params, eng.opt_state, eng.zero_acc(), eng.rest, batches[0], None, eng.keys,
            eng.active(), np.int32(0))
    t = time.perf_counter()
    compiled = eng.step_fn.lower(*args).compile()
    compile_s = time.perf_counter() - t
    flops = padded_flops(spec, vocab_size) * K
    mem = compiled.memory_analysis()
    peak = float("nan")
    if mem is not None:
        peak = (mem.temp_size_in_bytes + mem.argument_size_in_bytes
                + mem.output_size_in_bytes) / K / 2 ** 20
    params, opt, acc = eng.params, eng.opt_state, eng.zero_acc()
    active = eng.active()
    params, opt, acc = compiled(params, opt, acc, eng.rest, batches[0], None, eng.keys, active,
                                np.int32(0))
    jax.block_until_ready(params)
    t, c = time.perf_counter(), time.process_time()
    for i in range(steps):
        params, opt, acc = compiled(params, opt, acc, eng.rest, batches[i % 2], None, eng.keys,
                                    active, np.int32(i + 1))
    jax.block_until_ready(params)
    dt = (time.perf_counter() - t) / steps
    cpu = (time.process_time() - c) / steps  # CPU seconds (all threads) per step
    return {"shape": shape, "K": K, "compile_s": compile_s, "step_s": dt,
            "seed_steps_s": K / dt, "tokens_s": K * spec["B"] * spec["T"] / dt,
            "vs_ref": K / dt * REFERENCE_S, "cpu_s": cpu,
            "gflops": flops / dt / 1e9, "mib_per_seed": peak}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small subset (about a minute)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per case")
    ap.add_argument("--shape", choices=sorted(SHAPES), help="only this shape")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 8, 32], help="values of K")
    ap.add_argument("--devices", type=int, default=1,
                    help="CPU devices (jax_num_cpu_devices); with several, the step is sharded "
                         "over programs.default_mesh(K): seeds first, then packed rows")
    args = ap.parse_args(argv)
    jax.config.update("jax_num_cpu_devices", args.devices)
    if args.quick:
        cases = [("cpu", 1), ("cpu", 8), ("paper", 1)]
    else:
        cases = [(s, k) for s in ("cpu", "paper") for k in args.seeds]
    if args.shape:
        cases = [(s, k) for s, k in cases if s == args.shape]
    peak = matmul_peak()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}   "
          f"matmul peak (1024^2 f32): {peak:.1f} GFLOP/s")
    print(f"reference: paper's PyTorch code, {REFERENCE_S} s per step (one seed, paper shape)")
    head = (f"{'shape':6} {'K':>3} {'compile s':>9} {'step s':>8} {'s/seed-step':>11} "
            f"{'seed-steps/s':>12} {'x ref':>6} {'tokens/s':>10} {'GFLOP/s':>8} {'% peak':>6} "
            f"{'MiB/seed':>8} {'cpu s':>6}")
    print(head)
    print("-" * len(head))
    for shape, K in cases:
        steps = args.steps or (3 if shape == "paper" else 10)
        r = bench(shape, K, steps)
        # step s: one program step (all K seeds advance one optimizer step together);
        # seed-steps/s = K / step s; x ref = seed-steps/s * REFERENCE_S (paper shape only);
        # cpu s: process CPU seconds per program step (all threads; on a shared machine
        # cpu s close to step s means the step ran on about one core)
        ratio = f"{r['vs_ref']:>6.1f}" if shape == "paper" else f"{'-':>6}"
        print(f"{r['shape']:6} {r['K']:>3} {r['compile_s']:>9.1f} {r['step_s']:>8.3f} "
              f"{r['step_s'] / K:>11.3f} {r['seed_steps_s']:>12.2f} {ratio} "
              f"{r['tokens_s']:>10.0f} {r['gflops']:>8.1f} {100 * r['gflops'] / peak:>6.1f} "
              f"{r['mib_per_seed']:>8.1f} {r['cpu_s']:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
