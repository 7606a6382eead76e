"""Compositional splits of a counter template: excluded combinations of its counts.

For a ``CounterLanguage`` with count variables v (a^n b^m c^(n+m): n and m) and a finite set E of
excluded assignments, with M = P(assignment in E) under the priors:

    p_held(s) = sum_{e in E, string(e) = s} P(e) / M            (a finite distribution),
    p_train(s) = (p(s) - M p_held(s)) / (1 - M),

the template conditioned on its assignment being (not) in E. Where strings determine the counts
(one variable per block, or a^n b^m c^(n+m)) this is filtering of strings; where several
assignments give one string it conditions on the assignment, and (1 - M) p_train + M p_held = p
always. Every quantity is exact: the held-out language enumerates its finitely many strings
(:class:`FiniteLanguage`), and the training language subtracts that finite part from the
template's own exact quantities (:class:`Excluding`): prefix and length-aware prefix masses,
length tables, entropy, samples (rejection of the excluded share, itself exact).

Floating point: a difference p - m that is below ``CANCEL`` times p is taken as 0 (it is the
round-off of an exact zero: every completion of the prefix is excluded).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from formal_lm.errors import FormalLMError, Problem
from formal_lm.language import Language, LengthStats, check_count
from formal_lm.seeding import Stream, rng
from formal_lm.splits import Split
from formal_lm.vocab import String

CANCEL = 1e-12


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _minus(a: float, b: float) -> float:
    """a - b for masses b <= a, 0 when the difference is round-off (see ``CANCEL``)."""
    d = a - b
    return d if d > CANCEL * a else 0.0


class FiniteLanguage(Language):
    """A distribution over finitely many strings, every quantity by enumeration.

    Example:
        >>> f = FiniteLanguage("f", ("a", "b"), {("a",): 0.25, ("a", "b"): 0.75})
        >>> f.next_token_dist("a")
        {'a': 0.0, 'b': 0.75, '</s>': 0.25}
    """

    def __init__(self, name: str, alphabet: Sequence[str], probs: Mapping, *,
                 description: str = ""):
        self.name, self.alphabet, self.description = name, tuple(alphabet), description
        items = {self._s(s): float(p) for s, p in probs.items() if p > 0}
        total = math.fsum(items.values())
        if not items or not total > 0:
            raise FormalLMError(Problem(f"{name!r} has no string with positive probability",
                                        "pass at least one string with p > 0"))
        self.probs = {s: p / total for s, p in sorted(items.items())}
        self._prefix: dict[String, float] = {}
        for s, p in self.probs.items():
            for t in range(len(s) + 1):
                self._prefix[s[:t]] = self._prefix.get(s[:t], 0.0) + p

    def log_prob(self, s) -> float:
        return _log(self.probs.get(self._s(s), 0.0))

    def prefix_log_prob(self, p) -> float:
        return _log(self._prefix.get(self._s(p), 0.0))

    def prefix_prob(self, p) -> float:
        """P(a string starts with p), not in log space."""
        return self._prefix.get(self._s(p), 0.0)

    def prefix_length_log_probs(self, p, max_length: int) -> np.ndarray:
        p, out = self._s(p), np.zeros(check_count("max_length", max_length) + 1)
        for s, q in self.probs.items():
            if s[: len(p)] == p and len(s) <= max_length:
                out[len(s)] += q
        with np.errstate(divide="ignore"):
            return np.log(out)

    def _sample(self, n: int, *, seed: int, length: int | None) -> list[String]:
        strings = [s for s in self.probs if length is None or len(s) == length]
        if not strings:
            raise FormalLMError(Problem(f"{self.name!r} has no strings of length={length}",
                                        "pick a length with P(|s| = length) > 0"))
        w = np.array([self.probs[s] for s in strings])
        idx = np.random.default_rng(seed).choice(len(strings), size=n, p=w / w.sum())
        return [strings[i] for i in idx]

    def entropy(self) -> float:
        return -math.fsum(p * math.log(p) for p in self.probs.values())

    def expected_length(self) -> float:
        return math.fsum(p * len(s) for s, p in self.probs.items())

    def length_stats(self, max_length: int) -> LengthStats:
        L = check_count("max_length", max_length)
        prob, surprisal, eos = np.zeros(L + 1), np.zeros(L + 1), np.zeros(L + 1)
        for s, p in self.probs.items():
            if len(s) <= L:
                prob[len(s)] += p
                surprisal[len(s)] -= p * math.log(p)
                eos[len(s)] -= p * math.log(p / self._prefix[s])
        return LengthStats(prob, surprisal, eos, max(0.0, 1.0 - math.fsum(prob)))

    def _definition(self) -> dict:
        return {"finite": [[list(s), p] for s, p in self.probs.items()],
                "alphabet": list(self.alphabet)}


class Excluding(Language):
    """``base`` with a finite part taken out and renormalised: p(s) = (p_base(s) - m(s)) /
    (1 - sum m), for ``removed`` = {s: m(s)}, each m(s) <= p_base(s) (see the module docstring).
    """

    def __init__(self, base: Language, removed: Mapping, *, name: str, description: str = ""):
        self.base, self.name, self.description = base, name, description
        self.alphabet, self.rules = tuple(base.alphabet), tuple(base.rules)
        self.removed = {base.vocab.as_string(s): float(m) for s, m in removed.items() if m > 0}
        self.mass = math.fsum(self.removed.values())
        if not 0 < 1 - self.mass:
            raise FormalLMError(Problem(f"removing mass {self.mass:.6g} from {base.name!r} "
                                        "leaves nothing", "remove less of the language"))
        self._held = FiniteLanguage("removed", self.alphabet, self.removed) \
            if self.removed else None
        self._log_z = math.log1p(-self.mass)
        self.entropy_is_exact = base.entropy_is_exact

    def _removed_prefix(self, p) -> float:
        return self.mass * self._held.prefix_prob(p) if self._held else 0.0

    def log_prob(self, s) -> float:
        s = self._s(s)
        return _log(_minus(self.base.prob(s), self.removed.get(s, 0.0))) - self._log_z

    def prefix_log_prob(self, p) -> float:
        p = self._s(p)
        base = math.exp(self.base.prefix_log_prob(p))
        return _log(_minus(base, self._removed_prefix(p))) - self._log_z

    def prefix_length_log_probs(self, p, max_length: int) -> np.ndarray:
        base = np.exp(self.base.prefix_length_log_probs(p, max_length))
        gone = np.zeros_like(base)
        if self._held:
            gone = self.mass * np.exp(self._held.prefix_length_log_probs(p, max_length))
        out = np.where(base - gone > CANCEL * base, base - gone, 0.0)
        with np.errstate(divide="ignore"):
            return np.log(out) - self._log_z

    def _sample(self, n: int, *, seed: int, length: int | None) -> list[String]:
        """Exact: base samples, each kept with probability (p_base(s) - m(s)) / p_base(s)."""
        gen, out = np.random.default_rng(seed), []
        if length is not None and not self.length_distribution(length)[length] > 0:
            raise FormalLMError(Problem(f"{self.name!r} has no strings of length={length}",
                                        "pick a length with P(|s| = length) > 0"))
        while len(out) < n:
            batch = self.base.sample(max(8, 2 * (n - len(out))), length=length,
                                     seed=int(gen.integers(0, 2 ** 31 - 1)))
            for s in batch:
                m = self.removed.get(s, 0.0)
                if m == 0 or gen.random() * self.base.prob(s) >= m:
                    out.append(s)
        return out[:n]

    def _finite_terms(self, L: int | None = None):
        """(P_base(F), sum -p ln p over F, sum -p_t ln p_t over F) for the removed strings F
        (of length L when given)."""
        z = math.exp(self._log_z)
        pb, hb, ht = [], [], []
        for s in self.removed:
            if L is None or len(s) == L:
                p = self.base.prob(s)
                pt = _minus(p, self.removed[s]) / z
                pb.append(p)
                hb.append(-p * math.log(p))
                ht.append(-pt * math.log(pt) if pt > 0 else 0.0)
        return math.fsum(pb), math.fsum(hb), math.fsum(ht)

    def entropy(self) -> float:
        """Exact where the base's is: outside the removed strings p_t = p / (1 - M), so
        H_t = (H_base - h_F) / (1 - M) + (1 - P_F) ln(1 - M) / (1 - M) + H_t(F). Where the
        base's entropy is an upper bound this is one too (it increases with H_base)."""
        z = math.exp(self._log_z)
        pf, hf, htf = self._finite_terms()
        return (self.base.entropy() - hf) / z + (1 - pf) * self._log_z / z + htf

    def expected_length(self) -> float:
        gone = math.fsum(m * len(s) for s, m in self.removed.items())
        return (self.base.expected_length() - gone) / math.exp(self._log_z)

    def length_stats(self, max_length: int) -> LengthStats:
        """Exact per-length statistics (``eos_surprisal`` None, as for a restriction)."""
        st, z = self.base.length_stats(max_length), math.exp(self._log_z)
        prob = np.array(st.prob, float)
        surprisal = None if st.surprisal is None else np.array(st.surprisal, float)
        for L in range(len(prob)):
            pf, hf, htf = self._finite_terms(L)
            gone = math.fsum(m for s, m in self.removed.items() if len(s) == L)
            if surprisal is not None:
                surprisal[L] = (surprisal[L] - hf) / z + (prob[L] - pf) * self._log_z / z + htf
            prob[L] = _minus(prob[L], gone) / z
        return LengthStats(prob, surprisal, None, max(0.0, 1.0 - math.fsum(prob)))

    def _definition(self) -> dict:
        return {"excluding": self.base.fingerprint(),
                "removed": [[list(s), m] for s, m in sorted(self.removed.items())]}


