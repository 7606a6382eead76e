"""Transduction tasks of Deletang et al. (ICLR 2023), "Neural Networks and the Chomsky
Hierarchy": exact answers and exact input distributions.

A task maps an input string ``x`` to its output ``y`` (:meth:`TransductionTask.output`),
draws inputs of a given length with the paper's distribution (:meth:`TransductionTask.sample`)
and gives the probability of each input (:meth:`TransductionTask.input_probability`). The paper
trains on lengths 1..40, tests on 41..500 and scores the per-token accuracy of the outputs.
Output symbols are the answer's symbols prefixed with ``=`` (``0`` -> ``=0``).

The paper's conventions, kept (from its text and released generators):

- parity_check: ``=1`` when the count of ``1`` is odd. even_pairs: ``=1`` when the count of
  ``01`` and ``10`` pairs is odd. cycle_navigation: steps ``-1 0 +1`` from 0 on a 5-cycle.
- modular_arithmetic: digits 0..4 alternating with ``+ - *``, evaluated with the usual
  precedence, mod 5; inputs have odd length (``length`` even means ``length - 1``).
- stack_manipulation: the initial stack (bottom to top, size uniform on 1..n-1) then actions
  ``POP PUSH0 PUSH1`` (POP on an empty stack does nothing); the answer is the final stack top to
  bottom, ``=end``, then ``=0`` up to ``n + 1`` symbols. The paper scores positions up to
  ``=end`` only (so do binary_addition and binary_multiplication).
- odds_first: ``s1 s3 s5 ... s2 s4 ...`` as the paper defines it (its released code emits the
  two halves the other way round).
- missing_duplicate_string: ``w w`` with one symbol replaced by ``?`` (``#`` appended at odd
  length; length 1 is the fixed input ``1``); the answer is the hidden symbol.
- binary numbers and bracketed expressions: see their modules' notes.

Example:
    >>> t = task("odds_first")
    >>> t.output(("0", "0", "1", "1", "0", "1", "0", "1"))
    ('=0', '=1', '=0', '=0', '=0', '=1', '=1', '=1')
    >>> [len(x) for x, _ in t.sample(length=5, count=2, seed=0)]
    [5, 5]
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from formal_lm import seeding
from formal_lm.errors import FormalLMError, Problem
from formal_lm.tasks import _binary_numbers as numbers
from formal_lm.tasks import _bracket_expressions as brackets
from formal_lm.tasks.encoding import TaskVocab

String = tuple[str, ...]

MAX_LENGTH = 10_000
"""The longest input length a task accepts (the paper tests up to 500)."""

BITS, END = numbers.BITS, numbers.END
MODULUS, NUMBERS = brackets.MODULUS, brackets.DIGITS
OPERATORS = ("+", "-", "*")
ACTIONS = ("POP", "PUSH0", "PUSH1")
STEPS = ("-1", "0", "+1")
MISSING, BLANK = "?", "#"


def _out(symbols) -> String:
    return tuple("=" + s for s in symbols)


# ----- input distributions: draw(rng, length, count) -> inputs; probability(x) -> float -------

def _uniform(alphabet: String):
    """Every string of the length equally likely (the paper's default)."""
    def draw(rng, n, count):
        table = np.array(alphabet, dtype=object)
        return [tuple(row) for row in table[rng.integers(0, len(alphabet), (count, n))]]

    def probability(x):
        return float(len(alphabet)) ** -len(x)
    return draw, probability


def _expression_length(n: int) -> int:
    """The paper's modular-arithmetic inputs have odd length: an even length means one less."""
    return n if n % 2 else n - 1


def _draw_expressions(rng, n, count):
    m = _expression_length(n)
    values = rng.integers(0, MODULUS, (count, m // 2 + 1))
    operators = rng.integers(0, len(OPERATORS), (count, m // 2))
    rows = []
    for nums, ops in zip(values, operators):
        x = [NUMBERS[nums[0]]]
        for o, v in zip(ops, nums[1:]):
            x += [OPERATORS[o], NUMBERS[v]]
        rows.append(tuple(x))
    return rows


def _expression_probability(x):
    if _expression_problems(x):
        return 0.0
    h = len(x) // 2
    return float(MODULUS) ** -(h + 1) * float(len(OPERATORS)) ** -h


def _draw_stacks(rng, n, count):
    if n == 1:
        return [(BITS[b],) for b in rng.integers(0, 2, count)]
    sizes = rng.integers(1, n, count)   # the initial stack's size, uniform on 1 .. n-1
    bits = rng.integers(0, 2, (count, n))
    actions = rng.integers(0, len(ACTIONS), (count, n))
    return [tuple(BITS[b] for b in bits[i, :k]) + tuple(ACTIONS[a] for a in actions[i, k:])
            for i, k in enumerate(sizes)]


def _stack_probability(x):
    k = sum(s in BITS for s in x)
    n = len(x)
    if _stack_problems(x) or k == 0 or (n > 1 and k == n):
        return 0.0
    return 0.5 if n == 1 else 2.0 ** -k * 3.0 ** -(n - k) / (n - 1)


def _draw_missing(rng, n, count):
    if n == 1:
        return [("1",)] * count    # the paper's fixed example at length 1
    h = n // 2
    words = rng.integers(0, 2, (count, h))
    holes = rng.integers(0, 2 * h, count)
    rows = []
    for w, i in zip(words, holes):
        x = [BITS[b] for b in w] * 2
        x[i] = MISSING
        rows.append(tuple(x) + (BLANK,) * (n % 2))
    return rows


def _missing_probability(x):
    if _missing_problems(x):
        return 0.0
    h = len(x) // 2
    return 1.0 if len(x) == 1 else 2.0 ** -h / (2 * h)


# ----- domains beyond the alphabet, and the answers ------------------------------------------

def _expression_problems(x: String) -> list[Problem]:
    if len(x) % 2 == 0:
        return [Problem(f"the expression {' '.join(x)!r} has even length {len(x)}",
                        "write number (operator number)*: odd length")]
    wrong = [i for i, s in enumerate(x) if (s in NUMBERS) != (i % 2 == 0)]
    return [Problem(f"the expression {' '.join(x)!r} has "
                    f"{'an operator' if i % 2 == 0 else 'a number'} at position {i}",
                    "alternate numbers and operators, starting and ending with a number")
            for i in wrong[:1]]


def _stack_problems(x: String) -> list[Problem]:
    bad = [i for i in range(1, len(x)) if x[i] in BITS and x[i - 1] in ACTIONS]
    return [Problem(f"the stack input {' '.join(x)!r} has the stack symbol {x[i]!r} after the "
                    f"action {x[i - 1]!r} at position {i}",
                    "write the initial stack (bottom to top) first, then the actions")
            for i in bad[:1]]


def _missing_problems(x: String) -> list[Problem]:
    n, h = len(x), len(x) // 2
    if n == 1:
        ok = x == ("1",)
    else:
        pairs = list(zip(x[:h], x[h:2 * h]))
        ok = (x[2 * h:] == (BLANK,) * (n % 2) and x.count(MISSING) == 1
              and all(a == b or MISSING in (a, b) for a, b in pairs) and BLANK not in x[:2 * h])
    if ok:
        return []
    return [Problem(f"{' '.join(x)!r} is not a string w w with one symbol replaced by "
                    f"{MISSING!r} ({BLANK!r} appended when the length is odd)",
                    "write w w (length 1: the paper's fixed input '1'), mask one symbol")]


def _missing(x: String) -> String:
    if len(x) == 1:
        return ("=1",)
    h, i = len(x) // 2, x.index(MISSING)
    return ("=" + x[(i + h) % (2 * h)],)


def _parity(x: String) -> String:
    return (f"={x.count('1') % 2}",)


def _even_pairs(x: String) -> String:
    return (f"={sum(a != b for a, b in zip(x, x[1:])) % 2}",)


def _cycle(x: String) -> String:
    return (f"={sum(STEPS.index(s) - 1 for s in x) % MODULUS}",)


def _modular(x: String) -> String:
    """Usual precedence (products first), subtraction as adding the negated product."""
    total, sign, term = 0, 1, int(x[0])
    for op, v in zip(x[1::2], x[2::2]):
        if op == "*":
            term = term * int(v) % MODULUS
        else:
            total += sign * term
            sign, term = (1 if op == "+" else -1), int(v)
    return (f"={(total + sign * term) % MODULUS}",)


def _stack(x: String) -> String:
    stack = []
    for s in x:
        if s in BITS or s.startswith("PUSH"):
            stack.append(s[-1])
        elif stack:
            stack.pop()
    top_down = _out(reversed(stack)) + (END,)
    return top_down + ("=0",) * (len(x) + 1 - len(top_down))


# ----- the task ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TransductionTask:
    """One task: its exact answers and its input distribution (build with :func:`task`)."""

    name: str
    chomsky: str
    vocab: TaskVocab
    _answer: Callable[[String], String] = dataclasses.field(repr=False)
    _length_of_output: Callable[[int], int] = dataclasses.field(repr=False)
    _draw: Callable[[np.random.Generator, int, int], list[String]] = dataclasses.field(repr=False)
    _probability: Callable[[String], float] = dataclasses.field(repr=False)
    _domain: Callable[[String], list[Problem]] = dataclasses.field(
        default=lambda x: [], repr=False)

    def output(self, x) -> String:
        """The exact answer to input ``x`` (a sequence of input symbols)."""
        x = self._check_input(x)
        if problems := self._domain(x):
            raise FormalLMError(problems)
        return self._answer(x)

    def output_length(self, n: int) -> int:
        """``len(output(x))`` for every input ``x`` of length ``n`` (it depends on ``n`` only)."""
        return self._length_of_output(_check_length(n, "n"))

    def sample(self, length: int, count: int, seed: int) -> list[tuple[String, String]]:
        """``count`` pairs ``(x, output(x))``, ``x`` drawn from the paper's distribution at
        ``length`` (deterministic in ``seed`` and ``length``)."""
        length = _check_length(length, "length")
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise FormalLMError(Problem(f"count={count!r} is not a non-negative integer",
                                        "pass how many examples to draw"))
        inputs = self._draw(seeding.rng(seed, seeding.Stream.TASK, length), length, int(count))
        return [(x, self._answer(x)) for x in inputs]

    def input_probability(self, x) -> float:
        """The probability that :meth:`sample` at length ``len(x)`` draws ``x``: 0 off the
        support (modular_arithmetic draws odd lengths only); a float, so 0 past ~1000 symbols."""
        return self._probability(self._check_input(x))

    def _check_input(self, x) -> String:
        if isinstance(x, str) or not hasattr(x, "__len__"):
            raise FormalLMError(Problem(f"x={x!r} is not a sequence of symbols",
                                        f"pass a tuple of symbols from {self.vocab.inputs}"))
        x = tuple(x)
        _check_length(len(x), "len(x)")
        unknown = sorted({repr(s) for s in x if s not in self.vocab.inputs})
        if unknown:
            raise FormalLMError(Problem(
                f"x holds {', '.join(unknown)}, outside the input alphabet "
                f"{self.vocab.inputs} of task {self.name!r}", "use the task's input symbols"))
        return x


def _check_length(n, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_LENGTH:
        raise FormalLMError(Problem(f"{what}={n!r} is not an integer in 1 .. {MAX_LENGTH}",
                                    "inputs have at least one symbol; raise "
                                    "formal_lm.tasks.transduction.MAX_LENGTH for longer ones"))
    return int(n)


def _binary(name, chomsky, answer, length_of_output, outputs=_out(BITS)):
    draw, probability = _uniform(BITS)
    return TransductionTask(name, chomsky, TaskVocab(BITS, outputs), answer, length_of_output,
                            draw, probability)


def _tasks() -> dict[str, TransductionTask]:
    one = lambda n: 1   # noqa: E731
    cycle_draw, cycle_probability = _uniform(STEPS)
    tasks = [
        _binary("parity_check", "regular", _parity, one),
        _binary("even_pairs", "regular", _even_pairs, one),
        TransductionTask("cycle_navigation", "regular", TaskVocab(STEPS, _out(NUMBERS)), _cycle,
                         one, cycle_draw, cycle_probability),
        TransductionTask("modular_arithmetic", "regular",
                         TaskVocab(NUMBERS + OPERATORS, _out(NUMBERS)), _modular, one,
                         _draw_expressions, _expression_probability, _expression_problems),
        _binary("reverse_string", "DCF", lambda x: _out(reversed(x)), lambda n: n),
        TransductionTask("modular_arithmetic_brackets", "DCF",
                         TaskVocab(NUMBERS + OPERATORS + ("(", ")"), _out(NUMBERS)),
                         brackets.expression_answer, one, brackets.draw_brackets,
                         brackets.brackets_probability, brackets.expression_problems("+-*")),
        TransductionTask("solve_equation", "DCF",
                         TaskVocab(NUMBERS + ("+", "-", "(", ")", "x", "="), _out(NUMBERS)),
                         brackets.equation_answer, one, brackets.draw_equations,
                         brackets.equation_probability, brackets.equation_problems),
        TransductionTask("stack_manipulation", "DCF",
                         TaskVocab(BITS + ACTIONS, _out(BITS) + (END,)), _stack, lambda n: n + 1,
                         _draw_stacks, _stack_probability, _stack_problems),
        TransductionTask("missing_duplicate_string", "CS",
                         TaskVocab(BITS + (MISSING, BLANK), _out(BITS)), _missing, one,
                         _draw_missing, _missing_probability, _missing_problems),
        _binary("duplicate_string", "CS", lambda x: _out(x + x), lambda n: 2 * n),
        _binary("odds_first", "CS", lambda x: _out(x[0::2] + x[1::2]), lambda n: n),
        TransductionTask("binary_addition", "CS", TaskVocab(BITS + ("+",), _out(BITS) + (END,)),
                         numbers.addition, lambda n: n + 1, numbers.draw("+"),
                         numbers.probability("+"), numbers.problems("+")),
        TransductionTask("binary_multiplication", "CS",
                         TaskVocab(BITS + ("*",), _out(BITS) + (END,)), numbers.multiplication,
                         lambda n: n, numbers.draw("*"), numbers.probability("*"),
                         numbers.problems("*")),
        TransductionTask("compute_sqrt", "CS", TaskVocab(BITS, _out(BITS)), numbers.root,
                         lambda n: (n + 1) // 2, numbers.draw_root, numbers.root_probability),
        TransductionTask("bucket_sort", "CS", TaskVocab(NUMBERS, _out(NUMBERS)),
                         lambda x: _out(sorted(x)), lambda n: n, *_uniform(NUMBERS)),
    ]
    return {t.name: t for t in tasks}


TASKS: dict[str, TransductionTask] = _tasks()
"""The tasks by name."""


def task(name: str) -> TransductionTask:
    """The task called ``name`` (one of :data:`TASKS`)."""
    if name not in TASKS:
        raise FormalLMError(Problem(f"no transduction task is called {name!r}",
                                    f"use one of {sorted(TASKS)}"))
    return TASKS[name]
