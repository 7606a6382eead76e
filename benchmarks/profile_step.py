"""Where the training step's time goes, measured: a trace of the compiled step, by component.

Runs the package's training step (``bench_training.Ours``: what ``loop.fit`` runs) under
``jax.profiler``, reads the time of every XLA op it executed from the trace
(``jax.profiler.ProfileData``) and adds it up by model component. An op's component is the
innermost ``jax.named_scope`` it was traced under, read from the op's metadata in the compiled
HLO: the model labels ``embed``, ``attention`` (``project``: the q/k/v/out linears, ``scores``:
q.k, mask and softmax, ``mix``: the weighted sum of values), ``mlp``, ``norm``, ``dropout`` and
``head``; the trainer labels ``loss``, ``accumulate`` (adding each micro-batch's gradient) and
``optimizer``. The backward pass of a scope counts to that scope.

The plain padded reference steps of ``bench_training`` (``--reference-attention`` model and
full) are timed in the same run, interleaved with ours, and the summary compares them with our
step and with the two floors: what 34x would need, and the most the floors allow.

Printed per component: thread-milliseconds per step inside its ops, share, ops executed per
step and their median duration. "outside any op" is the rest of (wall time x threads): time the
threads spent between ops (dispatch, loop control) or idle, waiting for the other thread.

The second part measures floors: the MLP's forward + backward alone at the step's shape
(d_model x d_ff, as many tokens as the batch holds), whole and in token tiles of several
sizes, against the 1024^2 matmul peak of the same run; and one layer's attention core alone on
the batch's packed rows, in several query-block sizes, looped as the step loops and all at once.
A part's floor is the fastest way of running it measured here, its ops inside the step
included: a floor among the forms tried, not a proof of a limit.

    python benchmarks/profile_step.py                   # paper shape, K = 1, 3 traced steps
    python benchmarks/profile_step.py --seeds 8 --steps 2
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.profiler import ProfileData

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_training as bt  # noqa: E402  (the benchmark's shapes, batches and step)
from formal_lm.models import transformer  # noqa: E402
from formal_lm.training import programs  # noqa: E402

# innermost scope wins; "project"/"scores"/"mix" are the parts of "attention"
SCOPES = ("embed", "attention", "project", "scores", "mix", "mlp", "norm", "dropout", "head",
          "loss", "accumulate", "optimizer")
LABELS = {"project": "attention: q/k/v/out linears", "scores": "attention: q.k, mask, softmax",
          "mix": "attention: weights x values", "attention": "attention: other",
          "accumulate": "gradient accumulation"}
ATTENTION = ("attention", "project", "scores", "mix")
_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = .*?metadata=\{op_name="([^"]*)"')


def component(op_name: str) -> str:
    """The innermost known scope in an op's name stack, or "unlabelled"."""
    found = [w for w in re.split(r"[/()]", op_name) if w in SCOPES]
    return found[-1] if found else "unlabelled"


