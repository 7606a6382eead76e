"""Length-aware prefix probabilities of a PCFG: P(a string starts with w[:t] and has length L).

The Jelinek-Lafferty forward pass (``_charts.forward``) sums every unseen right sibling of the
left-corner spine out (each derives some string, with probability 1). Here each such sibling
keeps its length: a right sibling Z contributes its length generating function
f_Z(z) = sum_l P(Z derives a string of l symbols) z^l (``inside_by_length``), so the left-corner
relation becomes P(z)[X, Y] = sum_Z Bin[X, Y, Z] f_Z(z) and its closure R(z) = (I - P(z))^-1. No
nonterminal of the binary grammar derives the empty string (f_Z(0) = 0), so R's coefficients
follow from R_0 = I, R_k = sum_{l=1..k} P_l R_{k-l}. With z counting the symbols still owed by
the siblings passed so far,

    G_0 = e_start,   G_t(z) = sum_{k<t} sum_{x,y} beta[k, t, y] (G_k(z) R(z))[x] Bin[x, y, .],
    P(w[:t] a, |s| = t + 1 + d) = [z^d] (G_t(z) R(z) Lex)[a],

which at z = 1 is Jelinek and Lafferty's pi(w[:t] a) = G_t R_L Lex[:, a].

Polynomials are cut at the degree the longest length asked for needs, and every coefficient
vector has its own log-scale, so no length under- or overflows another. Cost, with N
nonterminals of the binary grammar and hi the longest length: O(hi^2 N^3) for R(z) (once per
grammar), then O(n^2 hi N^2 + n hi N^3) per string of n symbols; ``MAX_RESTRICT_LENGTH`` bounds
hi (a FormalLMError past it, rather than hours of work).
"""
from __future__ import annotations

import math

import numpy as np

from formal_lm.pcfg._charts import inside_by_length, inside_chart
from formal_lm.pcfg._normal_form import CNF
from formal_lm.restricted import logsumexp
from formal_lm.vocab import EOS_ID

MAX_RESTRICT_LENGTH = 512
"""The longest length a PCFG's length-aware prefix probabilities (and so ``restrict``) take. The
next-token table of one string of about 220 symbols of ``arith`` (N = 8) conditioned on lengths
200..256 takes 0.6 s on one core (0.04 s unconditioned); the cost grows as hi^3 N^2."""


