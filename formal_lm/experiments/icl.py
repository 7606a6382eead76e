"""The in-context-learning study (Reizinger et al. 2024, case study 2; data as in Akyurek et al.
2024): every model trains its seeds together on sequences of random PDFAs
(``formal_lm.studies.icl.ICLData`` on ``formal_lm.training.fit``), then each seed's selected
checkpoint is scored against the Bayes-optimal in-context predictor (the best any predictor can
do from the context: ``formal_lm.studies.icl_bayes``), the per-sequence automaton (a second,
unattainable reference) and in-context n-gram baselines, on held-out automata of the training
family and on automata of a larger family.

Run directories: ``OUT/runs/<model key>/``. Evaluation sets derive from ``eval_seed``: index 0
is the validation set (checkpoint selection), 1 the held-out automata, 2 the larger ones.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from formal_lm.analysis import JaxModel
from formal_lm.experiments import report as R
from formal_lm.experiments.records import (Checkpoint, SeedRecord, compare, jsonable,
                                           keys_where, records_json, regime, regime_json,
                                           write_csv, write_json)
from formal_lm.experiments.runs import log, train_or_retrain
from formal_lm.experiments.spec import Experiment
from formal_lm.seeding import Stream, derive
from formal_lm.studies import icl, icl_scores
from formal_lm.training import fit, load_models
from formal_lm.training.loop import finished

DEFAULTS = {"position_bins": [0, 8, 16, 32, 64], "ood_size": 256, "ngram_k": 0.5,
            "particles": 512, "runs": 8}


def eval_sets(ex: Experiment, eval_size: int, ood_size: int) -> dict[str, icl.ICLBatch]:
    s = ex.study
    return {"heldout": icl.icl_batch(s.family, eval_size,
                                     seed=derive(ex.eval_seed, Stream.ICL_EVAL, 1)),
            "larger": icl.icl_batch(s.ood_family, ood_size,
                                    seed=derive(ex.eval_seed, Stream.ICL_EVAL, 2))}


def train_models(ex: Experiment, out: Path, data, *, resume: bool, progress: bool,
                 only: set[str] | None = None, train_any: bool = True):
    """({model key: TrainResult}, keys without a finished run): see ``grid.train_cells``."""
    runs, missing = {}, []
    for m in ex.models:
        if only is not None and m not in only:
            continue
        cfg = ex.train_config(m)
        run_dir = out / "runs" / m
        if not train_any:
            if (res := finished(cfg, data, run_dir)) is None:
                missing.append(m)
            else:
                runs[m] = res
            continue
        log(progress, f"train {m}: {cfg.steps} steps x {len(cfg.seeds)} seeds")
        runs[m] = train_or_retrain(lambda r, cfg=cfg, run_dir=run_dir: fit(
            cfg, data, run_dir, resume=r, progress=progress), run_dir, resume=resume)
    return runs, missing


def run_icl(ex: Experiment, out: Path, *, resume: bool = True, progress: bool = True,
            only: set[str] | None = None, train_any: bool = True, report: bool = True) -> dict:
    """Trains every model's seeds, scores them, writes the report; returns the results.
    ``only``, ``train_any`` and ``report`` split the work over jobs as in ``grid.run_grid``."""
    t0 = time.perf_counter()
    opts = {**DEFAULTS, **ex.analysis.get("icl", {})}
    base_cfg = ex.train_config(next(iter(ex.models)))
    d = base_cfg.data
    data = icl.ICLData(ex.study.family, batch_size=base_cfg.batch_size,
                       pool_size=d.dataset_size, eval_size=d.eval_size, bucket=d.bucket,
                       eval_seed=ex.eval_seed)
    runs, missing = train_models(ex, out, data, resume=resume, progress=progress, only=only,
                                 train_any=train_any)
    if not report:
        return {"experiment": ex.name, "trained": list(runs)}
    t_train = time.perf_counter() - t0
    sets = eval_sets(ex, d.eval_size, opts["ood_size"])
    bins, V = list(opts["position_bins"]), data.vocab_size
    fams = {"heldout": ex.study.family, "larger": ex.study.ood_family}
    log(progress, "the Bayes-optimal in-context reference of both evaluation sets")
    references = {k: icl_scores.reference(k, fams[k], b, particles=opts["particles"],
                                          runs=opts["runs"], ngram_k=opts["ngram_k"],
                                          seed=derive(ex.eval_seed, Stream.ICL_BAYES, i))
                  for i, (k, b) in enumerate(sets.items())}
    refs = {k: icl_scores.baseline_scores(r, V, position_bins=bins, k=opts["ngram_k"])
            for k, r in references.items()}
    records = []
    for m, res in runs.items():
        log(progress, f"analyse {m}")
        models = load_models(res.run_dir, which=ex.checkpoint)
        for k, seed in enumerate(res.seeds):
            results = {"checkpoint": Checkpoint.of(ex.checkpoint, res, k)}
            for name, ref in references.items():
                results[name] = icl_scores.score_predictor(JaxModel(models[k]), ref,
                                                           position_bins=bins)
            records.append(SeedRecord(m, seed, results))
    reg = regime(records, ex.statistics)  # the claims: seeds near the Bayes-optimal floor
    stats = compare(reg.inside, ex.statistics, seed=ex.eval_seed)
    timing = {"training": t_train, "analysis": time.perf_counter() - t0 - t_train}
    return _report(ex, out, runs, records, refs, references, (reg, stats), timing, bins, missing)


def _kl_plot(records, refs, out: Path) -> str:
    plt = R._plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, set_name in zip(axes, ("heldout", "larger")):
        for i, m in enumerate(dict.fromkeys(r.group for r in records)):
            rows = [r.results[set_name].kl_by_string for r in records if r.group == m]
            for row in rows:  # every seed shown
                ax.plot(range(1, len(row) + 1), row, color=f"C{i}", alpha=0.3, lw=0.8)
            ax.plot(range(1, len(rows[0]) + 1), np.nanmean(rows, 0), color=f"C{i}", lw=2,
                    label=m)
        for n, ls in (("unigram", ":"), ("bigram", "--"), ("trigram", "-.")):
            r = refs[set_name][n].kl_by_string
            ax.plot(range(1, len(r) + 1), r, color="k", ls=ls, label=f"in-context {n}")
        ax.set_title(f"{set_name} automata")
        ax.set_xlabel("string index in context")
        ax.set_yscale("log")
    axes[0].set_ylabel("KL(Bayes-optimal || predictor), nats/token")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "icl_kl_by_string.png", dpi=110)
    plt.close(fig)
    return "icl_kl_by_string.png"


def _report(ex, out: Path, runs, records, refs, references, claims, timing, bins,
            missing=()) -> dict:
    fam, ood = ex.study.family, ex.study.ood_family
    reg, stats = claims
    head = keys_where(records, lambda m: m.headline)
    lines = R.header(ex, timing) + ([f"**Missing models** (no finished run yet): {list(missing)}",
                                     ""] if missing else []) + [
        f"Family: {fam.n_states} states, {fam.alphabet_size} symbols, density {fam.density}, "
        f"{fam.strings_per_sequence} strings per sequence (delimiter '|'), sequences cut at "
        f"{fam.max_length} tokens. Off-distribution test: {ood.n_states} states. The "
        "reference is the Bayes-optimal in-context predictor under the family's prior (kl_bayes: "
        "the loss an in-context learner could still remove; gap_closed = 1 - kl_bayes / "
        "kl_bayes(in-context bigram), 1 = Bayes-optimal). The sequence's own automaton "
        "(kl_oracle) is a second reference that no in-context learner can reach.", "",
        *R.regime_section(reg, ex.statistics.alpha),
        "## Groups (mean ± std [95% t interval] over the seeds in the regime)", "",
        *R.summary_table(list(reg.inside), head), "", *R.descriptions(records, head), ""]
    labels = [f"{a}-{b - 1}" for a, b in zip(bins, bins[1:])] + [f"{bins[-1]}+"]
    for set_name in ("heldout", "larger"):
        rows = [[g, *[f"{v:.4f}" for v in np.nanmean(
                    [r.results[set_name].kl_by_position for r in records if r.group == g], 0)]]
                for g in runs]
        rows.append(["in-context bigram", *[f"{v:.4f}" for v in
                                            refs[set_name]["bigram"].kl_by_position]])
        lines += [f"kl_bayes by input position ({set_name} automata; mean over every seed):", "",
                  *R.table(["group", *labels], rows), ""]
    def nats(v: float) -> str:
        return f"{v:.4f}" if np.isfinite(v) else "∞"

    rows = [[n, *[" / ".join(nats(getattr(refs[s][n], f)) for f in ("ce", "kl_bayes", "kl_oracle"))
                  for s in ("heldout", "larger")]]
            for n in ("bayes", "oracle", "unigram", "bigram", "trigram")]
    lines += ["## References (CE / KL to Bayes-optimal / KL to the oracle, nats per token)", "",
              *R.table(["predictor", "held-out", "larger"], rows), "",
              "The Bayes-optimal rows: " + "; ".join(
                  f"{k}: " + ("exact (every structure enumerated)" if r.bayes.exact else
                              f"estimated by {len(r.bayes.runs)} particle filters of "
                              f"{r.bayes.particles} particles (each seed's kl_bayes_se is "
                              "their Monte Carlo error)")
                  for k, r in references.items()) + ".", ""]
    if stats is not None:
        lines += R.comparison_section(stats, "Does equal loss mean equal in-context learning?")
    plots = [_kl_plot(records, refs, out),
             R.curves_plot({m: r.run_dir for m, r in runs.items()}, out / "icl_training.png"),
             R.scatter_plot(records, "heldout.ce", "larger.kl_bayes", out / "icl_scatter.png",
                            title="In-distribution loss vs KL on larger automata", logx=False)]
    lines += ["## Every seed", "", *R.seed_table(records, head), "",
              *[f"![{p}]({p})" for p in plots], ""]
    (out / "report.md").write_text("\n".join(lines))
    write_csv(records, out / "results.csv")
    results = {"experiment": ex.name, "kind": ex.kind, "source": ex.source,
               "checkpoint": ex.checkpoint, "family": fam, "ood_family": ood,
               "references": refs, "records": records_json(records), "statistics": stats,
               "regime": regime_json(reg),
               "timing": dict(timing)}
    write_json(results, out / "results.json")
    return jsonable(results)
