"""Grammar file contents -> a Language: the checks and builders of each ``kind``
(``formal_lm.grammar_files`` documents the format and reads the files).

Every problem is gathered with its file:line:column before one ``GrammarError`` is raised.
"""
from __future__ import annotations

import contextvars
import dataclasses
import os
import re
from pathlib import Path

from formal_lm.errors import FormalLMError, GrammarError, Location, Problem, raise_if
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
    "pcfg": COMMON | {"start", "productions"},
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


def _rules(doc, src, problems) -> tuple:
    tables = doc.get("rules", {})
    if isinstance(tables, str) and doc.get("kind") == "pcfg":
        problems.append(Problem(
            "rules is a string: a pcfg's productions now go under the key 'productions' "
            "('rules' holds named [rules.NAME] tables, as for every kind)",
            'rename the key: productions = """S -> ...""" (the text stays as it is)',
            src.locate("rules")))
        return ()
    if not isinstance(tables, dict):
        problems.append(Problem(f"rules={tables!r} should be tables [rules.NAME]",
                                f"write [rules.R1] with kind = one of {sorted(RULE_KINDS)}",
                                src.locate("rules")))
        return ()
    rules = (_rule(name, spec, src, problems) for name, spec in tables.items())
    return tuple(r for r in rules if r is not None)


def _rule(name, spec, src, problems):
    """One [rules.NAME] table as a Rule, or None (with its problems added)."""
    loc = src.locate("rules", name)
    if not isinstance(spec, dict) or "kind" not in spec:
        problems.append(Problem(f"rule {name} needs a table with a kind",
                                f"write [rules.{name}] with kind = one of {sorted(RULE_KINDS)}",
                                loc))
        return None
    kind = spec["kind"]
    if kind not in RULE_KINDS:
        problems.append(Problem(f"rule {name}: kind={kind!r} is unknown",
                                f"use one of {sorted(RULE_KINDS)}", src.locate("rules", name, "kind")))
        return None
    cls = RULE_KINDS[kind]
    fields = {f.name for f in dataclasses.fields(cls) if f.init and f.metadata.get("file", True)}
    fields -= {"name", "description"}
    args = {k: v for k, v in spec.items() if k not in ("kind", "description")}
    unknown = set(args) - fields
    for k in sorted(unknown):
        problems.append(Problem(f"rule {name}: key {k!r} is not used by kind={kind!r}",
                                f"its keys are {sorted(fields)}", src.locate("rules", name, k)))
    if unknown:
        return None
    args = {k: (tuple(tuple(x) if isinstance(x, list) else x for x in v)
                if isinstance(v, list) else v) for k, v in args.items()}
    where = src.locate("rules", name, *args) if len(args) == 1 else loc
    if kind == "in_grammar" and isinstance(args.get("grammar"), str):
        args["language"] = _referenced(name, args["grammar"], src, where, problems)
        if args["language"] is None:
            return None
    try:
        rule = cls(name=name, description=spec.get("description", kind), **args)
        if kind == "pattern":
            re.compile(rule.pattern)
    except FormalLMError as e:
        problems.extend(Problem(p.message, p.fix, where) for p in e.problems)
        return None
    except (TypeError, re.error) as e:
        problems.append(Problem(f"rule {name}: {e}", "check the rule's keys", loc))
        return None
    return rule


# ----- grammars that refer to grammars (in_grammar rules) -------------------------------------
class _Cycle(GrammarError):
    """A grammar file reached again while it is being built: ``chain`` lists the files."""

    def __init__(self, chain: tuple[tuple[str, str], ...]):
        self.chain = chain
        super().__init__(Problem("grammar files refer to each other in a cycle: "
                                 + " -> ".join(shown for _, shown in chain)))


_LOADING: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "formal_lm_grammars_being_built", default=())


def _identity(path: str) -> str:
    return os.path.realpath(path)