def _normalise(v: np.ndarray, scale: np.ndarray):
    """(v / max, scale + ln max) over the last axis; rows that are all zero get scale -inf."""
    mx = v.max(-1) if v.shape[-1] else np.zeros(v.shape[:-1])
    good = np.isfinite(scale) & (mx > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(good[..., None], v / np.where(good, mx, 1.0)[..., None], 0.0)
        return out, np.where(good, scale + np.log(np.where(good, mx, 1.0)), -np.inf)


def closure_series(cnf: CNF, K: int):
    """R(z) to degree K: (R [K+1, N, N], rs [K+1]) with R_k = exp(rs[k]) R[k]."""
    N = cnf.n
    I, _, cs = inside_by_length(cnf, K)  # P(Z derives l symbols) = exp(cs[l]) I[l, Z]
    P = np.einsum("xyz,lz->lxy", cnf.bin, I)  # [K+1, N, N], P_l = exp(cs[l]) P[l]
    R, rs = np.zeros((K + 1, N, N)), np.full(K + 1, -np.inf)
    R[0], rs[0] = np.eye(N), 0.0
    for k in range(1, K + 1):
        sc = cs[1: k + 1] + rs[k - 1:: -1]  # l = 1..k with R_{k-l}
        if not np.isfinite(sc).any():
            continue
        top = sc[np.isfinite(sc)].max()
        w = np.where(np.isfinite(sc), np.exp(sc - top), 0.0)
        acc = np.einsum("l,lxy,lyz->xz", w, P[1: k + 1], R[k - 1:: -1])
        if acc.max() > 0:
            R[k], rs[k] = acc / acc.max(), top + math.log(acc.max())
    return R, rs


def _times_closure(G, gs, R, rs):
    """H(z) = G(z) R(z) for coefficient vectors G [B, D, N] with log-scales gs [B, D]."""
    B, D, N = G.shape
    with np.errstate(invalid="ignore"):
        S = gs[:, None, :] + np.where(np.arange(D)[:, None] >= np.arange(D)[None, :],
                                      rs[np.abs(np.arange(D)[:, None] - np.arange(D)[None, :])],
                                      -np.inf)[None]  # [B, k, j]: G_j R_{k-j}
    top = S.max(2)
    top = np.where(np.isfinite(top), top, 0.0)
    acc = np.zeros((B, D, N))
    for j in range(D):
        if not np.isfinite(gs[:, j]).any():
            continue
        w = np.exp(S[:, j:, j] - top[:, j:])  # [B, D - j]
        acc[:, j:] += w[..., None] * np.einsum("bx,mxy->bmy", G[:, j], R[: D - j])
    return _normalise(acc, np.where(np.isfinite(S.max(2)), top, -np.inf))


def poly_forward(cnf: CNF, e, ce, n: int, top: int, series):
    """(H [B, n+1, top, N], hs [B, n+1, top]): H_t(z) = G_t(z) R(z) at every position t <= n,
    to degree top - t - 1 (charts ``e``/``ce`` of ``inside_chart`` cover w[:n])."""
    R, rs = series
    B, N = e.shape[0], cnf.n
    H, hs = np.zeros((B, n + 1, top, N)), np.full((B, n + 1, top), -np.inf)
    for t in range(min(n, top - 1) + 1):
        D = top - t
        if t == 0:
            G, gs = np.zeros((B, D, N)), np.full((B, D), -np.inf)
            G[:, 0, cnf.start], gs[:, 0] = 1.0, 0.0
        else:
            sc = ce[:, t, t:0:-1][..., None] + hs[:, :t, :D]  # [B, k, d]: spans (k, t)
            m = sc.max(1)
            fin = np.isfinite(m)
            with np.errstate(invalid="ignore"):
                w = np.where(np.isfinite(sc), np.exp(sc - np.where(fin, m, 0.0)[:, None]), 0.0)
            Q = np.einsum("bkd,bkdx,bky->bdxy", w, H[:, :t, :D], e[:, t, t:0:-1])
            G, gs = _normalise(np.einsum("bdxy,xyz->bdz", Q, cnf.bin), np.where(fin, m, -np.inf))
        H[:, t, :D], hs[:, t, :D] = _times_closure(G, gs, R[:D], rs[:D])
    return H, hs


def _log_lex(H, hs, lex) -> np.ndarray:
    """ln of the coefficients of H(z) Lex: [..., D, A]."""
    with np.errstate(divide="ignore"):
        return np.log(H @ lex) + hs[..., None]


def prefix_length_log_probs(cnf: CNF, ids: np.ndarray, max_length: int, series) -> np.ndarray:
    """[max_length + 1] ln P(a string starts with terminals ``ids`` [n] and has length L)."""
    n = len(ids)
    out = np.full(max_length + 1, -np.inf)
    if n > max_length:
        return out
    if n == 0:
        I, _, cs = inside_by_length(cnf, max_length)
        with np.errstate(divide="ignore"):
            out[:] = cs + np.log(I[:, cnf.start])
            out[0] = math.log(cnf.eps) if cnf.eps > 0 else -np.inf
        return out
    e, ce = _charts(cnf, ids[None, :-1])
    H, hs = poly_forward(cnf, e, ce, n - 1, max_length, series)
    out[n:] = _log_lex(H[0, n - 1], hs[0, n - 1], cnf.lex)[: max_length - n + 1, ids[-1]]
    return out


def _charts(cnf: CNF, ids: np.ndarray):
    """The end-indexed inside charts (``e``, ``ce``) of ``inside_chart`` (empty ones for n = 0)."""
    B, n = ids.shape
    if n == 0:
        return np.zeros((B, 1, 1, cnf.n)), np.full((B, 1, 1), -np.inf)
    _, _, e, ce = inside_chart(cnf, ids)
    return e, ce


def window_tables(cnf: CNF, ids: np.ndarray, lengths: np.ndarray, V: int, lo: int, hi: int,
                  series) -> np.ndarray:
    """Next-token tables [B, n+1, V] of terminal ids [B, n] (-1 pads past ``lengths``) for the
    language conditioned on lo <= |s| <= hi."""
    B, n = ids.shape
    out = np.zeros((B, n + 1, V))
    if n:
        b, c, e, ce = inside_chart(cnf, ids)
    else:
        e, ce = _charts(cnf, ids)
    H, hs = poly_forward(cnf, e, ce, n, hi, series)
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in range(min(n, hi) + 1):
            logs = np.full((B, V - 2), -np.inf)  # EOS, then every terminal
            if lo <= t:
                logs[:, 0] = (math.log(cnf.eps) if cnf.eps > 0 else -np.inf) if t == 0 else \
                    c[:, 0, t] + np.log(b[:, 0, t, cnf.start])
            first = max(lo - t - 1, 0)  # the degree d of length t + 1 + d = lo
            if t < hi and first < hi - t:
                logs[:, 1:] = logsumexp(_log_lex(H[:, t, first: hi - t], hs[:, t, first: hi - t],
                                                 cnf.lex), axis=1)
            top = logs.max(1, keepdims=True)
            ok = np.isfinite(top[:, 0]) & (t <= lengths)
            w = np.exp(logs - np.where(ok[:, None], top, 0.0))
            w = np.where(ok[:, None], w / w.sum(1, keepdims=True), 0.0)
            out[:, t, EOS_ID], out[:, t, 3:] = w[:, 0], w[:, 1:]
    return out
