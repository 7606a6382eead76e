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

[analysis.non_identifiability]
loss_metric = "kl"

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


def test_tiny_experiment_writes_consistent_outputs(tiny_run):
    _, out, res, _ = tiny_run
    for f in ("report.md", "results.json", "results.csv", "training_curves.png",
              "ood_per_seed.png", "kl_vs_ood.png", "length_generalization.png"):
        assert (out / f).exists(), f
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["cells"] == res["cells"]
    assert [c["cell"] for c in res["cells"]] == ["anbn-short.tf.normal",
                                                 "anbn-short.tf.extrapolation"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 4  # every seed of every cell
    report = (out / "report.md").read_text()
    assert "lowest validation loss" in report  # the checkpoint rule is stated
    assert "finish" in report
    assert "Someone et al. 2024" in report and "43.7 ± 4.5%" in report
    assert "Non-identifiability reproduced" in report
    for c in res["cells"]:
        assert len(c["seeds"]) == 2
        for s in c["seeds"]:
            r = s["record"]
            assert r["kl"] >= 0 and 0 <= r["ood_R1"] <= 1 and 0 <= r["ood_finish_rate"] <= 1
            assert r["checkpoint_step"] in (10, 20, 30)
            row = next(x for x in rows if x["cell"] == c["cell"] and int(x["seed"]) == r["seed"])
            assert float(row["ood_R1"]) == pytest.approx(r["ood_R1"])
            assert f"{100 * r['ood_R1']:.1f}%" in report  # every seed is shown


def test_tiny_experiment_metrics_come_from_the_best_checkpoint(tiny_run):
    _, out, res, _ = tiny_run
    for c in res["cells"]:
        lines = [json.loads(x) for x in (out / c["run_dir"] / "metrics.jsonl").read_text().splitlines()]
        for s in c["seeds"]:
            r = s["record"]
            mine = [x for x in lines if x["seed"] == r["seed"]]
            best = min(mine, key=lambda x: x["val_loss"])
            assert r["checkpoint_step"] == best["step"] and r["val_loss"] == best["val_loss"]


def test_completion_objectives_are_evaluated_on_heldout_prompts_only(tiny_run):
    _, out, res, _ = tiny_run
    split = json.loads((out / "runs" / "anbn-short.tf.extrapolation" / "ood_split.json").read_text())
    assert res["ood_split"]["anbn-short"]["heldout"] == split["heldout"]
    assert not set(split["heldout"]) & set(split["train"])
    ext = next(c for c in res["cells"] if c["objective"] == "extrapolation")
    detail = ext["seeds"][0]["detail"]
    assert detail["rule_extrapolation_heldout"]["n_ood"] == len(split["heldout"])
    assert "rule_extrapolation_all" not in detail  # never scored on its own training prompts
    normal = next(c for c in res["cells"] if c["objective"] == "normal")
    assert "ood_R1_all" in normal["seeds"][0]["record"]
    b = res["baselines"]["anbn-short"]
    assert b["all"]["n_ood"] == 251 and round(100 * b["all"]["eos"]["headline"], 1) == 27.5


def test_resume_does_not_retrain(tiny_run):
    path, out, res, first = tiny_run
    again = run_experiment(path, out, progress=False)
    assert [s["record"] for c in again["cells"] for s in c["seeds"]] == \
        [s["record"] for c in res["cells"] for s in c["seeds"]]
    assert again["timing"]["train_s"] < res["timing"]["train_s"]


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
    assert (tmp_path / "report.md").exists() and res["cells"]