def _referenced(rule, target, src, loc, problems) -> Language | None:
    """The grammar an in_grammar rule names: a name (shipped or on the search path) or a path,
    relative to this grammar's file. None, with a problem, when it cannot be loaded."""
    import formal_lm  # the package's load() (loaded by now), which builds grammar files here

    is_path = target.endswith(".toml") or "/" in target or os.sep in target
    where = str(Path(src.path).parent / target) if is_path else target
    try:
        return formal_lm.load(where)
    except _Cycle as e:
        if e.chain[0][0] != _identity(src.path):
            raise  # the cycle started further up: reported where it closes
        problems.append(Problem(f"rule {rule}: grammar={target!r} refers back to this grammar "
                                f"({' -> '.join(shown for _, shown in e.chain)})",
                                "a grammar cannot be defined through itself: name another "
                                "grammar", loc))
    except FormalLMError as e:
        first = e.problems[0]
        at = f"{first.location}: " if first.location else ""
        more = f" (and {len(e.problems) - 1} more)" if len(e.problems) > 1 else ""
        problems.append(Problem(f"rule {rule}: grammar={target!r} cannot be loaded: "
                                f"{at}{first.message}{more}",
                                "give a shipped grammar's name or a .toml path relative to this "
                                "file", loc))
    return None


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
    """A block's count: a fixed length ('3') or a sum of multiples of variables ('n', '2n',
    'n+2m'), as (coef, var, ((coef, var), ...)) for ``Block``."""
    text = str(expr)
    if re.fullmatch(r"\s*\d+\s*", text):
        return int(text), None, ()
    terms = [re.fullmatch(r"\s*(\d*)\s*\*?\s*([A-Za-z_]\w*)\s*", part) for part in text.split("+")]
    if not all(terms):
        problems.append(Problem(f"blocks[{i}] count={expr!r} is not a count",
                                "write a fixed length ('1', '3') or a sum of multiples of "
                                "variables ('n', '2n', 'n+2m')", src.locate("blocks")))
        return None
    (c0, v0), *rest = [(int(m.group(1) or 1), m.group(2)) for m in terms]
    return c0, v0, tuple(rest)


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
         "pcfg": ["productions"]}


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
    old_pcfg = kind == "pcfg" and isinstance(doc.get("rules"), str)  # reported by _rules
    for k in ([] if old_pcfg else missing):
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
                blocks.append(Block(b[0], *c))
    priors = {}
    if _expect(problems, src, doc["prior"], dict, "prior", what="tables [prior.VAR]"):
        for v, spec in doc["prior"].items():
            p = _prior(spec, src, ("prior", v), problems)
            if p is not None:
                priors[v] = p
    if len(problems) > before:
        raise GrammarError(problems)
    if isinstance(doc["alphabet"], list):
        problems += _rule_problems(g, doc["alphabet"])  # at the rules' lines
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
    lang = g.construct(PCFG.from_nltk, g.doc["productions"], name=g.name,
                       start=g.doc.get("start"), path=src.path,
                       line_offset=src.string_start("productions"), _key="productions")
    lang.description = g.description
    lang.rules = g.rules
    return lang


def _rule_problems(g: _Grammar, alphabet) -> list[Problem]:
    """The rules' problems in a language over ``alphabet``, at the rules' lines."""
    return [Problem(p.message, p.fix, p.location or g.src.locate("rules", r.name))
            for r in g.rules for p in r.problems(tuple(alphabet))]


BUILDERS = {"counter": _build_counter, "dyck": _build_dyck, "pfsa": _build_pfsa,
            "dfa": _build_dfa, "pcfg": _build_pcfg}


def build(doc: dict, src: Source) -> Language:
    """The Language of a grammar file's contents (``src`` locates its problems).

    Raises:
        GrammarError: every problem found; a grammar that refers to itself (in_grammar
            rules, directly or through other files) is one of them.
    """
    chain = _LOADING.get()
    here = (_identity(src.path), src.path)
    if here[0] in [k for k, _ in chain]:
        raise _Cycle(chain[[k for k, _ in chain].index(here[0]):] + (here,))
    token = _LOADING.set(chain + (here,))
    try:
        g = _common(doc, src)
        lang = BUILDERS[g.kind](g)
    finally:
        _LOADING.reset(token)
    if g.kind != "counter":  # the counter constructor checked its rules already
        raise_if(_rule_problems(g, lang.alphabet))
    return lang
