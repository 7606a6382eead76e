"""Bad grammar files: every problem reported at once, with file:line:column and a fix."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import formal_lm as fl

ROOT = Path(__file__).resolve().parents[1]


def problems_of(text):
    with pytest.raises(fl.GrammarError) as info:
        fl.loads(textwrap.dedent(text), path="g.toml")
    return info.value.problems, str(info.value)


COUNTER = '''
    name = "c"
    kind = "counter"
    alphabet = ["a", "b"]
    blocks = [["a", "n"], ["b", "n"]]

    [prior.n]
    kind = "uniform"
    min = 1
    max = 4
'''


def test_a_valid_file_loads():
    lang = fl.loads(textwrap.dedent(COUNTER))
    assert lang.prob("ab") == pytest.approx(0.25)


@pytest.mark.parametrize("old,new,needle", [
    ('blocks = [["a", "n"], ["b", "n"]]', "blocks = 5", "blocks=5 should be a list"),
    ('[prior.n]\n    kind = "uniform"\n    min = 1\n    max = 4', "prior = 3",
     "prior=3 should be tables"),
])
def test_wrong_type_for_blocks_or_prior_is_a_grammar_error(old, new, needle):
    """A scalar where a list or table belongs is reported with its place, not a TypeError."""
    assert old in COUNTER
    _, msg = problems_of(COUNTER.replace(old, new))
    assert needle in msg and "g.toml:" in msg


def test_malformed_syntax_has_line_and_column():
    _, msg = problems_of('name = "x"\nkind = "counter"\nalphabet = ["a" "b"]\n')
    assert "g.toml:3:" in msg and "malformed TOML" in msg


def test_probabilities_not_summing_to_one_show_the_sum():
    _, msg = problems_of('''
        name = "p"
        kind = "pfsa"
        alphabet = ["a"]
        start = "q"
        arcs = """
        q a q 0.5
        q EOS 0.3
        """
    ''')
    assert "g.toml:7:" in msg and "sum to 0.8" in msg and "fix:" in msg


def test_reserved_and_unknown_symbols():
    problems, msg = problems_of(COUNTER.replace('["a", "b"]', '["a", "EOS"]'))
    assert "symbol='EOS' is a reserved name" in msg and "g.toml:4:" in msg
    assert "symbol='b' is not in the alphabet" in msg
    assert len(problems) >= 2  # gathered, not just the first


def test_unknown_and_unused_keys_are_named():
    _, msg = problems_of(COUNTER + '    colour = "red"\n')
    assert "'colour'" in msg and "g.toml:" in msg
    _, msg = problems_of(COUNTER.replace('max = 4', 'max = 4\n    mean = 2'))
    assert "key 'mean' is not used by a uniform prior" in msg


def test_counter_prior_with_no_support():
    _, msg = problems_of(COUNTER.replace("max = 4", "max = 0"))
    assert "min=1, max=0 has no support" in msg and "g.toml:7:" in msg


def test_state_that_cannot_halt_is_unproductive():
    _, msg = problems_of('''
        name = "p"
        kind = "pfsa"
        alphabet = ["a", "b"]
        start = "q"
        arcs = """
        q a q 0.5
        q b r 0.3
        q EOS 0.2
        r a r 1.0
        """
    ''')
    assert "state r is reachable but can never halt" in msg


def test_empty_language():
    _, msg = problems_of('''
        name = "d"
        kind = "dfa"
        alphabet = ["a"]
        start = "q"
        accepting = []
        stop_prob = 0.2
        transitions = """
        q a q
        """
    ''')
    assert "accepts no string" in msg


def test_unknown_rule_kind_and_bad_count():
    problems, msg = problems_of(COUNTER.replace('["b", "n"]', '["b", "n+1"]') +
                                '\n    [rules.R1]\n    kind = "count_equl"\n')
    assert "count='n+1' is not a count" in msg
    assert "kind='count_equl' is unknown" in msg and "count_equal" in msg
    assert len(problems) == 2


def test_unknown_grammar_name():
    with pytest.raises(fl.FormalLMError, match="no shipped grammar named 'anbm'"):
        fl.load("anbm")


def test_cli_reports_bad_files_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(textwrap.dedent(COUNTER.replace("max = 4", "max = 0")))
    run = subprocess.run([sys.executable, "-m", "formal_lm.cli", "inspect", str(bad)],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and f"{bad}:7:" in run.stderr


def test_cli_cpu_devices_is_checked(tmp_path, capsys):
    """--cpu-devices below 1, or after JAX has started in this process, is a clear error."""
    import jax

    from formal_lm.cli import main

    jax.numpy.zeros(1).block_until_ready()  # JAX has started in this test process
    config = str(ROOT / "configs" / "anbn-transformer.toml")
    with pytest.raises(SystemExit) as e:  # out of range: argparse's usage error
        main(["train", config, "--out", str(tmp_path), "--cpu-devices", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "0 is not in [1, 1024]" in err and "Traceback" not in err
    code = main(["train", config, "--out", str(tmp_path), "--cpu-devices", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "JAX_NUM_CPU_DEVICES" in err and "Traceback" not in err


def test_cli_inspect_prints_the_exact_optimal_loss():
    run = subprocess.run([sys.executable, "-m", "formal_lm.cli", "inspect", "anbn"],
                         capture_output=True, text=True, check=True)
    assert "corpus (total nats / total tokens): 0.037323" in run.stdout


@pytest.mark.parametrize("command", ["grammars", "inspect", "sample", "train", "run"])
def test_every_subcommand_has_help(command):
    run = subprocess.run([sys.executable, "-m", "formal_lm.cli", command, "--help"],
                         capture_output=True, text=True)
    assert run.returncode == 0 and "usage: formal-lm" in run.stdout


def test_cli_sample_is_seeded():
    cmd = [sys.executable, "-m", "formal_lm.cli", "sample", "dyck2", "-n", "5", "--seed", "3"]
    a = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    b = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert a == b and len(a.splitlines()) == 5


def test_pcfg_file_errors_point_into_the_rules_string():
    problems, msg = problems_of('''
        name = "g"
        kind = "pcfg"
        productions = """
        S -> 'a' S 'b' [0.7] | [0.2]
        T -> 'c' [1.0]
        """
    ''')
    assert "g.toml:5:" in msg and "0.9" in msg  # the sum, at the rule's line
    assert "unreachable" in msg.lower() and "g.toml:6:" in msg


def test_non_tight_pcfg_is_an_error_that_says_so():
    _, msg = problems_of('''
        name = "g"
        kind = "pcfg"
        productions = """
        S -> S S [0.6] | 'a' [0.4]
        """
    ''')
    assert "not tight" in msg and "spectral radius" in msg


# load: a shipped name, a name on FORMAL_LM_GRAMMAR_PATH, or a path to a .toml file of <= 1 MiB

MINE = COUNTER.replace('name = "c"', 'name = "mine"')
ANBN_PROB_AB = 1 / 128  # the shipped anbn: n uniform on 1..128


def test_a_path_not_ending_in_toml_is_refused_without_reading_it(tmp_path, capsys):
    from formal_lm.cli import main

    secret = tmp_path / "notes.txt"
    secret.write_text("password = hunter2\n")
    for arg in (secret, str(secret)):
        with pytest.raises(fl.FormalLMError, match="does not end in .toml") as info:
            fl.load(arg)
        assert "hunter2" not in str(info.value)
    assert main(["inspect", str(secret)]) == 2
    err = capsys.readouterr().err
    assert "does not end in .toml" in err and "hunter2" not in err and "Traceback" not in err


def test_a_toml_path_loads_and_a_missing_one_is_named(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text(textwrap.dedent(MINE))
    assert fl.load(good).name == "mine" and fl.load(str(good)).name == "mine"
    with pytest.raises(fl.FormalLMError, match="'.*nope.toml' does not exist"):
        fl.load(tmp_path / "nope.toml")
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(fl.FormalLMError, match="is not a regular file"):
        fl.load(tmp_path / "dir.toml")


def test_a_local_file_named_like_a_shipped_grammar_does_not_shadow_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("anbn").write_text(textwrap.dedent(MINE))
    assert fl.load("anbn").prob("ab") == pytest.approx(ANBN_PROB_AB)
    assert fl.load(Path("anbn")).prob("ab") == pytest.approx(ANBN_PROB_AB)
    Path("anbn.toml").write_text(textwrap.dedent(MINE))
    assert fl.load("anbn").prob("ab") == pytest.approx(ANBN_PROB_AB)
    assert fl.load("anbn.toml").name == "mine"  # a .toml path is the file, as given
    Path("anbm").write_text(textwrap.dedent(MINE))
    with pytest.raises(fl.FormalLMError, match="no shipped grammar named 'anbm'"):
        fl.load("anbm")  # a bare name is a name, even when a file of that name is here


def test_the_search_path_adds_names_and_never_hides_shipped_ones(tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    (one / "mine.toml").write_text(textwrap.dedent(MINE))
    (one / "anbn.toml").write_text(textwrap.dedent(MINE))  # a shipped name: ignored here
    (two / "other.toml").write_text(textwrap.dedent(COUNTER))
    monkeypatch.setenv("FORMAL_LM_GRAMMAR_PATH", os.pathsep.join([str(one), "", str(two)]))
    assert fl.load("mine").name == "mine" and fl.load("other").name == "c"
    assert fl.load("anbn").prob("ab") == pytest.approx(ANBN_PROB_AB)
    assert set(fl.shipped()) == {p.stem for p in (ROOT / "grammars").glob("*.toml")}
    with pytest.raises(fl.FormalLMError, match="no shipped grammar named 'anbm' "
                                               r"\(nor in FORMAL_LM_GRAMMAR_PATH\)") as info:
        fl.load("anbm")
    assert "'mine'" in str(info.value)  # the fix lists the search path's names too


def test_a_name_twice_on_the_search_path_is_an_error_naming_both(tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    for folder in (one, two):
        (folder / "mine.toml").write_text(textwrap.dedent(MINE))
    monkeypatch.setenv("FORMAL_LM_GRAMMAR_PATH", f"{one}{os.pathsep}{two}")
    with pytest.raises(fl.FormalLMError, match="two grammar files are named 'mine'") as info:
        fl.load("mine")
    assert str(one / "mine.toml") in str(info.value) and str(two / "mine.toml") in str(info.value)
    assert fl.load("anbn").name == "anbn"  # shipped names do not read the search path


def test_a_search_path_folder_that_does_not_exist_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("FORMAL_LM_GRAMMAR_PATH", str(tmp_path / "typo"))
    with pytest.raises(fl.FormalLMError, match="FORMAL_LM_GRAMMAR_PATH: '.*typo' is not a folder"):
        fl.load("mine")


def test_a_too_large_file_is_refused_before_reading(tmp_path):
    from formal_lm.grammar_files import MAX_FILE_BYTES

    big = tmp_path / "big.toml"
    with open(big, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: NUL bytes, which TOML would reject otherwise
    with pytest.raises(fl.FormalLMError, match=r"larger than the limit of 1 MiB \(1048576 bytes\)"):
        fl.load(big)
    with open(big, "r+b") as f:
        f.truncate(MAX_FILE_BYTES)  # at the limit: read, and reported as malformed TOML
    with pytest.raises(fl.GrammarError, match="malformed TOML"):
        fl.load(big)


# ----- PCFG productions and named rules; the open rule vocabulary; linear counts ------------------
PCFG = '''
    name = "g"
    kind = "pcfg"
    productions = """
    S -> '(' S ')' S [0.4] | [0.6]
    """
'''


def test_an_old_pcfg_rules_string_says_to_rename_the_key():
    problems, msg = problems_of(PCFG.replace("productions =", "rules ="))
    assert len(problems) == 1
    assert "g.toml:4:1:" in msg and "productions" in msg and "rename the key" in msg


def test_a_pcfg_file_declares_named_rules():
    lang = fl.loads(textwrap.dedent(PCFG + '''
        [rules.R1]
        kind = "balanced"
        open = "("
        close = ")"
        description = "balanced"

        [rules.R2]
        kind = "linear"
        expr = "#'(' = #')'"
    '''))
    assert [r.name for r in lang.rules] == ["R1", "R2"]
    assert all(r.holds(s) for s in lang.sample(50, seed=0) for r in lang.rules)
    assert not lang.rules[0].can_complete((")",))


def test_shipped_pcfgs_use_productions_and_declare_rules():
    for name in ("dyck1-pcfg", "arith", "toy-english"):
        text = (ROOT / "grammars" / f"{name}.toml").read_text()
        assert 'productions = """' in text and 'rules = """' not in text
    assert [r.name for r in fl.load("dyck1-pcfg").rules] == ["R1"]


def test_rule_symbols_outside_the_alphabet_are_reported_at_the_rule():
    _, msg = problems_of(PCFG + '''
    [rules.R1]
    kind = "forbidden"
    substring = ["(", "x"]
    ''')
    assert "g.toml:8:" in msg and "rule R1 names symbol='x' outside the alphabet" in msg
    _, msg = problems_of(COUNTER + '''
    [rules.R1]
    kind = "linear"
    expr = "#a = #z"
    ''')
    assert "g.toml:12:" in msg and "symbol='z'" in msg


def test_a_bad_linear_expression_names_the_expression_and_the_column():
    _, msg = problems_of(COUNTER + '''
    [rules.R1]
    kind = "linear"
    expr = "#a + = #b"
    ''')
    assert "g.toml:14:" in msg and "'#a + = #b': column 6:" in msg and "fix:" in msg


def test_counts_may_sum_variables():
    lang = fl.loads(textwrap.dedent('''
        kind = "counter"
        alphabet = ["a", "b", "c"]
        blocks = [["a", "n"], ["b", "m"], ["c", "n + 2m"]]
        [prior.n]
        kind = "uniform"
        min = 1
        max = 2
        [prior.m]
        kind = "uniform"
        min = 1
        max = 2
    '''))
    assert lang.prob("abccc") == pytest.approx(0.25)
    _, msg = problems_of(COUNTER.replace('["b", "n"]', '["b", "n+n"]'))
    assert "names a variable twice" in msg
    _, msg = problems_of(COUNTER.replace('["b", "n"]', '["b", "n+m"]'))
    assert "count variable 'm' with no prior" in msg


def test_blocks_that_can_be_empty_together_between_equal_symbols_are_ambiguous():
    _, msg = problems_of('''
        kind = "counter"
        alphabet = ["a", "b", "c"]
        blocks = [["a", "n"], ["b", "m"], ["c", "m"], ["a", "n"]]
        [prior.n]
        kind = "uniform"
        min = 1
        max = 2
        [prior.m]
        kind = "uniform"
        min = 0
        max = 2
    ''')
    assert "blocks 1..2 can be empty between two 'a' blocks" in msg and "min >= 1" in msg


def _write(folder, name, text):
    (folder / name).write_text(textwrap.dedent(text))
    return folder / name


IN_GRAMMAR = '''
    kind = "counter"
    alphabet = ["a", "b"]
    blocks = [["a", "n"], ["b", "n"]]
    [prior.n]
    kind = "uniform"
    min = 1
    max = 3
    [rules.R1]
    kind = "in_grammar"
    grammar = "{}"
'''


def test_in_grammar_names_a_shipped_grammar_or_a_path_relative_to_the_file(tmp_path):
    lang = fl.loads(textwrap.dedent(IN_GRAMMAR.format("anbn")))
    assert lang.rules[0].holds(("a", "b")) and not lang.rules[0].can_complete(("b",))
    sub = tmp_path / "sub"
    sub.mkdir()
    _write(sub, "inner.toml", MINE)
    outer = _write(tmp_path, "outer.toml", IN_GRAMMAR.format("sub/inner.toml"))
    assert fl.load(outer).rules[0].language.name == "mine"
    _write(tmp_path, "bad.toml", IN_GRAMMAR.format("dyck1"))
    with pytest.raises(fl.GrammarError, match="outside this alphabet"):
        fl.load(tmp_path / "bad.toml")
    _write(tmp_path, "gone.toml", IN_GRAMMAR.format("nope.toml"))
    with pytest.raises(fl.GrammarError, match="grammar='nope.toml' cannot be loaded"):
        fl.load(tmp_path / "gone.toml")


def test_a_grammar_that_refers_to_itself_is_an_error_not_a_recursion(tmp_path):
    _write(tmp_path, "self.toml", IN_GRAMMAR.format("self.toml"))
    with pytest.raises(fl.GrammarError) as info:
        fl.load(tmp_path / "self.toml")
    assert "refers back to this grammar" in str(info.value)
    assert f"{tmp_path / 'self.toml'}:11:" in str(info.value)
    _write(tmp_path, "a.toml", IN_GRAMMAR.format("b.toml"))
    _write(tmp_path, "b.toml", IN_GRAMMAR.format("c.toml"))
    _write(tmp_path, "c.toml", IN_GRAMMAR.format("a.toml"))
    with pytest.raises(fl.GrammarError) as info:
        fl.load(tmp_path / "a.toml")
    text = str(info.value)
    assert "refers back to this grammar" in text and text.count("->") == 3
    assert f"{tmp_path / 'a.toml'}:11:" in text
    fl.load("anbn")  # nothing is left marked as being loaded


def test_cli_bad_arguments_and_internal_errors(capsys, monkeypatch):
    """Out-of-range arguments are usage errors (exit 2); an unexpected exception is reported as
    a bug in one short message (exit 1) and only --debug shows its traceback."""
    from formal_lm import cli
    for argv in (["sample", "anbn", "-n", "-1"], ["sample", "anbn", "--seed", "-1"],
                 ["inspect", "anbn", "--max-length", "100000000"],
                 ["train", "x.toml", "--out", "o", "--cpu-devices", "0"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
        assert "is not in [" in capsys.readouterr().err

    def boom(args):
        raise ZeroDivisionError("deliberate")

    monkeypatch.setattr(cli, "cmd_grammars", boom)
    assert cli.main(["grammars"]) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: deliberate" in err and "--debug" in err
    assert "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        cli.main(["--debug", "grammars"])


def test_cli_output_cut_short_by_the_reader_ends_quietly(tmp_path):
    import subprocess
    import sys
    cmd = (f"{sys.executable} -m formal_lm.cli inspect anbn --max-length 2000 | head -n 1")
    out = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.startswith("anbn (CounterLanguage)")
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr


# ----- typed values and limits (the adversarial audit) --------------------------------------
@pytest.mark.parametrize("old,new,needle", [
    ("max = 4", "max = true", "prior.n.max=true should be an integer, not a boolean"),
    ("max = 4", "max = 4.0", "prior.n.max=4.0 should be an integer"),
    ('name = "c"', "name = 5", "name=5 should be a string"),
    ('alphabet = ["a", "b"]', 'alphabet = "ab"', "alphabet='ab' should be a list of strings"),
    ('blocks = [["a", "n"], ["b", "n"]]', 'blocks = [["a", true], ["b", "n"]]', "blocks="),
    ('kind = "uniform"', "kind = {x = 1}", "prior.n needs kind = one of"),
])
def test_a_value_of_the_wrong_type_is_an_error_at_its_own_line(old, new, needle):
    text = COUNTER.replace(old, new)
    _, msg = problems_of(text)
    assert needle in msg, msg
    line = int(msg.split("g.toml:")[1].split(":")[0])
    assert new.split("=")[0].strip() in textwrap.dedent(text).split("\n")[line - 1], msg


def test_every_type_problem_comes_at_once():
    text = COUNTER.replace('name = "c"', "name = []").replace("min = 1", 'min = "1"') \
        .replace("max = 4", "max = 4\n\n    [rules.R1]\n    kind = \"parity\"\n    symbol = \"a\"\n"
                 "    even = \"no\"")
    problems, msg = problems_of(text)
    assert {"name=", "prior.n.min=", "rules.R1.even="} <= {p.message.split("[")[0].split("'")[0]
                                                          .split("=")[0] + "=" for p in problems}


def test_a_dyck_nested_given_as_a_string_is_an_error_not_a_nested_dyck():
    text = (ROOT / "grammars" / "cs-dyck2.toml").read_text().replace("nested = false",
                                                                      'nested = "false"')
    with pytest.raises(fl.GrammarError, match="nested='false' should be true or false"):
        fl.loads(text)


def test_a_file_that_is_not_utf8_is_a_grammar_error_naming_it(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b'name = "x"\nkind = "caf\xe9"\n')
    with pytest.raises(fl.GrammarError) as info:
        fl.load(path)
    assert "bad.toml" in str(info.value) and "not UTF-8" in str(info.value)
    assert info.value.problems[0].location.line == 2


def test_cli_sample_an_impossible_length_and_inspect_zero_samples(capsys):
    from formal_lm.cli import main

    assert main(["sample", "tomita2", "--length", "3"]) == 2
    assert "no strings of length=3" in capsys.readouterr().err
    assert main(["inspect", "parity", "--samples", "0"]) == 0
    assert main(["sample", "anbn", "-n", "0"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_limit_names_itself_and_can_be_raised(monkeypatch):
    from formal_lm import limits

    text = (ROOT / "grammars" / "cs-dyck2.toml").read_text().replace("max = 32", "max = 40")
    monkeypatch.setattr(limits, "MAX_CROSSING_PAIRS", 32)
    with pytest.raises(fl.GrammarError, match="formal_lm.limits.MAX_CROSSING_PAIRS"):
        fl.loads(text)
    monkeypatch.setattr(limits, "MAX_CROSSING_PAIRS", 40)
    assert fl.loads(text).prior.max == 40


# ----- two problems of a PFSA file at once, each at its state's line ---------------------------
def test_a_pfsa_file_with_two_problems_reports_both_at_the_states_lines():
    problems, msg = problems_of('''
        name = "p"
        kind = "pfsa"
        alphabet = ["a", "b"]
        start = "q0"
        arcs = """
        q0 a q1 0.5
        q0 EOS 0.4
        q1 b q2 1.0
        q2 a q2 1.0
        """
    ''')
    where = {p.message.split(":")[0] if p.message.startswith("state q0") else
             p.message.split(" is ")[0]: str(p.location) for p in problems}
    assert "sum to 0.9" in msg and "state q2 is reachable but can never halt" in msg
    assert where["state q0"] == "g.toml:7:1"  # q0's first arc, not the arcs key (line 6)
    assert where["state q1"] == "g.toml:9:1" and where["state q2"] == "g.toml:10:1"


# ----- inspect ---------------------------------------------------------------------------------
def test_inspect_shows_every_length_of_its_range_when_the_empty_string_has_mass(capsys):
    from formal_lm.cli import main
    assert main(["inspect", "parity", "--max-length", "5", "--samples", "0"]) == 0
    out = capsys.readouterr().out
    table = out.split("probability mass by length (up to 5):\n")[1].split("  tail")[0]
    assert [int(line.split(":")[0]) for line in table.splitlines()] == [0, 1, 2, 3, 4, 5]


def test_inspect_never_calls_an_unproven_grammar_ambiguous(tmp_path, capsys):
    """Even palindromes are unambiguous but neither LL(1) nor LR(1): the floor is estimated,
    and inspect says the grammar is not proven unambiguous (arith, with a witness, is
    ambiguous)."""
    from formal_lm.cli import main
    pal = tmp_path / "pal.toml"
    pal.write_text('kind = "pcfg"\nproductions = """\n'
                   "S -> 'a' S 'a' [0.3] | 'b' S 'b' [0.3] | [0.4]\n\"\"\"\n")
    assert main(["inspect", str(pal), "--samples", "0"]) == 0
    out = capsys.readouterr().out
    assert "not proven unambiguous" in out
    assert " is ambiguous" not in out.replace("not proven unambiguous", "")
    assert main(["inspect", "arith", "--samples", "0"]) == 0
    assert "the grammar is ambiguous (x*x*x has two derivations)" in capsys.readouterr().out


