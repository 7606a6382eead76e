"""The fine-tuning study (Reizinger et al. 2024, case study 3): do models with equal
pre-training loss fine-tune alike?

Every model pre-trains its seeds together (``OUT/runs/pretrain.<model>/``); every group then
starts from its model's pre-trained parameters at the selected checkpoint, reparametrised by its
``rescale`` c (``formal_lm.studies.reparam``: same function, different training dynamics), and
fine-tunes on the second language (``OUT/runs/finetune.<group>/``). Both phases run on the one
training loop, so they resume after an interruption. Each seed is then scored exactly (KL to the
true language) on the fine-tuning language, on an out-of-distribution language and on the
pre-training language (what it retained).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from formal_lm.analysis import JaxModel, paired_sign_flip_test, saturation
from formal_lm.analysis import measures as M
from formal_lm.experiments import report as R
from formal_lm.experiments.records import (Checkpoint, SeedRecord, compare, grouped, jsonable,
                                           records_json, regime, regime_json, write_csv,
                                           write_json)
from formal_lm.experiments.runs import log, train_or_retrain
from formal_lm.experiments.spec import Experiment, resolve_language
from formal_lm.grammar_files import load
from formal_lm.studies.reparam import rescale_params
from formal_lm.training import load_models, stacked_params, train

TESTED = ("finetuned.kl", "ood.kl", "retained.kl", "transfer.param_change")


@dataclasses.dataclass(frozen=True)
class Transfer:
    """How far fine-tuning moved a seed, in the pre-trained model's own parametrisation.

    Attributes:
        param_change: ||theta_ft' - theta_pre|| / ||theta_pre||, where theta_ft' is the
            fine-tuned parameters mapped back by the inverse reparametrisation (1 / c), so the
            figure does not change with the scale c itself.
        start_gap: |NLL(start) - NLL(pre-trained)| on the pre-training samples: 0 up to float
            error when the reparametrised start computes the pre-trained function.
    """

    param_change: float
    start_gap: float

    def measures(self) -> tuple[M.Measure, ...]:
        return (M.Measure("param_change", self.param_change, "ratio", None, M.OUT_OF_DISTRIBUTION,
                          "relative parameter change by fine-tuning (pre-trained "
                          "parametrisation)", headline=True),
                M.nats("start_gap", self.start_gap, M.REFERENCE, "|NLL(start) - NLL(pre-trained)|"
                       " on pre-training samples (0: the start is the pre-trained function)",
                       higher_is_better=None))


def _norm_change(after, before) -> float:
    a, b = jax.tree.leaves(after), jax.tree.leaves(before)
    num = sum(float(np.sum((np.asarray(x) - np.asarray(y)) ** 2)) for x, y in zip(a, b))
    return math.sqrt(num / sum(float(np.sum(np.asarray(y) ** 2)) for y in b))


def _pretrain(ex: Experiment, out: Path, *, resume, progress) -> dict:
    st, runs = ex.study, {}
    for m in dict.fromkeys(m for m, _ in st.groups.values()):
        cfg = ex.train_config(m, table=st.pretrain, language=st.pretrain["language"])
        run_dir = out / "runs" / f"pretrain.{m}"
        log(progress, f"pre-train {m}: {cfg.steps} steps x {len(cfg.seeds)} seeds")
        runs[m] = train_or_retrain(lambda r, cfg=cfg, run_dir=run_dir: train(
            cfg, run_dir, resume=r, progress=progress), run_dir, resume=resume)
    return runs


def _finetune(ex: Experiment, out: Path, pre: dict, *, resume, progress) -> dict:
    st, runs = ex.study, {}
    for g, (m, c) in st.groups.items():
        cfg = ex.train_config(m, table=st.finetune, language=st.finetune["language"])
        init = stacked_params(pre[m].run_dir, cfg.seeds, which=ex.checkpoint)
        if c != 1.0:
            init = rescale_params(init, ex.models[m]["name"], c)
        run_dir = out / "runs" / f"finetune.{g}"
        log(progress, f"fine-tune {g}: {cfg.steps} steps x {len(cfg.seeds)} seeds")
        runs[g] = train_or_retrain(lambda r, cfg=cfg, run_dir=run_dir, init=init: train(
            cfg, run_dir, resume=r, progress=progress, init=init), run_dir, resume=resume)
    return runs


def _analyse_group(ex, g, pre_run, ft_run, langs, n) -> list[SeedRecord]:
    m, c = ex.study.groups[g]
    pre_models = load_models(pre_run.run_dir, which=ex.checkpoint)
    ft_models = load_models(ft_run.run_dir, which=ex.checkpoint)
    name = ex.models[m]["name"]
    seed0 = ex.eval_seed
    out = []
    for k, seed in enumerate(ft_run.seeds):
        base = pre_models[pre_run.seeds.index(seed)]
        gd, p_base, rest = nnx.split(base, nnx.Param, ...)
        start = nnx.merge(gd, rescale_params(p_base, name, c) if c != 1.0 else p_base, rest)
        ft = ft_models[k]
        back = nnx.state(ft, nnx.Param)
        back = rescale_params(back, name, 1.0 / c) if c != 1.0 else back
        results = {
            "checkpoint": Checkpoint.of(ex.checkpoint, ft_run, k),
            "start": saturation(JaxModel(start), langs["pretrain"], n=n, seed=seed0),
            "finetuned": saturation(JaxModel(ft), langs["finetune"], n=n, seed=seed0),
            "ood": saturation(JaxModel(ft), langs["ood"], n=n, seed=seed0),
            "retained": saturation(JaxModel(ft), langs["pretrain"], n=n, seed=seed0)}
        pre_ce = saturation(JaxModel(base), langs["pretrain"], n=n, seed=seed0).cross_entropy
        results["transfer"] = Transfer(_norm_change(back, p_base),
                                       abs(results["start"].cross_entropy - pre_ce))
        out.append(SeedRecord(g, seed, results))
    return out


def run_finetune(ex: Experiment, out: Path, *, resume: bool = True, progress: bool = True
                 ) -> dict:
    """Pre-trains, fine-tunes and compares every group; writes the report; returns results."""
    t0 = time.perf_counter()
    st = ex.study
    opts = ex.analysis.get("transfer", {})
    ood_name = resolve_language(opts.get("ood_language", st.finetune["language"]), ex.source)
    langs = {"pretrain": load(st.pretrain["language"]), "finetune": load(st.finetune["language"]),
             "ood": load(ood_name)}
    pre = _pretrain(ex, out, resume=resume, progress=progress)
    t_pre = time.perf_counter() - t0
    fin = _finetune(ex, out, pre, resume=resume, progress=progress)
    t_ft = time.perf_counter() - t0 - t_pre
    records = []
    for g, (m, _) in st.groups.items():
        log(progress, f"analyse {g}")
        records += _analyse_group(ex, g, pre[m], fin[g], langs, opts.get("eval_size", 256))
    reg = regime(records, ex.statistics)  # pre-training saturated: start.kl below threshold
    stats = compare(reg.inside, ex.statistics, seed=ex.eval_seed, tested=TESTED)
    timing = {"pre-training": t_pre, "fine-tuning": t_ft,
              "analysis": time.perf_counter() - t0 - t_pre - t_ft}
    return _report(ex, out, pre, fin, records, langs, reg, stats, timing)


def _paired(ex: Experiment, records) -> list[list]:
    """Groups that fine-tune the same pre-trained seeds: per-seed differences, sign-flip p."""
    rows, groups = [], grouped(records)
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if ex.study.groups[a][0] != ex.study.groups[b][0]:
                continue
            va = {r.seed: r for r in groups[a]}
            vb = {r.seed: r for r in groups[b]}
            seeds = sorted(set(va) & set(vb))
            for key in TESTED:
                d = [va[s].value(key) - vb[s].value(key) for s in seeds]
                rows.append([f"{a} vs {b}", key, f"{np.mean(d):+.4g}",
                             f"{sum(x > 0 for x in d)}/{len(d)}",
                             f"{paired_sign_flip_test(d, seed=ex.eval_seed):.3g}"])
    return rows


def _report(ex, out: Path, pre, fin, records, langs, reg, stats, timing) -> dict:
    st = ex.study
    head = ["start.cross_entropy", "start.kl", "finetuned.kl", "ood.kl", "retained.kl",
            "transfer.param_change"]
    groups = "; ".join(f"`{g}` = {m}" + (f" reparametrised by c = {c:g} (same function, "
                                         "different gradients)" if c != 1 else "")
                       for g, (m, c) in st.groups.items())
    lines = R.header(ex, timing) + [
        f"Pre-train on `{langs['pretrain'].name}`, fine-tune on `{langs['finetune'].name}`; OOD: "
        f"`{langs['ood'].name}`. The languages share one alphabet, so the fine-tuned model keeps "
        f"the pre-trained vocabulary. Groups: {groups}.", "",
        *R.regime_section(reg, ex.statistics.alpha),
        "## Groups (mean ± std [95% t interval] over the seeds in the regime)", "",
        *R.summary_table(reg.inside, head), "", *R.descriptions(records, head), ""]
    if stats is not None:
        lines += R.comparison_section(stats, "Equal pre-training loss, different fine-tuning?")
    paired = _paired(ex, reg.inside)
    if paired:
        lines += ["Paired by seed (groups that fine-tune the SAME pre-trained model, one of them "
                  "reparametrised): mean difference and exact two-sided sign-flip p.", "",
                  *R.table(["pair", "measure", "mean diff (a - b)", "seeds a > b", "sign-flip p"],
                           paired), ""]
    plots = [R.curves_plot({f"fine-tune {g}": r.run_dir for g, r in fin.items()},
                           out / "finetune_curves.png",
                           floor={f"fine-tune {g}": r.optimal_loss for g, r in fin.items()}),
             R.scatter_plot(records, "start.cross_entropy", "ood.kl", out / "finetune_scatter.png",
                            title="Pre-training loss vs OOD KL after fine-tuning", logx=False)]
    lines += ["## Every seed", "", *R.seed_table(records, head + ["transfer.start_gap"]), "",
              *[f"![{p}]({p})" for p in plots], ""]
    (out / "report.md").write_text("\n".join(lines))
    write_csv(records, out / "results.csv")
    results = {"experiment": ex.name, "kind": ex.kind, "source": ex.source,
               "checkpoint": ex.checkpoint,
               "languages": {k: v.name for k, v in langs.items()},
               "floors": {k: v.optimal_loss().per_token for k, v in langs.items()},
               "records": records_json(records), "regime": regime_json(reg), "statistics": stats,
               "timing": dict(timing)}
    write_json(results, out / "results.json")
    return jsonable(results)
