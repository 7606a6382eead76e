"""NLTK's PCFG text notation: ``S -> 'a' S 'b' [0.4] | [0.6]``, read into productions."""
from __future__ import annotations

import re

from formal_lm.errors import Location, Problem
from formal_lm.pcfg._normal_form import Production


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#.*)
  | (?P<arrow>->)
  | (?P<bar>\|)
  | (?P<prob>\[[^\]]*\])
  | (?P<openprob>\[[^\]]*$)
  | (?P<quoted>'[^']*'|"[^"]*")
  | (?P<badquote>['"].*)
  | (?P<name>(?:[^\s'"\[\]|\#\-]|-(?!>))+)
  | (?P<other>.)
""", re.X)


_BAD = "<bad rule>"  # the left-hand side of a line that did not parse


def _tokens(line: str):
    for m in _TOKEN.finditer(line):
        if m.lastgroup not in ("ws", "comment"):
            yield m.lastgroup, m.group(), m.start() + 1


_RULE_FIX = "write rules as LHS -> 'a' B [0.5] | [0.5]"


def _head_problem(toks) -> tuple[str, str, int]:
    """(message, fix, column) for a line that starts neither 'LHS ->' nor '|'."""
    kind, val, col = toks[0]
    if kind == "quoted":
        return (f"left-hand side={val} is quoted, so it is a terminal",
                "write the nonterminal bare, e.g. S -> 'a' S [0.5]", col)
    if kind == "name":
        bad = toks[1] if len(toks) > 1 else None
        col = bad[2] if bad else col + len(val)
        return (f"expected '->' after the left-hand side {val}, found "
                f"{bad[1] if bad else 'the end of the line'!r}", _RULE_FIX, col)
    return (f"expected a rule 'LHS -> ...' or a continuation '| ...', found {val!r}",
            _RULE_FIX, col)


def _token_problem(kind: str, val: str, lhs: str) -> tuple[str, str]:
    """(message, fix) for a token that cannot stand in an alternative of ``lhs``."""
    if kind == "quoted":  # only an empty one gets here
        return (f"terminal={val} is empty",
                "an empty alternative is written with no symbols: A -> [0.5]")
    if kind == "badquote":
        return f"unterminated quote in {val!r}", "close the terminal with the same quote"
    if kind == "openprob":
        return f"unclosed probability bracket {val!r}", "close it: [0.5]"
    return (f"unexpected token={val!r} in an alternative of {lhs}",
            "alternatives are symbols then [p], separated by '|'")


def _alternatives(start_col: int, toks) -> list[tuple[int, list]]:
    """The tokens after 'LHS ->' or '|', split on '|': (column of the arrow or bar, tokens)."""
    groups: list[tuple[int, list]] = [(start_col, [])]
    for tok in toks:
        if tok[0] == "bar":
            groups.append((tok[2], []))
        else:
            groups[-1][1].append(tok)
    return groups


class _Reader:
    """Reads the text line by line: productions, their locations, and every syntax problem."""

    def __init__(self, path: str, line_offset: int):
        self.path, self.line_offset = path, line_offset
        self.problems: list[Problem] = []
        self.prods: list[Production] = []
        self.locs: dict[int, Location] = {}
        self.lhs_locs: dict[str, Location] = {}
        self.nt_uses: dict[str, Location] = {}
        self.term_uses: dict[str, Location] = {}
        self.lhs: str | None = None  # of the rule that a '|' line continues
        self.lineno = 0

    def where(self, col: int) -> Location:
        return Location(self.path, self.lineno + self.line_offset, col)

    def read_line(self, lineno: int, line: str) -> None:
        self.lineno = lineno
        toks = list(_tokens(line))
        if not toks:
            return
        head = self._head(line, toks)
        if head is not None:
            for col0, alt in _alternatives(*head):
                self._alternative(col0, alt)

    def _head(self, line: str, toks):
        """(column, tokens) of what follows 'LHS ->' or '|'; None after a problem."""
        if toks[0][0] == "bar":
            if self.lhs is None:
                self.problems.append(Problem(
                    f"a continuation line starts with '|' but no rule came before it (line={line!r})",
                    "start the grammar with a line 'LHS -> ... [p]'", self.where(toks[0][2])))
                return None
            return toks[0][2], toks[1:]
        if len(toks) >= 2 and toks[0][0] == "name" and toks[1][0] == "arrow":
            self.lhs = toks[0][1]
            self.lhs_locs.setdefault(self.lhs, self.where(toks[0][2]))
            return toks[1][2], toks[2:]
        msg, fix, col = _head_problem(toks)
        self.problems.append(Problem(msg, fix, self.where(col)))
        self.lhs = _BAD  # still check the syntax of continuation lines
        return None

    def _alternative(self, col0: int, alt) -> None:
        lhs = self.lhs
        if not alt:
            self.problems.append(Problem(
                f"an empty alternative of {lhs} (no symbols and no probability)",
                "give every alternative a probability, e.g. '| [0.5]' for an empty one",
                self.where(col0)))
            return
        parsed = self._symbols(alt)
        if parsed is None:
            return
        rhs, prob = parsed
        if prob is None:
            shown = " ".join(rhs)
            self.problems.append(Problem(
                f"the alternative {lhs} -> {shown} has no probability",
                "append its probability in brackets, e.g. [0.5]", self.where(alt[0][2])))
            return
        if lhs is not _BAD:
            self.locs[len(self.prods)] = self.where(alt[0][2])
            self.prods.append((lhs, tuple(rhs), prob))

    def _symbols(self, alt) -> tuple[list[str], float | None] | None:
        """The symbols and the probability of one alternative; None after a problem."""
        lhs = self.lhs
        rhs: list[str] = []
        prob = None
        for kind, val, col in alt:
            problem = None
            if prob is not None:
                problem = (
                    f"symbol={val!r} comes after the probability of an alternative of {lhs}",
                    "put the probability last: A -> 'a' B [0.5]; separate alternatives with '|'")
            elif kind == "prob":
                try:
                    prob = float(val[1:-1].strip())
                except ValueError:
                    problem = (f"probability={val} of {lhs} is not a number",
                               "write a decimal such as [0.25]")
            elif kind == "name":
                rhs.append(val)
                self.nt_uses.setdefault(val, self.where(col))
            elif kind == "quoted" and len(val) != 2:
                rhs.append(val[1:-1])
                self.term_uses.setdefault(val[1:-1], self.where(col))
            else:
                problem = _token_problem(kind, val, lhs)
            if problem is not None:
                self.problems.append(Problem(*problem, self.where(col)))
                return None
        return rhs, prob

    def reference_problems(self) -> list[Problem]:
        """Bare names are nonterminals and need rules; terminals must not shadow them."""
        refs: list[Problem] = []
        defined = {p[0] for p in self.prods} | set(self.lhs_locs)
        for name, loc in self.nt_uses.items():
            if name not in defined:
                refs.append(Problem(
                    f"nonterminal={name} is used but has no rules",
                    f"add rules for {name}, or quote it ('{name}') if it is a terminal", loc))
        for name, loc in self.term_uses.items():
            if name in defined:
                refs.append(Problem(f"terminal='{name}' has the same name as the nonterminal {name}",
                                    "rename one of them", loc))
        return refs


def parse_nltk(text: str, path: str, line_offset: int):
    """``(productions, their locations, the LHS locations, syntax problems, reference problems)``.

    Reference problems (undefined or shadowed nonterminals) are kept apart: they are reported
    together with the grammar's other problems once the syntax is fine.
    """
    reader = _Reader(path, line_offset)
    # \n, \r\n or \r end a line; U+2028 and the like do not (str.splitlines would; TOML does not)
    for lineno, line in enumerate(re.split(r"\r\n|\r|\n", text), 1):
        reader.read_line(lineno, line)
    return (reader.prods, reader.locs, reader.lhs_locs, reader.problems,
            reader.reference_problems())
