"""Hupkes et al.'s (2020) five compositionality properties in a grid experiment.

A grid experiment with ``[analysis.compositional]`` runs the five analyzers of
``formal_lm.analysis.compositional`` / ``substitution`` on every cell whose language is a
split (a grammar file of ``kind = "split"``: the language trained on is ``split.train``, with
``split`` and ``probes`` attached, see ``formal_lm.grammar_split``). Each property is measured
where the split defines it:

- systematicity: the held-out side of the split (every string of a finite one, once), against
  the full language's rows;
- productivity: strings of the training language longer than any trained on (lengths past
  ``train_max_length``), against its rows; not defined when it has no longer strings;
- substitutivity: a ``twin`` split's synonyms, after prefixes training never showed the twin in;
- localism: constituents labelled ``probes.constituent`` of training-language strings, in
  context and alone, where the training language's rows agree (PCFG splits; the full
  language's rows would also count positions where the split itself makes context matter);
- overgeneralisation: the ``probes.exceptions``, at the analysed checkpoint.

The report section puts one row per cell and one column per property (mean ± std [95% t
interval] over the seeds in the saturation regime), beside Hupkes et al.'s setting.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from formal_lm.analysis import (constituents, localism, overgeneralisation, productivity,
                                substitutivity, systematicity)
from formal_lm.count_splits import FiniteLanguage
from formal_lm.experiments import report as R
from formal_lm.experiments.records import SeedRecord, grouped
from formal_lm.seeding import Stream, derive

# property -> (the measure of its table column, what it needs of a split when it is missing)
PROPERTIES = {
    "systematicity": ("systematicity.systematicity_set_acc", "a split"),
    "productivity": ("productivity.productivity_set_acc", "training strings shorter than the "
                     "language's longest"),
    "substitutivity": ("substitutivity.substitutivity_set_agreement", "a twin split"),
    "localism": ("localism.localism_set_agreement", "a constituent label (PCFG)"),
    "overgeneralisation": ("overgeneralisation.overgeneralisation_rate", "listed exceptions"),
}
KL_COLUMNS = ("systematicity.systematicity_kl", "productivity.productivity_kl")

HUPKES = {  # their setting (Hupkes et al. 2020, JAIR 67) beside ours, property by property
    "systematicity": ("PCFG SET: test inputs combine function pairs never seen together in "
                      "training; sequence accuracy of the output", "strings of the held-out side "
                      "of the split; share of strings with every next-symbol set right, exact KL"),
    "productivity": ("inputs longer (more functions) than any in training; sequence accuracy",
                     "training-language strings longer than any trained on; share of strings "
                     "with every set right, exact KL"),
    "substitutivity": ("synonyms added for some functions, one seen in fewer contexts; "
                       "consistency of the outputs for the two inputs",
                       "the twin's next-token rows against the symbol's, after prefixes where "
                       "training never showed the twin and the exact rows are equal"),
    "localism": ("the output of a whole input against outputs computed for its parts "
                 "(evaluated bottom up); consistency", "rows inside a constituent of a training "
                 "string in context against the same constituent alone, where the training "
                 "language's exact rows are equal"),
    "overgeneralisation": ("exceptions to a rule in the training data; how often the rule's "
                           "output is produced for them, over training", "after exception "
                           "prefixes (the rule's token has probability 0), how often it is the "
                           "model's top token, at the analysed checkpoint"),
}


def is_split(lang) -> bool:
    """Whether ``lang`` is the training side of a split file (it carries ``split``)."""
    return getattr(lang, "split", None) is not None


def analyze(model, lang, options: Mapping, *, seed: int, train_max_length: int) -> dict:
    """The properties the split of ``lang`` defines, on one model: {property: result}.

    ``options``: ``n`` (samples, default 64), ``threshold`` (next-symbol sets, 0.01),
    ``per_bin`` (productivity strings per length bin, 32), ``test_lengths`` ([lo, hi],
    default past ``train_max_length`` by 16). Localism parses ``n`` samples of the training
    language drawn with ``derive(seed, Stream.COMPOSITIONAL, 3)``.
    """
    split, probes = lang.split, lang.probes
    n, thr = options.get("n", 64), options.get("threshold", 0.01)
    # a finite held-out side (count combinations) is scored string by string, each once
    every = list(split.held_out.probs) if isinstance(split.held_out, FiniteLanguage) else None
    out = {"systematicity": systematicity(model, split, n=n, seed=seed, threshold=thr,
                                          strings=every)}
    lo, hi = options.get("test_lengths", (train_max_length + 1, train_max_length + 16))
    train = split.train
    if float(train.length_distribution(train_max_length).sum()) < 1 - 1e-9:
        out["productivity"] = productivity(
            model, train, train_max_length=train_max_length, test_lengths=range(lo, hi + 1),
            per_bin=options.get("per_bin", 32), threshold=thr, seed=seed)
    if probes.twins is not None:
        out["substitutivity"] = substitutivity(model, split.full, probes.twins,
                                               contexts=split.held_out, train=train, n=n,
                                               seed=seed, threshold=thr)
    if probes.constituent is not None:  # the training language: where its rows agree
        strings = train.sample(n, seed=derive(seed, Stream.COMPOSITIONAL, 3))
        pairs = [(c, w) for c, w in constituents(train, strings, probes.constituent) if c]
        if pairs:
            out["localism"] = localism(model, train, pairs, threshold=thr)
    if probes.exceptions:
        out["overgeneralisation"] = overgeneralisation(model, split.full, probes.exceptions)
    return out


def section(records: Sequence[SeedRecord], inside: Sequence[SeedRecord], langs: Mapping,
            out: Path) -> list[str]:
    """The report section: the five properties by cell (regime seeds), Hupkes et al.'s setting
    beside ours, and a strip plot per property. ``langs``: {language name: split language}."""
    if not langs:
        return []
    cols = [key for key, _ in PROPERTIES.values()]
    keys = cols[:1] + [KL_COLUMNS[0]] + cols[1:2] + [KL_COLUMNS[1]] + cols[2:]
    rows = []
    ins = grouped(inside)
    for g, rs in grouped(records).items():
        mine = ins.get(g, [])
        cells = []
        for k in keys:
            vals = [r.value(k) for r in mine]
            if all(r.value(k) is None for r in rs):
                cells.append(f"n/a (needs {PROPERTIES[k.split('.')[0]][1]})")
            else:
                m = rs[0].measure(k)
                cells.append(R.fmt_summary(vals, bool(m and m.percent)))
        rows.append([g, f"{len(mine)}/{len(rs)}", *cells])
    split_rows = [[name, lang.split.full.name, lang.split.excluded,
                   f"{lang.split.held_out_mass:.4g}"] for name, lang in langs.items()]
    lines = ["## Compositionality (Hupkes et al. 2020): five properties by architecture", "",
             "Each property is a language-modelling test against the exact language: set "
             "accuracy is the share of strings (or pairs) with every next-symbol set right "
             "(threshold 0.01), KL is exact, nats per token. Mean ± std [95% t interval] over "
             "the seeds in the saturation regime (column 'seeds'); every seed is in "
             "`results.csv`. The difference and equivalence tests of these measures between "
             "architectures are in the 'Same loss, different behaviour?' sections. A model "
             "that matches the training language exactly gives the held-out part probability "
             "0 where it begins, so its systematicity set accuracy is 0: the KL says how far "
             "it is from the full language there.", "",
             *R.table(["language", "split of", "held out", "held-out mass"], split_rows), "",
             *R.table(["cell", "seeds", *[R.column(records, k) for k in keys]], rows), "",
             "### The setting beside Hupkes et al. (2020)", "",
             "Hupkes et al. train sequence-to-sequence models (LSTM, ConvS2S, Transformer) to "
             "translate PCFG SET inputs (string-editing functions) into their outputs and score "
             "output accuracy or consistency; here language models learn one exact "
             "distribution and every score is against its exact next-token rows.", "",
             *R.table(["property", "Hupkes et al. 2020", "here"],
                      [[p, *HUPKES[p]] for p in PROPERTIES]), ""]
    plots = [R.strip_plot(inside, k, out / f"compositional_{k.split('.')[0]}.png")
             for k in cols if any(r.value(k) is not None for r in inside)]
    return lines + [f"![{p}]({p})" for p in plots] + [""]
