"""Experiment files: one vocabulary of keys, typed specs (read by ``loader.load_experiment``).

Every experiment file has these tables (a key means the same thing in every kind)::

    [experiment]
    name = "anbn-rule-extrapolation"
    description = "..."
    kind = "grid"                   # "grid" (default) | "icl" | "finetune" | "tasks"
    checkpoint = "best"             # analyses read each seed's "best" (lowest validation loss)
                                    # or "last" checkpoint
    eval_seed = 10007               # seed of every held-out analysis sample
    languages = ["anbn-short"]      # grid only: grammar names or paths (relative to this file)

    [train]                         # the training config layout (formal_lm.training), without
    steps = 600                     # language, model and objective: steps, seeds, batch_size,
    seeds = 8                       # eval_every, checkpoint_every, [train.optimizer],
    [train.optimizer]               # [train.data]
    lr = 3e-3

    [models.transformer]            # one table per architecture: name + its config
    name = "transformer"

    [analysis.NAME]                 # analyzers and their options (which ones: per kind)
    [statistics]                    # loss_metric, margin (in its units), alpha
    [published]                     # numbers to set beside ours, with their citation
    [full]                          # overrides merged over the file with --full

Kind-specific tables: grid ``[objectives.KEY]`` (a training objective each); icl ``[family]``
and ``[ood_family]`` (``formal_lm.studies.icl.PDFAFamily``, without ``max_length``: sequences
are ``train.data.max_length`` tokens; ``train.data.dataset_size`` is each seed's pool);
finetune ``[pretrain]`` and ``[finetune]`` (overrides of ``[train]``, each with its
``language``) and ``[groups.NAME]`` (``model`` = a [models] key, ``rescale`` = c of the
function-preserving reparametrisation); tasks ``[lengths]`` and ``[tasks.KEY]`` (see
``formal_lm.experiments.tasks``). Unknown keys are errors that name the key and the file;
every problem is reported at once.
"""
from __future__ import annotations

import copy
import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from formal_lm.errors import FormalLMError, Problem
from formal_lm.training.config import TrainConfig, config_from_dict

KINDS = ("grid", "icl", "finetune", "tasks")
CHECKPOINTS = ("best", "last")
COMMON_TABLES = {"experiment", "train", "models", "analysis", "statistics", "published", "full"}
KIND_TABLES = {"grid": {"objectives", "per_language"}, "icl": {"family", "ood_family"},
               "finetune": {"pretrain", "finetune", "groups"}, "tasks": {"tasks", "lengths"}}
EXPERIMENT_KEYS = {"name", "description", "kind", "checkpoint", "eval_seed", "languages"}
STATISTICS_KEYS = {"loss_metric", "margin", "alpha", "saturation"}
# Options of each analysis: (type, lower bound) — "int" >= bound, "num" > bound, "prob" in
# (0, 1), "bool", "decoding", "lengths" ([lo, hi] with 1 <= lo <= hi), "bins" ([[lo, hi], ...]),
# "ints" (an increasing list >= 0), "text".
ANALYSIS_OPTIONS: dict[str, dict[str, dict[str, tuple[str, float]]]] = {
    "grid": {
        "saturation": {"n": ("int", 1), "threshold": ("num", 0)},
        "rule_extrapolation": {"prompt_length": ("int", 1), "max_new_tokens": ("int", 1),
                               "decoding": ("decoding", 0), "max_prompts": ("int", 1),
                               "ngram_n": ("int", 1), "ngram_k": ("num", 0),
                               "ngram_train": ("int", 1), "heldout_only": ("bool", 0)},
        "next_symbol_sets": {"n": ("int", 1), "threshold": ("prob", 0),
                             "train_max_length": ("int", 1)},
        "length_generalization": {"train_max_length": ("int", 1), "test_lengths": ("lengths", 1),
                                  "per_bin": ("int", 1), "bins": ("bins", 0),
                                  "threshold": ("prob", 0)},
        "compositional": {"n": ("int", 1), "threshold": ("prob", 0), "per_bin": ("int", 1),
                          "test_lengths": ("lengths", 1)},
    },
    "icl": {"icl": {"position_bins": ("ints", 0), "ood_size": ("int", 1), "ngram_k": ("num", 0),
                    "particles": ("int", 1), "runs": ("int", 2)}},
    "finetune": {"transfer": {"ood_language": ("text", 0), "eval_size": ("int", 1)}},
    "tasks": {},
}
PUBLISHED_KEYS = {"citation", "source", "setup", "loss_note", "baseline_eos_pct", "rows", "grid",
                  "columns"}
PUBLISHED_ROW_KEYS = {"model", "seeds", "val_loss", "ood_R1_pct", "language"}


@dataclasses.dataclass(frozen=True)
class Statistics:
    """How groups of seeds are compared (``formal_lm.analysis.compare_groups``).

    Attributes:
        loss_metric: the in-distribution measure whose equality is tested (a measure name,
            optionally with its analysis label: "kl" or "saturation.kl").
        margin: the equivalence margin in the loss metric's units; None: the documented default
            (one pooled seed-to-seed standard deviation, ``analysis.default_margin``).
        alpha: the level of every test.
        saturation: the regime the claims are about: a seed enters the tables and the tests
            only when its exact KL per token (``regime_metric``) is below this; None: every
            seed (a study without an exact floor).
        regime_metric: the measure compared with ``saturation``.
    """

    loss_metric: str
    margin: float | None
    alpha: float
    saturation: float | None = None
    regime_metric: str = "kl"


