"""The types of a grammar file's values, checked where they are read, and where keys sit.

Every key of every kind has one expected type (``TOP_LEVEL``; rule and prior tables take theirs
from their dataclass fields): booleans are not numbers and not strings, strings are not
booleans, tables are not values, and lists hold elements of one type. ``value_problems`` lists
every mismatch at its own key's ``file:line:column``.

``Source`` locates keys by TOML's lines, which only ``\\n`` (or ``\\r\\n``) ends: not U+2028,
U+2029, ``\\x0b``, ``\\x0c``, ``\\x1c``-``\\x1e`` or ``\\x85``, where ``str.splitlines`` would.
"""
from __future__ import annotations

import dataclasses
import re
import reprlib
import types
import typing

from formal_lm import limits
from formal_lm.errors import Location, Problem

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 60, 60, 6, 6, 4


def show(value) -> str:
    """A short repr of a value from a file (long strings and deep lists are cut with '...')."""
    if isinstance(value, bool):
        return "true" if value else "false"  # as the file writes it
    return _REPR.repr(value)


def toml_lines(text: str) -> list[str]:
    """The lines of a TOML text as TOML counts them: split at \\n, a trailing \\r dropped."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


class Source:
    """The text of a grammar file, for locating keys and lines inside multi-line strings, and
    ``load``: how the grammars it refers to are loaded (``grammar_files.load``, handed down so
    the builders below it need not import it)."""

    def __init__(self, text: str, path: str, load=None):
        self.text, self.path, self.lines = text, path, toml_lines(text)
        self.load = load

    def locate(self, *keys: str) -> Location:
        """The line that sets ``keys`` (a dotted path such as ('prior', 'n', 'max'))."""
        table, best = (), None
        for i, line in enumerate(self.lines):
            m = re.match(r"\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$", line)
            if m:
                table = tuple(k.strip().strip('"') for k in m.group(1).split("."))
                if table == tuple(keys):
                    return Location(self.path, i + 1, line.index("[") + 1)
                continue
            m = re.match(r"\s*([\w\".-]+)\s*=", line)
            if not m:
                continue
            path = table + tuple(k.strip('"') for k in m.group(1).split("."))
            if path == tuple(keys):
                return Location(self.path, i + 1, line.index(m.group(1)) + 1)
            if best is None and path[: len(keys)] == tuple(keys[: len(path)]) and len(path) > 0 \
                    and path[-1] == keys[-1]:
                best = Location(self.path, i + 1, line.index(m.group(1)) + 1)
        if best:
            return best
        if len(keys) > 1:
            return self.locate(*keys[:-1])
        return Location(self.path, 1, 1)

    def string_start(self, key: str) -> int:
        """0-based line index where the multi-line string of top-level ``key`` starts its text."""
        for i, line in enumerate(self.lines):
            m = re.match(rf"\s*{re.escape(key)}\s*=\s*(\"\"\"|''')?", line)
            if m:
                rest = line[m.end():]
                return i + (0 if rest.strip() else 1) if m.group(1) else i
        return 0


# ----- types ---------------------------------------------------------------------------------
Count = typing.NewType("Count", str)  # a block's count: '3', 'n', '2n', 'n+m' (or an integer)
Pair = tuple[str, str]
TOP_LEVEL: dict[str, typing.Any] = {
    "name": str, "kind": str, "description": str, "alphabet": tuple[str, ...],
    "blocks": tuple[tuple[str, Count], ...], "prior": dict, "rules": dict,
    "pairs": tuple[Pair, ...], "nested": bool, "start": str, "arcs": str,
    "accepting": tuple[str, ...], "stop_prob": float, "transitions": str, "productions": str,
}


EXPECTED = {  # descriptions clearer than the type's
    ("blocks",): "a list of [symbol, count] pairs such as [['a', 'n'], ['b', 'n']]",
    ("pairs",): "a list of [open, close] pairs such as [['(', ')'], ['[', ']']]",
    ("prior",): "tables [prior.VAR] (kind = 'uniform', min, max)",
    ("rules",): "tables [rules.NAME] with a kind",
}


def conforms(value, tp) -> bool:
    """Whether a value read from TOML has type ``tp`` (a bool is not a number; a list stands for
    a tuple; a ``Count`` is a string or a non-negative integer)."""
    if tp is typing.Any:
        return True
    if tp is type(None):
        return value is None
    if tp is Count:
        return isinstance(value, str) or (type(value) is int and value >= 0)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis or origin is list:
            return all(conforms(v, args[0]) for v in value) if args else True
        return not args or (len(value) == len(args) and all(map(conforms, value, args)))
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # a type this check does not know: the constructor checks it


def describe(tp) -> str:
    """``tp`` in words: 'a string', 'true or false', 'a list of strings', ..."""
    if tp is Count:
        return "a count such as '3', 'n' or '2n'"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        real = [a for a in args if a is not type(None)]
        return " or ".join(describe(a) for a in real) + (" (or left out)" if len(real) < len(args)
                                                         else "")
    if origin in (tuple, list):
        if len(args) == 2 and args[1] is Ellipsis or origin is list:
            inner = describe(args[0]) if args else "values"
            if inner.startswith("a list ["):
                return "a list of " + inner[len("a list "):] + " lists"
            return "a list of " + re.sub(r"^an? ", "", inner) + ("" if inner.endswith("s")
                                                                 else "s")
        return "a list [" + ", ".join(re.sub(r"^an? ", "", describe(a)) for a in args) + "]"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            dict: "a table"}.get(tp, getattr(tp, "__name__", str(tp)))


def field_types(cls) -> dict[str, typing.Any]:
    """The declared types of a dataclass's init fields (Any where they cannot be resolved)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a user's class with unresolvable annotations
        hints = {}
    return {f.name: hints.get(f.name, typing.Any) for f in dataclasses.fields(cls) if f.init}


