"""Report helpers shared by every experiment kind: markdown tables of typed measures, the
statistics section, and plots (matplotlib, Agg).

Every seed is shown (per-seed tables, strip plots); summaries are mean ± std with a 95% t
interval over seeds (``analysis.summarize``); finish rates stand beside completion metrics
because the analyzers mark them ``headline``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from formal_lm.analysis import summarize
from formal_lm.analysis.measures import Measure
from formal_lm.experiments.records import SeedRecord, grouped
from formal_lm.experiments.spec import Experiment
from formal_lm.seeding import Stream, rng

ARROW = {True: " ↑", False: " ↓", None: ""}


def fmt(v, percent: bool = False, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if percent:
        return f"{100 * v:.1f}%"
    if isinstance(v, (int, np.integer)):
        return str(v)
    return f"{v:.{digits}g}"


def fmt_summary(values: Sequence, percent: bool = False) -> str:
    """mean ± std [95% t interval] of the finite values (– when none). A fraction's interval is
    cut to [0%, 100%], where its mean lies."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "–"
    s = summarize(v)
    if percent:
        lo, hi = max(s.ci_low, 0.0), min(s.ci_high, 1.0)
        std = "" if len(v) < 2 else f" ± {100 * s.std:.1f}"
        return f"{100 * s.mean:.1f}{std}% [{100 * lo:.1f}, {100 * hi:.1f}]"
    std = "" if len(v) < 2 else f" ± {fmt(s.std, digits=2)}"
    return f"{fmt(s.mean)}{std} [{fmt(s.ci_low)}, {fmt(s.ci_high)}]"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def _prototype(records: Sequence[SeedRecord], key: str) -> Measure | None:
    for r in records:
        if (m := r.measure(key)) is not None:
            return m
    return None


def column(records: Sequence[SeedRecord], key: str) -> str:
    """A column header: the key, its unit and its direction."""
    m = _prototype(records, key)
    if m is None:
        return key
    unit = "" if m.unit in ("fraction", "count", "flag") else f" ({m.unit})"
    return f"{key}{unit}{ARROW[m.higher_is_better]}"


def present(records: Sequence[SeedRecord], keys: Sequence[str]) -> list[str]:
    """The keys that some record has a value for."""
    return [k for k in keys if any(r.value(k) is not None for r in records)]


def summary_table(records: Sequence[SeedRecord], keys: Sequence[str]) -> list[str]:
    """Per group: seeds, then mean ± std [95% CI] of each key (keys without values left out)."""
    keys, rows = present(records, keys), []
    for g, rs in grouped(records).items():
        cells = []
        for k in keys:
            m = _prototype(rs, k)
            cells.append(fmt_summary([r.value(k) for r in rs], bool(m and m.percent)))
        rows.append([g, len(rs), *cells])
    return table(["group", "seeds", *[column(records, k) for k in keys]], rows)


def seed_table(records: Sequence[SeedRecord], keys: Sequence[str]) -> list[str]:
    """Every seed: one row per (group, seed) (keys without values left out)."""
    keys, rows = present(records, keys), []
    for r in records:
        cells = []
        for k in keys:
            m = r.measure(k)
            if m is not None and m.unit == "flag":
                cells.append("–" if m.value is None else ("yes" if m.value else "no"))
            else:
                cells.append(fmt(None if m is None else m.value, bool(m and m.percent)))
        rows.append([r.group, r.seed, *cells])
    return table(["group", "seed", *[column(records, k) for k in keys]], rows)


def descriptions(records: Sequence[SeedRecord], keys: Sequence[str]) -> list[str]:
    """A bullet per key (with a value): what it measures."""
    out = []
    for k in present(records, keys):
        m = _prototype(records, k)
        if m is not None:
            out.append(f"- `{k}`: {m.description} ({m.unit}{ARROW[m.higher_is_better]}).")
    return out


def _at(r) -> str:
    step = r.value("checkpoint.step")
    return "" if step is None else f" (step {step:g})"


def regime_section(reg, alpha: float) -> list[str]:
    """Which seeds the tables and claims use: the saturated ones, per group, and the rest with
    their KL (nothing when every seed is in)."""
    from formal_lm.analysis.stats import seeds_needed
    if reg.threshold is None:
        return []
    need = seeds_needed(alpha)
    rows = []
    for g, (n_in, n) in reg.counts().items():
        out = [f"seed {r.seed}: {fmt(r.value(reg.metric), digits=3)}{_at(r)}" for r in reg.outside
               if r.group == g]
        note = "" if n_in >= need else f"too few to test (a test needs {need})"
        rows.append([g, f"{n_in}/{n}", "; ".join(out) or "–", note])
    return ["## Regime: saturated seeds only", "",
            f"The claims are about models in the saturation regime: a seed enters the summary "
            f"tables and the statistics only when its `{reg.metric}` is below {reg.threshold:g} "
            "nats/token. The others are listed here with their KL (at the checkpoint the "
            "metrics are read from) and left out of every claim: they did not reach the "
            "threshold within the step budget.",
            "", *table(["group", "saturated", "left out (KL)", ""], rows), ""]


