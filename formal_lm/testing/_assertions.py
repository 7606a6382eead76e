"""Property assertions over any model function ``model_fn(ids [B, T] int) -> logits [B, T, V]``.

Each assertion runs a hypothesis search (``hypothesis.find``) for an input on which the model
breaks the claim; the search shrinks that input, and the AssertionError shows the minimal one
with what the model did. ``max_examples`` bounds how many inputs are tried.

Shape glossary: B batch (1 here), T positions, V vocabulary size.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from formal_lm.analysis.decoding import complete
from formal_lm.analysis.metrics import log_softmax, token_kl
from formal_lm.analysis.predictor import call_model
from formal_lm.errors import FormalLMError, Problem
from formal_lm.testing._strategies import ood_prompts, strings as strings_strategy
from formal_lm.testing._validation import check, rule_problems
from formal_lm.vocab import BOS_ID, EOS, EOS_ID, PAD_ID

ModelFn = Callable[[np.ndarray], "np.ndarray"]
DECODINGS = ("greedy", "sample")


def _logits(model_fn: ModelFn, ids: Sequence[int]) -> np.ndarray:
    """Logits [T, V] of one sequence (``analysis.call_model`` pads it to a bucketed width)."""
    row = np.asarray([ids], np.int32)
    try:
        out = call_model(model_fn, row)
    except FormalLMError as e:
        check(list(e.problems))
    if out.ndim != 3:  # call_model checks only the [B, T] part of the shape
        check([Problem(f"model_fn returned logits of shape {out.shape} for ids of shape "
                       f"{row.shape}", "a model function maps ids [B, T] to logits [B, T, V]")])
    return out[0]


def greedy_complete(model_fn: ModelFn, lang, prompt, *, max_new_tokens: int,
                    decoding: str = "greedy", seed: int = 0) -> tuple[tuple[str, ...], bool]:
    """Completes one prompt: (new symbols, whether the model emitted EOS).

    ``formal_lm.analysis.complete`` (the package's one decoder) on a single prompt: the argmax
    (or, with ``decoding="sample"``, a sample seeded by ``seed``) over EOS and the symbols (never
    PAD or BOS), until EOS or ``max_new_tokens`` tokens.

    Example:
        >>> import formal_lm as fl
        >>> from formal_lm.analysis import exact_model_fn
        >>> lang = fl.load("anbn")
        >>> greedy_complete(exact_model_fn(lang), lang, "aab", max_new_tokens=10)
        (('b',), True)
    """
    c = complete(model_fn, lang, [prompt], max_new_tokens=max_new_tokens, decoding=decoding,
                 seed=seed)
    return c.completions[0], c.finished[0]


def _settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, database=None,
                    phases=(Phase.generate, Phase.shrink),
                    suppress_health_check=(HealthCheck.too_slow,))


def _search(strategy, fails, max_examples: int):
    """The minimal example on which ``fails`` is True, or None."""
    try:
        return find(strategy, fails, settings=_settings(max_examples))
    except NoSuchExample:
        return None


def _show(s) -> str:
    s = tuple(s)
    return repr("".join(s)) if all(len(x) == 1 for x in s) else repr(s)


def _common_problems(model_fn, lang, max_examples) -> list[Problem]:
    from formal_lm.language import Language
    out = []
    if not callable(model_fn):
        out.append(Problem(f"model_fn={model_fn!r} is not callable",
                           "pass a function ids [B, T] -> logits [B, T, V]"))
    if not isinstance(lang, Language):
        out.append(Problem(f"lang={lang!r} is not a formal_lm.Language"))
    if not (isinstance(max_examples, int) and max_examples >= 1):
        out.append(Problem(f"max_examples={max_examples!r} must be an integer >= 1"))
    return out


def assert_completions_keep(model_fn: ModelFn, lang, rule, *,
                            prompts: st.SearchStrategy | None = None,
                            decoding: str = "greedy", max_new_tokens: int = 64,
                            require_eos: bool = True, max_examples: int = 100) -> None:
    """Asserts that the model's completion of every prompt satisfies ``rule`` (a rule name or a
    sequence of names): ``rule.holds(prompt + completion)``.

    Args:
        model_fn: ids [B, T] -> logits [B, T, V].
        lang: the language whose rules and vocabulary are used.
        rule: the rule(s) the completed string must satisfy.
        prompts: a strategy of prompts; default ``ood_prompts(lang, breaks=(), keeps=rule)``,
            every prompt from which the rule can still be satisfied.
        decoding: "greedy" (argmax) or "sample" (seeded, so reruns agree).
        max_new_tokens: generation budget per prompt (EOS counts as a token).
        require_eos: a completion that never emits EOS counts as a failure.
        max_examples: prompts tried by the search.

    Raises:
        AssertionError: showing the shortest failing prompt found, the completion and the rule
            that broke.

    Example:
        >>> import formal_lm as fl
        >>> from formal_lm.analysis import exact_model_fn
        >>> from formal_lm.testing import prefixes
        >>> lang = fl.load("anbn-short")
        >>> assert_completions_keep(exact_model_fn(lang), lang, "R1",
        ...     prompts=prefixes(lang, min_size=1, max_size=6), max_new_tokens=40,
        ...     max_examples=20)
    """
    names = (rule,) if isinstance(rule, str) else tuple(rule)
    problems = _common_problems(model_fn, lang, max_examples)
    if not problems:
        problems += rule_problems(lang, names, "rule")
    if decoding not in DECODINGS:
        problems.append(Problem(f"decoding={decoding!r} is not one of {DECODINGS}"))
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
        problems.append(Problem(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1"))
    check(problems)
    rules = [r for r in lang.rules if r.name in names]
    if prompts is None:
        prompts = ood_prompts(lang, breaks=(), keeps=names)

    def verdict(p):
        completion, finished = greedy_complete(model_fn, lang, p, max_new_tokens=max_new_tokens,
                                               decoding=decoding)
        if require_eos and not finished:
            return completion, finished, "no EOS within max_new_tokens"
        broken = [r for r in rules if not r.holds(tuple(p) + completion)]
        return completion, finished, ", ".join(f"{r.name} ({r.description})" for r in broken)

    bad = _search(prompts, lambda p: bool(verdict(p)[2]), max_examples)
    if bad is None:
        return
    completion, finished, why = verdict(bad)
    raise AssertionError(
        f"{lang.name}: the model's {decoding} completion breaks {why}\n"
        f"  prompt:     {_show(bad)} ({len(bad)} symbols, the shortest failing prompt found)\n"
        f"  completion: {_show(completion)}{'' if finished else ' (no EOS)'}\n"
        f"  full:       {_show(tuple(bad) + completion)}")


@dataclasses.dataclass(frozen=True)
class _Position:
    string: tuple
    t: int  # the prefix string[:t]
    detail: str


def _model_log_probs(model_fn, lang, s) -> np.ndarray:
    """Model next-token log-probabilities [len(s) + 1, V] after each prefix of s."""
    ids = lang.vocab.encode(s).tolist()  # [BOS, s..., EOS]
    return log_softmax(_logits(model_fn, ids)[: len(s) + 1])


def _tokens(lang, mask) -> list[str]:
    return [lang.vocab.tokens[i] if i != EOS_ID else EOS for i in np.flatnonzero(mask)]


def assert_next_token_sets(model_fn: ModelFn, lang, *, strings: st.SearchStrategy | None = None,
                           threshold: float = 1e-3, max_examples: int = 100) -> None:
    """Asserts that after every prefix of every string, the tokens the model gives probability
    above ``threshold`` are exactly the tokens the language allows (symbols and EOS with exact
    probability > 0): Bhattamishra et al.'s next-symbol-set criterion.

    Args:
        strings: a strategy of strings of ``lang``; default ``strings(lang)``.
        threshold: a token counts as predicted when its model probability exceeds this.

    Raises:
        AssertionError: showing the shortest failing string, the prefix, the allowed set and the
            model's set.

    Example:
        >>> import formal_lm as fl
        >>> from formal_lm.analysis import exact_model_fn
        >>> lang = fl.load("anbn-short")
        >>> assert_next_token_sets(exact_model_fn(lang), lang, max_examples=20)
    """
    problems = _common_problems(model_fn, lang, max_examples)
    if not (isinstance(threshold, (int, float)) and 0 <= threshold < 1):
        problems.append(Problem(f"threshold={threshold!r} must be in [0, 1)"))
    check(problems)

    def first_bad(s, exact, logq):
        model = np.exp(logq)
        for t in range(len(s) + 1):
            if exact[t].sum() == 0:
                break
            want, got = exact[t] > 0, model[t] > threshold
            want[[PAD_ID, BOS_ID]] = got[[PAD_ID, BOS_ID]] = False
            if (want != got).any():
                return _Position(s, t, f"allowed {_tokens(lang, want)}, model predicts "
                                       f"{_tokens(lang, got)} (missing {_tokens(lang, want & ~got)},"
                                       f" extra {_tokens(lang, got & ~want)})")
        return None

    _raise_shortest(model_fn, lang, f"wrong next-token set (threshold={threshold})", strings,
                    first_bad, max_examples)


def _raise_shortest(model_fn, lang, title: str, strings, first_bad, max_examples: int) -> None:
    """Searches ``strings`` (default ``strings(lang)``) for a string where ``first_bad`` finds a
    bad position; raises an AssertionError showing the shortest one found and the first bad
    prefix.

    ``first_bad(s, exact, logq)`` gets the string as a tuple, the exact next-token table and the
    model's next-token log-probabilities (both [len(s) + 1, V]), and returns the first bad
    ``_Position`` or None.
    """
    strategy = strings_strategy(lang) if strings is None else strings

    def bad_position(s):
        s = tuple(s)
        return first_bad(s, lang.next_token_table(s), _model_log_probs(model_fn, lang, s))

    bad = _search(strategy, lambda s: bad_position(s) is not None, max_examples)
    if bad is None:
        return
    pos = bad_position(bad)
    raise AssertionError(
        f"{lang.name}: {title}\n"
        f"  string: {_show(bad)} ({len(bad)} symbols, the shortest failing string found)\n"
        f"  prefix: {_show(bad[:pos.t])}\n  {pos.detail}")


def assert_close_to_language(model_fn: ModelFn, lang, *, max_kl: float = 0.05,
                             strings: st.SearchStrategy | None = None,
                             max_examples: int = 100) -> None:
    """Asserts that after every prefix of every string (EOS prediction included),
    KL(exact next-token distribution || model's) <= ``max_kl`` nats.

    Args:
        max_kl: the largest per-prefix KL allowed, in nats.
        strings: a strategy of strings of ``lang``; default ``strings(lang)``.

    Raises:
        AssertionError: showing the shortest failing string, the prefix, its KL and both
            distributions.

    Example:
        >>> import formal_lm as fl
        >>> from formal_lm.analysis import exact_model_fn
        >>> lang = fl.load("parity")
        >>> assert_close_to_language(exact_model_fn(lang), lang, max_kl=1e-6, max_examples=20)
    """
    problems = _common_problems(model_fn, lang, max_examples)
    if not (isinstance(max_kl, (int, float)) and max_kl >= 0):
        problems.append(Problem(f"max_kl={max_kl!r} must be a number >= 0"))
    check(problems)

    def first_bad(s, exact, logq):
        with np.errstate(divide="ignore", invalid="ignore"):  # -inf log-probs give +inf KL
            kl = token_kl(exact, logq)  # [len(s) + 1]
        for t in range(len(s) + 1):
            if kl[t] > max_kl:
                fmt = lambda row: "{" + ", ".join(  # noqa: E731
                    f"{lang.vocab.tokens[i] if i != EOS_ID else EOS}: {row[i]:.3g}"
                    for i in range(2, len(row))) + "}"
                return _Position(s, t, f"KL = {kl[t]:.4g} nats > max_kl={max_kl}\n"
                                       f"  exact: {fmt(exact[t])}\n  model: {fmt(np.exp(logq[t]))}")
        return None

    _raise_shortest(model_fn, lang, "model too far from the language", strings, first_bad,
                    max_examples)
