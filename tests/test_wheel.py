"""The wheel: a regular (non-editable) install ships the grammar files and runs without the repo.

The wheel is built from a copy of the source tree (so no stale build/ folder in the repo can leak
into it), installed without dependencies into a folder of its own, and run by this interpreter
from another working folder with that folder first on PYTHONPATH, then this environment's
site-packages for the dependencies (see ``python``: the repo's editable install is kept out).
About 6 to 10 s on a 2-core machine.
"""
import importlib.metadata
import os
import shutil
import site
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (ROOT / "grammars").glob("*.toml"))
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".hypothesis", "runs", ".whl")


def test_the_package_list_names_every_package():
    """pyproject.toml lists the packages by hand (for formal_lm.grammars): none is forgotten."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "formal_lm").rglob("__init__.py")}
    assert set(setuptools["packages"]) == on_disk | {"formal_lm.grammars"}
    assert setuptools["package-dir"] == {"formal_lm.grammars": "grammars"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(target folder, working folder): the wheel installed into the one, run from the other."""
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        major = 0
    assert major >= 77, "building the wheel offline needs setuptools>=77: pip install -e '.[test]'"
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist, target, work = tmp / "src", tmp / "dist", tmp / "target", tmp / "work"
    shutil.copytree(ROOT, src, ignore=COPY_IGNORE)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    run = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "-w", str(dist), "."], cwd=src, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    wheels = list(dist.glob("formal_lm-*.whl"))
    assert len(wheels) == 1, wheels
    run = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target),
                          str(wheels[0])], cwd=tmp, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    work.mkdir()
    return target, work


def python(installed, *args):
    """Runs this interpreter on the wheel's package, with the dependencies of this environment.

    ``-S`` skips the .pth files of site-packages, among them the editable install of the repo,
    whose import hook would otherwise supply any module that the wheel lacks from the repo.
    """
    target, work = installed
    path = [str(target), *site.getsitepackages()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    env.pop("FORMAL_LM_GRAMMAR_PATH", None)
    return subprocess.run([sys.executable, "-S", *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_installed_package_is_the_wheels_and_so_are_its_grammars(installed):
    target, _ = installed
    run = python(installed, "-c", "import sys; import formal_lm as fl; print(fl.__file__); "
                 "print(fl.shipped()['anbn']); print(fl.load('anbn').name); "
                 "print(any('editable' in repr(f) for f in sys.meta_path))")
    assert run.returncode == 0, run.stderr
    package, grammar, name, editable = run.stdout.splitlines()
    assert Path(package).resolve().is_relative_to(target.resolve())
    assert Path(grammar).resolve().is_relative_to(target.resolve() / "formal_lm" / "grammars")
    assert name == "anbn" and editable == "False"


def test_cli_inspect_runs_from_the_wheel(installed):
    run = python(installed, "-m", "formal_lm.cli", "inspect", "anbn")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("anbn (CounterLanguage)")
    assert "corpus (total nats / total tokens): 0.037323" in run.stdout


def test_cli_grammars_lists_every_shipped_grammar(installed):
    run = python(installed, "-m", "formal_lm.cli", "grammars")
    assert run.returncode == 0, run.stderr
    assert sorted(line.split()[0] for line in run.stdout.splitlines()) == SHIPPED
    assert "ERROR" not in run.stdout


def test_a_tiny_training_run_from_the_wheel(installed):
    _, work = installed
    (work / "tiny.toml").write_text(textwrap.dedent("""
        language = "anbn-short"
        steps = 2
        seeds = 1
        eval_every = 2

        [model]
        name = "lstm"
        d_model = 4
        hidden = 8

        [data]
        eval_size = 8
    """))
    run = python(installed, "-m", "formal_lm.cli", "train", "tiny.toml", "--out", "run",
                 "--no-progress")
    assert run.returncode == 0, run.stdout + run.stderr
    assert (work / "run" / "metrics.jsonl").is_file()


def test_a_tiny_experiment_from_the_wheel(installed):
    """``formal-lm run`` end to end on a shipped grammar, from another folder."""
    _, work = installed
    (work / "exp.toml").write_text(textwrap.dedent("""
        [experiment]
        name = "wheel"
        languages = ["anbn-short"]

        [train]
        steps = 4
        seeds = 2
        eval_every = 2

        [train.data]
        eval_size = 8

        [models.lstm]
        name = "lstm"
        d_model = 4
        hidden = 8

        [objectives.normal]
        name = "nll"

        [analysis.saturation]
        n = 8

        [analysis.rule_extrapolation]
        prompt_length = 4
        max_new_tokens = 8
    """))
    run = python(installed, "-m", "formal_lm.cli", "run", "exp.toml", "--out", "out")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "saturation.kl" in (work / "out" / "report.md").read_text()
