"""The shipped compositionality experiment: split grammar files (exact against closed forms and
brute force, fingerprints, file:line:column errors), a tiny end-to-end run whose report is
checked against results.json and against the analyzers called directly, and the shipped file
itself (slow)."""
from __future__ import annotations

import itertools
import json
import math
import re
import time
from pathlib import Path

import pytest

import formal_lm as fl
from formal_lm.errors import FormalLMError
from formal_lm.experiments import run_experiment
from formal_lm.experiments.report import fmt_summary

ROOT = Path(__file__).resolve().parent.parent
SPLITS = ROOT / "experiments" / "grammars"
COMMANDS = SPLITS / "commands-split.toml"
COUNTS = SPLITS / "anbmcnm-split.toml"


# ----- split grammar files: exact ------------------------------------------------------------
def test_twin_split_file_matches_the_closed_form():
    """commands-split: the full language is commands with each 'walk' split evenly into 'walk'
    and 'stroll'; training never has 'stroll' after 'and'. With k later commands (P(0) = 0.6,
    P(k) = 0.4^k 0.6) each using 'stroll' with probability 0.8 * 0.5 * 0.5, the held-out mass
    is 1 - (0.6 + sum_k 0.4^k 0.6 0.8^k)."""
    lang, base = fl.load(COMMANDS), fl.load("commands")
    keep = 0.6 + sum(0.4 ** k * 0.6 * 0.8 ** k for k in range(1, 200))
    assert lang.split.held_out_mass == pytest.approx(1 - keep, abs=1e-12)
    alphabet = lang.split.full.alphabet
    for L in range(1, 5):
        for s in itertools.product(alphabet, repeat=L):
            p_full = base.prob(tuple("walk" if x == "stroll" else x for x in s)) * 0.5 ** sum(
                x in ("walk", "stroll") for x in s)
            later = list(s[s.index("and"):]) if "and" in s else []
            p_train = 0.0 if "stroll" in later else p_full / keep
            assert lang.prob(s) == pytest.approx(p_train, abs=1e-12), s
            assert lang.split.full.prob(s) == pytest.approx(p_full, abs=1e-12), s
    assert lang.name == "commands-split" and lang.probes.twins == ("walk", "stroll")


def test_count_split_file_matches_brute_force():
    """anbmcnm-split: every (n, m) in 1..6 x 1..6 has prior 1/36; five are held out."""
    lang = fl.load(COUNTS)
    held = {(1, 2), (2, 5), (3, 3), (4, 1), (6, 4)}
    for n, m in itertools.product(range(1, 7), repeat=2):
        s = "a" * n + "b" * m + "c" * (n + m)
        want = 0.0 if (n, m) in held else (1 / 36) / (1 - len(held) / 36)
        assert lang.prob(s) == pytest.approx(want, abs=1e-12)
        assert lang.split.held_out.prob(s) == pytest.approx(
            1 / len(held) if (n, m) in held else 0.0, abs=1e-12)
    assert lang.rules == fl.load("anbmcnm").rules  # a conditioned language keeps its rules


BASE = """name = "mini"
kind = "pcfg"
productions = \"\"\"
S -> A 'x' [0.5] | B 'x' [0.5]
A -> 'a' [{pa}] | 'c' [{pc}]
B -> 'b' [0.5] | 'c' [0.5]
\"\"\"
"""
SPLIT = """name = "mini-split"
kind = "split"
base = "mini.toml"
exclude = {{ lhs = "A", rhs = ["{rhs}"] }}
"""


def _write(d: Path, pa=0.5, rhs="c", comment=""):
    (d / "mini.toml").write_text(comment + BASE.format(pa=pa, pc=1 - pa))
    (d / "split.toml").write_text(SPLIT.format(rhs=rhs))
    return fl.load(d / "split.toml")