# ----- fingerprints ----------------------------------------------------------------------------
PFSA_FILE = '''
name = "two"
kind = "pfsa"
description = "two states"
alphabet = ["a", "b"]
start = "q"
arcs = """
q a r 0.5
q EOS 0.5
r b q 0.75
r EOS 0.25
"""

[rules.R1]
kind = "starts_with"
symbol = "a"
description = "starts with a"
'''


def test_a_fingerprint_ignores_formatting_and_names_but_not_values():
    base = fl.loads(PFSA_FILE, path="a.toml").fingerprint()
    same = [PFSA_FILE.replace("q a r 0.5", "q   a  r   0.50   # the first arc"),
            PFSA_FILE.replace('name = "two"', 'name = "other"') + "\n# a comment\n",
            PFSA_FILE.replace('description = "two states"', 'description = "2"'),
            PFSA_FILE.replace("r EOS 0.25", "r </s> 2.5e-1"),
            PFSA_FILE.replace('start = "q"', 'start   =   "q"\n\n')]
    for text in same:
        assert fl.loads(text, path="elsewhere/b.toml").fingerprint() == base, text
    different = [PFSA_FILE.replace("q a r 0.5\nq EOS 0.5", "q a r 0.4\nq EOS 0.6"),
                 PFSA_FILE.replace('symbol = "a"', 'symbol = "b"'),
                 PFSA_FILE.replace('alphabet = ["a", "b"]', 'alphabet = ["a", "b", "c"]')]
    for text in different:
        assert fl.loads(text).fingerprint() != base, text


