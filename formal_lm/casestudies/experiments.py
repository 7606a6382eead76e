"""The two case-study experiments as pipelines: file -> spec -> training -> records -> report.

``run_icl_experiment(path, out_dir)`` and ``run_finetune_experiment(path, out_dir)`` read a TOML
file whose ``[experiment] kind`` is "icl" or "finetune" (see experiments/icl-pdfa.toml and
experiments/finetune-transfer.toml for every key), train every group for the same fixed number
of seeds, score each seed at its LAST step (the checkpoint rule, stated in the report), and write
``report.md``, ``results.json``, ``results.csv`` and PNG plots into ``out_dir``.

Every key of a file is used or rejected with an error naming the key and the file.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from formal_lm.analysis import bootstrap_ci, non_identifiability
from formal_lm.casestudies import finetune as ft
from formal_lm.casestudies import icl
from formal_lm.casestudies._fit import FitConfig, build_model, fit, logits_fn, mean_nll
from formal_lm.errors import FormalLMError, Problem
from formal_lm.experiments.runner import _jsonable  # inf and nan become null
from formal_lm.models import CONFIGS
from formal_lm.training.data import derive

KINDS = ("icl", "finetune")


# ----------------------------------------------------------------------------- spec reading
def _read(path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise FormalLMError(Problem(f"cannot read experiment file {path}: {e}")) from None
    except tomllib.TOMLDecodeError as e:
        raise FormalLMError(Problem(f"{path}: not valid TOML: {e}")) from None


def experiment_kind(path) -> str | None:
    """The file's ``[experiment] kind`` when it names a case study, else None."""
    kind = _read(path).get("experiment", {}).get("kind")
    return kind if kind in KINDS else None


class _Checker:
    def __init__(self, source: str):
        self.source, self.problems = source, []

    def bad(self, msg: str, fix: str = ""):
        self.problems.append(Problem(f"{self.source}: {msg}", fix))

    def table(self, raw: Mapping, where: str, allowed: Mapping[str, object],
              required: tuple[str, ...] = ()) -> dict:
        """``allowed`` maps key -> default; unknown keys and missing required ones are errors."""
        t = raw.get(where, {})
        if not isinstance(t, Mapping):
            self.bad(f"[{where}] must be a table")
            return dict(allowed)
        for k in t:
            if k not in allowed:
                self.bad(f"unknown key '{where}.{k}'", f"allowed: {sorted(allowed)}")
        for k in required:
            if k not in t:
                self.bad(f"missing key '{where}.{k}'")
        return {**allowed, **{k: v for k, v in t.items() if k in allowed}}

    def models(self, raw: Mapping) -> dict[str, tuple[str, dict]]:
        out = {}
        ms = raw.get("models", {})
        if not ms:
            self.bad("no [models.NAME] tables",
                     "add e.g. [models.transformer] name = 'transformer'")
        for key, m in ms.items():
            m = dict(m)
            name = m.pop("name", key)
            if name not in CONFIGS:
                self.bad(f"models.{key}.name={name!r} is not a model",
                         f"use one of {list(CONFIGS)}")
                continue
            allowed = {f.name for f in dataclasses.fields(CONFIGS[name])} - {"vocab_size"}
            for k in m:
                if k not in allowed:
                    self.bad(f"unknown key 'models.{key}.{k}' for model {name!r}",
                             f"allowed: {sorted(allowed)}")
            out[key] = (name, m)
        return out

    def raise_if(self):
        if self.problems:
            raise FormalLMError(self.problems)


def _seeds(v, chk: _Checker) -> tuple[int, ...]:
    if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
        return tuple(range(v))
    if isinstance(v, list) and v and all(isinstance(s, int) and s >= 0 for s in v):
        return tuple(v)
    chk.bad(f"experiment.seeds={v!r} must be a count >= 1 or a list of seeds")
    return (0,)


def _fit_config(t: dict, chk: _Checker, where: str) -> FitConfig:
    try:
        return FitConfig(steps=int(t["steps"]), lr=float(t["lr"]),
                         warmup_steps=int(t["warmup_steps"]), grad_clip=float(t["grad_clip"]),
                         log_every=int(t["log_every"]))
    except (TypeError, ValueError) as e:
        chk.bad(f"[{where}]: {e}")
        return FitConfig(steps=1)


