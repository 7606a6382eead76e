"""Throughput of the training step against a plain padded step timed in the same run.

Two programs train the same model on the same a^n b^n batches, timed interleaved in one process
(reference, ours, reference, ours, ...), so the ratio between them holds whatever the machine's
load was:

* **ours**: the package's step (``formal_lm.training.loop._Run`` + ``programs``): K seeds of one
  config in one program, packed rows, gradient accumulated over micro-batches;
* **reference**: a plain padded step of ONE seed written here in JAX: the same
  ``formal_lm.models`` Transformer called on the whole padded [B, T] batch,
  ``model(ids[:, :-1], rngs=key)`` in train mode (dropout on), PAD-masked NLL, AdamW with
  global-norm clipping (optax, the config's hyper-parameters), jitted; no packing. With several
  devices (``--devices``), its batch is sharded over the most of them that divide B (data
  parallel, jit/GSPMD).

``ratio`` = reference seconds per step / our seconds per seed-step (our step advances K seeds),
one value per round; the summary gives the median. Every row carries the machine's 1-minute
load average, and each round re-measures the matmul peak (1024^2 f32), so figures from a busy
machine are recognisable as such. When ``torch`` is importable, a PyTorch padded step of the
same shape (nn.TransformerEncoder, post-LN, ReLU, dropout 0.1 at its five places) is timed in
the same rounds too (``torch s``); it is skipped, and says so, when torch is absent.

    python benchmarks/bench_training.py            # cpu + paper shapes, K = 1, 8, 32, 2 rounds
    python benchmarks/bench_training.py --quick    # cpu shape K = 1, 8; paper shape K = 1; 1 round
    python benchmarks/bench_training.py --shape paper --seeds 1 8 --steps 3 --rounds 2
    python benchmarks/bench_training.py --devices 2   # the CPU as 2 JAX devices: our step is
                                                      # sharded over programs.default_mesh(K)
    python benchmarks/bench_training.py --no-reference  # ours only (no ratio)

Shapes: "paper" is the ICML 2024 a^n b^n Transformer (d=10, 5 heads, d_ff 1024, 5 layers,
post-LN, ReLU, 258 tokens, batch 128, dropout 0.1); "cpu" is a small CPU shape (d=16, 2 heads,
d_ff 64, 2 layers, 64 tokens, batch 32).

Batches are a^n b^n strings with n uniform in 1..(T-2)/2, padded to T (about half of each
padded batch is PAD, as in the paper's training data). GFLOP/s counts the FLOPs of the padded
[B, T] step with full T x T attention (``padded_flops``: 25.7 GFLOP per seed-step at the paper
shape), the same unit for both programs; ours (packed) does less arithmetic than that, and the
reference's ``model(ids)`` skips the upper triangle of the scores in causal query blocks
(``formal_lm.models.transformer.CAUSAL_BLOCK``); ``--reference-attention full`` makes the
reference score the whole T x T instead.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from formal_lm import models
from formal_lm.models import transformer as transformer_module
from formal_lm.training import TrainConfig, Validation
from formal_lm.training.loop import _Run
from formal_lm.training.programs import default_mesh
from formal_lm.vocab import PAD_ID

SHAPES = {
    # as nn.Transformer in the paper's released code: post-LayerNorm, ReLU
    "paper": dict(model=dict(d_model=10, n_heads=5, d_ff=1024, n_layers=5, max_len=258,
                             dropout=0.1, norm="post", activation="relu"), T=258, B=128),
    "cpu": dict(model=dict(d_model=16, n_heads=2, d_ff=64, n_layers=2, max_len=64), T=64, B=32),
}
VOCAB = 5  # PAD, BOS, EOS, a, b


def load() -> float:
    """The machine's 1-minute load average (cores busy, all processes)."""
    return os.getloadavg()[0]


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


