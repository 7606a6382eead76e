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

A prior table is ``kind = "uniform"`` with ``min``/``max``, or ``kind = "geometric"`` with ``p``,
``min`` and optionally ``max``. A rule table is ``kind`` (see ``formal_lm.rules``), its keys, and
an optional ``description``.
"""
from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from formal_lm.errors import FormalLMError, GrammarError, Location, Problem
from formal_lm.language import Language
from formal_lm.priors import PRIOR_KINDS
from formal_lm.rules import RULE_KINDS
from formal_lm.vocab import check_symbols

GRAMMAR_DIR = Path(os.environ.get("FORMAL_LM_GRAMMARS", Path(__file__).resolve().parent.parent
                                  / "grammars"))

COMMON = {"name", "kind", "description", "rules"}
KEYS = {
    "counter": COMMON | {"alphabet", "blocks", "prior"},
    "dyck": COMMON | {"pairs", "nested", "prior"},
    "pfsa": COMMON | {"alphabet", "start", "arcs"},
    "dfa": COMMON | {"alphabet", "start", "accepting", "stop_prob", "transitions"},
    "pcfg": COMMON | {"start"},
}


class _Source:
    """The text of a grammar file, for locating keys and lines inside multi-line strings."""

    def __init__(self, text: str, path: str):
        self.text, self.path, self.lines = text, path, text.splitlines()

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


def _expect(problems, src, value, typ, *keys, what):
    if not isinstance(value, typ):
        problems.append(Problem(f"{'.'.join(keys)}={value!r} should be {what}", f"write {what}",
                                src.locate(*keys)))
        return False
    return True


def _rules(doc, src, problems):
    out = []
    tables = doc.get("rules", {})
    if not isinstance(tables, dict):
        return []
    for name, spec in tables.items():
        loc = src.locate("rules", name)
        if not isinstance(spec, dict) or "kind" not in spec:
            problems.append(Problem(f"rule {name} needs a table with a kind",
                                    f"write [rules.{name}] with kind = one of {sorted(RULE_KINDS)}",
                                    loc))
            continue
        kind = spec["kind"]
        if kind not in RULE_KINDS:
            problems.append(Problem(f"rule {name}: kind={kind!r} is unknown",
                                    f"use one of {sorted(RULE_KINDS)}", src.locate("rules", name, "kind")))
            continue
        cls = RULE_KINDS[kind]
        fields = {f for f in cls.__dataclass_fields__} - {"name", "description"}
        args = {k: v for k, v in spec.items() if k not in ("kind", "description")}
        unknown = set(args) - fields
        for k in sorted(unknown):
            problems.append(Problem(f"rule {name}: key {k!r} is not used by kind={kind!r}",
                                    f"its keys are {sorted(fields)}", src.locate("rules", name, k)))
        if unknown:
            continue
        args = {k: (tuple(tuple(x) if isinstance(x, list) else x for x in v)
                    if isinstance(v, list) else v) for k, v in args.items()}
        try:
            rule = cls(name=name, description=spec.get("description", kind), **args)
            if kind == "pattern":
                re.compile(rule.pattern)
        except (TypeError, re.error) as e:
            problems.append(Problem(f"rule {name}: {e}", "check the rule's keys", loc))
            continue
        out.append(rule)
    return tuple(out)


def _prior(spec, src, keys, problems):
    loc = src.locate(*keys)
    if not isinstance(spec, dict) or spec.get("kind") not in PRIOR_KINDS:
        problems.append(Problem(f"{'.'.join(keys)} needs kind = one of {sorted(PRIOR_KINDS)}",
                                'e.g. kind = "uniform", min = 1, max = 128', loc))
        return None
    cls = PRIOR_KINDS[spec["kind"]]
    args = {k: v for k, v in spec.items() if k != "kind"}
    unknown = set(args) - set(cls.__dataclass_fields__)
    for k in sorted(unknown):
        problems.append(Problem(f"{'.'.join(keys)}: key {k!r} is not used by a {spec['kind']} prior",
                                f"its keys are {sorted(cls.__dataclass_fields__)}",
                                src.locate(*keys, k)))
    if unknown:
        return None
    try:
        prior = cls(**args)
    except TypeError as e:
        problems.append(Problem(f"{'.'.join(keys)}: {e}", "check the prior's keys", loc))
        return None
    for p in prior.problems():
        problems.append(Problem(p.message, p.fix, loc))
    return prior


def _count(expr, src, i, problems):
    m = re.fullmatch(r"\s*(\d*)\s*([A-Za-z_]\w*)?\s*", str(expr))
    if not m or (not m.group(1) and not m.group(2)):
        problems.append(Problem(f"blocks[{i}] count={expr!r} is not a count",
                                "write '1', '3', 'n' or '2n'", src.locate("blocks")))
        return None
    return int(m.group(1) or 1), m.group(2)


def _lines(src, key, text, problems, pattern, what):
    """Non-comment lines of a multi-line string, with their Locations."""
    first = src.string_start(key)
    out = []
    for j, raw in enumerate(text.splitlines()):
        line = raw.split("#", 1)[0]
        if not line.strip():
            continue
        lineno = first + j + 1
        col = len(raw) - len(raw.lstrip()) + 1
        loc = Location(src.path, lineno, col)
        m = re.fullmatch(pattern, line.strip())
        if not m:
            problems.append(Problem(f"{key}: cannot read {line.strip()!r}", f"write lines as {what}",
                                    loc))
            continue
        out.append((m.groups(), loc))
    return out


def _prob(text, loc, problems):
    try:
        p = float(text)
    except ValueError:
        problems.append(Problem(f"probability={text!r} is not a number", "write e.g. 0.25", loc))
        return None
    return p


def _build(doc: dict, src: _Source) -> Language:
    from formal_lm.counter import Block, CounterLanguage
    from formal_lm.dyck import DyckLanguage
    from formal_lm.pfsa import PFSA, dfa_to_pfsa

    problems: list[Problem] = []
    kind = doc.get("kind")
    if kind not in KEYS:
        raise GrammarError(Problem(f"kind={kind!r} is not a grammar kind",
                                   f"set kind to one of {sorted(KEYS)}", src.locate("kind")))
    for k in sorted(set(doc) - KEYS[kind]):
        problems.append(Problem(f"key {k!r} is not used by kind={kind!r}",
                                f"remove it; this kind reads {sorted(KEYS[kind])}", src.locate(k)))
    name = doc.get("name") or Path(src.path).stem
    description = doc.get("description", "")
    rules = _rules(doc, src, problems)
    need = {"counter": ["alphabet", "blocks", "prior"], "dyck": ["pairs", "prior"],
            "pfsa": ["alphabet", "start", "arcs"],
            "dfa": ["alphabet", "start", "accepting", "stop_prob", "transitions"],
            "pcfg": ["rules"]}[kind]
    missing = [k for k in need if k not in doc]
    for k in missing:
        problems.append(Problem(f"kind={kind!r} needs the key {k!r}", f"add {k} = ...",
                                Location(src.path, 1, 1)))
    if "alphabet" in doc:
        if _expect(problems, src, doc["alphabet"], list, "alphabet", what="a list of symbols"):
            loc = src.locate("alphabet")
            problems += [Problem(p.message, p.fix, loc) for p in check_symbols(doc["alphabet"])]
    if missing:
        raise GrammarError(problems)

    def build(fn, *args, _key="kind", **kw):
        """Builds the language; raises every problem of the file and of the construction."""
        try:
            lang = fn(*args, **kw)
        except FormalLMError as e:  # attach the file location to problems that have none
            where = src.locate(_key)
            known = {p.message for p in problems}
            raise GrammarError(problems + [p if p.location else Problem(p.message, p.fix, where)
                                           for p in e.problems if p.message not in known]) from None
        except Exception as e:  # wrong types from the file reach the constructor
            raise GrammarError(problems + [Problem(f"{type(e).__name__}: {e}",
                                                   "check the values' types", src.locate(_key))])
        if problems:
            raise GrammarError(problems)
        return lang

    if kind == "counter":
        before = len(problems)  # a bad block or prior stops here, with every problem gathered
        blocks = []
        if _expect(problems, src, doc["blocks"], list, "blocks", what="a list of [symbol, count]"):
            for i, b in enumerate(doc["blocks"]):
                if not (isinstance(b, list) and len(b) == 2):
                    problems.append(Problem(f"blocks[{i}]={b!r} is not [symbol, count]",
                                            "write ['a', 'n']", src.locate("blocks")))
                    continue
                c = _count(b[1], src, i, problems)
                if c:
                    blocks.append(Block(b[0], c[0], c[1]))
        priors = {}
        if _expect(problems, src, doc["prior"], dict, "prior", what="tables [prior.VAR]"):
            for v, spec in doc["prior"].items():
                p = _prior(spec, src, ("prior", v), problems)
                if p is not None:
                    priors[v] = p
        if len(problems) > before:
            raise GrammarError(problems)
        return build(CounterLanguage, name, blocks, priors, rules=rules,
                     alphabet=tuple(doc["alphabet"]), description=description, _key="blocks")
    if kind == "dyck":
        priors = doc["prior"]
        if not isinstance(priors, dict) or set(priors) != {"n"}:
            problems.append(Problem("a dyck grammar takes one prior, [prior.n], over the number "
                                    "of bracket pairs", "write [prior.n]", src.locate("prior")))
            raise GrammarError(problems)
        prior = _prior(priors["n"], src, ("prior", "n"), problems)
        if rules:
            problems.append(Problem("a dyck grammar's rules are implied by its pairs",
                                    "remove the [rules.*] tables", src.locate("rules")))
        if prior is None:
            raise GrammarError(problems)
        return build(DyckLanguage, name, doc["pairs"], prior, nested=doc.get("nested", True),
                     description=description, _key="pairs")
    if kind == "pfsa":
        arcs, final, locs = [], {}, {}
        lines = _lines(src, "arcs", doc["arcs"], problems,
                       r"(\S+)\s+(\S+)\s+(\S+)(?:\s+(\S+))?", "'STATE SYMBOL NEXT PROB' or 'STATE EOS PROB'")
        for (q, a, r, p), loc in lines:
            if p is None:  # STATE EOS PROB
                if a not in ("EOS", "</s>"):
                    problems.append(Problem(f"arcs: {q} {a} {r}: a 3-field line must be "
                                            "'STATE EOS PROB'", "write 'STATE EOS PROB'", loc))
                    continue
                pr = _prob(r, loc, problems)
                final[q], locs[("final", q)] = pr, loc
            else:
                pr = _prob(p, loc, problems)
                locs[len(arcs)] = loc
                arcs.append((q, a, r, pr))
        return build(PFSA, name, arcs, final, doc["start"], alphabet=tuple(doc["alphabet"]),
                     rules=rules, description=description, locations=locs, _key="arcs")
    if kind == "dfa":
        trans = {}
        for (q, a, r), loc in _lines(src, "transitions", doc["transitions"], problems,
                                     r"(\S+)\s+(\S+)\s+(\S+)", "'STATE SYMBOL NEXT'"):
            if (q, a) in trans:
                problems.append(Problem(f"transitions: state {q} has two arcs on {a!r}",
                                        "a DFA has one arc per state and symbol", loc))
            if a not in doc["alphabet"]:
                problems.append(Problem(f"transitions: symbol={a!r} is not in the alphabet",
                                        "add it to the alphabet", loc))
            trans[(q, a)] = r
        return build(dfa_to_pfsa, name, trans, doc["start"], set(doc["accepting"]),
                     alphabet=tuple(doc["alphabet"]), stop_prob=doc["stop_prob"], rules=rules,
                     description=description, _key="transitions")
    # pcfg
    from formal_lm.pcfg import PCFG
    text = doc["rules"]
    # the PCFG's rules string shares the key "rules" with named rules; here it is a string
    g = build(PCFG.from_nltk, text, name=name, start=doc.get("start"), path=src.path,
              line_offset=src.string_start("rules"), _key="rules")
    g.description = description
    return g


def loads(text: str, *, path: str = "<string>") -> Language:
    """A Language from the text of a grammar file.

    Raises:
        GrammarError: listing every problem found, each with file:line:column.
    """
    src = _Source(text, path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        if m:
            loc = Location(path, int(m.group(1)), int(m.group(2)))
        else:  # "at end of document"
            lines = text.splitlines() or [""]
            loc = Location(path, len(lines), len(lines[-1]) + 1)
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise GrammarError(Problem(f"malformed TOML: {msg}",
                                   "check quotes, brackets and '=' on that line", loc)) from None
    if isinstance(doc.get("rules"), str) and doc.get("kind") != "pcfg":
        raise GrammarError(Problem("rules is a string, which only kind = 'pcfg' reads",
                                   "use [rules.NAME] tables", src.locate("rules")))
    return _build(doc, src)


def shipped() -> dict[str, Path]:
    """Names of the shipped grammars and their files."""
    return {p.stem: p for p in sorted(GRAMMAR_DIR.glob("*.toml"))}


def load(name_or_path: str | os.PathLike) -> Language:
    """A shipped grammar by name (``fl.load("anbn")``) or a grammar file by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        table = shipped()
        if str(name_or_path) not in table:
            raise FormalLMError(Problem(f"no shipped grammar named {str(name_or_path)!r}",
                                        f"use one of {sorted(table)} or a path to a .toml file"))
        path = table[str(name_or_path)]
    if not path.exists():
        raise FormalLMError(Problem(f"grammar file {str(path)!r} does not exist",
                                    "check the path"))
    return loads(path.read_text(), path=str(path))
