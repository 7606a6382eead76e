"""``load_experiment(path)``: reads an experiment file of any kind into a typed
:class:`spec.Experiment`, checking every key (see ``spec`` for the layout)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from formal_lm.errors import FormalLMError
from formal_lm.experiments.spec import (ANALYSIS_OPTIONS, CHECKPOINTS, COMMON_TABLES,
                                        EXPERIMENT_KEYS, KIND_TABLES, KINDS, PUBLISHED_KEYS,
                                        PUBLISHED_ROW_KEYS, STATISTICS_KEYS, ICL, Checker,
                                        Experiment, Finetune, Grid, Statistics, merge, read_toml,
                                        resolve_language)
from formal_lm.experiments.tasks import Tasks, tasks_study
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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _option_problem(v, kind: str, lo: float) -> str | None:
    """What is wrong with an analysis option's value (None: nothing)."""
    pair = isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x >= 1 for x in v)
    ok = {"int": lambda: _is_int(v) and v >= lo,
          "num": lambda: isinstance(v, (int, float)) and not isinstance(v, bool) and v > lo,
          "prob": lambda: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
          "bool": lambda: isinstance(v, bool),
          "decoding": lambda: v in ("greedy", "sample"),
          "lengths": lambda: pair and v[0] <= v[1],
          "bins": lambda: isinstance(v, list) and bool(v) and all(
              isinstance(b, list) and len(b) == 2 and all(_is_int(x) and x >= 0 for x in b)
              and b[0] <= b[1] for b in v),
          "ints": lambda: isinstance(v, list) and bool(v) and all(
              _is_int(x) and x >= 0 for x in v) and v == sorted(set(v)),
          "text": lambda: isinstance(v, str) and bool(v)}[kind]
    if ok():
        return None
    return {"int": f"an integer >= {lo:g}", "num": f"a number > {lo:g}",
            "prob": "a number in (0, 1)", "bool": "true or false",
            "decoding": "'greedy' or 'sample'", "lengths": "[lo, hi] with 1 <= lo <= hi",
            "bins": "a list of [lo, hi] with 0 <= lo <= hi",
            "ints": "an increasing list of integers >= 0", "text": "a non-empty string"}[kind]


def _analysis(d, kind: str, chk: Checker) -> dict:
    """The [analysis.*] tables: known analyzers, known options, each of its type and range."""
    allowed, out = ANALYSIS_OPTIONS[kind], {}
    for name, opts in chk.keys(d.get("analysis", {}), set(allowed), "analysis").items():
        opts = chk.keys(opts, set(allowed.get(name, {})), f"analysis.{name}")
        for key, v in opts.items():
            if key in allowed.get(name, {}):
                what = _option_problem(v, *allowed[name][key])
                if what:
                    chk.bad(f"analysis.{name}.{key}={v!r} must be {what}")
        out[name] = opts
    return out


def _statistics(raw, chk: Checker, kind: str) -> Statistics:
    default = {"grid": "kl", "icl": "heldout.ce", "finetune": "start.cross_entropy",
               "tasks": "val_loss"}[kind]
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
    # the regime: KL to the floor below this (ICL's floor is the Bayes-optimal in-context
    # predictor under the family's prior, estimated by particle filters)
    # (a task's answers are deterministic: its KL is its validation loss on the answers)
    regime = {"grid": "kl", "icl": "heldout.kl_bayes", "finetune": "start.kl",
              "tasks": "val_kl"}[kind]
    saturation = t.get("saturation", 0.01)
    if isinstance(saturation, bool) or not isinstance(saturation, (int, float)) \
            or not saturation > 0:
        chk.bad(f"statistics.saturation={saturation!r} must be a number > 0 (nats per token)")
        saturation = 0.01
    return Statistics(loss, None if margin is None else float(margin), float(alpha),
                      float(saturation), regime)


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
    if kind == "probing":  # a grid file plus a [probing] table (experiments/probing.py)
        from formal_lm.experiments.probing import probing_experiment
        rest = {k: v for k, v in raw.items() if k != "probing"}
        rest["experiment"] = {**exp0, "kind": "grid"}
        grid = experiment_from_dict(rest, full=full, source=source)
        return probing_experiment(grid, raw.get("probing"), chk)
    if kind not in KINDS:
        chk.bad(f"experiment.kind={kind!r} is not allowed", f"use one of {KINDS + ('probing',)}")
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
    analysis = _analysis(d, kind, chk)
    statistics = _statistics(d, chk, kind)
    published = chk.keys(d.get("published", {}), PUBLISHED_KEYS, "published")
    for key, row in (published.get("rows") or {}).items():
        if kind == "tasks":  # a task's row: one score per published column
            cols = published.get("columns", [])
            if not (isinstance(row, list) and len(row) == len(cols) and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)):
                chk.bad(f"published.rows.{key} must be a list of {len(cols)} numbers, one per "
                        f"published.columns entry")
            continue
        chk.keys(row, PUBLISHED_ROW_KEYS, f"published.rows.{key}")
    study = {"grid": _grid, "icl": _icl, "finetune": _finetune,
             "tasks": lambda d, exp, train, chk: tasks_study(d, chk)}[kind](d, exp, train, chk)
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
    if not chk.problems:
        _check_lengths(ex, chk)
    chk.raise_if()
    return ex


