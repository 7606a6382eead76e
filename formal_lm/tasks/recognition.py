"""Exact positive and negative examples for recognizers (Butoi et al., 2024).

A recognizer reads ``x`` and says whether it is in the language; its example is
``(x, ("accept",))`` or ``(x, ("reject",))`` (see :mod:`formal_lm.tasks.encoding`). Below
``n`` is the requested length, ``k = |Σ|`` the alphabet size and ``L_n`` the members of length
``n``. Every sampler draws i.i.d. (duplicates happen) and exactly from:

- :func:`positives`: ``p(s | |s| = n)``, i.e. ``lang.sample(count, length=n)``.
- :func:`negatives`: the uniform distribution over ``Σ^n \\ L_n``. When ``k^n <=
  ENUMERATION_LIMIT`` the strings of ``Σ^n`` are enumerated and the non-members drawn uniformly;
  otherwise uniform strings of ``Σ^n`` are drawn and the members rejected (exact: the kept
  draws are uniform on the non-members). The cost is bounded before the work: at most
  ``k^n`` (enumeration) or ``max_draws`` (rejection) membership tests; past ``max_draws`` draws
  a FormalLMError names the language, the length and the share of non-members found, and how
  to fix it.
- :func:`near_misses`: draw ``s ~ p(s | |s| = n)``, then one edit ``e`` uniformly among the
  ``E = (2n + 1) k`` one-symbol edits of ``s``: ``n (k - 1)`` substitutions by a different
  symbol, ``n`` deletions, ``(n + 1) k`` insertions (edits, not resulting strings: two edits
  giving the same string count twice); keep ``e(s)`` if it is not a member, else redraw the
  pair. So ``q(t) = P(t) / Z`` for ``t`` outside the language, where ``P(t) = Σ_{s ∈ L_n}
  p(s | n) #{e : e(s) = t} / E`` and ``Z = Σ_{t ∉ L} P(t)``; ``|t|`` is ``n - 1``, ``n`` or
  ``n + 1``. Pairs are drawn at most ``max_draws`` times (a FormalLMError past that).
  :func:`near_miss_probabilities` computes ``q`` by enumerating ``L_n``.
- :func:`examples`: per length, positives and negatives (uniform or near misses) in the ratio
  ``positive_fraction``, shuffled; see its docstring for lengths with one class only.

Seeds: every draw comes from ``derive(seed, Stream.TASK, tag, n, ...)`` with one tag per use
(positives, negatives, near-miss strings, near-miss edits; the order of :func:`examples` from
``derive(seed, Stream.TASK, tag)``), so
the same arguments give the same output, and the classes at one length are independent.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np

from formal_lm import limits
from formal_lm.errors import FormalLMError, Problem
from formal_lm.language import check_count
from formal_lm.seeding import Stream, derive, rng
from formal_lm.tasks.encoding import TaskVocab

String = tuple[str, ...]
ACCEPT = ("accept",)
REJECT = ("reject",)


def vocab(lang) -> TaskVocab:
    """A recognizer's vocabulary: the language's symbols in, ``reject`` / ``accept`` out (so
    its input ids are the language's own)."""
    return TaskVocab(lang.alphabet, REJECT + ACCEPT)
KINDS = ("positive", "negative", "near_miss")

ENUMERATION_LIMIT = 4096
"""Largest ``k^n`` for which :func:`negatives` enumerates ``Σ^n`` instead of rejecting."""
DEFAULT_MAX_DRAWS = 10_000
"""Rejection draws allowed by default: ``max(DEFAULT_MAX_DRAWS, 100 * count)``."""
_CHUNK = 1024  # draws per batch of the rejection samplers

# tags of the derived seeds (the first index after Stream.TASK)
_POSITIVE, _NEGATIVE, _NEAR_MISS, _EDIT, _ORDER = 1001, 1002, 1003, 1004, 1005


def _checked(lang, length, count, seed) -> tuple[int, int, int]:
    problems = []
    for what, value, top in (("length", length, limits.MAX_SAMPLE_LENGTH),
                             ("count", count, limits.MAX_SAMPLES), ("seed", seed, None)):
        try:
            check_count(what, value, top)
        except FormalLMError as e:
            problems += e.problems
    if not hasattr(lang, "accepts") or not hasattr(lang, "alphabet"):
        problems.append(Problem(f"lang={lang!r} is not a formal_lm Language",
                                "pass a Language, e.g. formal_lm.load('anbn')"))
    if problems:
        raise FormalLMError(problems)
    return int(length), int(count), int(seed)


def has_members(lang, length: int) -> bool:
    """Whether some string of ``length`` is in the language (``P(|s| = length) > 0``)."""
    return bool(lang.length_distribution(length)[length] > 0)


def _no_members(lang, length: int) -> FormalLMError:
    return FormalLMError(Problem(
        f"{lang.name!r} has no strings of length {length}",
        "pick a length with P(|s| = length) > 0 (see lang.length_distribution)"))


def positives(lang, length: int, count: int, seed: int) -> list[String]:
    """``count`` exact samples of ``p(s | |s| = length)``.

    Example:
        >>> import formal_lm as fl
        >>> positives(fl.load("anbn"), 4, 2, seed=0)
        [('a', 'a', 'b', 'b'), ('a', 'a', 'b', 'b')]

    Raises:
        FormalLMError: a bad argument, or a length without members.
    """
    length, count, seed = _checked(lang, length, count, seed)
    if not has_members(lang, length):
        raise _no_members(lang, length)
    return lang.sample(count, seed=derive(seed, Stream.TASK, _POSITIVE, length), length=length)


def _enumerated_non_members(lang, length: int) -> list[String] | None:
    """Every non-member of ``Σ^length`` in shortlex order, or None past ``ENUMERATION_LIMIT``
    (kept per language object and length: a training loop asks for the same ones every step)."""
    if len(lang.alphabet) ** length > ENUMERATION_LIMIT:
        return None
    key = (length, lang.fingerprint())
    cache = lang.__dict__.setdefault("_non_members", {})
    if key not in cache:
        cache[key] = [s for s in itertools.product(lang.alphabet, repeat=length)
                      if not lang.accepts(s)]
    return cache[key]


def _too_few(what: str, found: int, count: int, cap: int, where: str, fix: str):
    """The error of a rejection sampler that found ``found < count`` in ``cap`` draws."""
    if found == 0:
        rate = f"they are rarer than about 1 in {cap} draws, or there are none"
        more = "pass a much larger max_draws if they exist, or "
    else:
        rate = f"about {found / cap:.2g} of the draws are {what}"
        more = f"pass max_draws >= {math.ceil(2 * count * cap / found)}, or "
    return FormalLMError(Problem(f"only {found} of count={count} {what} {where} were found in "
                                 f"max_draws={cap} draws: {rate}", more + fix))


def _draw_limit(max_draws, count: int) -> int:
    if max_draws is None:
        return max(DEFAULT_MAX_DRAWS, 100 * count)
    cap = check_count("max_draws", max_draws, fix="pass an int >= 1, or None for the default")
    if cap < 1:
        raise FormalLMError(Problem("max_draws=0 allows no draw",
                                    "pass an int >= 1, or None for the default"))
    return cap


def negatives(lang, length: int, count: int, seed: int, *,
              max_draws: int | None = None) -> list[String]:
    """``count`` i.i.d. draws from the uniform distribution over the non-members of ``length``.

    ``Σ^length`` is enumerated when it has at most ``ENUMERATION_LIMIT`` strings; otherwise
    uniform strings are drawn and members rejected, at most ``max_draws`` of them (default
    ``max(DEFAULT_MAX_DRAWS, 100 * count)``).

    Example:
        >>> import formal_lm as fl
        >>> sorted(set(negatives(fl.load("anbn"), 2, 50, seed=0)))
        [('a', 'a'), ('b', 'a'), ('b', 'b')]

    Raises:
        FormalLMError: a bad argument; no non-members of ``length`` (every string of it is a
            member); fewer than ``count`` non-members found in ``max_draws`` draws.
    """
    length, count, seed = _checked(lang, length, count, seed)
    cap = _draw_limit(max_draws, count)
    return _negatives(lang, length, count, seed, cap, _enumerated_non_members(lang, length))


def _chunk(cap: int, drawn: int, missing: int) -> int:
    """Draws of the next batch of a rejection sampler: twice what is missing, within bounds."""
    return min(_CHUNK, cap - drawn, max(16, 2 * missing))


def _negatives(lang, length, count, seed, cap, pool) -> list[String]:
    """:func:`negatives` with checked arguments and ``Σ^length``'s non-members (or None)."""
    g = rng(seed, Stream.TASK, _NEGATIVE, length)
    if pool is not None:
        if not pool:
            raise FormalLMError(Problem(
                f"every string of length {length} over {lang.alphabet} is in {lang.name!r}: "
                "there are no non-members to draw", "pick a length with non-members"))
        return [pool[i] for i in g.integers(0, len(pool), size=count)]
    found, drawn, k = [], 0, len(lang.alphabet)
    while len(found) < count and drawn < cap:
        m = _chunk(cap, drawn, count - len(found))
        for row in g.integers(0, k, size=(m, length)):
            s = tuple(lang.alphabet[i] for i in row)
            if not lang.accepts(s):
                found.append(s)
        drawn += m
    if len(found) < count:
        raise _too_few("non-members", len(found), count, cap,
                       f"of length {length} of {lang.name!r} (uniform strings)",
                       "ask for fewer examples, a length where the language is sparser, or "
                       "negative='near_miss'")
    return found[:count]


def edit_count(length: int, k: int) -> int:
    """``(2 length + 1) k``: the one-symbol edits of a string of ``length`` over ``k`` symbols."""
    return (2 * length + 1) * k


def apply_edit(s: String, e: int, alphabet: Sequence[str]) -> String:
    """Edit number ``e`` in ``0 .. edit_count(len(s), k) - 1`` of ``s``.

    ``e < n k``: position ``i = e // k``, symbol ``a = alphabet[e % k]``: delete ``s[i]`` if
    ``a == s[i]``, else substitute ``a`` for it (``n (k - 1)`` substitutions and ``n``
    deletions). ``e >= n k``: insert ``alphabet[(e - n k) % k]`` before position
    ``(e - n k) // k`` (``(n + 1) k`` insertions, the last position being the end).
    """
    n, k = len(s), len(alphabet)
    if e < n * k:
        i, a = divmod(e, k)
        return s[:i] + s[i + 1:] if alphabet[a] == s[i] else s[:i] + (alphabet[a],) + s[i + 1:]
    i, a = divmod(e - n * k, k)
    return s[:i] + (alphabet[a],) + s[i:]


def near_misses(lang, length: int, count: int, seed: int, *,
                max_draws: int | None = None) -> list[String]:
    """``count`` i.i.d. one-edit near misses of members of ``length`` (see the module doc).

    Each is a non-member of length ``length - 1``, ``length`` or ``length + 1``; its exact
    distribution is :func:`near_miss_probabilities`. At most ``max_draws`` (member, edit) pairs
    are drawn (default ``max(DEFAULT_MAX_DRAWS, 100 * count)``).

    Example:
        >>> import formal_lm as fl
        >>> all(not fl.load("anbn").accepts(t) for t in near_misses(fl.load("anbn"), 4, 20, 0))
        True

    Raises:
        FormalLMError: a bad argument; a length without members; fewer than ``count`` near
            misses in ``max_draws`` pairs (every edit of a member may be a member).
    """
    length, count, seed = _checked(lang, length, count, seed)
    cap = _draw_limit(max_draws, count)
    if not has_members(lang, length):
        raise _no_members(lang, length)
    alphabet = tuple(lang.alphabet)
    E = edit_count(length, len(alphabet))
    edits = rng(seed, Stream.TASK, _EDIT, length)
    found, drawn, r = [], 0, 0
    while len(found) < count and drawn < cap:
        m = _chunk(cap, drawn, count - len(found))
        strings = lang.sample(m, seed=derive(seed, Stream.TASK, _NEAR_MISS, length, r),
                              length=length)
        for s, e in zip(strings, edits.integers(0, E, size=m)):
            t = apply_edit(s, int(e), alphabet)
            if not lang.accepts(t):
                found.append(t)
        drawn, r = drawn + m, r + 1
    if len(found) < count:
        raise _too_few("near misses", len(found), count, cap,
                       f"of length-{length} members of {lang.name!r} ((member, edit) pairs)",
                       "ask for fewer examples, another length, or negative='uniform'")
    return found[:count]


def members(lang, length: int, limit: int) -> list[String]:
    """Every member of ``length`` (depth-first over prefixes with ``P(prefix, |s| = length) >
    0``, so at most ``length * limit * k`` prefix queries).

    Raises:
        FormalLMError: more than ``limit`` members.
    """
    found, stack = [], [()]
    while stack:
        p = stack.pop()
        if len(p) == length:
            if not lang.accepts(p):  # only the empty string can get here and be no member
                continue
            found.append(p)
            if len(found) > limit:
                raise FormalLMError(Problem(
                    f"{lang.name!r} has more than limit={limit} strings of length {length}",
                    "pass a larger limit or a shorter length"))
            continue
        stack += [p + (a,) for a in reversed(lang.alphabet)
                  if lang.prefix_length_log_probs(p + (a,), length)[length] > -math.inf]
    return found


def near_miss_probabilities(lang, length: int, limit: int = 10_000) -> dict[String, float]:
    """The exact distribution ``{t: q(t)}`` of :func:`near_misses` at ``length``, by enumeration
    of the members of ``length`` (for tests and reports). The values sum to 1.

    Example:
        >>> import formal_lm as fl
        >>> q = near_miss_probabilities(fl.load("anbn"), 2)
        >>> round(q[("a",)], 6), round(q[("a", "b", "b")], 6)  # 1 and 2 of the 10 edits of ab
        (0.1, 0.2)

    Raises:
        FormalLMError: a bad argument; a length without members; more than ``limit`` members;
            no near misses (every one-edit neighbour of every member is a member).
    """
    length, _, _ = _checked(lang, length, 0, 0)
    limit = check_count("limit", limit, fix="pass an int >= 1")
    if not has_members(lang, length):
        raise _no_members(lang, length)
    found = members(lang, length, limit)
    logp = np.array([lang.log_prob(s) for s in found])
    weights = np.exp(logp - logp.max())
    weights /= weights.sum()  # p(s | |s| = length)
    alphabet = tuple(lang.alphabet)
    E = edit_count(length, len(alphabet))
    member: dict[String, bool] = {}
    mass: dict[String, float] = {}
    for s, w in zip(found, weights):
        for e in range(E):
            t = apply_edit(s, e, alphabet)
            if t not in member:
                member[t] = lang.accepts(t)
            if not member[t]:
                mass[t] = mass.get(t, 0.0) + w / E
    Z = sum(mass.values())
    if Z == 0:
        raise FormalLMError(Problem(
            f"every one-edit neighbour of every length-{length} member of {lang.name!r} is a "
            "member: there are no near misses", "pick another length or negative='uniform'"))
    return {t: float(v / Z) for t, v in sorted(mass.items())}


@dataclasses.dataclass(frozen=True)
class RecognitionExamples(Sequence):
    """A labelled recognition set: a sequence of ``(x, ("accept",))`` / ``(x, ("reject",))``
    pairs (what :func:`formal_lm.tasks.encoding.encode` reads), with each example's kind
    (``"positive"``, ``"negative"`` or ``"near_miss"``) and the length it was drawn for (a near
    miss of a length-``n`` member has ``|x|`` in ``n - 1 .. n + 1``).

    Attributes:
        notes: one sentence per length that got only one class, or none.
    """

    pairs: tuple[tuple[String, tuple[str, ...]], ...]
    kinds: tuple[str, ...]
    drawn_lengths: tuple[int, ...]
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        return self.pairs[i]

    @property
    def labels(self) -> np.ndarray:
        """bool [N]: True for accept."""
        return np.array([y == ACCEPT for _, y in self.pairs], bool)

    @property
    def lengths(self) -> np.ndarray:
        """int [N]: ``|x|``."""
        return np.array([len(x) for x, _ in self.pairs], np.int64)


def _examples_problems(lengths, count, negative, positive_fraction) -> list[Problem]:
    problems = []
    if negative not in ("uniform", "near_miss"):
        problems.append(Problem(f"negative={negative!r} must be 'uniform' or 'near_miss'",
                                "pass negative='uniform' or negative='near_miss'"))
    if (isinstance(positive_fraction, bool) or not isinstance(positive_fraction, (int, float))
            or not 0 <= positive_fraction <= 1):
        problems.append(Problem(f"positive_fraction={positive_fraction!r} must be a number in "
                                "[0, 1]", "pass e.g. positive_fraction=0.5"))
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        problems.append(Problem(f"count={count!r} must be an int >= 1", "pass e.g. count=64"))
    if not lengths:
        problems.append(Problem("lengths is empty", "pass e.g. lengths=range(1, 41)"))
    bad = [n for n in lengths if isinstance(n, bool) or not isinstance(n, (int, np.integer))
           or not 0 <= n <= limits.MAX_SAMPLE_LENGTH]
    if bad:
        problems.append(Problem(f"lengths holds {bad[:5]}, not ints in "
                                f"0..{limits.MAX_SAMPLE_LENGTH}", "pass ints >= 0"))
    elif len(set(lengths)) < len(lengths):
        problems.append(Problem("lengths has repeats (a repeated length would repeat its "
                                "examples exactly)", "list each length once; raise count"))
    return problems


def _split(lang, n: int, count: int, fraction: float, negative: str):
    """(positives, negatives, note, pool) to draw at length ``n``: both classes when both exist;
    ``pool`` the enumerated non-members of ``n`` for uniform negatives (or None)."""
    pos, pool = has_members(lang, n), None
    if negative == "uniform":
        pool = _enumerated_non_members(lang, n)
        neg = pool is None or bool(pool)  # unknown past the enumeration: the sampler decides
    else:
        neg = pos  # near misses are edits of members
    n_pos = int(math.floor(count * fraction + 0.5))
    if pos and neg:
        return n_pos, count - n_pos, None, pool
    if pos:
        return count, 0, f"length {n}: every string is a member; {count} positives only", pool
    if neg:
        return 0, count, f"length {n}: no members; {count} negatives only", pool
    return 0, 0, f"length {n}: no members, so no near misses; no examples", pool


def examples(lang, lengths: Sequence[int], count: int, seed: int, negative: str = "uniform",
             positive_fraction: float = 0.5, *,
             max_draws: int | None = None) -> RecognitionExamples:
    """A labelled recognition set: ``count`` examples per length, shuffled.

    At each length ``n``, ``count * positive_fraction`` (rounded half up) positives
    (:func:`positives`) and the rest negatives: uniform non-members of ``n`` (:func:`negatives`) or near misses of
    members of ``n`` (:func:`near_misses`). A length with one class only gets ``count`` of it:
    without members, ``count`` uniform negatives (``negative="uniform"``) or nothing
    (``"near_miss"``: there is no member to edit); without non-members (known when ``Σ^n`` is
    enumerated, see :func:`negatives`), ``count`` positives. Each such length is said in
    ``notes``. The set is shuffled with ``rng(seed, Stream.TASK, ...)``.

    Example:
        >>> import formal_lm as fl
        >>> ex = examples(fl.load("anbn"), [1, 2], count=4, seed=0)
        >>> len(ex), int(ex.labels.sum()), ex.notes
        (8, 2, ('length 1: no members; 4 negatives only',))

    Raises:
        FormalLMError: bad arguments, or a sampler's error (see :func:`negatives`).
    """
    lengths = list(lengths) if not isinstance(lengths, (str, bytes)) else [lengths]
    problems = _examples_problems(lengths, count, negative, positive_fraction)
    try:
        _checked(lang, 0, 0, seed)
    except FormalLMError as e:
        problems += e.problems
    if problems:
        raise FormalLMError(problems)
    neg_kind = "negative" if negative == "uniform" else "near_miss"
    rows, notes = [], []
    for n in (int(v) for v in lengths):
        n_pos, n_neg, note, pool = _split(lang, n, int(count), float(positive_fraction),
                                          negative)
        if note:
            notes.append(note)
        if n_pos:
            rows += [(x, ACCEPT, "positive", n) for x in positives(lang, n, n_pos, seed)]
        if n_neg and negative == "uniform":
            cap = _draw_limit(max_draws, n_neg)
            rows += [(x, REJECT, neg_kind, n)
                     for x in _negatives(lang, n, n_neg, seed, cap, pool)]
        elif n_neg:
            rows += [(x, REJECT, neg_kind, n)
                     for x in near_misses(lang, n, n_neg, seed, max_draws=max_draws)]
    order = rng(seed, Stream.TASK, _ORDER).permutation(len(rows))
    rows = [rows[i] for i in order]
    return RecognitionExamples(tuple((x, y) for x, y, _, _ in rows),
                               tuple(k for _, _, k, _ in rows),
                               tuple(n for _, _, _, n in rows), tuple(notes))
