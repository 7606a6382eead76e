"""Grammar files: TOML with a ``kind``, read into a Language with file:line:column errors.

Kinds and their keys (every file also takes ``name``, ``kind``, ``description`` and ``[rules.*]``):

- ``counter``: ``alphabet``, ``blocks = [["a", "n"], ["b", "n"]]`` (count ``"1"``, ``"n"``, ``"2n"``),
  one ``[prior.VAR]`` table per count variable.
- ``dyck``: ``pairs = [["(", ")"], ["[", "]"]]``, ``nested = true|false``, ``[prior.n]`` (pairs).
- ``pfsa``: ``alphabet``, ``start``, ``arcs`` (lines ``STATE SYMBOL NEXT PROB`` or
  ``STATE EOS PROB`` for halting).
- ``dfa``: ``alphabet``, ``start``, ``accepting``, ``stop_prob``, ``transitions`` (lines
  ``STATE SYMBOL NEXT``); probabilities spread uniformly over live continuations.
- ``pcfg``: ``rules`` in NLTK's notation (``S -> 'a' S 'b' [0.4] | [0.6]``), optional ``start``.
- ``split``: ``base`` (another grammar) and one of ``exclude``, ``twin``, ``counts``: the
  training side of a compositional split (``formal_lm.grammar_split``).

A prior table is ``kind = "uniform"`` with ``min``/``max``, or ``kind = "geometric"`` with ``p``,
``min`` and optionally ``max``. A rule table is ``kind`` (see ``formal_lm.rules``), its keys, and
an optional ``description``.

Every key has one type (``formal_lm.grammar_schema``: a boolean is not a number or a string, a
string is not a boolean, a table is not a value), checked where it is read and reported at the
key's own line; sizes past the limits of ``formal_lm.limits`` are refused before any work. Lines
are TOML's (only ``\n`` and ``\r\n`` end one). docs/grammars.md lists the types and limits.

Where ``load`` finds a grammar:

- A shipped name (``load("anbn")``; ``shipped()`` lists them): the grammar files in the
  repository's ``grammars/`` folder, installed inside the package as ``formal_lm.grammars`` and
  read with ``importlib.resources`` (an editable install or a checkout on ``sys.path`` reads the
  source tree's ``grammars/``). A shipped name always means the shipped grammar: no file in the
  working folder or on the search path can shadow it. (``FORMAL_LM_GRAMMARS``, which replaced
  the shipped folder and so hid its grammars, is gone.)
- A name on the search path ``FORMAL_LM_GRAMMAR_PATH``: folders separated by ``os.pathsep``
  (``:`` on Linux and macOS), whose ``*.toml`` files add their names (the file name less
  ``.toml``) to those ``load`` accepts. A file there with a shipped name is ignored (load it by its
  path); a name found in two files of the search path is an error that names both.
- Anything else is a path, which must be an existing file whose name ends in ``.toml``, of at most
  1 MiB (``MAX_FILE_BYTES``).
"""
from __future__ import annotations

import importlib.resources
import os
import re
import stat
import tomllib
from importlib.resources.abc import Traversable
from pathlib import Path

from formal_lm import limits
from formal_lm.errors import FormalLMError, GrammarError, Location, Problem
from formal_lm.grammar_build import build
from formal_lm.grammar_split import build_split
from formal_lm.grammar_schema import Source, depth_problem, toml_lines
from formal_lm.language import Language

SEARCH_PATH_VAR = "FORMAL_LM_GRAMMAR_PATH"
MAX_FILE_BYTES = 1 << 20  # 1 MiB: the shipped grammar files are a few hundred bytes


def loads(text: str, *, path: str = "<string>") -> Language:
    """A Language from the text of a grammar file.

    Raises:
        GrammarError: listing every problem found, each with file:line:column.
    """
    if not isinstance(text, str):
        raise GrammarError(Problem(f"loads takes the text of a grammar file (a str), not "
                                   f"{type(text).__name__}",
                                   "decode bytes first (text.decode('utf-8')), or use load(path)"))
    src = Source(text, path, load)
    doc = _parse_toml(text, path)
    if (problem := depth_problem(doc, src)) is not None:
        raise GrammarError(problem)
    if isinstance(doc.get("rules"), str) and doc.get("kind") != "pcfg":
        raise GrammarError(Problem("rules is a string, which only kind = 'pcfg' reads",
                                   "use [rules.NAME] tables", src.locate("rules")))
    if doc.get("kind") == "split":  # a split of another grammar (formal_lm.grammar_split)
        return build_split(doc, src)
    return build(doc, src)


