"""The chart algorithms on the binary grammar: inside, prefix and next-token probabilities.

Shapes: n string length, N nonterminals of the ``CNF``, A alphabet size, V vocab size = A + 3.

- ``log_prob``: the inside algorithm (Baker 1979) with one log-scale per span, so long strings do
  not underflow.
- ``prefix_log_prob`` and next-token tables: Jelinek & Lafferty (1991), "Computation of the
  probability of initial substring generation by stochastic context-free grammars", with the
  left-corner closure R_L = (I - P_L)^-1. Their recursion is unrolled into a forward pass:
  G_t[Z] = sum_{k<t} G_k R_L Bin beta[k, t], so pi(w[:t] a) = G_t R_L Lex[:, a] for every a at
  once, sharing one inside chart across all prefixes.
"""
from __future__ import annotations

import math

import numpy as np

from formal_lm.pcfg._normal_form import CNF
from formal_lm.vocab import EOS_ID


def inside_chart(cnf: CNF, ids: np.ndarray):
    """Scaled inside charts of a batch ``ids`` [B, n] (n >= 1; -1 pads: no span covers one).

    Returns ``(b, c, e, ce)``: beta_b[i, i+d, X] = exp(c[b, i, d]) * b[b, i, d, X] indexed by start
    and width, and the same values indexed by end and width in ``e``/``ce``
    (e[:, j, d] = b[:, j-d, d]), so that both halves of every split are plain slices.
    """
    B, n = ids.shape
    N = cnf.n
    b = np.zeros((B, n + 1, n + 1, N))  # [B, start, width, N]
    c = np.full((B, n + 1, n + 1), -np.inf)  # [B, start, width]
    e = np.zeros((B, n + 1, n + 1, N))  # [B, end, width, N]
    ce = np.full((B, n + 1, n + 1), -np.inf)  # [B, end, width]
    lex = np.concatenate([cnf.lex, np.zeros((N, 1))], 1)  # column -1: padding
    x = lex.T[ids]  # [B, n, N]
    with np.errstate(divide="ignore", invalid="ignore"):
        for d in range(1, n + 1):
            I = n - d + 1
            if d == 1:
                raw, smax = x, np.zeros((B, n))
            else:
                left = b[:, :I, 1:d]  # [B, I, d-1, N]   span (i, i+m), m = 1..d-1
                right = e[:, d:, d - 1:0:-1]  # [B, I, d-1, N]   span (i+m, i+d)
                s = c[:, :I, 1:d] + ce[:, d:, d - 1:0:-1]  # [B, I, d-1]
                smax = s.max(2)  # [B, I]
                if not np.isfinite(smax).any():
                    continue
                w = np.exp(s - np.where(np.isfinite(smax), smax, 0.0)[..., None])
                lw = left[..., cnf.pair_b] * w[..., None]  # [B, I, d-1, P]
                X = np.einsum("bimp,bimp->bip", lw, right[..., cnf.pair_c])  # [B, I, P]
                raw = X @ cnf.bin_pairs.T  # [B, I, N]
            mx = raw.max(2)  # [B, I]
            good = np.isfinite(smax) & (mx > 0)
            vals = np.where(good[..., None], raw / np.where(good, mx, 1.0)[..., None], 0.0)
            scales = np.where(good, smax + np.log(np.where(good, mx, 1.0)), -np.inf)
            b[:, :I, d], c[:, :I, d] = vals, scales
            e[:, d:, d], ce[:, d:, d] = vals, scales
    return b, c, e, ce


