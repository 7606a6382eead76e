"""``load_experiment(path)``: reads an experiment file of any kind into a typed
:class:`spec.Experiment`, checking every key (see ``spec`` for the layout)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from formal_lm.errors import FormalLMError
from formal_lm.experiments.spec import (ANALYSIS_KEYS, CHECKPOINTS, COMMON_TABLES,
                                        EXPERIMENT_KEYS, KIND_TABLES, KINDS, PUBLISHED_KEYS,
                                        PUBLISHED_ROW_KEYS, STATISTICS_KEYS, ICL, Checker,
                                        Experiment, Finetune, Grid, Statistics, merge, read_toml,
                                        resolve_language)
from formal_lm.grammar_files import load
from formal_lm.models import CONFIGS
from formal_lm.studies.icl import PDFAFamily


def _check_language(name, chk: Checker, where: str) -> str | None:
    if not isinstance(name, str):
        chk.bad(f"{where}={name!r} must be a grammar name or a path to a .toml file")
        return None
    name = resolve_language(name, chk.source)
    try:
        load(name)
    except FormalLMError as e:
        chk.extend(e.problems, where)
        return None
    return name


def _models(raw, chk: Checker) -> dict[str, dict]:
    out = {}
    table = raw.get("models", {})
    if not isinstance(table, Mapping) or not table:
        chk.bad("no [models.KEY] tables", "add e.g. [models.transformer] name = 'transformer'")
        return out
    for key, m in table.items():
        if not isinstance(m, Mapping) or m.get("name") not in CONFIGS:
            chk.bad(f"models.{key}.name must be one of {list(CONFIGS)}")
        elif "." in key:
            chk.bad(f"[models.{key}]: keys may not contain '.'")
        else:
            out[key] = dict(m)
    return out


def _statistics(raw, chk: Checker, kind: str) -> Statistics:
    default = {"grid": "kl", "icl": "heldout.ce", "finetune": "start.cross_entropy"}[kind]
    t = chk.keys(raw.get("statistics", {}), STATISTICS_KEYS, "statistics")
    margin, alpha = t.get("margin"), t.get("alpha", 0.05)
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                               or not margin > 0):
        chk.bad(f"statistics.margin={margin!r} must be a number > 0 (in the loss metric's units)")
        margin = None
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        chk.bad(f"statistics.alpha={alpha!r} must be in (0, 1)")
        alpha = 0.05
    loss = t.get("loss_metric", default)
    if not isinstance(loss, str):
        chk.bad(f"statistics.loss_metric={loss!r} must be a measure name")
        loss = default
    return Statistics(loss, None if margin is None else float(margin), float(alpha))


def load_experiment(path: str | Path, *, full: bool = False) -> Experiment:
    """Reads and validates an experiment file (``full=True`` merges its ``[full]`` table).

    Raises:
        FormalLMError: naming the file and every unknown or invalid key.
    """
    raw = read_toml(Path(path))
    return experiment_from_dict(raw, full=full, source=str(path))


def experiment_from_dict(raw: Mapping, *, full: bool = False, source: str = "<dict>"
                         ) -> Experiment:
    """Validates the file layout (see the module docstring)."""
    chk = Checker(source)
    exp0 = raw.get("experiment", {})
    kind = exp0.get("kind", "grid") if isinstance(exp0, Mapping) else "grid"
    if kind not in KINDS:
        chk.bad(f"experiment.kind={kind!r} is not allowed", f"use one of {KINDS}")
        chk.raise_if()
    chk.keys(raw, COMMON_TABLES | KIND_TABLES[kind], "")
    full_table = chk.keys(raw.get("full", {}), COMMON_TABLES | KIND_TABLES[kind] - {"full"},
                          "full")
    d = {k: v for k, v in raw.items() if k != "full"}
    if full:
        if not full_table:
            chk.bad("--full was asked for but the file has no [full] table", "add [full] overrides")
        d = merge(d, full_table)
    exp = chk.keys(d.get("experiment", {}), EXPERIMENT_KEYS, "experiment")
    if "name" not in exp:
        chk.bad("missing key 'experiment.name'")
    checkpoint = exp.get("checkpoint", "best")
    if checkpoint not in CHECKPOINTS:
        chk.bad(f"experiment.checkpoint={checkpoint!r} is not allowed", f"use one of {CHECKPOINTS}")
    eval_seed = exp.get("eval_seed", 10007)
    if isinstance(eval_seed, bool) or not isinstance(eval_seed, int) or eval_seed < 0:
        chk.bad(f"experiment.eval_seed={eval_seed!r} must be a non-negative integer")
        eval_seed = 0
    if "languages" in exp and kind != "grid":
        chk.bad("experiment.languages is for kind = 'grid'",
                "name the languages in this kind's own tables")
    train = chk.keys(d.get("train", {}), TRAIN_KEYS, "train")
    models = _models(d, chk)
    allowed = ANALYSIS_KEYS[kind]
    analysis = {name: chk.keys(opts, allowed.get(name, set()), f"analysis.{name}")
                for name, opts in chk.keys(d.get("analysis", {}), set(allowed), "analysis").items()}
    statistics = _statistics(d, chk, kind)
    published = chk.keys(d.get("published", {}), PUBLISHED_KEYS, "published")
    for key, row in (published.get("rows") or {}).items():
        chk.keys(row, PUBLISHED_ROW_KEYS, f"published.rows.{key}")
    study = {"grid": _grid, "icl": _icl, "finetune": _finetune}[kind](d, exp, train, chk)
    ex = Experiment(name=str(exp.get("name", "?")), description=str(exp.get("description", "")),
                    kind=kind, checkpoint=checkpoint, eval_seed=eval_seed, train=train,
                    models=models, analysis=analysis, statistics=statistics,
                    published=published, study=study, full=full, source=source)
    for where, config in training_configs(ex):  # gather every config's problems too
        try:
            config()
        except FormalLMError as e:
            chk.extend(e.problems, where)
        except (KeyError, TypeError, ValueError, AttributeError):
            if not chk.problems:  # only a consequence of a problem already found may pass
                raise
    chk.raise_if()
    return ex


TRAIN_KEYS = {"steps", "seeds", "batch_size", "eval_every", "checkpoint_every", "optimizer", "data"}


def _grid(d, exp, train, chk: Checker) -> Grid:
    languages = exp.get("languages")
    if not (isinstance(languages, list) and languages):
        chk.bad(f"experiment.languages={languages!r} must be a non-empty list of grammar names "
                "or paths to .toml files")
        languages = []
    languages = [_check_language(x, chk, "experiment.languages") for x in languages]
    objectives = {}
    table = d.get("objectives", {})
    if not isinstance(table, Mapping) or not table:
        chk.bad("no [objectives.KEY] tables", "add e.g. [objectives.normal] name = 'nll'")
        table = {}
    for key, o in table.items():
        if not isinstance(o, Mapping) or "name" not in o or "." in key:
            chk.bad(f"[objectives.{key}] must be a table with a 'name' (and a key without '.')")
        else:
            objectives[key] = dict(o)
    splits = {(o.get("prompt_length", 8), o.get("split_seed", 0))
              for o in objectives.values() if o.get("name") != "nll"}
    if len(splits) > 1:
        chk.bad("the completion objectives use different prompt_length/split_seed",
                "give them the same values: every group is evaluated on one held-out split")
    return Grid(tuple(x for x in languages if x), objectives)


def _family(table, chk: Checker, where: str, max_length, base: Mapping | None = None):
    allowed = {f.name for f in dataclasses.fields(PDFAFamily)} - {"max_length"}
    t = {k: v for k, v in chk.keys(table, allowed, where).items() if k in allowed}
    base = {k: v for k, v in (base or {}).items() if k in allowed}
    try:
        return PDFAFamily(**{**base, **t, "max_length": max_length})
    except (FormalLMError, TypeError) as e:
        for p in getattr(e, "problems", [str(e)]):
            chk.bad(f"[{where}]: {getattr(p, 'message', p)}", getattr(p, "fix", ""))
        return None


def _icl(d, exp, train, chk: Checker) -> ICL:
    data = train.get("data", {}) if isinstance(train.get("data", {}), Mapping) else {}
    if data.get("mode") != "fixed" or "dataset_size" not in data:
        chk.bad("an icl experiment trains each seed on a fixed pool of sequences",
                "set [train.data] mode = 'fixed' and dataset_size = the pool size")
    max_length = data.get("max_length", 64)
    fam_table = d.get("family", {})
    family = _family(fam_table, chk, "family", max_length)
    base = fam_table if isinstance(fam_table, Mapping) else {}
    ood = _family(d.get("ood_family", {}), chk, "ood_family", max_length, base)
    return ICL(family, ood)


def _phase(d, train, name: str, chk: Checker) -> dict:
    t = chk.keys(d.get(name, {}), TRAIN_KEYS | {"language"}, name)
    if "language" not in t:
        chk.bad(f"missing key '{name}.language'", "a grammar name or a path to a .toml file")
    else:
        t["language"] = _check_language(t["language"], chk, f"{name}.language")
    return merge(train, t)


def _finetune(d, exp, train, chk: Checker) -> Finetune:
    pre, fin = _phase(d, train, "pretrain", chk), _phase(d, train, "finetune", chk)
    groups = {}
    models = d.get("models", {}) if isinstance(d.get("models", {}), Mapping) else {}
    for g, t in chk.keys(d.get("groups", {}), set(d.get("groups", {})), "groups").items():
        t = chk.keys(t, {"model", "rescale"}, f"groups.{g}")
        c = t.get("rescale", 1.0)
        if t.get("model") not in models:
            chk.bad(f"groups.{g}.model={t.get('model')!r} is not a [models.*] key")
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not c > 0:
            chk.bad(f"groups.{g}.rescale={c!r} must be a number > 0")
            c = 1.0
        groups[g] = (t.get("model"), float(c))
    if not groups:
        chk.bad("no [groups.NAME] tables", "add e.g. [groups.transformer] model = 'transformer'")
    langs = [load(x).alphabet for x in (pre.get("language"), fin.get("language")) if x]
    if len(set(langs)) > 1:
        chk.bad(f"the pretrain and finetune languages must share one alphabet (got {langs})",
                "pick same-alphabet pairs (e.g. anbn-short -> anbnan-short)")
    return Finetune(pre, fin, groups)


def training_configs(ex: Experiment):
    """(where, a function building the TrainConfig) for every run of the experiment."""
    study = ex.study
    if isinstance(study, Grid):
        return [(f"cell {lang}.{m}.{o}", lambda lang=lang, m=m, o=o: ex.train_config(
                    m, language=lang, objective=study.objectives[o]))
                for lang in study.languages for m in ex.models for o in study.objectives]
    if isinstance(study, ICL):
        return [(f"model {m}", lambda m=m: ex.train_config(m)) for m in ex.models]
    return ([(f"pretrain {m}", lambda m=m: ex.train_config(m, table=study.pretrain))
             for m in {m for m, _ in study.groups.values()}]
            + [(f"finetune {g}", lambda m=m: ex.train_config(m, table=study.finetune))
               for g, (m, _) in study.groups.items()])
