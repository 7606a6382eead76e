"""Typed, frozen training configs and their TOML loader.

A TOML file maps onto :class:`TrainConfig` like this (every key optional except ``language``
and ``steps``)::

    language = "anbn"          # a shipped grammar name (formal_lm.load)
    seeds = 8                  # a count (seeds 0..7) or a list [0, 3, 7]
    steps = 3000
    batch_size = 32
    eval_every = 100
    checkpoint_every = 500

    [model]                    # name + the model's own config (formal_lm.models.CONFIGS[name])
    name = "transformer"
    d_model = 16

    [optimizer]
    name = "adamw"             # "adamw" | "sgd"
    lr = 3e-3
    warmup_steps = 100
    schedule = "cosine"        # "constant" | "cosine" | "linear"
    weight_decay = 0.0
    grad_clip = 1.0            # global norm per seed; 0 disables

    [data]
    mode = "fresh"             # "fresh" | "fixed" | "length_range"
    max_length = 64            # longest sequence in tokens (BOS + symbols + EOS)

    [objective]
    name = "nll"               # "nll" | "extrapolation" | "adversarial"

    [stopping]                 # saturation-aware stopping (off without kl)
    kl = 0.001                 # a seed stops once its exact validation KL stays below this
    patience = 2               # ... for this many evaluations in a row

An unknown key, or a key that the chosen mode does not use, is an error naming the key and the
file; every problem in a file is reported at once.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from formal_lm import models
from formal_lm.errors import FormalLMError, Problem
from formal_lm.language import Language

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine", "linear")
DATA_MODES = ("fresh", "fixed", "length_range")
OBJECTIVES = ("nll", "extrapolation", "adversarial")
MODELS = tuple(models.CONFIGS)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Sizes checked before any work starts (a typo such as batch_size = 1e8 must not hang a run).
# Raise one by assigning a larger value here from Python, e.g. config.LIMITS["batch_size"] = ...
LIMITS = {"batch_size": 1 << 16, "max_length": 1 << 16, "eval_size": 1 << 16,
          "dataset_size": 1 << 22, "per_length": 1 << 16, "seeds": 4096,
          "tokens_per_step": 1 << 24}


def _over_limit(key: str, value, limit_key: str | None = None) -> list[Problem]:
    limit = LIMITS[limit_key or key.split(".")[-1]]
    if _is_int(value) and value > limit:
        return [Problem(f"{key}={value} is over the limit of {limit}",
                        f"use a smaller value, or raise formal_lm.training.config.LIMITS"
                        f"[{(limit_key or key.split('.')[-1])!r}] from Python if you mean it")]
    return []


def _one_of(key: str, value, allowed: tuple[str, ...]) -> list[Problem]:
    """A problem when ``value`` is not one of ``allowed`` (hashable or not)."""
    if isinstance(value, str) and value in allowed:
        return []
    return [Problem(f"{key}={value!r} is not allowed", f"use one of {allowed}")]


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where training strings come from.

    Attributes:
        mode: "fresh" (new exact samples every step), "fixed" (one dataset drawn once, every item
            once per epoch, reshuffled per epoch and seed) or "length_range" (fresh samples whose
            length lies in [lo, hi], lengths drawn from the language's length distribution
            restricted to that range).
        max_length: longest sequence in tokens (BOS + symbols + EOS); longer samples are redrawn.
        bucket: batches are padded to the longest sequence rounded up to a multiple of this, so
            the step compiles once per bucket.
        dataset_size: "fixed" mode: how many samples to draw (ignored when ``per_length`` is set).
        per_length: "fixed" mode: instead of ``dataset_size`` random samples, draw this many
            samples of every possible length in [lo, hi] (anbn with lo=2, hi=256, per_length=1 is
            the papers' "every n in 1..128 once per epoch").
        lo, hi: string lengths (symbols, EOS not counted) for "length_range" and per-length
            "fixed" data.
        eval_size: held-out validation strings (their own seed stream) for val_loss and KL.
    """

    mode: str = "fresh"
    max_length: int = 64
    bucket: int = 16
    dataset_size: int | None = None
    per_length: int | None = None
    lo: int | None = None
    hi: int | None = None
    eval_size: int = 256

    def problems(self) -> list[Problem]:
        out = []
        out += _one_of("data.mode", self.mode, DATA_MODES)
        for name, lo in (("max_length", 3), ("bucket", 1), ("eval_size", 1)):
            v = getattr(self, name)
            if not (_is_int(v) and v >= lo):
                out.append(Problem(f"data.{name}={v!r} must be an integer >= {lo}"))
        for name in ("max_length", "eval_size", "dataset_size", "per_length"):
            out += _over_limit(f"data.{name}", getattr(self, name))
        for name in ("dataset_size", "per_length", "lo", "hi"):
            v = getattr(self, name)
            if v is not None and not (_is_int(v) and v >= (0 if name in ("lo", "hi") else 1)):
                out.append(Problem(f"data.{name}={v!r} must be a positive integer"))
        if self.mode == "fresh":
            for name in ("dataset_size", "per_length", "lo", "hi"):
                if getattr(self, name) is not None:
                    out.append(Problem(f"data.{name} is unused when data.mode='fresh'",
                                       "remove it, or pick the mode that uses it"))
        if self.mode == "length_range":
            if self.lo is None or self.hi is None:
                out.append(Problem("data.mode='length_range' needs data.lo and data.hi"))
            for name in ("dataset_size", "per_length"):
                if getattr(self, name) is not None:
                    out.append(Problem(f"data.{name} is unused when data.mode='length_range'"))
        if self.mode == "fixed":
            if (self.dataset_size is None) == (self.per_length is None):
                out.append(Problem("data.mode='fixed' needs exactly one of data.dataset_size and "
                                   "data.per_length"))
            if self.per_length is not None and (self.lo is None or self.hi is None):
                out.append(Problem("data.per_length needs data.lo and data.hi"))
            if self.dataset_size is not None and (self.lo is not None or self.hi is not None):
                out.append(Problem("data.lo/data.hi are unused with data.dataset_size",
                                   "use data.per_length, or mode='length_range'"))
        if _is_int(self.lo) and _is_int(self.hi):
            if self.lo > self.hi:
                out.append(Problem(f"data.lo={self.lo} > data.hi={self.hi}"))
            if _is_int(self.max_length) and self.hi + 2 > self.max_length:
                out.append(Problem(f"data.hi={self.hi} does not fit data.max_length="
                                   f"{self.max_length} (a string of length L takes L + 2 tokens)",
                                   f"raise max_length to >= {self.hi + 2}"))
        return out


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """The training objective.

    Attributes:
        name: "nll" (next-token NLL only); "extrapolation" or "adversarial" add a completion-only
            loss on out-of-distribution prompts (Reizinger et al., ICML 2024, case study 1; see
            ``formal_lm.training.objectives``).
        weight: weight of the completion loss (total = nll + weight * completion).
        prompt_length: length of the OOD prompts.
        batch_size: OOD prompts per step and seed.
        split_seed: seed of the fixed train/held-out split of the OOD prompts.
    """

    name: str = "nll"
    weight: float = 1.0
    prompt_length: int = 8
    batch_size: int = 32
    split_seed: int = 0

    def problems(self) -> list[Problem]:
        out = []
        out += _one_of("objective.name", self.name, OBJECTIVES)
        if not (_is_num(self.weight) and self.weight >= 0):
            out.append(Problem(f"objective.weight={self.weight!r} must be a number >= 0"))
        for name in ("prompt_length", "batch_size"):
            v = getattr(self, name)
            if not (_is_int(v) and v >= 1):
                out.append(Problem(f"objective.{name}={v!r} must be an integer >= 1"))
        if not _is_int(self.split_seed):
            out.append(Problem(f"objective.split_seed={self.split_seed!r} must be an integer"))
        return out


