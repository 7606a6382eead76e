"""The transduction tasks of Deletang et al. (ICLR 2023) against the paper's examples and against
independent implementations written here; the samplers against their exact probabilities."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings, strategies as st

from formal_lm.errors import FormalLMError
from formal_lm.tasks import transduction as T
from formal_lm.tasks.encoding import encode

ALPHA = 1e-3   # significance level of the goodness-of-fit tests (fixed seeds: deterministic)
BITS = ("0", "1")
ACTS = ("POP", "PUSH0", "PUSH1")


# ----- independent implementations ---------------------------------------------------------

def ref_parity(x):
    return ("=" + str(sum(int(c) for c in x) & 1),)


def ref_even_pairs(x):
    s = "".join(x)
    return ("=" + str(sum(s[i:i + 2] in ("01", "10") for i in range(len(s))) % 2),)


def ref_cycle(x):
    pos = 0
    for s in x:
        pos = (pos + int(s)) % 5
    return (f"={pos}",)


def ref_modular(x):
    return (f"={eval(''.join(x)) % 5}",)   # Python's precedence: products first


def ref_stack(x):
    n_bits = len(list(itertools.takewhile(lambda s: s in BITS, x)))
    stack = "".join(x[:n_bits])
    for a in x[n_bits:]:
        stack = stack[:-1] if a == "POP" else stack + a[-1]
    out = ["=" + c for c in stack[::-1]] + ["=end"]
    return tuple(out + ["=0"] * (len(x) + 1 - len(out)))


def ref_odds_first(x):
    n = len(x)   # the paper's 1-based positions: s_1 s_3 s_5 ... then s_2 s_4 ...
    return tuple("=" + x[i - 1] for i in range(1, n + 1) if i % 2 == 1) + \
        tuple("=" + x[i - 1] for i in range(1, n + 1) if i % 2 == 0)


def ref_missing(x):
    if len(x) == 1:
        return ("=1",)
    h = len(x) // 2
    word = [a if a != "?" else b for a, b in zip(x[:h], x[h:2 * h])]
    return ("=" + word[x.index("?") % h],)


def number(bits):
    return sum(int(b) << i for i, b in enumerate(bits))


def little_endian(v, width):
    digits = []
    while True:
        digits.append("=" + str(v % 2))
        v //= 2
        if v == 0:
            break
    digits.append("=end")
    return tuple(digits + ["=0"] * (width - len(digits)))


def ref_addition(x):
    return little_endian(sum(number(p) for p in "".join(x).split("+")), len(x) + 1)


def ref_multiplication(x):
    if len(x) <= 2:   # the paper's placeholder answers
        return {1: ("=end",), 2: ("=0", "=end")}[len(x)]
    a, b = "".join(x).split("*")
    return little_endian(number(a) * number(b), len(x))


def ref_sqrt(x):
    v, lo, hi = int("".join(x), 2), 0, 2 ** len(x)   # bisection: lo^2 <= v < hi^2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if mid * mid <= v else (lo, mid)
    r = lo
    width = -(-len(x) // 2)
    return tuple("=" + b for b in bin(r)[2:].rjust(width, "0"))


def language(length, ops, memo={}):
    """{expression: probability} of the paper's bracket grammar at ``length`` (its description:
    d, -d, (d), (-d) at 1..4; (E1 op E2) with |E1| uniform on 1..L-4, op uniform)."""
    if (length, ops) not in memo:
        out = Counter()
        digits = "01234"
        forms = {1: "{}", 2: "-{}", 3: "({})", 4: "(-{})"}
        if length <= 4:
            for d in digits:
                out[tuple(forms[length].format(d))] += 1 / 5
        for left in range(1, length - 3):
            for op in ops:
                for a, pa in language(left, ops).items():
                    for b, pb in language(length - 3 - left, ops).items():
                        out[("(",) + a + (op,) + b + (")",)] += pa * pb / (length - 4) / len(ops)
        memo[length, ops] = dict(out)
    return memo[length, ops]


def equations(length):
    """{equation: (probability, hidden digit)}: the paper's procedure run on every expression
    and every start position."""
    if length < 3:
        return {("0",) * length: (1.0, "0")}
    out = {}
    for expr, p in language(length - 2, "+-").items():
        for start in range(length - 2):
            i = start
            while not expr[i].isdigit():
                i = (i + 1) % (length - 2)
            eq = expr[:i] + ("x",) + expr[i + 1:] + ("=", str(eval("".join(expr)) % 5))
            q, d = out.get(eq, (0.0, expr[i]))
            assert d == expr[i]
            out[eq] = (q + p / (length - 2), d)
    return out


REFERENCE = {
    "parity_check": ref_parity,
    "even_pairs": ref_even_pairs,
    "cycle_navigation": ref_cycle,
    "modular_arithmetic": ref_modular,
    "reverse_string": lambda x: tuple("=" + s for s in x[::-1]),
    "stack_manipulation": ref_stack,
    "duplicate_string": lambda x: tuple("=" + x[i % len(x)] for i in range(2 * len(x))),
    "odds_first": ref_odds_first,
    "missing_duplicate_string": ref_missing,
    "bucket_sort": lambda x: tuple("=" + d for d in "01234" for _ in range(x.count(d))),
    "binary_addition": ref_addition,
    "binary_multiplication": ref_multiplication,
    "compute_sqrt": ref_sqrt,
    "modular_arithmetic_brackets": lambda x: (f"={eval(''.join(x)) % 5}",),
    "solve_equation": lambda x: ("=" + solve(x),),
}
def solve(x):
    """The digit d that makes the equation true (tried one by one with Python's eval)."""
    if "=" not in x:
        return "0"
    lhs, v = "".join(x[:-2]), int(x[-1])
    (d,) = [d for d in "01234" if eval(lhs.replace("x", d)) % 5 == v]
    return d


GRAMMAR = {   # the tasks whose support is enumerated from the paper's grammar, not alphabet^n
    "modular_arithmetic_brackets": lambda n: language(n, "+-*"),
    "solve_equation": lambda n: {x: p for x, (p, _) in equations(n).items()},
}
ALPHABET = {
    "cycle_navigation": ("-1", "0", "+1"),
    "modular_arithmetic": ("0", "1", "2", "3", "4", "+", "-", "*"),
    "stack_manipulation": BITS + ACTS,
    "missing_duplicate_string": BITS + ("?", "#"),
    "bucket_sort": ("0", "1", "2", "3", "4"),
    "binary_addition": BITS + ("+",),
    "binary_multiplication": BITS + ("*",),
    "modular_arithmetic_brackets": ("0", "1", "2", "3", "4", "+", "-", "*", "(", ")"),
    "solve_equation": ("0", "1", "2", "3", "4", "+", "-", "(", ")", "x", "="),
}
CLASS = {"parity_check": "regular", "even_pairs": "regular", "cycle_navigation": "regular",
         "modular_arithmetic": "regular", "reverse_string": "DCF", "stack_manipulation": "DCF",
         "duplicate_string": "CS", "odds_first": "CS", "missing_duplicate_string": "CS",
         "bucket_sort": "CS", "binary_addition": "CS", "binary_multiplication": "CS",
         "compute_sqrt": "CS", "modular_arithmetic_brackets": "DCF", "solve_equation": "DCF"}


def alphabet(name):
    return ALPHABET.get(name, BITS)


def in_domain(name, x):
    """Whether x is a well-formed input (independent of the module's checks)."""
    if name == "modular_arithmetic":
        return len(x) % 2 == 1 and all(s.isdigit() == (i % 2 == 0) for i, s in enumerate(x))
    if name == "stack_manipulation":
        return "".join("b" if s in BITS else "a" for s in x).find("ab") < 0
    if name == "missing_duplicate_string":
        return missing_ok(x)
    if name in GRAMMAR:
        return x in GRAMMAR[name](len(x))
    if name in ("binary_addition", "binary_multiplication"):
        parts = "".join(x).split(alphabet(name)[2])
        return (len(parts) == 1 and len(x) <= 2) or (len(parts) == 2 and all(parts))
    return True


def missing_ok(x):
    n, h = len(x), len(x) // 2
    if n == 1:
        return x == ("1",)
    if x[2 * h:] != ("#",) * (n % 2) or x[:2 * h].count("?") != 1 or "#" in x[:2 * h]:
        return False
    i = x.index("?")
    filled = list(x[:2 * h])
    filled[i] = x[(i + h) % (2 * h)]
    return filled[:h] == filled[h:]


def ref_probability(name, x):
    """The paper's sampler's probability of x at length len(x), from its description."""
    n = len(x)
    if name == "modular_arithmetic":
        return 5.0 ** -((n + 1) // 2) * 3.0 ** -(n // 2) if in_domain(name, x) else 0.0
    if name == "stack_manipulation":
        if n == 1:
            return 0.5 if x[0] in BITS else 0.0
        return sum(2.0 ** -k * 3.0 ** -(n - k) / (n - 1) for k in range(1, n)
                   if all(s in BITS for s in x[:k]) and all(s in ACTS for s in x[k:]))
    if name == "missing_duplicate_string":
        return 0.0 if not missing_ok(x) else 1.0 if n == 1 else 2.0 ** -(n // 2) / (n // 2 * 2)
    if name in ("binary_addition", "binary_multiplication"):
        return ref_number_probability(name, x)
    if name == "compute_sqrt":
        return 1 / (2 ** n - 1) if "1" in x else 0.0
    if name in GRAMMAR:
        return GRAMMAR[name](n).get(x, 0.0)
    return len(alphabet(name)) ** -float(n)


def ref_number_probability(name, x):
    n = len(x)
    if not in_domain(name, x):
        return 0.0
    if n <= 2:   # the paper draws a number uniform on 0 .. 2^n - 2 and writes its n bits
        return 1 / (2 ** n - 1) if x != ("1",) * n else 0.0
    a, b = "".join(x).split(alphabet(name)[2])
    if "1" not in a or "1" not in b:
        return 0.0
    return 1 / (n - 2) / (2 ** len(a) - 1) / (2 ** len(b) - 1)


def enumeration_lengths(name):
    return range(1, {"cycle_navigation": 6, "modular_arithmetic": 6, "stack_manipulation": 6,
                     "missing_duplicate_string": 7, "bucket_sort": 6, "binary_addition": 8,
                     "binary_multiplication": 8, "compute_sqrt": 11,
                     "modular_arithmetic_brackets": 4, "solve_equation": 4}.get(name, 9))


def test_the_paper_tasks_are_there_with_their_classes():
    assert CLASS == {name: t.chomsky for name, t in T.TASKS.items()}
    for name, t in T.TASKS.items():
        assert t.name == name and T.task(name) is t
        assert t.vocab.inputs == alphabet(name)


# ----- known answers -----------------------------------------------------------------------

PAPER_EXAMPLES = [   # the examples of the paper's task descriptions
    ("parity_check", "1 0 1 0 1 0 0", "=1"),
    ("parity_check", "0 1 1 1 1", "=0"),
    ("even_pairs", "0 0 1 1 1 0", "=0"),
    ("even_pairs", "0 1 0 1 0 0 1", "=1"),
    ("cycle_navigation", "+1 -1 0 -1 -1", "=3"),
    ("cycle_navigation", "+1 +1 +1 -1", "=2"),
    ("modular_arithmetic", "1 + 2 * 3", "=2"),
    ("modular_arithmetic", "1 - 1 - 1", "=4"),
    ("modular_arithmetic", "0 * 1 + 4 * 3 - 2", "=0"),
    ("reverse_string", "0 1 1 0 1 0", "=0 =1 =0 =1 =1 =0"),
    ("stack_manipulation", "0 1 1 0 PUSH1 POP POP", "=1 =1 =0 =end =0 =0 =0 =0"),
    ("stack_manipulation", "1 1 0 POP POP POP", "=end =0 =0 =0 =0 =0 =0"),
    ("stack_manipulation", "1", "=1 =end"),
    ("duplicate_string", "1 0 1", "=1 =0 =1 =1 =0 =1"),
    ("duplicate_string", "1 1 1 1 1 1", " ".join(["=1"] * 12)),
    ("odds_first", "0 0 1 1 0 1 0 1", "=0 =1 =0 =0 =0 =1 =1 =1"),
    ("odds_first", "1 1 0", "=1 =0 =1"),
    ("missing_duplicate_string", "0 1 1 0 0 ? 1 0", "=1"),
    ("missing_duplicate_string", "1 0 1 1 ? 1 #", "=0"),
    ("missing_duplicate_string", "1", "=1"),
    ("bucket_sort", "1 0 2 0 4 1 1 2", "=0 =0 =1 =1 =1 =2 =2 =4"),
    # the paper pads additions to the input length + 1 (its docstring shows one pad fewer)
    ("binary_addition", "0 0 1 + 0 1 1 0 1", "=0 =1 =0 =1 =1 =end =0 =0 =0 =0"),
    ("binary_addition", "1 0 0 1 + 0 0 0 0 0 1", "=1 =0 =0 =1 =0 =1 =end =0 =0 =0 =0 =0"),
    ("binary_addition", "0 1", "=0 =1 =end"),
    ("binary_multiplication", "0 0 1 * 0 1 1 0 1", "=0 =0 =0 =1 =1 =0 =1 =end =0"),
    ("binary_multiplication", "1 0 0 1 * 0 0 0 0 0 1", "=0 =0 =0 =0 =0 =1 =0 =0 =1 =end =0"),
    ("binary_multiplication", "1 0", "=0 =end"),
    ("compute_sqrt", "1 0 0 1 0 1", "=1 =1 =0"),
    ("compute_sqrt", "1 1 1", "=1 =0"),
]


@pytest.mark.parametrize("name, x, y", PAPER_EXAMPLES)
def test_paper_examples(name, x, y):
    assert T.task(name).output(tuple(x.split())) == tuple(y.split())


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_every_small_input_against_the_reference(name):
    t = T.task(name)
    for n in enumeration_lengths(name):
        total = 0.0
        for x in itertools.product(alphabet(name), repeat=n):
            assert t.input_probability(x) == pytest.approx(ref_probability(name, x), rel=1e-12)
            total += t.input_probability(x)
            if not in_domain(name, x):
                with pytest.raises(FormalLMError):
                    t.output(x)
                continue
            y = t.output(x)
            assert y == REFERENCE[name](x), x
            assert len(y) == t.output_length(n)
            assert set(y) <= set(t.vocab.outputs)
        mass = 0.0 if name == "modular_arithmetic" and n % 2 == 0 else 1.0
        assert total == pytest.approx(mass, abs=1e-12), (name, n)


@pytest.mark.parametrize("name", sorted(GRAMMAR))
def test_every_expression_of_the_grammar(name):
    """Every string the paper's procedure makes up to length 10: exact probability, answer."""
    t = T.task(name)
    for n in range(1, 11):
        support = GRAMMAR[name](n)
        assert sum(support.values()) == pytest.approx(1.0, abs=1e-12)
        for x, p in support.items():
            assert t.input_probability(x) == pytest.approx(p, rel=1e-12), x
            assert t.output(x) == REFERENCE[name](x), x


@pytest.mark.parametrize("name", sorted(GRAMMAR))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_mutated_expressions_are_in_the_domain_exactly_when_the_grammar_says(name, data):
    n = data.draw(st.integers(5, 10))
    x = list(data.draw(st.sampled_from(sorted(GRAMMAR[name](n)))))
    x[data.draw(st.integers(0, n - 1))] = data.draw(st.sampled_from(alphabet(name)))
    x = tuple(x)
    t = T.task(name)
    assert t.input_probability(x) == pytest.approx(GRAMMAR[name](n).get(x, 0.0), rel=1e-12)
    if x in GRAMMAR[name](n):
        assert t.output(x) == REFERENCE[name](x)
    else:
        with pytest.raises(FormalLMError):
            t.output(x)


def expressions(ops):
    """Hypothesis strategy of long expressions of the paper's grammar, as strings."""
    atoms = st.builds(lambda f, d: f.format(d), st.sampled_from(["{}", "-{}", "({})", "(-{})"]),
                      st.sampled_from("01234"))
    return st.recursive(atoms, lambda e: st.builds("({}{}{})".format, e, st.sampled_from(ops), e),
                        max_leaves=40)


def inputs(name):
    """Hypothesis strategy of well-formed inputs of length 1..80."""
    if name == "modular_arithmetic":
        terms = st.lists(st.tuples(st.sampled_from("+-*"), st.sampled_from("01234")), max_size=39)
        return st.builds(lambda d, ts: (d,) + sum(ts, ()), st.sampled_from("01234"), terms)
    if name == "stack_manipulation":
        return st.builds(lambda b, a: tuple(b + a), st.lists(st.sampled_from(BITS), max_size=40),
                         st.lists(st.sampled_from(ACTS), max_size=40)).filter(len)
    if name == "missing_duplicate_string":
        return st.builds(masked, st.lists(st.sampled_from(BITS), min_size=1, max_size=40),
                         st.integers(0, 10 ** 6), st.booleans())
    if name in ("binary_addition", "binary_multiplication"):
        bits = st.lists(st.sampled_from(BITS), min_size=1, max_size=40)
        return st.builds(lambda a, b: tuple(a) + (alphabet(name)[2],) + tuple(b), bits, bits)
    if name == "modular_arithmetic_brackets":
        return expressions("+-*").map(tuple)
    if name == "solve_equation":
        return st.builds(hide, expressions("+-"), st.integers(0, 10 ** 6))
    return st.lists(st.sampled_from(alphabet(name)), min_size=1, max_size=80).map(tuple)


def hide(expr, k):
    """The equation of ``expr`` with its (k mod #digits)-th digit replaced by x."""
    places = [i for i, c in enumerate(expr) if c.isdigit()]
    i = places[k % len(places)]
    return tuple(expr[:i]) + ("x",) + tuple(expr[i + 1:]) + ("=", str(eval(expr) % 5))


def masked(word, hole, odd):
    x = list(word) * 2
    x[hole % len(x)] = "?"
    return tuple(x) + ("#",) * odd


@pytest.mark.parametrize("name", sorted(REFERENCE))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_long_inputs_against_the_reference(name, data):
    x = data.draw(inputs(name))
    t = T.task(name)
    assert t.output(x) == REFERENCE[name](x)
    assert len(t.output(x)) == t.output_length(len(x))


# ----- samplers ----------------------------------------------------------------------------

def sampled_length(name, n):
    return n - 1 if name == "modular_arithmetic" and n % 2 == 0 else n


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_samples_are_exact_examples_and_deterministic(name):
    t = T.task(name)
    for n in (1, 2, 7, 40, 41):
        examples = t.sample(n, 20, seed=3)
        assert len(examples) == 20
        for x, y in examples:
            assert len(x) == sampled_length(name, n) and set(x) <= set(alphabet(name))
            assert y == REFERENCE[name](x) and t.input_probability(x) > 0
        assert t.sample(n, 20, seed=3) == examples
    assert t.sample(40, 20, seed=3) != t.sample(40, 20, seed=4)
    assert t.sample(40, 0, seed=3) == []


def support(name, n):
    """The inputs the paper's sampler can draw at length n (from the reference)."""
    n = sampled_length(name, n)
    if name in GRAMMAR:
        return sorted(GRAMMAR[name](n))
    return [x for x in itertools.product(alphabet(name), repeat=n) if ref_probability(name, x)]


def chi_square_pvalue(name, n, xs):
    """p-value of the counts of ``xs`` against the exact probabilities at length n (every
    input of the length is a cell; a sample off the support fails at once)."""
    t, cells = T.task(name), support(name, n)
    counts = Counter(xs)
    assert set(counts) <= set(cells), "a sample the exact distribution gives probability 0"
    expected = np.array([t.input_probability(x) for x in cells]) * len(xs)
    return scipy.stats.chisquare([counts[x] for x in cells], expected).pvalue


CHI_LENGTHS = {"cycle_navigation": 3, "modular_arithmetic": 4, "stack_manipulation": 4,
               "missing_duplicate_string": 5, "bucket_sort": 2, "binary_addition": 5,
               "binary_multiplication": 5, "compute_sqrt": 5,
               "modular_arithmetic_brackets": 7, "solve_equation": 7}
SHORT = [("binary_addition", 2), ("binary_multiplication", 2), ("missing_duplicate_string", 4),
         ("solve_equation", 6), ("modular_arithmetic_brackets", 9)]
LARGER = {("modular_arithmetic_brackets", 9): 60_000}   # 2475 cells, the rarest p = 1/5625
SAMPLES = 20_000


@pytest.mark.parametrize("name, n", [(k, CHI_LENGTHS.get(k, 4)) for k in sorted(REFERENCE)]
                         + SHORT)
def test_sampled_distribution_matches_input_probability(name, n):
    xs = [x for x, _ in T.task(name).sample(n, LARGER.get((name, n), SAMPLES), seed=11)]
    assert chi_square_pvalue(name, n, xs) > ALPHA


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_the_fit_test_rejects_a_biased_sampler(name):
    """The check above has power: 15% more weight on every other input fails it."""
    t, n = T.task(name), CHI_LENGTHS.get(name, 4)
    cells = support(name, n)
    w = np.array([t.input_probability(x) * (1.15 if i % 2 else 1.0) for i, x in enumerate(cells)])
    draws = np.random.default_rng(0).choice(len(cells), SAMPLES, p=w / w.sum())
    assert chi_square_pvalue(name, n, [cells[i] for i in draws]) < ALPHA


def test_encode_reads_the_examples():
    for name, t in T.TASKS.items():
        examples = t.sample(6, 4, seed=0)
        ids, targets = encode(t.vocab, examples)
        assert ids.shape[0] == targets.shape[0] == 4
        for row, (x, y) in zip(targets, examples):
            assert [t.vocab.vocab.tokens[i] for i in row[len(x) + 1:len(x) + 1 + len(y)]] == list(y)


# ----- bad input ---------------------------------------------------------------------------

def raises(fn, *words):
    with pytest.raises(FormalLMError) as e:
        fn()
    assert all(w in str(e.value) for w in words), str(e.value)


def test_bad_input_is_named():
    raises(lambda: T.task("parity"), "parity", "parity_check", "odds_first")
    t = T.task("reverse_string")
    raises(lambda: t.output(("0", "2")), "'2'", "input alphabet")
    raises(lambda: t.input_probability(("a",)), "'a'")
    raises(lambda: t.output("01"), "tuple of symbols")
    raises(lambda: t.output(()), "len(x)=0")
    raises(lambda: t.sample(0, 3, seed=0), "length=0")
    raises(lambda: t.sample(T.MAX_LENGTH + 1, 3, seed=0), f"length={T.MAX_LENGTH + 1}",
           "MAX_LENGTH")
    raises(lambda: t.sample(3, -1, seed=0), "count=-1")
    raises(lambda: t.output_length(0), "n=0")
    m = T.task("modular_arithmetic")
    raises(lambda: m.output(("1", "+")), "even length")
    raises(lambda: m.output(("1", "2", "3")), "a number at position 1")
    raises(lambda: m.output(("+", "2", "3")), "an operator at position 0")
    raises(lambda: T.task("stack_manipulation").output(("0", "POP", "1")),
           "'1' after the action 'POP' at position 2")
