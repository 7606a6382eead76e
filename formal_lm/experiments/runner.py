"""Runs an experiment file: train every grid cell, analyse one checkpoint per seed, report.

Pipeline: experiment file -> ``Experiment`` -> per cell ``formal_lm.training.train`` into
``OUT/runs/<language>.<model>.<objective>/`` -> per seed the model at the selected checkpoint
(lowest validation loss unless the file says ``checkpoint = "last"``) -> analyzers ->
``OUT/results.json``, ``OUT/results.csv``, ``OUT/report.md`` and PNG plots.

Rule extrapolation of models trained with a completion objective ("extrapolation",
"adversarial") is measured ONLY on the held-out half of the OOD prompts (the split the trainer
exported); every other cell of the same language is measured on the same held-out half so the
groups are comparable, and "nll" cells are also measured on all OOD prompts (the papers' figure).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from formal_lm.analysis import (
    JaxModel,
    length_generalization,
    next_symbol_sets,
    non_identifiability,
    rule_extrapolation,
    saturation,
)
from formal_lm.experiments.spec import Experiment, load_experiment

COMPLETION_OBJECTIVES = ("extrapolation", "adversarial")


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[formal_lm.experiments] {msg}", flush=True)


def _jsonable(x):
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)
                if f.name != "completions"}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, Path):
        return str(x)
    return x


def _ood_split(lang, ex: Experiment):
    """The held-out OOD prompts shared by every cell of ``lang`` (None without completion
    objectives)."""
    objs = [o for o in ex.objectives.values() if o["name"] in COMPLETION_OBJECTIVES]
    if not objs:
        return None
    from formal_lm.training.config import ObjectiveConfig
    from formal_lm.training.objectives import ood_split
    seeds = {o.get("split_seed", ObjectiveConfig.split_seed) for o in objs}
    lengths = {o.get("prompt_length", ObjectiveConfig.prompt_length) for o in objs}
    if len(seeds) != 1 or len(lengths) != 1:
        raise ValueError("completion objectives of one experiment must share split_seed and "
                         "prompt_length, so every group is evaluated on the same held-out prompts")
    return ood_split(lang, lengths.pop(), seeds.pop())


def _re_options(ex: Experiment) -> dict:
    o = dict(ex.analysis.get("rule_extrapolation", {}))
    o.pop("heldout_only", None)
    return o


def _scores_dict(sc) -> dict:
    """A score object as JSON: every field but ``name`` (``_jsonable`` drops completions)."""
    return {k: v for k, v in _jsonable(sc).items() if k != "name"}


def baselines(lang, ex: Experiment, split) -> dict:
    """EOS and n-gram baselines on the prompt sets used for this language."""
    opts = _re_options(ex)
    from formal_lm.analysis import eos_model_fn
    out = {}
    sets = {"all": None}
    if split is not None:
        sets["heldout"] = split["heldout"]
    for key, prompts in sets.items():
        r = rule_extrapolation(eos_model_fn(lang), lang, prompts=prompts, seed=ex.eval_seed,
                               **opts)
        out[key] = {"n_prompts": r.n_prompts, "n_ood": r.n_ood,
                    "eos": _scores_dict(r.eos_baseline),
                    "ngram": _scores_dict(r.ngram_baseline) if r.ngram_baseline else None,
                    "ngram_name": r.ngram_baseline.name if r.ngram_baseline else None}
    return out


def analyze_seed(model_fn, lang, ex: Experiment, objective: str, split, train_max_length: int):
    """Every requested analyzer on one seed's selected checkpoint: a flat record + details."""
    rec, detail = {}, {}
    a = ex.analysis
    if "saturation" in a:
        s = saturation(model_fn, lang, seed=ex.eval_seed, **a["saturation"])
        rec.update(kl=s.kl_per_token, cross_entropy=s.cross_entropy, excess_loss=s.excess_loss,
                   loss_floor=s.loss_floor, saturated=s.saturated)
    if "rule_extrapolation" in a:
        opts = _re_options(ex)
        heldout_only = a["rule_extrapolation"].get("heldout_only", False)
        runs = {}
        if split is None:
            runs["all"] = None
        else:
            runs["heldout"] = split["heldout"]
            if objective == "nll" and not heldout_only:
                runs["all"] = None  # the papers' figure: every OOD prompt
        for key, prompts in runs.items():
            r = rule_extrapolation(model_fn, lang, prompts=prompts, seed=ex.eval_seed,
                                   baselines=False, **opts)
            sc = r.model
            sfx = "" if (key == "heldout" or split is None) else "_all"
            rec[f"ood_{sc.headline_rule}{sfx}"] = sc.headline
            rec[f"ood_finish_rate{sfx}"] = sc.finish_rate
            rec[f"ood_{sc.headline_rule}_finished{sfx}"] = sc.headline_finished
            if key == "all":
                rec["id_accuracy"] = sc.id_accuracy
                rec["id_finish_rate"] = sc.id_finish_rate
            for c in sc.classes:
                tag = "+".join(c.broken) or "none"
                for rule, v in c.rule_accuracy.items():
                    rec[f"ood[{tag}]_{rule}{sfx}"] = v
            detail[f"rule_extrapolation_{key}"] = _scores_dict(sc)
            detail[f"rule_extrapolation_{key}"]["n_ood"] = r.n_ood
    if "next_symbol_sets" in a:
        o = dict(a["next_symbol_sets"])
        n = o.pop("n", 256)
        o.setdefault("threshold", 0.01)
        o.setdefault("train_max_length", train_max_length)
        strings = lang.sample(n, seed=ex.eval_seed + 1)
        r = next_symbol_sets(model_fn, lang, strings, **o)
        rec.update(nss_per_string=r.in_distribution.per_string,
                   nss_per_position=r.in_distribution.per_position)
    if "length_generalization" in a:
        o = dict(a["length_generalization"])
        if "test_lengths" in o:
            lo, hi = o["test_lengths"]
            o["test_lengths"] = range(lo, hi + 1)
        if "bins" in o:
            o["bins"] = [tuple(b) for b in o["bins"]]
        o.setdefault("train_max_length", train_max_length)
        r = length_generalization(model_fn, lang, seed=ex.eval_seed, **o)
        detail["length_generalization"] = _jsonable(r)
        for b in r.length_bins:
            rec[f"len[{b.lo}-{b.hi}]_set_acc"] = b.set_accuracy_per_string
            rec[f"len[{b.lo}-{b.hi}]_kl"] = b.kl_per_token
    return rec, detail


