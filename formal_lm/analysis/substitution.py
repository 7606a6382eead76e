"""Substitutivity, localism and overgeneralisation (Hupkes et al. 2020), each against the exact
language (see ``analysis.compositional`` for the other two properties).

Each test compares a model's next-token distributions at two places the exact language treats
alike, and only there: the exact rows (``lang.next_token_probs``) are checked equal first, so a
difference in the model is never a difference of the language.

- Substitutivity: twins x and y (substituting one occurrence of one for the other never changes
  a string's probability). For a string with a twin at position i, the rows after position i
  with x there and with y there are equal in the language; the model's rows are compared by
  KL(q_x || q_y) and by next-symbol sets.
- Localism: a constituent w in isolation (``BOS w``) and in context (``BOS c w``): at the
  positions inside w where the language's rows are equal, the model's are compared.
- Overgeneralisation: exception prefixes after which the language gives the rule's token
  probability 0; the model's probability of it, and how often it is its top choice, per
  checkpoint (a U-shaped curve over training shows as a rise and a fall).

Shape glossary: B batch, T positions, V vocabulary size.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from formal_lm.analysis import measures as M
from formal_lm.analysis.metrics import log_softmax, target_mask, token_kl
from formal_lm.analysis.predictor import call_model
from formal_lm.errors import FormalLMError, Problem
from formal_lm.seeding import Stream, derive

ATOL = 1e-9  # exact rows closer than this (max abs difference) count as equal


@dataclasses.dataclass(frozen=True)
class PairScores:
    """A model's rows at positions where the exact language's two rows are equal.

    Attributes:
        n_pairs: pairs of sequences compared.
        n_positions: positions scored (exact rows equal and non-zero on both sides).
        n_candidates: positions considered before the exact filter.
        kl_per_position: mean KL(model row of the first || model row of the second).
        set_agreement_per_position: share of positions with equal predicted sets.
        set_agreement_per_pair: share of pairs with equal sets at every scored position.
    """

    n_pairs: int
    n_positions: int
    n_candidates: int
    kl_per_position: float
    set_agreement_per_position: float
    set_agreement_per_pair: float

    def _measures(self, prefix: str, what: str) -> tuple[M.Measure, ...]:
        ood = M.OUT_OF_DISTRIBUTION
        return (M.nats(f"{prefix}_kl", self.kl_per_position, ood, f"KL between the model's "
                       f"next-token rows {what}, where the exact rows are equal",
                       headline=True, tested=True),
                M.fraction(f"{prefix}_set_agreement", self.set_agreement_per_pair, ood,
                           f"share of pairs whose predicted next-symbol sets agree {what}",
                           headline=True, tested=True),
                M.fraction(f"{prefix}_set_agreement_per_position",
                           self.set_agreement_per_position, ood,
                           f"share of positions whose predicted sets agree {what}"),
                M.count(f"{prefix}_n_positions", self.n_positions,
                        "positions scored (exact rows equal)"))


def _pair_scores(predictor, lang, firsts, seconds, offsets, *, threshold: float,
                 require_equal: bool, batch_size: int) -> PairScores:
    """Scores pairs of sequences: row t of ``firsts[k]`` against row t + ``offsets[k]`` of
    ``seconds[k]``, for every real target row t from the first's start on (``firsts``,
    ``seconds``: lists of (string, first row to score)), where the exact rows are equal; with
    ``require_equal`` a pair of unequal exact rows is an error instead of being skipped."""
    v = lang.vocab
    a_ids = v.batch([s for s, _ in firsts])
    b_ids = v.batch([s for s, _ in seconds])
    pa, pb = lang.next_token_probs(a_ids), lang.next_token_probs(b_ids)  # [B, T, V]
    qa = log_softmax(call_model(predictor, a_ids, batch_size=batch_size))
    qb = log_softmax(call_model(predictor, b_ids, batch_size=batch_size))
    ma, mb = target_mask(a_ids), target_mask(b_ids)
    kls, agree, per_pair, candidates = [], [], [], 0
    for k, ((_, start), off) in enumerate(zip(firsts, offsets)):
        ok_pair = True
        for t in range(start, a_ids.shape[1]):
            u = t + off
            if not ma[k, t] or u >= b_ids.shape[1] or not mb[k, u]:
                continue
            candidates += 1
            ra, rb = pa[k, t], pb[k, u]
            equal = ra.sum() > 0 and rb.sum() > 0 and np.abs(ra - rb).max() < ATOL
            if not equal:
                if require_equal:
                    raise FormalLMError(Problem(
                        f"the exact rows of {lang.name!r} differ after "
                        f"{firsts[k][0][:t]!r} and {seconds[k][0][:u]!r}",
                        "pass twins that the language treats alike (substituting one for the "
                        "other never changes a string's probability)"))
                continue
            kls.append(float(token_kl(np.exp(qa[k, t]), qb[k, u])))
            same = bool(np.all((np.exp(qa[k, t]) > threshold) == (np.exp(qb[k, u]) > threshold)))
            agree.append(same)
            ok_pair &= same
        per_pair.append(ok_pair)
    nan = float("nan")
    return PairScores(len(firsts), len(kls), candidates, float(np.mean(kls)) if kls else nan,
                      float(np.mean(agree)) if agree else nan,
                      float(np.mean(per_pair)) if per_pair else nan)


@dataclasses.dataclass(frozen=True)
class SubstitutivityResult:
    """The model's rows after one twin against those after the other (see ``PairScores``)."""

    twins: tuple[str, str]
    scores: PairScores
    threshold: float

    def measures(self) -> tuple[M.Measure, ...]:
        x, y = self.twins
        return self.scores._measures("substitutivity", f"after {x!r} and after {y!r}")


