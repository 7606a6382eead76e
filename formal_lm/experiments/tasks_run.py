"""Runs a ``kind = "tasks"`` experiment (see ``experiments.tasks``): trains every (task, model),
scores every seed, and writes the report with the published scores beside ours."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from formal_lm.analysis import difference_test
from formal_lm.experiments import report as R
from formal_lm.experiments.records import (Checkpoint, SeedRecord, grouped, jsonable,
                                           keys_where, records_json, regime, regime_json,
                                           write_csv, write_json)
from formal_lm.experiments.runs import log, train_or_retrain
from formal_lm.experiments.tasks import score, scoring_sets, task_data
from formal_lm.training import fit, load_models
from formal_lm.training.loop import finished

# The published table's columns, as our model names.
PUBLISHED_MODELS = {"RNN": "rnn", "Stack-RNN": "stack_rnn", "Tape-RNN": "tape_rnn",
                    "Transformer": "transformer", "LSTM": "lstm"}


def units(ex) -> list[str]:
    """The runs of a tasks experiment: one per (task, model)."""
    return [f"{t}.{m}" for t in ex.study.tasks for m in ex.models]


def _data(ex, task, cfg):
    return task_data(task, ex.study.lengths, cfg.batch_size, cfg.data.eval_size,
                     cfg.data.bucket)


def _train(ex, out: Path, only, resume, progress, train_any) -> dict:
    runs = {}
    for t, task in ex.study.tasks.items():
        for m in ex.models:
            unit = f"{t}.{m}"
            if only is not None and unit not in only:
                continue
            cfg = ex.train_config(m)
            data, run_dir = _data(ex, task, cfg), out / "runs" / unit
            if not train_any:
                runs[unit] = finished(cfg, data, run_dir)
                continue
            log(progress, f"train {unit}: {cfg.steps} steps x {len(cfg.seeds)} seeds")
            runs[unit] = train_or_retrain(lambda r, cfg=cfg, data=data, run_dir=run_dir: fit(
                cfg, data, run_dir, resume=r, progress=progress), run_dir, resume=resume)
    return runs


def run_tasks(ex, out: Path, *, resume: bool = True, progress: bool = True, only=None,
              report: bool = True, train_any: bool = True) -> dict:
    """Trains (unless ``train_any`` is False: then only finished runs are read), scores every
    seed and writes ``report.md``, ``results.json`` and ``results.csv``."""
    t0 = time.perf_counter()
    runs = _train(ex, out, only, resume, progress, train_any)
    t_train = time.perf_counter() - t0
    if not report:
        return {"experiment": ex.name, "trained": sorted(runs)}
    records, missing = [], [u for u, r in runs.items() if r is None]
    tests = {}  # per task: drawn once, scored by every model and seed
    for unit, run in runs.items():
        if run is None:
            continue
        key = unit.split(".")[0]
        task = ex.study.tasks[key]
        if key not in tests:
            tests[key] = scoring_sets(task, ex.study.lengths, ex.eval_seed)
        log(progress, f"score {unit}")
        for k, (seed, model) in enumerate(zip(run.seeds, load_models(run.run_dir,
                                                                     ex.checkpoint))):
            results = {"checkpoint": Checkpoint.of(ex.checkpoint, run, k),
                       **score(model, task, ex.study.lengths, tests[key])}
            records.append(SeedRecord(unit, seed, results))
    timing = {"training": t_train, "scoring": time.perf_counter() - t0 - t_train}
    return _report(ex, out, runs, records, missing, timing)


# ------------------------------------------------------------------------------ report
def _published(ex) -> dict[tuple[str, str], float]:
    """{(task name, our model name): published score in %} from [published] rows."""
    cols = ex.published.get("columns", [])  # the loader checked one score per column
    return {(name, PUBLISHED_MODELS.get(col, col)): float(v)
            for name, scores in (ex.published.get("rows") or {}).items()
            for col, v in zip(cols, scores)}


def _key(records) -> str:
    return "task.acc_ood" if records[0].value("task.acc_ood") is not None else "ood.acc"


def _in_key(records) -> str:
    return "task.acc_in" if records[0].value("task.acc_in") is not None else "in.acc"


def _task_rows(ex, groups, inside_groups, pub) -> list[list[str]]:
    rows = []
    for t, task in ex.study.tasks.items():
        for m, mt in ex.models.items():
            unit = f"{t}.{m}"
            rs = groups.get(unit, [])
            if not rs:
                continue
            key, ins = _key(rs), inside_groups.get(unit, [])
            every = [r.value(key) for r in rs if r.value(key) is not None]
            fit = [r.value(_in_key(rs)) for r in rs if r.value(_in_key(rs)) is not None]
            name = task.transduction or f"recognize {Path(task.language).stem}"
            p = pub.get((task.transduction or "", mt["name"]))
            rows.append([t, task.chomsky(), m, f"{100 * np.mean(fit):.1f}" if fit else "-",
                         f"{len(ins)}/{len(rs)}",
                         R.fmt_summary(every, percent=True) if every else "-",
                         f"{100 * max(every):.1f}" if every else "-",
                         "-" if p is None else f"{p:.1f}", name])
    return rows


def _contrasts(ex, groups) -> list[list[str]]:
    """Per task, every model against the Transformer: is its OOD accuracy different (every
    seed, as the published protocol scores every trained model)?"""
    rows = []
    for t in ex.study.tasks:
        base = [m for m, mt in ex.models.items() if mt["name"] == "transformer"]
        for b in base:
            for m in ex.models:
                a_rs, b_rs = groups.get(f"{t}.{m}", []), groups.get(f"{t}.{b}", [])
                if m == b or len(a_rs) < 2 or len(b_rs) < 2:
                    continue
                key = _key(a_rs)
                x = [r.value(key) for r in a_rs]
                y = [r.value(key) for r in b_rs]
                d = difference_test(x, y, alpha=ex.statistics.alpha, seed=ex.eval_seed)
                rows.append([t, f"{m} vs {b}", f"{100 * d.diff:+.1f}", f"{d.permutation_p:.2g}",
                             f"{d.min_attainable_p:.2g}", R.fmt(100 * d.mde, digits=3),
                             "yes" if d.differs else "no"])
    return rows


def _length_plot(ex, groups, path: Path) -> str:
    plt = R._plt()
    tasks = list(ex.study.tasks)
    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, t in zip(axes.flat, tasks):
        for m in ex.models:
            rs = groups.get(f"{t}.{m}", [])
            curves = [r.results["task"].by_length for r in rs if "task" in r.results]
            if curves:
                ns = [n for n, _ in curves[0]]
                ax.plot(ns, 100 * np.mean([[a for _, a in c] for c in curves], 0), label=m)
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("input length")
        ax.set_ylabel("per-token accuracy (%)")
        ax.set_ylim(0, 102)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _report(ex, out: Path, runs, records, missing, timing) -> dict:
    reg = regime(records, ex.statistics) if records else None
    groups = grouped(records)
    inside = grouped(reg.inside) if reg else {}
    lo, hi = ex.study.lengths.train
    tlo, thi = ex.study.lengths.test
    kinds = {t.kind for t in ex.study.tasks.values()}
    lines = R.header(ex, timing) + [
        f"Training lengths {lo}..{hi}; tested at lengths {tlo}..{thi} (every "
        f"{ex.study.lengths.test_step}), {ex.study.lengths.per_length} fresh examples per "
        "length."
        + (" A transducer reads its input, then answers one symbol per step without reading "
           "its answers; its score is the per-token accuracy of the answers, averaged over the "
           "tested lengths." if "transduction" in kinds else "")
        + (" A recognizer reads a string and answers accept or reject; its score is the "
           "fraction of examples answered right, per kind of example (members, uniform "
           "non-members, near misses) and length bin." if "recognition" in kinds else ""), ""]
    if missing:
        lines += [f"**Missing runs (not finished):** {', '.join(missing)}.", ""]
    if not records:
        (out / "report.md").write_text("\n".join(lines + ["No run has finished."]))
        return {"experiment": ex.name, "missing": missing}
    lines += R.regime_section(reg, ex.statistics.alpha)
    pub = _published(ex)
    if pub:
        lines += ["## Out-of-length accuracy beside the published scores", "",
                  f"Published: {ex.published.get('citation', '')}; protocol: "
                  f"{ex.published.get('setup', 'max over seeds and learning rates')}. Ours, two "
                  "ways: mean ± sd [95% t interval] over every seed, and the maximum over "
                  "every seed (one learning rate), the published protocol's nearest "
                  "counterpart.", ""]
    lines += ["The out-of-length scores below use every seed" + (
              ", as the published protocol scores every trained model" if pub else "") +
              "; `fit` is the mean accuracy in the training range "
              "and `seeds in regime` counts the seeds whose answers' KL on the training range "
              "is below the threshold, so a low out-of-length score can be told apart from a "
              "task not learnt at all.", ""]
    lines += R.table(["task", "class", "model", "fit: acc in training range (%)",
                      "seeds in regime", "out of length: mean (%)",
                      "out of length: max over seeds (%)", "published (%)", "what"],
                     _task_rows(ex, groups, inside, pub)) + [""]
    contrasts = _contrasts(ex, groups)
    if contrasts:
        lines += ["## Each model against the Transformer (out-of-length accuracy)", "",
                  "Two-sided permutation test of the mean at alpha = "
                  f"{ex.statistics.alpha:g}; `min attainable p` is the smallest p the seeds "
                  "can give, and MDE the difference detectable with 80 % power.", "",
                  *R.table(["task", "pair", "diff (points)", "permutation p",
                            "min attainable p", "MDE (points)", "different"], contrasts), ""]
    bins = keys_where(records, lambda m: m.name.startswith("len[") and m.name.endswith("_acc"))
    keys = [k for k in R.present(records, ["checkpoint.val_loss", "task.acc_in", "task.acc_ood",
                                           "in.acc", "ood.acc", "ood.acc_positive",
                                           "ood.acc_negative", "ood.acc_near_miss", *bins,
                                           "ood.majority_acc", "ood.length_rule_acc"])]
    lines += ["## Every group (all seeds)", "", *R.summary_table(records, keys), "",
              *R.descriptions(records, keys), ""]
    plots = []
    if any("task" in r.results for r in records):
        plots.append(_length_plot(ex, groups, out / "tasks_by_length.png"))
    plots.append(R.curves_plot({u: r.run_dir for u, r in runs.items() if r is not None},
                               out / "tasks_curves.png"))
    lines += ["## Every seed", "", *R.seed_table(records, keys), "",
              *[f"![{p}]({p})" for p in plots], ""]
    (out / "report.md").write_text("\n".join(lines))
    write_csv(records, out / "results.csv")
    results = {"experiment": ex.name, "kind": ex.kind, "source": ex.source,
               "checkpoint": ex.checkpoint, "missing": missing,
               "records": records_json(records), "regime": regime_json(reg),
               "published": {f"{t} {m}": v for (t, m), v in pub.items()},
               "timing": dict(timing)}
    write_json(results, out / "results.json")
    return jsonable(results)
