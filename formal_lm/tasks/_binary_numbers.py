"""The binary-number tasks of Deletang et al. (ICLR 2023): addition and multiplication
(little-endian, answer then a terminal then ``=0`` padding) and the integer square root
(big-endian). Each part is a plain function that :mod:`formal_lm.tasks.transduction` assembles.

The paper's samplers, kept exactly: at length ``n >= 3`` the operator sits after ``a`` bits with
``a`` uniform on ``1 .. n-2``, and each operand is uniform on the nonzero ``a``-bit (resp.
``n-1-a``-bit) strings. At ``n <= 2`` there is no operator: the input is the little-endian
``n``-bit form of a number uniform on ``0 .. 2^n - 2``; addition answers that number,
multiplication the paper's fixed placeholder (``=end`` at 1, ``=0 =end`` at 2). The square root
reads ``n`` bits, uniform over the nonzero strings, and answers ``ceil(n/2)`` bits.
"""
from __future__ import annotations

from math import isqrt

from formal_lm.errors import Problem

BITS = ("0", "1")
END = "=end"


def _value(bits) -> int:
    """The number a little-endian bit string stands for."""
    return int("".join(reversed(bits)) or "0", 2)


def _little_endian(v: int) -> tuple[str, ...]:
    """``v`` in little-endian binary, shortest form (0 is ``=0``)."""
    return tuple("=" + b for b in reversed(f"{v:b}"))


def _nonzero_bits(rng, k: int) -> list[str]:
    """``k`` bits uniform over the strings with at least one 1."""
    while True:
        bits = rng.integers(0, 2, k)
        if bits.any():
            return [BITS[b] for b in bits]


def problems(op: str):
    """The domain check of the task with operator ``op``: a bit string of length 1 or 2, or
    bits, ``op``, bits."""
    def check(x):
        if op not in x and len(x) <= 2:
            return []
        if x.count(op) == 1 and 0 < x.index(op) < len(x) - 1:
            return []
        return [Problem(f"{' '.join(x)!r} is not two binary numbers around one {op!r} (or, at "
                        "length 1 or 2, a binary number alone)",
                        f"write the first number's bits, {op!r}, the second number's bits")]
    return check


def draw(op: str):
    """The paper's sampler of the task with operator ``op``."""
    def sample(rng, n, count):
        if n <= 2:
            values = rng.integers(0, 2 ** n - 1, count)
            return [tuple(BITS[(int(v) >> i) & 1] for i in range(n)) for v in values]
        rows = []
        for a in rng.integers(1, n - 1, count):
            rows.append(tuple(_nonzero_bits(rng, a) + [op] + _nonzero_bits(rng, n - 1 - a)))
        return rows
    return sample


def probability(op: str):
    """The probability the paper's sampler draws ``x`` at length ``len(x)``."""
    check = problems(op)

    def p(x):
        n = len(x)
        if check(x):
            return 0.0
        if n <= 2:
            return 0.0 if op in x or _value(x) == 2 ** n - 1 else 1.0 / (2 ** n - 1)
        a = x.index(op)
        left, right = x[:a], x[a + 1:]
        if "1" not in left or "1" not in right:
            return 0.0
        return 1.0 / (n - 2) / (2.0 ** a - 1) / (2.0 ** (n - 1 - a) - 1)
    return p


def addition(x) -> tuple[str, ...]:
    """The sum in little-endian binary, ``=end``, then ``=0`` up to ``len(x) + 1`` symbols."""
    total = sum(_value(part) for part in _split(x, "+"))
    out = _little_endian(total) + (END,)
    return out + ("=0",) * (len(x) + 1 - len(out))


def multiplication(x) -> tuple[str, ...]:
    """The product in little-endian binary, ``=end``, then ``=0`` up to ``len(x)`` symbols; at
    length 1 or 2 the paper's placeholder (``=end``, ``=0 =end``)."""
    if "*" not in x:
        return ("=0",) * (len(x) - 1) + (END,)
    left, right = _split(x, "*")
    out = _little_endian(_value(left) * _value(right)) + (END,)
    return out + ("=0",) * (len(x) - len(out))


def _split(x, op):
    if op not in x:
        return [x]
    i = x.index(op)
    return [x[:i], x[i + 1:]]


def draw_root(rng, n, count):
    """Big-endian ``n``-bit strings, uniform over the nonzero ones (the paper's sampler)."""
    return [tuple(_nonzero_bits(rng, n)) for _ in range(count)]


def root_probability(x) -> float:
    return 1.0 / (2.0 ** len(x) - 1) if "1" in x else 0.0


def root(x) -> tuple[str, ...]:
    """The integer square root, big-endian, ``ceil(len(x) / 2)`` bits."""
    width = (len(x) + 1) // 2
    return tuple("=" + b for b in f"{isqrt(int(''.join(x), 2)):0{width}b}")
