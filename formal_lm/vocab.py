"""Token ids shared by languages, models and analyzers.

Layout (fixed): PAD = 0, BOS = 1, EOS = 2, then the language's symbols in alphabet order.
A sequence is ``[BOS, s_1, ..., s_n, EOS, PAD, ...]``: right-padded, so models need no padding mask.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from formal_lm.errors import FormalLMError, Problem

EOS = "</s>"
"""The end-of-string symbol, as it appears in next-token distributions."""
BOS = "<s>"
PAD = "<pad>"
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
RESERVED = frozenset({EOS, BOS, PAD, "EOS", "BOS", "PAD"})

String = tuple[str, ...]


def check_symbols(symbols: Sequence[str]) -> list[Problem]:
    """Problems with an alphabet: empty, duplicated, reserved or whitespace-holding names."""
    problems = []
    if not symbols:
        problems.append(Problem("the alphabet is empty", "list at least one symbol"))
    seen = set()
    for s in symbols:
        if not isinstance(s, str) or not s or any(c.isspace() for c in s):
            problems.append(Problem(f"symbol={s!r} is not a non-empty string without spaces",
                                    "use names such as 'a' or '('"))
        elif s in RESERVED:
            problems.append(Problem(f"symbol={s!r} is a reserved name",
                                    f"rename it; {sorted(RESERVED)} are reserved"))
        elif s in seen:
            problems.append(Problem(f"symbol={s!r} is listed twice", "list each symbol once"))
        seen.add(s)
    return problems


@dataclasses.dataclass(frozen=True)
class Vocab:
    """Token ids for an alphabet.

    Example:
        >>> v = Vocab(("a", "b"))
        >>> v.encode("ab").tolist()
        [1, 3, 4, 2]
        >>> v.decode([1, 3, 4, 2, 0])
        ('a', 'b')
    """

    symbols: tuple[str, ...]

    def __post_init__(self):
        if problems := check_symbols(self.symbols):
            raise FormalLMError(problems)

    @property
    def tokens(self) -> tuple[str, ...]:
        return (PAD, BOS, EOS, *self.symbols)

    @property
    def size(self) -> int:
        return len(self.symbols) + 3

    def __len__(self) -> int:
        return self.size

    @property
    def single_char(self) -> bool:
        return all(len(s) == 1 for s in self.symbols)

    def id(self, token: str) -> int:
        try:
            return self._index[token]
        except KeyError:
            raise FormalLMError(f"token={token!r} is not in the vocabulary {self.tokens}") from None

    @property
    def _index(self) -> dict[str, int]:
        index = self.__dict__.get("_index_cache")
        if index is None:
            index = {t: i for i, t in enumerate(self.tokens)}
            object.__setattr__(self, "_index_cache", index)
        return index

    def as_string(self, s: str | Iterable[str]) -> String:
        """A string as a tuple of symbols; a plain ``str`` is split into characters."""
        if isinstance(s, str):
            if not self.single_char and s:
                raise FormalLMError(Problem(
                    f"string={s!r} given as str, but symbols {self.symbols} are not all one character",
                    "pass a tuple of symbols"))
            s = tuple(s)
        else:
            s = tuple(s)
        bad = [x for x in s if x not in self._index or self._index[x] < 3]
        if bad:
            raise FormalLMError(Problem(f"symbol={bad[0]!r} in string {s!r} is not in the alphabet "
                                        f"{self.symbols}", "use only the language's symbols"))
        return s

    def encode(self, s, *, bos: bool = True, eos: bool = True) -> np.ndarray:
        ids = [self._index[x] for x in self.as_string(s)]
        return np.array(([BOS_ID] if bos else []) + ids + ([EOS_ID] if eos else []), np.int32)

    def decode(self, ids: Iterable[int]) -> String:
        """Symbols up to the first EOS (or PAD); BOS is skipped."""
        out = []
        for i in np.asarray(ids).tolist():
            if i == BOS_ID:
                continue
            if i in (EOS_ID, PAD_ID):
                break
            out.append(self.tokens[i])
        return tuple(out)

    def batch(self, strings: Iterable, *, length: int | None = None, bos: bool = True,
              eos: bool = True) -> np.ndarray:
        """Encodes strings into one right-padded int32 array [B, T]."""
        rows = [self.encode(s, bos=bos, eos=eos) for s in strings]
        width = max((len(r) for r in rows), default=0) if length is None else length
        out = np.full((len(rows), width), PAD_ID, np.int32)
        for b, r in enumerate(rows):
            if len(r) > width:
                raise FormalLMError(f"a string of {len(r)} tokens does not fit length={width}")
            out[b, : len(r)] = r
        return out
