"""The walkthroughs in docs/ run as written: ``toml file=NAME`` blocks are written to NAME,
``console`` lines starting with ``$`` are run (``# exit N`` states a non-zero exit status),
and ``python`` blocks run in order in one namespace, all in an empty folder."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)
BIN = Path(sys.executable).parent


def blocks(text: str):
    for m in BLOCK.finditer(text):
        yield m.group(1), m.group(2).strip(), m.group(3), text[: m.start()].count("\n") + 1


def run_console(line: str, where: str, cwd: Path) -> None:
    command, _, comment = line[1:].partition("#")
    expected = int(re.fullmatch(r"\s*exit (\d+)\s*", comment).group(1)) if comment else 0
    argv = shlex.split(command)
    argv[0] = str(BIN / argv[0])
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == expected, f"{where}: {command} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, f"{where}: {command}\n{r.stderr}"


def run_page(name: str, cwd: Path) -> None:
    namespace: dict = {}
    here = os.getcwd()
    os.chdir(cwd)
    try:
        for lang, info, body, line in blocks((DOCS / name).read_text()):
            where = f"docs/{name}:{line}"
            if lang == "toml" and info.startswith("file="):
                (cwd / info[5:]).write_text(body)
            elif lang == "console":
                for cmd in (x for x in body.splitlines() if x.startswith("$")):
                    run_console(cmd, where, cwd)
            elif lang == "python":
                exec(compile(body, where, "exec"), namespace)
    finally:
        os.chdir(here)


def test_your_grammar_walkthrough_runs(tmp_path):
    run_page("your-grammar.md", tmp_path)
    assert (tmp_path / "out" / "report.md").is_file()


def test_tasks_walkthrough_runs(tmp_path):
    run_page("tasks.md", tmp_path)
    assert "reverse" in (tmp_path / "out" / "report.md").read_text()


def test_the_walkthrough_harness_fails_on_a_wrong_claim(tmp_path, monkeypatch):
    page = tmp_path / "docs"
    page.mkdir()
    (page / "bad.md").write_text("```python\nassert 1 + 1 == 3\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "DOCS", page)
    with pytest.raises(AssertionError):
        run_page("bad.md", tmp_path)
