"""Exact latent variables of a language at every position of any string over its alphabet.

A probe asks whether a model's hidden state encodes a grammar's latent variables (a count, a
stack, an automaton state). With an exact language those variables are known after every prefix
of every string, members or not, so the labels of a probe are exact, in and off distribution.

``latents(lang, strings)`` returns a :class:`Latents`: for each string ``s`` and each feature,
an array whose row ``t`` (0..len(s)) describes the prefix ``s[:t]``. Row ``t`` lines up with
row ``t`` of ``lang.next_token_table(s)`` and with position ``t`` of a model reading
``[BOS, s_1, ..., s_n]`` (position 0 holds BOS: the empty prefix).

Features (``kind`` "categorical": integer classes 0..C-1 named by ``Feature.classes``;
"numeric": numbers), by family:

- every language: ``viable`` (categorical: can the prefix still be completed into a string of
  the language, priors and lengths included) and, per named rule R, ``rule:R`` (categorical:
  ``R.can_complete(prefix)``, which every rule kind answers exactly).
- counter languages (``counter.py``, also templates that sum variables): ``count:x`` (numeric:
  copies of symbol x so far), ``diff:x-y`` for each pair of symbols in alphabet order (numeric:
  count of x minus count of y) and ``block`` (categorical: "start" before any symbol, "block i"
  for the template block the current run of symbols is in, or "off template" once the runs do
  not follow the template's block order; runs are matched to blocks left to right, each run to
  the first later block with its symbol, blocks in between being taken as empty).
- bracket languages (``dyck.py``): ``depth`` (numeric: opens minus closes, every type) and
  ``depth:o`` per opening bracket o (numeric: o's opens minus its closes). Dyck-k (nested) also
  has ``top`` (categorical: "empty", the open bracket on top of the stack, or "broken" once a
  close does not match the top or closes an empty stack) and ``stack`` ([T, max_stack]
  categorical: column j is the (j+1)-th bracket from the top, "none" below the bottom, "broken"
  as for ``top``).
- PFSAs (``pfsa.py``): ``state_posterior`` ([T, S] numeric: P(current state | prefix), by the
  forward algorithm; a row of zeros after a prefix of probability 0). A deterministic automaton
  also has ``state`` (categorical: its state, or "dead" after a symbol with no arc).
- PCFGs are not supported yet (``FormalLMError``); their rules are: ``rule_latents(lang, s)``.

A language restricted to a length range (``lang.restrict``) has its base family's features,
with ``viable`` judged under the restriction (a nondeterministic PFSA's posterior would change
under it, so that case is refused).

Example:
    >>> import formal_lm as fl
    >>> z = latents(fl.load("anbn"), ["aab", "ba"])
    >>> z["diff:a-b"][0].tolist(), z["block"][1].tolist(), z["viable"][1].tolist()
    ([0, 1, 2, 1], [0, 2, 3], [1, 0, 0])
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from formal_lm.counter import CounterLanguage
from formal_lm.dyck import DyckLanguage
from formal_lm.errors import FormalLMError, Problem
from formal_lm.language import Language, check_count
from formal_lm.pfsa import PFSA
from formal_lm.vocab import String

CATEGORICAL, NUMERIC = "categorical", "numeric"


@dataclasses.dataclass(frozen=True)
class Feature:
    """One latent variable: its name, kind, meaning, class names and width.

    Attributes:
        name: e.g. ``"diff:a-b"``.
        kind: ``"categorical"`` (values are classes 0..len(classes)-1) or ``"numeric"``.
        description: one sentence.
        classes: the name of each class of a categorical feature (() for numeric ones).
        width: 0 when a string's values are [T]; k when they are [T, k].
    """

    name: str
    kind: str
    description: str
    classes: tuple[str, ...] = ()
    width: int = 0


@dataclasses.dataclass(frozen=True, eq=False)
class Latents:
    """Exact features of ``strings``: ``values[i][name]`` is [len(s_i) + 1] (or [.., k]).

    ``z[name]`` gives the per-string arrays of one feature; ``z.stacked(name)`` all positions of
    all strings one after another (the order of ``positions()``).
    """

    language: str
    features: tuple[Feature, ...]
    strings: tuple[String, ...]
    values: tuple[Mapping[str, np.ndarray], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def feature(self, name: str) -> Feature:
        """The :class:`Feature` called ``name`` (FormalLMError naming the known ones if none)."""
        for f in self.features:
            if f.name == name:
                return f
        raise FormalLMError(Problem(f"feature={name!r} is not a latent of {self.language!r}",
                                    f"use one of {list(self.names)}"))

    def __getitem__(self, name: str) -> tuple[np.ndarray, ...]:
        self.feature(name)
        return tuple(v[name] for v in self.values)

    def stacked(self, name: str) -> np.ndarray:
        """[N] (or [N, k]): every position of every string, string by string."""
        return np.concatenate(self[name]) if self.strings else np.zeros((0,))

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(string index [N], position t [N]) of the rows of ``stacked``."""
        sizes = [len(s) + 1 for s in self.strings]
        return (np.repeat(np.arange(len(sizes)), sizes),
                np.concatenate([np.arange(n) for n in sizes]) if sizes else np.zeros(0, int))


