"""Fuzz and fault suite: broken grammar files, bad arguments to language methods, and the
command line, each checked for "a result or a FormalLMError, never another exception".

(a) Grammar texts: every shipped grammar file, mutated (values replaced by random TOML values of
    any type, keys deleted or duplicated, random bytes and unicode such as U+2028 inserted,
    numbers pushed to their edges, the text truncated). Each text loads into a Language or
    raises a FormalLMError; a GrammarError's problems each carry a location.
(b) Language methods (sample, log_prob, prefix_log_prob, next_token_dist, next_token_probs,
    accepts, vocab.decode/batch) with random arguments of random types. Each call is tagged
    valid or invalid; an invalid one must raise a FormalLMError (never a silently wrong result),
    a valid one returns a result of the documented shape or raises a FormalLMError.
(c) The grammar commands (``grammars``, ``inspect``, ``sample``) in-process with random flags
    and values, files of (a) included: exit status 0 or 2 (1 is an internal error: a bug), and
    never a traceback on stderr.

The generators are plain functions of a ``random.Random``; hypothesis drives them (derandomized,
so every run tries the same inputs) and ``benchmarks/fuzz_counts.py`` runs them at scale with a
per-input time limit. Each test counts its inputs and how they ended.
"""
from __future__ import annotations

import collections
import contextlib
import io
import math
import random
import re
import signal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import formal_lm as fl
from formal_lm import limits
from formal_lm.errors import FormalLMError, GrammarError

SHIPPED = {name: f.read_text(encoding="utf-8") for name, f in fl.shipped().items()}
NAMES = sorted(SHIPPED)
TIME_LIMIT = 10.0  # seconds per input: longer is a hang


class Hang(BaseException):
    """An input ran past the time limit (BaseException: no ``except Exception`` swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float = TIME_LIMIT):
    """Raises ``Hang`` in the block after ``seconds`` (SIGALRM; main thread only)."""
    def on_alarm(signum, frame):
        raise Hang(f"more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ----- (a) broken grammar texts --------------------------------------------------------------
JUNK = ["\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\x00", "\ufeff",
        "\r", "\r\n", "\n", "[", "]", "{", "}", '"', "'", '"""', "#", "=", "\\", ",", ".", "é",
        "😀", "\t", " ", "[[", "]]", "-", "+", "|", "->", "EOS", "</s>"]
KEYS = ["kind", "name", "min", "max", "p", "symbol", "symbols", "even", "weights", "expr",
        "pairs", "nested", "open", "close", "runs", "pattern", "substring", "grammar", "a", "n"]
EDGE_NUMBERS = ["0", "1", "-1", "2", "129", "400", "513", "2001", "10000", "1000000000",
                "9223372036854775807", "-9223372036854775808", "0.5", "1e308", "inf", "-inf",
                "nan", "+nan", "1e-320", "0.0", "-0.0", "3.5", "1_000"]
STRINGS = ['"false"', '"no"', '"true"', '"n"', '"2n"', '"n+m"', '"n+1"', '"3"', '"a"', '"("',
           '""', '"EOS"', '"<pad>"', '"\\u2028"', '"a b"', '"counter"', '"dyck"', '"pcfg"',
           '"pfsa"', '"dfa"', '"uniform"', '"geometric"', '"anbn"', '"/dev/zero"',
           '"missing.toml"', '"#a = #b"', '"#a +"', '"a+b+"', '"(("', '"[a-"', "'''x\ny'''",
           '"""\nq0 a q0 0.5\nq0 EOS 0.5\n"""', '"""\nS -> \'a\' S [0.5] | [0.5]\n"""',
           '"""\nS -> S S [0.6] | \'a\' [0.4]\n"""', '"""\nq0 0 q0\n"""']


