"""Speed of exact sampling and exact next-token tables, per family, on one core.

Prints a table; each row has a reference measured in the same run: the generic per-prefix path
of the Language base class (``Language.next_token_table``, one prefix_log_prob call per entry),
which every family would fall back to without its vectorised implementation.

    python benchmarks/bench_languages.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import formal_lm as fl  # noqa: E402
from formal_lm.language import Language  # noqa: E402


def timed(fn, min_time=0.5):
    n, start = 0, time.perf_counter()
    while True:
        out = fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / n, out


def bench(name, quick):
    lang = fl.load(name)
    n = 200 if quick else 1000
    sec, samples = timed(lambda: lang.sample(n, seed=0))
    tokens = sum(len(s) + 1 for s in samples)
    ids = lang.vocab.batch(samples[:128])
    positions = int((ids != fl.PAD_ID).sum())
    sec_nt, _ = timed(lambda: lang.next_token_probs(ids))
    few = ids[:4]
    few_pos = int((few != fl.PAD_ID).sum())
    sec_ref, _ = timed(lambda: _generic(lang, few), min_time=0.2)
    return {"grammar": name, "family": type(lang).__name__,
            "sample tok/s": tokens / sec, "next-token pos/s": positions / sec_nt,
            "generic pos/s": few_pos / sec_ref, "ratio": (positions / sec_nt) / (few_pos / sec_ref)}


def _generic(lang, ids):
    """The base class's per-prefix path (one prefix_log_prob call per table entry)."""
    out = np.zeros((*ids.shape, lang.vocab.size))
    for b in range(ids.shape[0]):
        syms = lang.vocab.decode(ids[b])
        out[b, : len(syms) + 1] = Language.next_token_table(lang, syms)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    names = ["anbn", "anbncn", "bbaN", "dyck2", "cs-dyck2", "parity", "tomita5"]
    if "arith" in fl.shipped():
        names.append("arith")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, numpy {np.__version__}; one thread")
    print(f"{'grammar':<10} {'family':<16} {'sample tok/s':>13} {'next-token pos/s':>17} "
          f"{'generic pos/s':>14} {'ratio':>7}")
    for name in names:
        r = bench(name, args.quick)
        print(f"{r['grammar']:<10} {r['family']:<16} {r['sample tok/s']:>13,.0f} "
              f"{r['next-token pos/s']:>17,.0f} {r['generic pos/s']:>14,.0f} {r['ratio']:>7.1f}x")
    bench_pcfg_prefixes(args.quick)


def bench_pcfg_prefixes(quick):
    """Exact PCFG prefix probabilities for a batch of length-64 strings (all 65 prefixes each),
    against the generic path: one Jelinek-Lafferty prefix_log_prob call per table entry."""
    print()
    print("PCFG prefix probabilities, strings of length ~64 (every prefix, every next symbol):")
    print(f"{'grammar':<12} {'len':>4} {'batch':>5} {'batched s':>10} {'per string s':>13} "
          f"{'generic s/string':>17} {'ratio':>7}")
    for name in ["arith", "toy-english"]:
        lang = fl.load(name)
        B = 8 if quick else 32
        mass = lang.length_distribution(66)
        L = max(L for L in (64, 65, 63, 66, 62) if mass[L] > 0)  # some grammars have parity
        strings = lang.sample(B, seed=0, length=L)
        ids = lang.vocab.batch(strings)
        sec, _ = timed(lambda: lang.next_token_probs(ids), min_time=0.2)
        ref, _ = timed(lambda: Language.next_token_table(lang, strings[0]), min_time=0.0)
        print(f"{name:<12} {L:>4} {B:>5} {sec:>10.3f} {sec / B:>13.4f} {ref:>17.3f} "
              f"{ref / (sec / B):>7.1f}x")


if __name__ == "__main__":
    main()
