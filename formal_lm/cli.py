"""The ``formal-lm`` command: grammars, inspect, sample, export, train, run.

Bad input ends with a message on stderr and exit status 2, never a traceback. Anything else
that goes wrong is a bug: a short message with how to report it, exit status 1 (``--debug``
shows the traceback). Output cut short by the reader (``formal-lm inspect anbn | head``) ends
quietly.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from formal_lm.errors import FormalLMError, Problem


def _fmt(s) -> str:
    return "".join(s) if all(len(x) == 1 for x in s) else " ".join(s)


def cmd_grammars(args) -> None:
    from formal_lm.grammar_files import load, shipped
    for name in shipped():
        try:
            lang = load(name)
            print(f"{name:<14} {type(lang).__name__:<16} {lang.description}")
        except FormalLMError as e:
            print(f"{name:<14} ERROR: {e.problems[0]}")


def cmd_inspect(args) -> None:
    from formal_lm.grammar_files import load
    lang = load(args.grammar)
    floor = lang.optimal_loss()
    print(f"{lang.name} ({type(lang).__name__}): {lang.description}")
    print(f"alphabet: {' '.join(lang.alphabet)}   vocab: {' '.join(lang.vocab.tokens)}")
    for r in lang.rules:
        print(f"rule {r.name}: {r.description}")
    estimate = floor.kind == "estimate"  # not proven unambiguous: Monte Carlo, +- one SE

    def fig(value, se):
        return f"{value:.6f} ± {se:.6f}" if estimate else f"{value:.6f}"

    if estimate:
        what = {"PFSA": "path", "CounterLanguage": "count"}.get(type(lang).__name__, "derivation")
        print(f"entropy: {fig(floor.entropy, floor.entropy_stderr)} nats per string (Monte Carlo "
              f"estimate from {floor.n_samples} exact samples; the {what} entropy "
              f"{lang.entropy():.6f} is an upper bound)")
        print(f"why an estimate: {_not_exact(lang)}")
    else:
        print(f"entropy: {floor.entropy:.6f} nats per string")
    print(f"expected length: {floor.tokens_per_string - 1:.4f} symbols (+1 EOS)")
    print("estimated optimal loss (nats per token, EOS predicted; ± one standard error):"
          if estimate else "exact optimal loss (nats per token, EOS predicted):")
    upper = f"   (upper bound {floor.upper_bound:.6f})" if estimate else ""
    print(f"  corpus (total nats / total tokens): {fig(floor.per_token, floor.stderr)}{upper}")
    if floor.per_token_symbols_only is not None:
        print(f"  symbols only (EOS not scored):      {floor.per_token_symbols_only:.6f}")
    if floor.per_sequence_mean is not None:
        print(f"  mean of per-sequence averages:      "
              f"{fig(floor.per_sequence_mean, floor.per_sequence_stderr)}")
    dist = lang.length_distribution(args.max_length)
    print(f"probability mass by length (up to {args.max_length}):")
    for L in np.flatnonzero(dist > 0):  # every length 0..max_length with mass, the last too
        print(f"  {L:>4}: {dist[L]:.6g}")
    print(f"  tail P(|s| > {args.max_length}): {max(0.0, 1 - dist.sum()):.6g}")
    print("samples (seed 0):")
    for s in lang.sample(args.samples, seed=0):
        print(f"  {_fmt(s) or '(empty)'}   ln p = {lang.log_prob(s):.4f}")


def _not_exact(lang) -> str:
    """Why a language's string entropy is estimated, in words that claim no more than is known:
    ambiguous only with a witness; otherwise not proven unambiguous (or not enumerable)."""
    witness = getattr(lang, "ambiguity_witness", None)
    if witness is not None:
        return f"the grammar is ambiguous ({_fmt(witness) or '(empty)'} has two derivations)"
    if type(lang).__name__ == "CounterLanguage":
        return ("a string may come from several count assignments, and there are too many to "
                "sum exactly")
    kind = "automaton" if type(lang).__name__ == "PFSA" else "grammar"
    return (f"the {kind} is not proven unambiguous (no string with two derivations was found, "
            "but the checks that prove unambiguity do not apply)" if kind == "grammar" else
            f"the {kind} is not proven unambiguous (some string may have two paths)")


def cmd_sample(args) -> None:
    from formal_lm.grammar_files import load
    lang = load(args.grammar)
    strings = lang.sample(args.n, seed=args.seed, length=args.length)
    if args.format == "text":
        for s in strings:
            print(_fmt(s))
        return
    import json
    for s in strings:
        print(json.dumps({"string": list(s), "log_prob": lang.log_prob(s), "length": len(s),
                          "rules": {r.name: bool(r.holds(s)) for r in lang.rules}}))


def cmd_export(args) -> None:
    from formal_lm.training.export import export
    written = export(args.run_dir, args.out)
    for name, n in written.items():
        print(f"{args.out}/{name}: {n} line(s)" if name.endswith(".jsonl") else
              f"{args.out}/{name}")


def use_cpu_devices(n: int | None) -> None:
    """Splits the CPU into ``n`` JAX devices (``jax_num_cpu_devices``) before JAX starts.

    The trainer then shards a run's seeds (and a Transformer's packed rows) over them: on a
    2-core machine, 2 devices train K >= 2 seeds about 15 % faster per seed than one device
    using both cores (benchmarks/RESULTS.md). Work that is not sharded (one model at a time)
    gets one device's share of the cores, so this is opt-in.
    """
    if n is None:
        return
    import jax
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as e:  # only when JAX already ran in this process
        raise FormalLMError(Problem(f"--cpu-devices {n}: JAX has already started in this process",
                                    "set JAX_NUM_CPU_DEVICES in the environment instead")) from e


def cmd_train(args) -> None:
    use_cpu_devices(args.cpu_devices)
    from formal_lm.training import load_config, train
    cfg = load_config(args.config)
    result = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    import jax
    print(f"{result.step} steps in {result.wall_time:.1f} s on {jax.local_device_count()} "
          f"{jax.default_backend()} device(s); {_floor(result)}; checkpoints in "
          f"{result.last_checkpoint.parent}")
    print(f"{'seed':>6} {'loss':>9} {'val_loss':>9} {'kl':>9}   (last eval)")
    for m in result.final:
        print(f"{m['seed']:>6} {m['loss']:>9.5f} {m['val_loss']:>9.5f} {m['kl']:>9.5f}")


def _floor(result) -> str:
    if result.optimal_loss is None:
        return "no known loss floor"
    if result.optimal_loss_stderr:
        return (f"optimal loss {result.optimal_loss:.5f} ± {result.optimal_loss_stderr:.5f} "
                "nats/token (a Monte Carlo estimate: the grammar is not proven unambiguous)")
    return f"exact optimal loss {result.optimal_loss:.5f} nats/token"


def cmd_run(args) -> None:
    use_cpu_devices(args.cpu_devices)
    from formal_lm.experiments import run_experiment
    res = run_experiment(args.experiment, args.out, full=args.full, resume=not args.restart,
                         cells=args.cell or (), shard=args.shard, report_only=args.report_only)
    if "trained" in res:
        print(f"trained {res['trained']}; merge with: formal-lm run {args.experiment} --out "
              f"{args.out} --report-only")


GRAMMAR_HELP = "a shipped grammar's name or a path to a grammar file"
CPU_DEVICES_HELP = ("split the CPU into N JAX devices and shard the seeds over them (faster "
                    "for several seeds; N = the number of cores is a good choice)")


def _add_writing_command(sub, name: str, help: str, fn, source: tuple[str, str], out_help: str,
                         flags: dict[str, str]) -> None:
    """Adds a subcommand that reads one file, writes into ``--out`` and may shard over CPU
    devices (``train``, ``run``): ``source`` is the file argument's (name, help), ``flags`` maps
    each on/off option to its help."""
    c = sub.add_parser(name, help=help)
    c.add_argument(source[0], help=source[1])
    c.add_argument("--out", required=True, help=out_help)
    for flag, flag_help in flags.items():
        c.add_argument(flag, action="store_true", help=flag_help)
    c.add_argument("--cpu-devices", type=_count(1, 1024), metavar="N", help=CPU_DEVICES_HELP)
    if name == "run":
        c.add_argument("--cell", action="append", metavar="NAME",
                       help="train only this cell (or ICL model), no report: one job of several")
        c.add_argument("--shard", metavar="I/N",
                       help="train only every N-th cell from the I-th (0-based), no report")
    c.set_defaults(fn=fn)


def _count(lo: int, hi: int):
    """An argparse type: an integer in [lo, hi], with a message naming the range."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is not in [{lo}, {hi}]")
        return v
    return parse