TRAIN_KEYS = {"steps", "seeds", "batch_size", "eval_every", "checkpoint_every", "optimizer", "data",
              "stopping"}


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
    per_language = {}
    listed = [x for x in exp.get("languages", []) if isinstance(x, str)] \
        if isinstance(exp.get("languages"), list) else []
    for lang, t in chk.keys(d.get("per_language", {}), set(listed), "per_language").items():
        t = chk.keys(t, {"train", "models"}, f"per_language.{lang}")
        chk.keys(t.get("train", {}), TRAIN_KEYS, f"per_language.{lang}.train")
        for m in chk.keys(t.get("models", {}), set(d.get("models", {})),
                          f"per_language.{lang}.models"):
            if "name" in t["models"][m]:
                chk.bad(f"per_language.{lang}.models.{m}.name: a language cannot change the "
                        "architecture", "give it its own [models.KEY] instead")
        per_language[resolve_language(lang, chk.source)] = t
    return Grid(tuple(x for x in languages if x), objectives, per_language)


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
    if isinstance(study, (ICL, Tasks)):
        return [(f"model {m}", lambda m=m: ex.train_config(m)) for m in ex.models]
    return ([(f"pretrain {m}", lambda m=m: ex.train_config(m, table=study.pretrain))
             for m in {m for m, _ in study.groups.values()}]
            + [(f"finetune {g}", lambda m=m: ex.train_config(m, table=study.finetune))
               for g, (m, _) in study.groups.items()])


def _max_len(cfg) -> int | None:
    """The longest sequence a config's model accepts (its ``max_len``), None: no limit."""
    fields = {f.name: f.default for f in dataclasses.fields(CONFIGS[cfg.model])}
    return cfg.model_config.get("max_len", fields.get("max_len"))


def _samples_fit(lang_name: str, n: int, max_len: int) -> bool:
    """Whether ``n`` samples of the language fit ``max_len`` tokens (expected misfits < 0.01)."""
    tail = max(0.0, 1.0 - float(load(lang_name).length_distribution(max_len - 2).sum()))
    return n * tail < 0.01


def _runs(ex: Experiment):
    """(phase, language or None, model key, TrainConfig) of every training run."""
    study = ex.study
    if isinstance(study, Grid):
        return [("train", lang, m, ex.train_config(m, language=lang))
                for lang in study.languages for m in ex.models]
    if isinstance(study, ICL):
        return [("train", None, m, ex.train_config(m)) for m in ex.models]
    if isinstance(study, Tasks):
        return [("train", t.key, m, ex.train_config(m)) for t in study.tasks.values()
                for m in ex.models]
    return [(phase, t["language"], m, ex.train_config(m, table=t, language=t["language"]))
            for phase, t in (("pretrain", study.pretrain), ("finetune", study.finetune))
            for m in {m for m, _ in study.groups.values()}]


def _needs(ex: Experiment, lang: str | None) -> list[tuple[str, int, list[tuple[str, int]]]]:
    """(what, tokens it needs, [(language, samples)]) for the analyses of a run on ``lang``."""
    a, study, out = ex.analysis, ex.study, []
    if isinstance(study, Grid):
        if "rule_extrapolation" in a:
            o = a["rule_extrapolation"]
            out.append(("analysis.rule_extrapolation (prompt + completion)",
                        1 + o.get("prompt_length", 8) + o.get("max_new_tokens", 300), []))
        if "length_generalization" in a:
            o = a["length_generalization"]
            longest = max([o.get("train_max_length", 40), o.get("test_lengths", [0, 500])[1]]
                          + [b[1] for b in o.get("bins", [])])
            out.append(("analysis.length_generalization", longest + 2, []))
        if "test_lengths" in a.get("compositional", {}):  # productivity's longest strings
            out.append(("analysis.compositional.test_lengths",
                        a["compositional"]["test_lengths"][1] + 2, []))
        for name in ("saturation", "next_symbol_sets"):
            if name in a:
                n = a[name].get("n", 512 if name == "saturation" else 256)
                out.append((f"analysis.{name} samples", 0, [(lang, n)]))
    elif isinstance(study, Tasks) and lang in study.tasks:  # here lang is a task key
        longest = max(study.lengths.test[1], study.lengths.train[1])
        out.append(("the longest tested example (lengths.test)",
                    study.tasks[lang].max_tokens(longest) - 1, []))
    elif isinstance(study, Finetune):
        n = a.get("transfer", {}).get("eval_size", 256)
        ood = resolve_language(a.get("transfer", {}).get("ood_language",
                                                         study.finetune["language"]), ex.source)
        out.append(("analysis.transfer samples", 0, [(study.pretrain["language"], n),
                                                     (study.finetune["language"], n), (ood, n)]))
    return out


def _check_lengths(ex: Experiment, chk: Checker) -> None:
    """Every run's model ``max_len`` holds its training sequences and its analyses, checked
    before any training."""
    for phase, lang, m, cfg in _runs(ex):
        max_len = _max_len(cfg)
        if not isinstance(max_len, int):
            continue
        where, on = f"models.{m}.max_len={max_len}", f" (on {lang})" if lang else ""
        # a tasks study draws its own examples (their length is in _needs), not [data]'s
        needs = [] if isinstance(ex.study, Tasks) else [
            (f"{phase}.data.max_length (training sequences)", cfg.data.max_length, [])]
        for what, tokens, samples in needs + _needs(ex, lang):
            if tokens > max_len:
                chk.bad(f"{where} is shorter than {what}: {tokens} tokens{on}",
                        f"raise models.{m}.max_len to >= {tokens}, or shorten the analysis")
            for lang_name, n in samples:
                if not _samples_fit(lang_name, n, max_len):
                    chk.bad(f"{what}: strings of {lang_name!r} longer than {where} tokens have "
                            "non-negligible probability", f"raise models.{m}.max_len")
