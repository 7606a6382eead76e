"""Strategies that generate small, valid, tight languages, for testing code that handles
languages (analyzers, training data, the Language interface itself).

Every generated language is valid by construction (the family's constructor accepts it): PFSA
states halt with probability >= ``min_halt``; PCFG nonterminals end with probability >= 0.6 and
have at most two nonterminal children, so the expected offspring is < 1 (subcritical, tight);
counter languages follow the template rules of ``CounterLanguage``. Shrinking moves toward fewer
states, rules and blocks, and smaller counts.
"""
from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from formal_lm.errors import Problem
from formal_lm.testing._validation import check
from formal_lm.vocab import check_symbols


def _alphabet_problems(alphabet) -> list[Problem]:
    if isinstance(alphabet, str) or not isinstance(alphabet, Sequence):
        return [Problem(f"alphabet={alphabet!r} must be a sequence of symbols",
                        "write alphabet=('a', 'b')")]
    return check_symbols(tuple(alphabet))


def _int_problems(least: int, **values) -> list[Problem]:
    """A problem per value (passed as name=value) that is not an integer >= ``least``."""
    return [Problem(f"{name}={v!r} must be an integer >= {least}") for name, v in values.items()
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= least)]


def _range_problems(lo_name, lo, hi_name, hi, least) -> list[Problem]:
    problems = _int_problems(least, **{lo_name: lo, hi_name: hi})[:1]
    if not problems and lo > hi:
        return [Problem(f"{lo_name}={lo} > {hi_name}={hi}", f"make {lo_name} <= {hi_name}")]
    return problems


def _checked(problems, draw) -> st.SearchStrategy:
    """The composite strategy of ``draw(draw)``, deferred until first drawn from; then the
    arguments are checked: ``problems()`` returns what is wrong with them (``check`` raises it).
    """
    def build():
        check(problems())
        return st.composite(draw)()

    return st.deferred(build)


_weights = st.integers(1, 4)


def pfsas(*, alphabet: Sequence[str] = ("a", "b"), min_states: int = 1, max_states: int = 4,
          deterministic: bool = True, min_halt: float = 0.1) -> st.SearchStrategy:
    """Random tight PFSAs (:class:`formal_lm.PFSA`) over ``alphabet``.

    Each state halts with probability in [min_halt, 0.5] and spreads the rest over arcs on a
    non-empty set of symbols (one target per symbol when ``deterministic``, else one or two).

    Example:
        >>> from hypothesis import find
        >>> find(pfsas(), lambda m: len(m.states) >= 2).states
        (0, 1)
    """
    def problems():
        found = _alphabet_problems(alphabet)
        found += _range_problems("min_states", min_states, "max_states", max_states, 1)
        if not (isinstance(min_halt, (int, float)) and 0 < min_halt <= 0.5):
            found.append(Problem(f"min_halt={min_halt!r} must be in (0, 0.5]",
                                 "a state that never halts could make the automaton leak"))
        return found

    def draw(draw):
        from formal_lm.pfsa import PFSA
        syms = tuple(alphabet)
        n = draw(st.integers(min_states, max_states))
        arcs, final = [], {}
        for q in range(n):
            halt = draw(st.sampled_from([0.5, 0.25, 0.2, 0.1]).filter(lambda h: h >= min_halt)
                        | st.floats(min_halt, 0.5))
            used = draw(st.lists(st.sampled_from(syms), min_size=1, max_size=len(syms),
                                 unique=True))
            raw = []
            for a in used:
                k = 1 if deterministic else draw(st.integers(1, min(2, n)))
                targets = draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k,
                                        unique=True))
                raw += [(a, r, draw(_weights)) for r in targets]
            total = sum(w for _, _, w in raw)
            arcs += [(q, a, r, (1 - halt) * w / total) for a, r, w in raw]
            final[q] = halt
        return PFSA("hypothesis-pfsa", arcs, final, 0, alphabet=syms)

    return _checked(problems, draw)