def _summary(values) -> dict:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], float)
    if not len(v):
        return {"mean": math.nan, "std": math.nan, "ci": (math.nan, math.nan), "n": 0}
    lo, hi = bootstrap_ci(v)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "ci": (lo, hi), "n": int(len(v))}


def _fmt(s: dict) -> str:
    return f"{s['mean']:.4f} [{s['ci'][0]:.4f}, {s['ci'][1]:.4f}]"


def _write_csv(rows: list[dict], path: Path):
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _log(progress: bool, msg: str):
    if progress:
        print(f"[case-study] {msg}", flush=True)


def _ni_section(groups: dict, loss_metric: str, ood: list[str], tolerance: float, alpha: float,
                seed: int) -> tuple[dict, list[str]]:
    r = non_identifiability(groups, loss_metric=loss_metric, ood_metrics=ood,
                            tolerance=tolerance, alpha=alpha, seed=seed)
    lines = ["| pair | loss diff | loss equivalent | differs in (permutation p < alpha) |",
             "|---|---|---|---|"]
    for p in r.pairs:
        diffs = ", ".join(f"{t.metric} (p={t.permutation_p:.2g})" for t in p.ood if t.differs)
        lines.append(f"| {p.a} vs {p.b} | {p.loss_diff:+.4f} | {p.loss_equivalent} | "
                     f"{diffs or '-'} |")
    lines += ["", f"**Finding:** {r.statement}"]
    return _jsonable(r), lines


# ============================================================================ ICL
_ICL_EXPERIMENT = {"name": "icl-pdfa", "kind": "icl", "description": "", "seeds": 3,
                   "eval_seed": 10007}
_ICL_TRAIN = {"steps": 600, "batch_size": 32, "lr": 3e-3, "warmup_steps": 50, "grad_clip": 1.0,
              "log_every": 25, "pool_size": 8192}
_ICL_EVAL = {"n": 256, "ood_n": 256, "position_bins": [0, 8, 16, 32, 64], "ngram_k": 0.5}
_FAMILY = {f.name: f.default for f in dataclasses.fields(icl.PDFAFamily)}
_NI = {"tolerance": 0.02, "alpha": 0.05}


def load_icl_spec(path) -> dict:
    """The validated spec of an ICL experiment file."""
    raw, chk = _read(path), _Checker(str(path))
    for k in raw:
        if k not in ("experiment", "family", "ood_family", "train", "eval", "models",
                     "non_identifiability"):
            chk.bad(f"unknown table {k!r}")
    spec = {"experiment": chk.table(raw, "experiment", _ICL_EXPERIMENT),
            "family": chk.table(raw, "family", _FAMILY),
            "ood_family": chk.table(raw, "ood_family", {k: None for k in _FAMILY}),
            "train": chk.table(raw, "train", _ICL_TRAIN),
            "eval": chk.table(raw, "eval", _ICL_EVAL),
            "non_identifiability": chk.table(raw, "non_identifiability", _NI),
            "models": chk.models(raw)}
    spec["seeds"] = _seeds(spec["experiment"]["seeds"], chk)
    spec["fit"] = _fit_config(spec["train"], chk, "train")
    try:
        spec["fam"] = icl.PDFAFamily(**spec["family"])
        ood = {k: v for k, v in spec["ood_family"].items() if v is not None}
        spec["ood_fam"] = icl.PDFAFamily(**{**spec["family"], **ood})
    except FormalLMError as e:
        for p in e.problems:
            chk.bad(f"[family]/[ood_family]: {p.message}", p.fix)
    if spec["experiment"]["kind"] != "icl":
        chk.bad(f"experiment.kind={spec['experiment']['kind']!r} must be 'icl' here")
    chk.raise_if()
    return spec


