"""``formal-lm export RUN_DIR --out FOLDER``: the exact data a run trained and was judged on."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import formal_lm as fl
from formal_lm.cli import main
from formal_lm.seeding import Stream
from formal_lm.training import DataConfig, ObjectiveConfig, TrainConfig, train
from formal_lm.training import data as tdata
from formal_lm.training import export

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = dict(d_model=8, n_heads=2, d_ff=16, n_layers=1)


def lines(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step run of 2 seeds on a grammar file, lengths 2..10, with a completion objective."""
    folder = tmp_path_factory.mktemp("export")
    grammar = folder / "g.toml"
    grammar.write_text((ROOT / "grammars" / "anbn-short.toml").read_text())
    cfg = TrainConfig(language=str(grammar), steps=3, seeds=(0, 1), batch_size=4, eval_every=3,
                      checkpoint_every=3, model_config=TINY_MODEL,
                      data=DataConfig(mode="length_range", lo=2, hi=10, max_length=16, bucket=16,
                                      eval_size=6),
                      objective=ObjectiveConfig(name="extrapolation", prompt_length=3,
                                                batch_size=2))
    train(cfg, folder / "run", progress=False)
    return folder, grammar, cfg


def test_export_writes_every_batch_and_the_held_out_sets(run, tmp_path):
    folder, grammar, cfg = run
    written = export.export(folder / "run", tmp_path / "out")
    assert set(written) == {"train-seed0.jsonl", "train-seed1.jsonl", "validation.jsonl",
                            "test.jsonl", "README.txt"}
    lang = fl.load(grammar)
    data = tdata.LanguageData(lang, cfg.data, cfg.batch_size, cfg.objective)
    for seed in cfg.seeds:
        got = lines(tmp_path / "out" / f"train-seed{seed}.jsonl")
        assert [g["step"] for g in got] == [0, 1, 2]
        for g in got:
            assert [tuple(s) for s in g["strings"]] == data.train_strings(seed, g["step"])
            assert all(2 <= len(s) <= 10 for s in g["strings"])
            ids, _ = data.ood_batch(seed, g["step"])
            assert [tuple(c["prompt"] + c["completion"]) for c in g["completions"]] == \
                [lang.vocab.decode(row) for row in ids]
            assert all(len(c["prompt"]) == 3 for c in g["completions"])
    target = lang.restrict(2, 10)
    for name, stream in (("validation", Stream.VAL), ("test", Stream.TEST)):
        got = lines(tmp_path / "out" / f"{name}.jsonl")
        assert [tuple(g["string"]) for g in got] == tdata.held_out(lang, cfg.data, stream)
        for g in got:
            assert g["length"] == len(g["string"])
            assert g["log_prob"] == pytest.approx(target.log_prob(g["string"]))
    readme = (tmp_path / "out" / "README.txt").read_text()
    assert lang.fingerprint() in readme and "lengths 2..10" in readme
    assert "anbn-short[2..10]" in readme and "Stream.TRAIN" in readme


def test_the_command_line_exports_and_refuses_a_used_folder(run, tmp_path, capsys):
    folder, _, _ = run
    out = tmp_path / "cli"
    assert main(["export", str(folder / "run"), "--out", str(out)]) == 0
    assert "train-seed1.jsonl: 3 line(s)" in capsys.readouterr().out
    assert main(["export", str(folder / "run"), "--out", str(out)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_a_run_whose_grammar_changed_is_refused(run, tmp_path, capsys):
    folder, grammar, _ = run
    text = grammar.read_text()
    try:
        grammar.write_text(text.replace("max = 16", "max = 15"))
        assert main(["export", str(folder / "run"), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert "no longer matches" in err and "fingerprint" in err
        assert not (tmp_path / "o").exists()
    finally:
        grammar.write_text(text)
