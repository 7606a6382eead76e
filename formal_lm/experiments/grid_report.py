"""The report of a grid experiment: report.md, results.csv, results.json and plots.

Published numbers come from the experiment file's ``[published]`` table, never from files
outside the package.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from formal_lm.experiments import report as R
from formal_lm.experiments.compositional import is_split
from formal_lm.experiments.compositional import section as compositional_section
from formal_lm.experiments.records import (SeedRecord, grouped, jsonable, keys_where,
                                           records_json, regime_json, write_csv, write_json)
from formal_lm.experiments.spec import Experiment


def _headline(records: Sequence[SeedRecord]) -> list[str]:
    return keys_where(records, lambda m: m.headline)


def _first_tested(records: Sequence[SeedRecord]) -> str | None:
    keys = keys_where(records, lambda m: m.tested)
    return keys[0] if keys else None


def _grid_table(ex: Experiment, cells) -> list[str]:
    rows = []
    for c in cells:
        mc = ", ".join(f"{k}={v}" for k, v in ex.models[c.model].items())
        oc = ", ".join(f"{k}={v}" for k, v in ex.study.objectives[c.objective].items())
        rows.append([c.name, mc, oc, c.result.step, len(c.result.seeds),
                     f"{c.result.wall_time:.0f}"])
    return ["## Grid", "", *R.table(["cell", "model", "objective", "steps", "seeds",
                                     "train s (this call; ~0 when an earlier run was reused)"],
                                    rows), ""]


def _baselines(per_language: Mapping) -> list[str]:
    rows = []
    for lang, info in per_language.items():
        for key, r in info["baselines"].items():
            for sc in (r.eos_baseline, r.ngram_baseline):
                if sc is not None:
                    rows.append([lang, f"{key} ({r.n_ood} OOD)", sc.name, R.fmt(sc.headline, True),
                                 R.fmt(sc.finish_rate, True)])
    if not rows:
        return []
    return ["## Baselines (same prompts)", "",
            *R.table(["language", "prompts", "baseline", "OOD headline rule", "finish rate"],
                     rows), ""]


def _published(ex: Experiment, records, per_language, key: str | None) -> list[str]:
    pub = ex.published
    if not pub or not key:
        return []
    lines = ["## Published numbers beside ours", "",
             f"Source: {pub.get('citation', '?')}. {pub.get('source', '')}", ""]
    groups = grouped(records)
    all_key = key.replace(".heldout.", ".all.")
    rows = []
    for okey, row in (pub.get("rows") or {}).items():
        recs = [r for g, rs in groups.items() if g.endswith(f".{okey}") for r in rs]
        pm, pl = row.get("ood_R1_pct"), row.get("val_loss")
        rows.append([okey, row.get("model", "–"), row.get("seeds", "–"),
                     f"{pm[0]} ± {pm[1]}%" if pm else "–", f"{pl[0]} ± {pl[1]}" if pl else "–",
                     len(recs), R.fmt_summary([r.value(key) for r in recs], True),
                     R.fmt_summary([r.value(all_key) for r in recs], True),
                     R.fmt_summary([r.value("checkpoint.val_loss") for r in recs])])
    if rows:
        lines += R.table(["group", "published model", "published seeds", "published OOD R1",
                          "published val loss", "ours: seeds", f"ours: {key}",
                          f"ours: {all_key}", "ours: val loss"], rows)
    lines += _published_grid(pub, groups, key)
    if "baseline_eos_pct" in pub:
        ours = [f"{lang}: " + ", ".join(f"{R.fmt(r.eos_baseline.headline, True)} of the "
                                        f"{r.n_ood} {k} OOD prompts"
                                        for k, r in info["baselines"].items())
                for lang, info in per_language.items() if info["baselines"]]
        lines += ["", f"Emit-EOS baseline: published {pub['baseline_eos_pct']}%; ours "
                  + "; ".join(ours) + "."]
    for k in ("setup", "loss_note"):
        if pub.get(k):
            lines += ["", ("**What differs in the setup.** " if k == "setup" else "") + pub[k]]
    return lines + [""]


def _published_grid(pub: Mapping, groups, key: str) -> list[str]:
    grid = pub.get("grid") or {}
    if not grid:
        return []
    langs = list(dict.fromkeys(g.rsplit(".", 2)[0] for g in groups))
    rows = []
    for arch, row in grid.items():
        cells = []
        for lang in langs:
            pv = row.get(lang)
            recs = [r for g, rs in groups.items() if g.startswith(f"{lang}.{arch}.") for r in rs]
            vals = [v for r in recs if (v := r.value(key)) is not None]
            ours = f"{100 * np.mean(vals):.1f} ± {100 * np.std(vals, ddof=1):.1f}" \
                if len(vals) > 1 else "–"
            cells.append(f"{f'{pv[0]} ± {pv[1]}' if pv else '–'} / {ours}")
        rows.append([arch, *cells])
    return ["", "Published mean ± std / ours mean ± std (OOD R1, %):", "",
            *R.table(["model", *langs], rows)]


def _length(records: Sequence[SeedRecord]) -> list[str]:
    lines = []
    for g, rs in grouped(records).items():
        res = [r.results.get("length_generalization") for r in rs]
        if not res or res[0] is None:
            continue
        for kind in ("length_bins", "depth_bins"):
            bins = getattr(res[0], kind)
            if not bins:
                continue
            head = [f"{b.lo}-{b.hi}{'*' if b.in_training_range else ''}" for b in bins]
            vals = []
            for j in range(len(bins)):
                acc = [getattr(x, kind)[j].set_accuracy_per_string for x in res]
                kl = [getattr(x, kind)[j].kl_per_token for x in res]
                vals.append(f"{R.fmt(np.nanmean(acc), True)} / {R.fmt(np.nanmean(kl), digits=3)}")
            lines += [f"**{g}** ({kind.split('_')[0]})", "", *R.table(head, [vals]), ""]
    if not lines:
        return []
    return ["## Length generalization (mean over seeds)", "",
            "Next-symbol-set accuracy per string / exact KL nats per token, per length bin (and "
            "per nesting-depth bin for bracket languages); * marks bins inside the training "
            "range.", "", *lines]


def _plots(ex, out: Path, cells, records, per_language, key) -> list[str]:
    marks = {c.name: [(r.value("checkpoint.step"), r.value("checkpoint.val_loss"))
                      for r in records if r.group == c.name
                      and r.value("checkpoint.step") is not None] for c in cells}
    floors = {c.name: per_language[c.language_name]["optimal_loss"] for c in cells}
    if not cells:  # nothing has finished yet (a merge before the jobs are done)
        return []
    plots = [R.curves_plot({c.name: c.run_dir for c in cells}, out / "training_curves.png",
                           floor=floors, marks=marks)]
    if key:
        refs = {}
        for lang, info in per_language.items():
            for k, r in info["baselines"].items():
                if k == "heldout" or len(info["baselines"]) == 1:
                    refs[f"emit EOS ({lang})"] = r.eos_baseline.headline
                    if r.ngram_baseline is not None:
                        refs[f"{r.ngram_baseline.name} ({lang})"] = r.ngram_baseline.headline
        pub = {g: tuple(row["ood_R1_pct"]) for g in grouped(records)
               for o, row in (ex.published.get("rows") or {}).items()
               if g.endswith(f".{o}") and row.get("ood_R1_pct")}
        plots.append(R.strip_plot(records, key, out / "ood_per_seed.png", references=refs,
                                  published=pub))
        plots.append(R.scatter_plot(records, "saturation.kl", key, out / "kl_vs_ood.png",
                                    title="Equal in distribution, different out of it?"))
    return plots


def write_grid_report(ex: Experiment, out: Path, cells, records: list[SeedRecord],
                      per_language: Mapping, timing: Mapping, missing: Sequence[str] = ()
                      ) -> dict:
    """Writes report.md, results.csv, results.json and the plots; returns the results."""
    out = Path(out)
    key = _first_tested(records)
    head = _headline(records)
    inside = [r for info in per_language.values() for r in info["regime"].inside]
    lines = R.header(ex, timing)
    if missing:
        lines += ["**Missing cells** (no finished run in `runs/` yet; not in this report): "
                  + ", ".join(f"`{m}`" for m in missing), ""]
    lines += _grid_table(ex, cells)
    for info in per_language.values():
        lines += R.regime_section(info["regime"], ex.statistics.alpha)
    lines += ["## Summary (mean ± std [95% t interval] over the seeds in the regime)", "",
              *R.summary_table(inside, head), "", *R.descriptions(records, head), ""]
    if "compositional" in ex.analysis:
        splits = {name: info["language"] for name, info in per_language.items()
                  if is_split(info.get("language"))}
        lines += compositional_section(records, inside, splits, out)
    lines += _baselines(per_language) + _published(ex, inside, per_language, key)
    for lang, info in per_language.items():
        if info["statistics"] is not None:
            lines += R.comparison_section(info["statistics"], f"Same loss, different behaviour? "
                                                              f"({lang})")
    lines += _length(records)
    lines += ["## Every seed", "", *R.seed_table(records, head), "",
              "Every measure of every seed is in `results.csv` and `results.json`.", "",
              "## Plots", ""]
    lines += [f"![{p}]({p})" for p in _plots(ex, out, cells, records, per_language, key)]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    write_csv(records, out / "results.csv")
    results = {"experiment": ex.name, "kind": ex.kind, "source": ex.source, "full": ex.full,
               "checkpoint": ex.checkpoint, "eval_seed": ex.eval_seed,
               "cells": [{"cell": c.name, "language": c.language, "model": c.model,
                          "objective": c.objective, "run_dir": str(c.run_dir.relative_to(out)),
                          "steps": c.result.step, "train_s": c.result.wall_time}
                         for c in cells],
               "languages": {lang: {"optimal_loss": info["optimal_loss"],
                                    "ood_split": info["split"],
                                    "baselines": info["baselines"],
                                    "regime": regime_json(info["regime"]),
                                    "statistics": info["statistics"]}
                             for lang, info in per_language.items()},
               "records": records_json(records), "missing_cells": list(missing),
               "timing": dict(timing)}
    write_json(results, out / "results.json")
    return jsonable(results)