def padded_flops(spec: dict, vocab_size: int = VOCAB) -> float:
    """FLOPs of one seed's fwd + bwd (3x fwd) on the padded [B, T] batch with full T x T
    attention (25.7 GFLOP at the paper shape): the unit of the GFLOP/s column."""
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


def config(shape: str, K: int) -> TrainConfig:
    spec = SHAPES[shape]
    return TrainConfig(language=None, steps=1000, seeds=K, batch_size=spec["B"],
                       model_config=spec["model"])


def mib(compiled, per: int = 1) -> float:
    """Peak memory (XLA memory analysis: temporaries + arguments + outputs) / per, in MiB."""
    mem = compiled.memory_analysis()
    if mem is None:
        return float("nan")
    return (mem.temp_size_in_bytes + mem.argument_size_in_bytes
            + mem.output_size_in_bytes) / per / 2 ** 20


def sync(tree):
    jax.block_until_ready(tree)
    return tree


class Batches:
    """The loop's data for the benchmark: fixed a^n b^n batches (only validation is read)."""

    floor, floor_stderr, files = None, 0.0, dict

    def __init__(self, vocab_size: int, T: int):
        self.vocab_size, self.bucket, self.max_tokens = vocab_size, T, T
        self.ids = anbn_batch(1, 8, T)[0]

    def validation(self):
        return Validation(self.ids, None)


class Ours:
    """The package's step for K seeds (what ``loop.fit`` runs), compiled once."""

    def __init__(self, shape: str, K: int):
        spec = SHAPES[shape]
        eng = _Run(config(shape, K), Batches(VOCAB, spec["T"]), None, default_mesh(K))
        self.eng, self.K = eng, K
        self.batches = [eng.place(anbn_batch(K, spec["B"], spec["T"], seed=i))[0]
                        for i in range(2)]
        args = (eng.params, eng.opt_state, eng.zero_acc(), eng.rest, self.batches[0], None,
                eng.keys, eng.active(), np.int32(0))
        t = time.perf_counter()
        self.compiled = eng.step_fn.lower(*args).compile()
        self.compile_s = time.perf_counter() - t
        self.mib_per_seed = mib(self.compiled, K)
        self.state = (eng.params, eng.opt_state, eng.zero_acc())
        self.active = eng.active()
        self.t = 0
        self.run(1)  # the first call (allocation) is not timed

    def run(self, steps: int) -> tuple[float, float]:
        """(seconds, process CPU seconds) per program step (all K seeds advance one step)."""
        eng = self.eng
        t, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.state = self.compiled(*self.state, eng.rest, self.batches[self.t % 2], None,
                                       eng.keys, self.active, np.int32(self.t))
            self.t += 1
        sync(self.state)
        return (time.perf_counter() - t) / steps, (time.process_time() - c) / steps


@contextlib.contextmanager
def full_attention(T: int):
    """While tracing: the model's full pass scores the whole T x T (one causal query block)."""
    old = transformer_module.CAUSAL_BLOCK
    transformer_module.CAUSAL_BLOCK = T + 1
    try:
        yield
    finally:
        transformer_module.CAUSAL_BLOCK = old