def _parse_toml(text: str, path: str) -> dict:
    """The TOML document, or a GrammarError at the line and column of the syntax error."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        if m:
            loc = Location(path, int(m.group(1)), int(m.group(2)))
        else:  # "at end of document"
            lines = toml_lines(text)
            loc = Location(path, len(lines), len(lines[-1]) + 1)
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise GrammarError(Problem(f"malformed TOML: {msg}",
                                   "check quotes, brackets and '=' on that line", loc)) from None
    except RecursionError:
        raise GrammarError(Problem(
            f"{path}: arrays or tables are nested too deeply for the TOML parser",
            f"a grammar nests lists two deep at most (the limit is {limits.MAX_NESTING_DEPTH})",
            Location(path, 1, 1))) from None


def _shipped_folder() -> Traversable | None:
    """The folder of the shipped grammar files: the package data ``formal_lm.grammars``."""
    try:
        return importlib.resources.files("formal_lm.grammars")
    except ModuleNotFoundError:
        pass
    # An editable install (pip install -e) cannot map the top-level folder grammars/, which has no
    # __init__.py, onto formal_lm.grammars (pypa/setuptools#4943), and neither can a checkout on
    # sys.path: both run from the source tree, whose grammars/ is beside the package.
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "grammars").is_dir():
        return root / "grammars"
    return None


def shipped() -> dict[str, Traversable]:
    """Names of the shipped grammars and their files (path-like: ``read_text``, ``name``).

    >>> {"anbn", "dyck2", "tomita1"} <= set(shipped())
    True
    """
    folder = _shipped_folder()
    if folder is None:
        return {}
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".toml") and f.is_file()),
                   key=lambda f: f.name)
    return {f.name[: -len(".toml")]: f for f in files}


def _search_path(hidden) -> dict[str, Path]:
    """The grammar files of ``FORMAL_LM_GRAMMAR_PATH`` by name, less the names in ``hidden``."""
    found: dict[str, Path] = {}
    for folder in os.environ.get(SEARCH_PATH_VAR, "").split(os.pathsep):
        if not folder:
            continue
        if not Path(folder).is_dir():
            raise FormalLMError(Problem(f"{SEARCH_PATH_VAR}: {folder!r} is not a folder",
                                        f"fix or remove it; folders are separated by "
                                        f"{os.pathsep!r}"))
        for f in sorted(Path(folder).glob("*.toml")):
            name = f.name[: -len(".toml")]
            if name in hidden or not f.is_file():
                continue
            if name in found:
                raise FormalLMError(Problem(
                    f"{SEARCH_PATH_VAR}: two grammar files are named {name!r}: "
                    f"{str(found[name])!r} and {str(f)!r}",
                    "rename or remove one of them, or load it by its path"))
            found[name] = f
    return found


def _is_name(text: str) -> bool:
    """Whether ``text`` can only be a grammar's name: no folder and no .toml ending."""
    return not (text.endswith(".toml") or os.sep in text or (os.altsep or os.sep) in text)


def _read(path: Path) -> str:
    """The text of a grammar file given by path: an existing .toml file of at most 1 MiB."""
    where = repr(str(path))
    if path.suffix != ".toml":
        raise FormalLMError(Problem(
            f"{where} is not a grammar file: its name does not end in .toml",
            "give a grammar's name (formal-lm grammars lists the shipped ones) or the path of a "
            ".toml grammar file"))
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FormalLMError(Problem(f"grammar file {where} does not exist",
                                    "check the path")) from None
    except OSError as e:
        raise FormalLMError(Problem(f"cannot read grammar file {where}: {e.strerror}",
                                    "check the path and its permissions")) from None
    if not stat.S_ISREG(info.st_mode):
        raise FormalLMError(Problem(f"grammar file {where} is not a regular file",
                                    "check the path"))
    too_big = Problem(f"grammar file {where} is larger than the limit of 1 MiB "
                      f"({MAX_FILE_BYTES} bytes)",
                      "a grammar file is a few KiB at most: check that this is the file you meant")
    if info.st_size > MAX_FILE_BYTES:
        raise FormalLMError(too_big)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # the file may have grown since stat
    except OSError as e:
        raise FormalLMError(Problem(f"cannot read grammar file {where}: {e.strerror}",
                                    "check the path and its permissions")) from None
    if len(data) > MAX_FILE_BYTES:
        raise FormalLMError(too_big)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise GrammarError(Problem(f"grammar file {where} is not UTF-8 text: byte {e.start} "
                                   f"({data[e.start]:#04x}) cannot be decoded",
                                   "save the file as UTF-8", Location(str(path), line, column))
                           ) from None


def load(name_or_path: str | os.PathLike) -> Language:
    """A grammar by name (``fl.load("anbn")``) or from a ``.toml`` grammar file by path.

    A shipped name comes first, then the names of ``FORMAL_LM_GRAMMAR_PATH``; anything else is a
    path (see the module's docstring).

    >>> load("anbn").name
    'anbn'

    Raises:
        FormalLMError: an unknown name, or a path that is not a readable ``.toml`` file of at most
            1 MiB. GrammarError: a grammar file with problems.
    """
    try:
        text = os.fsdecode(name_or_path)
    except TypeError:
        raise FormalLMError(Problem(f"load takes a grammar's name or a path, not "
                                    f"{type(name_or_path).__name__}",
                                    'e.g. load("anbn") or load("my-grammar.toml")')) from None
    table = shipped()
    if text in table:
        return loads(table[text].read_text(encoding="utf-8"), path=str(table[text]))
    if _is_name(text):
        extra = _search_path(table)
        if text in extra:
            return loads(_read(extra[text]), path=str(extra[text]))
        if not Path(text).suffix:  # with one ("notes.txt"), it is a path: see below
            where = f" (nor in {SEARCH_PATH_VAR})" if os.environ.get(SEARCH_PATH_VAR) else ""
            raise FormalLMError(Problem(f"no shipped grammar named {text!r}{where}",
                                        f"use one of {sorted(table) + sorted(extra)} or a path to "
                                        "a .toml file"))
    path = Path(text)
    return loads(_read(path), path=str(path))