@dataclasses.dataclass(frozen=True)
class Grid:
    """A grid of languages x models x objectives.

    ``per_language`` holds, for a language as ``experiment.languages`` names it, overrides of
    ``[train]`` (``train``) and of model tables (``models``) for that language's cells: the
    learning rate, size or step budget one language needs to saturate.
    """

    languages: tuple[str, ...]
    objectives: Mapping[str, Mapping]
    per_language: Mapping[str, Mapping] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ICL:
    """In-context learning of a family of random PDFAs."""

    family: Any  # formal_lm.studies.icl.PDFAFamily
    ood_family: Any


@dataclasses.dataclass(frozen=True)
class Finetune:
    """Pre-training on one language, fine-tuning on another, per group."""

    pretrain: Mapping  # [train] with the [pretrain] overrides, with its language
    finetune: Mapping
    groups: Mapping[str, tuple[str, float]]  # name -> (model key, rescale c)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A validated experiment file.

    Attributes:
        name, description, kind, checkpoint, eval_seed: from ``[experiment]``.
        train: the ``[train]`` table (training config layout).
        models: {architecture key: model table with ``name``}.
        analysis: {analyzer name: options}.
        statistics: how groups are compared.
        published: the ``[published]`` table (may be empty).
        study: the kind's own part (:class:`Grid`, :class:`ICL` or :class:`Finetune`).
        full: whether the ``[full]`` overrides were applied.
        source: the file.
    """

    name: str
    description: str
    kind: str
    checkpoint: str
    eval_seed: int
    train: Mapping
    models: Mapping[str, Mapping]
    analysis: Mapping[str, Mapping]
    statistics: Statistics
    published: Mapping
    study: Any  # Grid | ICL | Finetune | experiments.tasks.Tasks
    full: bool
    source: str

    def train_config(self, model: str, *, table: Mapping | None = None, language=None,
                     objective: Mapping | None = None) -> TrainConfig:
        """The training config of ``model`` trained with ``table`` (default ``[train]``); for a
        grid cell, its language's ``per_language`` overrides are merged in."""
        over = {}
        if isinstance(self.study, Grid) and language in self.study.per_language:
            over = self.study.per_language[language]
        d = merge(self.train if table is None else table, over.get("train", {}))
        d.pop("language", None)
        d["model"] = merge(self.models[model], over.get("models", {}).get(model, {}))
        if objective is not None:
            d["objective"] = copy.deepcopy(dict(objective))
        d["language"] = language
        return config_from_dict(d, source=self.source, require_language=False)


class Checker:
    """Collects every problem of a file before raising them together."""

    def __init__(self, source: str):
        self.source, self.problems = source, []

    def bad(self, msg: str, fix: str = "") -> None:
        self.problems.append(Problem(f"{self.source}: {msg}", fix))

    def keys(self, table, allowed, where: str) -> dict:
        """``table`` as a dict; a non-table and unknown keys are problems."""
        if not isinstance(table, Mapping):
            self.bad(f"{where or 'the file'} must be a table")
            return {}
        for k in table:
            if k not in allowed:
                self.bad(f"unknown key '{where}.{k}'" if where else f"unknown table {k!r}",
                         f"allowed: {sorted(allowed)}")
        return dict(table)

    def extend(self, problems, where: str = "") -> None:
        """Adds problems found in a part (``where``); one already reported is not repeated."""
        seen = {(p.message.split(" (")[0], p.fix) for p in self.problems}
        for p in problems:
            msg = p.message if p.message.startswith(self.source) else f"{self.source}: {p.message}"
            if (msg, p.fix) not in seen:
                seen.add((msg, p.fix))
                self.problems.append(Problem(f"{msg}{f' ({where})' if where else ''}", p.fix))

    def raise_if(self) -> None:
        if self.problems:
            raise FormalLMError(self.problems)


def merge(base: Mapping, over: Mapping) -> dict:
    """``over`` merged into a copy of ``base`` (tables recursively)."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise FormalLMError(Problem(f"cannot read experiment file {path}: {e.strerror}",
                                    "check the path")) from None
    except tomllib.TOMLDecodeError as e:
        raise FormalLMError(Problem(f"{path}: not valid TOML: {e}",
                                    "check quotes, brackets and '=' on that line")) from None
    except (UnicodeDecodeError, RecursionError) as e:
        raise FormalLMError(Problem(f"{path}: not a readable TOML file ({type(e).__name__})",
                                    "save it as UTF-8 text without deep nesting")) from None


def resolve_language(name: str, source: str) -> str:
    """A grammar name as it is, or a path made relative to the experiment file's folder."""
    if not isinstance(name, str) or not name.endswith(".toml"):
        return name
    p = Path(name)
    return str(p if p.is_absolute() else Path(source).parent / p)