def test_exclude_file_and_its_fingerprint(tmp_path):
    """p_train(s) = P(derivations of s avoiding A -> c) / (1 - M): 'cx' keeps only its B
    derivation. The fingerprint follows the base grammar's content and the exclusion, not
    its comments."""
    lang = _write(tmp_path)
    assert lang.split.held_out_mass == pytest.approx(0.25)
    assert lang.prob("cx") == pytest.approx(0.25 / 0.75)
    assert lang.prob("ax") == pytest.approx(0.25 / 0.75)
    first = lang.fingerprint()
    assert _write(tmp_path, comment="# a comment\n").fingerprint() == first
    assert _write(tmp_path, pa=0.25).fingerprint() != first       # the base changed
    assert _write(tmp_path, rhs="a").fingerprint() != first       # the exclusion changed


# ----- split grammar files: errors with file:line:column ------------------------------------
ERRORS = [
    ('base = "commands"\ntwin = { symbol = "walk", twin = "walk", parent = "W" }',
     r"split\.toml:4:1: twin='walk' is already a symbol"),
    ('base = "commands"\ntwin = { symbol = "walk", twin = "stroll" }',
     r"split\.toml:4:1: twin needs the key 'parent'"),
    ('base = "commands"\ncounts = [[1, 2]]\ntwin = { symbol = "walk", twin = "s", parent = "W" }',
     r"split\.toml:5:1: a split names exactly one of"),
    ('base = "anbmcnm"\ncounts = [[1, 9]]', r"split\.toml:4:1: combination \(1, 9\)"),
    ('base = "anbmcnm"\ncounts = [[1, "x"]]', r"split\.toml:4:1: counts=.* should be"),
    ('base = "nope"\ncounts = [[1, 2]]', r"split\.toml:3:1: base='nope' cannot be loaded"),
    ('base = "split.toml"\ncounts = [[1, 2]]', r"split\.toml:3:1: base='split.toml' refers back"),
    ('base = "commands"\nexclude = { lhs = "K", rhs = ["W"] }\nexceptions = [["walk", "twice"]]',
     r"split\.toml:5:1: exceptions: .* allows 'twice' after \['walk'\]"),
    ('base = "commands"\nexclude = { lhs = "K", rhs = ["W"] }\nconstituent = "Q"',
     r"split\.toml:5:1: constituent='Q' is not a nonterminal"),
    ('base = "commands"\nexclude = { lhs = "K", rhs = ["W"], side = 1 }',
     r"split\.toml:4:\d+: exclude: key 'side' is not used"),
    ('base = "commands"\ncounts = [[1, 2]]', r"split\.toml:4:1: 'commands' is a PCFG"),
    ('base = "anbmcnm"\ncounts = [[1, 2, 3]]', r"split\.toml:4:1: combination \(1, 2, 3\)"),
    ('base = "commands"\ntwin = { symbol = "walk", twin = "a b", parent = "W" }',
     r"split\.toml:4:1: .*'a b' is not a non-empty string"),
    ('base = 3\ncounts = [[1, 2]]', r"split\.toml:3:1: base=3 should be a string"),
]


@pytest.mark.parametrize("body, pattern", ERRORS)
def test_split_file_errors_name_the_line(tmp_path, body, pattern):
    p = tmp_path / "split.toml"
    p.write_text(f'name = "s"\nkind = "split"\n{body}\n')
    with pytest.raises(FormalLMError) as e:
        fl.load(p)
    assert re.search(pattern, str(e.value)), str(e.value)


