"""What an analyzer reports: typed numbers that carry their unit and direction.

Every analyzer result has ``measures() -> tuple[Measure, ...]``. Reports, records and group
statistics read these; nothing downstream parses names to learn what a number means, so adding
a metric touches only the analyzer that computes it.
"""
from __future__ import annotations

import dataclasses
import math

IN_DISTRIBUTION = "in_distribution"
OUT_OF_DISTRIBUTION = "out_of_distribution"
REFERENCE = "reference"  # a floor or a count: context for the other numbers
SCOPES = (IN_DISTRIBUTION, OUT_OF_DISTRIBUTION, REFERENCE)


@dataclasses.dataclass(frozen=True)
class Measure:
    """One number an analyzer reports.

    Attributes:
        name: a stable identifier (a CSV column, with the analysis label in front).
        value: the number (None when it is undefined, e.g. no completion finished).
        unit: "nats/token", "nats/string", "fraction" (shown as a percentage), "count" ...
        higher_is_better: True, False, or None for numbers that are neither (counts, floors).
        scope: IN_DISTRIBUTION, OUT_OF_DISTRIBUTION or REFERENCE.
        description: one sentence: what was measured, on what.
        headline: whether reports show it in their summary tables.
        tested: whether group comparisons test it (a behaviour, not a count or a rate of
            something else).

    Example:
        >>> m = Measure("kl", 0.01, "nats/token", False, IN_DISTRIBUTION, "exact KL")
        >>> m.formatted()
        '0.01'
    """

    name: str
    value: float | None
    unit: str
    higher_is_better: bool | None
    scope: str
    description: str
    headline: bool = False
    tested: bool = False

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"scope={self.scope!r} must be one of {SCOPES}")
        v = self.value
        if v is not None:
            v = float(v)
            object.__setattr__(self, "value", v if math.isfinite(v) else None)

    @property
    def percent(self) -> bool:
        return self.unit == "fraction"

    def formatted(self, digits: int = 4) -> str:
        if self.value is None:
            return "–"
        if self.percent:
            return f"{100 * self.value:.1f}%"
        return f"{self.value:.{digits}g}"


def fraction(name, value, scope, description, *, headline=False, tested=False) -> Measure:
    """A share of items (higher is better), shown as a percentage."""
    return Measure(name, value, "fraction", True, scope, description, headline, tested)


def nats(name, value, scope, description, *, per="token", headline=False, tested=False,
         higher_is_better=False) -> Measure:
    """A loss or divergence in nats per token (or per string)."""
    return Measure(name, value, f"nats/{per}", higher_is_better, scope, description, headline,
                   tested)


def count(name, value, description) -> Measure:
    """How many items were scored (reference)."""
    return Measure(name, value, "count", None, REFERENCE, description)