def _binary(name: str, description: str, no: str, yes: str) -> Feature:
    return Feature(name, CATEGORICAL, description, (no, yes))


def _rule_values(lang: Language, s: String) -> tuple[list[Feature], dict[str, np.ndarray]]:
    feats, vals = [], {}
    for r in lang.rules:
        name = f"rule:{r.name}"
        feats.append(_binary(name, f"can rule {r.name} ({r.description}) still hold",
                             "broken", "can complete"))
        vals[name] = np.array([int(bool(r.can_complete(s[:t]))) for t in range(len(s) + 1)])
    return feats, vals


def _viable(lang: Language, s: String) -> np.ndarray:
    return (lang.next_token_table(s).sum(axis=1) > 0).astype(int)


# ----------------------------------------------------------------------------------- counters
def _counter_values(lang: CounterLanguage, s: String):
    A = lang.alphabet
    counts = np.zeros((len(s) + 1, len(A)), int)
    for t, x in enumerate(s):
        counts[t + 1] = counts[t]
        counts[t + 1, A.index(x)] += 1
    feats = [Feature(f"count:{x}", NUMERIC, f"copies of {x} so far") for x in A]
    vals = {f"count:{x}": counts[:, i] for i, x in enumerate(A)}
    for i in range(len(A)):
        for j in range(i + 1, len(A)):
            name = f"diff:{A[i]}-{A[j]}"
            feats.append(Feature(name, NUMERIC, f"copies of {A[i]} minus copies of {A[j]}"))
            vals[name] = counts[:, i] - counts[:, j]
    syms = [b.symbol for b in lang.blocks]
    K = len(syms)
    block = np.zeros(len(s) + 1, int)
    cur = -1  # template block of the current run
    for t, x in enumerate(s):
        if cur == K or (t > 0 and x == s[t - 1]):
            block[t + 1] = block[t]
            continue
        nxt = next((k for k in range(cur + 1, K) if syms[k] == x), K)
        cur = nxt
        block[t + 1] = cur + 1
    classes = ("start",) + tuple(f"block {k} ({syms[k]})" for k in range(K)) + ("off template",)
    feats.append(Feature("block", CATEGORICAL, "the template block of the current run", classes))
    vals["block"] = block
    return feats, vals


# ----------------------------------------------------------------------------------- brackets
def _dyck_values(lang: DyckLanguage, s: String, max_stack: int):
    opens = [o for o, _ in lang.pairs]
    close_of = {c: i for i, (_, c) in enumerate(lang.pairs)}
    T = len(s) + 1
    per = np.zeros((T, len(opens)), int)
    for t, x in enumerate(s):
        per[t + 1] = per[t]
        if x in opens:
            per[t + 1, opens.index(x)] += 1
        else:
            per[t + 1, close_of[x]] -= 1
    feats = [Feature("depth", NUMERIC, "open brackets minus closing brackets, every type")]
    vals = {"depth": per.sum(axis=1)}
    for i, o in enumerate(opens):
        feats.append(Feature(f"depth:{o}", NUMERIC, f"{o} opened minus {lang.pairs[i][1]} closed"))
        vals[f"depth:{o}"] = per[:, i]
    if not lang.nested:
        return feats, vals
    k = len(opens)
    broken = k + 1
    top = np.zeros(T, int)
    stack_cols = np.zeros((T, max_stack), int)
    stack: list[int] | None = []
    for t, x in enumerate(s, start=1):
        if stack is not None:
            if x in opens:
                stack.append(opens.index(x))
            elif stack and stack[-1] == close_of[x]:
                stack.pop()
            else:
                stack = None
        if stack is None:
            top[t], stack_cols[t] = broken, broken
            continue
        top[t] = stack[-1] + 1 if stack else 0
        for j in range(min(max_stack, len(stack))):
            stack_cols[t, j] = stack[-1 - j] + 1
    names = tuple(opens)
    feats += [Feature("top", CATEGORICAL, "the open bracket on top of the stack",
                      ("empty",) + names + ("broken",)),
              Feature("stack", CATEGORICAL, f"the top {max_stack} brackets of the stack, top first",
                      ("none",) + names + ("broken",), max_stack)]
    vals["top"], vals["stack"] = top, stack_cols
    return feats, vals