def _assignment(lang, combo) -> dict[str, int]:
    if isinstance(combo, Mapping):
        return {v: combo.get(v) for v in lang.vars}
    combo = tuple(combo)
    return dict(zip(lang.vars, combo)) if len(combo) == len(lang.vars) else {}


def _checked_combos(lang, combos) -> list[dict[str, int]]:
    out, problems = [], []
    for c in combos:
        a = _assignment(lang, c)
        bad = not a or any(isinstance(x, bool) or not isinstance(x, (int, np.integer))
                           for x in a.values())
        if bad or not all(lang.priors[v].log_pmf(x) > -math.inf for v, x in a.items()):
            problems.append(Problem(f"combination {c!r} is not an assignment of "
                                    f"{lang.vars} with positive prior probability in "
                                    f"{lang.name!r}", f"pass tuples in the order {lang.vars} "
                                    "or dicts, with values in the priors' support"))
        elif a not in out:
            out.append({v: int(x) for v, x in a.items()})
    if not out and not problems:
        problems.append(Problem("no combination to exclude", "pass at least one"))
    if problems:
        raise FormalLMError(problems)
    return out


def exclude_counts(lang, combos, *, name: str | None = None) -> Split:
    """A counter template split on combinations of its counts: the training language never
    produces them, the held-out language is exactly them (see the module docstring).

    Args:
        lang: a ``CounterLanguage``.
        combos: assignments to exclude: tuples in the order of ``lang.vars`` or dicts.
        name: the base name of the two languages (default ``lang.name``).

    Raises:
        FormalLMError: an assignment that is not one of the template's (unknown variable, a
            value outside its prior's support), none at all, or all of the mass.

    Example:
        >>> import formal_lm as fl
        >>> sp = exclude_counts(fl.load("anbmcnm"), [(1, 2)])
        >>> round(sp.held_out_mass, 6), sp.held_out.prob("abbccc"), sp.train.prob("abbccc")
        (0.027778, 1.0, 0.0)
    """
    from formal_lm.counter import CounterLanguage
    if not isinstance(lang, CounterLanguage):
        raise FormalLMError(Problem(f"{getattr(lang, 'name', lang)!r} is a "
                                    f"{type(lang).__name__}, not a CounterLanguage",
                                    "split a PCFG with formal_lm.splits.exclude_production"))
    removed: dict[String, float] = {}
    combos = _checked_combos(lang, combos)
    for a in combos:
        s = lang._string(a)
        p = math.exp(sum(float(lang.priors[v].log_pmf(x)) for v, x in a.items()))
        removed[s] = removed.get(s, 0.0) + p
    base = name or lang.name
    what = ", ".join("(" + ", ".join(f"{v}={x}" for v, x in a.items()) + ")" for a in combos)
    train = Excluding(lang, removed, name=f"{base}-train",
                      description=f"{lang.name!r} without the counts {what}")
    held = FiniteLanguage(f"{base}-held-out", lang.alphabet, removed,
                          description=f"{lang.name!r} at the counts {what}")
    return Split(lang, train, held, train.mass, f"counts {what}")


def held_out_combinations(lang, k: int, *, seed: int = 0) -> list[tuple[int, ...]]:
    """``k`` distinct assignments of ``lang``'s counts (tuples in the order of ``lang.vars``),
    drawn uniformly from those with positive prior probability, with
    ``formal_lm.seeding.rng(seed, Stream.SPLIT)``; at most all but one of them.

    Raises:
        FormalLMError: ``k`` is not in 1..(number of assignments - 1).
    """
    ranges = [range(lang.priors[v].min, lang.priors[v].largest() + 1) for v in lang.vars]
    every = [c for c in itertools.product(*ranges)
             if all(lang.priors[v].log_pmf(x) > -math.inf for v, x in zip(lang.vars, c))]
    k = check_count("k", k, max(len(every) - 1, 0),
                    f"pass 1 <= k <= {len(every) - 1} (the template has {len(every)} assignments)")
    if k == 0:
        raise FormalLMError(Problem("k=0 holds nothing out", "pass k >= 1"))
    pick = rng(seed, Stream.SPLIT).choice(len(every), size=k, replace=False)
    return [tuple(int(x) for x in every[i]) for i in sorted(pick)]
