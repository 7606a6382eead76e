"""Size and cost limits, checked before the work they bound starts.

A grammar that is a few hundred bytes can ask for hours of work or gigabytes of memory (a
crossing Dyck language with 400 bracket pairs, one PCFG rule of 300 terminals, a count prior up
to 10^9). Each limit below is checked when a grammar is built (from a file or in Python) or
when a method is called, and an input past it is a ``FormalLMError`` (``GrammarError`` for a
grammar) that names the limit. Each is a module-level constant: raise it from Python when you
mean it, before building the grammar::

    import formal_lm.limits
    formal_lm.limits.MAX_CROSSING_PAIRS = 192   # about 12 s and 0.7 GB to build

The times quoted were measured on one core of a 2-core x86 machine (benchmarks/RESULTS.md).
"""
from __future__ import annotations

# ----- grammar files ---------------------------------------------------------------------------
MAX_NESTING_DEPTH = 16
"""Arrays and tables inside one another in a grammar file (a grammar needs 5 at most)."""
MAX_ALPHABET_SIZE = 1000
"""Symbols in a grammar file's alphabet (a dyck file: brackets), at most."""

# ----- counter languages -------------------------------------------------------------------------
MAX_COUNT = 2000
"""The largest value of a count variable: a prior's ``max``, or for a geometric prior without
one, the count past which less than 1e-13 of its mass lies (where exact sums stop). The exact
loss floor enumerates every count with its string: a^n b^n takes 0.5 s at 1000, 2.5 s at 2000,
74 s at 10^4."""
MAX_ASSIGNMENTS = 20_000
"""Joint assignments of the count variables (the product of each variable's number of values),
at most: exact sums run over them (a^n b^m c^(n+m) at 100 x 100 takes 1.4 s, 300 x 300 12 s)."""
MAX_ENUMERATED = 1_000_000
"""Count assignments enumerated for one length table or length-conditioned sample of a counter
template, at most (only unbounded geometric priors can reach it: bounded ones stop at
``MAX_ASSIGNMENTS``)."""
MAX_STRING_LENGTH = 10_000
"""The longest string a counter template can produce (fixed lengths plus coefficients times the
counts' largest values), at most."""

# ----- bracket languages -----------------------------------------------------------------------
MAX_DYCK_PAIRS = 512
"""Bracket pairs of a nested Dyck language (the prior's max), at most: the prefix table is
O(max^3) to build (0.9 s at 512, 5.6 s at 1000, 54 s at 2000)."""
MAX_CROSSING_PAIRS = 128
"""Bracket pairs of a crossing (``nested = false``) Dyck language, at most: its completion counts
are O(max^3) in memory and the prefix table O(max^4) in time (2.6 s at 128, 38 s and 1.4 GB at
256, and 400 pairs need more than 3 GB)."""

# ----- automata ----------------------------------------------------------------------------------
MAX_PFSA_STATES = 500
"""States of a PFSA or DFA, at most (1.7 s to build at 500, 8 s at 1000: linear solves,
eigenvalues and an unambiguity search over state pairs)."""
MAX_PFSA_TABLE = 20_000_000
"""Symbols x states x states (the arc table's floats, 160 MB), at most."""

# ----- context-free grammars ---------------------------------------------------------------------
MAX_RULE_LENGTH = 64
"""Symbols on one right-hand side of a PCFG rule, at most."""
MAX_BINARY_NONTERMINALS = 128
"""Nonterminals of a PCFG's internal binary grammar, at most: the grammar's own, plus one per
terminal inside a rule of two or more symbols, plus (length - 2) per rule longer than 2.
Construction is O(N^4) and every chart O(n^3 N^3): the 64-terminal rule that makes N = 127
builds in 0.5 s, one of 128 terminals (N = 255) in 5 s, and 8 next-token tables then take 50 s."""
MAX_PRODUCTIONS = 5000
"""Productions (alternatives) of a PCFG, at most."""
MAX_TERMINALS = 1000
"""Terminals of a PCFG, at most."""
MAX_CHART_CELLS = 50_000_000
"""(n + 1)^2 x N floats in one inside chart of a string of n symbols, at most (two such charts,
0.8 GB): ``log_prob`` and the next-token tables of a PCFG refuse longer strings."""
MAX_LENGTH_TABLE = 20_000
"""Lengths of a PCFG's exact length statistics and length-conditioned sampling, at most (their
tables take O(L^2 N^2) time: 0.1 s at 4000 for arith, 75 s at 100,000)."""

# ----- sampling ----------------------------------------------------------------------------------
MAX_SAMPLES = 1_000_000
"""``sample(n)`` draws at most this many strings in one call."""
MAX_SAMPLE_LENGTH = 100_000
"""``sample(n, length=L)`` takes lengths up to this."""
