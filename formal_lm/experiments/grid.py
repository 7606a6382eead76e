"""A grid experiment: languages x models x objectives, trained over seeds, analysed at one
checkpoint per seed.

Pipeline: ``Experiment`` -> every cell trained by ``formal_lm.training.train`` into
``OUT/runs/<language>.<model>.<objective>/`` (resumed when it exists; retrained, with a
message, when its config or language changed) -> per seed the model at the selected checkpoint
-> analyzers -> :class:`records.SeedRecord` -> group statistics per language -> report.

Rule extrapolation of cells trained with a completion objective is measured ONLY on the
held-out half of the OOD prompts, read from the split that training stored with the run; every
other cell of the same language is measured on that same half, and "nll" cells also on all OOD
prompts (the papers' figure).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from formal_lm.analysis import (JaxModel, eos_model_fn, length_generalization, next_symbol_sets,
                                rule_extrapolation, saturation)
from formal_lm.experiments.compositional import analyze as analyze_compositional
from formal_lm.experiments.compositional import is_split
from formal_lm.experiments.records import Checkpoint, SeedRecord, compare, regime
from formal_lm.experiments.runs import log, train_or_retrain
from formal_lm.experiments.spec import Experiment
from formal_lm.grammar_files import load
from formal_lm.seeding import Stream, derive
from formal_lm.training import load_models, train
from formal_lm.training.data import training_target
from formal_lm.training.train import finished_run
from formal_lm.training.objectives import COMPLETION_OBJECTIVES, read_split


@dataclasses.dataclass(frozen=True)
class Cell:
    """One trained cell of the grid."""

    name: str
    language: str  # as the file names it (a grammar name or a path)
    language_name: str  # the grammar's own name
    model: str
    objective: str
    run_dir: Path
    result: object  # formal_lm.training.TrainResult


def cell_specs(ex: Experiment) -> list[tuple[str, str, str, str, str]]:
    """(cell name, language as the file names it, the language's name, model, objective) for
    every cell, in file order."""
    out = []
    for lang_name in ex.study.languages:
        name = load(lang_name).name
        out += [(f"{name}.{m}.{o}", lang_name, name, m, o)
                for m in ex.models for o in ex.study.objectives]
    return out


def train_cells(ex: Experiment, out: Path, *, resume: bool, progress: bool,
                only: set[str] | None = None, train_any: bool = True
                ) -> tuple[list[Cell], list[str]]:
    """(trained cells, names of cells without a finished run). ``only``: train just these;
    ``train_any=False``: train nothing, take the finished runs (a job merging other jobs')."""
    cells, missing = [], []
    for name, lang_name, lang, m, o in cell_specs(ex):
        if only is not None and name not in only:
            continue
        cfg = ex.train_config(m, language=lang_name, objective=ex.study.objectives[o])
        run_dir = out / "runs" / name
        if train_any:
            log(progress, f"train {name}: {cfg.steps} steps x {len(cfg.seeds)} seeds")
            res = train_or_retrain(
                lambda r, cfg=cfg, run_dir=run_dir: train(cfg, run_dir, resume=r,
                                                          progress=progress),
                run_dir, resume=resume)
        elif (res := finished_run(cfg, run_dir)) is None:
            missing.append(name)
            continue
        cells.append(Cell(name, lang_name, lang, m, o, run_dir, res))
    return cells, missing


def heldout_split(ex: Experiment, cells: list[Cell], language: str):
    """The OOD split that the completion-objective cells of ``language`` trained with (None
    without such cells)."""
    for c in cells:
        if c.language == language and ex.study.objectives[c.objective]["name"] in \
                COMPLETION_OBJECTIVES:
            return read_split(c.run_dir)
    return None


def _rule_options(ex: Experiment) -> dict:
    o = dict(ex.analysis.get("rule_extrapolation", {}))
    o.pop("heldout_only", None)
    return o


def analyze_seed(model, lang, ex: Experiment, objective: str, split, train_max_length: int,
                 target=None) -> dict:
    """Every requested analyzer on one seed's selected checkpoint: {label: result}. Saturation
    is judged against ``target``, the distribution the cell trained on (default ``lang``)."""
    a, out, seed = ex.analysis, {}, ex.eval_seed
    if "saturation" in a:
        out["saturation"] = saturation(model, target or lang, seed=seed, **a["saturation"])
    if "rule_extrapolation" in a and lang.rules:
        sets = {"all": None} if split is None else {"heldout": split["heldout"]}
        if split is not None and objective == "nll" and not a["rule_extrapolation"].get(
                "heldout_only", False):
            sets["all"] = None  # the papers' figure: every OOD prompt
        for key, prompts in sets.items():
            out[f"rule_extrapolation.{key}"] = rule_extrapolation(
                model, lang, prompts=prompts, seed=seed, baselines=False, **_rule_options(ex))
    if "next_symbol_sets" in a:
        o = dict(a["next_symbol_sets"])
        n = o.pop("n", 256)
        o.setdefault("threshold", 0.01)
        o.setdefault("train_max_length", train_max_length)
        strings = lang.sample(n, seed=derive(seed, Stream.NEXT_SYMBOL))
        out["next_symbol_sets"] = next_symbol_sets(model, lang, strings, **o)
    if "length_generalization" in a:
        o = dict(a["length_generalization"])
        if "test_lengths" in o:
            lo, hi = o["test_lengths"]
            o["test_lengths"] = range(lo, hi + 1)
        if "bins" in o:
            o["bins"] = [tuple(b) for b in o["bins"]]
        o.setdefault("train_max_length", train_max_length)
        out["length_generalization"] = length_generalization(model, lang, seed=seed, **o)
    if "compositional" in a and is_split(lang):  # Hupkes et al.'s five properties
        out.update(analyze_compositional(model, lang, a["compositional"], seed=seed,
                                         train_max_length=train_max_length))
    return out


def baselines(ex: Experiment, lang, split) -> dict:
    """The emit-EOS and n-gram baselines on the prompt sets used for this language."""
    sets = {"all": None} if split is None else {"heldout": split["heldout"], "all": None}
    return {key: rule_extrapolation(eos_model_fn(lang), lang, prompts=prompts, seed=ex.eval_seed,
                                    **_rule_options(ex)) for key, prompts in sets.items()}


def analyze_cell(ex: Experiment, cell: Cell, lang, split) -> list[SeedRecord]:
    res = cell.result
    models = load_models(cell.run_dir, which=ex.checkpoint)
    # longer strings than its training data held are out of distribution
    data = ex.train_config(cell.model, language=cell.language).data
    tml = data.hi if data.hi is not None else data.max_length - 2
    target = training_target(lang, data)  # in distribution: what the cell trained on
    out = []
    objective = ex.study.objectives[cell.objective]["name"]
    for k, seed in enumerate(res.seeds):
        results = {"checkpoint": Checkpoint.of(ex.checkpoint, res, k)}
        results.update(analyze_seed(JaxModel(models[k]), lang, ex, objective, split, tml,
                                    target))
        out.append(SeedRecord(cell.name, seed, results))
    return out


def run_grid(ex: Experiment, out: Path, *, resume: bool = True, progress: bool = True,
             only: set[str] | None = None, train_any: bool = True, report: bool = True) -> dict:
    """Trains, analyses and reports every cell; returns the results written to results.json.

    ``only`` trains just those cells and ``report=False`` stops after training (one job of
    several); ``train_any=False`` trains nothing and reports the cells whose runs have finished,
    naming the missing ones (the job that merges).
    """
    from formal_lm.experiments.grid_report import write_grid_report
    t0 = time.perf_counter()
    cells, missing = train_cells(ex, out, resume=resume, progress=progress, only=only,
                                 train_any=train_any)
    if not report:
        return {"experiment": ex.name, "trained": [c.name for c in cells]}
    t_train = time.perf_counter() - t0
    records, per_language = [], {}
    for lang_name in ex.study.languages:
        mine = [c for c in cells if c.language == lang_name]
        if not mine:
            continue
        lang = load(lang_name)
        split = heldout_split(ex, cells, lang_name)
        recs = []
        for c in mine:
            log(progress, f"analyse {c.name}")
            recs += analyze_cell(ex, c, lang, split)
        base = baselines(ex, lang, split) if "rule_extrapolation" in ex.analysis and lang.rules \
            else {}
        reg = regime(recs, ex.statistics)
        stats = compare(reg.inside, ex.statistics, seed=ex.eval_seed)
        per_language[lang.name] = {"split": split, "baselines": base, "statistics": stats,
                                   "regime": reg, "optimal_loss": mine[0].result.optimal_loss,
                                   "language": lang}
        records += recs
    timing = {"training": t_train, "analysis": time.perf_counter() - t0 - t_train}
    return write_grid_report(ex, out, cells, records, per_language, timing, missing)
