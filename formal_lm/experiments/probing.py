"""A probing experiment: a grid of languages x models (trained as a grid experiment's cells), then
per seed probes of a latent feature by layer, in and off distribution, interchange interventions,
rule extrapolation, and the per-seed correlation of OOD probe score with R1 extrapolation.

The file is a grid experiment file with ``kind = "probing"`` and a ``[probing]`` table::

    [probing]
    strings = 48            # in-distribution strings per language (exact samples)
    probe = "linear"        # or "mlp"
    probe_seeds = 3         # probe seeds per model seed (split, initialisation, control map)
    steps = 300             # probe training steps
    ood_prompts = 64        # OOD prompts (rule extrapolation's) used as off-distribution strings
    n_pairs = 128           # interchange pairs per layer
    [probing.languages.NAME]  # NAME as experiment.languages writes it
    feature = "diff:a-b"    # the feature probed (formal_lm.latents)
    intervene = "diff:a-b"  # the feature swapped by interchange interventions
    keep = ["block"]        # features base and source share

Training is the grid's (``grid.train_cells``: resumed, retrained when changed); the analysis of
each seed uses its selected checkpoint. Strings and prompts derive from ``eval_seed``.
"""
from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from formal_lm.analysis import JaxModel, interchange, probe, rule_extrapolation, saturation
from formal_lm.analysis.correlation import correlation as pearson
from formal_lm.analysis.rule_extrapolation import label_prompts, prompt_set
from formal_lm.errors import FormalLMError
from formal_lm.experiments import report as R
from formal_lm.experiments.grid import train_cells
from formal_lm.experiments.records import (Checkpoint, SeedRecord, grouped, jsonable,
                                           records_json, regime, regime_json, write_csv,
                                           write_json)
from formal_lm.experiments.runs import log
from formal_lm.experiments.spec import Experiment, Grid
from formal_lm.grammar_files import load
from formal_lm.latents import latents
from formal_lm.seeding import Stream, derive
from formal_lm.training import load_models
from formal_lm.training.data import training_target

OPTIONS = {"strings": 48, "probe": "linear", "probe_seeds": 3, "steps": 300, "ood_prompts": 64,
           "n_pairs": 128, "languages": {}}
LANGUAGE_KEYS = {"feature", "intervene", "keep"}


@dataclasses.dataclass(frozen=True)
class Probing(Grid):
    """A grid (languages x models x objectives) and the ``[probing]`` options."""

    probing: Mapping = dataclasses.field(default_factory=dict)


def probing_experiment(grid: Experiment, table, chk) -> Experiment:
    """``grid`` (the file validated as a grid) with the checked ``[probing]`` table."""
    t = chk.keys(table if table is not None else {}, set(OPTIONS), "probing")
    opts = {**OPTIONS, **t}
    for key in ("strings", "probe_seeds", "steps", "ood_prompts", "n_pairs"):
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (2 if key == "strings" else 1):
            chk.bad(f"probing.{key}={v!r} must be an integer >= {2 if key == 'strings' else 1}")
    if opts["probe"] not in ("linear", "mlp"):
        chk.bad(f"probing.probe={opts['probe']!r} must be 'linear' or 'mlp'")
    langs = chk.keys(opts["languages"], set(grid.study.languages), "probing.languages")
    for name in grid.study.languages:
        spec = chk.keys(langs.get(name), LANGUAGE_KEYS, f"probing.languages.{name}")
        if name not in langs or set(spec) != LANGUAGE_KEYS:
            chk.bad(f"[probing.languages.{name}] needs {sorted(LANGUAGE_KEYS)}",
                    "e.g. feature = 'diff:a-b', intervene = 'diff:a-b', keep = ['block']")
            continue
        try:
            names = latents(load(name), []).names
        except FormalLMError as e:
            chk.extend(e.problems, f"probing.languages.{name}")
            continue
        wanted = [spec["feature"], spec["intervene"], *spec["keep"]] \
            if isinstance(spec["keep"], list) else [None]
        if bad := [f for f in wanted if f not in names]:
            chk.bad(f"probing.languages.{name}: {bad} are not features of {name!r}",
                    f"use some of {list(names)}")
    chk.raise_if()
    study = Probing(grid.study.languages, grid.study.objectives, grid.study.per_language, opts)
    return dataclasses.replace(grid, kind="probing", study=study)


