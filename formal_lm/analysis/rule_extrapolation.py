"""Rule extrapolation (Meszaros et al. 2024; Reizinger et al. 2024, case study 1).

Prompts that break some of a language's rules are out of distribution (OOD). Does the model's
completion still satisfy the rules the prompt did not break? Every prompt over the alphabet of a
given length is enumerated (or sampled when there are too many), labelled by the rules it breaks
(``not rule.can_complete(prompt)``) and by whether it is OOD (``not lang.is_viable(prompt)``).
The full string (prompt + completion) is judged; completions that never emitted EOS count as
failures, and the finish rate is reported beside every figure.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from formal_lm.analysis import measures as M
from formal_lm.analysis.baselines import NGramModel, eos_model_fn
from formal_lm.analysis.decoding import Completions, complete
from formal_lm.errors import FormalLMError, Problem
from formal_lm.seeding import Stream, derive, rng

MAX_ENUMERATED = 4096


@dataclasses.dataclass(frozen=True)
class ClassResult:
    """Completions of the OOD prompts that break exactly ``broken`` rules.

    Attributes:
        broken: names of the rules these prompts break (empty: OOD without breaking a named rule).
        n_prompts: how many prompts are in the class.
        finish_rate: fraction of completions that emitted EOS.
        rule_accuracy: {rule name: fraction of prompts whose finished full string satisfies the
            rule}, for the rules NOT broken; unfinished completions count as failures.
        rule_accuracy_finished: the same among finished completions only (NaN when none finished).
    """

    broken: tuple[str, ...]
    n_prompts: int
    finish_rate: float
    rule_accuracy: dict[str, float]
    rule_accuracy_finished: dict[str, float]


@dataclasses.dataclass(frozen=True)
class ExtrapolationScores:
    """One completer (model or baseline) scored on a prompt set."""

    name: str
    headline_rule: str
    headline: float  # fraction of ALL OOD prompts whose completion satisfies the headline rule
    headline_finished: float  # the same among finished completions (NaN if none finished)
    finish_rate: float  # over OOD prompts
    id_accuracy: float  # in-distribution prompts completed into strings of the language
    id_finish_rate: float
    classes: tuple[ClassResult, ...]
    completions: Completions | None = dataclasses.field(default=None, repr=False, compare=False)

    def measures(self) -> tuple[M.Measure, ...]:
        ood, ind, h = M.OUT_OF_DISTRIBUTION, M.IN_DISTRIBUTION, self.headline_rule
        out = [M.fraction(f"ood_{h}", self.headline, ood, f"share of OOD prompts whose completion "
                          f"finished (emitted EOS) and satisfies {h}", headline=True, tested=True),
               M.fraction("ood_finish_rate", self.finish_rate, ood,
                          "share of OOD prompts whose completion emitted EOS", headline=True),
               M.fraction(f"ood_{h}_finished", self.headline_finished, ood,
                          f"share of finished OOD completions that satisfy {h}"),
               M.fraction("id_accuracy", self.id_accuracy, ind, "share of in-distribution "
                          "prompts completed into strings of the language"),
               M.fraction("id_finish_rate", self.id_finish_rate, ind,
                          "share of in-distribution prompts whose completion emitted EOS")]
        for c in self.classes:
            tag = "+".join(c.broken) or "none"
            out += [M.fraction(f"ood[{tag}]_{rule}", v, ood, f"OOD prompts breaking {tag}: "
                               f"share whose finished completion satisfies {rule}")
                    for rule, v in c.rule_accuracy.items()]
        return tuple(out)


@dataclasses.dataclass(frozen=True)
class RuleExtrapolationResult:
    """Rule extrapolation of a model, with the EOS and n-gram baselines on the same prompts.

    Attributes:
        prompt_length: prompt length in symbols.
        n_prompts, n_ood, n_id: prompt counts (all, out of distribution, in distribution).
        enumerated: True when every prompt of that length was used, False when sampled.
        decoding, max_new_tokens: how completions were made.
        model, eos_baseline, ngram_baseline: scores (a baseline is None when disabled).
    """

    prompt_length: int
    n_prompts: int
    n_ood: int
    n_id: int
    enumerated: bool
    decoding: str
    max_new_tokens: int
    model: ExtrapolationScores
    eos_baseline: ExtrapolationScores | None
    ngram_baseline: ExtrapolationScores | None

    def measures(self) -> tuple[M.Measure, ...]:
        return self.model.measures() + (M.count("n_ood", self.n_ood, "OOD prompts scored"),)


def prompt_set(lang, prompt_length: int, *, max_prompts: int = MAX_ENUMERATED, seed: int = 0):
    """All strings over the alphabet of ``prompt_length`` (or ``max_prompts`` distinct samples).

    Returns (prompts, enumerated).
    """
    A = lang.alphabet
    total = len(A) ** prompt_length
    if total <= max_prompts:
        return [tuple(p) for p in itertools.product(A, repeat=prompt_length)], True
    gen = rng(seed, Stream.PROMPTS)
    if total < 2 ** 62:  # distinct codes drawn exactly, decoded to symbols
        digits = [np.unravel_index(int(c), (len(A),) * prompt_length)
                  for c in gen.choice(total, size=max_prompts, replace=False)]
    else:  # uniform symbols, duplicates redrawn (each set of distinct prompts equally likely)
        seen: dict[tuple, None] = {}
        while len(seen) < max_prompts:
            for row in gen.integers(0, len(A), size=(max_prompts, prompt_length)):
                if len(seen) < max_prompts:
                    seen.setdefault(tuple(int(x) for x in row))
        digits = list(seen)
    return sorted(tuple(A[int(d)] for d in ds) for ds in digits), False


def label_prompts(lang, prompts):
    """[(broken rule names, is_ood)] per prompt."""
    return [(tuple(r.name for r in lang.rules if not r.can_complete(p)), not lang.is_viable(p))
            for p in prompts]


def score_completions(name: str, lang, comps: Completions, labels) -> ExtrapolationScores:
    """Scores completions of labelled prompts; unfinished completions count as failures."""
    if not lang.rules:
        raise FormalLMError(Problem(f"language {lang.name!r} has no rules",
                                    "rule extrapolation needs named rules"))
    strings, fin = comps.strings, np.array(comps.finished, bool)
    ood = np.array([o for _, o in labels], bool)
    head = lang.rules[0]
    holds = {r.name: np.array([r.holds(s) for s in strings], bool) for r in lang.rules}
    classes = []
    for broken in sorted({b for (b, o) in labels if o}, key=lambda b: (len(b), b)):
        sel = ood & np.array([b == broken for b, _ in labels])
        acc, acc_f = {}, {}
        for r in lang.rules:
            if r.name in broken:
                continue
            ok = holds[r.name] & fin
            acc[r.name] = float(ok[sel].mean())
            acc_f[r.name] = float(ok[sel & fin].mean()) if (sel & fin).any() else float("nan")
        classes.append(ClassResult(broken, int(sel.sum()), float(fin[sel].mean()), acc, acc_f))
    ok_head = holds[head.name] & fin
    in_lang = np.array([lang.accepts(s) for s in strings], bool) & fin
    nan = float("nan")
    return ExtrapolationScores(
        name=name, headline_rule=head.name,
        headline=float(ok_head[ood].mean()) if ood.any() else nan,
        headline_finished=float(ok_head[ood & fin].mean()) if (ood & fin).any() else nan,
        finish_rate=float(fin[ood].mean()) if ood.any() else nan,
        id_accuracy=float(in_lang[~ood].mean()) if (~ood).any() else nan,
        id_finish_rate=float(fin[~ood].mean()) if (~ood).any() else nan,
        classes=tuple(classes), completions=comps)


def rule_extrapolation(predictor, lang, *, prompt_length: int = 8,
                       max_new_tokens: int = 300, decoding: str = "greedy",
                       prompts: Sequence | None = None, max_prompts: int = MAX_ENUMERATED,
                       seed: int = 0, ngram_n: int | None = 3, ngram_train: int = 2000,
                       ngram_k: float = 0.1, train_strings: Sequence | None = None,
                       baselines: bool = True, batch_size: int = 256) -> RuleExtrapolationResult:
    """Completes every prompt of ``prompt_length`` and scores rule extrapolation.

    Args:
        predictor: ids [B, T] -> logits [B, T, V] (anything ``as_predictor`` accepts).
        lang: the language (its ``rules``; the first rule is the headline rule "R1").
        prompt_length: symbols per prompt (ignored when ``prompts`` is given).
        max_new_tokens: generation budget (EOS included).
        decoding: "greedy" or "sample".
        prompts: explicit prompts (e.g. a held-out split); labelled the same way.
        max_prompts: enumerate when |alphabet| ** prompt_length <= max_prompts, else sample.
        seed: the analysis seed (prompt sampling, sampled decoding, n-gram training strings).
        ngram_n: order of the n-gram baseline (None: no n-gram baseline).
        ngram_train, train_strings: the n-gram baseline is fitted on ``train_strings`` or on
            ``ngram_train`` samples of the language (``derive(seed, Stream.NGRAM)``).
        baselines: False skips both baselines (e.g. when they were computed once per prompt set).

    Returns:
        ``RuleExtrapolationResult``; ``model.headline`` is the ICML figure: over ALL OOD prompts,
        the fraction whose completion emitted EOS and satisfies R1.
    """
    if prompts is None:
        prompts, enumerated = prompt_set(lang, prompt_length, max_prompts=max_prompts, seed=seed)
    else:
        prompts, enumerated = [lang.vocab.as_string(p) for p in prompts], False
        prompt_length = max((len(p) for p in prompts), default=0)
    labels = label_prompts(lang, prompts)

    def run(name, fn):
        comps = complete(fn, lang, prompts, max_new_tokens=max_new_tokens, decoding=decoding,
                         seed=seed, batch_size=batch_size)
        return score_completions(name, lang, comps, labels)

    model = run("model", predictor)
    eos = run("emit EOS immediately", eos_model_fn(lang)) if baselines else None
    ngram = None
    if ngram_n is not None and baselines:
        train = (train_strings if train_strings is not None
                 else lang.sample(ngram_train, seed=derive(seed, Stream.NGRAM)))
        ng = NGramModel(ngram_n, k=ngram_k).fit(train, lang.vocab)
        ngram = run(f"{ngram_n}-gram (add-{ngram_k})", ng)
    n_ood = sum(o for _, o in labels)
    return RuleExtrapolationResult(prompt_length, len(prompts), n_ood, len(prompts) - n_ood,
                                   enumerated, decoding, max_new_tokens, model, eos, ngram)
