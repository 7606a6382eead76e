"""Grammar files of ``kind = "split"``: a compositional split of another grammar, whose
language is the split's training side.

Keys (besides ``name``, ``kind``, ``description``)::

    base = "commands"              # a grammar name, or a .toml path relative to this file
    # exactly one of:
    exclude = { lhs = "K", rhs = ["W", "twice"], parent = "R" }   # splits.exclude_production
    twin = { symbol = "walk", twin = "stroll", parent = "W" }     # splits.twin_split
    counts = [[1, 2], [3, 3]]                                     # count_splits.exclude_counts
    # optional, for the compositionality analyzers:
    constituent = "R"              # localism: constituents with this label (a PCFG's)
    exceptions = [["look", "twice"]]   # overgeneralisation: [prefix..., rule token]

The language read is ``split.train`` named after the file, with ``split`` (the
``formal_lm.Split``) and ``probes`` (:class:`Probes`) attached. Its fingerprint hashes the base
grammar's fingerprint and the exclusion, so a change to either changes it (and retrains a run
built on it). Every problem is reported at once, at its key's file:line:column.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from formal_lm.errors import FormalLMError, GrammarError, Location, Problem
from formal_lm.grammar_build import _LOADING, _Cycle, _identity
from formal_lm.grammar_schema import Source, show, type_problem
from formal_lm.language import Language, definition_hash

WAYS = ("exclude", "twin", "counts")
TYPES = {"name": str, "kind": str, "description": str, "base": str, "exclude": dict,
         "twin": dict, "counts": tuple[tuple[int, ...], ...], "constituent": str,
         "exceptions": tuple[tuple[str, ...], ...]}
TABLES = {"exclude": {"lhs": str, "rhs": tuple[str, ...], "parent": str},
          "twin": {"symbol": str, "twin": str, "parent": str}}
REQUIRED = {"exclude": ("lhs", "rhs"), "twin": ("symbol", "twin", "parent")}


@dataclasses.dataclass(frozen=True)
class Probes:
    """What a split file names for the analyzers that need more than the split.

    Attributes:
        constituent: a nonterminal of ``split.full`` whose constituents localism compares in
            context and alone (None: no localism test).
        exceptions: (prefix, rule token) pairs after which the full language gives the token
            probability 0 (overgeneralisation; empty: no test).
        twins: (symbol, twin) of a ``twin`` split (substitutivity; None: no test).
    """

    constituent: str | None = None
    exceptions: tuple[tuple[tuple[str, ...], str], ...] = ()
    twins: tuple[str, str] | None = None


def _types(doc: dict, src: Source, problems: list) -> bool:
    """Unknown keys and wrong types as problems; whether the values can be read."""
    ok = True
    for k in sorted(set(doc) - set(TYPES)):
        problems.append(Problem(f"key {k!r} is not used by kind='split'",
                                f"remove it; this kind reads {sorted(TYPES)}", src.locate(k)))
    for k, tp in TYPES.items():
        if k in doc and (p := type_problem(doc[k], tp, src, k)) is not None:
            problems.append(p)
            ok = False
    for way, fields in TABLES.items():
        if not isinstance(doc.get(way), dict):
            continue
        for k in sorted(set(doc[way]) - set(fields)):
            problems.append(Problem(f"{way}: key {k!r} is not used", f"its keys are "
                                    f"{sorted(fields)}", src.locate(way, k)))
            ok = False
        for k, tp in fields.items():
            v = doc[way].get(k)
            if v is None and k in REQUIRED[way]:
                problems.append(Problem(f"{way} needs the key {k!r}", f"add {k} = ...",
                                        src.locate(way)))
                ok = False
            elif v is not None and (p := type_problem(v, tp, src, way, k,
                                                      what=f"{way}.{k}")) is not None:
                problems.append(p)
                ok = False
    ways = [w for w in WAYS if w in doc]
    if len(ways) != 1:
        problems.append(Problem(f"a split names exactly one of {list(WAYS)}, not {ways}",
                                "keep one: exclude (a production), twin (a synonym) or counts",
                                max((src.locate(w) for w in ways or ["kind"]),
                                    key=lambda loc: loc.line)))
        ok = False
    if "base" not in doc:
        problems.append(Problem("kind='split' needs the key 'base'",
                                "base = a grammar name or a .toml path", Location(src.path, 1, 1)))
        ok = False
    return ok


def _base(target: str, src: Source, problems: list) -> Language | None:
    """The base grammar (a name, or a path relative to this file), or None with a problem."""
    is_path = target.endswith(".toml") or "/" in target or os.sep in target
    where = str(Path(src.path).parent / target) if is_path else target
    loc = src.locate("base")
    try:
        return src.load(where)
    except _Cycle as e:
        if e.chain[0][0] != _identity(src.path):
            raise
        problems.append(Problem(f"base={target!r} refers back to this file "
                                f"({' -> '.join(shown for _, shown in e.chain)})",
                                "a split is of another grammar: name it", loc))
    except FormalLMError as e:
        first = e.problems[0]
        at = f"{first.location}: " if first.location else ""
        problems.append(Problem(f"base={target!r} cannot be loaded: {at}{first.message}",
                                "give a grammar's name or a .toml path relative to this file",
                                loc))
    return None


def _split(doc: dict, base: Language, src: Source, name: str):
    """The Split the file asks for (problems raised at the way's line)."""
    from formal_lm.count_splits import exclude_counts
    from formal_lm.splits import exclude_production, twin_split
    way = next(w for w in WAYS if w in doc)
    try:
        if way == "exclude":
            t = doc["exclude"]
            return exclude_production(base, t["lhs"], tuple(t["rhs"]), parent=t.get("parent"),
                                      name=name)
        if way == "twin":
            t = doc["twin"]
            return twin_split(base, t["symbol"], t["twin"], parent=t["parent"], name=name)
        return exclude_counts(base, [tuple(c) for c in doc["counts"]], name=name)
    except FormalLMError as e:
        raise GrammarError([p if p.location else Problem(p.message, p.fix, src.locate(way))
                            for p in e.problems]) from None
    except (TypeError, ValueError, KeyError, IndexError, RecursionError, MemoryError) as e:
        raise GrammarError(Problem(f"{way}: {type(e).__name__}: {show(str(e))}",
                                   f"check the values of {way}", src.locate(way))) from None


def _probes(doc: dict, split, src: Source) -> tuple[Probes, list]:
    """The localism label and overgeneralisation exceptions, checked against ``split.full``."""
    problems, full = [], split.full
    label = doc.get("constituent")
    if label is not None and label not in getattr(full, "nonterminals", ()):
        problems.append(Problem(f"constituent={show(label)} is not a nonterminal of the split's "
                                f"full grammar {full.name!r}", "name one of "
                                f"{list(getattr(full, 'nonterminals', ()))} (PCFG splits only)",
                                src.locate("constituent")))
    exceptions = []
    for e in doc.get("exceptions", ()):
        if len(e) < 2:
            problems.append(Problem(f"exceptions: {show(list(e))} is not [prefix..., rule token]",
                                    "e.g. ['look', 'twice']", src.locate("exceptions")))
            continue
        prefix, token = tuple(e[:-1]), e[-1]
        bad = [x for x in e if x not in full.alphabet]
        if bad:
            why = f"{bad} are not symbols of {full.name!r}"
        elif not full.is_viable(prefix):
            why = f"the prefix {list(prefix)} has probability 0 in {full.name!r}"
        elif full.next_token_dist(prefix)[token] > 0:
            why = f"{full.name!r} allows {token!r} after {list(prefix)}: not an exception"
        else:
            exceptions.append((prefix, token))
            continue
        problems.append(Problem(f"exceptions: {show(list(e))}: {why}", "list [prefix..., token] "
                                "pairs after which the language never has the token",
                                src.locate("exceptions")))
    twins = (doc["twin"]["symbol"], doc["twin"]["twin"]) if "twin" in doc else None
    return Probes(label, tuple(exceptions), twins), problems


def build_split(doc: dict, src: Source) -> Language:
    """The training Language of a split file (see the module docstring).

    Raises:
        GrammarError: every problem found, each at its key's file:line:column.

    Example:
        >>> from formal_lm.grammar_files import loads
        >>> lang = loads('kind = "split"\\nbase = "anbmcnm"\\ncounts = [[1, 2]]', path="s.toml")
        >>> lang.name, round(lang.split.held_out_mass, 6), lang.prob("abbccc")
        ('s', 0.027778, 0.0)
    """
    chain = _LOADING.get()
    here = (_identity(src.path), src.path)
    if here[0] in [k for k, _ in chain]:
        raise _Cycle(chain[[k for k, _ in chain].index(here[0]):] + (here,))
    problems: list[Problem] = []
    if not _types(doc, src, problems):
        raise GrammarError(problems)
    token = _LOADING.set(chain + (here,))
    try:
        base = _base(doc["base"], src, problems)
    finally:
        _LOADING.reset(token)
    if base is None:
        raise GrammarError(problems)
    name = doc.get("name") or Path(src.path).stem
    split = _split(doc, base, src, name)
    probes, more = _probes(doc, split, src)
    if more:
        raise GrammarError(more)
    lang = split.train
    lang.name = name
    lang.description = doc.get("description", "") or lang.description
    if "twin" not in doc:  # a conditioned language keeps its base's rules (the twin is new)
        lang.rules = tuple(base.rules)
    lang.split, lang.probes = split, probes
    # the language's content only: the probes do not change what is trained on
    canonical = {k: v for k, v in doc.items()
                 if k not in ("name", "description", "constituent", "exceptions")}
    canonical["base"] = base.fingerprint()
    lang.__dict__["_fingerprint"] = definition_hash(canonical)
    return lang
