"""Pearson's correlation of two per-seed measures, with a Fisher-z interval."""
from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Correlation:
    """Pearson's r over ``n`` paired values with its ``level`` interval (None below 4 pairs or
    when one side is constant: no interval exists)."""

    n: int
    r: float | None
    ci_low: float | None
    ci_high: float | None
    level: float = 0.95


def correlation(xs: Sequence, ys: Sequence, *, level: float = 0.95) -> Correlation:
    """r of the pairs where both values exist, and tanh(atanh(r) -+ z / sqrt(n - 3)), the
    Fisher-z interval (approximate: it assumes bivariate normal pairs).

    Example:
        >>> c = correlation([1, 2, 3, 4, 5], [2, 4, 5, 4, 6])
        >>> round(c.r, 3), c.n
        (0.853, 5)
    """
    pairs = [(a, b) for a, b in zip(xs, ys) if a is not None and b is not None]
    n = len(pairs)
    if n < 4:
        return Correlation(n, None, None, None, level)
    a, b = np.array(pairs, float).T
    if a.std() == 0 or b.std() == 0:
        return Correlation(n, None, None, None, level)
    r = float(np.corrcoef(a, b)[0, 1])
    z = math.atanh(max(min(r, 1 - 1e-12), -1 + 1e-12))
    half = statistics.NormalDist().inv_cdf(0.5 + level / 2) / math.sqrt(n - 3)
    return Correlation(n, r, math.tanh(z - half), math.tanh(z + half), level)
