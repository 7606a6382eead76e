"""How fuzzed inputs end, counted: the generators of tests/test_fuzz.py at scale.

    .venv/bin/python benchmarks/fuzz_counts.py [--inputs 10000] [--time-limit 10] [--seed 0]

Splits ``--inputs`` over (a) broken grammar texts, (b) language-method calls with random
arguments and (c) command lines of the grammar commands (40 % / 40 % / 20 %), runs each input
under a per-input time limit (SIGALRM; an input past it is a hang) and prints, per category:
inputs tried, clean results, clean errors (a FormalLMError, or exit status 2), non-package
exceptions (tracebacks, and exit status 1), hangs, and silently wrong results (an invalid
argument accepted, a result of the wrong shape). The machine's state (load average, CPU count)
comes first. ``--show N`` prints the first N failures of each kind.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import test_fuzz as fz  # noqa: E402  (the generators)

from formal_lm.errors import FormalLMError  # noqa: E402

OUTCOMES = ("result", "error", "traceback", "hang", "wrong")


def grammar_input(rng, files):
    text = fz.broken_grammar(rng)
    try:
        kind, _ = fz.load_outcome(text)
    except AssertionError as e:  # a grammar problem without a location
        return "wrong", f"{e}"
    if len(files) < 40 and rng.random() < 0.2:  # some of them feed the CLI category
        path = Path(files[0]).parent / f"a{len(files)}.toml"
        path.write_text(text, encoding="utf-8")
        files.append(str(path))
    return ("result" if kind == "language" else "error"), ""


def method_input(rng, files):
    what, valid, thunk = fz.method_call(rng)
    try:
        thunk()
    except FormalLMError:
        return "error", ""
    except AssertionError as e:
        return "wrong", f"{what}: {e}"
    if valid is False:
        return "wrong", f"{what}: an invalid argument was accepted silently"
    return "result", ""


def cli_input(rng, files):
    argv = fz.cli_argv(rng, files)
    code, err = fz.cli_outcome(argv)
    if code == 1 or "Traceback" in err:
        return "traceback", f"{argv}: exit {code}: {err[-600:]}"
    return ("result" if code == 0 else "error" if code == 2 else "wrong"), f"{argv}: {code}"


CATEGORIES = {"(a) grammar texts": (grammar_input, 0.4),
              "(b) method arguments": (method_input, 0.4),
              "(c) command lines": (cli_input, 0.2)}


def run(inputs: int, seed: int, limit: float, show: int) -> dict:
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = [str(Path(tmp) / "seed.toml")]
        Path(files[0]).write_text(fz.SHIPPED["anbn"], encoding="utf-8")
        for c, (name, (fn, share)) in enumerate(CATEGORIES.items()):
            counts = collections.Counter()
            shown = collections.Counter()
            slowest = (0.0, "")
            t0 = time.perf_counter()
            for i in range(int(round(inputs * share))):
                rng = random.Random(f"{seed}-{c}-{i}")
                start = time.perf_counter()
                try:
                    with fz.time_limit(limit):
                        outcome, note = fn(rng, files)
                except fz.Hang:
                    outcome, note = "hang", f"input {i}"
                except Exception:  # noqa: BLE001 - a non-package exception: what we count
                    outcome, note = "traceback", traceback.format_exc(limit=-3)
                took = time.perf_counter() - start
                slowest = max(slowest, (took, f"input {i}"))
                counts[outcome] += 1
                if outcome in ("traceback", "hang", "wrong") and shown[outcome] < show:
                    shown[outcome] += 1
                    print(f"--- {name} {outcome} (seed {seed}-{c}-{i}):\n{note}\n", flush=True)
            table[name] = (counts, time.perf_counter() - t0, slowest[0])
    return table


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", type=int, default=10_000, help="inputs in all (default 10000)")
    p.add_argument("--time-limit", type=float, default=10.0, help="seconds per input")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=3, help="failures of each kind to print")
    args = p.parse_args(argv)
    load = os.getloadavg()
    print(f"{datetime.date.today()}  {platform.platform()}  Python {platform.python_version()}")
    print(f"CPUs: {os.cpu_count()}  load average (1, 5, 15 min): "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"inputs: {args.inputs}  time limit per input: {args.time_limit} s  seed: {args.seed}")
    table = run(args.inputs, args.seed, args.time_limit, args.show)
    head = ("| category | inputs | clean results | clean errors | tracebacks | hangs | "
            "silently wrong | wall time (s) | slowest input (s) |")
    print("\n" + head + "\n|" + "---|" * 9)
    total = collections.Counter()
    for name, (counts, wall, slowest) in table.items():
        total.update(counts)
        n = sum(counts.values())
        print(f"| {name} | {n} | {counts['result']} | {counts['error']} | "
              f"{counts['traceback']} | {counts['hang']} | {counts['wrong']} | {wall:.1f} | "
              f"{slowest:.2f} |")
    print(f"| all | {sum(total.values())} | {total['result']} | {total['error']} | "
          f"{total['traceback']} | {total['hang']} | {total['wrong']} | | |")
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
