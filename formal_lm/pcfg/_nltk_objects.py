"""NLTK grammar objects (an optional dependency) read into a ``PCFG`` through NLTK's notation."""
from __future__ import annotations

from formal_lm.errors import FormalLMError, Problem
from formal_lm.pcfg._grammar import PCFG


def _quote(t: str) -> str:
    if "'" not in t:
        return f"'{t}'"
    if '"' not in t:
        return f'"{t}"'
    raise FormalLMError(Problem(f"terminal={t!r} holds both quote characters, which NLTK's "
                                "notation cannot write", "rename the terminal"))


def nltk_text(obj) -> str:
    """The NLTK notation of an ``nltk.PCFG`` (one line per production, exact probabilities).

    Raises:
        FormalLMError: ``obj`` is not a probabilistic NLTK grammar, or a terminal holds both
            quote characters.

    Example:
        >>> nltk = __import__("pytest").importorskip("nltk")
        >>> print(nltk_text(nltk.PCFG.fromstring("S -> 'a' S [0.25] | B [0.75]\\nB -> [1.0]")))
        S -> 'a' S [0.25]
        S -> B [0.75]
        B -> [1.0]
    """
    if not (hasattr(obj, "productions") and hasattr(obj, "start")):
        raise FormalLMError(Problem(f"expected an nltk.PCFG, got {type(obj).__name__}",
                                    "build one with nltk.PCFG.fromstring(...)"))
    lines = []
    for prod in obj.productions():
        if not hasattr(prod, "prob"):
            raise FormalLMError(Problem(
                f"production {prod} has no probability (an nltk.CFG, not an nltk.PCFG)",
                "give every production a probability: nltk.PCFG.fromstring(...)"))
        rhs = [_quote(x) if isinstance(x, str) else str(x.symbol()) for x in prod.rhs()]
        rhs.append(f"[{float(prod.prob())!r}]")
        lines.append(f"{str(prod.lhs().symbol())} -> {' '.join(rhs)}")
    return "\n".join(lines)


def from_nltk_grammar(obj, *, name: str = "pcfg") -> PCFG:
    """A ``PCFG`` from an ``nltk.PCFG`` object (NLTK is optional: ``pip install nltk``).

    The grammar is written in NLTK's text notation (``nltk_text``) and read by
    ``PCFG.from_nltk``, with NLTK's start symbol; so every check of a ``PCFG`` applies.

    Raises:
        FormalLMError: not an ``nltk.PCFG``; GrammarError: the grammar is not a valid PCFG here
            (for example, not tight).

    Example:
        >>> nltk = __import__("pytest").importorskip("nltk")
        >>> g = from_nltk_grammar(nltk.PCFG.fromstring("S -> 'a' S [0.4] | 'b' [0.6]"))
        >>> round(g.prob("ab"), 6)
        0.24
    """
    text = nltk_text(obj)
    return PCFG.from_nltk(text, name=name, start=str(obj.start().symbol()), path="<nltk.PCFG>")
