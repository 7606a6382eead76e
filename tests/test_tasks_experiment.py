"""The tasks experiment kind: its file checks, a tiny end-to-end run, and jobs merged."""
from __future__ import annotations

import json

import numpy as np
import pytest

from formal_lm.errors import FormalLMError
from formal_lm.experiments import load_experiment, run_experiment
from formal_lm.experiments.tasks import Task, _test_examples, answer_accuracy
from formal_lm.tasks.draws import recognition_draw, transduction_draw
from formal_lm.grammar_files import load
from formal_lm.tasks import transduction as trd

TINY = """
[experiment]
name = "tiny-tasks"
kind = "tasks"
[train]
seeds = 2
steps = 20
batch_size = 8
eval_every = 10
[lengths]
train = [1, 4]
test = [5, 7]
test_step = 2
per_length = 4
[tasks.rev]
transduction = "reverse_string"
[tasks.anbn]
recognize = "anbn"
negatives = "both"
lm_weight = 0.5
[models.lstm]
name = "lstm"
d_model = 8
hidden = 8
[published]
citation = "Deletang et al. (ICLR 2023)"
columns = ["RNN", "LSTM"]
[published.rows]
reverse_string = [62.0, 60.9]
"""


def _write(tmp_path, text=TINY):
    p = tmp_path / "tiny.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("edit, message", [
    (("transduction = \"reverse_string\"", "transduction = \"reverse\""), "is not a task"),
    (("recognize = \"anbn\"", "recognize = \"nope\""), "nope"),
    (("negatives = \"both\"", "negatives = \"some\""), "negatives='some'"),
    (("train = [1, 4]", "train = [4, 1]"), "lengths.train"),
    (("reverse_string = [62.0, 60.9]", "reverse_string = [62.0]"), "list of 2 numbers"),
    (("[tasks.rev]\n", "[tasks.rev]\nrecognize = \"anbn\"\n"), "exactly one of"),
    (("lm_weight = 0.5", "lm_weight = -1"), "lm_weight"),
])
def test_bad_files_are_refused_with_the_key(tmp_path, edit, message):
    with pytest.raises(FormalLMError, match=message):
        load_experiment(_write(tmp_path, TINY.replace(*edit)))


def test_transformer_max_len_must_hold_the_longest_test_example(tmp_path):
    text = TINY + '[models.tf]\nname = "transformer"\nd_model = 8\nn_heads = 2\nmax_len = 12\n'
    with pytest.raises(FormalLMError, match="longest tested example"):
        load_experiment(_write(tmp_path, text))


def test_transformer_max_len_is_checked_against_the_tasks_examples_only(tmp_path):
    """Tasks never read [train.data] max_length (64 by default): a Transformer whose max_len
    holds the longest tested example is accepted."""
    text = TINY + '[models.tf]\nname = "transformer"\nd_model = 8\nn_heads = 2\nmax_len = 40\n'
    assert "tf" in load_experiment(_write(tmp_path, text)).models


def test_draws_are_pure_functions_of_the_seed_with_the_stated_lengths():
    draw = transduction_draw("reverse_string", 3, 5)
    a, b = draw(7, 50), draw(7, 50)
    assert a == b and a != draw(8, 50)
    assert {len(x) for x, _ in a} == {3, 4, 5}
    assert all(y == trd.task("reverse_string").output(x) for x, y in a)
    lang = load("anbn")
    ex = recognition_draw(lang, 2, 8, "both")(3, 200)
    acc = [x for x, y in ex if y == ("accept",)]
    rej = [x for x, y in ex if y == ("reject",)]
    assert all(lang.accepts(x) for x in acc) and not any(lang.accepts(x) for x in rej)
    assert 60 < len(acc) < 140  # a member with probability 1/2


def test_answer_accuracy_counts_answer_symbols_only():
    task = trd.task("reverse_string")
    ex = task.sample(4, 3, 0)
    v = task.vocab
    first = v.first_output

    def oracle(ids):  # right answers at every answer step, from the inputs
        out = np.zeros(ids.shape + (v.size,))
        for b in range(len(ex)):  # (call_model pads the batch with rows of its own)
            n = len(ex[b][0])
            for t, y in enumerate(ex[b][1]):
                out[b, n + 1 + t, v.vocab.id(y)] = 5.0
        return out

    assert answer_accuracy(oracle, v, ex).tolist() == [1.0, 1.0, 1.0]

    def wrong_first(ids):
        out = oracle(ids)
        for b in range(len(ex)):  # the first answer's score moved to the other bit
            n = len(ex[b][0])
            out[b, n + 1, first:] = out[b, n + 1, first:][::-1]
        return out

    assert answer_accuracy(wrong_first, v, ex).tolist() == [0.75, 0.75, 0.75]


def test_tiny_run_writes_a_report_and_jobs_merge(tmp_path):
    path = _write(tmp_path)
    out = tmp_path / "out"
    run_experiment(path, out, progress=False, cells=["rev.lstm"])
    assert not (out / "report.md").exists()
    partial = run_experiment(path, out, progress=False, report_only=True)
    assert partial["missing"] == ["anbn.lstm"]
    res = run_experiment(path, out, progress=False)
    text = (out / "report.md").read_text()
    assert "published (%)" in text and "60.9" in text and "anbn" in text
    groups = {r["group"] for r in res["records"]}
    assert groups == {"rev.lstm", "anbn.lstm"}
    data = json.loads((out / "results.json").read_text())
    rev = [r for r in data["records"] if r["group"] == "rev.lstm"]
    assert all(0 <= r["results"]["task"]["measures"]["acc_ood"] <= 1 for r in rev)


def test_padded_answers_are_scored_up_to_their_first_terminal():
    task = trd.task("stack_manipulation")
    ex = [e for e in task.sample(6, 20, 1) if "=end" in e[1][:-1]][:3]
    assert ex  # the seed gives padded answers to score
    v = task.vocab

    def wrong_padding(ids):  # right up to =end, then the padding wrong
        out = np.zeros(ids.shape + (v.size,))
        for b in range(len(ex)):
            n, y = len(ex[b][0]), ex[b][1]
            stop = y.index("=end")
            for t, sym in enumerate(y):
                sym = sym if t <= stop else "=1"
                out[b, n + 1 + t, v.vocab.id(sym)] = 5.0
        return out

    assert answer_accuracy(wrong_padding, v, ex).tolist() == [1.0] * len(ex)


def test_a_recognizers_test_sets_draw_their_own_positives():
    """The uniform-negative and near-miss sets of a length are independent draws: with one
    seed for both they held the same positives twice."""
    uniform, near = _test_examples(Task("p", language="parity"), 22, 16, seed=0)
    pos = [[x for (x, _), k in zip(s.pairs, s.kinds) if k == "positive"]
           for s in (uniform, near)]
    assert len(pos[0]) == len(pos[1]) == 8
    assert pos[0] != pos[1]


def test_report_describes_only_the_kinds_of_task_it_has(tmp_path):
    text = TINY.split("[published]")[0].replace(
        '[tasks.rev]\ntransduction = "reverse_string"\n', "")
    out = tmp_path / "out"
    run_experiment(_write(tmp_path, text), out, progress=False, report_only=True)
    report = (out / "report.md").read_text()
    assert "A recognizer reads a string" in report and "No run has finished" in report
    assert "transducer" not in report
