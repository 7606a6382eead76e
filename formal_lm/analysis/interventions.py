"""Interchange interventions (Geiger et al. 2021): does the model *use* a latent variable?

For a feature f of the language (``formal_lm.latents``) and features ``keep`` held fixed, a
*pair* is a base prefix b and a source prefix s that agree on ``keep`` and differ on f. The
model reads b; at a layer, at b's last position (the state after the whole prefix), the state
is overwritten with the source's: either only the probed subspace (``h_b + P (h_s - h_b)``, P
the orthogonal projection onto the rows given, e.g. ``ProbeFit.subspace()``), or, with
``subspace=None``, the whole state (``h_s``).

The exact counterfactual is the next-token distribution of the language after a prefix with b's
``keep`` values and s's value of f: the source itself, whose exact next-token row is computed
from the language. That stands for the counterfactual only if (f, keep) determine the next-token
support; pairs whose source state is shared by prefixes of the pool with different supports
are skipped and counted (``n_ambiguous``). With ``informative_only`` (default), only pairs whose
counterfactual support differs from the base's are kept, so a model that ignores the state
scores about 0 and one that uses it as the language does scores 1.

Per layer: interchange-intervention accuracy (the patched model's most likely token is one of
the counterfactual's most likely tokens), support accuracy (the tokens above ``threshold`` are
exactly the counterfactual's support), the mean KL(counterfactual || patched model), and the
unpatched model's accuracy against the counterfactual (``base_accuracy``) for reference.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from formal_lm.analysis import measures as M
from formal_lm.analysis.activations import as_activations, collect_states, patched_next_logits
from formal_lm.analysis.metrics import log_softmax
from formal_lm.errors import FormalLMError, Problem
from formal_lm.latents import latents
from formal_lm.seeding import Stream, rng


@dataclasses.dataclass(frozen=True)
class InterventionLayer:
    """Interchange scores at one layer (NaN when no pair was scored)."""

    layer: int
    n_pairs: int
    accuracy: float
    support_accuracy: float
    kl: float
    base_accuracy: float


@dataclasses.dataclass(frozen=True)
class InterventionResult:
    """Interchange interventions on ``feature`` (``keep`` fixed) at each layer requested."""

    feature: str
    keep: tuple[str, ...]
    subspace: str  # "probe" (the rows given per layer) or "whole state"
    layers: tuple[InterventionLayer, ...]
    n_candidates: int
    n_ambiguous: int

    def measures(self) -> tuple[M.Measure, ...]:
        out = []
        for r in self.layers:
            tag = f"iia_{self.feature}_L{r.layer}"
            where = f"{self.subspace} of layer {r.layer} swapped for {self.feature}"
            out += [M.fraction(tag, r.accuracy, M.IN_DISTRIBUTION, f"interchange-intervention "
                               f"accuracy ({where}): argmax agrees with the exact counterfactual",
                               headline=True),
                    M.fraction(f"{tag}_support", r.support_accuracy, M.IN_DISTRIBUTION,
                               f"predicted next-token set equals the counterfactual support "
                               f"({where})"),
                    M.nats(f"{tag}_kl", r.kl, M.IN_DISTRIBUTION, f"KL(exact counterfactual || "
                           f"patched model) ({where})"),
                    M.Measure(f"{tag}_base", r.base_accuracy, "fraction", None, M.REFERENCE,
                              "share of pairs the unpatched model already gets right"),
                    M.count(f"{tag}_pairs", r.n_pairs, "pairs scored")]
        return tuple(out)


def _key(values: Mapping[str, np.ndarray], names: Sequence[str], t: int) -> tuple:
    return tuple(np.asarray(values[n][t]).tolist().__repr__() for n in names)


def _pool(lang, prefixes, feature, keep):
    """Viable unique prefixes with their f value, keep value, exact next-token row."""
    prefixes = list(dict.fromkeys(lang.vocab.as_string(p) for p in prefixes))
    z = latents(lang, prefixes)
    for name in (feature, *keep):
        z.feature(name)
    rows, fv, kv, kept = [], [], [], []
    for p, v in zip(prefixes, z.values):
        row = lang.next_token_table(p)[-1]
        if row.sum() == 0:
            continue
        kept.append(p)
        rows.append(row)
        fv.append(_key(v, [feature], len(p)))
        kv.append(_key(v, keep, len(p)))
    return kept, np.array(rows), fv, kv


def _pairs(rows, fv, kv, informative_only):
    """(base, source) index pairs and how many candidates had an ambiguous source state."""
    support = rows > 0
    by_state: dict = {}
    for i, (f, k) in enumerate(zip(fv, kv)):
        by_state.setdefault((f, k), []).append(i)
    ambiguous = {st for st, idx in by_state.items()
                 if any((support[j] != support[idx[0]]).any() for j in idx)}
    pairs, n_ambiguous = [], 0
    for b in range(len(fv)):
        for s in range(len(fv)):
            if kv[s] != kv[b] or fv[s] == fv[b]:
                continue
            if (fv[s], kv[s]) in ambiguous:
                n_ambiguous += 1
            elif not informative_only or (support[s] != support[b]).any():
                pairs.append((b, s))
    return pairs, n_ambiguous


def _project(h_b, h_s, basis):
    if basis is None:
        return h_s
    q, _ = np.linalg.qr(np.asarray(basis, np.float64).T)  # [D, r] orthonormal columns
    return h_b + ((h_s - h_b) @ q) @ q.T


def _score(logits, rows, threshold):
    logp = log_softmax(np.asarray(logits, np.float64))
    p = np.exp(logp)
    best = rows >= rows.max(axis=1, keepdims=True) - 1e-12
    acc = best[np.arange(len(p)), p.argmax(axis=1)]
    support = np.all((p > threshold) == (rows > 0), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(rows > 0, rows * (np.log(np.where(rows > 0, rows, 1)) - logp), 0).sum(1)
    return acc, support, kl


def interchange(acts, lang, prefixes: Sequence, *, feature: str, keep: Sequence[str] = (),
                layers: Sequence[int], subspace: Mapping[int, np.ndarray] | None = None,
                n_pairs: int = 256, seed: int = 0, threshold: float = 0.1,
                informative_only: bool = True, batch_size: int = 256) -> InterventionResult:
    """Interchange interventions on ``feature`` at each of ``layers`` (module docstring).

    Args:
        acts: an activation source with ``patched_logits`` (a model, ``FunctionActivations``).
        lang: a language with latent features.
        prefixes: the pool base and source prefixes are drawn from (viable ones are used).
        feature: the latent feature swapped, e.g. ``"diff:a-b"``.
        keep: features base and source must share, e.g. ``("block",)``.
        layers: layers to intervene at (0 = embedding output).
        subspace: layer -> [r, D] rows spanning the directions swapped (e.g.
            ``ProbeFit.subspace()``); None swaps the whole state.
        n_pairs: how many pairs to score (drawn with ``Stream.INTERVENTION``; all if fewer).
        threshold: a token is predicted when the patched model gives it more than this.

    Raises:
        FormalLMError: an unknown feature, a layer without a subspace, a source without
            ``patched_logits``.
    """
    acts = as_activations(acts)
    keep = tuple(keep)
    if subspace is not None and any(layer not in subspace for layer in layers):
        raise FormalLMError(Problem(f"subspace has layers {sorted(subspace)}, not all of "
                                    f"{list(layers)}", "give a basis for every layer, or None"))
    pool, rows, fv, kv = _pool(lang, prefixes, feature, keep)
    pairs, n_ambiguous = _pairs(rows, fv, kv, informative_only)
    n_candidates = len(pairs)
    if len(pairs) > n_pairs:
        pick = rng(seed, Stream.INTERVENTION).choice(len(pairs), n_pairs, replace=False)
        pairs = [pairs[i] for i in sorted(pick)]
    out = []
    if pairs:
        ids = lang.vocab.batch(pool)
        states = collect_states(acts, ids, batch_size=batch_size)
        last = np.array([len(p) for p in pool])
        b, s = np.array(pairs).T
        cf = rows[s]
    for layer in layers:
        if not pairs:
            out.append(InterventionLayer(layer, 0, *[float("nan")] * 4))
            continue
        h = states[layer][np.arange(len(pool)), last]  # [P, D]
        value = _project(h[b], h[s], None if subspace is None else subspace[layer])
        logits = patched_next_logits(acts, ids[b], layer, last[b], value, batch_size=batch_size)
        plain = patched_next_logits(acts, ids[b], layer, last[b], h[b], batch_size=batch_size)
        acc, sup, kl = _score(logits, cf, threshold)
        base_acc = _score(plain, cf, threshold)[0]
        out.append(InterventionLayer(layer, len(pairs), float(acc.mean()), float(sup.mean()),
                                     float(kl.mean()), float(base_acc.mean())))
    return InterventionResult(feature, keep, "whole state" if subspace is None else "probe",
                              tuple(out), n_candidates, n_ambiguous)