def run_icl_experiment(path, out_dir, *, progress: bool = True) -> dict:
    """Trains every model of an ICL file for every seed and writes the report section.

    Returns:
        The results dict also written to ``out_dir/results.json``.
    """
    t_start = time.perf_counter()
    spec = load_icl_spec(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fam, ood_fam, ev, tr = spec["fam"], spec["ood_fam"], spec["eval"], spec["train"]
    V = fam.vocab.size
    bins = list(ev["position_bins"])
    eval_seed = int(spec["experiment"]["eval_seed"])
    sets = {"heldout": icl.icl_batch(fam, ev["n"], seed=eval_seed),
            "larger": icl.icl_batch(ood_fam, ev["ood_n"], seed=eval_seed + 1)}
    baselines = {k: icl.baseline_scores(b, V, position_bins=bins, k=ev["ngram_k"])
                 for k, b in sets.items()}
    pools: dict[int, np.ndarray] = {}
    records, curves, by_string = [], {}, {}
    train_s = 0.0
    for mkey, (mname, mcfg) in spec["models"].items():
        mcfg = {"max_len": fam.max_length, **mcfg} if mname == "transformer" else mcfg
        for s in spec["seeds"]:
            if s not in pools:
                _log(progress, f"data: {tr['pool_size']} sequences for seed {s}")
                pools[s] = icl.icl_training_pool(fam, tr["pool_size"], seed=s)
            pool = pools[s]

            def batches(step, s=s, pool=pool):
                rng = np.random.default_rng(derive(s, 7, step))
                return pool[rng.integers(len(pool), size=tr["batch_size"])]

            _log(progress, f"train {mkey} seed {s}: {spec['fit'].steps} steps")
            t0 = time.perf_counter()
            model = build_model(mname, V, derive(s, 3), mcfg)
            res = fit(model, batches, spec["fit"])
            train_s += time.perf_counter() - t0
            lp = logits_fn(res.model)
            rec = {"group": mkey, "seed": s,
                   "train_loss": float(np.mean([c[1] for c in res.curve[-4:]]))}
            for set_name, b in sets.items():
                sc = icl.analyze_icl(lp, b, position_bins=bins,
                                     bigram_kl=baselines[set_name]["bigram"].kl)
                pre = "val" if set_name == "heldout" else "ood"
                rec.update({f"{pre}_ce": sc.ce, f"{pre}_kl": sc.kl,
                            f"{pre}_gap_closed": sc.gap_closed,
                            f"{pre}_valid_mass": sc.valid_mass,
                            f"{pre}_argmax_valid": sc.argmax_valid,
                            f"{pre}_kl_first_string": sc.kl_by_string[0],
                            f"{pre}_kl_last_string": sc.kl_by_string[-1]})
                by_string[(mkey, s, set_name)] = list(sc.kl_by_string)
                by_string[(mkey, s, set_name, "pos")] = list(sc.kl_by_position)
            records.append(rec)
            curves[(mkey, s)] = res.curve
    groups = {g: [r for r in records if r["group"] == g] for g in spec["models"]}
    ni = spec["non_identifiability"]
    ood_metrics = ["val_kl", "val_gap_closed", "ood_kl", "ood_gap_closed", "ood_valid_mass"]
    ni_json, ni_lines = _ni_section(groups, "val_ce", ood_metrics, ni["tolerance"], ni["alpha"],
                                    eval_seed)
    results = {"experiment": spec["experiment"], "family": dataclasses.asdict(fam),
               "ood_family": dataclasses.asdict(ood_fam), "train": tr, "eval": ev,
               "models": {k: {"name": n, **c} for k, (n, c) in spec["models"].items()},
               "seeds": list(spec["seeds"]), "records": records,
               "baselines": {k: {n: dataclasses.asdict(v) for n, v in b.items()}
                             for k, b in baselines.items()},
               "kl_by_string": {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in by_string.items()
                                if len(k) == 3},
               "kl_by_position": {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in by_string.items()
                                  if len(k) == 4},
               "curves": {f"{k[0]}|{k[1]}": v for k, v in curves.items()},
               "non_identifiability": ni_json}
    results["timing"] = {"train_s": train_s, "total_s": time.perf_counter() - t_start}
    _icl_report(results, spec, groups, baselines, by_string, curves, ni_lines, out)
    results["timing"]["total_s"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=1))
    return _jsonable(results)