def counter_languages(*, alphabet: Sequence[str] = ("a", "b", "c"), max_blocks: int = 3,
                      max_count: int = 4, linear: bool = False) -> st.SearchStrategy:
    """Random :class:`formal_lm.CounterLanguage` templates: 1..max_blocks blocks with
    coefficients 1..3 over one or two count variables (or fixed lengths), each variable with a
    uniform prior on a sub-range of 0..max_count or a truncated geometric prior.

    ``linear=True`` draws templates over the two variables n and m in which at least one block
    counts a sum ``a*n + b*m`` (a, b in 1..2), such as a^n b^m c^(n+m); a string may then come
    from several assignments. The default (``linear=False``) draws are unchanged by this option.

    Example:
        >>> from hypothesis import find
        >>> find(counter_languages(), lambda lang: len(lang.blocks) >= 2).blocks
        (Block(symbol='a', coef=1, var='n'), Block(symbol='b', coef=1, var='n'))
        >>> find(counter_languages(linear=True), lambda lang: True).blocks
        (Block(symbol='a', coef=1, var='n', plus=((1, 'm'),)),)
    """
    def problems():
        found = _alphabet_problems(alphabet)
        found += _int_problems(1, max_blocks=max_blocks, max_count=max_count)
        if not found and len(alphabet) < 2 and max_blocks > 1:
            found.append(Problem("counter_languages with max_blocks > 1 needs >= 2 symbols",
                                 "adjacent blocks must use different symbols"))
        if not isinstance(linear, bool):
            found.append(Problem(f"linear={linear!r} must be True or False"))
        return found

    def draw(draw):
        if linear:
            return _linear_counter(draw, tuple(alphabet), max_blocks, max_count)
        from formal_lm.counter import Block, CounterLanguage
        from formal_lm.priors import Geometric, Uniform
        syms = tuple(alphabet)
        k = draw(st.integers(1, max_blocks))
        blocks = []
        for i in range(k):
            options = [s for s in syms if not blocks or s != blocks[-1][0]]
            sym = draw(st.sampled_from(options))
            var = draw(st.sampled_from(["n", "m", None]))
            blocks.append((sym, draw(st.integers(1, 3)), var))
        used = [v for _, _, v in blocks if v is not None]
        if not used:  # at least one count variable, so the language has > 1 string or not
            sym, coef, _ = blocks[0]
            blocks[0] = (sym, coef, "n")
            used = ["n"]
        # variable blocks between two equal symbols must not all be empty (ambiguous
        # otherwise): the first of them gets a variable with min >= 1
        needs_one = {blocks[i + 1][2] for i in range(k) for j in range(i + 2, k)
                     if blocks[i][0] == blocks[j][0]
                     and all(b[2] is not None for b in blocks[i + 1:j])}
        priors = {}
        for v in dict.fromkeys(used):
            least = 1 if v in needs_one else 0
            lo = draw(st.integers(least, max_count))
            if draw(st.booleans()):
                priors[v] = Geometric(draw(st.sampled_from([0.5, 0.3, 0.7])), lo,
                                      draw(st.integers(lo, max_count + 2)))
            else:
                priors[v] = Uniform(lo, draw(st.integers(lo, max_count)))
        # the alphabet is the symbols used, in template order
        return CounterLanguage("hypothesis-counter", [Block(*b) for b in blocks], priors)

    return _checked(problems, draw)


def _prior(draw, lo: int, max_count: int):
    from formal_lm.priors import Geometric, Uniform
    if draw(st.booleans()):
        return Geometric(draw(st.sampled_from([0.5, 0.3, 0.7])), lo,
                         draw(st.integers(lo, max_count + 2)))
    return Uniform(lo, draw(st.integers(lo, max_count)))


