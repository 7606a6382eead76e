"""Writes ``report.md``, ``results.csv`` and PNG plots from a results dict (matplotlib, Agg).

Every seed is shown (per-seed table, strip plot), finish rates stand beside every completion
metric, and the checkpoint rule is stated. Published numbers come from the experiment file's
``[published]`` table, never from files outside the package.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from formal_lm.analysis import bootstrap_ci


def _fmt(v, pct=False, digits=4):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if pct:
        return f"{100 * v:.1f}%"
    if isinstance(v, (int, np.integer)):
        return str(v)
    return f"{v:.{digits}g}"


def _stats(values, seed=0):
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None
    lo, hi = bootstrap_ci(v, seed=seed)
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "ci": (lo, hi), "n": len(v)}


def _msd(values, pct=False, seed=0):
    s = _stats(values, seed)
    if s is None:
        return "–"
    if pct:
        return (f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}% "
                f"[{100 * s['ci'][0]:.1f}, {100 * s['ci'][1]:.1f}]")
    return f"{s['mean']:.4g} ± {s['std']:.2g} [{s['ci'][0]:.4g}, {s['ci'][1]:.4g}]"


def _is_pct(key: str) -> bool:
    return key.startswith(("ood", "nss", "id_", "len[")) and not key.endswith("_kl")


def _records(results):
    return [(c, s["record"]) for c in results["cells"] for s in c["seeds"]]


def write_csv(results, path: Path) -> None:
    rows = _records(results)
    keys = []
    for _, r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "language", "model", "objective"] + keys)
        for c, r in rows:
            w.writerow([c["cell"], c["language"], c["model"], c["objective"]]
                       + ["" if r.get(k) is None else r.get(k) for k in keys])


# ------------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def plot_training(results, out: Path) -> str:
    plt = _plt()
    cells = results["cells"]
    n = len(cells)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, c in zip(axes.flat, cells):
        per_seed = {}
        for line in (out / c["run_dir"] / "metrics.jsonl").read_text().splitlines():
            m = json.loads(line)
            per_seed.setdefault(m["seed"], []).append((m["step"], m["val_loss"]))
        for seed, pts in sorted(per_seed.items()):
            x, y = zip(*pts)
            ax.plot(x, y, lw=1, alpha=0.8, label=f"seed {seed}")
        for s in c["seeds"]:
            r = s["record"]
            if r.get("checkpoint_step") is not None and r.get("val_loss") is not None:
                ax.plot(r["checkpoint_step"], r["val_loss"], "k.", ms=5)
        ax.axhline(c["optimal_loss"], color="k", ls="--", lw=1, label="exact optimum")
        ax.set_yscale("log")
        ax.set_title(c["cell"], fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss (nats/token)")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, ncol=2)
    fig.suptitle("Validation loss per seed vs the exact optimal loss (dots: selected checkpoints)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=110)
    plt.close(fig)
    return "training_curves.png"


def _headline_key(results):
    for _, r in _records(results):
        for k in r:
            if k.startswith("ood_") and "finish" not in k and not k.endswith("_all"):
                return k
    return None


def plot_strip(results, out: Path, key: str) -> str:
    plt = _plt()
    cells = results["cells"]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(cells) + 2), 3.8))
    rng = np.random.default_rng(0)
    pub = (results.get("published") or {}).get("rows") or {}
    for i, c in enumerate(cells):
        ys = [s["record"].get(key) for s in c["seeds"]]
        ys = np.array([y for y in ys if y is not None], float)
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(ys)), 100 * ys, s=18, alpha=0.8)
        st = _stats(ys.tolist())
        if st:
            ax.errorbar(i + 0.3, 100 * st["mean"], yerr=[[100 * (st["mean"] - st["ci"][0])],
                                                         [100 * (st["ci"][1] - st["mean"])]],
                        fmt="ks", ms=4, capsize=3)
        row = pub.get(c["objective"])
        if row and row.get("ood_R1_pct"):
            m, sd = row["ood_R1_pct"]
            ax.errorbar(i - 0.3, m, yerr=sd, fmt="r^", ms=5, capsize=3)
    for lang, b in results.get("baselines", {}).items():
        sets = b.get("heldout") or b.get("all")
        ax.axhline(100 * sets["eos"]["headline"], color="gray", ls="--", lw=1,
                   label=f"emit EOS ({lang})")
        if sets.get("ngram"):
            ax.axhline(100 * sets["ngram"]["headline"], color="purple", ls=":", lw=1,
                       label=f"{sets['ngram_name']} ({lang})")
    ax.set_xticks(range(len(cells)), [c["cell"] for c in cells], rotation=20, fontsize=7,
                  ha="right")
    ax.set_ylabel(f"{key} (% of OOD prompts)")
    ax.set_ylim(-5, 105)
    ax.set_title("Per-seed OOD rule extrapolation (black: mean, 95% CI; red: published)",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "ood_per_seed.png", dpi=110)
    plt.close(fig)
    return "ood_per_seed.png"


def plot_scatter(results, out: Path, key: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for c in results["cells"]:
        xs = [s["record"].get("kl") for s in c["seeds"]]
        ys = [s["record"].get(key) for s in c["seeds"]]
        pts = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
        if pts:
            x, y = zip(*pts)
            ax.scatter(x, 100 * np.array(y), s=20, alpha=0.8, label=c["cell"])
    ax.set_xscale("log")
    ax.set_xlabel("in-distribution KL(true || model), nats/token")
    ax.set_ylabel(f"{key} (%)")
    ax.set_title("Equal in distribution, different out of it?", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "kl_vs_ood.png", dpi=110)
    plt.close(fig)
    return "kl_vs_ood.png"


def plot_length(results, out: Path) -> str | None:
    cells = [c for c in results["cells"] if c["seeds"]
             and "length_generalization" in c["seeds"][0]["detail"]]
    if not cells:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for c in cells:
        for ax, field in zip(axes, ("set_accuracy_per_string", "kl_per_token")):
            per_seed = [s["detail"]["length_generalization"]["length_bins"] for s in c["seeds"]]
            mids = [(b["lo"] + b["hi"]) / 2 for b in per_seed[0]]
            vals = np.array([[b[field] if b[field] is not None else np.nan for b in bins]
                             for bins in per_seed], float)
            for v in vals:
                ax.plot(mids, v, color="gray", alpha=0.2, lw=0.8)
            ax.plot(mids, np.nanmean(vals, 0), marker="o", label=c["cell"])
    tm = cells[0]["seeds"][0]["detail"]["length_generalization"]["train_max_length"]
    for ax, label in zip(axes, ("next-symbol-set accuracy (per string)", "KL nats/token")):
        ax.axvline(tm, color="k", ls="--", lw=1)
        ax.set_xlabel("string length (bin middle)")
        ax.set_ylabel(label)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=6)
    fig.suptitle("Length generalization (dashed: longest training length; grey: seeds)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "length_generalization.png", dpi=110)
    plt.close(fig)
    return "length_generalization.png"


# ------------------------------------------------------------------------------------ report
def _published_grid(results, key, lines):
    pub = results.get("published") or {}
    grid = pub.get("grid") or {}
    if not grid or not key:
        return
    langs = list(dict.fromkeys(c["language"] for c in results["cells"]))
    lines += ["## Published numbers beside ours (OOD R1, %)", "",
              f"Source: {pub.get('citation', '?')}. {pub.get('source', '')}", "",
              "Each cell: published mean ± std / ours mean ± std (our seeds, selected checkpoint).",
              "", "| model | " + " | ".join(langs) + " |", "|---|" + "---|" * len(langs)]
    for arch, row in grid.items():
        cells = []
        for lang in langs:
            pv = row.get(lang)
            recs = [s["record"] for c in results["cells"] if c["language"] == lang
                    and c["model"] == arch for s in c["seeds"]]
            st = _stats([r.get(key) for r in recs])
            ours = f"{100 * st['mean']:.1f} ± {100 * st['std']:.1f}" if st else "–"
            cells.append(f"{f'{pv[0]} ± {pv[1]}' if pv else '–'} / {ours}")
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    if pub.get("setup"):
        lines += ["", "**What differs in the setup.** " + pub["setup"]]
    lines.append("")


def _published_section(results, key, lines):
    pub = results.get("published") or {}
    rows = pub.get("rows") or {}
    _published_grid(results, key, lines)
    if not rows:
        return
    lines += ["## Published numbers beside ours", "",
              f"Source: {pub.get('citation', '?')}. {pub.get('source', '')}", ""]
    all_key = key + "_all" if key else None
    lines += ["| group | published model | published seeds | published OOD R1 | published val loss "
              "| ours: seeds | ours: OOD R1 (held-out prompts) | ours: OOD R1 (all OOD prompts) "
              "| ours: finish rate | ours: val loss |", "|" + "---|" * 10]
    for okey, row in rows.items():
        cells = [c for c in results["cells"] if c["objective"] == okey]
        recs = [s["record"] for c in cells for s in c["seeds"]]
        pm = row.get("ood_R1_pct")
        pl = row.get("val_loss")
        lines.append(
            f"| {okey} | {row.get('model', '–')} | {row.get('seeds', '–')} | "
            f"{f'{pm[0]} ± {pm[1]}%' if pm else '–'} | {f'{pl[0]} ± {pl[1]}' if pl else '–'} | "
            f"{len(recs)} | {_msd([r.get(key) for r in recs], True) if key else '–'} | "
            f"{_msd([r.get(all_key) for r in recs], True) if recs and all_key in recs[0] else '–'} | "
            f"{_msd([r.get('ood_finish_rate') for r in recs], True)} | "
            f"{_msd([r.get('val_loss') for r in recs])} |")
    if "baseline_eos_pct" in pub:
        ours = []
        for lang, b in results.get("baselines", {}).items():
            ours.append(f"{lang}: {100 * b['all']['eos']['headline']:.1f}% of all "
                        f"{b['all']['n_ood']} OOD prompts"
                        + (f", {100 * b['heldout']['eos']['headline']:.1f}% of the "
                           f"{b['heldout']['n_ood']} held-out ones" if "heldout" in b else ""))
        lines += ["", f"Emit-EOS baseline: published {pub['baseline_eos_pct']}%; ours "
                  + "; ".join(ours) + "."]
    if pub.get("setup"):
        lines += ["", "**What differs in the setup.** " + pub["setup"]]
    if pub.get("loss_note"):
        lines += ["", pub["loss_note"]]
    lines.append("")


def _length_section(results, lines):
    cells = [c for c in results["cells"] if c["seeds"]
             and "length_generalization" in c["seeds"][0]["detail"]]
    if not cells:
        return
    lines += ["## Length generalization (mean over seeds)", "",
              "Next-symbol-set accuracy per string / exact KL nats per token, per length bin "
              "(and per nesting-depth bin for bracket languages); * marks bins inside the "
              "training range.", ""]
    for kind in ("length_bins", "depth_bins"):
        for c in cells:
            per_seed = [s["detail"]["length_generalization"][kind] for s in c["seeds"]]
            if not per_seed[0]:
                continue
            head = [f"{b['lo']}-{b['hi']}{'*' if b['in_training_range'] else ''}"
                    for b in per_seed[0]]
            vals = []
            for j in range(len(head)):
                acc = [p[j]["set_accuracy_per_string"] for p in per_seed if j < len(p)]
                kl = [p[j]["kl_per_token"] for p in per_seed if j < len(p)]
                a, k = _stats(acc), _stats(kl)
                vals.append(f"{_fmt(a['mean'] if a else None, True)} / "
                            f"{_fmt(k['mean'] if k else None, digits=3)}")
            label = "length" if kind == "length_bins" else "depth"
            lines += [f"**{c['cell']}** ({label})", "", "| " + " | ".join(head) + " |",
                      "|" + "---|" * len(head), "| " + " | ".join(vals) + " |", ""]


def write_report(results: dict, out: Path) -> None:
    """Writes report.md, results.csv and the plots into ``out``."""
    out = Path(out)
    write_csv(results, out / "results.csv")
    key = _headline_key(results)
    plots = [plot_training(results, out)]
    if key:
        plots += [plot_strip(results, out, key), plot_scatter(results, out, key)]
    lp = plot_length(results, out)
    if lp:
        plots.append(lp)
    t = results["timing"]
    lines = [f"# {results['experiment']}", "", results.get("description", ""), "",
             f"- Experiment file: `{results['source']}`"
             + (" with its `[full]` table (paper sizes)" if results["full"] else
                " (default CPU sizes; `--full` for paper sizes)"),
             f"- **Checkpoint rule:** every metric is read at ONE checkpoint per seed: "
             f"{results['checkpoint_rule']}. Never a maximum over training.",
             f"- Analysis samples and prompts use eval seed {results['eval_seed']}; completions "
             "that never emit EOS count as failures, and finish rates are shown beside them.",
             f"- Wall time: training {t['train_s']:.0f} s, analysis {t['analysis_s']:.0f} s.", ""]
    # grid
    lines += ["## Grid", "", "| cell | model | objective | steps | seeds | train s | analysis s |",
              "|---|---|---|---|---|---|---|"]
    for c in results["cells"]:
        mc = ", ".join(f"{k}={v}" for k, v in c["model_config"].items())
        oc = ", ".join(f"{k}={v}" for k, v in c["objective_config"].items())
        lines.append(f"| {c['cell']} | {mc} | {oc} | {c['steps']} | {len(c['seeds'])} | "
                     f"{c['train_wall_s']:.0f} | {c['analysis_wall_s']:.0f} |")
    lines.append("")
    # summary
    metric_keys = []
    for _, r in _records(results):
        metric_keys += [k for k in r if k not in metric_keys and k not in ("seed",
                                                                            "checkpoint_step")]
    main_keys = [k for k in ("val_loss", "kl", "cross_entropy", key, "ood_finish_rate",
                             (key or "") + "_all", "ood_finish_rate_all", "id_accuracy",
                             "nss_per_string") if k and k in metric_keys]
    lines += ["## Summary (mean ± std [bootstrap 95% CI] over seeds)", "",
              "| cell | n | " + " | ".join(main_keys) + " |", "|---|---|" + "---|" * len(main_keys)]
    for c in results["cells"]:
        recs = [s["record"] for s in c["seeds"]]
        lines.append(f"| {c['cell']} | {len(recs)} | " + " | ".join(
            _msd([r.get(k) for r in recs], _is_pct(k)) for k in main_keys) + " |")
    lines.append("")
    if key:
        lines += [f"`{key}`: fraction of the evaluated OOD prompts whose completion emitted EOS "
                  "and satisfies the first rule. Models trained with a completion objective are "
                  "evaluated only on the held-out half of the OOD prompts; every cell of the same "
                  "language uses that same half. `_all` columns use every OOD prompt (models not "
                  "trained on any prompt only).", ""]
    # baselines
    if results.get("baselines"):
        lines += ["## Baselines (same prompts)", "", "| language | prompts | baseline | "
                  "OOD R1 | finish rate |", "|---|---|---|---|---|"]
        for lang, b in results["baselines"].items():
            for sk, sv in b.items():
                lines.append(f"| {lang} | {sk} ({sv['n_ood']} OOD) | emit EOS immediately | "
                             f"{_fmt(sv['eos']['headline'], True)} | "
                             f"{_fmt(sv['eos']['finish_rate'], True)} |")
                if sv.get("ngram"):
                    lines.append(f"| {lang} | {sk} ({sv['n_ood']} OOD) | {sv['ngram_name']} | "
                                 f"{_fmt(sv['ngram']['headline'], True)} | "
                                 f"{_fmt(sv['ngram']['finish_rate'], True)} |")
        lines.append("")
    _published_section(results, key, lines)
    # non-identifiability
    if results.get("non_identifiability"):
        lines += ["## Non-identifiability", ""]
        for lang, r in results["non_identifiability"].items():
            lines += [f"**{lang}.** " + r["statement"], "",
                      f"Loss metric `{r['loss_metric']}` (equivalent when bootstrap 95% CIs "
                      f"overlap or means differ by < {r['tolerance']}); OOD differences by a "
                      f"two-sided permutation test of the mean (alpha = {r['alpha']}) with "
                      "Welch's t-test beside it.", "",
                      "| pair | loss diff | loss CIs overlap | loss equivalent | metric | OOD diff "
                      "| permutation p | Welch t | Welch p |", "|---|---|---|---|---|---|---|---|---|"]
            for p in r["pairs"]:
                for t in p["ood"]:
                    lines.append(
                        f"| {p['a']} vs {p['b']} | {_fmt(p['loss_diff'])} | "
                        f"{_fmt(p['loss_ci_overlap'])} | {_fmt(p['loss_equivalent'])} | "
                        f"{t['metric']} | {_fmt(t['diff'], True)} | {_fmt(t['permutation_p'], digits=3)} | "
                        f"{_fmt(t['welch_t'], digits=3)} | {_fmt(t['welch_p'], digits=3)} |")
            if r["found"]:
                verdict = ("**Non-identifiability reproduced: yes.** Some pair of groups is "
                           "indistinguishable in loss but differs significantly out of "
                           "distribution (statistics above).")
            else:
                verdict = ("**Non-identifiability reproduced: no.** No pair of groups is both "
                           "indistinguishable in loss and significantly different out of "
                           "distribution.")
            lines += ["", verdict, ""]
    _length_section(results, lines)
    # every seed
    lines += ["## Every seed", "", "| cell | seed | ckpt step | " + " | ".join(metric_keys[:14])
              + " |", "|---|---|---|" + "---|" * len(metric_keys[:14])]
    for c, r in _records(results):
        lines.append(f"| {c['cell']} | {r['seed']} | {_fmt(r.get('checkpoint_step'))} | " +
                     " | ".join(_fmt(r.get(k), _is_pct(k)) for k in metric_keys[:14]) + " |")
    lines += ["", "All per-seed metrics (including per-class rule accuracies) are in "
              "`results.csv` and `results.json`.", "", "## Plots", ""]
    lines += [f"![{p}]({p})" for p in plots]
    (out / "report.md").write_text("\n".join(lines) + "\n")