# ----- a tiny end-to-end run -----------------------------------------------------------------
TINY = f"""
[experiment]
name = "tiny-compositionality"
languages = ["{COMMANDS}", "{COUNTS}"]
eval_seed = 5

[train]
steps = 20
seeds = 2
batch_size = 8
eval_every = 10
checkpoint_every = 10

[train.optimizer]
lr = 1e-2

[train.data]
max_length = 26
bucket = 26
eval_size = 16

[models.lstm]
name = "lstm"
hidden = 8

[models.rnn]
name = "rnn"
hidden = 8

[objectives.normal]
name = "nll"

[analysis.saturation]
n = 16

[analysis.compositional]
n = 8
per_bin = 4
test_lengths = [25, 28]

[statistics]
loss_metric = "kl"
saturation = 10.0   # a tiny run is nowhere near saturated: a regime that lets every seed in

[published]
citation = "Hupkes et al. 2020"
setup = "a translation task"
"""
PROPS = ["systematicity.systematicity_set_acc", "systematicity.systematicity_kl",
         "productivity.productivity_set_acc", "productivity.productivity_kl",
         "substitutivity.substitutivity_set_agreement", "localism.localism_set_agreement",
         "overgeneralisation.overgeneralisation_rate"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("compositional")
    (d / "tiny.toml").write_text(TINY)
    t0 = time.perf_counter()
    res = run_experiment(d / "tiny.toml", d / "out", progress=False)
    return d / "out", res, time.perf_counter() - t0


def _values(res, group, key):
    label, name = key.split(".", 1)
    return [r["results"].get(label, {}).get("measures", {}).get(name)
            for r in res["records"] if r["group"] == group]


def _check_table(out: Path, res: dict) -> dict:
    """The report's compositionality table against results.json: each cell is the summary of
    the in-regime seeds' values, n/a where the split does not define the property; returns
    {group: (seeds in the regime, seeds)}."""
    saved = json.loads((out / "results.json").read_text())
    assert saved["records"] == res["records"]
    inside = {tuple(x) for info in saved["languages"].values()
              for x in info["regime"]["in_regime"]}
    report = (out / "report.md").read_text()
    section = report.split("## Compositionality")[1].split("###")[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in section.splitlines()
            if line.startswith("| commands-split.") or line.startswith("| anbmcnm-split.")}
    assert set(rows) == {f"{lang}.{m}.normal" for lang in ("commands-split", "anbmcnm-split")
                         for m in ("lstm", "rnn")}
    counts = {}
    for group, line in rows.items():
        cells = [c.strip() for c in line.strip("|").split("|")]
        counts[group] = cells[1]
        mine = [r for r in saved["records"] if r["group"] == group]
        kept = {"records": [r for r in mine if (group, r["seed"]) in inside]}
        assert cells[1] == f"{len(kept['records'])}/{len(mine)}"
        for key, cell in zip(PROPS, cells[2:]):
            if group.startswith("anbmcnm") and not key.startswith("systematicity"):
                assert all(v is None for v in _values(saved, group, key)), (group, key)
                assert cell.startswith("n/a"), (group, key)
            else:
                want = fmt_summary(_values(kept, group, key), "_kl" not in key)
                assert cell == want, (group, key, cell)
    return counts


def test_report_table_is_the_results_json(tiny):
    out, res, _ = tiny
    assert set(_check_table(out, res).values()) == {"2/2"}


def test_report_table_counts_only_the_regime_seeds(tiny, tmp_path):
    """A saturation threshold between the seeds' KLs: the table summarises exactly the seeds
    in the regime (the analyses are re-run on the saved checkpoints, nothing is retrained)."""
    import shutil
    out, res, _ = tiny
    kls = sorted(r["results"]["saturation"]["measures"]["kl"] for r in res["records"])
    cut = (kls[3] + kls[4]) / 2
    shutil.copytree(out, tmp_path / "out")
    (tmp_path / "mixed.toml").write_text(TINY.replace("saturation = 10.0",
                                                      f"saturation = {cut!r}"))
    again = run_experiment(tmp_path / "mixed.toml", tmp_path / "out", progress=False)
    counts = _check_table(tmp_path / "out", again)
    assert sum(int(c.split("/")[0]) for c in counts.values()) == 4


def test_recorded_values_are_the_analyzers_called_directly(tiny):
    """Every property of one seed recomputed from its saved checkpoint with the analyzers'
    public functions and the file's options."""
    from formal_lm.analysis import (JaxModel, constituents, localism, overgeneralisation,
                                    productivity, substitutivity, systematicity)
    from formal_lm.seeding import Stream, derive
    from formal_lm.training import load_models
    out, res, _ = tiny
    lang = fl.load(COMMANDS)
    sp, seed = lang.split, 5
    model = JaxModel(load_models(out / "runs" / "commands-split.lstm.normal", "best")[1])
    direct = {
        "systematicity": systematicity(model, sp, n=8, seed=seed),
        "productivity": productivity(model, sp.train, train_max_length=24,
                                     test_lengths=range(25, 29), per_bin=4, seed=seed),
        "substitutivity": substitutivity(model, sp.full, ("walk", "stroll"),
                                         contexts=sp.held_out, train=sp.train, n=8, seed=seed),
        "localism": localism(model, sp.train, [
            (c, w) for c, w in constituents(sp.train, sp.train.sample(
                8, seed=derive(seed, Stream.COMPOSITIONAL, 3)), "R") if c]),
        "overgeneralisation": overgeneralisation(model, sp.full, [(("look",), "twice"), (
            ("walk", "and", "look"), "twice")]),
    }
    rec = next(r for r in res["records"] if r["group"] == "commands-split.lstm.normal"
               and r["seed"] == 1)["results"]
    for label, result in direct.items():
        for m in result.measures():
            got = rec[label]["measures"][m.name]
            if m.value is None or (isinstance(m.value, float) and math.isnan(m.value)):
                assert got is None
            else:
                assert got == pytest.approx(m.value, rel=1e-6, abs=1e-9), (label, m.name)


def test_count_systematicity_scores_each_held_out_combination_once(tiny):
    from formal_lm.analysis import JaxModel, systematicity
    from formal_lm.training import load_models
    out, res, _ = tiny
    held = ["a" * n + "b" * m + "c" * (n + m) for n, m in [(1, 2), (2, 5), (3, 3), (4, 1), (6, 4)]]
    lang = fl.load(COUNTS)
    models = load_models(out / "runs" / "anbmcnm-split.rnn.normal", "best")
    for k, model in enumerate(models):
        direct = systematicity(JaxModel(model), lang.split, n=8, seed=5, strings=held)
        rec = next(r for r in res["records"] if r["group"] == "anbmcnm-split.rnn.normal"
                   and r["seed"] == k)["results"]["systematicity"]
        assert rec["detail"]["n_strings"] == 5
        for m in direct.measures():
            assert rec["measures"][m.name] == pytest.approx(m.value, rel=1e-6, abs=1e-9)


def test_statistics_cover_the_properties(tiny):
    out, res, wall = tiny
    stats = res["languages"]["commands-split"]["statistics"]
    tested = {t["metric"] for p in stats["pairs"] for t in p["ood"]}
    assert {k for k in PROPS if "productivity" not in k} <= tested
    counts = res["languages"]["anbmcnm-split"]["statistics"]
    assert {t["metric"] for p in counts["pairs"] for t in p["ood"]} == {
        "systematicity.systematicity_set_acc", "systematicity.systematicity_kl"}
    assert (out / "compositional_substitutivity.png").exists()
    report = (out / "report.md").read_text()
    assert "The setting beside Hupkes et al." in report and "a translation task" in report
    print(f"tiny compositionality run: {wall:.1f} s")


@pytest.mark.parametrize("change, needle", [
    (("[models.rnn]", "[models.tf]\nname = \"transformer\"\nmax_len = 26\n\n[models.rnn]"),
     "models.tf.max_len=26 is shorter than analysis.compositional.test_lengths: 30 tokens"),
    (("per_bin = 4", "per_bin = 4\nbins = 3"), "unknown key 'analysis.compositional.bins'"),
    (("test_lengths = [25, 28]", "test_lengths = [28, 25]"), "test_lengths=[28, 25] must be"),
])
def test_compositional_options_are_checked_before_training(tmp_path, change, needle):
    from formal_lm.experiments import load_experiment
    p = tmp_path / "x.toml"
    p.write_text(TINY.replace(*change))
    with pytest.raises(FormalLMError) as e:
        load_experiment(p)
    assert needle in str(e.value), str(e.value)


# ----- the shipped experiment ----------------------------------------------------------------
@pytest.mark.slow
def test_shipped_compositionality_experiment(tmp_path):
    res = run_experiment(ROOT / "experiments" / "compositionality.toml", tmp_path,
                         progress=False)
    report = (tmp_path / "report.md").read_text()
    assert "## Compositionality (Hupkes et al. 2020)" in report
    groups = {r["group"] for r in res["records"]}
    assert groups == {f"{lang}.{m}.normal" for lang in ("commands-split", "anbmcnm-split")
                      for m in ("transformer", "lstm", "lru")}
    for r in res["records"]:
        if r["group"].startswith("commands-split"):
            assert set(r["results"]) >= {"systematicity", "productivity", "substitutivity",
                                         "localism", "overgeneralisation"}