def forward(cnf: CNF, e, ce, n: int):
    """ln pi(w[:t] a) for t = 0..n and every terminal a: [B, n+1, A] (charts cover w[:n])."""
    B, N = e.shape[0], cnf.n
    G = np.zeros((B, n + 1, N))  # scaled G_t
    g = np.full((B, n + 1), -np.inf)
    U = np.zeros((B, n + 1, N, N))  # G_t @ R_L Bin
    G[:, 0, cnf.start] = 1.0
    g[:, 0] = 0.0
    U[:, 0] = cnf.bin_r[cnf.start].reshape(N, N)
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in range(1, n + 1):
            s = g[:, :t] + ce[:, t, t:0:-1]  # [B, t]  spans (k, t), k = 0..t-1
            smax = s.max(1)  # [B]
            fin = np.isfinite(smax)
            if not fin.any():
                break
            w = np.exp(s - np.where(fin, smax, 0.0)[:, None])
            bt = e[:, t, t:0:-1] * w[..., None]  # [B, t, N]
            vec = np.einsum("bky,bkyz->bz", bt, U[:, :t])  # [B, N]
            mx = vec.max(1)
            # an exact 0 means w[:t] is not viable (all terms are non-negative products)
            good = fin & (mx > 0)
            G[:, t] = np.where(good[:, None], vec / np.where(good, mx, 1.0)[:, None], 0.0)
            g[:, t] = np.where(good, smax + np.log(np.where(good, mx, 1.0)), -np.inf)
            U[:, t] = (G[:, t] @ cnf.bin_r).reshape(B, N, N)
        return g[..., None] + np.log(G @ cnf.lc1)


def next_token_tables(cnf: CNF, ids: np.ndarray, lengths: np.ndarray, V: int) -> np.ndarray:
    """Next-token tables [B, n+1, V] for terminal ids [B, n] (-1 pads past ``lengths``)."""
    B, n = ids.shape
    out = np.zeros((B, n + 1, V))  # [B, n+1, V]
    if n:
        b, c, e, ce = inside_chart(cnf, ids)
    else:
        e, ce = np.zeros((B, 1, 1, cnf.n)), np.full((B, 1, 1), -np.inf)
    nxt = forward(cnf, e, ce, n)  # [B, n+1, A] ln pi(s[:t] a)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.full((B, n + 1), -np.inf)  # ln p(s[:t])
        logp[:, 0] = math.log(cnf.eps) if cnf.eps > 0 else -np.inf
        if n:
            logp[:, 1:] = c[:, 0, 1:] + np.log(b[:, 0, 1:, cnf.start])
        logpi = np.zeros((B, n + 1))  # ln pi(s[:t])
        if n:
            prev = np.take_along_axis(nxt[:, :n], np.maximum(ids, 0)[..., None], 2)[..., 0]
            logpi[:, 1:] = np.where(ids >= 0, prev, -np.inf)
        alive = np.isfinite(logpi) & (np.arange(n + 1)[None] <= lengths[:, None])
        base = np.where(alive, logpi, 0.0)[..., None]
        out[..., EOS_ID] = np.where(alive, np.exp(logp - base[..., 0]), 0.0)
        out[..., 3:] = np.where(alive[..., None], np.exp(nxt - base), 0.0)
    return out


def inside_by_length(cnf: CNF, L: int, expectation: bool = False):
    """Scaled I[l, X] = P(X derives a length-l string) (and J[l, X] = E[-ln p(d); l])."""
    N = cnf.n
    I = np.zeros((L + 1, N))  # [L+1, N]
    J = np.zeros((L + 1, N)) if expectation else None
    cs = np.full(L + 1, -np.inf)
    if L < 1:
        return I, J, cs
    with np.errstate(divide="ignore"):
        neg_lex = np.where(cnf.lex > 0, -np.log(np.where(cnf.lex > 0, cnf.lex, 1)), 0.0)
        neg_bin = np.where(cnf.bin_flat > 0,
                           -np.log(np.where(cnf.bin_flat > 0, cnf.bin_flat, 1)), 0.0)
    x = cnf.lex.sum(1)
    mx = x.max()
    if mx > 0:
        I[1] = x / mx
        cs[1] = math.log(mx)
        if expectation:
            J[1] = (cnf.lex * neg_lex).sum(1) / mx
    for ln in range(2, L + 1):
        s = cs[1:ln] + cs[ln - 1:0:-1]  # [ln-1]
        smax = s.max()
        if not np.isfinite(smax):
            continue
        w = np.exp(s - smax)
        left, right = I[1:ln] * w[:, None], I[ln - 1:0:-1]
        X = (left.T @ right).ravel()  # [N*N]
        raw = cnf.bin_flat @ X
        mx = raw.max()
        if not mx > 0:
            continue
        I[ln] = raw / mx
        cs[ln] = smax + math.log(mx)
        if expectation:
            Y = (J[1:ln] * w[:, None]).T @ right + left.T @ J[ln - 1:0:-1]
            J[ln] = ((cnf.bin_flat * neg_bin) @ X + cnf.bin_flat @ Y.ravel()) / mx
    return I, J, cs
