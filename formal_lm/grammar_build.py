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

import regex

from formal_lm import limits
from formal_lm.errors import FormalLMError, GrammarError, Location, Problem, raise_if
from formal_lm.grammar_schema import (TOP_LEVEL, Source, conforms, field_types, show,
                                      toml_lines, type_problem, value_problems)
from formal_lm.language import Language, definition_hash
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
        return ()  # a type problem of the key (value_problems)
    rules = (_rule(name, spec, src, problems) for name, spec in tables.items())
    return tuple(r for r in rules if r is not None)


def _kind(spec, kinds: dict, what: str, keys, src, problems):
    """The class of a table's ``kind`` (one of ``kinds``), or None with a problem."""
    if not isinstance(spec, dict) or "kind" not in spec:
        problems.append(Problem(f"{what} needs a table with a kind",
                                f"write [{'.'.join(keys)}] with kind = one of {sorted(kinds)}",
                                src.locate(*keys)))
        return None
    kind = spec["kind"]
    if not isinstance(kind, str) or kind not in kinds:
        problems.append(Problem(f"{what}: kind={show(kind)} is unknown",
                                f"use one of {sorted(kinds)}", src.locate(*keys, "kind")))
        return None
    return kinds[kind]


def _typed_args(spec, cls, keys, src, problems, label, owner, skip=()) -> dict | None:
    """A table's keys other than kind, checked against ``cls``'s fields: unknown keys and
    wrong types become problems (None then); lists become tuples."""
    types = field_types(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init and f.metadata.get("file", True)}
    fields -= set(skip)
    args = {k: v for k, v in spec.items() if k not in ("kind", "description")}
    what = ".".join(keys)
    ok = True
    for k in sorted(set(args) - fields):
        problems.append(Problem(f"{label}: key {k!r} is not used by {owner}",
                                f"its keys are {sorted(fields)}", src.locate(*keys, k)))
        ok = False
    checks = [(k, v, types.get(k)) for k, v in args.items() if k in fields]
    if "description" in spec:
        checks.append(("description", spec["description"], str))
    for k, v, tp in checks:
        p = type_problem(v, tp, src, *keys, k, what=f"{what}.{k}")
        if p is not None:
            problems.append(p)
            ok = False
    if not ok:
        return None
    return {k: (tuple(tuple(x) if isinstance(x, list) else x for x in v)
                if isinstance(v, list) else v) for k, v in args.items()}


def _rule(name, spec, src, problems):
    """One [rules.NAME] table as a Rule, or None (with its problems added)."""
    loc = src.locate("rules", name)
    cls = _kind(spec, RULE_KINDS, f"rule {name}", ("rules", name), src, problems)
    if cls is None:
        return None
    kind = spec["kind"]
    args = _typed_args(spec, cls, ("rules", name), src, problems, f"rule {name}",
                       f"kind={kind!r}", skip=("name", "description"))
    if args is None:
        return None
    where = src.locate("rules", name, *args) if len(args) == 1 else loc
    if kind == "in_grammar" and isinstance(args.get("grammar"), str):
        args["language"] = _referenced(name, args["grammar"], src, where, problems)
        if args["language"] is None:
            return None
    try:
        rule = cls(name=name, description=spec.get("description", kind), **args)
        if kind == "pattern":
            re.compile(rule.pattern)
            regex.compile(rule.pattern)
    except FormalLMError as e:
        problems.extend(Problem(p.message, p.fix, where) for p in e.problems)
        return None
    except (TypeError, ValueError, OverflowError, RecursionError, MemoryError, re.error,
            regex.error) as e:
        problems.append(Problem(f"rule {name}: {type(e).__name__}: {e}", "check the rule's keys",
                                where))
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
    is_path = target.endswith(".toml") or "/" in target or os.sep in target
    where = str(Path(src.path).parent / target) if is_path else target
    try:
        return src.load(where)
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
    what = ".".join(keys)
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str) \
            or spec["kind"] not in PRIOR_KINDS:
        at = src.locate(*keys, "kind") if isinstance(spec, dict) and "kind" in spec else loc
        problems.append(Problem(f"{what} needs kind = one of {sorted(PRIOR_KINDS)}",
                                'e.g. kind = "uniform", min = 1, max = 128', at))
        return None
    cls = PRIOR_KINDS[spec["kind"]]
    if "description" in spec:
        problems.append(Problem(f"{what}: key 'description' is not used by a {spec['kind']} "
                                "prior", f"its keys are {sorted(cls.__dataclass_fields__)}",
                                src.locate(*keys, "description")))
        return None
    args = _typed_args(spec, cls, keys, src, problems, what, f"a {spec['kind']} prior")
    if args is None:
        return None
    try:
        prior = cls(**args)
    except TypeError as e:
        problems.append(Problem(f"{what}: {e}", "check the prior's keys", loc))
        return None
    for p in prior.problems():
        problems.append(Problem(p.message, p.fix, loc))
    return prior