def comparison_section(cmp, title: str) -> list[str]:
    """The statistics of ``analysis.compare_groups``: per pair, loss equivalence (TOST at the
    margin) and each tested measure's difference, with power."""
    lines = [f"## {title}", "",
             f"Loss metric `{cmp.loss_metric}`; equivalence margin {cmp.margin:.4g} "
             f"({cmp.margin_rule}); alpha = {cmp.alpha:g}. \"Same loss\" means two one-sided "
             "Welch tests (TOST) put the difference of means inside the margin; \"different\" "
             "means a two-sided permutation test of the mean rejects; a pair whose groups are "
             "too small to reach alpha says so.", ""]
    rows = []
    for p in cmp.pairs:
        loss = (f"{p.loss.diff:+.4g} (90% CI [{p.loss.ci_low:.3g}, {p.loss.ci_high:.3g}], "
                f"TOST p = {p.loss.p:.2g})")
        for t in p.ood:
            d = t.test
            rows.append([f"{p.a} vs {p.b}", loss, "yes" if p.loss.equivalent else "no", t.metric,
                         f"{d.diff:+.4g}", f"{d.permutation_p:.2g}", f"{d.min_attainable_p:.2g}",
                         fmt(d.mde, digits=3), "yes" if d.differs else "no", p.verdict])
    lines += table(["pair", "loss diff", "same loss", "measure", "diff", "permutation p",
                    "min attainable p", "MDE (80% power)", "different", "verdict"], rows)
    return lines + ["", f"**Finding.** {cmp.statement}", ""]


# ----------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def strip_plot(records: Sequence[SeedRecord], key: str, path: Path, *,
               references: Mapping[str, float] = {}, published: Mapping[str, tuple] = {}
               ) -> str:
    """Every seed's value of ``key`` per group, with mean and 95% CI; horizontal reference
    lines; published (mean, std) per group as red triangles."""
    plt = _plt()
    groups = grouped(records)
    m = _prototype(records, key)
    k = 100 if m is not None and m.percent else 1
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(groups) + 2), 3.8))
    jitter = rng(0, Stream.PLOT)
    for i, (g, rs) in enumerate(groups.items()):
        ys = np.array([v for r in rs if (v := r.value(key)) is not None], float) * k
        ax.scatter(i + jitter.uniform(-0.15, 0.15, len(ys)), ys, s=18, alpha=0.8)
        if len(ys):
            s = summarize(ys)
            ax.errorbar(i + 0.3, s.mean, yerr=[[s.mean - s.ci_low], [s.ci_high - s.mean]],
                        fmt="ks", ms=4, capsize=3)
        if g in published:
            ax.errorbar(i - 0.3, published[g][0], yerr=published[g][1], fmt="r^", ms=5,
                        capsize=3)
    for j, (label, v) in enumerate(references.items()):
        ax.axhline(k * v, color=f"C{j + 5}", ls="--", lw=1, label=label)
    ax.set_xticks(range(len(groups)), list(groups), rotation=20, fontsize=7, ha="right")
    ax.set_ylabel(f"{key}{' (%)' if k == 100 else ''}")
    ax.set_title("Every seed (black: mean, 95% CI; red: published)", fontsize=9)
    if references:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path).name


def scatter_plot(records: Sequence[SeedRecord], xkey: str, ykey: str, path: Path, *,
                 title: str, logx: bool = True) -> str:
    """One point per seed, coloured by group."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    ky = 100 if (m := _prototype(records, ykey)) is not None and m.percent else 1
    for g, rs in grouped(records).items():
        pts = [(r.value(xkey), r.value(ykey)) for r in rs]
        pts = [(x, y) for x, y in pts if x is not None and y is not None]
        if pts:
            x, y = zip(*pts)
            ax.scatter(x, ky * np.array(y), s=20, alpha=0.8, label=g)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xkey)
    ax.set_ylabel(f"{ykey}{' (%)' if ky == 100 else ''}")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path).name


def read_curves(run_dir: Path, metric: str = "val_loss") -> dict[int, list[tuple[int, float]]]:
    """{seed: [(step, value), ...]} from a run's metrics.jsonl."""
    out: dict[int, list] = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if m.get(metric) is not None:
            out.setdefault(m["seed"], []).append((m["step"], m[metric]))
    return out


def curves_plot(runs: Mapping[str, Path], path: Path, *, floor: Mapping[str, float] = {},
                metric: str = "val_loss", marks: Mapping[str, list[tuple]] = {}) -> str:
    """One panel per run: ``metric`` per seed over steps, the exact floor dashed, and
    ``marks`` (e.g. the analysed checkpoints) as dots."""
    plt = _plt()
    n = len(runs)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, run_dir) in zip(axes.flat, runs.items()):
        for seed, pts in sorted(read_curves(run_dir, metric).items()):
            x, y = zip(*pts)
            ax.plot(x, y, lw=1, alpha=0.8, label=f"seed {seed}")
        for x, y in marks.get(name, []):
            ax.plot(x, y, "k.", ms=5)
        if name in floor and floor[name] is not None:
            ax.axhline(floor[name], color="k", ls="--", lw=1, label="exact optimum")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{metric} (nats/token)")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path).name


def header(ex: Experiment, timing: Mapping[str, float]) -> list[str]:
    """Title, description, the file, the checkpoint rule and the wall time."""
    rule = ("the checkpoint with the lowest validation loss (PAD-masked nats per real token "
            "on held-out samples)" if ex.checkpoint == "best" else "the last checkpoint")
    times = ", ".join(f"{k} {v:.0f} s" for k, v in timing.items())
    return [f"# {ex.name}", "", ex.description.strip(), "",
            f"- Experiment file: `{ex.source}`" + (" with its `[full]` table" if ex.full else ""),
            f"- **Checkpoint rule:** every metric is read at ONE checkpoint per seed: {rule}. "
            "Never a maximum over training.",
            f"- Analysis samples and prompts derive from eval seed {ex.eval_seed}.",
            f"- Wall time: {times}.", ""]