def toml_value(rng: random.Random, depth: int = 0) -> str:
    """The text of a random TOML value of any type."""
    r = rng.random()
    if r < 0.2:
        return rng.choice(EDGE_NUMBERS)
    if r < 0.3:
        return str(rng.randint(-5, 600))
    if r < 0.4:
        return rng.choice(["true", "false"])
    if r < 0.6:
        return rng.choice(STRINGS)
    if r < 0.65:
        text = "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0xA0, 0x2FFF)]))
                       for _ in range(rng.randint(0, 8)))
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if r < 0.68:
        return rng.choice(["1979-05-27T07:32:00Z", "07:32:00", "1979-05-27"])
    if r < 0.7:
        k = rng.choice([20, 200, 3000])
        return "[" * k + "]" * k
    if r < 0.87 and depth < 3:
        items = [toml_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
        return "[" + ", ".join(items) + "]"
    if depth < 3:
        keys = rng.sample(KEYS, rng.randint(0, 3))
        return "{" + ", ".join(f"{k} = {toml_value(rng, depth + 1)}" for k in keys) + "}"
    return rng.choice(EDGE_NUMBERS)


_ASSIGN = re.compile(r"^(\s*[A-Za-z_][\w.-]*\s*=\s*)(.*)$")


def _value_spans(lines: list[str]) -> list[tuple[int, int]]:
    """(first, last) line of each key's value (a multi-line string spans several lines)."""
    out, i = [], 0
    while i < len(lines):
        m = _ASSIGN.match(lines[i])
        if m:
            value = m.group(2).strip()
            j = i
            for quote in ('"""', "'''"):
                if value.startswith(quote) and value.count(quote) == 1:
                    j = next((k for k in range(i + 1, len(lines)) if quote in lines[k]), i)
            out.append((i, j))
            i = j
        i += 1
    return out


def mutate(rng: random.Random, text: str) -> str:
    """One random change to a grammar text."""
    lines = text.split("\n")
    spans = _value_spans(lines)
    op = rng.randrange(10)
    if op <= 2 and spans:  # replace a value
        i, j = rng.choice(spans)
        key = _ASSIGN.match(lines[i]).group(1)
        lines[i: j + 1] = [key + toml_value(rng)]
    elif op == 3 and spans:  # delete a key
        i, j = rng.choice(spans)
        del lines[i: j + 1]
    elif op == 4 and spans:  # duplicate a key
        i, j = rng.choice(spans)
        lines[j + 1: j + 1] = lines[i: j + 1]
    elif op == 5:  # junk inserted
        pos = rng.randrange(len(text) + 1)
        return text[:pos] + "".join(rng.choice(JUNK) for _ in range(rng.randint(1, 3))) + text[pos:]
    elif op == 6:  # truncated
        return text[: rng.randrange(len(text) + 1)]
    elif op == 7:  # a number pushed to an edge (also inside arcs and productions)
        nums = list(re.finditer(r"(?<![\w.])\d+(\.\d+)?(?![\w.])", text))
        if nums:
            m = rng.choice(nums)
            return text[: m.start()] + rng.choice(EDGE_NUMBERS) + text[m.end():]
    elif op == 8:  # a random table
        table = rng.choice(["rules.RX", "prior.m", "prior.n", "rules.R1", "x"])
        keys = rng.sample(KEYS, rng.randint(0, 4))
        lines += [f"[{table}]"] + [f"{k} = {toml_value(rng)}" for k in keys]
    else:  # a line of a multi-line string rewritten from its own tokens and junk
        body = [k for k, line in enumerate(lines) if not _ASSIGN.match(line) and line.strip()
                and not line.lstrip().startswith(("#", "["))]
        if body:
            k = rng.choice(body)
            toks = lines[k].split() + [rng.choice(JUNK + EDGE_NUMBERS) for _ in range(2)]
            rng.shuffle(toks)
            lines[k] = " ".join(toks[: rng.randint(0, len(toks))])
    return "\n".join(lines)


def broken_grammar(rng: random.Random) -> str:
    """A shipped grammar's text with 1 to 4 random changes (mostly one)."""
    text = SHIPPED[rng.choice(NAMES)]
    for _ in range(rng.choice([1, 1, 1, 2, 3, 4])):
        text = mutate(rng, text)
    return text


def load_outcome(text: str, path: str = "fuzz.toml") -> tuple[str, object]:
    """('language', lang) or ('error', the FormalLMError); anything else propagates."""
    try:
        return "language", fl.loads(text, path=path)
    except FormalLMError as e:
        if isinstance(e, GrammarError):
            unplaced = [p for p in e.problems if p.location is None]
            assert not unplaced, f"grammar problems without a location: {unplaced}\n{text!r}"
        return "error", e


# ----- (b) language-method arguments -----------------------------------------------------------
_LANGS: dict = {}


def language(name: str):
    if name not in _LANGS:
        _LANGS[name] = fl.load(name)
    return _LANGS[name]


BAD_COUNTS = [-1, -(2 ** 70), True, False, 2.0, 1.5, "3", None, float("nan"), np.float64(2),
              [1], 10 ** 12]


def _valid_string(rng, lang, n_max=10):
    return tuple(rng.choice(lang.alphabet) for _ in range(rng.randint(0, n_max)))


def string_arg(rng: random.Random, lang) -> tuple[bool, object]:
    """(valid, s): a string of the alphabet (as a tuple, str, list or array), or an invalid
    one (foreign or reserved symbols, non-strings, things that are no string at all)."""
    s = _valid_string(rng, lang)
    r = rng.random()
    if r < 0.35:
        return True, s
    if r < 0.45:
        if all(len(x) == 1 for x in lang.alphabet):
            return True, "".join(s)
        return True, list(s)
    if r < 0.5:
        return True, np.array(s, dtype=object if not s else None)
    bad = rng.choice(["z", "EOS", "</s>", "<s>", "<pad>", "", 1, None, b"a", ("a",), 3.5,
                      np.int64(3)])
    if r < 0.8:
        k = rng.randint(0, len(s))
        return False, s[:k] + (bad,) + s[k:]
    return False, rng.choice([5, 3.5, None, True, b"ab", {"a": 1}, {"a"}, object()])


def ids_arg(rng: random.Random, lang) -> tuple[bool, object]:
    """(valid, ids) for next_token_probs: a batch from vocab.batch, or a broken one."""
    V = lang.vocab.size
    strings = [_valid_string(rng, lang, 8) for _ in range(rng.randint(1, 3))]
    ids = lang.vocab.batch(strings)
    r = rng.random()
    if r < 0.4:
        return True, ids
    if r < 0.5:  # any ids in range after BOS: impossible prefixes, BOS or EOS inside
        ids = ids.copy()
        ids[:, 1:] = np.asarray([[rng.randrange(V) for _ in range(ids.shape[1] - 1)]
                                 for _ in range(ids.shape[0])], dtype=ids.dtype).reshape(
            ids.shape[0], -1)
        return None, ids
    if r < 0.75 and ids.shape[1] > 1:
        ids = ids.copy()
        b, t = rng.randrange(ids.shape[0]), rng.randrange(1, ids.shape[1])
        ids[b, t] = rng.choice([-1, -3, V, V + 5, 10 ** 6])
        return False, ids
    return False, rng.choice([ids.astype(float), ids[0], ids[None], ids[:, 1:] if ids.shape[1] > 1
                              and (ids[:, 1] != 1).all() else ids[:, :0] + 5,
                              ids.astype(bool), [[1, 3], [1]], None, "ab", ids.astype(str)])


def decode_arg(rng: random.Random, lang) -> tuple[bool, object, tuple | None]:
    """(valid, ids, expected) for vocab.decode."""
    s = _valid_string(rng, lang)
    ids = list(lang.vocab.encode(s, bos=rng.random() < 0.8, eos=rng.random() < 0.8))
    if rng.random() < 0.4:  # ids appended: read, or not when an EOS or PAD comes first
        ids = ids + [rng.choice([-5, 2, 0, 99]) for _ in range(2)]
        read = next((ids[:i] for i, x in enumerate(ids) if x in (0, 2)), ids)
        return all(0 <= x < lang.vocab.size for x in read), ids, None
    if rng.random() < 0.3 and len(ids) and ids[-1] == 2:
        return True, ids, s
    bad = rng.choice([-1, -2, lang.vocab.size, 99, 2.5, "a", None, True])
    k = rng.randint(0, len(s) + 1)
    pos = min(1 + k if ids and ids[0] == 1 else k, len(ids))
    broken = ids[:pos] + [bad] + ids[pos:]
    if bad is True:  # numpy reads a bool among ints as 0 or 1: not judged
        return None, broken, None
    if not isinstance(bad, int):  # no longer an array of ints: refused wherever it is
        return False, broken, None
    after_end = any(x in (0, 2) for x in broken[:pos])  # ids after EOS or PAD are not read
    return after_end, broken, None


def _check_sample(out, n, length, lang):
    assert isinstance(out, list) and len(out) == n, out
    for s in out:
        assert isinstance(s, tuple) and all(x in lang.alphabet for x in s), s
        assert length is None or len(s) == length, (s, length)


def method_call(rng: random.Random) -> tuple[str, bool | None, object]:
    """(what, valid, thunk): one random call of a language method. ``thunk()`` runs it and
    checks the result's shape when it returns."""
    lang = language(rng.choice(NAMES))
    what = rng.choice(["sample", "log_prob", "prefix_log_prob", "next_token_dist", "accepts",
                       "next_token_probs", "decode", "batch"])
    if what == "sample":
        good = rng.random() < 0.5
        n = rng.choice([0, 1, 3, np.int64(2)]) if good or rng.random() < 0.5 else \
            rng.choice(BAD_COUNTS)
        seed = rng.choice([0, 7, 2 ** 40, np.uint32(5)]) if good or rng.random() < 0.5 else \
            rng.choice(BAD_COUNTS)
        length = rng.choice([None, 0, 1, 2, 3, 4, 7, 10]) if good or rng.random() < 0.5 else \
            rng.choice([b for b in BAD_COUNTS if b is not None])
        def ok(x, top):
            return not isinstance(x, (bool, float, str, list, np.floating)) and x is not None \
                and 0 <= x <= top

        valid = ok(n, limits.MAX_SAMPLES) and ok(seed, math.inf) and (
            length is None or ok(length, limits.MAX_SAMPLE_LENGTH))

        def thunk():
            out = lang.sample(n, seed=seed, length=length)
            _check_sample(out, int(n), length, lang)
        return what, valid, thunk
    if what in ("log_prob", "prefix_log_prob", "accepts", "next_token_dist"):
        valid, s = string_arg(rng, lang)

        def thunk():
            out = getattr(lang, what)(s)
            if what == "accepts":
                assert isinstance(out, bool)
            elif what == "next_token_dist":
                assert set(out) == set(lang.alphabet) | {fl.EOS}
                assert abs(sum(out.values()) - 1) < 1e-6, out
            else:
                assert isinstance(out, float) and not math.isnan(out) and out <= 1e-9, out
        return what, valid, thunk
    if what == "next_token_probs":
        valid, ids = ids_arg(rng, lang)

        def thunk():
            out = lang.next_token_probs(ids)
            arr = np.asarray(ids)
            assert out.shape == (*arr.shape, lang.vocab.size)
            assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1 + 1e-9
        return what, valid, thunk
    if what == "decode":
        valid, ids, expected = decode_arg(rng, lang)

        def thunk():
            out = lang.vocab.decode(ids)
            assert isinstance(out, tuple) and all(x in lang.alphabet for x in out), out
            assert expected is None or out == expected, (out, expected)
        return what, valid, thunk
    strings = [_valid_string(rng, lang, 6) for _ in range(rng.randint(0, 3))]
    length = None
    valid = True
    r = rng.random()
    if r < 0.3:
        length = rng.choice([-1, True, 1.5, "8"])
        valid = False
    elif r < 0.45:
        strings = rng.choice([5, None, "ab"])
        valid = False
    elif r < 0.6:
        strings = strings + [("z",)]
        valid = False
    elif r < 0.7:
        length = 64

    def thunk():
        out = lang.vocab.batch(strings, length=length)
        assert out.dtype == np.int32 and out.ndim == 2 and len(out) == len(strings)
        assert [lang.vocab.decode(row) for row in out] == [tuple(s) for s in strings]
    return what, valid, thunk


def call_outcome(rng: random.Random) -> str:
    """How one random method call ended: 'result', 'error' or 'rejected' (an invalid argument
    refused); a silently accepted invalid argument or another exception fails."""
    what, valid, thunk = method_call(rng)
    try:
        thunk()
    except FormalLMError:
        return f"{what}: " + ("rejected" if valid is False else "error")
    assert valid is not False, f"{what}: an invalid argument was accepted silently"
    return f"{what}: result"


# ----- (c) the command line ------------------------------------------------------------------
FLAG_VALUES = ["0", "1", "3", "-1", "12", "5", "abc", "", "1.5", "1e3", "99999999999999999999",
               "100001", "1000001", "2", "40", "7", "--", "-n"]


def cli_argv(rng: random.Random, files: list[str]) -> list[str]:
    """A random command line of the grammar commands (``files``: grammar files to use)."""
    command = rng.choice(["grammars", "inspect", "inspect", "sample", "sample", "sample"])
    if command == "grammars":
        return ["grammars"] + ([rng.choice(["--x", "anbn"])] if rng.random() < 0.2 else [])
    r = rng.random()
    grammar = rng.choice(files) if files and r < 0.3 else \
        rng.choice(["nope", "x.toml", "/dev/null", "/dev/zero", "", "-", "dyck2/x"]) \
        if r < 0.4 else rng.choice(NAMES)
    flags = {"inspect": ["--max-length", "--samples"],
             "sample": ["-n", "--seed", "--length"]}[command]
    argv = [command, grammar]
    for flag in rng.sample(flags, rng.randint(0, len(flags))):
        argv += [flag, rng.choice(FLAG_VALUES)]
    if rng.random() < 0.05:
        argv.append(rng.choice(["--bogus", "extra"]))
    return argv


def cli_outcome(argv: list[str]) -> tuple[int, str]:
    """(exit status, stderr) of ``formal_lm.cli.main(argv)`` run in-process."""
    from formal_lm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse refuses bad flags with status 2
            code = e.code if isinstance(e.code, int) else 2
    return code, err.getvalue()


def check_cli(argv: list[str]) -> str:
    code, err = cli_outcome(argv)
    assert code in (0, 2), f"exit {code} (an internal error) for {argv}:\n{err}"
    assert "Traceback" not in err, f"a traceback for {argv}:\n{err}"
    return f"{argv[0]}: exit {code}"


# ----- the tests ---------------------------------------------------------------------------------
def fuzz_settings(examples: int) -> settings:
    return settings(derandomize=True, database=None, deadline=None, print_blob=False,
                    max_examples=examples, suppress_health_check=list(HealthCheck))


def run_fuzz(fn, examples: int) -> collections.Counter:
    """Runs ``fn(rng)`` on ``examples`` hypothesis-drawn Randoms; counts what it returns."""
    counts: collections.Counter = collections.Counter()

    @fuzz_settings(examples)
    @given(st.randoms(use_true_random=False))
    def run(rng):
        with time_limit():
            counts[fn(rng)] += 1

    run()
    print(f"\n{fn.__name__}: {sum(counts.values())} inputs: {dict(sorted(counts.items()))}")
    return counts


def _grammar_case(rng):
    kind, _ = load_outcome(broken_grammar(rng))
    return kind


def _method_case(rng):
    return call_outcome(rng)


@pytest.mark.parametrize("examples", [4000, pytest.param(40000, marks=pytest.mark.slow)])
def test_broken_grammar_texts_load_or_fail_cleanly(examples):
    counts = run_fuzz(_grammar_case, examples)
    assert counts["error"] > examples // 4 and sum(counts.values()) >= examples // 2


@pytest.mark.parametrize("examples", [4000, pytest.param(40000, marks=pytest.mark.slow)])
def test_language_methods_take_random_arguments(examples):
    counts = run_fuzz(_method_case, examples)
    assert sum(v for k, v in counts.items() if k.endswith("rejected")) > examples // 5
    assert sum(v for k, v in counts.items() if k.endswith("result")) > examples // 5


@pytest.mark.parametrize("examples", [400, pytest.param(4000, marks=pytest.mark.slow)])
def test_cli_grammar_commands_exit_0_or_2(examples, tmp_path, capsys):
    files = []
    rng = random.Random(0)
    for k in range(12):  # files of (a), valid ones among them
        path = tmp_path / f"g{k}.toml"
        path.write_text(broken_grammar(rng) if k % 3 else SHIPPED[NAMES[k % len(NAMES)]],
                        encoding="utf-8")
        files.append(str(path))
    (tmp_path / "bad.toml").write_bytes(b'name = "\xff\xfe"\nkind = "dyck"\n')
    files.append(str(tmp_path / "bad.toml"))

    def cli_case(rng):
        return check_cli(cli_argv(rng, files))

    counts = run_fuzz(cli_case, examples)
    assert sum(counts.values()) >= examples // 2
    assert "Traceback" not in capsys.readouterr().err


# ----- the fixed bugs, one by one (what the audit found) ------------------------------------
def test_audit_cases_are_package_errors(tmp_path):
    anbn, dyck2 = SHIPPED["anbn"], SHIPPED["dyck2"]
    parity = SHIPPED["parity"]
    cases = {
        "nested": (dyck2.replace("nested = true", 'nested = "false"'), "nested='false'"),
        "rules list": (anbn.split("[rules.R1]")[0].replace('name = "anbn"', 'name = "anbn"\n'
                                                           'rules = ["R1"]'), "rules=['R1']"),
        "name": (anbn.replace('name = "anbn"', "name = 5"), "name=5 should be a string"),
        "max bool": (anbn.replace("max = 128", "max = true"), "max=true should be an integer"),
        "kind table": (anbn.replace('kind = "counter"', "kind = {a = 1}", 1), "kind="),
        "even": (parity.replace('symbol = "1"', 'symbol = "1"\neven = "no"'), "even='no'"),
        "deep": ("x = " + "[" * 3000 + "]" * 3000, "nested too deeply"),
        "arcs": ('name = "p"\nkind = "pfsa"\nalphabet = ["a"]\nstart = "q"\narcs = 5\n',
                 "arcs=5 should be a string"),
        "weights": (anbn.replace('symbols = ["a", "b"]', 'symbols = ["a", "b"]\nweights = '
                                 '["1", "1"]'), "weights="),
    }
    for what, (text, needle) in cases.items():
        with pytest.raises(GrammarError) as info:
            fl.loads(text, path="g.toml")
        assert needle in str(info.value) and "g.toml:" in str(info.value), (what, info.value)
    (tmp_path / "latin1.toml").write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(GrammarError, match="not UTF-8"):
        fl.load(tmp_path / "latin1.toml")


def test_type_errors_point_at_their_own_key():
    text = SHIPPED["anbn"].replace("min = 1", 'min = "1"').replace('name = "anbn"', "name = []")
    with pytest.raises(GrammarError) as info:
        fl.loads(text, path="g.toml")
    lines = text.split("\n")
    where = {p.message.split("=")[0]: p.location.line for p in info.value.problems}
    assert lines[where["prior.n.min"] - 1].strip().startswith("min")
    assert lines[where["name"] - 1].strip().startswith("name")


def test_line_numbers_follow_toml_not_unicode_line_breaks():
    """str.splitlines breaks lines at these; TOML does not (and refuses the control ones)."""
    for sep in ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]:
        text = SHIPPED["anbn"].replace("# a^n", f"# {sep} a^n", 1).replace("max = 128", "max = 0")
        with pytest.raises(GrammarError) as info:
            fl.loads(text, path="g.toml")
        line = info.value.problems[0].location.line
        if sep in "\u2028\u2029\x85":  # allowed in a comment: the prior's problem, at its line
            assert text.split("\n")[line - 1].startswith("[prior.n]"), (repr(sep), line)
        else:  # a control character: malformed TOML, at the comment's line
            assert "malformed TOML" in str(info.value) and line == 1, (repr(sep), line)
    text = 'name = "p"\nkind = "pfsa"\nalphabet = ["a"]\nstart = "q"\n# \u2028\narcs = """\n' \
        'q a q 0.5\nq EOS 0.6\n"""\n'
    with pytest.raises(GrammarError) as info:
        fl.loads(text, path="g.toml")
    assert info.value.problems[0].location.line == 7  # the line "q a q 0.5", as TOML counts
    text = 'kind = "pcfg"\nproductions = """\n# c \u2028 d\nS -> \'a\' [0.5] | [0.6]\n"""\n'
    with pytest.raises(GrammarError) as info:
        fl.loads(text, path="g.toml")
    assert info.value.problems[0].location.line == 4  # the rule's line


