"""The one interface every language implements, and what follows from it generically.

A family (PFSA, PCFG, counter, Dyck) implements a handful of exact primitives:

- ``log_prob(s)`` and ``prefix_log_prob(p)`` (natural log; ``-inf`` when impossible),
- ``_sample(n, seed=..., length=...)`` (``sample`` checks the arguments, then calls it),
- ``entropy()`` and ``expected_length()``,
- ``length_stats(max_length)``: per length L, P(|s| = L), E[-ln p(s); |s| = L] and
  E[-ln p(EOS | s); |s| = L] (``None`` for what a family cannot compute exactly),
- ``prefix_length_log_probs(p, max_length)``: ln P(a string starts with p and has length L) for
  every L up to max_length (a generic default enumerates; every family has an exact one), what
  ``restrict(min_length, max_length)``, the language conditioned on a length range, is built on
  (``formal_lm.restricted``).

Everything else (next-token distributions, batched next-token tables, membership, the optimal
training loss, length distributions) is derived here, and families override only for speed.
"""
from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

from formal_lm import limits, restricted
from formal_lm.errors import FormalLMError, Problem, ZeroProbabilityPrefix
from formal_lm.rules import Rule
from formal_lm.vocab import BOS_ID, EOS, EOS_ID, PAD_ID, String, Vocab

TAIL_TOLERANCE = 1e-13