def op_components(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> component, from the op_name metadata of the compiled module."""
    return {m.group(1): component(m.group(2))
            for m in map(_INSTR.match, hlo_text.splitlines()) if m}


def trace_ops(run, steps: int) -> tuple[list[tuple[str, str, int, int, int]], float]:
    """Runs ``run(steps)`` under the profiler: ([(thread, op, start, end, dur) ns], wall s)."""
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        t = time.perf_counter()
        run(steps)
        wall = time.perf_counter() - t
        jax.profiler.stop_trace()
        path = sorted(glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True))[-1]
        data = ProfileData.from_file(path)
        ops = []
        for plane in data.planes:
            for line in plane.lines:
                for e in line.events:
                    stats = dict(e.stats)
                    if "hlo_op" in stats:
                        ops.append((line.name, stats["hlo_op"], e.start_ns, e.end_ns,
                                    e.duration_ns))
    return ops, wall


def exclusive(ops):
    """Each op's time minus the ops nested inside it on the same thread (a while loop's own
    event would otherwise count its body twice): [(thread, op, exclusive ns)]."""
    out, by_thread = [], collections.defaultdict(list)
    for op in ops:
        by_thread[op[0]].append(op)
    for thread, evs in by_thread.items():
        evs.sort(key=lambda e: (e[2], -e[3]))
        stack = []  # [index into out, end]
        for _, name, start, end, dur in evs:
            while stack and stack[-1][1] <= start:
                stack.pop()
            if stack and end <= stack[-1][1]:
                parent = stack[-1][0]
                out[parent] = (out[parent][0], out[parent][1], out[parent][2] - dur)
            out.append((thread, name, dur))
            stack.append((len(out) - 1, end))
    return out


def overlap(ops) -> tuple[int, int]:
    """(ns with an op running on at least one thread, ns with ops on two threads at once)."""
    if not ops:
        return 0, 0
    by_thread = collections.defaultdict(list)
    for thread, _, start, end, _ in ops:
        by_thread[thread].append((start, end))
    edges = []
    for spans in by_thread.values():  # each thread's busy time as disjoint intervals
        spans.sort()
        lo, hi = spans[0]
        for start, end in spans[1:] + [(float("inf"), float("inf"))]:
            if start > hi:
                edges += [(lo, 1), (hi, -1)]
                lo, hi = start, end
            else:
                hi = max(hi, end)
    edges.sort()
    one = two = level = 0
    for (t, d), (t_next, _) in zip(edges, edges[1:] + [(edges[-1][0], 0)]):
        level += d
        one += (t_next - t) if level >= 1 else 0
        two += (t_next - t) if level >= 2 else 0
    return one, two


def profile(ours, steps: int) -> dict:
    """Per-component thread time of ``steps`` steps of ``ours``; see the module docstring."""
    names = op_components(ours.compiled.as_text())
    ops, wall = trace_ops(ours.run, steps)
    ex = exclusive(ops)
    threads = sorted({t for t, _, _ in ex})
    busy = collections.Counter()
    durs = collections.defaultdict(list)
    for _, name, dur in ex:
        c = names.get(name, "unlabelled")
        busy[c] += dur
        durs[c].append(dur)
    return {"wall_s": wall / steps, "threads": len(threads),
            "ms": {c: busy[c] / steps / 1e6 for c in busy},
            "ops": {c: len(durs[c]) / steps for c in durs},
            "median_us": {c: statistics.median(durs[c]) / 1e3 for c in durs},
            "ops_per_step": len(ex) / steps,
            "busy_share": [ns / 1e9 / wall for ns in overlap(ops)]}


def mlp_floor(tokens: int, d: int, f: int, tiles=(None, 128, 256, 512, 1024)) -> dict:
    """ms of one MLP layer's forward + backward (ReLU, d -> f -> d) on ``tokens`` tokens, whole
    or in token tiles (a scan over tiles, gradients summed), best of 5 calls for each."""
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (tokens, d))
    g = jax.random.normal(k[1], (tokens, d))
    p = (jax.random.normal(k[2], (d, f)) * 0.3, jnp.zeros(f), jax.random.normal(k[3], (f, d)))

    def grads(p, x, g):
        return jax.grad(lambda p, x: jnp.vdot(jax.nn.relu(x @ p[0] + p[1]) @ p[2], g),
                        argnums=(0, 1))(p, x)

    def tiled(n):
        def f_(p, x, g):
            m = tokens // n * n
            xs, gs = x[:m].reshape(-1, n, d), g[:m].reshape(-1, n, d)

            def body(acc, xg):
                dp, dx = grads(p, *xg)
                return jax.tree.map(jnp.add, acc, dp), dx
            dp, dx = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, p), (xs, gs))
            return dp, dx, grads(p, x[m:], g[m:])  # the remainder as one piece
        return f_

    return {"whole" if n is None else f"tiles of {n}":
            best_ms(jax.jit(grads if n is None else tiled(n)), p, x, g) for n in tiles}


def attention_floor(ours, blocks=(16, 32, 64, 1024)) -> dict:
    """ms of one layer's attention core (q.k, mask, softmax, weights x values; forward +
    backward) over the used packed rows of one seed's batch, summed over its row lengths.

    For each query-block size (``transformer.CAUSAL_BLOCK``; 1024: one block, the whole
    L x L), the rows run as the step runs them (``programs.MICRO_ROWS`` rows at a time, the
    last ``rows % MICRO_ROWS`` one at a time) and all at once; each row length keeps its
    fastest form, best of 5 calls."""
    heads = ours.eng.config.model_config["n_heads"]
    dk = ours.eng.config.model_config["d_model"] // heads
    micro = programs.MICRO_ROWS

    def core(q, kk, v, pos, seg, g):
        return jnp.vdot(transformer._causal_attend(q, kk, v, pos, None, seg), g)

    grads = jax.grad(core, argnums=(0, 1, 2))

    def looped(*arrs):
        rows = arrs[0].shape[0]
        full = rows // micro * micro
        return [jax.lax.map(lambda a: grads(*a), tuple(x[lo:hi].reshape(-1, size, *x.shape[1:])
                                                       for x in arrs))
                for lo, hi, size in ((0, full, micro), (full, rows, 1)) if hi > lo]

    total = collections.defaultdict(float)
    for part in ours.batches[0]:
        rows = int(np.asarray(part["rows"]).ravel()[0])
        pos, seg = part["pos"][0, :rows], part["seg"][0, :rows]
        k = jax.random.split(jax.random.key(1), 4)
        q, kk, v, g = (jax.random.normal(k[i], (rows, pos.shape[1], heads, dk)) for i in range(4))
        args = (q, kk, v, pos, seg, g)
        best = {}
        for block in blocks:
            for form, f in (("loop", looped), ("whole", grads)):
                old, transformer.CAUSAL_BLOCK = transformer.CAUSAL_BLOCK, block
                try:
                    fj = jax.jit(f).lower(*args).compile()
                finally:
                    transformer.CAUSAL_BLOCK = old
                best[f"{form}, blocks of {block}"] = best_ms(fj, *args)
        for name, ms in best.items():
            total[name] += ms
        total["best per row length"] += min(best.values())
    return dict(total)


def best_ms(f, *args, calls: int = 5) -> float:
    """The fastest of ``calls`` timed calls of ``f(*args)`` after one untimed call, in ms."""
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    return min(ts) * 1e3


def real_tokens(ours) -> int:
    """Scored targets in the first seed's batch of the step (what the packed step works for)."""
    return sum(int(np.sum(np.asarray(part["tgt"])[0] != bt.PAD_ID)) for part in ours.batches[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(bt.SHAPES), default="paper")
    ap.add_argument("--seeds", type=int, default=1, help="K seeds in the step")
    ap.add_argument("--steps", type=int, default=3, help="traced steps")
    args = ap.parse_args(argv)
    spec = bt.SHAPES[args.shape]
    peak, load0 = bt.matmul_peak(), bt.load()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}   jax {jax.__version__}"
          f"   matmul peak (1024^2 f32): {peak:.0f} GFLOP/s   load: {load0:.2f}   "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    ours = bt.Ours(args.shape, args.seeds)
    # the in-run references of bench_training (one seed, padded [B, T]), interleaved with ours
    refs = {a: bt.Reference(args.shape, a) for a in ("model", "full")}
    untraced, ref_s = [], collections.defaultdict(list)
    for _ in range(3):
        untraced.append(ours.run(args.steps))
        for a, r in refs.items():
            ref_s[a].append(r.run(args.steps)[0])
    ref_s = {a: statistics.median(v) for a, v in ref_s.items()}
    plain_s = statistics.median(w for w, _ in untraced)
    cpu_s = statistics.median(c for _, c in untraced)
    prof = profile(ours, args.steps)
    cores = len(os.sched_getaffinity(0))
    capacity = prof["wall_s"] * 1e3 * cores
    inside = sum(prof["ms"].values())
    print(f"\nshape {args.shape}, K={args.seeds}: {plain_s:.3f} s per step untraced "
          f"(process CPU {cpu_s:.3f} s: {cpu_s / plain_s:.2f} of {cores} cores busy, counting "
          f"threads that spin while they wait), {prof['wall_s']:.3f} s traced; "
          f"{prof['ops_per_step']:.0f} ops per step on {prof['threads']} threads")
    head = f"{'component':34} {'thread ms/step':>14} {'share':>6} {'ops/step':>9} {'median us':>9}"
    print(head + "\n" + "-" * len(head))
    for c, ms in sorted(prof["ms"].items(), key=lambda kv: -kv[1]):
        print(f"{LABELS.get(c, c):34} {ms:>14.1f} {ms / capacity:>6.1%} "
              f"{prof['ops'][c]:>9.0f} {prof['median_us'][c]:>9.1f}")
    print(f"{'outside any op (dispatch, idle)':34} {capacity - inside:>14.1f} "
          f"{(capacity - inside) / capacity:>6.1%}")
    print(f"{'total (traced wall x cores)':34} {capacity:>14.1f}")
    one, two = prof["busy_share"]
    print(f"an op was running during {one:.0%} of the traced wall time; ops ran on two threads at "
          f"once during {two:.0%} of it")

    m = spec["model"]
    n = real_tokens(ours)
    floor = mlp_floor(n, m["d_model"], m["d_ff"])
    flop = 3 * 2 * 2 * n * m["d_model"] * m["d_ff"]  # fwd + bwd of one layer's two matmuls
    print(f"\nMLP floor: one layer, {n} tokens, {m['d_model']} -> {m['d_ff']} -> "
          f"{m['d_model']}, forward + backward ({flop / 1e9:.2f} GFLOP)")
    for k, ms in floor.items():
        print(f"  {k:14} {ms:7.1f} ms   {flop / ms / 1e6:6.1f} GFLOP/s   "
              f"({flop / ms / 1e6 / peak:.0%} of the matmul peak)")
    best = min(floor.values())
    print(f"  x {m['n_layers']} layers: {best * m['n_layers']:.0f} ms per seed-step at the best "
          f"tiling; the step's MLP ops took {prof['ms'].get('mlp', 0) / args.seeds:.0f} thread-ms "
          f"per seed-step")
    att = attention_floor(ours)
    step_att = sum(v for c, v in prof["ms"].items() if c in ATTENTION) / args.seeds
    print("\nattention floor: one layer's attention core (q.k, mask, softmax, weights x values; "
          "forward + backward) over one seed's packed rows")
    for k, ms in att.items():
        print(f"  {k:26} {ms:7.1f} ms")
    print(f"  x {m['n_layers']} layers: {att['best per row length'] * m['n_layers']:.0f} ms per "
          f"seed-step; the step's attention ops took {step_att:.0f} thread-ms per seed-step")
    # a part's floor: the fastest way of running it measured here, the step's own included
    floors = (min(best * m["n_layers"], prof["ms"].get("mlp", 0) / args.seeds)
              + min(att["best per row length"] * m["n_layers"], step_att)) / 1e3
    print(f"\nagainst the plain padded step timed in this run (ours {plain_s / args.seeds:.3f} s "
          f"per seed-step; the MLP and attention floors alone {floors:.3f} s, each the faster of "
          f"its forms above and its ops in the step):")
    for a, r in ref_s.items():
        print(f"  reference ({a} attention) {r:.3f} s per step: ours {r * args.seeds / plain_s:.1f}x;"
              f" 34x would need {r / 34 * 1e3:.0f} ms per seed-step; the floors allow at most "
              f"{r / floors:.1f}x")
    print(f"load at the end: {bt.load():.2f}")
    return {"profile": prof, "mlp": floor, "attention": att, "seed_step_s": plain_s / args.seeds,
            "reference_s": ref_s, "floors_s": floors}


if __name__ == "__main__":
    main()