@pytest.mark.parametrize("name", sorted(fl.shipped()))
def test_every_shipped_grammar_has_a_stable_fingerprint(name):
    text = fl.shipped()[name].read_text()
    fp = fl.load(name).fingerprint()
    assert len(fp) == 16 and fl.loads(text.replace("\n", "\n\n") + "# end\n").fingerprint() == fp


def test_counts_and_numbers_are_normalised_and_referenced_grammars_count(tmp_path):
    a = fl.loads(textwrap.dedent(COUNTER)).fingerprint()
    assert fl.loads(textwrap.dedent(COUNTER).replace('["b", "n"]', '["b", "1 * n"]')
                    ).fingerprint() == a
    assert fl.loads(textwrap.dedent(COUNTER).replace("max = 4", "max = 5")).fingerprint() != a
    inner = tmp_path / "inner.toml"
    inner.write_text(textwrap.dedent(COUNTER))
    outer = tmp_path / "outer.toml"
    outer.write_text(textwrap.dedent(COUNTER) + '\n[rules.R1]\nkind = "in_grammar"\n'
                     'grammar = "inner.toml"\n')
    before = fl.load(outer).fingerprint()
    inner.write_text(textwrap.dedent(COUNTER).replace("max = 4", "max = 3"))
    assert fl.load(outer).fingerprint() != before  # the referenced grammar changed


