"""Grammar file contents -> a Language: the checks and builders of each ``kind``
(``formal_lm.grammar_files`` documents the format and reads the files).

Every problem is gathered with its file:line:column before one ``GrammarError`` is raised.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from formal_lm.errors import FormalLMError, GrammarError, Location, Problem
from formal_lm.language import Language
from formal_lm.priors import PRIOR_KINDS
from formal_lm.rules import RULE_KINDS
from formal_lm.vocab import check_symbols


COMMON = {"name", "kind", "description", "rules"}
KEYS = {
    "counter": COMMON | {"alphabet", "blocks", "prior"},
    "dyck": COMMON | {"pairs", "nested", "prior"},
    "pfsa": COMMON | {"alphabet", "start", "arcs"},
    "dfa": COMMON | {"alphabet", "start", "accepting", "stop_prob", "transitions"},
    "pcfg": COMMON | {"start"},
}


class Source:
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


@dataclasses.dataclass
class _Grammar:
    """What every kind reads from a file (after the common checks), and the problems so far."""

    doc: dict
    src: Source
    problems: list[Problem]
    kind: str
    name: str
    description: str
    rules: tuple

    def construct(self, fn, *args, _key="kind", **kw):
        """Builds the language; raises every problem of the file and of the construction."""
        problems, src = self.problems, self.src
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


NEEDS = {"counter": ["alphabet", "blocks", "prior"], "dyck": ["pairs", "prior"],
         "pfsa": ["alphabet", "start", "arcs"],
         "dfa": ["alphabet", "start", "accepting", "stop_prob", "transitions"],
         "pcfg": ["rules"]}


def _common(doc: dict, src: Source) -> _Grammar:
    """The checks every kind shares: kind, unknown and missing keys, rules, alphabet."""
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
    missing = [k for k in NEEDS[kind] if k not in doc]
    for k in missing:
        problems.append(Problem(f"kind={kind!r} needs the key {k!r}", f"add {k} = ...",
                                Location(src.path, 1, 1)))
    if "alphabet" in doc:
        if _expect(problems, src, doc["alphabet"], list, "alphabet", what="a list of symbols"):
            loc = src.locate("alphabet")
            problems += [Problem(p.message, p.fix, loc) for p in check_symbols(doc["alphabet"])]
    if missing:
        raise GrammarError(problems)
    return _Grammar(doc, src, problems, kind, name, description, rules)


def _build_counter(g: _Grammar) -> Language:
    from formal_lm.counter import Block, CounterLanguage

    doc, src, problems = g.doc, g.src, g.problems
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
    return g.construct(CounterLanguage, g.name, blocks, priors, rules=g.rules,
                       alphabet=tuple(doc["alphabet"]), description=g.description, _key="blocks")


def _build_dyck(g: _Grammar) -> Language:
    from formal_lm.dyck import DyckLanguage

    doc, src, problems = g.doc, g.src, g.problems
    priors = doc["prior"]
    if not isinstance(priors, dict) or set(priors) != {"n"}:
        problems.append(Problem("a dyck grammar takes one prior, [prior.n], over the number "
                                "of bracket pairs", "write [prior.n]", src.locate("prior")))
        raise GrammarError(problems)
    prior = _prior(priors["n"], src, ("prior", "n"), problems)
    if g.rules:
        problems.append(Problem("a dyck grammar's rules are implied by its pairs",
                                "remove the [rules.*] tables", src.locate("rules")))
    if prior is None:
        raise GrammarError(problems)
    return g.construct(DyckLanguage, g.name, doc["pairs"], prior, nested=doc.get("nested", True),
                       description=g.description, _key="pairs")


def _build_pfsa(g: _Grammar) -> Language:
    from formal_lm.pfsa import PFSA

    doc, src, problems = g.doc, g.src, g.problems
    arcs, final, locs = [], {}, {}
    lines = _lines(src, "arcs", doc["arcs"], problems, r"(\S+)\s+(\S+)\s+(\S+)(?:\s+(\S+))?",
                   "'STATE SYMBOL NEXT PROB' or 'STATE EOS PROB'")
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
    return g.construct(PFSA, g.name, arcs, final, doc["start"], alphabet=tuple(doc["alphabet"]),
                       rules=g.rules, description=g.description, locations=locs, _key="arcs")


def _build_dfa(g: _Grammar) -> Language:
    from formal_lm.pfsa import dfa_to_pfsa

    doc, problems = g.doc, g.problems
    trans = {}
    for (q, a, r), loc in _lines(g.src, "transitions", doc["transitions"], problems,
                                 r"(\S+)\s+(\S+)\s+(\S+)", "'STATE SYMBOL NEXT'"):
        if (q, a) in trans:
            problems.append(Problem(f"transitions: state {q} has two arcs on {a!r}",
                                    "a DFA has one arc per state and symbol", loc))
        if a not in doc["alphabet"]:
            problems.append(Problem(f"transitions: symbol={a!r} is not in the alphabet",
                                    "add it to the alphabet", loc))
        trans[(q, a)] = r
    return g.construct(dfa_to_pfsa, g.name, trans, doc["start"], set(doc["accepting"]),
                       alphabet=tuple(doc["alphabet"]), stop_prob=doc["stop_prob"], rules=g.rules,
                       description=g.description, _key="transitions")


def _build_pcfg(g: _Grammar) -> Language:
    from formal_lm.pcfg import PCFG

    src = g.src
    # the PCFG's rules string shares the key "rules" with named rules; here it is a string
    lang = g.construct(PCFG.from_nltk, g.doc["rules"], name=g.name, start=g.doc.get("start"),
                       path=src.path, line_offset=src.string_start("rules"), _key="rules")
    lang.description = g.description
    return lang


BUILDERS = {"counter": _build_counter, "dyck": _build_dyck, "pfsa": _build_pfsa,
            "dfa": _build_dfa, "pcfg": _build_pcfg}


def build(doc: dict, src: Source) -> Language:
    g = _common(doc, src)
    return BUILDERS[g.kind](g)