def test_sample_arguments_are_checked():
    lang = fl.load("tomita2")
    with pytest.raises(FormalLMError, match="no strings of length=3"):
        lang.sample(2, length=3)
    for kw in [dict(n=-1), dict(n=True), dict(n=2.0), dict(n=2, seed=-1), dict(n=2, length=-1),
               dict(n=2, length=4.5), dict(n=2, seed=None)]:
        n = kw.pop("n")
        with pytest.raises(FormalLMError):
            lang.sample(n, **kw)
    for name in NAMES:
        assert language(name).sample(0) == [], name
    assert fl.load("parity").sample(0, seed=3) == []


def test_ids_outside_the_vocabulary_are_refused():
    v = fl.load("anbn").vocab
    for ids in ([1, 3, -1], [1, 99], [1, 3, 2.5], [[1, 3]]):
        with pytest.raises(FormalLMError):
            v.decode(ids)
    assert v.decode([1, 3, 4, 2, -7, 99]) == ("a", "b")  # nothing after EOS is read
    with pytest.raises(FormalLMError, match=r"ids\[0, 2\]=-1"):
        fl.load("anbn").next_token_probs([[1, 3, -1, 2]])
    with pytest.raises(FormalLMError, match="ids\\[1\\]=99"):
        v.decode([1, 99, 2])