def _count(expr, src, i, problems):
    """A block's count: a fixed length ('3') or a sum of multiples of variables ('n', '2n',
    'n+2m'), as (coef, var, ((coef, var), ...)) for ``Block``."""
    text = str(expr)
    if re.fullmatch(r"\s*[0-9]{1,18}\s*", text):
        return int(text), None, ()
    terms = [re.fullmatch(r"\s*([0-9]{0,18})\s*\*?\s*([A-Za-z_]\w*)\s*", part)
             for part in text.split("+")]
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
    for j, raw in enumerate(toml_lines(text)):
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


def _number(text: str):
    """``text`` as a float where it is one (so '0.50' and '5e-1' hash alike), else as it is."""
    try:
        return float(text)
    except ValueError:
        return text


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
    priors: dict  # [prior.VAR] tables read (None where a table has problems)
    canonical: dict = dataclasses.field(default_factory=dict)  # parsed values for the fingerprint

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
        except MemoryError:
            raise GrammarError(problems + [Problem(
                "the grammar is too large: building it ran out of memory",
                "make it smaller (fewer states, pairs or rules, or a smaller prior max)",
                src.locate(_key))]) from None
        except Exception as e:  # noqa: BLE001 - a value the checks let through: never a traceback
            raise GrammarError(problems + [Problem(f"{type(e).__name__}: {show(str(e))}",
                                                   "check the values' types", src.locate(_key))])
        if problems:
            raise GrammarError(problems)
        return lang


NEEDS = {"counter": ["alphabet", "blocks", "prior"], "dyck": ["pairs", "prior"],
         "pfsa": ["alphabet", "start", "arcs"],
         "dfa": ["alphabet", "start", "accepting", "stop_prob", "transitions"],
         "pcfg": ["productions"]}


def _common(doc: dict, src: Source) -> _Grammar:
    """The checks every kind shares: kind, unknown and missing keys, the types of the values,
    rules, alphabet. Wrong types stop here, with every problem found so far."""
    problems: list[Problem] = []
    kind = doc.get("kind")
    if not isinstance(kind, str) or kind not in KEYS:
        raise GrammarError(Problem(f"kind={show(kind)} is not a grammar kind",
                                   f"set kind to one of {sorted([*KEYS, 'split'])}",
                                   src.locate("kind")))
    for k in sorted(set(doc) - KEYS[kind]):
        problems.append(Problem(f"key {k!r} is not used by kind={kind!r}",
                                f"remove it; this kind reads {sorted(KEYS[kind])}", src.locate(k)))
    typed = value_problems(doc, src, sorted(KEYS[kind]))
    problems += typed
    name = doc.get("name") if isinstance(doc.get("name"), str) else ""
    name = name or Path(src.path).stem
    description = doc.get("description", "")
    rules = _rules(doc, src, problems)
    priors = {v: _prior(spec, src, ("prior", v), problems)
              for v, spec in doc.get("prior", {}).items()} \
        if "prior" in KEYS[kind] and isinstance(doc.get("prior"), dict) else {}
    missing = [k for k in NEEDS[kind] if k not in doc]
    old_pcfg = kind == "pcfg" and isinstance(doc.get("rules"), str)  # reported by _rules
    for k in ([] if old_pcfg else missing):
        problems.append(Problem(f"kind={kind!r} needs the key {k!r}", f"add {k} = ...",
                                Location(src.path, 1, 1)))
    if "alphabet" in doc and conforms(doc["alphabet"], TOP_LEVEL["alphabet"]):
        loc = src.locate("alphabet")
        problems += [Problem(p.message, p.fix, loc) for p in check_symbols(doc["alphabet"])]
        problems += size_problems("alphabet", len(doc["alphabet"]), loc)
    if missing or typed:
        raise GrammarError(problems)
    return _Grammar(doc, src, problems, kind, name, description, rules, priors)