def _icl_report(results, spec, groups, baselines, by_string, curves, ni_lines, out: Path):
    plt = _plt()
    _write_csv(results["records"], out / "results.csv")
    colors = dict(zip(groups, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    # KL by string index, both sets
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, set_name in zip(axes, ("heldout", "larger")):
        for g in groups:
            rows = [by_string[(g, s, set_name)] for s in spec["seeds"]]
            for r in rows:  # every seed shown
                ax.plot(range(1, len(r) + 1), r, color=colors[g], alpha=0.3, lw=0.8)
            ax.plot(range(1, len(rows[0]) + 1), np.nanmean(rows, 0), color=colors[g], lw=2,
                    label=g)
        for n, ls in (("unigram", ":"), ("bigram", "--"), ("trigram", "-.")):
            r = baselines[set_name][n].kl_by_string
            ax.plot(range(1, len(r) + 1), r, color="k", ls=ls, label=f"in-context {n}")
        ax.set_title(f"{set_name} automata")
        ax.set_xlabel("string index in context")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_yscale("log")
    axes[0].set_ylabel("KL(oracle || predictor), nats/token")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "icl_kl_by_string.png", dpi=110)
    plt.close(fig)
    # training curves
    fig, ax = plt.subplots(figsize=(6, 4))
    for (g, s), c in curves.items():
        ax.plot([x[0] for x in c], [x[1] for x in c], color=colors[g], alpha=0.6,
                label=g if s == spec["seeds"][0] else None)
    ax.axhline(baselines["heldout"]["oracle"].ce, color="k", ls="--", label="oracle CE (held-out)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/token)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "icl_training.png", dpi=110)
    plt.close(fig)
    # per-seed scatter: in-distribution loss vs OOD KL
    fig, ax = plt.subplots(figsize=(6, 4))
    for g, recs in groups.items():
        ax.scatter([r["val_ce"] for r in recs], [r["ood_kl"] for r in recs], color=colors[g],
                   label=g)
    ax.set_xlabel("held-out CE (nats/token)")
    ax.set_ylabel("KL on larger automata")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "icl_scatter.png", dpi=110)
    plt.close(fig)

    fam, ood = results["family"], results["ood_family"]
    L = [f"# In-context learning of random PDFAs ({spec['experiment']['name']})", "",
         spec["experiment"]["description"].strip(), "",
         f"Family: {fam['n_states']} states, {fam['alphabet_size']} symbols, density "
         f"{fam['density']}, {fam['strings_per_sequence']} strings per sequence (delimiter "
         f"'|'), sequences cut at {fam['max_length']} tokens. Off-distribution test: "
         f"{ood['n_states']} states. Each model: {spec['fit'].steps} steps, batch "
         f"{spec['train']['batch_size']}, {len(spec['seeds'])} seeds each (equal counts). "
         "Checkpoint rule: every seed is scored at its last step.", "",
         "KL is KL(oracle || predictor) per real token, where the oracle is the sequence's own "
         "automaton (exact). gap closed = 1 - KL(model) / KL(in-context bigram). Means with 95% "
         "bootstrap CIs over seeds.", "",
         "## Groups", "",
         "| group | train loss | held-out CE | held-out KL | gap closed | larger-automata KL | "
         "gap closed (larger) | valid mass (larger) |", "|---|---|---|---|---|---|---|---|"]
    for g, recs in groups.items():
        cols = ["train_loss", "val_ce", "val_kl", "val_gap_closed", "ood_kl", "ood_gap_closed",
                "ood_valid_mass"]
        L.append(f"| {g} | " + " | ".join(_fmt(_summary([r[c] for r in recs])) for c in cols)
                 + " |")
    bins = list(spec["eval"]["position_bins"])
    labels = [f"{a}-{b - 1}" for a, b in zip(bins, bins[1:])] + [f"{bins[-1]}+"]
    for set_name in ("heldout", "larger"):
        L += ["", f"KL by input position ({set_name} automata; mean over seeds):", "",
              "| group | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for g in groups:
            rows = np.array([by_string[(g, s, set_name, "pos")] for s in spec["seeds"]])
            L.append(f"| {g} | " + " | ".join(f"{v:.4f}" for v in np.nanmean(rows, 0)) + " |")
        for n in ("bigram",):
            L.append(f"| in-context {n} | " + " | ".join(
                f"{v:.4f}" for v in baselines[set_name][n].kl_by_position) + " |")
    L += ["", "## Exact references", "", "| predictor | held-out CE | held-out KL | larger CE | "
          "larger KL |", "|---|---|---|---|---|"]
    for n in ("oracle", "unigram", "bigram", "trigram"):
        a, b = baselines["heldout"][n], baselines["larger"][n]
        L.append(f"| {n} | {a.ce:.4f} | {a.kl:.4f} | {b.ce:.4f} | {b.kl:.4f} |")
    L += ["", "## Does equal loss mean equal in-context learning?", "",
          "Loss metric: held-out CE; compared: " + ", ".join(
              ["val_kl", "val_gap_closed", "ood_kl", "ood_gap_closed", "ood_valid_mass"])
          + f"; tolerance {spec['non_identifiability']['tolerance']} nats.", "", *ni_lines, "",
          "## Every seed", "", "| group | seed | train loss | held-out CE | held-out KL | "
          "larger KL | gap closed | gap closed (larger) |", "|---|---|---|---|---|---|---|---|"]
    for r in results["records"]:
        L.append(f"| {r['group']} | {r['seed']} | {r['train_loss']:.4f} | {r['val_ce']:.4f} | "
                 f"{r['val_kl']:.4f} | {r['ood_kl']:.4f} | {r['val_gap_closed']:.3f} | "
                 f"{r['ood_gap_closed']:.3f} |")
    L += ["", "![KL by string index](icl_kl_by_string.png)", "",
          "![training](icl_training.png)", "", "![scatter](icl_scatter.png)", "",
          f"Wall time: training {results['timing']['train_s']:.0f} s, total "
          f"{results['timing']['total_s']:.0f} s.", ""]
    (out / "report.md").write_text("\n".join(L))


# ============================================================================ fine-tuning
_FT_EXPERIMENT = {"name": "finetune-transfer", "kind": "finetune", "description": "",
                  "seeds": 8, "eval_seed": 10007}
_PHASE = {"language": None, "grammar": None, "steps": 600, "batch_size": 32, "lr": 3e-3,
          "warmup_steps": 0, "grad_clip": 1.0, "log_every": 25, "max_length": 34,
          "data_size": None}
_OOD = {"language": None, "grammar": None, "max_length": 48}
_FT_ANALYSIS = {"eval_size": 256, "tolerance": 0.01, "alpha": 0.05}


def _language(t: dict, chk: _Checker, where: str):
    import formal_lm
    if (t["language"] is None) == (t["grammar"] is None):
        chk.bad(f"[{where}] needs exactly one of 'language' (a shipped name or a path) and "
                "'grammar' (grammar file text)")
        return None
    try:
        if t["language"] is not None:
            return formal_lm.load(t["language"])
        return formal_lm.loads(t["grammar"], path=f"{chk.source} [{where}].grammar")
    except FormalLMError as e:
        for p in e.problems:
            chk.bad(f"[{where}]: {p.message}", p.fix)
        return None


def load_finetune_spec(path) -> dict:
    """The validated spec of a fine-tuning experiment file."""
    raw, chk = _read(path), _Checker(str(path))
    for k in raw:
        if k not in ("experiment", "pretrain", "finetune", "ood", "models", "groups", "analysis"):
            chk.bad(f"unknown table {k!r}")
    spec = {"experiment": chk.table(raw, "experiment", _FT_EXPERIMENT),
            "pretrain": chk.table(raw, "pretrain", _PHASE),
            "finetune": chk.table(raw, "finetune", _PHASE),
            "ood": chk.table(raw, "ood", _OOD),
            "analysis": chk.table(raw, "analysis", _FT_ANALYSIS),
            "models": chk.models(raw)}
    spec["seeds"] = _seeds(spec["experiment"]["seeds"], chk)
    spec["pre_fit"] = _fit_config(spec["pretrain"], chk, "pretrain")
    spec["ft_fit"] = _fit_config(spec["finetune"], chk, "finetune")
    if spec["pretrain"]["data_size"] is not None:
        chk.bad("pretrain.data_size is unused (pre-training draws fresh samples every step)")
    if spec["finetune"]["data_size"] is None:
        chk.bad("missing key 'finetune.data_size'", "the number of fine-tuning strings")
    spec["pre_lang"] = _language(spec["pretrain"], chk, "pretrain")
    spec["ft_lang"] = _language(spec["finetune"], chk, "finetune")
    spec["ood_lang"] = _language(spec["ood"], chk, "ood")
    langs = [x for x in (spec["pre_lang"], spec["ft_lang"], spec["ood_lang"]) if x is not None]
    if len({tuple(x.alphabet) for x in langs}) > 1:
        chk.bad("the pretrain, finetune and ood languages must share one alphabet "
                f"(got {[x.alphabet for x in langs]})",
                "pick same-alphabet pairs (e.g. anbn-short -> anbnan-short, dyck2 -> cs-dyck2)")
    groups = {}
    for g, t in raw.get("groups", {}).items():
        t = dict(t)
        for k in t:
            if k not in ("model", "rescale"):
                chk.bad(f"unknown key 'groups.{g}.{k}'", "allowed: ['model', 'rescale']")
        if t.get("model") not in spec["models"]:
            chk.bad(f"groups.{g}.model={t.get('model')!r} is not a [models.*] table")
        c = t.get("rescale", 1.0)
        if not (isinstance(c, (int, float)) and c > 0):
            chk.bad(f"groups.{g}.rescale={c!r} must be a number > 0")
        groups[g] = (t.get("model"), float(c) if isinstance(c, (int, float)) else 1.0)
    if not groups:
        chk.bad("no [groups.NAME] tables", "add e.g. [groups.transformer] model = 'transformer'")
    spec["groups"] = groups
    if spec["experiment"]["kind"] != "finetune":
        chk.bad(f"experiment.kind={spec['experiment']['kind']!r} must be 'finetune' here")
    chk.raise_if()
    return spec


def _param_distance(a, b) -> float:
    """||a - b|| / ||a|| over all parameters."""
    from flax import nnx
    import jax
    pa = jax.tree.leaves(nnx.state(a, nnx.Param))
    pb = jax.tree.leaves(nnx.state(b, nnx.Param))
    num = sum(float(np.sum((np.asarray(x) - np.asarray(y)) ** 2)) for x, y in zip(pa, pb))
    den = sum(float(np.sum(np.asarray(x) ** 2)) for x in pa)
    return math.sqrt(num / den)


def run_finetune_experiment(path, out_dir, *, progress: bool = True) -> dict:
    """Pre-trains, fine-tunes and compares every group of a fine-tuning file; writes the report.

    Returns:
        The results dict also written to ``out_dir/results.json``.
    """
    t_start = time.perf_counter()
    spec = load_finetune_spec(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pre, fin, oo = spec["pretrain"], spec["finetune"], spec["ood"]
    pre_lang, ft_lang, ood_lang = spec["pre_lang"], spec["ft_lang"], spec["ood_lang"]
    V = pre_lang.vocab.size
    ev = spec["analysis"]
    es = int(spec["experiment"]["eval_seed"])
    pre_eval = ft.language_batch(pre_lang, ev["eval_size"], seed=es, max_length=pre["max_length"])
    ft_eval = ft.language_batch(ft_lang, ev["eval_size"], seed=es + 1,
                                max_length=fin["max_length"])
    ood_eval = ft.language_batch(ood_lang, ev["eval_size"], seed=es + 2,
                                 max_length=oo["max_length"])
    pretrained: dict = {}
    records, pre_curves, ft_curves = [], {}, {}
    pre_s = ft_s = 0.0
    for g, (mkey, c) in spec["groups"].items():
        mname, mcfg = spec["models"][mkey]
        for s in spec["seeds"]:
            if (mkey, s) not in pretrained:
                _log(progress, f"pre-train {mkey} seed {s} on {pre_lang.name}")
                t0 = time.perf_counter()

                def pre_batches(step, s=s):
                    return ft.language_batch(pre_lang, pre["batch_size"],
                                             seed=derive(s, 11, step),
                                             max_length=pre["max_length"])

                model = build_model(mname, V, derive(s, 3), mcfg)
                res = fit(model, pre_batches, spec["pre_fit"])
                pre_s += time.perf_counter() - t0
                pretrained[(mkey, s)] = res.model
                pre_curves[(mkey, s)] = res.curve
            base = pretrained[(mkey, s)]
            start = ft.rescale(base, c) if c != 1.0 else base
            pre_kl, pre_loss = ft.exact_kl(start, pre_lang, pre_eval)
            data = ft.language_batch(ft_lang, fin["data_size"], seed=derive(s, 12),
                                     max_length=fin["max_length"])
            batches = ft.epoch_batches(data, fin["batch_size"], seed=s)
            # the check that fine-tuning starts from the pre-trained function: the loss of the
            # first fine-tuning step equals the pre-trained model's loss on that batch
            start_loss = mean_nll(base, batches(0))
            _log(progress, f"fine-tune {g} seed {s} on {ft_lang.name}")
            t0 = time.perf_counter()
            res = fit(start, batches, spec["ft_fit"])
            ft_s += time.perf_counter() - t0
            ft_kl, ft_loss = ft.exact_kl(res.model, ft_lang, ft_eval)
            ood_kl, ood_loss = ft.exact_kl(res.model, ood_lang, ood_eval)
            retain_kl, _ = ft.exact_kl(res.model, pre_lang, pre_eval)
            records.append({
                "group": g, "model": mkey, "rescale": c, "seed": s,
                "pre_loss": pre_loss, "pre_kl": pre_kl,
                "ft_kl": ft_kl, "ft_loss": ft_loss, "ood_kl": ood_kl, "ood_loss": ood_loss,
                "retain_kl": retain_kl,
                "ft_train_loss_final": res.curve[-1][1],
                "start_loss_gap": abs(res.first_loss - start_loss),
                "param_change": _param_distance(start, res.model)})
            ft_curves[(g, s)] = res.curve
    groups = {g: [r for r in records if r["group"] == g] for g in spec["groups"]}
    ni_json, ni_lines = _ni_section(groups, "pre_loss", ["ft_kl", "ood_kl", "retain_kl"],
                                    ev["tolerance"], ev["alpha"], es)
    results = {"experiment": spec["experiment"], "pretrain_language": pre_lang.name,
               "finetune_language": ft_lang.name, "ood_language": ood_lang.name,
               "floors": {"pretrain": pre_lang.optimal_loss().per_token,
                          "finetune": ft_lang.optimal_loss().per_token},
               "groups": {g: {"model": m, "rescale": c} for g, (m, c) in spec["groups"].items()},
               "models": {k: {"name": n, **cfg} for k, (n, cfg) in spec["models"].items()},
               "pretrain": pre, "finetune": fin, "seeds": list(spec["seeds"]),
               "records": records,
               "pretrain_curves": {f"{k[0]}|{k[1]}": v for k, v in pre_curves.items()},
               "finetune_curves": {f"{k[0]}|{k[1]}": v for k, v in ft_curves.items()},
               "non_identifiability": ni_json,
               "timing": {"pretrain_s": pre_s, "finetune_s": ft_s}}
    results["timing"]["total_s"] = time.perf_counter() - t_start
    _ft_report(results, spec, groups, ft_curves, ni_lines, out)
    results["timing"]["total_s"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=1))
    return _jsonable(results)


def _ft_report(results, spec, groups, ft_curves, ni_lines, out: Path):
    plt = _plt()
    _write_csv(results["records"], out / "results.csv")
    colors = dict(zip(groups, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for (g, s), c in ft_curves.items():
        ax.plot([x[0] for x in c], [x[1] for x in c], color=colors[g], alpha=0.6,
                label=g if s == spec["seeds"][0] else None)
    ax.axhline(results["floors"]["finetune"], color="k", ls="--", label="loss floor")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("fine-tuning training loss (nats/token)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "finetune_curves.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, m in zip(axes, ("ft_kl", "ood_kl", "retain_kl")):
        for g, recs in groups.items():
            ax.scatter([r["pre_loss"] for r in recs], [r[m] for r in recs], color=colors[g],
                       label=g)
        ax.set_xlabel("pre-training held-out loss (nats/token)")
        ax.set_ylabel(m)
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "finetune_scatter.png", dpi=110)
    plt.close(fig)

    tol = spec["analysis"]["tolerance"]
    pre_means = {g: _summary([r["pre_loss"] for r in recs]) for g, recs in groups.items()}
    spread = max(s["mean"] for s in pre_means.values()) - min(s["mean"] for s in pre_means.values())
    L = [f"# Fine-tuning transfer ({spec['experiment']['name']})", "",
         spec["experiment"]["description"].strip(), "",
         f"Pre-train on `{results['pretrain_language']}` ({spec['pre_fit'].steps} steps, fresh "
         f"samples), fine-tune on `{results['finetune_language']}` ({spec['finetune']['data_size']}"
         f" strings, {spec['ft_fit'].steps} steps, lr {spec['ft_fit'].lr}); OOD: "
         f"`{results['ood_language']}`. The languages share one alphabet, so the fine-tuned model"
         " keeps the pre-trained vocabulary. "
         f"{len(spec['seeds'])} seeds per group (equal counts); every seed is scored at its last "
         "step. KL = exact KL(true || model) per real token on held-out samples; means with 95% "
         "bootstrap CIs.", "",
         "Groups: " + "; ".join(f"`{g}` = {m}" + (f" reparametrised by c = {c:g} (same function,"
                                                   " different gradients)" if c != 1 else "")
                               for g, (m, c) in spec["groups"].items()), "",
         "## Pre-training loss per group", "",
         f"Stated tolerance: {tol} nats/token. Spread of group means: {spread:.4f} "
         f"({'within' if spread < tol else 'NOT within'} tolerance). A rescaled group has the "
         "same function as its base group, so its pre-training loss is identical.", "",
         "| group | pre-training loss | pre-training KL | fine-tuned KL | OOD KL | retained KL "
         "(pre-training language) | param change |", "|---|---|---|---|---|---|---|"]
    for g, recs in groups.items():
        L.append(f"| {g} | " + " | ".join(_fmt(_summary([r[c] for r in recs])) for c in (
            "pre_loss", "pre_kl", "ft_kl", "ood_kl", "retain_kl", "param_change")) + " |")
    L += ["", "## Equal pre-training loss, different fine-tuning?", "", *ni_lines, ""]
    paired = _paired_lines(spec, groups)
    if paired:
        L += ["Paired by seed (groups that fine-tune the SAME pre-trained model, one of them "
              "reparametrised): mean difference and exact two-sided sign-flip p over seeds.", "",
              "| pair | metric | mean diff (a - b) | seeds a > b | sign-flip p |",
              "|---|---|---|---|---|", *paired, ""]
    L += [
          "## Every seed", "",
          "| group | seed | pre loss | fine-tuned KL | OOD KL | retained KL | start check |",
          "|---|---|---|---|---|---|---|"]
    for r in results["records"]:
        L.append(f"| {r['group']} | {r['seed']} | {r['pre_loss']:.4f} | {r['ft_kl']:.4f} | "
                 f"{r['ood_kl']:.4f} | {r['retain_kl']:.4f} | {r['start_loss_gap']:.1e} |")
    L += ["", "start check: |first fine-tuning loss - the pre-trained model's loss on that batch|"
          " (0 up to float error: fine-tuning starts from the pre-trained function).", "",
          "![fine-tuning curves](finetune_curves.png)", "", "![scatter](finetune_scatter.png)", "",
          f"Wall time: pre-training {results['timing']['pretrain_s']:.0f} s, fine-tuning "
          f"{results['timing']['finetune_s']:.0f} s, total {results['timing']['total_s']:.0f} s.",
          ""]
    (out / "report.md").write_text("\n".join(L))


def sign_flip_p(diffs) -> float:
    """Exact two-sided p of mean(diffs) under random sign flips (paired permutation test)."""
    import itertools
    d = np.asarray(diffs, float)
    obs = abs(d.mean())
    flips = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    return float(np.mean(np.abs((flips * d).mean(1)) >= obs - 1e-12))


def _paired_lines(spec, groups) -> list[str]:
    out = []
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if spec["groups"][a][0] != spec["groups"][b][0] or len(spec["seeds"]) > 16:
                continue
            ra = {r["seed"]: r for r in groups[a]}
            rb = {r["seed"]: r for r in groups[b]}
            for m in ("ft_kl", "ood_kl", "retain_kl", "param_change"):
                d = [ra[s][m] - rb[s][m] for s in spec["seeds"]]
                out.append(f"| {a} vs {b} | {m} | {np.mean(d):+.4f} | "
                           f"{sum(x > 0 for x in d)}/{len(d)} | {sign_flip_p(d):.3g} |")
    return out