def test_languages_built_in_python_hash_their_parameters():
    def anbn(top, name="x"):
        return fl.CounterLanguage(name, [fl.Block("a", 1, "n"), fl.Block("b", 1, "n")],
                                  {"n": fl.Uniform(1, top)})

    assert anbn(4).fingerprint() == anbn(4, "y").fingerprint() != anbn(5).fingerprint()
    d = fl.DyckLanguage("d", [("(", ")")], fl.Uniform(1, 3))
    assert d.fingerprint() != fl.DyckLanguage("d", [("(", ")")], fl.Uniform(1, 4)).fingerprint()
    g = fl.PCFG.from_nltk("S -> 'a' S [0.3] | 'b' [0.7]")
    assert g.fingerprint() == fl.PCFG.from_nltk("S -> 'a' S [0.3]\n | 'b' [0.7]").fingerprint()
    assert g.fingerprint() != fl.PCFG.from_nltk("S -> 'a' S [0.4] | 'b' [0.6]").fingerprint()
    assert fl.random_pdfa(3, "ab", seed=1).fingerprint() != \
        fl.random_pdfa(3, "ab", seed=2).fingerprint()
    assert anbn(4).restrict(2, 4).fingerprint() != anbn(4).restrict(2, 6).fingerprint()


def test_sample_jsonl_and_export_help(capsys):
    import json
    from formal_lm.cli import main
    assert main(["sample", "anbnan", "-n", "3", "--seed", "1", "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    lang = fl.load("anbnan")
    assert rows and [tuple(r["string"]) for r in rows] == lang.sample(3, seed=1)
    for r in rows:
        assert r["log_prob"] == pytest.approx(lang.log_prob(r["string"]))
        assert r["length"] == len(r["string"]) and r["rules"] == {"R1": True, "R2": True,
                                                                   "R3": True}
    assert main(["sample", "dyck2", "-n", "2"]) == 0  # text stays the default
    assert not capsys.readouterr().out.startswith("{")
    for command in ("export", "sample"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "usage: formal-lm" in out and ("--format" in out or command == "export")
    with pytest.raises(SystemExit):
        main(["sample", "anbn", "--format", "csv"])
    assert "invalid choice" in capsys.readouterr().err
