"""Experiment files: a grid of languages x architectures x objectives, trained over seeds, then
analysed at one selected checkpoint per seed.

Layout (TOML)::

    [experiment]
    name = "anbn-rule-extrapolation"
    description = "..."
    languages = ["anbn-short"]      # shipped grammar names
    checkpoint = "best"             # "best": lowest validation loss per seed; "last"
    eval_seed = 10007               # seed of held-out analysis samples (never a training stream)

    [train]                         # formal_lm.training file layout, minus language/model/objective
    steps = 400
    seeds = 8
    [train.optimizer]
    lr = 3e-3
    [train.data]
    max_length = 40

    [models.transformer]            # one table per architecture: name + its config
    name = "transformer"
    d_model = 16

    [objectives.normal]             # one table per objective (formal_lm.training ObjectiveConfig)
    name = "nll"

    [analysis.saturation]           # analyzers to run, with their options
    [analysis.rule_extrapolation]
    [analysis.next_symbol_sets]
    [analysis.length_generalization]
    [analysis.non_identifiability]

    [published]                     # numbers to set beside ours, with their citation
    [full]                          # overrides merged over the file with run_experiment(full=True)

Unknown keys are errors that name the key and the file; every problem is reported at once.
"""
from __future__ import annotations

import copy
import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path

from formal_lm.errors import FormalLMError, Problem

CHECKPOINTS = ("best", "last")
TOP = {"experiment", "train", "models", "objectives", "analysis", "published", "full"}
EXPERIMENT_KEYS = {"name", "description", "languages", "checkpoint", "eval_seed"}
TRAIN_KEYS = {"steps", "seeds", "batch_size", "eval_every", "checkpoint_every", "optimizer", "data"}
ANALYSIS_KEYS: dict[str, set[str]] = {
    "saturation": {"n", "threshold"},
    "rule_extrapolation": {"prompt_length", "max_new_tokens", "decoding", "max_prompts",
                           "ngram_n", "ngram_k", "ngram_train", "heldout_only"},
    "next_symbol_sets": {"n", "threshold", "train_max_length"},
    "length_generalization": {"train_max_length", "test_lengths", "per_bin", "bins", "threshold"},
    "non_identifiability": {"loss_metric", "alpha", "tolerance"},
}
PUBLISHED_KEYS = {"citation", "source", "setup", "loss_note", "baseline_eos_pct", "rows", "grid"}
PUBLISHED_ROW_KEYS = {"model", "seeds", "val_loss", "ood_R1_pct", "language"}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A validated experiment file.

    Attributes:
        name, description: from ``[experiment]``.
        languages: grammar names.
        checkpoint: "best" (lowest validation loss per seed) or "last".
        eval_seed: seed of every held-out analysis sample.
        train: the shared training table (file layout).
        models: {architecture key: model table with ``name``}.
        objectives: {objective key: objective table with ``name``}.
        analysis: {analyzer name: options}.
        published: the ``[published]`` table (may be empty).
        full: whether the ``[full]`` overrides were applied.
        source: the file.
    """

    name: str
    description: str
    languages: tuple[str, ...]
    checkpoint: str
    eval_seed: int
    train: dict
    models: dict
    objectives: dict
    analysis: dict
    published: dict
    full: bool
    source: str

    def cells(self) -> list[tuple[str, str, str]]:
        """(language, model key, objective key) for every grid cell, in file order."""
        return [(lang, m, o) for lang in self.languages for m in self.models
                for o in self.objectives]

    @staticmethod
    def cell_name(language: str, model: str, objective: str) -> str:
        return f"{language}.{model}.{objective}"

    def train_dict(self, language: str, model: str, objective: str) -> dict:
        """The formal_lm.training config (file layout) of one cell."""
        d = copy.deepcopy(self.train)
        d["language"] = language
        d["model"] = copy.deepcopy(self.models[model])
        obj = copy.deepcopy(self.objectives[objective])
        d["objective"] = obj
        return d


def _merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_experiment(path: str | Path, *, full: bool = False) -> Experiment:
    """Reads and validates an experiment file (``full=True`` merges its ``[full]`` table).

    Raises:
        FormalLMError: naming the file and every unknown or invalid key.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise FormalLMError(Problem(f"cannot read experiment file {path}: {e}")) from None
    except tomllib.TOMLDecodeError as e:
        raise FormalLMError(Problem(f"{path}: not valid TOML: {e}")) from None
    exp = raw.get("experiment")
    kind = exp.get("kind") if isinstance(exp, Mapping) else None
    if kind in ("icl", "finetune"):  # case studies: formal_lm.casestudies validates them
        from formal_lm.casestudies import load_finetune_spec, load_icl_spec
        if full:
            raise FormalLMError(Problem(f"{path}: full=True but the file has no [full] table"))
        return (load_icl_spec if kind == "icl" else load_finetune_spec)(path)
    return experiment_from_dict(raw, full=full, source=str(path))