# ------------------------------------------------------------------------------ correlation
@dataclasses.dataclass(frozen=True)
class Correlation:
    """Pearson's r of two per-seed measures of a group, over the seeds in the regime, with its
    Fisher-z interval (``analysis.correlation``; None below 4 seeds or for a constant)."""

    group: str
    x: str
    y: str
    n: int
    r: float | None
    ci_low: float | None
    ci_high: float | None
    level: float = 0.95


def correlation(group: str, x: str, y: str, xs: Sequence, ys: Sequence,
                level: float = 0.95) -> Correlation:
    """``analysis.correlation`` of ``xs`` and ``ys``, labelled."""
    c = pearson(xs, ys, level=level)
    return Correlation(group, x, y, c.n, c.r, c.ci_low, c.ci_high, c.level)


# ------------------------------------------------------------------------------ analysis
def _inputs(ex: Experiment, lang):
    """(in-distribution strings, OOD prompts, intervention pool) for ``lang``."""
    o = ex.study.probing
    strings = sorted(set(lang.sample(o["strings"], seed=derive(ex.eval_seed, Stream.PROBE, 7))),
                     key=lambda s: (len(s), s))
    re = ex.analysis.get("rule_extrapolation", {})
    prompts, _ = prompt_set(lang, re.get("prompt_length", 8),
                            max_prompts=re.get("max_prompts", 4096), seed=ex.eval_seed)
    ood = [p for p, (_, is_ood) in zip(prompts, label_prompts(lang, prompts)) if is_ood]
    ood = ood[:: max(1, len(ood) // o["ood_prompts"])][: o["ood_prompts"]]
    pool = sorted({s[:t] for s in strings for t in range(len(s) + 1)}, key=lambda s: (len(s), s))
    return strings, ood, pool


def analyze_seed(model, lang, ex: Experiment, inputs, spec, target=None) -> dict:
    """Probe, interventions (whole state) and rule extrapolation of one seed's model; its
    saturation against ``target``, the distribution it trained on (default ``lang``)."""
    o, (strings, ood, pool) = ex.study.probing, inputs
    p = probe(model, lang, spec["feature"], strings, ood_strings=ood, kind=o["probe"],
              seeds=range(o["probe_seeds"]), steps=o["steps"])
    layers = [lp.layer for lp in p.layers]
    iv = interchange(model, lang, pool, feature=spec["intervene"], keep=tuple(spec["keep"]),
                     layers=layers, n_pairs=o["n_pairs"], seed=ex.eval_seed)
    out = {"probe": p, "interchange": iv}
    if "saturation" in ex.analysis:  # the regime: only saturated seeds enter the claims
        out["saturation"] = saturation(JaxModel(model), target or lang, seed=ex.eval_seed,
                                       **ex.analysis["saturation"])
    if lang.rules:
        opts = {k: v for k, v in ex.analysis.get("rule_extrapolation", {}).items()
                if k not in ("heldout_only", "ngram_n", "ngram_k", "ngram_train")}
        out["rule_extrapolation"] = rule_extrapolation(JaxModel(model), lang, baselines=False,
                                                       seed=ex.eval_seed, **opts)
    return out


def _keys(records) -> tuple[str, str]:
    """(the last layer's OOD probe accuracy: the rounded one for a numeric feature, R1
    extrapolation) as record keys."""
    ms = records[0].measures() if records else {}
    ood = [k for k in ms if k.startswith("probe.") and k.endswith("_ood")]
    last = max((int(k.rsplit("_L", 1)[1].split("_")[0]) for k in ood), default=None)
    mine = [k for k in ood if f"_L{last}_" in k]
    rounded = [k for k in mine if k.endswith("_rounded_ood")]
    return (rounded or mine or [""])[0], "rule_extrapolation.ood_R1"


def run_probing(ex: Experiment, out: Path, *, resume: bool = True, progress: bool = True,
                only: set[str] | None = None, train_any: bool = True,
                report: bool = True) -> dict:
    """Trains the cells (as a grid), analyses every seed, writes report.md and results."""
    t0 = time.perf_counter()
    cells, missing = train_cells(ex, out, resume=resume, progress=progress, only=only,
                                 train_any=train_any)
    if not report:
        return {"experiment": ex.name, "trained": [c.name for c in cells]}
    t_train = time.perf_counter() - t0
    records = []
    for lang_name in ex.study.languages:
        mine = [c for c in cells if c.language == lang_name]
        if not mine:
            continue
        lang = load(lang_name)
        inputs, spec = _inputs(ex, lang), ex.study.probing["languages"][lang_name]
        for c in mine:
            log(progress, f"probe {c.name}")
            models = load_models(c.run_dir, which=ex.checkpoint)
            target = training_target(lang, ex.train_config(c.model, language=c.language).data)
            for k, seed in enumerate(c.result.seeds):
                res = {"checkpoint": Checkpoint.of(ex.checkpoint, c.result, k)}
                res.update(analyze_seed(models[k], lang, ex, inputs, spec, target))
                records.append(SeedRecord(c.name, seed, res))
    timing = {"training": t_train, "analysis": time.perf_counter() - t0 - t_train}
    return write_probing_report(ex, Path(out), cells, records, timing, missing)


def _correlations(records) -> list[Correlation]:
    out = []
    for group, rs in grouped(records).items():
        x, y = _keys(rs)
        out.append(correlation(group, x, y, [r.value(x) for r in rs], [r.value(y) for r in rs]))
    return out


def _layer_plot(records, path: Path) -> str:
    """Mean probe accuracy by layer, in distribution (solid) and off it (dashed), per group: the
    accuracy of the rounded prediction for a numeric feature (R^2 is unbounded below)."""
    plt = R._plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for g, rs in grouped(records).items():
        ms = rs[0].measures()
        bases = sorted((k for k in ms if k.startswith("probe.") and re.search(r"_L\d+$", k)),
                       key=lambda k: int(k.rsplit("_L", 1)[1]))
        for ood, style in (("", "-"), ("_ood", "--")):
            pts = []
            for k in bases:
                key = f"{k}_rounded{ood}" if f"{k}_rounded" in ms else f"{k}{ood}"
                vals = [v for r in rs if (v := r.value(key)) is not None]
                if vals:
                    pts.append((int(k.rsplit("_L", 1)[1]), 100 * sum(vals) / len(vals)))
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, marker="o", label=f"{g}{' (OOD)' if ood else ''}")
    ax.set_xlabel("layer (0: embedding)")
    ax.set_ylabel("probe accuracy (%), mean over seeds")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path).name


