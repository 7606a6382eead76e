"""Counter languages: a template of symbol blocks whose lengths are multiples of latent counts.

``a^n b^n`` is ``blocks=[("a", 1, "n"), ("b", 1, "n")]`` with a prior over ``n``; ``b a^(2n)`` is
``[("b", 1, None), ("a", 2, "n")]`` (a block with no variable has a fixed length). When every
block has at most one variable, strings and latent assignments are in bijection, so every
quantity is a closed form in the priors: P(prefix) is the prior mass of the counts consistent
with the prefix, which is an interval per variable (for a^n b^n after a^j: n >= j;
p(b | a^j) = P(n = j) / P(n >= j)).

A block may also sum several variables: ``Block("c", 1, "n", plus=((1, "m"),))`` has n + m
symbols (a^n b^m c^(n+m)). Such templates go through ``formal_lm.counter_linear``, which sums
over every assignment that gives the string (there may be several).
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from formal_lm import counter_linear as linear
from formal_lm import limits
from formal_lm.errors import FormalLMError, Problem, raise_if
from formal_lm.language import Language, LengthStats, check_count, rules_definition
from formal_lm.restricted import rows_from_tables
from formal_lm.priors import Prior
from formal_lm.rules import Rule, alphabet_problems
from formal_lm.vocab import EOS_ID, check_symbols


@dataclasses.dataclass(frozen=True, repr=False)
class Block:
    """``coef * var`` copies of ``symbol`` (``coef`` copies when ``var`` is None), plus
    ``c * v`` more for each ``(c, v)`` in ``plus``: ``Block("c", 1, "n", ((2, "m"),))`` is
    c^(n+2m)."""

    symbol: str
    coef: int  # the block has coef * var symbols, or coef symbols when var is None
    var: str | None = None
    plus: tuple[tuple[int, str], ...] = ()  # further terms (coef, var) of the count

    def terms(self) -> tuple[tuple[str, int], ...]:
        """The count as ((variable, coefficient), ...); () for a fixed length."""
        if self.var is None:
            return ()
        return ((self.var, self.coef),) + tuple((v, c) for c, v in self.plus)

    def count_text(self) -> str:
        """The count as a grammar file writes it: '3', 'n', '2n', 'n+2m'."""
        if self.var is None:
            return str(self.coef)
        return "+".join(f"{'' if c == 1 else c}{v}" for v, c in self.terms())

    def __repr__(self) -> str:
        more = f", plus={self.plus!r}" if self.plus else ""
        return f"Block(symbol={self.symbol!r}, coef={self.coef!r}, var={self.var!r}{more})"


# A parse state: (block index, length of the run inside that block, constraints per variable).
# Constraints are closed intervals (lo, hi) over the counts; hi may be math.inf.
_State = tuple[int, int, tuple[tuple[float, float], ...]]


class CounterLanguage(Language):
    """Blocks of repeated symbols whose lengths are tied together by latent counts.

    Example:
        >>> from formal_lm.priors import Uniform
        >>> lang = CounterLanguage("anbn", [Block("a", 1, "n"), Block("b", 1, "n")],
        ...                        {"n": Uniform(1, 4)})
        >>> round(lang.prob("aabb"), 6), lang.accepts("aab")
        (0.25, False)

        A block may sum variables: a^n b^m c^(n+m), and c^k alone sums every n + m = k:
        >>> lang = CounterLanguage("c", [Block("c", 1, "n", plus=((1, "m"),))],
        ...                        {"n": Uniform(1, 2), "m": Uniform(1, 2)})
        >>> round(lang.prob("ccc"), 6), round(lang.next_token_dist("cc")["c"], 6)
        (0.5, 0.75)
    """

    def __init__(self, name: str, blocks, priors: dict[str, Prior], *, rules: tuple[Rule, ...] = (),
                 alphabet: tuple[str, ...] | None = None, description: str = ""):
        self.name, self.description = name, description
        self.blocks = tuple(Block(*b) if not isinstance(b, Block) else b for b in blocks)
        self.priors = dict(priors)
        self.vars = tuple(self.priors)
        seen = []
        for b in self.blocks:
            if b.symbol not in seen:
                seen.append(b.symbol)
        self.alphabet = tuple(alphabet) if alphabet is not None else tuple(seen)
        self.rules = tuple(rules)
        raise_if(self._problems())
        self._var_index = {v: i for i, v in enumerate(self.vars)}
        self._start: _State = (0, 0, tuple((0.0, math.inf) for _ in self.vars))
        self._linear = any(b.plus for b in self.blocks)  # else the closed forms below
        if self._linear:
            self._string = self._linear_string
        self._terms = tuple(tuple((self._var_index[v], c) for v, c in b.terms())
                            for b in self.blocks)
        self._pmf_cache: dict[tuple[int, int], float] = {}
        self._mass_cache: dict = {}  # constraints -> ln mass, for templates that sum variables
        self._h_cond: float | None = None
        self.entropy_is_exact = not self._linear or linear.conditional_entropy_known(self)

    def _log_pmf(self, v: int, x: int) -> float:
        key = (v, x)
        if key not in self._pmf_cache:
            self._pmf_cache[key] = float(self.priors[self.vars[v]].log_pmf(x))
        return self._pmf_cache[key]

    def _problems(self) -> list[Problem]:
        out = check_symbols(self.alphabet)
        if not self.blocks:
            out.append(Problem("the template has no blocks", "list blocks such as ['a', 'n']"))
        ok = []  # the blocks whose counts are well formed
        for i, b in enumerate(self.blocks):
            out.extend(linear.block_problems(self, i, b))
            ok.append(linear.well_formed(b))
            if i > 0 and self.blocks[i - 1].symbol == b.symbol:
                out.append(Problem(f"blocks {i - 1} and {i} repeat symbol={b.symbol!r}",
                                   "merge them into one block"))
        used = {v for b, good in zip(self.blocks, ok) if good for v, _ in b.terms()}
        for v, prior in self.priors.items():
            out.extend(prior.problems())
            if v not in used:
                out.append(Problem(f"count variable {v!r} has a prior but no block uses it",
                                   "remove the prior or use the variable in a block"))
        if not out:
            out += linear.size_problems(self)
        return out + linear.ambiguity_problems(self, ok) + alphabet_problems(self.rules,
                                                                             self.alphabet)

    # ----- parsing a prefix into count constraints --------------------------------------------
    def _pin(self, cons, block: Block, count: int):
        """Constraints after a finished block of ``count`` symbols, or None if impossible."""
        if block.var is None:
            return cons if count == block.coef else None
        if count % block.coef:
            return None
        return self._meet(cons, block.var, count // block.coef, count // block.coef)

    def _meet(self, cons, var, lo, hi):
        i = self._var_index[var]
        lo, hi = max(cons[i][0], lo), min(cons[i][1], hi)
        if lo > hi:
            return None
        return cons[:i] + ((lo, hi),) + cons[i + 1:]

    def _advance(self, state: _State, sym: str) -> _State | None:
        i, r, cons = state
        if r > 0 and self.blocks[i].symbol == sym:
            b = self.blocks[i]
            return (i, r + 1, cons) if (b.var is not None or r + 1 <= b.coef) else None
        if r > 0:
            cons = self._pin(cons, self.blocks[i], r)
            i += 1
        for j in range(i, len(self.blocks)):
            if cons is None:
                return None
            b = self.blocks[j]
            if b.symbol == sym:
                return (j, 1, cons)
            cons = None if b.var is None else self._meet(cons, b.var, 0, 0)  # block j is empty
        return None

    def _open_constraints(self, state: _State):
        """Constraints of every string that continues the prefix."""
        i, r, cons = state
        if r == 0:
            return cons
        b = self.blocks[i]
        return cons if b.var is None else self._meet(cons, b.var, -(-r // b.coef), math.inf)

    def _final_constraints(self, state: _State):
        """Constraints of the prefix as a whole string."""
        i, r, cons = state
        if r > 0:
            cons = self._pin(cons, self.blocks[i], r)
            i += 1
        for b in self.blocks[i:]:
            if cons is None:
                return None
            cons = None if b.var is None else self._meet(cons, b.var, 0, 0)
        return cons

    def _log_mass(self, cons, window=None) -> float:
        """ln of the prior mass of the counts within ``cons``, and with ``window = (lo, hi)``,
        of those whose string has lo <= |s| <= hi."""
        if cons is None:
            return -math.inf
        if window is not None:
            iv = {v: (np.array([lo], float), np.array([hi], float))
                  for v, (lo, hi) in zip(self.vars, cons)}
            return float(linear.window_mass_vec(self, iv, *window)[0])
        return sum(self.priors[v].log_mass(lo, hi) for v, (lo, hi) in zip(self.vars, cons))

    def _parse(self, s):
        state = self._start
        for sym in s:
            state = self._advance(state, sym)
            if state is None:
                return None
        return state

    # ----- Language primitives --------------------------------------------------------------------
    def log_prob(self, s) -> float:
        return self._log_mass_of(self._s(s), final=True)

    def prefix_log_prob(self, p) -> float:
        return self._log_mass_of(self._s(p), final=False)

    def _log_mass_of(self, s, *, final: bool) -> float:
        """ln of the prior mass of the count assignments that produce ``s`` (``final``) or a
        string that starts with it."""
        if self._linear:
            state = linear.parse(self, s)
            return -math.inf if state is None else linear.log_mass(
                self, linear.constraints(self, state, final=final))
        state = self._parse(s)
        if state is None:
            return -math.inf
        return self._log_mass(self._final_constraints(state) if final
                              else self._open_constraints(state))

    def next_token_table(self, s) -> np.ndarray:
        s = self._s(s)
        if self._linear:
            return linear.next_token_table(self, s)
        return self.next_token_probs(self.vocab.batch([s], eos=False))[0]

    def next_token_probs(self, ids) -> np.ndarray:
        """Vectorised across the batch: every run of every row is computed in one pass per block."""
        if self._linear:  # row by row (the base class's loop over next_token_table)
            return Language.next_token_probs(self, ids)
        return self._tables(ids)

    def _window_next_token_probs(self, ids, lo: int, hi: int) -> np.ndarray:
        """Conditioned on lo <= |s| <= hi: every mass is the counts' mass within the window."""
        if self._linear:
            return rows_from_tables(self, ids, lambda s: linear.next_token_table(self, s,
                                                                                 (lo, hi)))
        return self._tables(ids, (lo, hi))

    def prefix_length_log_probs(self, p, max_length: int) -> np.ndarray:
        """ln P(starts with p, |s| = L): the prior mass of the counts consistent with ``p``
        whose string has length L (|s| is a linear form in the counts)."""
        max_length = check_count("max_length", max_length, limits.MAX_SAMPLE_LENGTH)
        return linear.prefix_length_log_probs(self, self._s(p), max_length)

    def _definition(self) -> dict:
        return {"family": "counter", "alphabet": list(self.alphabet), "blocks": self.blocks,
                "priors": self.priors, "rules": rules_definition(self.rules)}

    def _tables(self, ids, window=None) -> np.ndarray:
        """``next_token_probs`` of a template with one variable per block (within ``window``)."""
        ids, out = self._probs_buffer(ids)
        B, T = ids.shape
        out[:, 0] = self._row(self._start, window)
        segments = {}  # block -> lists of (row, first position, run length, constraints)
        for b in range(B):
            row = ids[b, 1:]
            stop = np.flatnonzero(row < 3)
            n = int(stop[0]) if len(stop) else T - 1
            if n == 0:
                continue
            state, t = self._start, 0
            change = np.flatnonzero(np.diff(row[:n])) + 1
            for start, end in zip(np.r_[0, change], np.r_[change, n]):
                nxt = self._advance(state, self.alphabet[row[start] - 3])
                if nxt is None:
                    break
                j, _, cons = nxt
                segments.setdefault(j, []).append((b, t, int(end - start), cons))
                state, t = (j, int(end - start), cons), t + int(end - start)
        for j, segs in segments.items():
            rows_b = np.concatenate([np.full(R, b) for b, _, R, _ in segs])
            pos = np.concatenate([np.arange(t + 1, t + R + 1) for _, t, R, _ in segs])
            r = np.concatenate([np.arange(1, R + 1) for _, _, R, _ in segs])
            cons = tuple((np.concatenate([np.full(R, c[v][0]) for _, _, R, c in segs]),
                          np.concatenate([np.full(R, c[v][1]) for _, _, R, c in segs]))
                         for v in range(len(self.vars)))
            out[rows_b, pos] = self._run_rows(j, cons, r, window)
        dead = np.cumsum(out.sum(-1) == 0, axis=1) > 0  # after an impossible prefix, all zero
        out[dead] = 0.0
        return out

    def _row(self, state, window=None) -> np.ndarray:
        row = np.zeros(self.vocab.size)
        lp = self._log_mass(self._open_constraints(state), window)
        if lp == -math.inf:
            return row
        row[EOS_ID] = math.exp(self._log_mass(self._final_constraints(state), window) - lp)
        for k, sym in enumerate(self.alphabet):
            nxt = self._advance(state, sym)
            if nxt is not None:
                row[k + 3] = math.exp(self._log_mass(self._open_constraints(nxt), window) - lp)
        return row

    def _run_rows(self, j: int, cons, r: np.ndarray, window=None) -> np.ndarray:
        """Next-token rows after prefixes ending in r symbols of block j (r an array).

        ``cons`` holds the constraints before the run: a tuple of (lo, hi) per variable, each a
        scalar or an array aligned with r.
        """
        blocks, V = self.blocks, self.vocab.size

        def intervals():
            return {v: [np.broadcast_to(np.asarray(lo, float), r.shape).copy(),
                        np.broadcast_to(np.asarray(hi, float), r.shape).copy()]
                    for v, (lo, hi) in zip(self.vars, cons)}

        def meet(iv, var, lo, hi):
            iv[var][0] = np.maximum(iv[var][0], lo)
            iv[var][1] = np.minimum(iv[var][1], hi)

        def mass(iv, ok):
            if window is not None:
                return np.where(ok, linear.window_mass_vec(self, iv, *window), -np.inf)
            total = np.zeros(len(r))
            for v, (lo, hi) in iv.items():
                total = total + self.priors[v].log_mass_vec(lo, hi)
            return np.where(ok, total, -np.inf)

        def pinned(count):
            """Intervals and validity with block j finished after ``count`` symbols."""
            iv, b = intervals(), blocks[j]
            if b.var is None:
                return iv, count == b.coef
            meet(iv, b.var, count // b.coef, count // b.coef)
            return iv, count % b.coef == 0

        def opened(count):
            iv, b = intervals(), blocks[j]
            if b.var is None:
                return iv, count <= b.coef
            meet(iv, b.var, -(-count // b.coef), np.inf)
            return iv, np.ones(len(r), bool)

        lp = mass(*opened(r))
        rows = np.full((len(r), V), -np.inf)
        rows[:, 3 + self.alphabet.index(blocks[j].symbol)] = mass(*opened(r + 1))
        iv, ok = pinned(r)
        seen = {blocks[j].symbol}
        for k in range(j + 1, len(blocks) + 1):  # EOS, or the next block's first symbol
            if k == len(blocks):
                rows[:, EOS_ID] = mass(iv, ok)
                break
            b = blocks[k]
            if b.symbol not in seen:  # as in _advance, a symbol starts the first block it can
                seen.add(b.symbol)
                first = {v: [lo.copy(), hi.copy()] for v, (lo, hi) in iv.items()}
                if b.var is not None:
                    meet(first, b.var, 1, np.inf)
                rows[:, 3 + self.alphabet.index(b.symbol)] = mass(first, ok)
            if b.var is None:  # a fixed block cannot be empty: nothing after it is reachable
                break  # (EOS stays -inf)
            meet(iv, b.var, 0, 0)  # block k empty
        with np.errstate(invalid="ignore"):
            out = np.exp(rows - lp[:, None])
        out[~np.isfinite(lp)] = 0.0
        return np.nan_to_num(out, nan=0.0)

    def _string(self, counts: dict[str, int]) -> tuple[str, ...]:
        out = []
        for b in self.blocks:
            out.extend([b.symbol] * (b.coef * (counts[b.var] if b.var else 1)))
        return tuple(out)

    def _linear_string(self, counts: dict[str, int]) -> tuple[str, ...]:
        out = []
        for b in self.blocks:
            out.extend([b.symbol] * (sum(c * counts[v] for v, c in b.terms()) if b.var else b.coef))
        return tuple(out)

    def _length_of(self, counts) -> int:
        if self._linear:
            return sum(sum(c * counts[v] for v, c in b.terms()) if b.var else b.coef
                       for b in self.blocks)
        return sum(b.coef * (counts[b.var] if b.var else 1) for b in self.blocks)

    def _per_var_coef(self):
        """Per variable, how many symbols one more unit of it adds to the string."""
        return {v: sum(c for b in self.blocks for u, c in b.terms() if u == v) for v in self.vars}

    def _fixed_length(self) -> int:
        return sum(b.coef for b in self.blocks if b.var is None)

    def _assignments(self, max_length: int):
        """Every assignment of counts whose string is at most ``max_length`` long, with its log prob.

        Enumerated: the product of the variables' ranges, so the exact length tables, entropy
        and loss floor are super-linear in the counts (``limits.MAX_COUNT``,
        ``limits.MAX_ASSIGNMENTS`` and ``limits.MAX_ENUMERATED`` bound them)."""
        coef, budget = self._per_var_coef(), max_length - self._fixed_length()
        ranges = []
        for v in self.vars:
            pr = self.priors[v]
            top = budget // coef[v]
            if pr.support_max is not None:
                top = min(top, pr.support_max)
            ranges.append(range(pr.min, top + 1))
        if math.prod(len(r) for r in ranges) > limits.MAX_ENUMERATED:  # unbounded priors
            raise FormalLMError(Problem(
                f"{self.name!r}: lengths up to {max_length} need more than "
                f"{limits.MAX_ENUMERATED} assignments of the counts",
                "ask for a shorter length, or raise formal_lm.limits.MAX_ENUMERATED"))
        for values in itertools.product(*ranges):
            if sum(coef[v] * x for v, x in zip(self.vars, values)) <= budget:
                counts = dict(zip(self.vars, values))
                lp = sum(float(self.priors[v].log_pmf(x)) for v, x in counts.items())
                yield counts, lp

    def _sample(self, n: int, *, seed: int, length: int | None):
        rng = np.random.default_rng(seed)
        if length is None:
            draws = {v: self.priors[v].sample(rng, n) for v in self.vars}
            return [self._string({v: int(draws[v][i]) for v in self.vars}) for i in range(n)]
        cands = [(c, lp) for c, lp in self._assignments(length) if self._length_of(c) == length]
        if not cands:
            raise FormalLMError(Problem(f"{self.name!r} has no strings of length={length}",
                                        "pick a length with P(|s| = length) > 0 "
                                        "(see lang.length_distribution)"))
        lps = np.array([lp for _, lp in cands])
        w = np.exp(lps - lps.max())
        idx = rng.choice(len(cands), size=n, p=w / w.sum())
        return [self._string(cands[i][0]) for i in idx]

    def entropy(self) -> float:
        """H(strings) = H(counts) - H(counts | string); the second term is 0 when every block
        has one variable (a bijection). Where it cannot be enumerated (``entropy_is_exact`` is
        False), this is H(counts), an upper bound."""
        h = sum(p.entropy() for p in self.priors.values())
        if not self._linear or not self.entropy_is_exact:
            return h
        if self._h_cond is None:
            self._h_cond = linear.conditional_entropy(self)
        return h - self._h_cond

    def expected_length(self) -> float:
        coef = self._per_var_coef()
        return self._fixed_length() + sum(coef[v] * self.priors[v].mean() for v in self.vars)

    def length_stats(self, max_length: int) -> LengthStats:
        if self._linear:
            return linear.length_stats(self, max_length)
        prob = np.zeros(max_length + 1)
        surprisal, eos = np.zeros(max_length + 1), np.zeros(max_length + 1)
        for counts, lp in self._assignments(max_length):
            if lp == -math.inf:
                continue
            s, L = self._string(counts), self._length_of(counts)
            p = math.exp(lp)
            prob[L] += p
            surprisal[L] -= p * lp
            eos[L] -= p * (lp - self.prefix_log_prob(s))
        return LengthStats(prob, surprisal, eos, max(0.0, 1.0 - prob.sum()))

    def matches_template(self, s) -> bool:
        """Is ``s`` of the template's shape for SOME counts (ignoring the priors' support)?"""
        if self._linear:
            state = linear.parse(self, self._s(s))
            return state is not None and linear.feasible(self, state)
        state = self._parse(self._s(s))
        if state is None:
            return False
        cons = self._final_constraints(state)
        return cons is not None and all(lo <= hi for lo, hi in cons)