def twin_pairs(lang, strings, twins, train=None) -> list[tuple[tuple, tuple, int]]:
    """(s with x at i, s with y at i, i) for every occurrence i of a twin in each string; with
    ``train``, only occurrences where ``train`` gives the prefix ``s[:i] + (y,)`` probability 0
    (y never seen there)."""
    x, y = twins
    out = []
    for s in strings:
        s = lang.vocab.as_string(s)
        for i, a in enumerate(s):
            if a not in (x, y):
                continue
            sx, sy = s[:i] + (x,) + s[i + 1:], s[:i] + (y,) + s[i + 1:]
            if train is None or train.prefix_log_prob(sy[: i + 1]) == -math.inf:
                out.append((sx, sy, i))
    return out


def substitutivity(predictor, lang, twins: tuple[str, str], *, contexts, train=None,
                   n: int = 64, seed: int = 0, threshold: float = 0.01,
                   batch_size: int = 64) -> SubstitutivityResult:
    """KL and next-symbol-set agreement between the model's rows after twin x and after twin
    y, in the contexts of ``contexts`` (strings, or a language to sample ``n`` from with
    ``derive(seed, Stream.COMPOSITIONAL, 2)``): typically the held-out side of a split that
    showed y only in some contexts, with ``train`` its training side so that only occurrences
    of y never seen after their prefix count.

    Raises:
        FormalLMError: unknown twins, no occurrence to score, or rows of ``lang`` that differ
            after x and after y (they are not twins).
    """
    twins = tuple(twins)
    if len(twins) != 2 or twins[0] == twins[1] or not set(twins) <= set(lang.alphabet):
        raise FormalLMError(Problem(f"twins={twins!r} is not two symbols of {lang.name!r}",
                                    f"pick two of {lang.alphabet}"))
    if hasattr(contexts, "sample"):
        contexts = contexts.sample(n, seed=derive(seed, Stream.COMPOSITIONAL, 2))
    pairs = twin_pairs(lang, contexts, twins, train)
    if not pairs:
        raise FormalLMError(Problem(f"no occurrence of {twins!r} to score in the contexts",
                                    "pass contexts that hold the unseen twin"))
    firsts = [(sx, i + 1) for sx, _, i in pairs]
    seconds = [(sy, i + 1) for _, sy, i in pairs]
    scores = _pair_scores(predictor, lang, firsts, seconds, [0] * len(pairs),
                          threshold=threshold, require_equal=True, batch_size=batch_size)
    return SubstitutivityResult(twins, scores, threshold)


