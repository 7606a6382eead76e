"""Batched completion of prompts by a model: greedy or sampled, stopping at EOS.

Decoding normalises over the VOCABULARY axis (never the sequence axis) and never emits PAD or BOS.
Every result carries ``finished`` flags: a completion that did not emit EOS within
``max_new_tokens`` is not a string, and every metric built on completions reports the finish rate.

Speed: when the predictor decodes incrementally (``init_state``/``step``: a ``JaxModel``)
and every prompt has the same length, decoding is incremental (one jitted step per token).
Otherwise prompts are written into a fixed right-padded buffer and the model is re-run on the prefix
columns that matter, rounded up to a multiple of ``WIDTH_BUCKET`` so a jitted JAX model compiles
only a few shapes. Because models are causal, the PAD columns to the right do not change the
logits read at each row's current position.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from formal_lm.analysis.metrics import emittable_mask, log_softmax
from formal_lm.analysis.predictor import as_predictor
from formal_lm.errors import FormalLMError, Problem
from formal_lm.seeding import Stream, rng
from formal_lm.vocab import BOS_ID, EOS_ID, PAD_ID

WIDTH_BUCKET = 64
DECODINGS = ("greedy", "sample")


@dataclasses.dataclass(frozen=True)
class Completions:
    """Completions of a list of prompts.

    Attributes:
        prompts: the prompts, tuples of symbols.
        completions: the generated symbols after each prompt (EOS not included).
        finished: whether each completion emitted EOS within ``max_new_tokens``.
        decoding: "greedy" or "sample".
        max_new_tokens: the generation budget.
    """

    prompts: tuple[tuple[str, ...], ...]
    completions: tuple[tuple[str, ...], ...]
    finished: tuple[bool, ...]
    decoding: str
    max_new_tokens: int

    @property
    def finish_rate(self) -> float:
        """Fraction of completions that emitted EOS."""
        return float(np.mean(self.finished)) if self.finished else float("nan")

    @property
    def strings(self) -> tuple[tuple[str, ...], ...]:
        """prompt + completion for each prompt, as one full string."""
        return tuple(p + c for p, c in zip(self.prompts, self.completions))


class _Stepper:
    """Reads next-token logits at per-row positions, jitting the model when it is a JAX function."""

    def __init__(self, model_fn, jit: bool | None):
        self.model_fn = model_fn
        self.jitted = None
        if jit is not False:
            try:
                import jax
                import jax.numpy as jnp

                def at(ids, pos):
                    logits = model_fn(ids)  # [B, W, V]
                    return jnp.take_along_axis(logits, pos[:, None, None], axis=1)[:, 0]  # [B, V]

                self.jitted = jax.jit(at)
            except ImportError:  # pragma: no cover - jax is a dependency
                self.jitted = None
        self.require_jit = jit is True

    def __call__(self, ids: np.ndarray, pos: np.ndarray) -> np.ndarray:
        if self.jitted is not None:
            try:
                return np.asarray(self.jitted(ids, pos), np.float64)
            except Exception:  # a NumPy callable cannot be traced: use it as it is
                if self.require_jit:
                    raise
                self.jitted = None
        logits = np.asarray(self.model_fn(ids), np.float64)  # [B, W, V]
        if logits.ndim != 3 or logits.shape[:2] != ids.shape:
            raise FormalLMError(Problem(
                f"the predictor returned logits of shape {logits.shape} for ids of shape "
                f"{ids.shape}", "a predictor maps ids [B, T] to logits [B, T, V]"))
        return logits[np.arange(len(ids)), pos]


def complete(predictor, lang, prompts: Sequence, *, max_new_tokens: int,
             decoding: str = "greedy", seed: int = 0, temperature: float = 1.0,
             batch_size: int = 256, jit: bool | None = None) -> Completions:
    """Completes each prompt with ``predictor`` until EOS or ``max_new_tokens`` new tokens.

    Args:
        predictor: ids [B, T] -> logits [B, T, V] (anything ``as_predictor`` accepts).
        lang: supplies the vocabulary.
        prompts: strings (tuples of symbols, or ``str`` for one-character alphabets).
        max_new_tokens: generation budget per prompt (EOS counts as a token).
        decoding: "greedy" (argmax) or "sample" (softmax over the vocabulary at ``temperature``).
        seed: seed of the sampler (``derive(seed, Stream.DECODE)``): one uniform per (prompt, new
            token), so the same seed gives the same samples on either decoding path and at any
            batch size.
        batch_size: rows per model call.
        jit: True to require jitting, False to never jit (and never step incrementally), None to
            try and fall back.

    Returns:
        ``Completions`` with ``finished`` flags.
    """
    _check_args(decoding, max_new_tokens, temperature)
    predictor = as_predictor(predictor)
    vocab = lang.vocab
    prompts = tuple(vocab.as_string(p) for p in prompts)
    N = len(prompts)
    if N == 0:
        return Completions((), (), (), decoding, max_new_tokens)
    lengths = np.array([len(p) for p in prompts])
    W = 1 + int(lengths.max()) + max_new_tokens
    ids = np.full((N, W), PAD_ID, np.int32)
    ids[:, 0] = BOS_ID
    for b, p in enumerate(prompts):
        ids[b, 1: 1 + len(p)] = [vocab.id(x) for x in p]
    # one uniform per (row, new token), drawn up front: a row's samples do not depend on the
    # batching or on which decoding path runs
    uniforms = rng(seed, Stream.DECODE).random((N, max_new_tokens))
    allowed = emittable_mask(vocab.size)

    def choose(logits, rows, j):  # [n, V] -> token ids [n] of rows' j-th new token (over V)
        logits = np.asarray(logits, np.float64)
        if logits.shape != (len(rows), vocab.size):
            raise FormalLMError(Problem(
                f"the predictor gave next-token logits of shape {logits.shape} for "
                f"{len(rows)} rows; expected [rows, V={vocab.size}]",
                "a predictor maps ids [B, T] to logits [B, T, V] over the language's vocabulary"))
        logits = np.where(allowed, logits, -np.inf)
        if decoding == "greedy":
            return np.argmax(logits, axis=-1)
        probs = np.exp(log_softmax(logits / temperature, axis=-1))
        cdf = np.cumsum(probs, axis=-1)
        u = uniforms[rows, j] * cdf[:, -1]
        tok = np.minimum((cdf <= u[:, None]).sum(-1), vocab.size - 1)
        return np.where(allowed[tok], tok, EOS_ID)  # float round-off cannot pick PAD/BOS

    finished = np.zeros(N, bool)
    bs = min(batch_size, N)
    incremental = hasattr(predictor, "init_state") and hasattr(predictor, "step") and jit is not False
    if incremental and len(set(lengths.tolist())) == 1:
        _decode_incremental(predictor, ids, int(lengths[0]), finished, choose, bs, W)
    else:
        _decode_full(predictor, jit, ids, lengths, finished, choose, bs, W, max_new_tokens)
    completions = tuple(vocab.decode(ids[b, 1 + lengths[b]:]) for b in range(N))
    return Completions(prompts, completions, tuple(bool(f) for f in finished), decoding,
                       max_new_tokens)


def _check_args(decoding, max_new_tokens, temperature) -> None:
    problems = []
    if decoding not in DECODINGS:
        problems.append(Problem(f"decoding={decoding!r} is not one of {DECODINGS}",
                                "use 'greedy' or 'sample'"))
    if not (isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool)
            and max_new_tokens >= 1):
        problems.append(Problem(f"max_new_tokens={max_new_tokens!r} must be an int >= 1"))
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        problems.append(Problem(f"temperature={temperature!r} must be > 0"))
    if problems:
        raise FormalLMError(problems)


def _decode_incremental(predictor, ids, L, finished, choose, bs, W):
    """Decoding with one jitted step per token; every prompt has ``L`` symbols."""
    N = len(ids)
    for i in range(0, N, bs):
        rows = np.arange(i, min(i + bs, N))
        chunk = ids[rows]
        if len(rows) < bs:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], bs - len(rows), 0)])
        state = predictor.init_state(bs, W)
        for t in range(L + 1):  # feed BOS and the prompt
            logits, state = predictor.step(chunk[:, t], state)
        active = np.ones(len(rows), bool)
        for t in range(L + 1, W):
            tok = choose(np.asarray(logits)[: len(rows)], rows, t - (L + 1))
            tok = np.where(active, tok, PAD_ID)
            ids[rows, t] = tok
            done = active & (tok == EOS_ID)
            finished[rows[done]] = True
            active &= ~done
            if not active.any() or t == W - 1:
                break
            feed = np.zeros(bs, np.int32)
            feed[: len(rows)] = np.where(active, tok, EOS_ID)
            logits, state = predictor.step(feed, state)


def _decode_full(model_fn, jit, ids, lengths, finished, choose, bs, W, max_new_tokens):
    """Generic decoding: re-runs the model on the prefix columns each step (any callable)."""
    N, V = len(ids), None
    pos = lengths.copy()  # index of each row's last token
    active = np.ones(N, bool)
    stepper = _Stepper(model_fn, jit)
    for j in range(max_new_tokens):
        if not active.any():
            break
        need = int(pos[active].max()) + 1
        width = min(W, -(-need // WIDTH_BUCKET) * WIDTH_BUCKET)
        nxt = None
        for i in range(0, N, bs):
            rows = np.arange(i, min(i + bs, N))
            if not active[rows].any():
                continue
            chunk, cpos = ids[rows, :width], pos[rows]
            if len(rows) < bs:  # keep one batch shape for the jitted model
                fill = bs - len(rows)
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], fill, 0)])
                cpos = np.concatenate([cpos, np.repeat(cpos[:1], fill)])
            out = stepper(chunk, cpos.astype(np.int32))[: len(rows)]
            if nxt is None:
                V = out.shape[-1]
                nxt = np.zeros((N, V))
            nxt[rows] = out
        tok = choose(nxt, np.arange(N), j)
        rows = np.flatnonzero(active)
        ids[rows, pos[rows] + 1] = tok[rows]
        pos[rows] += 1
        done = rows[tok[rows] == EOS_ID]
        finished[done] = True
        active[done] = False