def check_count(what: str, value, limit: int | None = None, fix: str = "") -> int:
    """``value`` as an int when it is an integer (not a bool) in 0..``limit``; else a
    FormalLMError naming ``what`` and the value."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise FormalLMError(Problem(f"{what}={value!r} is not an integer "
                                    f"({type(value).__name__})", fix or "pass an int >= 0"))
    if value < 0 or (limit is not None and value > limit):
        top = f" <= {limit}" if limit is not None else ""
        raise FormalLMError(Problem(f"{what}={value!r} must be an integer >= 0{top}",
                                    fix or (f"pass an int in 0..{limit}" if limit is not None
                                            else "pass an int >= 0")))
    return int(value)


@dataclasses.dataclass(frozen=True)
class LengthStats:
    """Exact per-length statistics for lengths 0..max_length (arrays indexed by length).

    ``tail`` is P(|s| > max_length): every sum over these arrays misses at most that mass.
    """

    prob: np.ndarray
    surprisal: np.ndarray | None  # E[-ln p(s) ; |s| = L]
    eos_surprisal: np.ndarray | None  # E[-ln p(EOS | s) ; |s| = L]
    tail: float


@dataclasses.dataclass(frozen=True)
class LossFloor:
    """The best achievable next-token cross-entropy on a language, in nats (EOS predicted).

    ``kind`` says what the figures are. ``"exact"``: computed exactly (the string entropy is known
    in closed form). ``"estimate"``: the language is not proven unambiguous (a PCFG that passed
    no unambiguity check, a PFSA with two paths for some string), so the string entropy has no
    closed form here; ``entropy``, ``per_token`` and ``per_sequence_mean`` are then unbiased
    Monte Carlo estimates of the *string* entropy's figures, means of -ln p(s_i) over exact
    samples s_i with exact ln p(s_i) (every derivation or path summed), each with its standard
    error (sample standard deviation / sqrt(n)); ``upper_bound`` is the exact derivation- or path-entropy floor, which
    exceeds the true floor by E[H(derivation | string)] per string.

    Attributes:
        entropy: H(strings), nats per string.
        tokens_per_string: E[|s|] + 1 (the EOS prediction counted); always exact.
        per_token: entropy / tokens_per_string, the floor of a corpus-level loss (total nats over
            total predicted tokens); this is what a PAD-masked training loss converges to.
        per_token_symbols_only: the floor when EOS targets are not scored, or None (not computed
            for estimates).
        per_sequence_mean: E[-ln p(s) / (|s| + 1)], the floor of a loss that averages each
            sequence's per-token loss first, or None when it is not known.
        bound: an upper bound on the error of the per-sequence figures from truncating lengths
            (0 for an estimate, which truncates nothing: its error is in the stderr fields).
        kind: ``"exact"`` or ``"estimate"``.
        stderr: the standard error of ``per_token`` (0.0 when exact).
        entropy_stderr: the standard error of ``entropy`` (0.0 when exact).
        upper_bound: for an estimate, the derivation/path-entropy per-token floor, an exact upper
            bound on the true ``per_token``; None when exact.
        per_sequence_stderr: the standard error of ``per_sequence_mean`` (0.0 when exact).
        n_samples: how many exact samples an estimate used (0 when exact).
    """

    entropy: float
    tokens_per_string: float
    per_token: float
    per_token_symbols_only: float | None
    per_sequence_mean: float | None
    bound: float
    kind: Literal["exact", "estimate"] = "exact"
    stderr: float = 0.0
    entropy_stderr: float = 0.0
    upper_bound: float | None = None
    per_sequence_stderr: float = 0.0
    n_samples: int = 0


class Language(abc.ABC):
    """A probability distribution over finite strings, known exactly.

    Strings are tuples of symbols; where every symbol is one character a plain ``str`` works too.

    Example:
        >>> import formal_lm as fl
        >>> lang = fl.load("anbn")
        >>> lang.accepts("aabb"), lang.accepts("abab")
        (True, False)
        >>> round(lang.next_token_dist("aab")["b"], 6)
        1.0
    """

    name: str
    alphabet: tuple[str, ...]
    rules: tuple[Rule, ...] = ()
    description: str = ""
    # False where entropy() is only an upper bound (ambiguity); optimal_loss() then estimates
    entropy_is_exact: bool = True

    @property
    def vocab(self) -> Vocab:
        v = self.__dict__.get("_vocab")
        if v is None:
            v = self.__dict__["_vocab"] = Vocab(tuple(self.alphabet))
        return v

    def _s(self, s) -> String:
        return self.vocab.as_string(s)

    # ----- primitives every family implements -------------------------------------------------
    @abc.abstractmethod
    def log_prob(self, s) -> float:
        """Exact ln p(s); ``-inf`` for strings outside the language."""

    @abc.abstractmethod
    def prefix_log_prob(self, p) -> float:
        """Exact ln P(a string starts with p)."""

    def sample(self, n: int, *, seed: int = 0, length: int | None = None) -> list[String]:
        """``n`` exact samples (optionally conditioned on ``|s| = length``), from ``seed``.

        ``n`` is an int in 0..``limits.MAX_SAMPLES`` (``sample(0)`` is ``[]``), ``seed`` an int
        >= 0, ``length`` None or an int in 0..``limits.MAX_SAMPLE_LENGTH`` that some string has.

        Raises:
            FormalLMError: any other argument, or a length with probability 0 ("no strings of
                length L").
        """
        n = check_count("n", n, limits.MAX_SAMPLES, f"pass an int in 0..{limits.MAX_SAMPLES} "
                        "(formal_lm.limits.MAX_SAMPLES)")
        seed = check_count("seed", seed, fix="pass an int >= 0, e.g. seed=0")
        if length is not None:
            length = check_count("length", length, limits.MAX_SAMPLE_LENGTH,
                                 f"pass None or an int in 0..{limits.MAX_SAMPLE_LENGTH} "
                                 "(formal_lm.limits.MAX_SAMPLE_LENGTH)")
        if n == 0:
            if length is not None:  # the length is still checked: it must be possible
                self._sample(1, seed=seed, length=length)
            return []
        return self._sample(n, seed=seed, length=length)

    @abc.abstractmethod
    def _sample(self, n: int, *, seed: int, length: int | None) -> list[String]:
        """``n`` >= 1 exact samples; the arguments are checked (see ``sample``). A family raises
        ``FormalLMError`` ("no strings of length L") for a length with probability 0."""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        # A subclass written before ``_sample`` (it overrides ``sample`` itself) still works.
        if "sample" in cls.__dict__ and "_sample" not in cls.__dict__:
            cls._sample = lambda self, n, *, seed, length: cls.sample(self, n, seed=seed,
                                                                       length=length)

    @abc.abstractmethod
    def entropy(self) -> float:
        """Entropy of the string distribution in nats, where ``entropy_is_exact``.

        Otherwise (a language not proven unambiguous) it is the derivation or path entropy (for a
        restriction, of the derivations conditioned on its range), an UPPER BOUND on the string
        entropy; ``optimal_loss()`` gives an unbiased Monte Carlo estimate of the string entropy
        with its standard error.
        """

    @abc.abstractmethod
    def expected_length(self) -> float:
        """E[|s|], symbols per string (EOS not counted)."""

    @abc.abstractmethod
    def length_stats(self, max_length: int) -> LengthStats:
        """Exact per-length statistics up to ``max_length``."""

    def prefix_length_log_probs(self, p, max_length: int) -> np.ndarray:
        """[max_length + 1]: ln P(a string starts with ``p`` and has length L), L = 0..max_length
        (-inf below ``len(p)``). Every family computes it exactly; this generic default
        enumerates the completions of ``p`` and refuses (FormalLMError) past
        ``formal_lm.restricted.MAX_ENUMERATED_COMPLETIONS`` strings."""
        max_length = check_count("max_length", max_length, limits.MAX_SAMPLE_LENGTH)
        return restricted.enumerated_prefix_lengths(self, self._s(p), max_length)

    def _window_next_token_probs(self, ids, lo: int, hi: int) -> np.ndarray:
        """[B, T, V] next-token rows (as ``next_token_probs``) of this language conditioned on
        lo <= |s| <= hi. Generic: from ``prefix_length_log_probs``; families override for speed."""
        return restricted.window_next_token_probs(self, ids, lo, hi)

    def _derivation_surprisal(self, max_length: int) -> np.ndarray | None:
        """E[-ln p(d); |s| = L] over derivations (paths) d, L = 0..max_length, for a family whose
        strings may have several (its restrictions bound their entropy with it); None here."""
        return None

    def restrict(self, min_length: int, max_length: int) -> Language:
        """This language conditioned on ``min_length <= |s| <= max_length``: a ``Language`` with
        every quantity exact (see ``formal_lm.restricted``), named e.g. ``"anbn[2..16]"``.

        >>> import formal_lm as fl
        >>> r = fl.load("anbn").restrict(2, 4)
        >>> r.name, round(r.prob("ab"), 6), r.next_token_dist("ab")[fl.EOS]
        ('anbn[2..4]', 0.5, 1.0)

        Raises:
            FormalLMError: a bound that is not an int in 0..``limits.MAX_SAMPLE_LENGTH``,
                ``min_length > max_length``, or a range without mass (naming range and language).
        """
        fix = f"pass an int in 0..{limits.MAX_SAMPLE_LENGTH}"
        lo = check_count("min_length", min_length, limits.MAX_SAMPLE_LENGTH, fix)
        hi = check_count("max_length", max_length, limits.MAX_SAMPLE_LENGTH, fix)
        if lo > hi:
            raise FormalLMError(Problem(f"min_length={lo} > max_length={hi}: the range "
                                        f"[{lo}, {hi}] of {self.name!r} is empty",
                                        "pass min_length <= max_length"))
        return RestrictedLanguage(self, lo, hi)

    def fingerprint(self) -> str:
        """A hash of the language's definition (not its name or where it was read from).

        A grammar file's is set by the loader: the parsed document in canonical form (sorted
        keys, normalised numbers, the multi-line fields parsed; ``name`` and descriptions left
        out), so formatting and comment edits keep it and any value edit changes it. A family
        built in Python hashes its defining parameters (``_definition``); any other language
        hashes exact quantities: the length distribution up to 24, ln p and the next-token rows
        of the first 64 strings in shortlex order, and its rules.
        """
        known = self.__dict__.get("_fingerprint")  # a grammar file's, set when it was read
        return known if known is not None else definition_hash(self._definition())

    def _definition(self) -> dict:
        """The defining parameters hashed by ``fingerprint`` (families override)."""
        import itertools
        probes = list(itertools.islice(enumerate_strings(self.alphabet, 24), 64))
        tables = [self.next_token_table(s)[-1].tolist() + [self.log_prob(s)] for s in probes]
        return {"alphabet": list(self.alphabet), "rules": rules_definition(self.rules),
                "lengths": [float(f"{x:.12g}") for x in self.length_distribution(24)],
                "probes": [[float(f"{x:.12g}") for x in row] for row in tables]}

    # ----- derived ------------------------------------------------------------------------------
    def prob(self, s) -> float:
        return math.exp(self.log_prob(s))

    def accepts(self, s) -> bool:
        """Membership: does the string have positive probability?"""
        return self.log_prob(s) > -math.inf

    def is_viable(self, p) -> bool:
        """Can the prefix be completed into a string of the language?"""
        return self.prefix_log_prob(p) > -math.inf

    def next_token_dist(self, p) -> dict[str, float]:
        """Exact {symbol: p(symbol | p), EOS: p(EOS | p)}.

        Raises:
            ZeroProbabilityPrefix: when no string of the language starts with ``p``.
        """
        p = self._s(p)
        row = self.next_token_table(p)[-1]
        if row.sum() == 0:
            raise ZeroProbabilityPrefix(Problem(
                f"prefix={p!r} has probability 0 under {self.name!r}, so it has no next-token "
                "distribution", "check lang.is_viable(prefix) first"))
        out = {sym: float(row[i + 3]) for i, sym in enumerate(self.alphabet)}
        out[EOS] = float(row[EOS_ID])
        return out

    def next_token_table(self, s) -> np.ndarray:
        """[len(s) + 1, V] next-token probabilities after each prefix ``s[:t]`` (vocab ids).

        Rows of prefixes with probability 0 are all zero. Families override for speed.
        """
        s = self._s(s)
        out = np.zeros((len(s) + 1, self.vocab.size))
        for t in range(len(s) + 1):
            lp = self.prefix_log_prob(s[:t])
            if lp == -math.inf:
                break  # every longer prefix is impossible too
            out[t, EOS_ID] = math.exp(self.log_prob(s[:t]) - lp)
            for i, sym in enumerate(self.alphabet):
                out[t, i + 3] = math.exp(self.prefix_log_prob(s[:t] + (sym,)) - lp)
        return out

    def next_token_probs(self, ids) -> np.ndarray:
        """Exact next-token probabilities for a batch of token ids: [B, T] -> [B, T, V].

        ``ids[b]`` is ``[BOS, s_1, ..., EOS, PAD, ...]``; ``out[b, t]`` is the distribution of the
        token after ``ids[b, :t+1]``, aligned with a model's logits. Rows at or after EOS or PAD, and
        rows of impossible prefixes, are zero.
        """
        ids, out = self._probs_buffer(ids)
        for b in range(ids.shape[0]):
            row = ids[b, 1:]
            stop = np.flatnonzero((row == EOS_ID) | (row == PAD_ID))
            n = int(stop[0]) if len(stop) else len(row)
            syms = tuple(self.vocab.tokens[i] for i in row[:n])
            table = self.next_token_table(syms)
            out[b, : n + 1] = table[: min(n + 1, ids.shape[1])]
        return out

    def _probs_buffer(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """Checks a [B, T] batch of ids (every row starts with BOS) and returns it with a zeroed
        [B, T, V] output array."""
        ids = self.vocab.check_ids(ids, 2)
        bad = np.flatnonzero(ids[:, 0] != BOS_ID) if ids.shape[1] else np.arange(len(ids))
        if len(bad):
            raise FormalLMError(Problem(f"row {bad[0]} of ids does not start with BOS ({BOS_ID})",
                                        "encode strings with lang.vocab.batch"))
        return ids, np.zeros((*ids.shape, self.vocab.size))

    def length_distribution(self, max_length: int) -> np.ndarray:
        """P(|s| = L) for L = 0..max_length."""
        return self.length_stats(max_length).prob

    def _stats_to_tail(self, limit: int = 20000) -> LengthStats:
        L = 64
        while True:
            st = self.length_stats(L)
            if st.tail < TAIL_TOLERANCE or L >= limit:
                return st
            L = min(2 * L, limit)

    def optimal_loss(self, *, n: int = 4096, seed: int = 0) -> LossFloor:
        """The floor of the next-token training loss (see ``LossFloor``).

        Exact where ``entropy_is_exact`` (``n`` and ``seed`` are then ignored). Otherwise an
        unbiased Monte Carlo estimate of the string entropy from ``n`` exact samples drawn with
        ``formal_lm.seeding.derive(seed, Stream.FLOOR)`` (so the same ``(n, seed)`` gives the
        same figures), scored with exact ``log_prob``; ``kind``, the stderr fields and
        ``upper_bound`` say so. Estimates are cached on the instance per ``(n, seed)``.

        Raises:
            FormalLMError: ``n`` below 2 (a standard error needs two samples).
        """
        if self.entropy_is_exact:
            return self._exact_floor()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
            raise FormalLMError(Problem(f"n={n!r} must be an integer >= 2",
                                        "use the default, n=4096"))
        cache = self.__dict__.setdefault("_floor_estimates", {})
        key = (int(n), int(seed))
        if key not in cache:
            cache[key] = self._estimated_floor(*key)
        return cache[key]

    def _exact_floor(self) -> LossFloor:
        H, EL = self.entropy(), self.expected_length()
        st = self._stats_to_tail()
        lengths = np.arange(len(st.prob))
        symbols_only = per_seq = None
        if st.eos_surprisal is not None and EL > 0:
            symbols_only = (H - float(st.eos_surprisal.sum())) / EL
        if st.surprisal is not None:
            per_seq = float((st.surprisal / (lengths + 1)).sum())
        # Truncation: per-sequence averages past max_length are bounded by the whole entropy budget
        # that remains, so the error is at most what the tail of -ln p(s) carries.
        bound = st.tail if st.surprisal is None else max(0.0, H - float(st.surprisal.sum()))
        return LossFloor(H, EL + 1, H / (EL + 1), symbols_only, per_seq, bound)

    def _estimated_floor(self, n: int, seed: int) -> LossFloor:
        """H = E[-ln p(s)] by the mean over ``n`` exact samples (see ``optimal_loss``)."""
        from formal_lm.seeding import Stream, derive
        samples = self.sample(n, seed=derive(seed, Stream.FLOOR))
        surprisal = -self._log_probs(samples)
        if not np.all(np.isfinite(surprisal)):
            bad = samples[int(np.flatnonzero(~np.isfinite(surprisal))[0])]
            raise FormalLMError(f"{self.name!r} sampled {bad!r} but gives it ln p = -inf "
                                "(sample and log_prob disagree)")
        lengths = np.array([len(s) for s in samples], dtype=float)
        EL = self.expected_length()
        H, se = float(surprisal.mean()), float(surprisal.std(ddof=1) / math.sqrt(n))
        per_seq = surprisal / (lengths + 1)
        return LossFloor(H, EL + 1, H / (EL + 1), None, float(per_seq.mean()), 0.0,
                         kind="estimate", stderr=se / (EL + 1), entropy_stderr=se,
                         upper_bound=self.entropy() / (EL + 1),
                         per_sequence_stderr=float(per_seq.std(ddof=1) / math.sqrt(n)),
                         n_samples=n)

    def _log_probs(self, strings: Sequence[String]) -> np.ndarray:
        """Exact ln p(s) of each string (a hook a family may override for speed)."""
        return np.array([self.log_prob(s) for s in strings], dtype=float)

    def info(self) -> dict:
        """A summary used by ``formal-lm inspect``."""
        floor = self.optimal_loss()
        return {"name": self.name, "family": type(self).__name__, "alphabet": self.alphabet,
                "rules": [f"{r.name}: {r.description}" for r in self.rules],
                "entropy_nats": floor.entropy, "entropy_is_exact": self.entropy_is_exact,
                "entropy_kind": floor.kind, "entropy_stderr": floor.entropy_stderr,
                "expected_length": floor.tokens_per_string - 1, "loss_floor": floor}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, alphabet={self.alphabet})"


class RestrictedLanguage(restricted.Restriction, Language):
    """A language conditioned on a length range (``Language.restrict``; the behaviour is
    ``formal_lm.restricted.Restriction``). ``base``, ``min_length`` and ``max_length`` say what
    it restricts."""


def canonical(value):
    """``value`` in the canonical form that ``definition_hash`` hashes: tuples as lists, numbers
    (not booleans) as their shortest decimal text (an integral float as an int: 1.0 is "1"), a
    dataclass (a prior, a block) as its type's name and its fields, a Language as its
    fingerprint, sets sorted, anything else as its repr."""
    if isinstance(value, (bool, np.bool_)) or value is None or isinstance(value, str):
        return bool(value) if isinstance(value, np.bool_) else value
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        x = float(value)
        return str(int(x)) if x.is_integer() and abs(x) < 2 ** 53 else repr(x)
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [canonical(v) for v in value]
    if isinstance(value, Language):
        return {"language": value.fingerprint()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a prior, a block
        return {"type": type(value).__name__, **{f.name: canonical(getattr(value, f.name))
                                                 for f in dataclasses.fields(value) if f.init}}
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(v) for v in value), key=repr)
    return repr(value)  # anything else (a user's rule parameter): its repr


def definition_hash(definition) -> str:
    """A 16-hex-digit SHA-256 of the canonical JSON of ``definition`` (sorted keys)."""
    import hashlib
    import json
    text = json.dumps(canonical(definition), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rules_definition(rules) -> list:
    """The rules' defining fields (kind and parameters; names kept, descriptions left out; a
    grammar a rule refers to as its fingerprint)."""
    out = []
    for r in rules:
        fields = {f.name: getattr(r, f.name) for f in dataclasses.fields(r)
                  if f.init and f.name not in ("description", "grammar")}
        out.append({"kind": type(r).__name__, **fields})
    return out


def enumerate_strings(alphabet: Sequence[str], max_length: int) -> Iterable[String]:
    """Every string over ``alphabet`` up to ``max_length``, shortest first (brute-force oracle)."""
    import itertools
    for L in range(max_length + 1):
        yield from itertools.product(alphabet, repeat=L)