@dataclasses.dataclass(frozen=True)
class LocalismResult:
    """The model's rows inside constituents in context against in isolation (``PairScores``:
    first = in context, second = in isolation)."""

    scores: PairScores
    threshold: float

    def measures(self) -> tuple[M.Measure, ...]:
        return self.scores._measures("localism", "inside a constituent in context and alone")


def constituents(g, strings, label: str) -> list[tuple[tuple, tuple]]:
    """(context before it, its yield) for every node labelled ``label`` of the most probable
    parse (``pcfg.viterbi_parse``) of each string of the PCFG ``g``."""
    from formal_lm.pcfg import viterbi_parse
    out = []
    for s in strings:
        parse = viterbi_parse(g, s)
        if parse is None:
            continue
        stack = [(parse.tree, 0)]
        while stack:
            node, at = stack.pop()
            if node.label == label:
                out.append((g.vocab.as_string(s)[:at], node.leaves()))
            for c in node.children:
                if isinstance(c, str):
                    at += 1
                else:
                    stack.append((c, at))
                    at += len(c.leaves())
    return out


def localism(predictor, lang, pairs: Sequence[tuple], *, threshold: float = 0.01,
             batch_size: int = 64) -> LocalismResult:
    """For each (context c, part w) of ``pairs`` (e.g. from :func:`constituents`), the
    model's rows at the positions inside w on ``BOS c w`` against those on ``BOS w``, scored
    only where the exact rows of ``lang`` are equal (the language says the context does not
    matter there).

    Raises:
        FormalLMError: no pairs.
    """
    bad = [x for x in pairs if isinstance(x, str) or not hasattr(x, "__len__") or len(x) != 2]
    if bad:
        raise FormalLMError(Problem(f"pairs hold {bad[0]!r}, not a (context, part) pair",
                                    "pass constituents(g, strings, label)"))
    pairs = [(lang.vocab.as_string(c), lang.vocab.as_string(w)) for c, w in pairs]
    if not pairs:
        raise FormalLMError(Problem("no (context, part) pairs", "pass constituents(g, ...)"))
    firsts = [(c + w, len(c)) for c, w in pairs]
    seconds = [(w, 0) for _, w in pairs]
    scores = _pair_scores(predictor, lang, firsts, seconds, [-len(c) for c, _ in pairs],
                          threshold=threshold, require_equal=False, batch_size=batch_size)
    return LocalismResult(scores, threshold)


@dataclasses.dataclass(frozen=True)
class OvergeneralisationResult:
    """Per checkpoint, how a model treats the exceptions of a rule.

    Attributes:
        checkpoints: a label per predictor (e.g. the training step).
        rule_prob: mean model probability of the rule's token after the exception prefixes
            (the language gives it 0).
        rule_rate: share of exceptions where the rule's token is the model's top choice.
        exception_rate: share where the model's top choice is the language's most probable
            token.
        n_exceptions: exception prefixes scored.
    """

    checkpoints: tuple[str, ...]
    rule_prob: tuple[float, ...]
    rule_rate: tuple[float, ...]
    exception_rate: tuple[float, ...]
    n_exceptions: int

    def measures(self) -> tuple[M.Measure, ...]:
        ood = M.OUT_OF_DISTRIBUTION
        out = [M.Measure("overgeneralisation_rate", self.rule_rate[-1], "fraction", False, ood,
                         "share of exceptions where the last checkpoint's top choice is the "
                         "rule's token", headline=True, tested=True),
               M.Measure("overgeneralisation_prob", self.rule_prob[-1], "probability", False,
                         ood, "last checkpoint's mean probability of the rule's token on "
                         "exceptions (exactly 0 in the language)", tested=True),
               M.fraction("overgeneralisation_exception_acc", self.exception_rate[-1], ood,
                          "share of exceptions where the top choice is the language's")]
        if len(self.checkpoints) > 1:
            out.append(M.Measure("overgeneralisation_peak_rate", max(self.rule_rate),
                                 "fraction", False, ood, "the highest rate over checkpoints"))
            out += [M.Measure(f"overgeneralisation_rate[{c}]", r, "fraction", False, ood,
                              f"rate at checkpoint {c}")
                    for c, r in zip(self.checkpoints, self.rule_rate)]
        return tuple(out)