def write_probing_report(ex: Experiment, out: Path, cells, records, timing,
                         missing: Sequence[str] = ()) -> dict:
    """report.md (probe scores by layer, interventions, correlations over the seeds in the
    saturation regime; the rest listed apart), results.csv/json and the plots."""
    reg = regime(records, ex.statistics)
    inside = list(reg.inside)
    corr = _correlations(inside)
    lines = R.header(ex, timing)
    if missing:
        lines += ["**Missing cells**: " + ", ".join(f"`{m}`" for m in missing), ""]
    lines += R.regime_section(reg, ex.statistics.alpha)
    by_language: dict[str, list] = {}
    for r in inside:
        by_language.setdefault(r.group.split(".")[0], []).append(r)
    keys = sorted({k for r in records for k, m in r.measures().items()
                   if k.startswith(("probe.", "interchange.", "rule_extrapolation.ood_R1",
                                    "saturation.kl"))
                   and (m.headline or k.endswith("_selectivity"))})
    for lang, rs in by_language.items():
        lines += [f"## {lang}: probes by layer, interventions (mean ± std [95% t interval] over "
                  "the seeds in the regime)", "", *R.summary_table(rs, keys), ""]
    lines += ["## What the columns measure", "", *R.descriptions(records, keys), "",
              "## OOD probe score vs R1 extrapolation, per seed in the regime (Pearson r, 95% "
              "Fisher-z interval; none below 4 seeds)", "",
              *R.table(["group", "x", "y", "seeds", "r", "95% CI"],
                       [[c.group, f"`{c.x}`", f"`{c.y}`", c.n, R.fmt(c.r),
                         "–" if c.r is None else f"[{c.ci_low:.3f}, {c.ci_high:.3f}]"]
                        for c in corr]), "",
              "## Every seed", "", *R.seed_table(records, keys), "", "## Plots", ""]
    plots = []
    if inside:
        plots.append(_layer_plot(inside, out / "probe_by_layer.png"))
        x, y = _keys(inside)
        if x:
            plots.append(R.scatter_plot(inside, x, y, out / "probe_vs_r1.png", logx=False,
                                        title="Same loss: does the OOD probe score predict R1?"))
    lines += [f"![{p}]({p})" for p in plots]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    write_csv(records, out / "results.csv")
    results = {"experiment": ex.name, "kind": ex.kind, "source": ex.source,
               "checkpoint": ex.checkpoint, "eval_seed": ex.eval_seed,
               "cells": [c.name for c in cells], "regime": regime_json(reg),
               "correlations": corr, "records": records_json(records),
               "missing_cells": list(missing), "timing": dict(timing)}
    write_json(results, out / "results.json")
    return jsonable(results)
