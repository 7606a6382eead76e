"""In-context learning of regular languages (Reizinger et al. 2024, case study 2; data as in
Akyurek et al. 2024, "In-Context Language Learning").

A sequence is several strings of ONE randomly drawn probabilistic DFA, separated by a delimiter,
with a fresh automaton per sequence::

    [BOS, s_1 ..., |, s_2 ..., |, ..., s_k ..., EOS]      ("|" = the delimiter symbol)

Token ids follow the package layout (PAD=0, BOS=1, EOS=2, symbols from 3); the vocabulary is
``Vocab(alphabet + (delimiter,))``, so the delimiter is the last id. Sequences longer than
``max_length`` tokens are cut (no EOS): cutting does not change the conditional distribution at
any kept position, so the oracle stays exact. Sequence j of a set drawn with ``seed`` takes all
its randomness (automaton size, automaton, strings) from ``derive(seed, Stream.ICL_TASK, j)``.

:class:`ICLData` makes such sequences the training data of ``formal_lm.training.fit``: a fixed
pool per seed, each sequence once per epoch, validated against the exact oracle.

References, per position t (predicting token t+1 from tokens 0..t):

- the oracle: the sequence's own automaton. Inside a string it is ``pdfa.next_token_dist`` of the
  string so far; its halting probability goes to the delimiter, or to EOS after the k-th string;
  after a delimiter the automaton restarts.
- in-context n-gram baselines (n = 1, 2, 3): counts of the tokens seen so far in this sequence,
  add-k smoothed over the outcome set {EOS, symbols, delimiter}.

Shape glossary:  N sequences   T tokens   V vocab (= |alphabet| + 4)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from formal_lm.errors import FormalLMError, Problem
from formal_lm.pfsa import PFSA, random_pdfa
from formal_lm.seeding import SHARED, Stream, derive, rng
from formal_lm.training.data import EpochOrder, Validation, digest
from formal_lm.vocab import BOS_ID, EOS_ID, PAD_ID, Vocab

DELIMITER = "|"


@dataclasses.dataclass(frozen=True)
class PDFAFamily:
    """A family of random probabilistic DFAs (``formal_lm.random_pdfa``) and the ICL layout.

    Attributes:
        n_states: (lo, hi): each sequence's automaton has a number of states uniform in [lo, hi].
        alphabet_size: symbols "a", "b", ... of every automaton.
        density: fraction of the symbols each state has an arc on.
        strings_per_sequence: k strings per sequence (delimiter between, EOS after the last).
        max_length: longest sequence in tokens; longer ones are cut (see the module docstring).
        stop_prob: (lo, hi) of each state's halting probability.

    Example:
        >>> fam = PDFAFamily(n_states=(2, 3), alphabet_size=3, strings_per_sequence=2)
        >>> fam.vocab.tokens
        ('<pad>', '<s>', '</s>', 'a', 'b', 'c', '|')
    """

    n_states: tuple[int, int] = (3, 6)
    alphabet_size: int = 4
    density: float = 0.6
    strings_per_sequence: int = 8
    max_length: int = 96
    stop_prob: tuple[float, float] = (0.08, 0.2)

    def __post_init__(self):
        object.__setattr__(self, "n_states", tuple(self.n_states))
        object.__setattr__(self, "stop_prob", tuple(self.stop_prob))
        problems = []
        lo, hi = (self.n_states + (None, None))[:2]
        if not (len(self.n_states) == 2 and isinstance(lo, int) and isinstance(hi, int)
                and 1 <= lo <= hi):
            problems.append(Problem(f"n_states={self.n_states!r} must be [lo, hi] with "
                                    "1 <= lo <= hi", "e.g. n_states = [3, 6]"))
        if not (isinstance(self.alphabet_size, int) and 1 <= self.alphabet_size <= 26):
            problems.append(Problem(f"alphabet_size={self.alphabet_size!r} must be in 1..26"))
        if not (isinstance(self.density, (int, float)) and 0 < self.density <= 1):
            problems.append(Problem(f"density={self.density!r} must be in (0, 1]"))
        if not (isinstance(self.strings_per_sequence, int) and self.strings_per_sequence >= 1):
            problems.append(Problem(f"strings_per_sequence={self.strings_per_sequence!r} must be "
                                    "an integer >= 1"))
        if not (isinstance(self.max_length, int) and self.max_length >= 3):
            problems.append(Problem(f"max_length={self.max_length!r} must be an integer >= 3"))
        if not (len(self.stop_prob) == 2 and 0 < self.stop_prob[0] <= self.stop_prob[1] < 1):
            problems.append(Problem(f"stop_prob={self.stop_prob!r} must be [lo, hi] in (0, 1)"))
        if problems:
            raise FormalLMError(problems)

    @property
    def alphabet(self) -> tuple[str, ...]:
        return tuple("abcdefghijklmnopqrstuvwxyz"[: self.alphabet_size])

    @property
    def vocab(self) -> Vocab:
        return Vocab(self.alphabet + (DELIMITER,))

    @property
    def delimiter_id(self) -> int:
        return self.vocab.size - 1

    def automaton(self, r: np.random.Generator) -> PFSA:
        """An automaton of the family, drawn with ``r``."""
        n = int(r.integers(self.n_states[0], self.n_states[1] + 1))
        return random_pdfa(n, self.alphabet, seed=int(r.integers(2**31)), density=self.density,
                           stop_prob=self.stop_prob)


@dataclasses.dataclass(frozen=True)
class ICLBatch:
    """Sequences with their exact oracle.

    Attributes:
        ids: int32 [N, T] right-padded token ids.
        oracle: float [N, T-1, V]: the true next-token distribution after each prefix ids[:, :t+1]
            (zero rows at PAD inputs).
        string_index: int [N, T-1]: which string (0-based) the prediction at t belongs to.
        automata: the N automata.
        strings: per sequence, its k strings.
    """

    ids: np.ndarray
    oracle: np.ndarray
    string_index: np.ndarray
    automata: tuple[PFSA, ...]
    strings: tuple[tuple[tuple[str, ...], ...], ...]


def sequence_tokens(family: PDFAFamily, strings: Sequence[Sequence[str]]) -> list[int]:
    """[BOS, s_1, |, s_2, ..., s_k, EOS] as ids (uncut)."""
    v = family.vocab
    out = [BOS_ID]
    for i, s in enumerate(strings):
        out += [v.id(x) for x in s]
        out.append(family.delimiter_id if i + 1 < len(strings) else EOS_ID)
    return out


def oracle_table(family: PDFAFamily, pdfa: PFSA, strings: Sequence[Sequence[str]]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """([L-1, V] true next-token rows, [L-1] string index) for the uncut sequence of length L."""
    V, A, k = family.vocab.size, family.alphabet_size, len(strings)
    rows, which = [], []
    for i, s in enumerate(strings):
        tab = pdfa.next_token_table(tuple(s))  # [len(s)+1, 3+A]: rows for s[:0] .. s[:len]
        r = np.zeros((len(s) + 1, V))
        r[:, 3:3 + A] = tab[:, 3:3 + A]
        r[:, family.delimiter_id if i + 1 < k else EOS_ID] = tab[:, EOS_ID]
        rows.append(r)
        which.append(np.full(len(s) + 1, i))
    return np.concatenate(rows), np.concatenate(which)


def icl_batch(family: PDFAFamily, n: int, *, seed: int, start: int = 0) -> ICLBatch:
    """``n`` sequences; sequence j draws from ``derive(seed, Stream.ICL_TASK, start + j)``.

    Example:
        >>> fam = PDFAFamily(n_states=(2, 2), alphabet_size=2, strings_per_sequence=2,
        ...                  max_length=32)
        >>> b = icl_batch(fam, 3, seed=0)
        >>> b.ids.shape[0], bool(np.allclose(b.oracle[b.ids[:, 1:] != 0].sum(-1), 1))
        (3, True)
    """
    T, V = family.max_length, family.vocab.size
    ids, autos, strs = _draw(family, n, seed, start)
    oracle = np.zeros((n, T - 1, V))
    sidx = np.zeros((n, T - 1), np.int64)
    for j, (pdfa, strings) in enumerate(zip(autos, strs)):
        L = int((ids[j] != PAD_ID).sum())
        tab, which = oracle_table(family, pdfa, strings)
        oracle[j, :L - 1] = tab[:L - 1]
        sidx[j, :L - 1] = which[:L - 1]
    return ICLBatch(ids, oracle, sidx, autos, strs)


def _draw(family: PDFAFamily, n: int, seed: int, start: int):
    """(ids int32 [n, T], automata, strings): sequence j from ``(seed, ICL_TASK, start + j)``."""
    T, k = family.max_length, family.strings_per_sequence
    ids = np.zeros((n, T), np.int32)
    autos, strs = [], []
    for j in range(n):
        r = rng(seed, Stream.ICL_TASK, start + j)
        pdfa = family.automaton(r)
        strings = pdfa.sample(k, seed=int(r.integers(2**31)))
        toks = sequence_tokens(family, strings)[:T]
        ids[j, :len(toks)] = toks
        autos.append(pdfa)
        strs.append(tuple(strings))
    return ids, tuple(autos), tuple(strs)


def icl_training_pool(family: PDFAFamily, n: int, *, seed: int) -> np.ndarray:
    """int32 [n, T] training sequences: ``icl_batch(...).ids`` without building the oracle."""
    return _draw(family, n, seed, 0)[0]


class ICLData:
    """Sequences of a PDFA family as ``formal_lm.training.fit`` data.

    Seed ``s`` trains on a fixed pool of ``pool_size`` sequences drawn with seed ``s``, each once
    per epoch (order from ``derive(s, Stream.TRAIN, -2, epoch)``); every seed is validated on the
    same ``eval_size`` held-out sequences with their exact per-sequence oracle.
    """

    floor, floor_stderr = None, 0.0  # no exact floor (the analyses estimate the Bayes-optimal one)

    def __init__(self, family: PDFAFamily, *, batch_size: int, pool_size: int, eval_size: int,
                 bucket: int = 16, eval_seed: int = SHARED):
        self.family, self.batch_size, self.pool_size = family, batch_size, pool_size
        self.eval_size, self.eval_seed = eval_size, eval_seed
        self.vocab_size = family.vocab.size
        self.bucket, self.max_tokens = bucket, family.max_length
        self._pools: dict[int, tuple[np.ndarray, EpochOrder]] = {}
        self._validation = None

    def train_ids(self, seed: int, step: int) -> np.ndarray:
        if seed not in self._pools:
            self._pools[seed] = (icl_training_pool(self.family, self.pool_size, seed=seed),
                                 EpochOrder(self.pool_size, seed))
        pool, order = self._pools[seed]
        return pool[order.indices(step, self.batch_size)]

    def ood_batch(self, seed: int, step: int):
        return None

    def validation(self) -> Validation:
        if self._validation is None:
            b = icl_batch(self.family, self.eval_size,
                          seed=derive(self.eval_seed, Stream.ICL_EVAL, 0))
            self._validation = Validation(b.ids, b.oracle.astype(np.float32))
        return self._validation

    def identity(self) -> dict:
        v = self.validation()
        return {"kind": "icl", "family": {k: list(x) if isinstance(x, tuple) else x
                                          for k, x in dataclasses.asdict(self.family).items()},
                "pool_size": self.pool_size, "batch_size": self.batch_size,
                "validation": digest(v.ids, v.p_true)}

    def files(self) -> dict[str, str]:
        return {}


# ----------------------------------------------------------------------------- n-gram baselines
def ngram_in_context(ids: np.ndarray, n: int, vocab_size: int, *, k: float = 0.5) -> np.ndarray:
    """In-context n-gram next-token probabilities [N, T-1, V].

    At position t the counts come from this sequence's tokens 0..t only: for n = 1 the tokens
    1..t; for n >= 2 the events (ids[j-n+1..j-1] -> ids[j]), j <= t, whose context equals the
    current one (ids[t-n+2..t]; positions before 0 count as a start marker). Probabilities are
    add-k smoothed over the outcomes {EOS, symbols} (ids 2..V-1; PAD and BOS never follow).

    Example:
        >>> ids = np.array([[1, 3, 4, 3, 4, 2]])
        >>> p = ngram_in_context(ids, 2, 5, k=1.0)
        >>> p[0, 3].round(3).tolist()  # after "a b a": a -> b seen once
        [0.0, 0.0, 0.25, 0.25, 0.5]
    """
    ids = np.asarray(ids)
    N, T = ids.shape
    out = np.zeros((N, T - 1, vocab_size))
    outcomes = np.arange(2, vocab_size)
    m = len(outcomes)
    for b in range(N):
        seq = ids[b]
        L = int((seq != PAD_ID).sum())
        counts: dict = {}
        for t in range(min(L, T - 1)):
            if t >= 1:  # add the event ending at position t
                ctx = tuple(seq[max(0, t - n + 1):t]) if n > 1 else ()
                ctx = (-1,) * (n - 1 - len(ctx)) + ctx
                c = counts.setdefault(ctx, np.zeros(vocab_size))
                c[seq[t]] += 1
            cur = tuple(seq[max(0, t - n + 2):t + 1]) if n > 1 else ()
            cur = (-1,) * (n - 1 - len(cur)) + cur
            c = counts.get(cur, np.zeros(vocab_size))
            row = np.zeros(vocab_size)
            row[outcomes] = (c[outcomes] + k) / (c[outcomes].sum() + k * m)
            out[b, t] = row
    return out