def _exception_rows(lang, exceptions) -> tuple[np.ndarray, list[int], list[int], list[int]]:
    """ids of the prefixes, their lengths, rule token ids and exact top token ids, checked."""
    v = lang.vocab
    prefixes, rules, problems = [], [], []
    bad = [e for e in exceptions if isinstance(e, str) or not hasattr(e, "__len__")
           or len(e) != 2]
    if bad:
        raise FormalLMError(Problem(f"exceptions hold {bad[0]!r}, not a (prefix, rule token) "
                                    "pair", "pass e.g. [(('d',), 'x')]"))
    for p, r in exceptions:
        p = v.as_string(p)
        if r not in lang.alphabet:
            problems.append(Problem(f"rule token {r!r} is not a symbol of {lang.name!r}"))
            continue
        if not lang.is_viable(p):
            problems.append(Problem(f"prefix {p!r} has probability 0 in {lang.name!r}",
                                    "pass prefixes of the language"))
        elif lang.next_token_dist(p)[r] > 0:
            problems.append(Problem(f"after {p!r} the language allows {r!r}: not an exception",
                                    "pass prefixes after which the rule's token is illegal"))
        prefixes.append(p)
        rules.append(v.id(r))
    if problems or not prefixes:
        raise FormalLMError(problems or [Problem("no exceptions", "pass (prefix, token) pairs")])
    ids = v.batch(prefixes, eos=False)
    exact = lang.next_token_probs(ids)
    top = [int(exact[k, len(p)].argmax()) for k, p in enumerate(prefixes)]
    return ids, [len(p) for p in prefixes], rules, top


def overgeneralisation(predictors, lang, exceptions: Sequence[tuple], *,
                       checkpoints: Sequence[str] | None = None,
                       batch_size: int = 64) -> OvergeneralisationResult:
    """How often the model applies a rule to its exceptions: for each (prefix, rule token) of
    ``exceptions`` (the language gives the token probability 0 after the prefix, checked), the
    model's probability of the token and whether it is its top choice; per predictor of
    ``predictors`` (one, or several checkpoints in training order, labelled ``checkpoints``).

    Raises:
        FormalLMError: an exception whose prefix is impossible or after which the language
            allows the rule's token; labels that do not match the predictors.
    """
    preds = list(predictors) if isinstance(predictors, (list, tuple)) else [predictors]
    labels = tuple(str(c) for c in checkpoints) if checkpoints is not None else tuple(
        str(i) for i in range(len(preds)))
    if len(labels) != len(preds) or not preds:
        raise FormalLMError(Problem(f"{len(labels)} checkpoint labels for {len(preds)} "
                                    "predictors", "pass one label per predictor"))
    ids, lengths, rules, top = _exception_rows(lang, exceptions)
    rows = np.arange(len(lengths))
    probs, rates, exc = [], [], []
    for pred in preds:
        q = np.exp(log_softmax(call_model(pred, ids, batch_size=batch_size)))[rows, lengths]
        best = q.argmax(-1)
        probs.append(float(q[rows, rules].mean()))
        rates.append(float((best == np.array(rules)).mean()))
        exc.append(float((best == np.array(top)).mean()))
    return OvergeneralisationResult(labels, tuple(probs), tuple(rates), tuple(exc), len(rows))
