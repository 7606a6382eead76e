"""Priors over the counts of counter and bracket languages (closed-form pmf, tail, entropy)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from formal_lm.errors import Problem

TAIL = 1e-13  # an unbounded prior's mass past its effective largest count (``largest``)


def _is_int(x) -> bool:
    """An integer that is not a bool (True is no count)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


@dataclasses.dataclass(frozen=True)
class Uniform:
    """n uniform on {min, ..., max}: the papers' a^n b^n uses n ~ Uniform(1, 128)."""

    min: int
    max: int

    def problems(self) -> list[Problem]:
        if not (_is_int(self.min) and _is_int(self.max)) or self.min < 0 \
                or self.max < self.min:
            return [Problem(f"uniform prior min={self.min!r}, max={self.max!r} has no support",
                            "use integers with 0 <= min <= max")]
        return []

    @property
    def support_max(self) -> int:
        return self.max

    def largest(self) -> int:
        """The largest count with positive probability."""
        return self.max

    def log_pmf(self, k) -> np.ndarray:
        k = np.asarray(k)
        inside = (k >= self.min) & (k <= self.max)
        return np.where(inside, -math.log(self.max - self.min + 1), -np.inf)

    def log_mass(self, lo, hi) -> float:
        """ln P(lo <= n <= hi); ``hi`` may be ``math.inf``."""
        lo, hi = max(lo, self.min), min(hi, self.max)
        return math.log((hi - lo + 1) / (self.max - self.min + 1)) if hi >= lo else -math.inf

    def log_mass_vec(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """``log_mass`` elementwise over arrays of bounds."""
        lo, hi = np.maximum(lo, self.min), np.minimum(hi, self.max)
        count = np.maximum(hi - lo + 1, 0) / (self.max - self.min + 1)
        with np.errstate(divide="ignore"):
            return np.log(count)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(self.min, self.max + 1, size=n)

    def entropy(self) -> float:
        return math.log(self.max - self.min + 1)

    def mean(self) -> float:
        return (self.min + self.max) / 2


@dataclasses.dataclass(frozen=True)
class Geometric:
    """P(n = k) proportional to p (1 - p)^(k - min) for k >= min (truncated at ``max`` if given)."""

    p: float
    min: int = 0
    max: int | None = None

    def problems(self) -> list[Problem]:
        out = []
        if not (isinstance(self.p, (int, float)) and not isinstance(self.p, bool)
                and 0 < self.p <= 1):
            out.append(Problem(f"geometric prior p={self.p!r} is not in (0, 1]",
                               "p is the probability of stopping at each count; use e.g. 0.3"))
        if not _is_int(self.min) or self.min < 0 or (
                self.max is not None and (not _is_int(self.max) or self.max < self.min)):
            out.append(Problem(f"geometric prior min={self.min!r}, max={self.max!r} has no support",
                               "use integers with 0 <= min <= max"))
        return out

    @property
    def support_max(self) -> int | None:
        return self.max

    def largest(self) -> int:
        """The largest count: ``max``, or without one the count past which less than 1e-13 of
        the mass lies (where exact sums over counts stop)."""
        if self.max is not None:
            return self.max
        if self.p == 1:
            return self.min
        steps = math.log(TAIL) / math.log1p(-self.p)  # inf for a p that rounds 1 - p to 1
        return self.min + (math.ceil(steps) if steps < 1e18 else 10 ** 18)

    def _log_norm(self) -> float:
        if self.max is None or self.p == 1:
            return 0.0
        return math.log1p(-(1 - self.p) ** (self.max - self.min + 1))

    def log_pmf(self, k) -> np.ndarray:
        k = np.asarray(k)
        inside = (k >= self.min) & ((k <= self.max) if self.max is not None else True)
        q = math.log1p(-self.p) if self.p < 1 else -np.inf
        with np.errstate(invalid="ignore"):
            val = math.log(self.p) + np.where(k - self.min > 0, (k - self.min) * q, 0.0) \
                - self._log_norm()
        return np.where(inside, val, -np.inf)

    def log_mass(self, lo, hi) -> float:
        lo = max(lo, self.min)
        top = hi if self.max is None else min(hi, self.max)
        if top < lo:
            return -math.inf
        q = 1 - self.p
        upper = 0.0 if top == math.inf else q ** (top - lo + 1)
        mass = q ** (lo - self.min) * (1 - upper)
        return math.log(mass) - self._log_norm() if mass > 0 else -math.inf

    def log_mass_vec(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """``log_mass`` elementwise over arrays of bounds."""
        lo = np.maximum(np.asarray(lo, float), self.min)
        top = np.asarray(hi, float) if self.max is None else np.minimum(hi, self.max)
        q = 1 - self.p
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            upper = np.where(np.isinf(top), 0.0, q ** np.where(np.isinf(top), 0, top - lo + 1))
            mass = q ** (lo - self.min) * (1 - upper)
            out = np.log(np.where(top >= lo, mass, 0.0)) - self._log_norm()
        return np.where(top >= lo, out, -np.inf)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.max is None:
            return self.min + rng.geometric(self.p, size=n) - 1
        ks = np.arange(self.min, self.max + 1)
        return rng.choice(ks, size=n, p=np.exp(self.log_pmf(ks)))

    def entropy(self) -> float:
        if self.max is not None:
            lp = self.log_pmf(np.arange(self.min, self.max + 1))
            return float(-(np.exp(lp) * lp).sum())
        p, q = self.p, 1 - self.p
        return 0.0 if p == 1 else (-q * math.log(q) - p * math.log(p)) / p

    def mean(self) -> float:
        if self.max is not None:
            ks = np.arange(self.min, self.max + 1)
            return float((np.exp(self.log_pmf(ks)) * ks).sum())
        return self.min + (1 - self.p) / self.p


Prior = Uniform | Geometric
PRIOR_KINDS = {"uniform": Uniform, "geometric": Geometric}