def test_tight_automaton_with_an_unreachable_non_halting_state_is_accepted():
    text = ('name = "p"\nkind = "pfsa"\nalphabet = ["a"]\nstart = "q"\narcs = """\n'
            "q a q 0.5\nq EOS 0.5\nu a u 1.0\n\"\"\"\n")
    lang = fl.loads(text)
    assert lang.prob("a") == pytest.approx(0.25)
    assert lang.expected_length() == pytest.approx(1.0)


@pytest.mark.parametrize("text,limit", [
    (SHIPPED["cs-dyck2"].replace("max = 32", "max = 400"), "MAX_CROSSING_PAIRS"),
    (SHIPPED["dyck2"].replace("max = 32", "max = 5000"), "MAX_DYCK_PAIRS"),
    (SHIPPED["anbn"].replace("max = 128", "max = 1000000000"), "MAX_COUNT"),
    ('kind = "pcfg"\nproductions = "S -> ' + " ".join(f"'t{i}'" for i in range(300))
     + ' [0.5] | [0.5]"\n', "MAX_RULE_LENGTH"),
])
def test_tiny_files_asking_for_huge_work_are_refused_at_once(text, limit):
    with time_limit(5):
        with pytest.raises(GrammarError, match=limit):
            fl.loads(text, path="g.toml")


def test_memory_error_during_construction_says_too_large(monkeypatch):
    from formal_lm import dyck

    def boom(self, R):
        raise MemoryError

    monkeypatch.setattr(dyck.DyckLanguage, "_completion_counts", boom)
    with pytest.raises(GrammarError, match="too large") as info:
        fl.loads(SHIPPED["dyck2"], path="g.toml")
    assert "types" not in str(info.value)