def _linear_counter(draw, syms, max_blocks, max_count):
    """A template over n and m with at least one block counting a*n + b*m."""
    from formal_lm.counter import Block, CounterLanguage
    k = draw(st.integers(1, max_blocks))
    blocks = []
    for _ in range(k):
        sym = draw(st.sampled_from([s for s in syms if not blocks or s != blocks[-1].symbol]))
        form = draw(st.sampled_from(["n+m", "n", "m", None]))
        if form == "n+m":
            n, m = draw(st.integers(1, 2)), draw(st.integers(1, 2))
            blocks.append(Block(sym, n, "n", ((m, "m"),)))
        else:
            blocks.append(Block(sym, draw(st.integers(1, 3)), form))
    if not any(b.plus for b in blocks):
        blocks[0] = Block(blocks[0].symbol, 1, "n", ((1, "m"),))
    # of blocks that could all be empty between two blocks of one symbol, the first must not be
    needs_one = {blocks[i + 1].var for i in range(k) for j in range(i + 2, k)
                 if blocks[i].symbol == blocks[j].symbol
                 and all(b.var is not None for b in blocks[i + 1:j])}
    priors = {v: _prior(draw, draw(st.integers(1 if v in needs_one else 0, max_count)), max_count)
              for v in ("n", "m")}
    return CounterLanguage("hypothesis-linear-counter", blocks, priors)


def pcfgs(*, terminals: Sequence[str] = ("a", "b"), max_nonterminals: int = 3,
          max_rules: int = 3) -> st.SearchStrategy:
    """Random tight :class:`formal_lm.pcfg.PCFG` grammars with start symbol ``S``.

    Each nonterminal has one rule of 1-2 terminals with probability >= 0.6 and up to
    ``max_rules - 1`` more rules of 1-3 symbols with at most two nonterminals, so the expected
    number of nonterminal children is below 1 (tight). Nonterminal i always has a rule that
    mentions nonterminal i + 1, so every nonterminal is reachable from ``S``.

    Raises (when drawn from):
        InvalidStrategyArgument: bad arguments.
    """
    def problems():
        found = _alphabet_problems(terminals)
        found += _int_problems(1, max_nonterminals=max_nonterminals, max_rules=max_rules)
        if not found and max_nonterminals > 1 and max_rules < 2:
            found.append(Problem("max_nonterminals > 1 needs max_rules >= 2",
                                 "every nonterminal but the last needs a rule to reach the next"))
        return found

    def draw(draw):
        from formal_lm.pcfg import PCFG
        syms = tuple(terminals)
        n = draw(st.integers(1, max_nonterminals))
        names = ["S"] + [f"N{i}" for i in range(1, n)]
        rules: dict[tuple[str, tuple[str, ...]], float] = {}
        for i, lhs in enumerate(names):
            base = draw(st.lists(st.sampled_from(syms), min_size=1, max_size=2))
            p_end = draw(st.sampled_from([0.6, 0.75, 0.9]))
            more = []
            n_more = draw(st.integers(1 if i + 1 < n else 0, max_rules - 1))
            for j in range(n_more):
                size = draw(st.integers(1, 3))
                rhs = draw(st.lists(st.sampled_from(syms + tuple(names)), min_size=size,
                                    max_size=size))
                keep = None
                if j == 0 and i + 1 < n:  # the link that makes names[i + 1] reachable
                    keep = draw(st.integers(0, size - 1))
                    rhs[keep] = names[i + 1]
                while sum(x in names for x in rhs) > 2:  # at most two nonterminal children
                    rhs[next(k for k, x in enumerate(rhs) if x in names and k != keep)] = \
                        syms[0]
                more.append(tuple(rhs))
            if not more:
                p_end = 1.0
            weights = [draw(_weights) for _ in more]
            probs = [(1 - p_end) * w / sum(weights) for w in weights] if more else []
            for rhs, p in [(tuple(base), p_end), *zip(more, probs)]:
                rules[(lhs, rhs)] = rules.get((lhs, rhs), 0.0) + p
        return PCFG(rules=[(lhs, rhs, p) for (lhs, rhs), p in rules.items()], start="S",
                    name="hypothesis-pcfg")

    return _checked(problems, draw)
