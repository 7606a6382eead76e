"""End-to-end runs of the experiment runner (tiny), validation of experiment files, and the
shipped experiments (slow)."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from formal_lm.errors import FormalLMError
from formal_lm.experiments import load_experiment, run_experiment

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "experiments").glob("*.toml"))

TINY = """
[experiment]
name = "tiny"
description = "a tiny end-to-end run"
languages = ["anbn-short"]
eval_seed = 77

[train]
steps = 30
seeds = 2
batch_size = 8
eval_every = 10
checkpoint_every = 10

[train.optimizer]
lr = 1e-2

[train.data]
max_length = 34
bucket = 34
eval_size = 16

[models.tf]
name = "transformer"
d_model = 8
n_heads = 2
d_ff = 16
n_layers = 1
max_len = 48

[objectives.normal]
name = "nll"

[objectives.extrapolation]
name = "extrapolation"
batch_size = 4

[analysis.saturation]
n = 16

[analysis.rule_extrapolation]
max_new_tokens = 10
ngram_n = 2

[analysis.next_symbol_sets]
n = 16
threshold = 0.05

[analysis.length_generalization]
train_max_length = 16
test_lengths = [17, 24]
per_bin = 4
bins = [[1, 16], [17, 24]]

[statistics]
loss_metric = "kl"
saturation = 10.0   # a tiny run is nowhere near saturated: a regime that lets every seed in

[published]
citation = "Someone et al. 2024"
baseline_eos_pct = 27.5

[published.rows.normal]
ood_R1_pct = [43.7, 4.5]
seeds = 46
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    path = d / "tiny.toml"
    path.write_text(TINY)
    t0 = time.perf_counter()
    res = run_experiment(path, d / "out", progress=False)
    return path, d / "out", res, time.perf_counter() - t0


def records(res):
    return {(r["group"], r["seed"]): r["results"] for r in res["records"]}


