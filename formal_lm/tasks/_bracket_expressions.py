"""The bracketed expressions of Deletang et al. (ICLR 2023): modular_arithmetic_brackets and
solve_equation. Plain functions that :mod:`formal_lm.tasks.transduction` assembles.

The paper's grammar of an expression of length ``L`` (digits 0..4, values mod 5): ``d``, ``-d``,
``(d)``, ``(-d)`` for ``L = 1 .. 4`` (the digit uniform); for ``L >= 5``, ``(E1 op E2)`` with
``|E1|`` uniform on ``1 .. L-4``, ``|E2| = L - 3 - |E1|`` and ``op`` uniform over the operators
(``+ - *`` for modular_arithmetic_brackets, ``+ -`` for solve_equation). A string has at most
one derivation, so its probability is the product over its nodes. Parsing and sampling use an
explicit stack (inputs nest up to ``L/4`` deep).

solve_equation at length ``L >= 3`` draws an expression ``E`` of length ``L - 2``, a position
uniform on ``0 .. L-3`` moved forward (cyclically) to the first digit, replaces that digit by
``x`` and appends ``=`` and the value of ``E``; the answer is the hidden digit, unique because
the value is ``±x`` plus a constant. At ``L < 3`` the paper's input is ``0`` repeated, answer 0.
"""
from __future__ import annotations

from formal_lm.errors import Problem

MODULUS = 5
DIGITS = tuple(str(i) for i in range(MODULUS))
UNKNOWN = "x"


def _atom(s, i):
    """(length, value) of the atom ``d``, ``-d``, ``(d)`` or ``(-d)`` at ``i``, else None."""
    def at(k, allowed):
        return i + k < len(s) and s[i + k] in allowed
    if at(0, DIGITS):
        return 1, int(s[i])
    if at(0, "-") and at(1, DIGITS):
        return 2, -int(s[i + 1])
    if at(0, "(") and at(1, DIGITS) and at(2, ")"):
        return 3, int(s[i + 1])
    if at(0, "(") and at(1, "-") and at(2, DIGITS) and at(3, ")"):
        return 4, -int(s[i + 2])
    return None


def parse(s, ops: str):
    """(probability under the paper's sampler at ``len(s)``, value mod 5) of expression ``s``,
    or None when ``s`` is not one."""
    frames = []   # open compounds: [start, left probability, left value, operator]
    i = 0
    while True:
        atom = _atom(s, i)
        if atom is None:
            if i < len(s) and s[i] == "(":
                frames.append([i, None, None, None])
                i += 1
                continue
            return None
        p, v, i = 1.0 / MODULUS, atom[1], i + atom[0]
        while frames and frames[-1][1] is not None:   # close every compound that ends here
            start, pl, vl, op = frames.pop()
            if i >= len(s) or s[i] != ")":
                return None
            i += 1
            p = pl * p / (i - start - 4) / len(ops)
            v = vl + v if op == "+" else vl - v if op == "-" else vl * v
        if not frames:
            return (p, v % MODULUS) if i == len(s) else None
        if i >= len(s) or s[i] not in ops:
            return None
        frames[-1][1:] = [p, v, s[i]]
        i += 1


def draw_expression(rng, length: int, ops: str) -> list[str]:
    """One expression of ``length`` symbols from the paper's grammar."""
    out, todo = [], [length]   # todo: lengths of expressions still to write, or symbols
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            out.append(item)
        elif item <= 4:
            d = DIGITS[rng.integers(0, MODULUS)]
            out += {1: [d], 2: ["-", d], 3: ["(", d, ")"], 4: ["(", "-", d, ")"]}[item]
        else:
            left = int(rng.integers(1, item - 3))
            op = ops[rng.integers(0, len(ops))]
            out.append("(")
            todo += [")", item - 3 - left, op, left]
    return out


def expression_problems(ops: str):
    def check(x):
        if parse(x, ops) is None:
            return [Problem(f"{''.join(x)!r} is not an expression of the paper's grammar",
                            f"write d, -d, (d), (-d) or (E op E) with op in {ops!r}")]
        return []
    return check


def expression_answer(x) -> tuple[str, ...]:
    return (f"={parse(x, '+-*')[1]}",)


def draw_brackets(rng, n, count):
    return [tuple(draw_expression(rng, n, "+-*")) for _ in range(count)]


def brackets_probability(x) -> float:
    parsed = parse(x, "+-*")
    return 0.0 if parsed is None else parsed[0]


# ----- solve_equation ------------------------------------------------------------------------

def _solve(x):
    """(probability, hidden digit) of equation ``x``, or None when it is not one."""
    n = len(x)
    if n < 3:
        return (1.0, 0) if x == ("0",) * n else None
    lhs, eq, rhs = x[:-2], x[-2], x[-1]
    if eq != "=" or rhs not in DIGITS or lhs.count(UNKNOWN) != 1:
        return None
    j = lhs.index(UNKNOWN)
    for d in DIGITS:
        parsed = parse(lhs[:j] + (d,) + lhs[j + 1:], "+-")
        if parsed is None:
            return None
        if parsed[1] == int(rhs):
            before = 1   # start positions whose scan stops at j: j, the non-digits before it
            while lhs[(j - before) % len(lhs)] not in DIGITS + (UNKNOWN,):
                before += 1
            return parsed[0] * before / len(lhs), int(d)
    return None


def equation_problems(x):
    if _solve(x) is None:
        return [Problem(f"{''.join(x)!r} is not an equation E=v of the paper (E from the "
                        f"grammar with + and -, one digit replaced by {UNKNOWN!r}, v a digit; "
                        "length < 3: zeros)", "write e.g. (x+3)=1")]
    return []


def equation_answer(x) -> tuple[str, ...]:
    return (f"={_solve(x)[1]}",)


def equation_probability(x) -> float:
    solved = _solve(x)
    return 0.0 if solved is None else solved[0]


def draw_equations(rng, n, count):
    if n < 3:
        return [("0",) * n] * count
    rows = []
    for _ in range(count):
        expr = draw_expression(rng, n - 2, "+-")
        value = parse(expr, "+-")[1]
        i = int(rng.integers(0, n - 2))
        while expr[i] not in DIGITS:
            i = (i + 1) % (n - 2)
        expr[i] = UNKNOWN
        rows.append(tuple(expr) + ("=", str(value)))
    return rows