@dataclasses.dataclass(frozen=True)
class StopConfig:
    """Saturation-aware stopping (off by default, so paper-faithful runs train every step).

    Because the loss floor is known exactly, a seed can stop once it is saturated: when its
    exact validation KL per token stays below ``kl`` for ``patience`` evaluations in a row, its
    parameters are frozen from there on (its checkpoints and metrics keep their meaning), and
    the run ends as soon as every seed is frozen. Each seed's step of saturation is recorded.

    Attributes:
        kl: the saturation threshold on the validation KL (nats per real token); None: off.
        patience: consecutive evaluations below ``kl`` that make a seed saturated.
    """

    kl: float | None = None
    patience: int = 2

    def problems(self) -> list[Problem]:
        out = []
        if self.kl is not None and not (_is_num(self.kl) and self.kl > 0):
            out.append(Problem(f"stopping.kl={self.kl!r} must be a number > 0 (nats per token)"))
        if not (_is_int(self.patience) and self.patience >= 1):
            out.append(Problem(f"stopping.patience={self.patience!r} must be an integer >= 1"))
        return out


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training configuration, run for several seeds at once.

    ``language`` is a shipped grammar name or a grammar file path, a :class:`formal_lm.Language`
    object (Python use only; such a config cannot be written to TOML), or None when the
    training data comes from elsewhere (``formal_lm.training.fit`` with its own data). ``seeds``
    is a tuple of ints; each seed gives its model its own initialisation and its own data
    stream.

    Example:
        >>> cfg = TrainConfig(language="anbn", steps=10, seeds=(0, 1))
        >>> cfg.optimizer, cfg.schedule, len(cfg.seeds)
        ('adamw', 'constant', 2)
    """

    language: Any
    steps: int
    model: str = "transformer"
    model_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    warmup_steps: int = 0
    schedule: str = "constant"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    b1: float = 0.9
    b2: float = 0.999
    data: DataConfig = DataConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    stopping: StopConfig = StopConfig()
    eval_every: int = 100
    checkpoint_every: int = 500

    def __post_init__(self):
        seeds = self.seeds
        if _is_int(seeds):
            seeds = tuple(range(seeds)) if seeds >= 1 else seeds
        if isinstance(seeds, Sequence) and not isinstance(seeds, str):
            object.__setattr__(self, "seeds", tuple(seeds))
        object.__setattr__(self, "model_config", dict(self.model_config))
        if problems := self.problems():
            raise FormalLMError(problems)

    def problems(self) -> list[Problem]:
        out = []
        if self.language is not None and not isinstance(self.language, (str, Language)):
            out.append(Problem(f"language={self.language!r} must be a grammar name, a path to a "
                               "grammar file, or a Language"))
        out += _one_of("model.name", self.model, MODELS)
        if "vocab_size" in self.model_config:
            out.append(Problem("model.vocab_size is set from the language", "remove it"))
        if not (isinstance(self.seeds, tuple) and self.seeds
                and all(_is_int(s) and s >= 0 for s in self.seeds)):
            out.append(Problem(f"seeds={self.seeds!r} must be a count >= 1 or a list of "
                               "non-negative integers"))
        elif len(set(self.seeds)) != len(self.seeds):
            out.append(Problem(f"seeds={list(self.seeds)} lists a seed twice"))
        for name, lo in (("steps", 1), ("batch_size", 1), ("warmup_steps", 0), ("eval_every", 1),
                         ("checkpoint_every", 1)):
            v = getattr(self, name)
            if not (_is_int(v) and v >= lo):
                out.append(Problem(f"{name}={v!r} must be an integer >= {lo}"))
        out += _over_limit("batch_size", self.batch_size)
        if isinstance(self.seeds, tuple):
            out += _over_limit("seeds (count)", len(self.seeds), "seeds")
        if isinstance(self.data, DataConfig) and _is_int(self.batch_size) and _is_int(
                self.data.max_length):
            out += _over_limit("batch_size * data.max_length",
                               self.batch_size * self.data.max_length, "tokens_per_step")
        out += _one_of("optimizer.name", self.optimizer, OPTIMIZERS)
        out += _one_of("optimizer.schedule", self.schedule, SCHEDULES)
        if not (_is_num(self.lr) and self.lr > 0):
            out.append(Problem(f"optimizer.lr={self.lr!r} must be a number > 0"))
        for name in ("weight_decay", "grad_clip"):
            v = getattr(self, name)
            if not (_is_num(v) and v >= 0):
                out.append(Problem(f"optimizer.{name}={v!r} must be a number >= 0 (0 disables)"))
        for name in ("b1", "b2"):
            v = getattr(self, name)
            if not (_is_num(v) and 0 <= v < 1):
                out.append(Problem(f"optimizer.{name}={v!r} must be in [0, 1)"))
        if self.optimizer == "sgd" and (self.b2 != 0.999):
            out.append(Problem("optimizer.b2 is unused with optimizer.name='sgd'"))
        if isinstance(self.data, DataConfig):
            out += self.data.problems()
        else:
            out.append(Problem(f"data={self.data!r} must be a DataConfig"))
        if isinstance(self.objective, ObjectiveConfig):
            out += self.objective.problems()
        else:
            out.append(Problem(f"objective={self.objective!r} must be an ObjectiveConfig"))
        if isinstance(self.stopping, StopConfig):
            out += self.stopping.problems()
        else:
            out.append(Problem(f"stopping={self.stopping!r} must be a StopConfig"))
        return out

    def language_name(self) -> str | None:
        if self.language is None or isinstance(self.language, str):
            return self.language
        return self.language.name

    def to_dict(self) -> dict:
        """A JSON/TOML-able dict in the file layout (``language`` as its name)."""
        opt = {"name": self.optimizer, "lr": self.lr, "warmup_steps": self.warmup_steps,
               "schedule": self.schedule, "weight_decay": self.weight_decay,
               "grad_clip": self.grad_clip, "b1": self.b1}
        if self.optimizer == "adamw":
            opt["b2"] = self.b2
        data = {k: v for k, v in dataclasses.asdict(self.data).items() if v is not None}
        obj = dataclasses.asdict(self.objective)
        if self.objective.name == "nll":
            obj = {"name": "nll"}
        out = {"language": self.language_name(), "steps": self.steps,
               "seeds": list(self.seeds), "batch_size": self.batch_size,
               "eval_every": self.eval_every, "checkpoint_every": self.checkpoint_every,
               "model": {"name": self.model, **self.model_config}, "optimizer": opt,
               "data": data, "objective": obj}
        if self.stopping.kl is not None:
            out["stopping"] = dataclasses.asdict(self.stopping)
        return out


_TOP = {"language", "steps", "seeds", "batch_size", "eval_every", "checkpoint_every"}
_OPT = {"name": "optimizer", "lr": "lr", "warmup_steps": "warmup_steps", "schedule": "schedule",
        "weight_decay": "weight_decay", "grad_clip": "grad_clip", "b1": "b1", "b2": "b2"}
_TABLES = {"model", "optimizer", "data", "objective", "stopping"}


def config_from_dict(d: Mapping, *, source: str = "<dict>",
                     require_language: bool = True) -> TrainConfig:
    """Builds a :class:`TrainConfig` from the file layout, naming ``source`` in every problem.

    ``require_language=False`` accepts a config without ``language`` (its data comes from
    elsewhere: the in-context-learning study, for example).
    """
    problems: list[Problem] = []

    def bad(msg, fix=""):
        problems.append(Problem(f"{source}: {msg}", fix))

    def table(name: str, allowed) -> dict[str, Any]:
        """The keys of table ``name`` that are in ``allowed``; any other key is a problem."""
        known = {}
        for key, value in (d.get(name, {}) or {}).items():
            if key in allowed:
                known[key] = value
            else:
                bad(f"unknown key '{name}.{key}'", f"allowed: {sorted(allowed)}")
        return known

    kw: dict[str, Any] = {}
    for key, value in d.items():
        if key in _TOP:
            kw[key] = value
        elif key not in _TABLES:
            bad(f"unknown key {key!r}", f"allowed top-level keys: {sorted(_TOP | _TABLES)}")
        elif not isinstance(value, Mapping):
            bad(f"{key!r} must be a table ([{key}])")
    model = dict(d.get("model", {}) or {})
    if "name" in model:
        kw["model"] = model.pop("name")
    name = kw.get("model", "transformer")
    if isinstance(name, str) and name in MODELS:
        problems += [Problem(f"{source}: {p}") for p in _model_config_problems(name, model)]
    kw["model_config"] = model
    kw.update((_OPT[key], value) for key, value in table("optimizer", _OPT).items())
    data = table("data", {f.name for f in dataclasses.fields(DataConfig)})
    obj = table("objective", {f.name for f in dataclasses.fields(ObjectiveConfig)})
    stop = table("stopping", {f.name for f in dataclasses.fields(StopConfig)})
    if isinstance(obj.get("name", "nll"), str) and obj.get("name", "nll") == "nll":
        for key in obj:
            if key != "name":
                bad(f"objective.{key} is unused with objective.name='nll'")
    for key in ("language", "steps") if require_language else ("steps",):
        if key not in kw:
            bad(f"missing key {key!r}")
    if problems:
        raise FormalLMError(problems)
    try:
        kw["data"] = DataConfig(**data)
        kw["objective"] = ObjectiveConfig(**obj)
        kw["stopping"] = StopConfig(**stop)
        cfg = TrainConfig(**kw)
    except FormalLMError as e:
        problems = [Problem(f"{source}: {p.message}", p.fix) for p in e.problems]
        raise FormalLMError(problems) from None
    return cfg


def _model_config_problems(name: str, model: Mapping) -> list[str]:
    """Unknown keys of a model's config (checked against its config dataclass)."""
    allowed = {f.name for f in dataclasses.fields(models.CONFIGS[name])} - {"vocab_size"}
    return [f"unknown key 'model.{k}' for model {name!r}; allowed: {sorted(allowed)}"
            for k in model if k not in allowed]


def load_config(path: str | Path) -> TrainConfig:
    """Reads a TOML training config (see the module docstring for the layout). A ``language``
    that is a relative path to a ``.toml`` grammar file is read relative to the config's folder.

    Raises:
        FormalLMError: naming the file and every unknown, unused or invalid key.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except OSError as e:
        raise FormalLMError(Problem(f"cannot read config {path}: {e}")) from None
    except tomllib.TOMLDecodeError as e:
        raise FormalLMError(Problem(f"{path}: not valid TOML: {e}")) from None
    language = d.get("language")
    if isinstance(language, str) and language.endswith(".toml") and \
            not Path(language).is_absolute():  # a grammar file beside the config
        d["language"] = str(path.parent / language)
    return config_from_dict(d, source=str(path))