def run_experiment(path, out_dir, *, full: bool = False, resume: bool = True,
                   progress: bool = True) -> dict:
    """Trains, analyses and reports every cell of an experiment file.

    Args:
        path: the experiment TOML.
        out_dir: output folder (runs/, results.json, results.csv, report.md, plots).
        full: apply the file's ``[full]`` table (paper sizes; meant for a GPU).
        resume: continue finished or partial runs found under ``out_dir/runs`` (a finished run
            is not retrained). With ``resume=False`` an existing run is an error.
        progress: print progress and show training bars.

    Returns:
        The results dict that is also written to ``out_dir/results.json``.
    """
    import formal_lm
    from formal_lm.training import load_models, train
    from formal_lm.training.config import config_from_dict

    from formal_lm.experiments.casestudies import run_case_study
    case = run_case_study(path, out_dir, full=full, progress=progress)  # [experiment] kind
    if case is not None:
        return case
    t_start = time.perf_counter()
    ex = load_experiment(path, full=full)
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    results = {"experiment": ex.name, "description": ex.description, "source": str(path),
               "full": full, "checkpoint": ex.checkpoint,
               "checkpoint_rule": ("per seed, the checkpoint with the lowest validation loss "
                                   "(PAD-masked nats per token on held-out samples)"
                                   if ex.checkpoint == "best" else "per seed, the last checkpoint"),
               "eval_seed": ex.eval_seed, "published": ex.published, "cells": [],
               "baselines": {}, "non_identifiability": {}, "timing": {}}
    langs, splits = {}, {}
    for lang_name in ex.languages:
        lang = langs[lang_name] = formal_lm.load(lang_name)
        split = splits[lang_name] = _ood_split(lang, ex)
        if "rule_extrapolation" in ex.analysis and lang.rules:
            results["baselines"][lang_name] = baselines(lang, ex, split)
        results.setdefault("ood_split", {})[lang_name] = (
            None if split is None else {"train": ["".join(p) for p in split["train"]],
                                        "heldout": ["".join(p) for p in split["heldout"]]})
    train_s = analyze_s = 0.0
    for cell in ex.cells():
        lang_name, mkey, okey = cell
        name = ex.cell_name(*cell)
        lang = langs[lang_name]
        cfg = config_from_dict(ex.train_dict(*cell), source=f"{path} [{name}]")
        run_dir = out / "runs" / name
        _log(progress, f"train {name}: {cfg.steps} steps x {len(cfg.seeds)} seeds")
        t0 = time.perf_counter()
        res = train(cfg, run_dir, resume=resume, progress=progress)
        t_train = time.perf_counter() - t0
        train_s += t_train
        t0 = time.perf_counter()
        models = load_models(run_dir, which=ex.checkpoint)
        selected = res.best if ex.checkpoint == "best" else res.final
        split = splits[lang_name] if lang.rules else None
        if split is not None and cfg.objective.name in COMPLETION_OBJECTIVES:
            exported = json.loads((run_dir / "ood_split.json").read_text())
            assert exported["heldout"] == ["".join(p) for p in split["heldout"]], \
                "the trainer's exported held-out split differs from the analysed one"
        seeds = []
        # the longest training string of this cell (longer ones count as out of distribution)
        tml = cfg.data.hi if cfg.data.hi is not None else cfg.data.max_length - 2
        for k, seed in enumerate(res.seeds):
            _log(progress, f"analyse {name} seed {seed}")
            rec, detail = analyze_seed(JaxModel(models[k]), lang, ex, cfg.objective.name, split,
                                       tml)
            sel = selected[k] or {}
            rec = {"seed": seed, "checkpoint_step": sel.get("step"),
                   "val_loss": sel.get("val_loss"), "train_kl": sel.get("kl"), **rec}
            seeds.append({"record": _jsonable(rec), "detail": detail})
        t_an = time.perf_counter() - t0
        analyze_s += t_an
        results["cells"].append({
            "cell": name, "language": lang_name, "model": mkey, "model_config": ex.models[mkey],
            "objective": okey, "objective_config": ex.objectives[okey],
            "run_dir": str(run_dir.relative_to(out)), "steps": res.step,
            "optimal_loss": res.optimal_loss, "train_wall_s": t_train, "analysis_wall_s": t_an,
            "seeds": seeds})
    if "non_identifiability" in ex.analysis:
        o = dict(ex.analysis["non_identifiability"])
        loss_metric = o.pop("loss_metric", "kl")
        for lang_name in ex.languages:
            groups = {f"{c['model']}.{c['objective']}": [s["record"] for s in c["seeds"]]
                      for c in results["cells"] if c["language"] == lang_name}
            recs = [r for g in groups.values() for r in g]
            if not recs or any(r.get(loss_metric) is None for r in recs):
                continue
            ood = [k for k in recs[0] if k.startswith("ood_") and "finish" not in k
                   and "finished" not in k and not k.startswith("ood[")
                   and all(r.get(k) is not None for r in recs)]
            if not ood:
                continue
            r = non_identifiability(groups, loss_metric=loss_metric, ood_metrics=ood,
                                    seed=ex.eval_seed, percent_metrics=ood, **o)
            results["non_identifiability"][lang_name] = _jsonable(r)
    results["timing"] = {"train_s": train_s, "analysis_s": analyze_s,
                         "total_s": time.perf_counter() - t_start}
    from formal_lm.experiments.report import write_report
    write_report(results, out)
    results["timing"]["total_s"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=1))
    return _jsonable(results)