def test_tiny_experiment_writes_consistent_outputs(tiny_run):
    _, out, res, _ = tiny_run
    for f in ("report.md", "results.json", "results.csv", "training_curves.png",
              "ood_per_seed.png", "kl_vs_ood.png"):
        assert (out / f).exists(), f
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["cells"] == res["cells"] and on_disk["records"] == res["records"]
    assert [c["cell"] for c in res["cells"]] == ["anbn-short.tf.normal",
                                                 "anbn-short.tf.extrapolation"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 4  # every seed of every cell
    report = (out / "report.md").read_text()
    assert "lowest validation loss" in report  # the checkpoint rule is stated
    assert "finish" in report
    assert "Someone et al. 2024" in report and "43.7 ± 4.5%" in report
    assert "Same loss, different behaviour?" in report and "**Finding.**" in report
    for (group, seed), r in records(res).items():
        sat, rule = r["saturation"]["measures"], r["rule_extrapolation.heldout"]["measures"]
        assert sat["kl"] >= 0 and 0 <= rule["ood_R1"] <= 1 and 0 <= rule["ood_finish_rate"] <= 1
        assert r["checkpoint"]["measures"]["step"] in (10, 20, 30)
        row = next(x for x in rows if x["group"] == group and int(x["seed"]) == seed)
        assert float(row["rule_extrapolation.heldout.ood_R1"]) == pytest.approx(rule["ood_R1"])
        assert float(row["saturation.kl"]) == pytest.approx(sat["kl"])
        assert f"{100 * rule['ood_R1']:.1f}%" in report  # every seed is shown


def test_tiny_experiment_metrics_come_from_the_best_checkpoint(tiny_run):
    _, out, res, _ = tiny_run
    for c in res["cells"]:
        lines = [json.loads(x)
                 for x in (out / c["run_dir"] / "metrics.jsonl").read_text().splitlines()]
        for (group, seed), r in records(res).items():
            if group != c["cell"]:
                continue
            best = min((x for x in lines if x["seed"] == seed), key=lambda x: x["val_loss"])
            m = r["checkpoint"]["measures"]
            assert m["step"] == best["step"] and m["val_loss"] == best["val_loss"]


def test_completion_objectives_are_evaluated_on_heldout_prompts_only(tiny_run):
    _, out, res, _ = tiny_run
    split = json.loads((out / "runs" / "anbn-short.tf.extrapolation" / "ood_split.json").read_text())
    lang = res["languages"]["anbn-short"]
    assert lang["ood_split"]["heldout"] == split["heldout"]
    assert not {tuple(p) for p in split["heldout"]} & {tuple(p) for p in split["train"]}
    ext = records(res)[("anbn-short.tf.extrapolation", 0)]
    assert ext["rule_extrapolation.heldout"]["measures"]["n_ood"] == len(split["heldout"])
    assert "rule_extrapolation.all" not in ext  # never scored on its own training prompts
    normal = records(res)[("anbn-short.tf.normal", 0)]
    assert "rule_extrapolation.all" in normal and "rule_extrapolation.heldout" in normal
    b = lang["baselines"]["all"]
    assert b["n_ood"] == 251 and round(100 * b["eos_baseline"]["headline"], 1) == 27.5


def test_resume_does_not_retrain(tiny_run):
    path, out, res, first = tiny_run
    again = run_experiment(path, out, progress=False)
    assert again["records"] == res["records"]
    assert again["timing"]["training"] < res["timing"]["training"]


def test_restart_trains_again_from_scratch(tiny_run, tmp_path, capsys):
    import shutil
    path, out, res, _ = tiny_run
    shutil.copytree(out, tmp_path / "out")
    stamp = (tmp_path / "out" / "runs" / "anbn-short.tf.normal" / "run.json").stat().st_mtime_ns
    again = run_experiment(path, tmp_path / "out", progress=False, resume=False)
    assert "training it again from scratch" in capsys.readouterr().out
    assert (tmp_path / "out" / "runs" / "anbn-short.tf.normal" / "run.json").stat().st_mtime_ns \
        != stamp
    assert again["records"] == res["records"]  # the same seeds: the same results


GRAMMAR = """
name = "anbn-file"
kind = "counter"
alphabet = ["a", "b"]
blocks = [["a", "n"], ["b", "n"]]
[prior.n]
kind = "uniform"
min = 1
max = {max}
[rules.R1]
kind = "count_equal"
symbols = ["a", "b"]
"""


def test_a_changed_grammar_file_is_retrained_never_reused(tmp_path, capsys):
    """A grammar edited between two runs into one output folder: the cell is retrained (and the
    run says so), so no figure of the old language is reported under the new one."""
    (tmp_path / "g.toml").write_text(GRAMMAR.format(max=6))
    text = (TINY.replace('languages = ["anbn-short"]', 'languages = ["g.toml"]')
            .split("[objectives.extrapolation]")[0]
            + "[analysis.saturation]\nn = 16\n")
    (tmp_path / "e.toml").write_text(text)
    first = run_experiment(tmp_path / "e.toml", tmp_path / "out", progress=False)
    run = tmp_path / "out" / "runs" / "anbn-file.tf.normal"
    before = json.loads((run / "run.json").read_text())["data"]
    (tmp_path / "g.toml").write_text(GRAMMAR.format(max=8))
    capsys.readouterr()
    second = run_experiment(tmp_path / "e.toml", tmp_path / "out", progress=False)
    assert "retraining it from scratch" in capsys.readouterr().out
    after = json.loads((run / "run.json").read_text())["data"]
    assert before != after
    floor = {k: v["optimal_loss"] for k, v in second["languages"].items()}
    assert floor != {k: v["optimal_loss"] for k, v in first["languages"].items()}
    fresh = run_experiment(tmp_path / "e.toml", tmp_path / "fresh", progress=False)
    assert fresh["records"] == second["records"]  # the same as a run that never saw the old one


def test_unknown_keys_are_named(tmp_path):
    bad = TINY.replace("[analysis.saturation]\nn = 16", "[analysis.saturation]\nn = 16\nthreshhold = 1") \
        .replace('eval_seed = 77', 'eval_seed = 77\ncolour = "red"') \
        .replace("d_ff = 16", "d_ff = 16\nwidth = 3")
    p = tmp_path / "bad.toml"
    p.write_text(bad)
    with pytest.raises(FormalLMError) as e:
        load_experiment(p)
    msg = str(e.value)
    assert "analysis.saturation.threshhold" in msg and "experiment.colour" in msg
    assert "model.width" in msg and str(p) in msg
    assert all(pr.message.startswith(str(p)) for pr in e.value.problems)


def test_full_requires_a_full_table(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text(TINY)
    with pytest.raises(FormalLMError, match=r"no \[full\] table"):
        load_experiment(p, full=True)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_experiment_files_are_valid(path):
    load_experiment(path)
    try:
        load_experiment(path, full=True)
    except FormalLMError as e:
        assert "no [full] table" in str(e)


@pytest.mark.slow
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_experiment_runs(path, tmp_path):
    res = run_experiment(path, tmp_path, progress=False)
    assert (tmp_path / "report.md").exists() and res["records"]


@pytest.mark.parametrize("change, needle", [
    (("max_len = 48", "max_len = 16"), "max_len=16 is shorter than analysis.rule_extrapolation"),
    (("max_len = 48", "max_len = 30"), "max_len=30 is shorter than train.data.max_length"),
    (("max_new_tokens = 10", "max_new_tokens = -2"), "max_new_tokens=-2 must be an integer"),
    (("[analysis.saturation]\nn = 16", "[analysis.saturation]\nn = 16.5"), "n=16.5"),
    (("test_lengths = [17, 24]", "test_lengths = [24, 17]"), "test_lengths=[24, 17]"),
    (("threshold = 0.05", 'threshold = "0.05"'), "threshold='0.05'"),
    (("ngram_n = 2", "ngram_n = 2\ndecoding = \"beam\""), "decoding='beam'"),
])
def test_analysis_needs_are_checked_before_training(tmp_path, change, needle):
    """An analysis that cannot run on the trained models is refused when the file is read,
    not after every cell has trained."""
    p = tmp_path / "x.toml"
    p.write_text(TINY.replace(*change))
    with pytest.raises(FormalLMError) as e:
        load_experiment(p)
    assert needle in str(e.value) and str(p) in str(e.value)


def test_reported_statistics_agree_with_a_hand_analysis_of_results_csv(tiny_run):
    """The equivalence and difference verdicts of results.json, recomputed from results.csv
    with scipy alone: Welch TOST at the stated margin and an exact permutation test."""
    import itertools

    import numpy as np
    from scipy import stats as sps

    _, out, res, _ = tiny_run
    rows = list(csv.DictReader(open(out / "results.csv")))
    st = res["languages"]["anbn-short"]["statistics"]
    loss, margin, alpha = st["loss_metric"], st["margin"], st["alpha"]
    by = {}
    for r in rows:
        by.setdefault(r["group"], []).append(r)
    for pair in st["pairs"]:
        x = np.array([float(r[loss]) for r in by[pair["a"]]])
        y = np.array([float(r[loss]) for r in by[pair["b"]]])
        vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
        se = np.sqrt(vx + vy)
        df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
        d = x.mean() - y.mean()
        p = max(sps.t.sf((d + margin) / se, df), sps.t.cdf((d - margin) / se, df))
        assert pair["loss"]["p"] == pytest.approx(p, rel=1e-9)
        assert pair["loss"]["equivalent"] == (p < alpha)
        for test in pair["ood"]:
            xs = np.array([float(r[test["metric"]]) for r in by[pair["a"]]])
            ys = np.array([float(r[test["metric"]]) for r in by[pair["b"]]])
            pooled, n = np.concatenate([xs, ys]), len(xs)
            obs = abs(xs.mean() - ys.mean())
            diffs = [abs(pooled[list(c)].mean() - np.delete(pooled, list(c)).mean())
                     for c in itertools.combinations(range(len(pooled)), n)]
            perm = np.mean(np.array(diffs) >= obs - 1e-12)
            assert test["test"]["permutation_p"] == pytest.approx(perm, rel=1e-12)
            assert test["test"]["differs"] == (perm < alpha and test["test"]["can_reach_alpha"])


def test_a_strict_regime_leaves_unsaturated_seeds_out_of_every_claim(tiny_run, tmp_path):
    """With the default saturation threshold (0.01 nats/token) no seed of the tiny run is in
    the regime: the report lists each with its KL, the summary has no rows, and no statistical
    claim is made."""
    import shutil
    path, out, res, _ = tiny_run
    strict = tmp_path / "strict.toml"
    strict.write_text(TINY.replace("saturation = 10.0", "saturation = 0.01"))
    shutil.copytree(out, tmp_path / "out")
    again = run_experiment(strict, tmp_path / "out", progress=False)
    lang = again["languages"]["anbn-short"]
    assert lang["regime"]["in_regime"] == [] and len(lang["regime"]["left_out"]) == 4
    assert lang["statistics"] is None
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Regime: saturated seeds only" in report and "0/2" in report
    assert "too few to test" in report and "**Finding.**" not in report
    for group, seed in lang["regime"]["left_out"]:
        kl = records(again)[(group, seed)]["saturation"]["measures"]["kl"]
        assert kl >= 0.01 and f"seed {seed}: {kl:.3g}" in report


def test_cells_run_as_separate_jobs_then_merge(tiny_run, tmp_path):
    """Each cell trained by its own process (as a cluster job array would), at the same time
    into one output folder; the merging job reports what a single run reports, and a merge
    before every cell has finished names the missing ones."""
    import subprocess
    import sys
    path, _, res, _ = tiny_run
    out = tmp_path / "out"
    early = run_experiment(path, out, report_only=True, progress=False)
    assert early["missing_cells"] == ["anbn-short.tf.normal", "anbn-short.tf.extrapolation"]
    jobs = [subprocess.Popen([sys.executable, "-m", "formal_lm.cli", "run", str(path), "--out",
                              str(out), "--shard", f"{i}/2"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]
    for j in jobs:
        _, err = j.communicate(timeout=600)
        assert j.returncode == 0, err[-2000:]
    merged = run_experiment(path, out, report_only=True, progress=False)
    assert merged["missing_cells"] == [] and merged["records"] == res["records"]
    with pytest.raises(FormalLMError, match="not units"):
        run_experiment(path, out, cells=["nope"], progress=False)


def test_per_language_overrides(tmp_path):
    """A language's cells take its [per_language.NAME] overrides of [train] and of model
    tables; unknown languages, unknown keys and a changed architecture are refused."""
    p = tmp_path / "x.toml"
    p.write_text(TINY + """
[per_language.anbn-short.train]
steps = 12
[per_language.anbn-short.train.optimizer]
lr = 0.02
[per_language.anbn-short.models.tf]
d_ff = 24
""")
    ex = load_experiment(p)
    cfg = ex.train_config("tf", language="anbn-short")
    assert cfg.steps == 12 and cfg.lr == 0.02 and cfg.model_config["d_ff"] == 24
    assert cfg.batch_size == 8 and cfg.model_config["d_model"] == 8  # the rest as [train]
    assert ex.train_config("tf").steps == 30  # elsewhere: [train] itself
    p.write_text(TINY + """
[per_language.dyck2.train]
steps = 12
[per_language.anbn-short.train]
stepz = 3
[per_language.anbn-short.models.tf]
name = "lstm"
""")
    with pytest.raises(FormalLMError) as e:
        load_experiment(p)
    msg = str(e.value)
    assert "per_language.dyck2" in msg and "stepz" in msg and "cannot change the architecture" in msg


def test_a_mixed_regime_summarises_only_the_saturated_seeds(tiny_run, tmp_path):
    """A threshold between the seeds' KLs lets some seeds in: the summary counts exactly those,
    the left-out ones are listed apart, and no group with fewer seeds than a test needs gets a
    verdict."""
    import shutil
    path, out, res, _ = tiny_run
    kls = sorted((r["results"]["saturation"]["measures"]["kl"], r["group"], r["seed"])
                 for r in res["records"])
    cut = (kls[1][0] + kls[2][0]) / 2  # the two lowest-KL seeds are in
    assert kls[1][0] < cut < kls[2][0]
    mixed = tmp_path / "mixed.toml"
    mixed.write_text(TINY.replace("saturation = 10.0", f"saturation = {cut!r}"))
    shutil.copytree(out, tmp_path / "out")
    again = run_experiment(mixed, tmp_path / "out", progress=False)
    lang = again["languages"]["anbn-short"]
    inside = sorted([g, s] for _, g, s in kls[:2])
    assert sorted(lang["regime"]["in_regime"]) == inside
    assert sorted(lang["regime"]["left_out"]) == sorted([g, s] for _, g, s in kls[2:])
    report = (tmp_path / "out" / "report.md").read_text()
    summary = report.split("## Summary")[1].split("\n## ")[0]
    rows = [line.split("|")[1:3] for line in summary.splitlines() if line.startswith("| anbn")]
    counts = {g.strip(): int(n) for g, n in rows}
    assert counts == {g: sum(1 for x in inside if x[0] == g) for g, _ in inside}
    assert lang["statistics"] is None and "**Finding.**" not in report
