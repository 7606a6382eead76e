"""Token ids shared by languages, models and analyzers.

Layout (fixed): PAD = 0, BOS = 1, EOS = 2, then the language's symbols in alphabet order.
A sequence is ``[BOS, s_1, ..., s_n, EOS, PAD, ...]``: right-padded, so models need no padding mask.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from formal_lm import limits
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
        else:
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
        """The id of a token (a symbol, or one of PAD, BOS, EOS)."""
        if not isinstance(token, str) or token not in self._index:
            raise FormalLMError(Problem(f"token={token!r} is not in the vocabulary {self.tokens}",
                                        "pass one of the vocabulary's tokens (a str)"))
        return self._index[token]

    def check_ids(self, ids, ndim: int, what: str = "ids", values: bool = True) -> np.ndarray:
        """``ids`` as an int64 array of ``ndim`` dimensions whose every value is an id of this
        vocabulary (0..size-1); a FormalLMError names a bad value and its position."""
        try:
            arr = np.asarray(ids)
        except (ValueError, TypeError) as e:
            raise FormalLMError(Problem(f"{what} is not an array of token ids: {e}",
                                        "pass a list or array of ints")) from None
        if arr.size == 0 and arr.dtype.kind not in "iu" and arr.ndim == ndim:
            return arr.astype(np.int64)  # [] or [[]]: nothing to check
        if arr.ndim != ndim:
            raise FormalLMError(Problem(f"{what} must have {ndim} dimension(s), got shape "
                                        f"{arr.shape}", "pass " + ("a list of ids" if ndim == 1
                                                                   else "a [B, T] array of ids")))
        if arr.dtype.kind not in "iu":
            raise FormalLMError(Problem(f"{what} must be integer token ids, got dtype "
                                        f"{arr.dtype}", "pass ints (lang.vocab.batch makes them)"))
        bad = np.argwhere((arr < 0) | (arr >= self.size)) if values else ()
        if len(bad):
            pos = tuple(int(i) for i in bad[0])
            where = pos[0] if ndim == 1 else pos
            raise FormalLMError(Problem(
                f"{what}[{', '.join(map(str, pos))}]={int(arr[tuple(bad[0])])} is not a token id "
                f"of this vocabulary (0..{self.size - 1})",
                f"ids are PAD={PAD_ID}, BOS={BOS_ID}, EOS={EOS_ID} and 3..{self.size - 1} for the "
                f"symbols (bad id at position {where})"))
        return arr.astype(np.int64)

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
        elif isinstance(s, (bytes, dict, set, frozenset)) or not isinstance(s, Iterable):
            raise FormalLMError(Problem(f"string={s!r} is not a string: a {type(s).__name__}",
                                        "pass a tuple of symbols (or a str of one-character "
                                        "symbols)"))
        else:
            s = tuple(s)
        bad = [(i, x) for i, x in enumerate(s)
               if not isinstance(x, str) or x not in self._index or self._index[x] < 3]
        if bad:
            i, x = bad[0]
            shown = s if len(s) <= 20 else f"{s[:20]!r}... ({len(s)} symbols)"
            raise FormalLMError(Problem(f"symbol={x!r} at position {i} of string {shown} is not in "
                                        f"the alphabet {self.symbols}",
                                        "use only the language's symbols"))
        return s

    def encode(self, s, *, bos: bool = True, eos: bool = True) -> np.ndarray:
        ids = [self._index[x] for x in self.as_string(s)]
        return np.array(([BOS_ID] if bos else []) + ids + ([EOS_ID] if eos else []), np.int32)

    def decode(self, ids: Iterable[int]) -> String:
        """Symbols up to the first EOS (or PAD); BOS is skipped.

        Every id before that must be one of the vocabulary (0..size-1): another value is a
        FormalLMError naming it and its position (a negative id is never read as EOS).
        """
        out = []
        arr = self.check_ids(ids, 1, values=False)
        stop = np.flatnonzero((arr == EOS_ID) | (arr == PAD_ID))
        if len(stop):
            arr = arr[: stop[0]]  # ids after the end are not read (a model's output may hold any)
        for i in self.check_ids(arr, 1).tolist():
            if i == BOS_ID:
                continue
            if i in (EOS_ID, PAD_ID):
                break
            out.append(self.tokens[i])
        return tuple(out)

    def batch(self, strings: Iterable, *, length: int | None = None, bos: bool = True,
              eos: bool = True) -> np.ndarray:
        """Encodes strings into one right-padded int32 array [B, T].

        ``length`` (None: the longest row) is an int in 0..``limits.MAX_SAMPLE_LENGTH + 2`` (the
        longest string ``sample(n, length=L)`` takes, with BOS and EOS) that every row fits.
        """
        top = limits.MAX_SAMPLE_LENGTH + 2  # the longest sampled string, BOS and EOS
        if length is not None and (isinstance(length, bool) or not isinstance(
                length, (int, np.integer)) or not 0 <= length <= top):
            raise FormalLMError(Problem(f"length={length!r} is not None or an int in 0..{top}",
                                        "pass the row width, e.g. length=64"))
        if isinstance(strings, (str, bytes)) or not isinstance(strings, Iterable):
            raise FormalLMError(Problem(f"strings={strings!r} is not a list of strings",
                                        "pass a list of strings: batch([('a', 'b'), ('a',)])"))
        rows = [self.encode(s, bos=bos, eos=eos) for s in strings]
        width = max((len(r) for r in rows), default=0) if length is None else int(length)
        try:
            out = np.full((len(rows), width), PAD_ID, np.int32)
        except (MemoryError, ValueError):
            raise FormalLMError(Problem(f"a [{len(rows)}, {width}] batch does not fit in memory",
                                        "pass a smaller length")) from None
        for b, r in enumerate(rows):
            if len(r) > width:
                raise FormalLMError(f"a string of {len(r)} tokens does not fit length={width}")
            out[b, : len(r)] = r
        return out
