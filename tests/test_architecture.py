"""The package's shape: no import cycles (function-local imports included), no module over
500 lines, no function over 80 lines."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "formal_lm"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Package modules ``path`` imports anywhere in it (top level or inside a function)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known}
    return out - {name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    g = {}
    for name, path in mods.items():
        deps = imports(path, name, known)
        # importing a.b.c runs a/__init__ and a/b/__init__ too
        g[name] = {d for t in deps for d in [t] + [".".join(t.split(".")[:i])
                                                  for i in range(1, t.count(".") + 1)]
                   if d in known and d != name and not name.startswith(d + ".")}
    return g


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(g[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (c := visit(w)):
                return c
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(g):
        if v not in state and (c := visit(v)):
            return c
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    g = graph()
    assert len(g) > 40 and "formal_lm.training.loop" in g["formal_lm.experiments.grid"] | \
        {d for x in g["formal_lm.experiments.grid"] for d in g.get(x, ())}
    assert find_cycle(g) is None, " -> ".join(find_cycle(g))


def test_module_and_function_sizes():
    too_big = []
    for name, path in modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_big.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_big.append(f"{name}.{node.name}: {n} lines")
    assert not too_big, too_big


def test_no_module_reaches_up_to_the_package_root():
    """``import formal_lm`` (or a name from its ``__init__``) inside the package is an arrow up
    to the top: the root imports everything. Doctests may; code may not."""
    mods = modules()
    bad = []
    for name, path in mods.items():
        if name == "formal_lm":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name == "formal_lm" for a in node.names):
                bad.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "formal_lm" and not node.level:
                bad += [f"{name}:{node.lineno} ({a.name})" for a in node.names
                        if f"formal_lm.{a.name}" not in mods]
    assert not bad, bad