def size_problems(what: str, size: int, loc) -> list[Problem]:
    """A problem when a grammar file's alphabet is larger than ``limits.MAX_ALPHABET_SIZE``."""
    if size <= limits.MAX_ALPHABET_SIZE:
        return []
    return [Problem(f"the {what} has {size} symbols, more than the limit of "
                    f"{limits.MAX_ALPHABET_SIZE}", "use fewer symbols, or raise "
                    "formal_lm.limits.MAX_ALPHABET_SIZE (next-token tables grow with it)", loc)]


def _build_counter(g: _Grammar) -> Language:
    from formal_lm.counter import Block, CounterLanguage

    doc, src, problems = g.doc, g.src, g.problems
    before = len(problems)  # a bad block stops here, with every problem gathered
    blocks = []
    for i, b in enumerate(doc["blocks"]):  # [symbol, count] pairs (checked by _common)
        c = _count(b[1], src, i, problems)
        if c:
            blocks.append(Block(b[0], *c))
    priors = {v: p for v, p in g.priors.items() if p is not None}
    if len(problems) > before or len(priors) < len(g.priors):
        raise GrammarError(problems)
    problems += _rule_problems(g, doc["alphabet"])  # at the rules' lines
    g.canonical["blocks"] = [[b.symbol, b.count_text()] for b in blocks]
    return g.construct(CounterLanguage, g.name, blocks, priors, rules=g.rules,
                       alphabet=tuple(doc["alphabet"]), description=g.description, _key="blocks")


def _build_dyck(g: _Grammar) -> Language:
    from formal_lm.dyck import DyckLanguage

    doc, src, problems = g.doc, g.src, g.problems
    if set(g.priors) != {"n"}:
        problems.append(Problem("a dyck grammar takes one prior, [prior.n], over the number "
                                "of bracket pairs", "write [prior.n]", src.locate("prior")))
        raise GrammarError(problems)
    prior = g.priors["n"]
    if doc.get("rules"):
        problems.append(Problem("a dyck grammar's rules are implied by its pairs",
                                "remove the [rules.*] tables", src.locate("rules")))
    problems += size_problems("list of brackets", 2 * len(doc["pairs"]), src.locate("pairs"))
    if prior is None:
        raise GrammarError(problems)
    g.canonical["nested"] = doc.get("nested", True)
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
    for (q, _, r, p), loc in lines:  # a state's line: its first own line, else one leading to it
        locs.setdefault(("state", q), loc)
    for (q, _, r, p), loc in lines:
        if p is not None:
            locs.setdefault(("state", r), loc)
    g.canonical["arcs"] = [["halt", q, _number(r)] if p is None else [q, a, r, _number(p)]
                           for (q, a, r, p), _ in lines]
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
    g.canonical["transitions"] = sorted([q, a, r] for (q, a), r in trans.items())
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
    g.canonical["productions"] = [[lhs, list(rhs), p] for lhs, rhs, p in lang.productions]
    g.canonical["start"] = lang.start
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
    lang.__dict__["_fingerprint"] = _fingerprint(g, lang)
    return lang


def _fingerprint(g: _Grammar, lang: Language) -> str:
    """The hash of the document in canonical form (``Language.fingerprint``): sorted keys,
    normalised numbers, the multi-line fields as parsed, no ``name`` or descriptions, and a
    grammar an ``in_grammar`` rule names as that grammar's own fingerprint."""
    doc = {k: v for k, v in g.doc.items() if k not in ("name", "description")}
    doc.update(g.canonical)
    if isinstance(doc.get("rules"), dict):
        refer = {r.name: r.language for r in lang.rules if getattr(r, "language", None)}
        doc["rules"] = {name: {k: (refer[name] if k == "grammar" and name in refer else v)
                               for k, v in spec.items() if k != "description"}
                        for name, spec in doc["rules"].items()}
    return definition_hash(doc)