# ----------------------------------------------------------------------------------- automata
def _is_deterministic(m: PFSA) -> bool:
    return bool(((m.T > 0).sum(axis=2) <= 1).all() and (m.init > 0).sum() == 1)


def _pfsa_values(m: PFSA, s: String):
    alpha = m.init.astype(float).copy()
    post = np.zeros((len(s) + 1, len(m.states)))
    post[0] = alpha / alpha.sum()
    for t, x in enumerate(s, start=1):
        alpha = alpha @ m.T[m.alphabet.index(x)]
        z = alpha.sum()
        if z == 0:
            break
        alpha = alpha / z
        post[t] = alpha
    names = tuple(str(q) for q in m.states)
    feats = [Feature("state_posterior", NUMERIC, "P(current state | prefix), forward algorithm",
                     (), len(names))]
    vals = {"state_posterior": post}
    if _is_deterministic(m):
        dead = post.sum(axis=1) == 0
        feats.append(Feature("state", CATEGORICAL, "the automaton's state", names + ("dead",)))
        vals["state"] = np.where(dead, len(names), post.argmax(axis=1))
    return feats, vals


# ----------------------------------------------------------------------------------- entry
def _family(lang: Language) -> Language:
    base = lang
    while getattr(base, "base", None) is not None and isinstance(base.base, Language):
        base = base.base
    if isinstance(base, PFSA) and base is not lang and not _is_deterministic(base):
        raise FormalLMError(Problem(
            f"{lang.name!r} restricts a nondeterministic PFSA, whose state posterior the length "
            "restriction changes", "probe the unrestricted language"))
    if not isinstance(base, (CounterLanguage, DyckLanguage, PFSA)):
        raise FormalLMError(Problem(
            f"latent features of a {type(base).__name__} ({lang.name!r}) are not supported yet",
            "use a counter, Dyck or PFSA language, or formal_lm.latents.rule_latents(lang, "
            "strings) for its named rules"))
    return base


def _strings(lang: Language, strings: Sequence) -> tuple[String, ...]:
    if isinstance(strings, (str, tuple)) and strings and not isinstance(strings[0], (str, tuple)):
        strings = [strings]
    return tuple(lang.vocab.as_string(s) for s in strings)


def latents(lang: Language, strings: Sequence, *, max_stack: int = 4) -> Latents:
    """Exact latent features of ``lang`` at every position of each string (module docstring).

    Args:
        lang: a counter, Dyck or PFSA language (or a length restriction of one).
        strings: strings over ``lang.alphabet`` (tuples of symbols, or ``str`` for
            one-character symbols); members or not.
        max_stack: how many stack entries the Dyck-k ``stack`` feature keeps.

    Raises:
        FormalLMError: an unsupported family, a symbol outside the alphabet, a bad max_stack.
    """
    max_stack = check_count("max_stack", max_stack, 64)
    base = _family(lang)
    strings = _strings(lang, strings)
    feats: list[Feature] = []
    values = []
    for s in strings:
        if isinstance(base, CounterLanguage):
            f, v = _counter_values(base, s)
        elif isinstance(base, DyckLanguage):
            f, v = _dyck_values(base, s, max_stack)
        else:
            f, v = _pfsa_values(base, s)
        rf, rv = _rule_values(lang, s)
        f = [_binary("viable", "can the prefix still be completed into a string of the "
                     "language", "no", "yes")] + f + rf
        values.append({"viable": _viable(lang, s), **v, **rv})
        feats = f
    if not strings:  # names and kinds still known: from the empty string
        feats = list(latents(lang, [()], max_stack=max_stack).features)
    return Latents(lang.name, tuple(feats), strings, tuple(values))


def rule_latents(lang: Language, strings: Sequence) -> Latents:
    """``viable`` and ``rule:R`` for any language (a PCFG too); see ``latents``."""
    strings = _strings(lang, strings)
    feats = [_binary("viable", "can the prefix still be completed into a string of the language",
                     "no", "yes")] + _rule_values(lang, ())[0]
    values = tuple({"viable": _viable(lang, s), **_rule_values(lang, s)[1]} for s in strings)
    return Latents(lang.name, tuple(feats), strings, values)
