"""The one error type for bad input, and where a problem sits in a grammar file.

Every check gathers all problems it finds before raising, so a user fixes a file in one pass.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Location:
    """A place in a grammar file (1-based line and column)."""

    path: str
    line: int
    column: int = 1

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: what, where, and how to fix it."""

    message: str
    fix: str = ""
    location: Location | None = None

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        fix = f"\n    fix: {self.fix}" if self.fix else ""
        return f"{where}{self.message}{fix}"


class FormalLMError(ValueError):
    """Bad input to formal_lm. ``problems`` lists everything found, not only the first."""

    def __init__(self, problems: list[Problem] | Problem | str):
        if isinstance(problems, (Problem, str)):
            problems = [problems]
        self.problems = [p if isinstance(p, Problem) else Problem(p) for p in problems]
        super().__init__("\n".join(str(p) for p in self.problems))


class GrammarError(FormalLMError):
    """A grammar (file, text or object) that does not define a valid distribution."""


class ZeroProbabilityPrefix(FormalLMError):
    """A prefix that no string of the language starts with: it has no next-token distribution."""


def raise_if(problems: list[Problem], error: type[FormalLMError] = GrammarError) -> None:
    """Raises ``error`` with every problem gathered, if there are any."""
    if problems:
        raise error(problems)