class Reference:
    """A plain padded training step of one seed, written here: the same Transformer on the whole
    padded [B, T] batch, PAD-masked NLL, clipping + AdamW, jitted. No packing, no micro-batches.
    """

    def __init__(self, shape: str, attention: str = "model"):
        spec = SHAPES[shape]
        cfg = config(shape, 1)
        model = models.make("transformer", vocab_size=VOCAB, seed=0, **spec["model"])
        model.train()  # dropout on
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                         optax.adamw(cfg.lr, b1=cfg.b1, b2=cfg.b2,
                                     weight_decay=cfg.weight_decay))

        def loss_fn(p, ids, key):
            m = nnx.merge(graphdef, p, rest, copy=True)
            logits = m(ids[:, :-1], rngs=key).astype(jnp.float32)  # [B, T-1, V]
            tgt = ids[:, 1:]
            nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tgt[..., None], -1)[..., 0]
            mask = (tgt != PAD_ID).astype(jnp.float32)
            return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)

        def step(p, opt_state, ids, key, t):
            loss, grads = jax.value_and_grad(loss_fn)(p, ids, jax.random.fold_in(key, t))
            updates, opt_state = tx.update(grads, opt_state, p)
            return optax.apply_updates(p, updates), opt_state, loss

        batches = [anbn_batch(1, spec["B"], spec["T"], seed=i)[0] for i in range(2)]
        key = jax.random.key(1)
        # data parallel: the batch is split over the most devices that divide it
        n_dev = max(d for d in range(1, jax.device_count() + 1) if spec["B"] % d == 0)
        if n_dev > 1:
            mesh = jax.make_mesh((n_dev,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                                 devices=jax.devices()[:n_dev])
            rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
            params, key = jax.device_put((params, key), rep)
            batches = [jax.device_put(b, rows) for b in batches]
        else:
            batches = [jnp.asarray(b) for b in batches]
        opt_state = tx.init(params)
        args = (params, opt_state, batches[0], key, np.int32(0))
        t = time.perf_counter()
        with full_attention(spec["T"]) if attention == "full" else contextlib.nullcontext():
            self.compiled = jax.jit(step).lower(*args).compile()
        self.compile_s = time.perf_counter() - t
        self.mib_per_seed = mib(self.compiled)
        self.state, self.batches, self.key, self.t = (params, opt_state), batches, key, 0
        self.run(1)

    def run(self, steps: int) -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            p, o, _ = self.compiled(*self.state, self.batches[self.t % 2], self.key,
                                    np.int32(self.t))
            self.state, self.t = (p, o), self.t + 1
        sync(self.state)
        return (time.perf_counter() - t) / steps, (time.process_time() - c) / steps


class TorchReference:
    """The paper's kind of step in PyTorch (nn.TransformerEncoder: post-LN, ReLU, dropout 0.1 on
    the embeddings, the attention weights, the attention output, the MLP hidden layer and the MLP
    output), one seed, padded [B, T] batch, PAD-ignoring cross-entropy, clipping + AdamW.
    Optional: only when ``import torch`` works (not a dependency of the project)."""

    def __init__(self, shape: str):
        import torch
        from torch import nn

        spec, cfg = SHAPES[shape], config(shape, 1)
        m = spec["model"]
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(0)

        class LM(nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = nn.Embedding(VOCAB, m["d_model"])
                self.pos = nn.Embedding(spec["T"], m["d_model"])
                self.drop = nn.Dropout(m.get("dropout", 0.0))
                layer = nn.TransformerEncoderLayer(
                    m["d_model"], m["n_heads"], m["d_ff"], dropout=m.get("dropout", 0.0),
                    activation=m.get("activation", "gelu"), batch_first=True,
                    norm_first=m.get("norm", "pre") == "pre")
                self.blocks = nn.TransformerEncoder(layer, m["n_layers"],
                                                    enable_nested_tensor=False)
                self.head = nn.Linear(m["d_model"], VOCAB)

            def forward(self, ids):
                t = ids.shape[1]
                mask = nn.Transformer.generate_square_subsequent_mask(t, device=ids.device)
                x = self.drop(self.embed(ids) + self.pos(torch.arange(t, device=ids.device)))
                return self.head(self.blocks(x, mask=mask, is_causal=True))

        self.model = LM().to(self.device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=(cfg.b1, cfg.b2),
                                     weight_decay=cfg.weight_decay)
        self.clip = cfg.grad_clip
        self.loss = nn.CrossEntropyLoss(ignore_index=PAD_ID)
        self.batches = [torch.as_tensor(anbn_batch(1, spec["B"], spec["T"], seed=i)[0],
                                        dtype=torch.long, device=self.device) for i in range(2)]
        self.t = 0
        self.compile_s, self.mib_per_seed = 0.0, float("nan")
        self.run(1)

    def run(self, steps: int) -> tuple[float, float]:
        torch = self.torch
        t, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            ids = self.batches[self.t % 2]
            logits = self.model(ids[:, :-1])
            loss = self.loss(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.opt.step()
            self.t += 1
        if self.device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / steps, (time.process_time() - c) / steps


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def finite(obj):
    """obj with every NaN or infinity replaced by None (strict JSON)."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def fmt(v: float, width: int, prec: int) -> str:
    return f"{'-':>{width}}" if v is None or v != v else f"{v:>{width}.{prec}f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a small subset (cpu K=1, 8; paper K=1; 1 round; a few minutes)")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per measurement (default 3 at the paper shape, else 10)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds (default 2; 1 with --quick)")
    ap.add_argument("--shape", choices=sorted(SHAPES), help="only this shape")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 8, 32], help="values of K")
    ap.add_argument("--devices", type=int, default=1,
                    help="CPU devices (jax_num_cpu_devices); with several, our step is sharded "
                         "over programs.default_mesh(K) (seeds first, then packed rows) and the "
                         "reference's batch over all devices")
    ap.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                    help="time the plain padded reference step (and PyTorch's when torch is "
                         "importable) interleaved with ours (default: on)")
    ap.add_argument("--reference-attention", choices=("model", "full"), default="model",
                    help="model: the reference calls model(ids) as it is (causal query blocks "
                         "skip the upper triangle); full: it scores the whole T x T")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.devices > 1:  # 1: JAX's default, left as it is (main may run after JAX started)
        jax.config.update("jax_num_cpu_devices", args.devices)
    rounds = args.rounds or (1 if args.quick else 2)
    if args.quick:
        cases = [("cpu", 1), ("cpu", 8), ("paper", 1)]
    else:
        cases = [(s, k) for s in ("cpu", "paper") for k in args.seeds]
    if args.shape:
        cases = [(s, k) for s, k in cases if s == args.shape]
    steps = {s: args.steps or (3 if s == "paper" else 10) for s, _ in cases}
    use_torch = args.reference and torch_available()

    peak0, load0 = matmul_peak(), load()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} "
          f"({jax.default_backend()})   jax {jax.__version__}   "
          f"matmul peak (1024^2 f32): {peak0:.1f} GFLOP/s   load: {load0:.2f}   "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    if args.reference:
        print(f"reference: plain padded JAX step, one seed, model(ids) on [B, T] "
              f"(attention: {args.reference_attention})"
              + ("; PyTorch step too" if use_torch else
                 "; PyTorch reference skipped (torch not importable)"), flush=True)
    else:
        print("reference: off (--no-reference): no ratio", flush=True)

    # Compile everything first (compile time and memory per seed), then time interleaved.
    refs, torch_refs, ours = {}, {}, {}
    setup = []
    for shape, K in cases:
        if args.reference and shape not in refs:
            refs[shape] = Reference(shape, args.reference_attention)
            setup.append((shape, "ref", 1, refs[shape].compile_s, refs[shape].mib_per_seed))
            if use_torch:
                torch_refs[shape] = TorchReference(shape)
        ours[shape, K] = Ours(shape, K)
        setup.append((shape, "ours", K, ours[shape, K].compile_s,
                      ours[shape, K].mib_per_seed))
    print(f"\n{'shape':6} {'program':7} {'K':>3} {'compile s':>9} {'MiB/seed':>9}")
    for shape, prog, K, cs, mb in setup:
        print(f"{shape:6} {prog:7} {K:>3} {cs:>9.1f} {fmt(mb, 9, 1)}")

    head = (f"{'round':>5} {'shape':6} {'K':>3} {'ref s':>8} {'torch s':>8} {'step s':>8} "
            f"{'s/seed-step':>11} {'ratio':>7} {'GFLOP/s':>8} {'cpu s':>7} {'peak':>6} "
            f"{'load':>5}")
    print("\n" + head + "\n" + "-" * len(head), flush=True)
    rows = []
    for r in range(rounds):
        peak = matmul_peak()
        for shape, K in cases:
            n = steps[shape]
            ref_s = torch_s = float("nan")
            if args.reference:
                ref_s, _ = refs[shape].run(n)
                if use_torch:
                    torch_s, _ = torch_refs[shape].run(n)
            step_s, cpu_s = ours[shape, K].run(n)
            per_seed = step_s / K
            row = {"round": r + 1, "shape": shape, "K": K, "ref_s": ref_s, "torch_s": torch_s,
                   "step_s": step_s, "seed_step_s": per_seed, "ratio": ref_s / per_seed,
                   "torch_ratio": torch_s / per_seed,
                   "gflops": padded_flops(SHAPES[shape]) * K / step_s / 1e9, "cpu_s": cpu_s,
                   "peak": peak, "load": load(), "steps": n}
            rows.append(row)
            print(f"{r + 1:>5} {shape:6} {K:>3} {fmt(ref_s, 8, 3)} {fmt(torch_s, 8, 3)} "
                  f"{step_s:>8.3f} {per_seed:>11.4f} {fmt(row['ratio'], 7, 2)} "
                  f"{row['gflops']:>8.1f} {cpu_s:>7.3f} {peak:>6.0f} {row['load']:>5.2f}",
                  flush=True)
    peak1, load1 = matmul_peak(), load()

    # ref s: the reference's seconds per step (one seed); step s: one step of ours (all K seeds);
    # ratio = ref s / (step s / K); cpu s: process CPU seconds per step of ours (all threads);
    # peak: matmul GFLOP/s at the start of the round; load: 1-minute load average after the row
    print("\nsummary (medians over rounds; ratio = reference s/step / ours s/seed-step)")
    head = (f"{'shape':6} {'K':>3} {'ref s':>8} {'s/seed-step':>11} {'ratio':>7} "
            f"{'ratios by round':>22} {'torch ratio':>11} {'MiB/seed':>8} {'compile s':>9}")
    print(head + "\n" + "-" * len(head))
    summary = []
    for shape, K in cases:
        rs = [x for x in rows if x["shape"] == shape and x["K"] == K]
        med = {k: statistics.median(x[k] for x in rs) for k in ("ref_s", "seed_step_s", "ratio",
                                                               "torch_ratio")}
        summary.append({"shape": shape, "K": K, **med, "ratios": [x["ratio"] for x in rs],
                        "mib_per_seed": ours[shape, K].mib_per_seed,
                        "ref_mib": refs[shape].mib_per_seed if shape in refs else None,
                        "compile_s": ours[shape, K].compile_s,
                        "ref_compile_s": refs[shape].compile_s if shape in refs else None})
        by_round = " ".join(fmt(x, 0, 2).strip() for x in summary[-1]["ratios"])
        print(f"{shape:6} {K:>3} {fmt(med['ref_s'], 8, 3)} {med['seed_step_s']:>11.4f} "
              f"{fmt(med['ratio'], 7, 2)} {by_round:>22} {fmt(med['torch_ratio'], 11, 2)} "
              f"{ours[shape, K].mib_per_seed:>8.1f} {ours[shape, K].compile_s:>9.1f}")
    print(f"matmul peak: {peak0:.1f} GFLOP/s at the start, {peak1:.1f} at the end; load "
          f"{load0:.2f} at the start, {load1:.2f} at the end", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(finite({
                "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
                "devices": jax.device_count(), "jax": jax.__version__,
                "reference": args.reference, "reference_attention": args.reference_attention,
                "torch": use_torch, "peak": [peak0, peak1], "load": [load0, load1],
                "rows": rows, "summary": summary}), f, indent=1)
    return summary


if __name__ == "__main__":
    main()
