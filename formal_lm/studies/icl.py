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

from formal_lm.analysis import measures as M
from formal_lm.analysis.metrics import log_softmax, token_kl
from formal_lm.analysis.predictor import call_model
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

    floor, floor_stderr = None, 0.0  # no loss floor here (the Bayes-optimal reference is analysed)

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


# ----------------------------------------------------------------------------- analysis
@dataclasses.dataclass(frozen=True)
class ICLScores:
    """One predictor scored against the oracle on one evaluation set.

    Attributes:
        set_name: which evaluation set ("heldout": held-out automata of the training family;
            "larger": the off-distribution family).
        ce: nats per real target token (the observed next token).
        kl: mean over real positions of KL(oracle || predictor).
        valid_mass: mean probability the predictor puts on tokens the oracle allows.
        argmax_valid: fraction of positions whose most likely token is allowed by the oracle.
        kl_by_string: KL per string index in context (0 = first string).
        kl_by_position: KL per position bin (``position_bins`` edges).
        gap_closed: 1 - KL(predictor) / KL(in-context bigram): 0 = no better than the bigram,
            1 = the oracle (None for the baselines themselves).
    """

    set_name: str
    ce: float
    kl: float
    valid_mass: float
    argmax_valid: float
    kl_by_string: tuple[float, ...]
    kl_by_position: tuple[float, ...]
    gap_closed: float | None = None

    def measures(self) -> tuple[M.Measure, ...]:
        scope = M.IN_DISTRIBUTION if self.set_name == "heldout" else M.OUT_OF_DISTRIBUTION
        what = ("held-out automata of the training family" if self.set_name == "heldout"
                else "automata of the larger family")
        return (
            M.nats("ce", self.ce, scope, f"NLL per real target token on {what}", headline=True),
            M.nats("kl", self.kl, scope, f"KL(oracle || model) per real target token on {what}",
                   headline=True, tested=True),
            M.Measure("gap_closed", self.gap_closed, "ratio", True, scope, "1 - KL(model) / "
                      f"KL(in-context bigram) on {what} (negative: worse than the bigram)",
                      headline=True),
            M.fraction("valid_mass", self.valid_mass, scope,
                       f"mean probability on tokens the oracle allows, {what}"),
            M.fraction("argmax_valid", self.argmax_valid, scope,
                       f"share of positions whose most likely token is allowed, {what}"),
            M.nats("kl_first_string", self.kl_by_string[0], scope,
                   f"KL on the first string of each sequence, {what}"),
            M.nats("kl_last_string", self.kl_by_string[-1], scope,
                   f"KL on the last string of each sequence, {what}"),
        )


def _binned_means(values: np.ndarray, mask: np.ndarray, bins: np.ndarray, n: int):
    return tuple(float(values[mask & (bins == i)].mean()) if (mask & (bins == i)).any()
                 else float("nan") for i in range(n))


def score_logq(set_name: str, batch: ICLBatch, logq: np.ndarray, *,
               position_bins: Sequence[int], bigram_kl: float | None = None) -> ICLScores:
    """Scores log-probabilities ``logq`` [N, T-1, V] against ``batch``'s oracle."""
    ids, p = batch.ids, batch.oracle
    mask = ids[:, 1:] != PAD_ID  # [N, T-1] real targets
    with np.errstate(divide="ignore"):
        logq = np.maximum(logq, -1e30)
    ce = float(-np.take_along_axis(logq, ids[:, 1:, None], -1)[..., 0][mask].mean())
    kl = token_kl(p, logq)  # [N, T-1]
    q = np.exp(logq)
    allowed = p > 0
    valid_mass = float((q * allowed).sum(-1)[mask].mean())
    arg = np.take_along_axis(allowed, q.argmax(-1)[..., None], -1)[..., 0]
    k = int(batch.string_index.max()) + 1
    pos = np.broadcast_to(np.arange(kl.shape[1]), kl.shape)
    edges = np.asarray(list(position_bins) + [kl.shape[1]])
    pos_bin = np.searchsorted(edges, pos, side="right") - 1
    kl_mean = float(kl[mask].mean())
    gap = None if bigram_kl is None else 1.0 - kl_mean / bigram_kl
    return ICLScores(set_name, ce, kl_mean, valid_mass, float(arg[mask].mean()),
                     _binned_means(kl, mask, batch.string_index, k),
                     _binned_means(kl, mask, pos_bin, len(edges) - 1), gap)


def baseline_scores(set_name: str, batch: ICLBatch, vocab_size: int, *,
                    position_bins: Sequence[int], k: float = 0.5) -> dict[str, ICLScores]:
    """The oracle and the in-context unigram/bigram/trigram baselines scored on ``batch``."""
    out = {}
    with np.errstate(divide="ignore"):
        out["oracle"] = score_logq(set_name, batch, np.log(batch.oracle),
                                   position_bins=position_bins)
        for n, name in ((1, "unigram"), (2, "bigram"), (3, "trigram")):
            q = ngram_in_context(batch.ids, n, vocab_size, k=k)
            out[name] = score_logq(set_name, batch, np.log(q), position_bins=position_bins)
    return out


def score_predictor(predictor, set_name: str, batch: ICLBatch, *, position_bins: Sequence[int],
                    bigram_kl: float) -> ICLScores:
    """Scores a predictor (anything ``as_predictor`` accepts) against the oracle."""
    logq = log_softmax(call_model(predictor, batch.ids))[:, :-1]  # [N, T-1, V]
    return score_logq(set_name, batch, logq, position_bins=position_bins, bigram_kl=bigram_kl)
