"""The ``PCFG`` language: construction, exact probabilities, length statistics and sampling.

Internally the grammar is turned into an equivalent weighted binary grammar (``CNF``, see
``_normal_form``) on which the chart algorithms (``_charts``) run.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import final

import numpy as np

from formal_lm import limits
from formal_lm.errors import FormalLMError, Location, Problem, raise_if
from formal_lm.language import Language, LengthStats, check_count, rules_definition
from formal_lm.pcfg._ambiguity import find_ambiguity, is_ll1, is_lr1
from formal_lm.pcfg._charts import forward, inside_by_length, inside_chart, next_token_tables
from formal_lm.pcfg._checks import checked_rules
from formal_lm.pcfg import _lengths
from formal_lm.pcfg._lengths import closure_series, window_tables
from formal_lm.pcfg._lengths import prefix_length_log_probs as length_prefixes
from formal_lm.pcfg._normal_form import Production, partition_functions, to_cnf
from formal_lm.pcfg._notation import parse_nltk
from formal_lm.vocab import EOS_ID, PAD_ID, String


@final
class PCFG(Language):
    """A probabilistic context-free grammar, with exact string, prefix and next-token probabilities.

    Args:
        rules: ``(lhs, rhs, prob)`` productions. A symbol that is some rule's left-hand side is a
            nonterminal; every other right-hand-side symbol is a terminal. ``rhs=()`` is epsilon.
        start: the start nonterminal.
        name: the language's name.
        alphabet: the terminals in vocabulary order (default: order of first appearance).
        locations: rule index -> ``Location``, so that errors point into a grammar file.
        description: one line for listings.

    Raises:
        GrammarError: with every problem found (probabilities, symbols, reachability,
            productivity, an empty language, or a grammar that is not tight).

    Example:
        >>> g = PCFG.from_nltk("S -> '(' S ')' S [0.4] | [0.6]", name="dyck")
        >>> round(g.prob("()"), 6)
        0.144
        >>> round(g.next_token_dist("(")[")"], 6)
        0.6
        >>> g.entropy_is_exact, round(g.expected_length(), 6)
        (True, 4.0)
    """

    def __init__(self, rules: Sequence[Production], *, start: str, name: str = "pcfg",
                 alphabet: Sequence[str] | None = None,
                 locations: Mapping[int, Location] | None = None,
                 description: str | None = None):
        self._setup(rules, start, name, alphabet, dict(locations or {}), {}, [], description)

    @classmethod
    def from_nltk(cls, text: str, *, name: str = "pcfg", start: str | None = None,
                  path: str = "<string>", line_offset: int = 0,
                  alphabet: Sequence[str] | None = None,
                  description: str | None = None) -> PCFG:
        """Parses NLTK's PCFG notation.

        Lines read ``S -> 'a' S 'b' [0.4] | [0.6]``: quoted terminals, bare nonterminals,
        alternatives separated by ``|``, each followed by its probability in brackets (an
        alternative with no symbols is epsilon). ``#`` starts a comment; a line starting with ``|``
        continues the previous rule. Quotes have no escapes. The start defaults to the first
        left-hand side.

        Raises:
            GrammarError: syntax problems, all of them, at ``path:line:column`` (line numbers
                shifted by ``line_offset``); or, when the syntax is fine, every problem of the
                grammar, at the rules' locations.

        Example:
            >>> g = PCFG.from_nltk('''
            ... S -> 'a' S 'b' [0.4]   # nested
            ...    | [0.6]
            ... ''')
            >>> round(g.prob(("a", "b")), 6)
            0.24
        """
        prods, locs, lhs_locs, syntax, refs = parse_nltk(text, path, line_offset)
        raise_if(syntax)
        if start is None:
            start = prods[0][0] if prods else ""
        obj = cls.__new__(cls)
        obj._setup(prods, start, name, alphabet, locs, lhs_locs, refs, description)
        return obj

    # ----- construction ---------------------------------------------------------------------------
    def _setup(self, rules, start, name, alphabet, locations, lhs_locations, problems,
               description):
        g, alphabet = checked_rules(rules, start, alphabet, locations, lhs_locations, problems)
        self.name = name
        self.alphabet = tuple(alphabet)
        self.start = start
        self.nonterminals = g.nts
        self.productions: tuple[Production, ...] = tuple(g.prods)
        self.description = description or (
            f"PCFG with {len(g.nts)} nonterminals and {len(g.prods)} rules, start={start}")
        self._by_lhs = {A: tuple(v) for A, v in g.by_lhs.items()}
        self._cache: dict = {}
        self._cnf = to_cnf(g.prods, g.nts, self.alphabet, start)
        # unambiguous when LL(1) or, failing that, LR(1) (every LR(k) grammar is unambiguous)
        self.entropy_is_exact = (is_ll1(self.productions, g.nts, start, self._by_lhs)
                                 or is_lr1(self.productions, g.nts, start, self._by_lhs))
        self.ambiguity_witness: String | None = None
        if not self.entropy_is_exact:
            self.ambiguity_witness = find_ambiguity(self.productions, g.nts, start, self._by_lhs)

    # ----- exact quantities --------------------------------------------------------------------
    def partition_function(self) -> dict[str, float]:
        """Z_A = P(A derives a finite string), by Newton's method (all 1 for a valid grammar)."""
        if "Z" not in self._cache:
            self._cache["Z"] = partition_functions(self.productions)
        return dict(self._cache["Z"])

    def _ids(self, s) -> np.ndarray:
        index = self._term_index
        ids = np.array([index[x] for x in self._s(s)], dtype=np.int64)
        self._check_chart(len(ids))
        return ids

    def _check_chart(self, n: int) -> None:
        """A FormalLMError when the inside chart of a string of ``n`` symbols would be larger
        than ``limits.MAX_CHART_CELLS`` (the charts are O(n^2 N) in memory, O(n^3 N^3) in time)."""
        cells = (n + 1) ** 2 * max(self._cnf.n, 1)
        if cells > limits.MAX_CHART_CELLS:
            raise FormalLMError(Problem(
                f"a string of {n} symbols needs an inside chart of {cells} cells under "
                f"{self.name!r}, more than the limit of {limits.MAX_CHART_CELLS}",
                "use shorter strings, or raise formal_lm.limits.MAX_CHART_CELLS"))

    def _check_length(self, what: str, L) -> int:
        """``L`` for the length tables (an int in 0..``limits.MAX_LENGTH_TABLE``)."""
        return check_count(what, L, limits.MAX_LENGTH_TABLE,
                           f"pass an int in 0..{limits.MAX_LENGTH_TABLE}; the length tables are "
                           "O(L^2 N^2) (formal_lm.limits.MAX_LENGTH_TABLE)")

    @property
    def _term_index(self) -> dict[str, int]:
        if "term" not in self._cache:
            self._cache["term"] = {a: i for i, a in enumerate(self.alphabet)}
        return self._cache["term"]

    def log_prob(self, s) -> float:
        """Exact ln p(s) by the inside algorithm; ``-inf`` outside the language.

        Cubic in the length (O(n^3 N^3) time, O(n^2 N) memory): strings whose chart would pass
        ``limits.MAX_CHART_CELLS`` are refused with a FormalLMError."""
        ids = self._ids(s)
        cnf = self._cnf
        n = len(ids)
        if n == 0:
            return math.log(cnf.eps) if cnf.eps > 0 else -math.inf
        b, c, _, _ = inside_chart(cnf, ids[None])
        v = b[0, 0, n, cnf.start]
        return float(c[0, 0, n] + math.log(v)) if v > 0 else -math.inf

    def prefix_log_prob(self, p) -> float:
        """Exact ln P(a string starts with p) (Jelinek & Lafferty 1991)."""
        ids = self._ids(p)
        n = len(ids)
        if n == 0:
            return 0.0
        cnf = self._cnf
        if n == 1:
            v = cnf.lc1[cnf.start, ids[0]]
            return math.log(v) if v > 0 else -math.inf
        _, _, e, ce = inside_chart(cnf, ids[None, :-1])
        return float(forward(cnf, e, ce, n - 1)[0, n - 1, ids[-1]])

    def next_token_table(self, s) -> np.ndarray:
        """[len(s) + 1, V] exact next-token probabilities after each prefix ``s[:t]``.

        One inside chart of ``s`` serves every prefix, and one forward pass gives
        pi(s[:t] a) for every t and a: O(n^3 N^2) in all.
        """
        ids = self._ids(s)
        return self._tables(ids[None], np.array([len(ids)]))[0]

    def next_token_probs(self, ids) -> np.ndarray:
        """Exact next-token probabilities for a batch of token ids: [B, T] -> [B, T, V].

        Same contract as ``Language.next_token_probs``; the charts of the batch are computed
        together (in chunks that bound memory).
        """
        return self._batched(ids, self._tables, 0)

    # ----- conditioned on a length range (Language.restrict; see _lengths) --------------------
    def _window_bound(self, hi) -> int:
        """``hi`` when the length-aware pass may take it (``_lengths.MAX_RESTRICT_LENGTH``)."""
        hi, top = check_count("max_length", hi), _lengths.MAX_RESTRICT_LENGTH
        if hi > top:
            raise FormalLMError(Problem(
                f"{self.name!r}: lengths up to {hi} are past the limit of {top} for a PCFG's "
                "length-aware prefix probabilities (restrict, prefix_length_log_probs), which "
                "cost O(L^3 N^2) per string", f"use max_length <= {top}, or raise "
                "formal_lm.pcfg._lengths.MAX_RESTRICT_LENGTH"))
        return hi

    def _series(self, K: int):
        """R(z) of ``_lengths.closure_series`` to degree K (cached to the largest asked)."""
        have = self._cache.get("series")
        if have is None or len(have[1]) < K + 1:
            have = self._cache["series"] = closure_series(self._cnf, max(K, 1))
        return have[0][: K + 1], have[1][: K + 1]

    def prefix_length_log_probs(self, p, max_length: int) -> np.ndarray:
        """ln P(a string starts with p and has length L), L = 0..max_length (at most
        ``formal_lm.pcfg._lengths.MAX_RESTRICT_LENGTH``, a FormalLMError past it): the
        Jelinek-Lafferty pass with every unseen sibling's length kept (``_lengths``)."""
        max_length = self._window_bound(max_length)
        ids = self._ids(p)
        return length_prefixes(self._cnf, ids, max_length, self._series(max_length))

    def _window_next_token_probs(self, ids, lo: int, hi: int) -> np.ndarray:
        hi = self._window_bound(hi)
        series, V = self._series(hi), self.vocab.size
        return self._batched(ids, lambda s, n: window_tables(self._cnf, s, n, V, lo, hi, series),
                             hi)

    def _derivation_surprisal(self, max_length: int) -> np.ndarray:
        """E[-ln p(d); |s| = L] over the binary grammar's derivations (they fix the string)."""
        cnf = self._cnf
        _, J, cs = inside_by_length(cnf, self._check_length("max_length", max_length), True)
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.nan_to_num(np.exp(cs) * J[:, cnf.start])
        out[0] = -cnf.eps * math.log(cnf.eps) if cnf.eps > 0 else 0.0
        return out

    def _definition(self) -> dict:
        return {"family": "pcfg", "start": self.start, "alphabet": list(self.alphabet),
                "productions": [[a, list(rhs), p] for a, rhs, p in self.productions],
                "rules": rules_definition(self.rules)}

    def _batched(self, ids, tables, hi: int) -> np.ndarray:
        """[B, T, V] rows from ``tables(terminal ids [b, n], lengths [b])`` over chunks of the
        batch (``hi``: the degree of a length-aware pass, which takes memory too)."""
        ids, out = self._probs_buffer(ids)
        B, T = ids.shape
        V = self.vocab.size
        if B == 0:
            return out
        body = ids[:, 1:]
        stop = (body == EOS_ID) | (body == PAD_ID)
        lengths = np.where(stop.any(1), stop.argmax(1) if T > 1 else 0, T - 1)  # [B]
        n = int(lengths.max())
        self._check_chart(n)
        syms = np.full((B, n), -1, np.int64)  # terminal indices, -1 padding
        for r in range(B):
            row = body[r, : lengths[r]].astype(np.int64) - 3
            if np.any((row < 0) | (row >= V - 3)):
                raise FormalLMError(f"row {r} of ids holds ids outside 3..{V - 1} before EOS")
            syms[r, : lengths[r]] = row
        N = max(self._cnf.n, 1)
        chunk = max(1, int(4e6 // ((n + 1) ** 2 * N + hi * N * (n + 1 + N))))
        for lo in range(0, B, chunk):
            top = min(B, lo + chunk)
            got = tables(syms[lo:top], lengths[lo:top])  # [b, n+1, V]
            for r in range(lo, top):
                k = min(int(lengths[r]) + 1, T)
                out[r, :k] = got[r - lo, :k]
        return out

    def _tables(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Next-token tables [B, n+1, V] for terminal ids [B, n] (-1 pads past ``lengths``)."""
        return next_token_tables(self._cnf, ids, lengths, self.vocab.size)

    # ----- by length ---------------------------------------------------------------------------
    def length_stats(self, max_length: int) -> LengthStats:
        """Exact P(|s| = L) and, for unambiguous grammars, E[-ln p(s); |s| = L], L <= max_length.

        ``eos_surprisal`` is None (not computed for PCFGs). Quadratic in the length: the tables
        take O(max_length^2 N^2) time, so ``max_length`` is at most ``limits.MAX_LENGTH_TABLE``
        (a FormalLMError past it; length-conditioned sampling shares the limit).
        """
        max_length = self._check_length("max_length", max_length)
        cnf = self._cnf
        exact = self.entropy_is_exact
        I, J, cs = inside_by_length(cnf, max_length, expectation=exact)
        with np.errstate(over="ignore", invalid="ignore"):
            scale = np.exp(cs)
            prob = scale * I[:, cnf.start]
            prob[0] = cnf.eps
            surprisal = None
            if exact:
                surprisal = scale * J[:, cnf.start]
                surprisal[0] = -cnf.eps * math.log(cnf.eps) if cnf.eps > 0 else 0.0
        prob = np.nan_to_num(prob)
        if surprisal is not None:
            surprisal = np.nan_to_num(surprisal)
        tail = max(0.0, 1.0 - math.fsum(prob))
        return LengthStats(prob, surprisal, None, tail)

    # ----- sampling ----------------------------------------------------------------------------
    def _sample(self, n: int, *, seed: int, length: int | None) -> list[String]:
        """``n`` exact samples; with ``length=L``, exact samples conditioned on ``|s| = L``.

        Raises:
            FormalLMError: when no string has length ``L``.
        """
        rng = np.random.default_rng(seed)
        if length is not None:
            return self._sample_length(n, int(length), rng)
        table = self._cache.get("top_down")
        if table is None:
            table = {}
            for A, ks in self._by_lhs.items():
                cum = np.cumsum([self.productions[k][2] for k in ks])
                table[A] = (cum / cum[-1], [tuple(reversed(self.productions[k][1])) for k in ks])
            self._cache["top_down"] = table
        out = []
        for _ in range(n):
            s: list[str] = []
            stack = [self.start]
            while stack:
                x = stack.pop()
                entry = table.get(x)
                if entry is None:
                    s.append(x)
                    continue
                cum, rhss = entry
                j = min(int(np.searchsorted(cum, rng.random(), side="right")), len(rhss) - 1)
                stack.extend(rhss[j])
            out.append(tuple(s))
        return out

    def _sample_length(self, n: int, L: int, rng) -> list[String]:
        cnf = self._cnf
        L = self._check_length("length", L)
        if L == 0:
            if cnf.eps <= 0:
                raise FormalLMError(Problem(
                    f"length=0 has probability 0 under {self.name!r}: the empty string is not in "
                    "the language", "pick a length with lang.length_distribution(L)[L] > 0"))
            return [()] * n
        I, _, cs = inside_by_length(cnf, L)
        if not I[L, cnf.start] > 0:
            raise FormalLMError(Problem(
                f"length={L} has probability 0 under {self.name!r}: no string has that length",
                "pick a length with lang.length_distribution(L)[L] > 0"))
        N = cnf.n
        dists: dict[tuple[int, int], np.ndarray] = {}

        def dist(X, ln):
            key = (X, ln)
            d = dists.get(key)
            if d is None:
                if ln == 1:
                    w = cnf.lex[X]
                else:
                    s = cs[1:ln] + cs[ln - 1:0:-1]
                    fin = np.isfinite(s)
                    sc = np.where(fin, np.exp(s - s[fin].max()), 0.0)  # [ln-1]
                    w = (sc[:, None, None] * I[1:ln, :, None] * I[ln - 1:0:-1, None, :]
                         * cnf.bin[X][None]).ravel()  # [(ln-1)*N*N]
                d = np.cumsum(w)
                d /= d[-1]
                dists[key] = d
            return d

        out = []
        for _ in range(n):
            s = []
            stack = [(cnf.start, L)]
            while stack:
                X, ln = stack.pop()
                d = dist(X, ln)
                j = min(int(np.searchsorted(d, rng.random(), side="right")), len(d) - 1)
                if ln == 1:
                    s.append(self.alphabet[j])
                    continue
                m, rest = divmod(j, N * N)
                B, C = divmod(rest, N)
                stack.append((C, ln - m - 1))
                stack.append((B, m + 1))
            out.append(tuple(s))
        return out

    # ----- expectations over derivations ----------------------------------------------------------
    def _moment_system(self):
        nts = self.nonterminals
        idx = {A: i for i, A in enumerate(nts)}
        M = np.zeros((len(nts), len(nts)))
        h = np.zeros(len(nts))
        t = np.zeros(len(nts))
        for lhs, rhs, p in self.productions:
            i = idx[lhs]
            h[i] -= p * math.log(p)
            for x in rhs:
                if x in idx:
                    M[i, idx[x]] += p
                else:
                    t[i] += p
        return np.eye(len(nts)) - M, h, t, idx[self.start]

    def entropy(self) -> float:
        """Derivational entropy in nats: H_A = local entropy + expected children's entropies.

        Equal to the string entropy when ``entropy_is_exact`` (the grammar passed an LL(1) or an
        LR(1) check, so it is unambiguous). Otherwise it is an UPPER BOUND on the string entropy
        (H(derivation) = H(string) + H(derivation | string)), and ``optimal_loss()`` gives an
        unbiased Monte Carlo estimate of the string entropy with its standard error;
        ``ambiguity_witness`` then holds a string with two derivations when the bounded search
        found one.
        """
        if "H" not in self._cache:
            A, h, _, s = self._moment_system()
            self._cache["H"] = float(np.linalg.solve(A, h)[s])
        return self._cache["H"]

    def expected_length(self) -> float:
        """E[|s|], by a linear solve of expected terminal counts."""
        if "EL" not in self._cache:
            A, _, t, s = self._moment_system()
            self._cache["EL"] = float(np.linalg.solve(A, t)[s])
        return self._cache["EL"]