def type_problem(value, tp, src: Source, *keys: str, what: str = "") -> Problem | None:
    """A problem when ``value`` (at ``keys``) is not of type ``tp``; None when it is."""
    if conforms(value, tp):
        return None
    name = what or ".".join(keys)
    expected = EXPECTED.get(keys, describe(tp))
    return Problem(f"{name}={show(value)} should be {expected}, not {_kind_of(value)}",
                   f"write {expected}", src.locate(*keys))


def _kind_of(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list" if all(not isinstance(v, (list, dict)) for v in value) else \
            "a list of lists or tables"
    return type(value).__name__


def value_problems(doc: dict, src: Source, keys) -> list[Problem]:
    """The type problems of the top-level ``keys`` of ``doc`` that it sets."""
    out = []
    for k in keys:
        if k in doc and k in TOP_LEVEL and not (k == "rules" and isinstance(doc[k], str)):
            p = type_problem(doc[k], TOP_LEVEL[k], src, k)
            if p is not None:
                out.append(p)
    return out


def depth_problem(doc: dict, src: Source) -> Problem | None:
    """A problem when arrays and tables nest deeper than ``limits.MAX_NESTING_DEPTH``."""
    todo = [(doc, 1, ())]
    while todo:
        value, depth, where = todo.pop()
        if depth > limits.MAX_NESTING_DEPTH:
            return Problem(f"values are nested {depth} deep at {'.'.join(where) or 'the top'}, "
                           f"deeper than the limit of {limits.MAX_NESTING_DEPTH}",
                           "a grammar needs lists of lists at most; raise "
                           "formal_lm.limits.MAX_NESTING_DEPTH if this is meant",
                           src.locate(*where[:1]) if where else Location(src.path, 1, 1))
        items = value.items() if isinstance(value, dict) else \
            enumerate(value) if isinstance(value, list) else ()
        for k, v in items:
            if isinstance(v, (dict, list)):
                todo.append((v, depth + 1, where + ((k,) if isinstance(k, str) else ())))
    return None
