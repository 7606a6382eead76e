"""Counter templates whose block counts are sums of several variables (``c^(n+m)``): the exact
quantities of ``CounterLanguage`` when some block has more than one count variable.

A string fixes its segmentation into blocks (the template checks guarantee it), so it fixes the
count of every block, but several assignments of the variables may give the same counts (with
only ``c^(n+m)``, every n + m = k gives c^k). Every probability is therefore a sum over
assignments: P(prefix) = sum of prod_v P(v) over the v whose block counts are those the prefix
finished (equalities), whose current block is at least as long as its run (an inequality) and
free otherwise. The variables in an equality are bounded by it, so that sum is finite; the
inequality's free variables have closed-form or finite tails (``_tail``).

Also here, for every counter template: the template checks (``block_problems``,
``ambiguity_problems``, ``size_problems``), and the length window of ``Language.restrict``. A
string's length is a linear form in the counts, |s| = fixed + sum_v c_v n_v, so "|s| = L" is one
more equality (``window_log_mass``); for templates with one variable per block, whose
constraints are intervals, ``window_mass_vec`` enumerates all variables but the last over the
values the window allows and takes the last one's interval in closed form.

The functions take the ``CounterLanguage`` (``lang``) and read its ``blocks``, ``priors``,
``vars`` and ``_terms``: per block, ``((variable index, coefficient), ...)``, empty for a block
of fixed length.
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from formal_lm import limits
from formal_lm.errors import Problem
from formal_lm.language import LengthStats
from formal_lm.vocab import EOS_ID

# A parse state: (block index, run length in that block, counts of the blocks before it).
State = tuple[int, int, tuple[int, ...]]
START: State = (0, 0, ())
MAX_ENUMERATION = 2_000_000  # assignments enumerated for the string entropy, at most


def size_problems(lang) -> list[Problem]:
    """The limits of ``formal_lm.limits`` on a counter template (exact
    sums enumerate the counts, so their cost grows with them)."""
    out, top = [], {v: p.largest() for v, p in lang.priors.items()}
    for v, x in top.items():
        if x > limits.MAX_COUNT:
            out.append(Problem(f"count variable {v!r} reaches {x}, more than the limit of "
                               f"{limits.MAX_COUNT} (exact sums enumerate every count)",
                               "lower the prior's max (or raise a geometric prior's p), or "
                               "raise formal_lm.limits.MAX_COUNT"))
    joint = math.prod(x - lang.priors[v].min + 1 for v, x in top.items())
    if not out and joint > limits.MAX_ASSIGNMENTS:
        out.append(Problem(f"the count variables have {joint} joint values, more than the "
                           f"limit of {limits.MAX_ASSIGNMENTS} (exact sums run over them)",
                           "narrow the priors, or raise formal_lm.limits.MAX_ASSIGNMENTS"))
    longest = sum(b.coef if b.var is None else sum(c * top.get(v, 0) for v, c in b.terms())
                  for b in lang.blocks)
    if longest > limits.MAX_STRING_LENGTH:
        out.append(Problem(f"the template's longest string has {longest} symbols, more than "
                           f"the limit of {limits.MAX_STRING_LENGTH}",
                           "lower the counts' coefficients or the priors' max, or raise "
                           "formal_lm.limits.MAX_STRING_LENGTH"))
    return out


def well_formed(b) -> bool:
    """A positive coefficient, and further terms only after a variable, each (int >= 1, str)."""
    return isinstance(b.coef, int) and b.coef >= 1 and isinstance(b.plus, tuple) and all(
        isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], int) and t[0] >= 1
        and isinstance(t[1], str) for t in b.plus) and (b.var is not None or not b.plus)


def block_problems(lang, i: int, b) -> list[Problem]:
    """The problems of block ``i`` of a counter template."""
    out = []
    if b.symbol not in lang.alphabet:
        out.append(Problem(f"block {i} symbol={b.symbol!r} is not in the alphabet "
                           f"{lang.alphabet}", "add it to the alphabet"))
    fix = "write counts as '1', '3', 'n', '2n' or 'n+2m'"
    if not isinstance(b.coef, int) or b.coef < 1:
        return out + [Problem(f"block {i} count={b.coef!r} is not a positive integer", fix)]
    if not well_formed(b):
        return out + [Problem(f"block {i} plus={b.plus!r} is not a tuple of (coefficient, "
                              "variable) terms added to a variable count", fix)]
    names = [v for v, _ in b.terms()]
    if len(set(names)) < len(names):
        out.append(Problem(f"block {i} count={b.count_text()!r} names a variable twice",
                           "add its coefficients: 'n+n' is '2n'"))
    for v in dict.fromkeys(names):
        if v not in lang.priors:
            out.append(Problem(f"block {i} uses count variable {v!r} with no prior",
                               f"add a [prior.{v}] table"))
    return out


def ambiguity_problems(lang, ok) -> list[Problem]:
    """Blocks that can all be empty at once between two blocks of one symbol: the string
    would not say which of the two a run belongs to."""
    def can_be_empty(k):
        b = B[k]
        return ok[k] and b.var is not None and all(
            v in lang.priors and lang.priors[v].min == 0 for v, _ in b.terms())

    out, B = [], lang.blocks
    for i in range(len(B)):
        for j in range(i + 2, len(B)):
            if not can_be_empty(j - 1):
                break
            if B[i].symbol != B[j].symbol:
                continue
            gap = [k for k in range(i + 1, j)]
            names = sorted({v for k in gap for v, _ in B[k].terms()})
            what = f"block {gap[0]} ({B[gap[0]].symbol})" if len(gap) == 1 else \
                f"blocks {gap[0]}..{gap[-1]}"
            out.append(Problem(f"{what} can be empty between two {B[i].symbol!r} blocks, so "
                               "strings do not determine the counts",
                               f"give {', '.join(map(repr, names))} a prior with min >= 1"))
    return out


def _lse(logs) -> float:
    logs = [x for x in logs if x > -math.inf]
    if not logs:
        return -math.inf
    top = max(logs)
    return top + math.log(math.fsum(math.exp(x - top) for x in logs))


def advance(lang, state: State, sym: str) -> State | None:
    """The parse state after one more symbol (None: no string of the template starts so)."""
    i, r, counts = state
    blocks = lang.blocks
    if r > 0 and blocks[i].symbol == sym:
        b = blocks[i]
        return (i, r + 1, counts) if (b.var is not None or r + 1 <= b.coef) else None
    if r > 0:
        if blocks[i].var is None and r != blocks[i].coef:
            return None
        counts, i = counts + (r,), i + 1
    for j in range(i, len(blocks)):  # a symbol starts the first block it can (later ones empty)
        if blocks[j].symbol == sym:
            return (j, 1, counts)
        if blocks[j].var is None:  # a fixed block cannot be empty
            return None
        counts += (0,)
    return None


def parse(lang, s) -> State | None:
    state = START
    for sym in s:
        state = advance(lang, state, sym)
        if state is None:
            return None
    return state


def constraints(lang, state: State, final: bool):
    """(equalities, inequality) on the variables: equalities ``(terms, count)`` for the blocks
    that are finished (all of them when ``final``), the inequality ``(terms, run)`` (count >= run)
    for the open block; None when the state cannot finish (a short fixed block)."""
    i, r, counts = state
    blocks, terms = lang.blocks, lang._terms
    if final:
        if r > 0:
            if blocks[i].var is None and r != blocks[i].coef:
                return None
            counts, i = counts + (r,), i + 1
        if any(b.var is None for b in blocks[i:]):
            return None
        counts = counts + (0,) * (len(blocks) - i)
    eqs = [(terms[j], c) for j, c in enumerate(counts) if terms[j]]
    ineq = None
    if not final and r > 0 and terms[i]:
        ineq = (terms[i], r)
    return eqs, ineq


def _bounds(lang, eqs, lower_zero=False):
    """Per bound variable, (lo, hi): the prior's support cut by the equalities."""
    out = {}
    for terms, c in eqs:
        for v, a in terms:
            prior = lang.priors[lang.vars[v]]
            lo, hi = out.get(v, (0 if lower_zero else prior.min,
                                 math.inf if lower_zero or prior.support_max is None
                                 else prior.support_max))
            out[v] = (lo, min(hi, c // a))
    return out


def _solutions(eqs, bounds) -> tuple[list[int], np.ndarray]:
    """The variables bound by ``eqs`` and, as rows of an [N, len(variables)] array, every
    assignment within ``bounds`` that solves the equalities (variable by variable, each row
    expanded by the values its equations still allow; the last unknown of an equation is fixed).
    """
    order = list(bounds)
    A = np.zeros((len(eqs), len(order)), dtype=np.int64)
    for e, (terms, _) in enumerate(eqs):
        for u, a in terms:
            A[e, order.index(u)] += a
    lo = np.array([bounds[v][0] for v in order], dtype=np.int64)
    hi = np.array([bounds[v][1] for v in order], dtype=np.int64)
    last = [max(np.flatnonzero(A[e])) for e in range(len(eqs))]
    rest = np.array([[c for _, c in eqs]], dtype=np.int64)  # [N, E]: what each still needs
    rows = np.zeros((1, 0), dtype=np.int64)
    for k in range(len(order)):
        if not len(rows):
            break
        floor = A[:, k + 1:] @ lo[k + 1:]  # the later unknowns take at least their lower bounds
        top = np.full(len(rows), hi[k])
        bottom = np.full(len(rows), lo[k])
        for e in np.flatnonzero(A[:, k]):
            a = A[e, k]
            top = np.minimum(top, (rest[:, e] - floor[e]) // a)
            if last[e] == k:  # fixed by this equation
                fits = rest[:, e] % a == 0
                bottom = np.where(fits, np.maximum(bottom, rest[:, e] // a), top + 1)
        n = np.maximum(top - bottom + 1, 0)
        starts = np.repeat(bottom - np.concatenate([[0], np.cumsum(n)[:-1]]), n)
        values = np.arange(int(n.sum()), dtype=np.int64) + starts
        rows = np.concatenate([np.repeat(rows, n, axis=0), values[:, None]], axis=1)
        rest = np.repeat(rest, n, axis=0) - values[:, None] * A[:, k][None, :]
    if rows.shape[1] < len(order):
        return order, np.zeros((0, len(order)), dtype=np.int64)
    return order, rows[(rest == 0).all(axis=1)]


def _tail(lang, free, t) -> float:
    """ln P(sum_w a_w * w >= t) for the independent variables ``free`` ((index, a) pairs)."""
    priors = [lang.priors[lang.vars[v]] for v, _ in free]

    @functools.lru_cache(maxsize=None)
    def tail(k, t):
        if t <= sum(a * p.min for (_, a), p in zip(free[k:], priors[k:])):
            return 0.0
        a, p = free[k][1], priors[k]
        need = -(-t // a)  # this variable alone reaches t from `need` on
        if k == len(free) - 1:
            return p.log_mass(need, math.inf)
        top = need - 1 if p.support_max is None else min(need - 1, p.support_max)
        terms = [p.log_mass(need, math.inf)]
        terms += [lang._log_pmf(free[k][0], x) + tail(k + 1, t - a * x)
                  for x in range(p.min, top + 1)]
        return _lse(terms)

    return tail(0, t)


def log_mass(lang, cons) -> float:
    """ln of the prior mass of the assignments that meet ``constraints``' output (cached)."""
    if cons is None:
        return -math.inf
    eqs, ineq = cons
    key = (tuple(eqs), ineq)
    cache = lang._mass_cache
    if key not in cache:
        if len(cache) > 200_000:
            cache.clear()
        cache[key] = _log_mass(lang, eqs, ineq)
    return cache[key]


def _log_mass(lang, eqs, ineq) -> float:
    bounds = _bounds(lang, eqs)
    if any(lo > hi for lo, hi in bounds.values()):
        return -math.inf
    order, rows = _solutions(eqs, bounds)
    if not len(rows):
        return -math.inf
    logp = np.zeros(len(rows))
    for k, v in enumerate(order):
        logp += np.asarray(lang.priors[lang.vars[v]].log_pmf(rows[:, k]), float)
    if ineq is not None:
        terms, r = ineq
        t = np.full(len(rows), r, dtype=np.int64)
        for v, a in terms:
            if v in bounds:
                t -= a * rows[:, order.index(v)]
        free = tuple((v, a) for v, a in terms if v not in bounds)
        if not free:
            logp = np.where(t <= 0, logp, -np.inf)
        elif len(free) == 1:  # a closed form per row
            (v, a), prior = free[0], lang.priors[lang.vars[free[0][0]]]
            need = np.maximum(-(-t // a), 0).astype(float)
            logp += np.where(t <= 0, 0.0, prior.log_mass_vec(need, np.full(len(t), np.inf)))
        else:
            logp += np.array([_tail(lang, free, int(x)) if x > 0 else 0.0 for x in t])
    top = logp.max()
    if top == -np.inf:
        return -math.inf
    return float(top + np.log(np.exp(logp - top).sum()))


def feasible(lang, state) -> bool:
    """Some non-negative counts (whatever the priors) give exactly this string."""
    cons = constraints(lang, state, final=True)
    if cons is None:
        return False
    eqs, _ = cons
    bounds = _bounds(lang, eqs, lower_zero=True)
    return all(lo <= hi for lo, hi in bounds.values()) and len(_solutions(eqs, bounds)[1]) > 0


def next_token_table(lang, s, window=None) -> np.ndarray:
    """[len(s) + 1, V] exact next-token rows along ``s`` (zero after an impossible prefix), of
    the language conditioned on ``window = (lo, hi)`` (lo <= |s| <= hi) when given."""
    def mass(cons):
        return log_mass(lang, cons) if window is None else window_log_mass(lang, cons, *window)

    out = np.zeros((len(s) + 1, lang.vocab.size))
    state = START
    for t in range(len(s) + 1):
        lp = mass(constraints(lang, state, final=False))
        if lp == -math.inf:
            break
        out[t, EOS_ID] = math.exp(mass(constraints(lang, state, final=True)) - lp)
        for k, sym in enumerate(lang.alphabet):
            nxt = advance(lang, state, sym)
            if nxt is not None:
                out[t, k + 3] = math.exp(mass(constraints(lang, nxt, False)) - lp)
        if t < len(s):
            state = advance(lang, state, s[t])
            if state is None:
                break
    return out


def _block_counts(lang, values: np.ndarray) -> np.ndarray:
    """[N, blocks] block lengths of N assignments ([N, vars])."""
    out = np.zeros((len(values), len(lang.blocks)), dtype=np.int64)
    for j, b in enumerate(lang.blocks):
        out[:, j] = b.coef if b.var is None else sum(a * values[:, v] for v, a in lang._terms[j])
    return out


def injective(lang) -> bool:
    """Whether distinct assignments always give distinct strings (full column rank)."""
    A = np.zeros((len(lang.blocks), len(lang.vars)))
    for j, terms in enumerate(lang._terms):
        for v, a in terms:
            A[j, v] = a
    return int(np.linalg.matrix_rank(A)) == len(lang.vars)


def _caps(lang) -> list[int] | None:
    """Per variable, the largest value worth enumerating (prior mass beyond it < 1e-17)."""
    caps = []
    for v in lang.vars:
        p = lang.priors[v]
        if p.support_max is not None:
            caps.append(int(p.support_max))
            continue
        k = p.min
        while p.log_mass(k + 1, math.inf) > math.log(1e-17):
            k += max(1, k // 4)
        caps.append(k)
    size = math.prod(c - lang.priors[v].min + 1 for v, c in zip(lang.vars, caps))
    return caps if size <= MAX_ENUMERATION else None


def conditional_entropy_known(lang) -> bool:
    """Whether ``conditional_entropy`` can be computed (it is 0, or small enough to enumerate)."""
    return injective(lang) or _caps(lang) is not None


def conditional_entropy(lang) -> float | None:
    """H(assignment | string) in nats by enumeration (0 when injective); None when too large.

    For unbounded priors the enumeration stops where the prior mass left is below 1e-17 per
    variable, which changes the figure by far less than floating-point rounding of the entropy.
    """
    if injective(lang):
        return 0.0
    caps = _caps(lang)
    if caps is None:
        return None
    axes = [np.arange(lang.priors[v].min, c + 1) for v, c in zip(lang.vars, caps)]
    grid = np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=1)
    logp = sum(np.asarray(lang.priors[v].log_pmf(grid[:, k]), float)
               for k, v in enumerate(lang.vars))
    keep = np.isfinite(logp)
    grid, logp = grid[keep], logp[keep]
    _, group = np.unique(_block_counts(lang, grid), axis=0, return_inverse=True)
    p = np.exp(logp)
    mass = np.bincount(group.ravel(), weights=p)
    with np.errstate(divide="ignore"):
        return float(-(p * (logp - np.log(mass[group.ravel()]))).sum())


def length_stats(lang, max_length: int) -> LengthStats:
    """Per length: mass, E[-ln p(s)] and E[-ln p(EOS | s)], summing assignments per string."""
    prob = np.zeros(max_length + 1)
    surprisal, eos = np.zeros(max_length + 1), np.zeros(max_length + 1)
    found = [(counts, lp) for counts, lp in lang._assignments(max_length) if lp > -math.inf]
    strings: dict[tuple[int, ...], list[float]] = {}
    if found:
        values = np.array([[counts[v] for v in lang.vars] for counts, _ in found])
        for key, (_, lp) in zip(map(tuple, _block_counts(lang, values).tolist()), found):
            strings.setdefault(key, []).append(lp)
    for key, lps in strings.items():
        lp, L = _lse(lps), sum(key)
        nonempty = [j for j, c in enumerate(key) if c]
        state = (nonempty[-1], key[nonempty[-1]], key[:nonempty[-1]]) if nonempty else START
        p = math.exp(lp)
        prob[L] += p
        surprisal[L] -= p * lp
        eos[L] -= p * (lp - log_mass(lang, constraints(lang, state, final=False)))
    return LengthStats(prob, surprisal, eos, max(0.0, 1.0 - prob.sum()))


# ----- the length window (Language.restrict): |s| is a linear form in the counts ---------------
def length_form(lang) -> tuple[int, tuple[tuple[int, int], ...]]:
    """(fixed, ((variable index, symbols per unit), ...)): |s| = fixed + sum_v c_v n_v."""
    coef = lang._per_var_coef()
    return lang._fixed_length(), tuple((i, coef[v]) for i, v in enumerate(lang.vars))


def window_log_mass(lang, cons, lo: int, hi: int) -> float:
    """``log_mass`` of the assignments that also give lo <= |s| <= hi: one more equation,
    |s| = L, per length L of the window."""
    if cons is None:
        return -math.inf
    eqs, ineq = cons
    fixed, terms = length_form(lang)
    return _lse([log_mass(lang, (list(eqs) + [(terms, L - fixed)], ineq))
                 for L in range(max(lo, fixed), hi + 1)])


def window_mass_vec(lang, iv: dict, lo, hi) -> np.ndarray:
    """ln P(each count v within [iv[v][0], iv[v][1]], and lo <= |s| <= hi), elementwise over
    arrays of bounds (a template with one variable per block: the constraints are intervals).
    Every variable but the last is enumerated over the values the window allows (exact: the
    window bounds them); the last one's values form an interval of its prior (closed form)."""
    fixed, terms = length_form(lang)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    if not terms:  # no count variables: one string, of length ``fixed``
        return np.where((lo <= fixed) & (fixed <= hi), 0.0, -np.inf)
    *first, (k, ck) = terms
    budget = int(np.max(hi, initial=0)) - fixed
    ranges = []
    for v, c in first:
        prior = lang.priors[lang.vars[v]]
        top = budget // c if prior.support_max is None else min(budget // c, prior.support_max)
        ranges.append(range(prior.min, top + 1))
    shape = np.broadcast(lo, hi, *[np.asarray(b) for pair in iv.values() for b in pair]).shape
    total = np.full(shape, -np.inf)
    for values in itertools.product(*ranges):
        logp, used = np.zeros(shape), fixed
        for (v, c), x in zip(first, values):
            a, b = iv[lang.vars[v]]
            logp = logp + np.where((a <= x) & (x <= b), lang._log_pmf(v, x), -np.inf)
            used += c * x
        a, b = iv[lang.vars[k]]
        need = (np.maximum(a, np.ceil((lo - used) / ck)), np.minimum(b, np.floor((hi - used) / ck)))
        logp = logp + lang.priors[lang.vars[k]].log_mass_vec(*np.broadcast_arrays(*need))
        total = np.logaddexp(total, logp)
    return total


def prefix_length_log_probs(lang, s, max_length: int) -> np.ndarray:
    """[max_length + 1] ln P(a string starts with ``s`` and has length L)."""
    out = np.full(max_length + 1, -np.inf)
    if len(s) > max_length:
        return out
    lengths = np.arange(len(s), max_length + 1)
    if lang._linear:
        state = parse(lang, s)
        cons = None if state is None else constraints(lang, state, final=False)
        out[lengths] = [window_log_mass(lang, cons, L, L) for L in lengths]
        return out
    state = lang._parse(s)
    cons = None if state is None else lang._open_constraints(state)
    if cons is not None:
        iv = {v: (np.full(len(lengths), a, float), np.full(len(lengths), b, float))
              for v, (a, b) in zip(lang.vars, cons)}
        out[lengths] = window_mass_vec(lang, iv, lengths, lengths)
    return out