MAX_SAMPLES = 1_000_000
MAX_LENGTH = 100_000


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="formal-lm", description="Exact formal languages, models "
                                "trained on them, and analyzers of how they generalize.")
    p.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grammars", help="list the shipped grammars, one line each")
    g.set_defaults(fn=cmd_grammars)
    i = sub.add_parser("inspect", help="exact facts about a grammar: entropy, optimal loss, ...")
    i.add_argument("grammar", help=GRAMMAR_HELP)
    i.add_argument("--max-length", type=_count(0, MAX_LENGTH), default=12,
                   help="lengths shown in the mass table")
    i.add_argument("--samples", type=_count(0, 1000), default=5, help="how many samples to show")
    i.set_defaults(fn=cmd_inspect)
    s = sub.add_parser("sample", help="exact samples, one per line")
    s.add_argument("grammar", help=GRAMMAR_HELP)
    s.add_argument("-n", type=_count(0, MAX_SAMPLES), default=10, help="number of samples")
    s.add_argument("--seed", type=_count(0, 2 ** 63 - 1), default=0, help="random seed")
    s.add_argument("--length", type=_count(0, MAX_LENGTH), default=None,
                   help="condition on this length")
    s.add_argument("--format", choices=("text", "jsonl"), default="text",
                   help="text: one string per line (default); jsonl: one JSON object per "
                   'sample, {"string": [symbols], "log_prob": exact ln p, "length": n, '
                   '"rules": {name: holds}}')
    s.set_defaults(fn=cmd_sample)
    x = sub.add_parser("export", help="write the exact data a run trained and was judged on "
                       "(per-seed training batches, validation and test sets) as JSON lines")
    x.add_argument("run_dir", help="the --out folder of a formal-lm train run")
    x.add_argument("--out", required=True, help="a new (or empty) folder for the files")
    x.set_defaults(fn=cmd_export)
    _add_writing_command(sub, "train", "train the seeds a config declares", cmd_train,
                         ("config", "a training config (TOML)"), "run directory",
                         {"--resume": "resume from the last checkpoint",
                          "--no-progress": "hide the progress bar"})
    _add_writing_command(sub, "run", "run an experiment end to end and write a report", cmd_run,
                         ("experiment", "an experiment file (TOML)"),
                         "output directory (report.md, results)",
                         {"--full": "the paper-sized variant (for a GPU)",
                          "--report-only": "train nothing: report the runs that have finished "
                                           "(merging jobs run with --cell/--shard)",
                          "--restart": "train every run again from scratch, replacing what is in --out"})
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        args.fn(args)
        sys.stdout.flush()
    except FormalLMError as e:
        print(f"formal-lm {args.command}: error:\n{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader stopped reading (| head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # a bug: say so briefly, never a wall of traceback by default
        if args.debug:
            raise
        print(f"formal-lm {args.command}: internal error: {type(e).__name__}: {e}\n"
              "This is a bug in formal_lm. Please report it with the command line that caused "
              "it; rerun with --debug for the traceback.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