def experiment_from_dict(raw: Mapping, *, full: bool = False, source: str = "<dict>") -> Experiment:
    """Validates the file layout (see the module docstring)."""
    problems: list[Problem] = []

    def bad(msg, fix=""):
        problems.append(Problem(f"{source}: {msg}", fix))

    def check_keys(table, allowed, where):
        if not isinstance(table, Mapping):
            bad(f"{where} must be a table")
            return {}
        for k in table:
            if k not in allowed:
                bad(f"unknown key '{where}.{k}'" if where else f"unknown key {k!r}",
                    f"allowed: {sorted(allowed)}")
        return dict(table)

    check_keys(raw, TOP, "")
    full_table = raw.get("full", {})
    check_keys(full_table, TOP - {"full"}, "full")
    d = {k: v for k, v in raw.items() if k != "full"}
    if full and isinstance(full_table, Mapping):
        if not full_table:
            bad("full=True but the file has no [full] table", "add [full] overrides")
        d = _merge(d, full_table)
    exp = check_keys(d.get("experiment", {}), EXPERIMENT_KEYS, "experiment")
    train = check_keys(d.get("train", {}), TRAIN_KEYS, "train")
    for k in ("name", "languages"):
        if k not in exp:
            bad(f"missing key 'experiment.{k}'")
    languages = exp.get("languages", [])
    if not (isinstance(languages, list) and languages and all(isinstance(x, str) for x in languages)):
        bad(f"experiment.languages={languages!r} must be a non-empty list of grammar names")
        languages = []
    else:
        import formal_lm
        known = set(formal_lm.shipped()) if hasattr(formal_lm, "shipped") else None
        for lang in languages:
            if known is not None and lang not in known:
                bad(f"experiment.languages: {lang!r} is not a shipped grammar",
                    f"shipped: {sorted(known)}")
    checkpoint = exp.get("checkpoint", "best")
    if checkpoint not in CHECKPOINTS:
        bad(f"experiment.checkpoint={checkpoint!r} is not allowed", f"use one of {CHECKPOINTS}")
    eval_seed = exp.get("eval_seed", 10007)
    if not (isinstance(eval_seed, int) and not isinstance(eval_seed, bool) and eval_seed >= 0):
        bad(f"experiment.eval_seed={eval_seed!r} must be a non-negative integer")
    if "steps" not in train:
        bad("missing key 'train.steps'")
    models, objectives = {}, {}
    for table, out, what in ((d.get("models", {}), models, "models"),
                             (d.get("objectives", {}), objectives, "objectives")):
        if not isinstance(table, Mapping) or not table:
            bad(f"[{what}] needs at least one [{what}.KEY] table with a 'name'")
            continue
        for key, sub in table.items():
            if not isinstance(sub, Mapping) or "name" not in sub:
                bad(f"[{what}.{key}] must be a table with a 'name'")
            elif "." in key:
                bad(f"[{what}.{key}]: keys may not contain '.'")
            else:
                out[key] = dict(sub)
    analysis = {}
    for name, opts in check_keys(d.get("analysis", {}), set(ANALYSIS_KEYS), "analysis").items():
        analysis[name] = check_keys(opts, ANALYSIS_KEYS.get(name, set()), f"analysis.{name}")
    published = check_keys(d.get("published", {}), PUBLISHED_KEYS, "published")
    for key, row in (published.get("rows") or {}).items():
        check_keys(row, PUBLISHED_ROW_KEYS, f"published.rows.{key}")
    for arch, row in (published.get("grid") or {}).items():  # {model label: {language: [m, s]}}
        for lang, v in (row.items() if isinstance(row, Mapping) else []):
            if not (isinstance(v, list) and len(v) == 2):
                bad(f"published.grid.{arch}.{lang}={v!r} must be [mean, std] in percent")
    structural = [p for p in problems if "languages" in p.message or "needs at least one" in p.message]
    if structural:
        raise FormalLMError(problems)
    ex = Experiment(name=exp.get("name", "?"), description=exp.get("description", ""),
                    languages=tuple(languages), checkpoint=checkpoint, eval_seed=eval_seed,
                    train=train, models=models, objectives=objectives, analysis=analysis,
                    published=published, full=full, source=source)
    # Gather every problem at once: each cell must also be a valid training config (the
    # training loader names unknown model/optimizer/data/objective keys).
    from formal_lm.training.config import config_from_dict
    for cell in ex.cells():
        try:
            config_from_dict(ex.train_dict(*cell), source=f"{source} [{ex.cell_name(*cell)}]")
        except FormalLMError as e:
            problems.extend(e.problems)
    if problems:
        raise FormalLMError(problems)
    return ex

